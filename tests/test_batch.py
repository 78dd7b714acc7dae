"""rwkv_eval_batch: n sequences advanced by one token each in one pass over the weights.

Specification: the results are those of n separate rwkv_eval calls. On the scalar kernel path
they are identical to the bit (every product computes each row of activations on its own, in
the same order, however many rows there are). On the SIMD paths, products of FP32/FP16
weights over up to 16 rows keep the single-token summation order too, so batches of up to 16
sequences are identical to serial decoding; larger ones run as panels that sum in another
order (max |dlogit| <= 1e-5 of the largest logit; measured on these models: at most 1.2e-5
absolute, v5.1, whose recurrence magnifies rounding the most, 7e-6 for the other versions).
Products of quantized weights over 4 and more rows run as panels: the activations are
quantized per token exactly as in rwkv_eval, but
an activation that sits on a rounding near-tie can land on the neighbouring int8 code when
its float sum differs in the last bit; such a sequence differs by the effect of one code
(bounded below), and most sequences are within 1e-4.
"""

from __future__ import annotations

import numpy as np
import pytest

from rwkv_cli import engine as native
from rwkv_cli.formats.synthetic import ARCHS, write_random_model

TYPES = ("FP32", "FP16", "Q4_0", "Q4_1", "Q5_0", "Q5_1", "Q8_0")
QUANTIZED = TYPES[2:]
SIZES = (1, 2, 3, 7, 16, 33, 70)  # 70: more than one pass of the context's scratch (64 rows)
# A vocabulary over one piece of the head product (256 rows) with a ragged end.
N_LAYER, N_EMBED, HEAD_SIZE, N_VOCAB = 2, 64, 32, 301

# quantized weights on a SIMD path: the share of sequences within 1e-4 of rwkv_eval (measured
# on these models: 97-99%), and the bound on the others relative to the largest logit (one
# flipped int8 code of an activation moves logits by a fraction of a percent; a wrong state or
# a logit scattered to the wrong sequence would be off by 100%)
QUANTIZED_WITHIN_1E4 = 0.9
QUANTIZED_ONE_CODE = 2e-2


@pytest.fixture(scope="module")
def lib() -> native.Library:
    return native.default_library()


@pytest.fixture(scope="module")
def models(tmp_path_factory) -> dict[tuple[str, str], str]:
    folder = tmp_path_factory.mktemp("batch-models")
    return {
        (arch, dtype): write_random_model(
            folder / f"v{arch}-{dtype}.bin",
            arch,
            N_LAYER,
            N_EMBED,
            N_VOCAB,
            dtype,
            head_size=HEAD_SIZE,
            seed=11,
        )
        for arch in ARCHS
        for dtype in TYPES
    }


def kernel_paths(lib) -> list[str]:
    info = lib.get_system_info_string()
    return info.split("kernels available: ")[1].split(" |")[0].split()


def open_context(lib, path, monkeypatch, kernel_path=None, threads=2):
    if kernel_path is None:
        monkeypatch.delenv("RWKV_KERNELS", raising=False)
    else:
        monkeypatch.setenv("RWKV_KERNELS", kernel_path)
    return lib.init_from_file(path, threads)


def starting_states(lib, ctx, n, rng):
    """n states with some history (every third one None: a fresh sequence)."""
    states = []
    for i in range(n):
        if i % 3 == 0:
            states.append(None)
            continue
        state = np.empty(lib.get_state_len(ctx), np.float32)
        lib.eval_sequence(ctx, rng.integers(0, N_VOCAB, 1 + i % 5).tolist(), None, state, None)
        states.append(state)
    return states


def serial(lib, ctx, tokens, states_in):
    """What n rwkv_eval calls give: (logits, states)."""
    logits, states = [], []
    for token, state_in in zip(tokens, states_in):
        state = np.empty(lib.get_state_len(ctx), np.float32)
        out = np.empty(lib.get_logits_len(ctx), np.float32)
        lib.eval(ctx, token, state_in, state, out)
        logits.append(out)
        states.append(state)
    return logits, states


def batched(lib, ctx, tokens, states_in):
    """rwkv_eval_batch over the same sequences: every second sequence updates its state in
    place (state_in == state_out), every fourth skips its logits. Returns (logits, states)."""
    n = len(tokens)
    states_out, logits_out = [], []
    for i, state_in in enumerate(states_in):
        in_place = state_in is not None and i % 2 == 0
        states_out.append(
            state_in.copy() if in_place else np.empty(lib.get_state_len(ctx), np.float32)
        )
        logits_out.append(None if i % 4 == 1 else np.empty(lib.get_logits_len(ctx), np.float32))
    states_in = [
        states_out[i] if s is not None and i % 2 == 0 else s for i, s in enumerate(states_in)
    ]
    lib.eval_batch(ctx, tokens, states_in, states_out, logits_out)
    assert len(states_out) == n
    return logits_out, states_out


