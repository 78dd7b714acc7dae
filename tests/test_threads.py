"""The per-row work of a prompt between the products (norms, token mixes, gates, v7's key and
output stages, residual adds) runs on the context's threads once a pass is large enough: a
64-row pass over 512 channels is. Each row's arithmetic is the same whichever thread runs it,
so any thread count must give the bits of one thread, for every architecture. The models here
are wide enough that every stage crosses the engine's parallel threshold (the tiny models of
the other tests stay under it, and so on one thread)."""

from __future__ import annotations

import numpy as np
import pytest

from rwkv_cli import engine as native
from rwkv_cli.formats.synthetic import ARCHS, write_random_model

N_EMBED = 512  # x 64 rows: above the threshold of every per-row stage
N_VOCAB = 300
TOKENS = 150  # two full 64-row passes and a short one


@pytest.fixture(scope="module")
def lib() -> native.Library:
    return native.default_library()


@pytest.fixture(scope="module", params=ARCHS)
def wide_model(request, tmp_path_factory):
    arch = request.param
    path = tmp_path_factory.mktemp("wide") / f"wide-v{arch}.bin"
    return write_random_model(path, arch, 2, N_EMBED, N_VOCAB, "FP32", seed=11)


def prompt_then_decode(lib: native.Library, path, threads: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    ctx = lib.init_from_file(str(path), threads)
    try:
        rng = np.random.default_rng(5)
        tokens = rng.integers(0, N_VOCAB, TOKENS).tolist()
        state = np.empty(lib.get_state_len(ctx), np.float32)
        logits = np.empty(lib.get_logits_len(ctx), np.float32)
        lib.eval_sequence(ctx, tokens, None, state, logits)
        prompt_logits = logits.copy()
        lib.eval(ctx, 7, state, state, logits)
        return prompt_logits, state, logits
    finally:
        lib.free(ctx)


def test_wide_prompts_give_the_same_bits_on_any_thread_count(lib, wide_model):
    one = prompt_then_decode(lib, wide_model, 1)
    assert np.all(np.isfinite(one[0])) and np.ptp(one[0]) > 0  # a real forward pass, not zeros
    for threads in (2, 3):
        several = prompt_then_decode(lib, wide_model, threads)
        for a, b in zip(one, several):
            np.testing.assert_array_equal(a, b)


def test_wide_prompt_matches_serial_decoding(lib, wide_model):
    """Sequence mode (parallel per-row stages, batched products) against token-by-token decoding
    (one row: every stage on the caller) of the same prompt, 2 threads: the float products of
    the two modes sum in different orders, so equal within float rounding."""
    ctx = lib.init_from_file(str(wide_model), 2)
    try:
        rng = np.random.default_rng(5)
        tokens = rng.integers(0, N_VOCAB, TOKENS).tolist()
        n_state, n_vocab = lib.get_state_len(ctx), lib.get_logits_len(ctx)
        seq_state, seq_logits = np.empty(n_state, np.float32), np.empty(n_vocab, np.float32)
        lib.eval_sequence(ctx, tokens, None, seq_state, seq_logits)
        state, logits = np.empty(n_state, np.float32), np.empty(n_vocab, np.float32)
        for i, token in enumerate(tokens):
            lib.eval(ctx, token, None if i == 0 else state, state, logits)
    finally:
        lib.free(ctx)
    scale = float(np.max(np.abs(logits)))
    assert np.max(np.abs(seq_logits - logits)) <= 1e-4 * max(1.0, scale)
    assert np.max(np.abs(seq_state - state)) <= 1e-3 * max(1.0, float(np.max(np.abs(state))))
