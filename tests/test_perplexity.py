"""Perplexity as llama.cpp defines it (chunks of ctx tokens from a fresh state, the second half
of each scored), against a NumPy computation of the same definition on the NumPy reference
model; KL divergence and top-1 agreement against a reference model; the command."""

from __future__ import annotations

import json
import math
import subprocess
import sys

import numpy as np
import pytest
from reference import Reference

from rwkv_cli import RWKV
from rwkv_cli import engine as native
from rwkv_cli.formats.synthetic import write_random_model

TEXT = (
    "It was the best of times, it was the worst of times, it was the age of wisdom, it was the "
    "age of foolishness, it was the epoch of belief, it was the epoch of incredulity."
)
CTX = 24


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    """Two byte-level (n_vocab 256) v7 models of one shape: the model and a 'reference'."""
    d = tmp_path_factory.mktemp("ppl")
    return (write_random_model(d / "a.bin", "7", 2, 64, 256, head_size=32, seed=1),
            write_random_model(d / "b.bin", "7", 2, 64, 256, head_size=32, seed=2))


def numpy_log_probs(ref: Reference, chunk: list[int]) -> np.ndarray:
    """log-softmax of the reference logits after each of chunk[:-1], from a fresh state."""
    state, rows = ref.init_state(), []
    for token in chunk[:-1]:
        logits, state = ref.forward(token, state)
        x = logits.astype(np.float64)
        rows.append(x - x.max() - math.log(np.exp(x - x.max()).sum()))
    return np.array(rows)


def numpy_perplexity(path, other_path, tokens: list[int], ctx: int):
    ref, other = Reference.from_file(path), Reference.from_file(other_path)
    nll, kl, agree = [], [], []
    for c in range(len(tokens) // ctx):
        chunk = tokens[c * ctx:(c + 1) * ctx]
        first = ctx // 2
        logp = numpy_log_probs(ref, chunk)[first:]
        ref_logp = numpy_log_probs(other, chunk)[first:]
        targets = chunk[first + 1:]
        nll += [-logp[i, t] for i, t in enumerate(targets)]
        kl += list((np.exp(ref_logp) * (ref_logp - logp)).sum(axis=1))
        agree += list(ref_logp.argmax(axis=1) == logp.argmax(axis=1))
    return math.exp(np.mean(nll)), float(np.mean(kl)), float(np.mean(agree)), len(nll)


def test_perplexity_equals_the_numpy_computation(models):
    tokens = list(TEXT.encode())
    want_ppl, want_kl, want_top1, scored = numpy_perplexity(models[0], models[1], tokens, CTX)
    calls = []
    with RWKV(models[0], threads=2) as model:
        result = model.perplexity(TEXT, ctx=CTX, reference=models[1],
                                  progress=lambda *a: calls.append(a))
    assert result.chunks == len(tokens) // CTX and result.tokens == len(tokens)
    assert result.scored_tokens == scored == result.chunks * (CTX - CTX // 2 - 1)
    assert result.perplexity == pytest.approx(want_ppl, rel=1e-5)
    assert result.kl_divergence == pytest.approx(want_kl, rel=1e-4, abs=1e-7)
    assert result.top1_agreement == pytest.approx(want_top1)
    assert [c[:2] for c in calls] == [(i + 1, result.chunks) for i in range(result.chunks)]
    assert calls[-1][2] == pytest.approx(result.perplexity)


def test_against_itself_kl_is_zero_and_top1_is_one(models):
    with RWKV(models[0], threads=1) as model:
        result = model.perplexity(TEXT, ctx=CTX, reference=models[0])
    assert result.kl_divergence == pytest.approx(0.0, abs=1e-9)
    assert result.top1_agreement == 1.0
    assert result.reference_perplexity == pytest.approx(result.perplexity)


def test_libraries_without_all_logits_give_the_same_figures(models, monkeypatch):
    with RWKV(models[0], threads=2) as model:
        fast = model.perplexity(TEXT, ctx=CTX)
        monkeypatch.setattr(native.Library, "has_all_logits", property(lambda self: False))
        slow = model.perplexity(TEXT, ctx=CTX)
    assert slow.perplexity == pytest.approx(fast.perplexity, rel=1e-5)


def test_all_logits_rows_are_the_logits_after_each_token(models):
    lib = native.default_library()
    ctx = lib.init_from_file(models[0], 2)
    try:
        tokens = list(TEXT.encode())[:70]  # more than one 64-token chunk of the engine
        n_vocab = lib.get_n_vocab(ctx)
        state = np.empty(lib.get_state_len(ctx), np.float32)
        all_logits = np.empty((len(tokens), n_vocab), np.float32)
        lib.eval_sequence_all_logits(ctx, tokens, None, state, all_logits)
        serial_state = np.empty_like(state)
        logits = np.empty(n_vocab, np.float32)
        for i, token in enumerate(tokens):
            lib.eval(ctx, token, None if i == 0 else serial_state, serial_state, logits)
            np.testing.assert_allclose(all_logits[i], logits, atol=1e-4 * np.abs(logits).max())
        np.testing.assert_allclose(state, serial_state, atol=1e-4 * np.abs(serial_state).max())
    finally:
        lib.free(ctx)


def test_bos_replaces_the_first_token_of_every_chunk(models):
    with RWKV(models[0], threads=1) as model:
        plain = model.perplexity(TEXT, ctx=CTX)
        with_bos = model.perplexity(TEXT, ctx=CTX, bos=0)
    assert with_bos.scored_tokens == plain.scored_tokens
    assert with_bos.perplexity != plain.perplexity


def test_refusals(models, tmp_path):
    other = write_random_model(tmp_path / "c.bin", "7", 1, 64, 300, head_size=32, seed=3)
    with RWKV(models[0], threads=1) as model:
        with pytest.raises(ValueError, match="fewer than one chunk"):
            model.perplexity("short", ctx=CTX)
        with pytest.raises(ValueError, match="at least 2"):
            model.perplexity(TEXT, ctx=1)
        with pytest.raises(ValueError, match="n_vocab"):
            model.perplexity(TEXT, ctx=CTX, reference=RWKV(other, tokenizer="bytes"))


def test_command_prints_one_json_line(models, tmp_path):
    text = tmp_path / "text.txt"
    text.write_text(TEXT, encoding="utf-8")
    proc = subprocess.run(
        [sys.executable, "-m", "rwkv_cli", "perplexity", str(text), "--modelPath", str(models[0]),
         "--ctx", str(CTX), "--reference", str(models[1]), "--threads", "1"],
        capture_output=True, text=True, timeout=120, check=False,
    )
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.strip().splitlines()
    assert len(lines) == 1
    payload = json.loads(lines[0])
    with RWKV(models[0], threads=1) as model:
        want = model.perplexity(TEXT, ctx=CTX, reference=models[1])
    assert payload["perplexity"] == pytest.approx(want.perplexity)
    assert payload["klDivergence"] == pytest.approx(want.kl_divergence)
    assert payload["ctx"] == CTX and payload["chunks"] == want.chunks
    assert payload["reference"] == "b.bin"


def test_max_chunks_takes_the_first_chunks(models):
    tokens = list(TEXT.encode())
    with RWKV(models[0], threads=1) as model:
        two = model.perplexity(TEXT, ctx=CTX, max_chunks=2)
        head = model.perplexity(bytes(tokens[:2 * CTX]).decode(), ctx=CTX)
    assert two.chunks == 2 and two.perplexity == pytest.approx(head.perplexity)