EXACT_FLOAT_BATCH = 16  # sequences up to which float weights give serial decoding's bits


def compare(lib, ctx, rng, n):
    """Per sequence: (max |dlogit| or None where logits were skipped, max |dstate|, max |logit|)."""
    tokens = rng.integers(0, N_VOCAB, n).tolist()
    states_in = starting_states(lib, ctx, n, rng)
    kept = [None if s is None else s.copy() for s in states_in]
    want_logits, want_states = serial(lib, ctx, tokens, kept)
    got_logits, got_states = batched(lib, ctx, tokens, states_in)
    rows = []
    for i in range(n):
        dlogit = (
            None if got_logits[i] is None else float(np.max(np.abs(got_logits[i] - want_logits[i])))
        )
        dstate = float(np.max(np.abs(got_states[i] - want_states[i])))
        rows.append((dlogit, dstate, float(np.max(np.abs(want_logits[i])))))
    return rows


@pytest.mark.parametrize("dtype", TYPES)
@pytest.mark.parametrize("arch", ARCHS)
def test_scalar_path_batch_is_serial_evaluation_exactly(lib, models, monkeypatch, arch, dtype):
    ctx = open_context(lib, models[(arch, dtype)], monkeypatch, "scalar")
    try:
        rng = np.random.default_rng(5)
        for n in SIZES:
            for dlogit, dstate, _ in compare(lib, ctx, rng, n):
                assert dlogit in (None, 0.0), (n, dlogit)
                assert dstate == 0.0, (n, dstate)
    finally:
        lib.free(ctx)


@pytest.mark.parametrize("dtype", TYPES)
@pytest.mark.parametrize("arch", ARCHS)
def test_simd_paths_batch_matches_serial_evaluation(lib, models, monkeypatch, arch, dtype):
    paths = [p for p in kernel_paths(lib) if p != "scalar"]
    if not paths:
        pytest.skip("this CPU has no SIMD kernel path")
    for path in paths:
        ctx = open_context(lib, models[(arch, dtype)], monkeypatch, path)
        try:
            rng = np.random.default_rng(6)
            by_size = {n: compare(lib, ctx, rng, n) for n in SIZES}
        finally:
            lib.free(ctx)
        rows = [row for n in SIZES for row in by_size[n]]
        dlogits = np.array([d for d, _, _ in rows if d is not None])
        scale = max(s for _, _, s in rows)
        if dtype in QUANTIZED:
            assert np.mean(dlogits <= 1e-4) >= QUANTIZED_WITHIN_1E4, (
                path,
                np.mean(dlogits <= 1e-4),
            )
            assert dlogits.max() <= QUANTIZED_ONE_CODE * scale, (path, dlogits.max())
        else:
            for n in (n for n in SIZES if n <= EXACT_FLOAT_BATCH):
                assert all(d in (None, 0.0) and ds == 0.0 for d, ds, _ in by_size[n]), (path, n)
            assert dlogits.max() <= 1e-5 * max(1.0, scale), (path, dlogits.max())
            assert max(d for _, d, _ in rows) <= 1e-4, path


@pytest.mark.parametrize("arch", ARCHS)
def test_one_thread_and_several_give_the_same_batch(lib, models, monkeypatch, arch):
    results = []
    for threads in (1, 3):
        ctx = open_context(lib, models[(arch, "Q5_1")], monkeypatch, threads=threads)
        try:
            rng = np.random.default_rng(9)
            tokens = rng.integers(0, N_VOCAB, 33).tolist()
            results.append(batched(lib, ctx, tokens, starting_states(lib, ctx, 33, rng)))
        finally:
            lib.free(ctx)
    for one, several in zip(*(r[0] + r[1] for r in results)):
        if one is None:
            assert several is None
        else:
            np.testing.assert_array_equal(one, several)


def test_sequences_decode_in_lockstep_like_alone(lib, models, monkeypatch):
    """Four sequences generating 12 tokens each (greedy, one batch per step) take the same
    tokens as each generating alone: what a scheduler will rely on."""
    ctx = open_context(lib, models[("7", "FP32")], monkeypatch)
    try:
        n_state, n_vocab = lib.get_state_len(ctx), lib.get_logits_len(ctx)
        first = [3, 77, 150, 299]
        alone = []
        for token in first:
            state, logits, out = np.empty(n_state, np.float32), np.empty(n_vocab, np.float32), []
            for step in range(12):
                lib.eval(ctx, token, None if step == 0 else state, state, logits)
                token = int(np.argmax(logits))
                out.append(token)
            alone.append(out)
        states = [np.empty(n_state, np.float32) for _ in first]
        logits = [np.empty(n_vocab, np.float32) for _ in first]
        tokens, together = list(first), [[] for _ in first]
        for step in range(12):
            lib.eval_batch(ctx, tokens, None if step == 0 else states, states, logits)
            tokens = [int(np.argmax(lg)) for lg in logits]
            for seq, token in zip(together, tokens):
                seq.append(token)
    finally:
        lib.free(ctx)
    assert together == alone


