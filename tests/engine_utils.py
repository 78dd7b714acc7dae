"""Helpers for the engine tests: run the fixture prompt serially and in sequence mode."""

from __future__ import annotations

import numpy as np

from rwkv_cli import engine as native


def run_serial(lib: native.Library, ctx, tokens, state=None):
    n = lib.get_state_len(ctx)
    out = np.empty(n, np.float32)
    logits = np.empty(lib.get_logits_len(ctx), np.float32)
    for i, token in enumerate(tokens):
        lib.eval(ctx, token, state if i == 0 else out, out, logits)
    return logits, out


def run_sequence(lib: native.Library, ctx, tokens, state=None, chunk=None):
    out = np.empty(lib.get_state_len(ctx), np.float32)
    logits = np.empty(lib.get_logits_len(ctx), np.float32)
    if chunk is None:
        lib.eval_sequence(ctx, tokens, state, out, logits)
    else:
        lib.eval_sequence_in_chunks(ctx, tokens, chunk, state, out, logits)
    return logits, out


def within_fixture_limit(logits: np.ndarray, expected: np.ndarray, limit: float) -> bool:
    """The fixture README's rule: |sum(logits - expected)| <= |limit| * 1.05."""
    diff_sum = float(np.sum(logits.astype(np.float64) - expected.astype(np.float64)))
    return abs(diff_sum) <= abs(limit) * 1.05