# ---- bad calls: an error, and nothing written ---------------------------------------------------

SENTINEL = np.float32(-12345.0)


@pytest.fixture
def bad_call(lib, models, monkeypatch):
    """A context, 3 sequences' buffers filled with a sentinel, and the raw C function."""
    ctx = open_context(lib, models[("5.2", "Q8_0")], monkeypatch)
    n_state, n_vocab = lib.get_state_len(ctx), lib.get_logits_len(ctx)
    states = [np.full(n_state, SENTINEL, np.float32) for _ in range(3)]
    logits = [np.full(n_vocab, SENTINEL, np.float32) for _ in range(3)]
    yield ctx, states, logits
    for buffer in states + logits:
        assert np.all(buffer == SENTINEL), "a failed call wrote to an output"
    lib.free(ctx)


def c_arrays(lib, states_in, states_out, logits_out):
    """The raw C arrays (None entries: NULL), and the views that must outlive the call."""
    ffi = lib.ffi
    views = [[lib._ptr(a) for a in group] for group in (states_in, states_out, logits_out)]
    arrays = [ffi.new("float *[]", group) for group in views]
    return arrays, views


@pytest.mark.parametrize(
    "tokens",
    [[5, 2, N_VOCAB], [N_VOCAB + 1000, 1, 2], [1, 2**32 - 1, 3]],
    ids=["last", "first", "huge"],
)
def test_token_out_of_range_anywhere_fails_before_any_sequence(lib, bad_call, tokens):
    ctx, states, logits = bad_call
    with pytest.raises(native.RWKVError, match="out of range"):
        lib.eval_batch(ctx, tokens, None, states, logits)


def test_zero_sequences_fail(lib, bad_call):
    ctx, _, _ = bad_call
    with pytest.raises(native.RWKVError, match="n is 0"):
        lib.eval_batch(ctx, [], [], [], [])


@pytest.mark.parametrize("missing", ["tokens", "state_in", "state_out", "logits_out"])
def test_null_arrays_fail(lib, bad_call, missing):
    ctx, states, logits = bad_call
    ffi = lib.ffi
    (ins, outs, lgs), _views = c_arrays(lib, [None] * 3, states, logits)
    tokens = ffi.new("uint32_t[]", [1, 2, 3])
    args = {"tokens": tokens, "state_in": ins, "state_out": outs, "logits_out": lgs}
    args[missing] = ffi.NULL
    ok = lib.lib.rwkv_eval_batch(
        ctx, 3, args["tokens"], args["state_in"], args["state_out"], args["logits_out"]
    )
    assert not ok
    assert missing in lib.get_last_error_message(ctx)
    assert lib.get_last_error(ctx) & 0xFF00 == 0x100  # RWKV_ERROR_ARGS


def test_null_state_out_of_one_sequence_fails(lib, bad_call):
    ctx, states, logits = bad_call
    (ins, outs, lgs), _views = c_arrays(lib, [None] * 3, [states[0], None, states[2]], logits)
    tokens = lib.ffi.new("uint32_t[]", [1, 2, 3])
    assert not lib.lib.rwkv_eval_batch(ctx, 3, tokens, ins, outs, lgs)
    assert "state_out[1]" in lib.get_last_error_message(ctx)


def test_binding_checks_every_buffer(lib, bad_call):
    ctx, states, logits = bad_call
    with pytest.raises(ValueError, match=r"states_out\[2\]"):
        lib.eval_batch(ctx, [1, 2, 3], None, [states[0], states[1], states[2][:-1]], logits)
    with pytest.raises(ValueError, match=r"logits_out\[0\]"):
        lib.eval_batch(ctx, [1, 2, 3], None, states, [logits[0][:-1], None, None])
    with pytest.raises(ValueError, match="2 entries for 3 tokens"):
        lib.eval_batch(ctx, [1, 2, 3], None, states[:2], logits)
    with pytest.raises(TypeError, match=r"states_in\[1\]"):
        lib.eval_batch(ctx, [1, 2, 3], [None, np.zeros(4), None], states, logits)
