"""The native engine on RWKV v5.1, v5.2, v6 and v7: the NumPy reference on random-weight models,
sequence mode against token-by-token evaluation, the state layout, and the refusal of
incomplete files. (Against rwkv.cpp's fixture logits and states: test_shared_engine.py.)"""

from __future__ import annotations

import numpy as np
import pytest
from engine_utils import run_sequence, run_serial
from reference import Reference

from rwkv_cli import engine as native
from rwkv_cli.formats.modelfile import ModelWriter
from rwkv_cli.formats.synthetic import random_tensors, stored_type, write_random_model

ARCHS = ("5.1", "5.2", "6", "7")


@pytest.fixture(scope="module")
def lib() -> native.Library:
    return native.default_library()


def evaluate(lib, path, tokens, state=None):
    """(serial logits, serial state, sequence logits, sequence state) of one model file."""
    ctx = lib.init_from_file(path, 2)
    try:
        serial = run_serial(lib, ctx, tokens, state)
        sequence = run_sequence(lib, ctx, tokens, state)
    finally:
        lib.free(ctx)
    return (*serial, *sequence)


# ---- random-weight models of other shapes against the NumPy reference -------------------------

N_LAYER, N_EMBED, HEAD_SIZE, N_VOCAB = 3, 128, 32, 1000
PROMPT = [5, 999, 17, 3, 256, 42, 7, 100, 1, 2, 640, 0]


@pytest.fixture(scope="module")
def random_models(tmp_path_factory):
    """arch -> an FP32 random-weight model of 3 layers x 128 (4 heads of 32), vocab 1000."""
    folder = tmp_path_factory.mktemp("random-archs")
    return {
        arch: write_random_model(
            folder / f"v{arch}.bin", arch, N_LAYER, N_EMBED, N_VOCAB, head_size=HEAD_SIZE, seed=7
        )
        for arch in ARCHS
    }


@pytest.mark.parametrize("arch", ARCHS)
def test_random_model_matches_numpy_reference(lib, random_models, arch):
    path = random_models[arch]
    ref = Reference.from_file(path)
    want, want_state = ref.forward_sequence(PROMPT)
    serial, serial_state, sequence, sequence_state = evaluate(lib, path, PROMPT)
    scale = np.abs(want).max()
    assert np.max(np.abs(serial - want)) < 1e-5 * scale + 1e-5
    assert np.max(np.abs(sequence - want)) < 1e-5 * scale + 1e-5
    state_tol = 1e-5 * np.abs(want_state).max() + 1e-5
    assert np.max(np.abs(serial_state - want_state)) < state_tol
    assert np.max(np.abs(sequence_state - want_state)) < state_tol


@pytest.mark.parametrize("arch", ARCHS)
def test_state_length_and_fresh_state_follow_rwkv_cpp_layout(lib, random_models, arch):
    ctx = lib.init_from_file(random_models[arch], 1)
    try:
        n = lib.get_state_len(ctx)
        state = np.full(n, 7.0, np.float32)
        lib.init_state(ctx, state)
        version = lib.get_arch_version(ctx)
    finally:
        lib.free(ctx)
    assert version == arch
    assert n == N_LAYER * (2 + HEAD_SIZE) * N_EMBED
    assert not state.any()


@pytest.mark.parametrize("chunk", [1, 2, 7, 64])
@pytest.mark.parametrize("arch", ARCHS)
def test_sequence_mode_equals_token_by_token(lib, random_models, arch, chunk):
    tokens = [(i * 37 + 11) % N_VOCAB for i in range(70)]
    ctx = lib.init_from_file(random_models[arch], 2)
    try:
        serial, serial_state = run_serial(lib, ctx, tokens)
        sequence, sequence_state = run_sequence(lib, ctx, tokens, chunk=chunk)
    finally:
        lib.free(ctx)
    np.testing.assert_allclose(sequence, serial, atol=1e-4 * np.abs(serial).max())
    np.testing.assert_allclose(sequence_state, serial_state, atol=1e-4 * np.abs(serial_state).max())


@pytest.mark.parametrize("arch", ["5.1", "5.2"])
def test_v5_group_norm_eps_is_the_official_one_unless_overridden(
    lib, random_models, monkeypatch, arch
):
    """64e-5 by default; RWKV_V5_LN_X_EPS (read at load) sets rwkv.cpp's 1e-5. (On rwkv.cpp's
    own fixtures: test_shared_engine.py.)"""
    path = random_models[arch]
    for setting, eps, other_eps in ((None, 64e-5, 1e-5), ("1e-5", 1e-5, 64e-5)):
        if setting is None:
            monkeypatch.delenv("RWKV_V5_LN_X_EPS", raising=False)
        else:
            monkeypatch.setenv("RWKV_V5_LN_X_EPS", setting)
        want, _ = Reference.from_file(path, v5_ln_x_eps=eps).forward_sequence(PROMPT)
        other, _ = Reference.from_file(path, v5_ln_x_eps=other_eps).forward_sequence(PROMPT)
        serial, _, sequence, _ = evaluate(lib, path, PROMPT)
        scale = np.abs(want).max()
        assert np.max(np.abs(serial - want)) < 1e-5 * scale
        assert np.max(np.abs(sequence - want)) < 1e-5 * scale
        assert np.max(np.abs(other - want)) > 1e-4 * scale  # the two are told apart


@pytest.mark.parametrize("arch", ARCHS)
def test_quantized_random_model_follows_reference(lib, random_models, tmp_path, arch):
    """Our Q8_0 file against the reference run on the dequantized weights of the same file."""
    out = tmp_path / "q8.bin"
    lib.quantize_model_file(random_models[arch], out, "Q8_0")
    want, _ = Reference.from_file(out).forward_sequence(PROMPT)
    serial, _, sequence, _ = evaluate(lib, out, PROMPT)
    # the kernels round activations to int8 blocks for Q8_0 products
    assert np.max(np.abs(serial - want)) < 0.05 * np.abs(want).max()
    # one activation rounding flipped by a different summation order moves a logit a little
    assert np.max(np.abs(sequence - serial)) < 1e-2 * np.abs(want).max()


@pytest.mark.parametrize("arch", ARCHS)
def test_quantized_head_follows_reference(lib, random_models, tmp_path, arch):
    """A file whose head is quantized too (rwkv_quantize_model_file_ex): the engine runs its
    Q8_0 head like any quantized matrix, in decode and in sequence mode."""
    out = tmp_path / "q4-head-q8.bin"
    lib.quantize_model_file(random_models[arch], out, "Q4_0", head_type="Q8_0")
    want, _ = Reference.from_file(out).forward_sequence(PROMPT)
    serial, _, sequence, _ = evaluate(lib, out, PROMPT)
    assert np.max(np.abs(serial - want)) < 0.05 * np.abs(want).max()
    assert np.max(np.abs(sequence - serial)) < 1e-2 * np.abs(want).max()


# ---- files the loader must accept or refuse ---------------------------------------------------


def write_tensors(path, tensors, n_layer=N_LAYER, n_embed=N_EMBED, n_vocab=N_VOCAB):
    with ModelWriter(path, n_vocab, n_embed, n_layer, "FP32") as writer:
        for key, value in tensors:
            writer.write_tensor(key, value, stored_type(key, value.shape, "FP32", "FP32"))
    return path


def test_v7_file_with_unused_layer0_value_lora_loads(lib, random_models, tmp_path):
    """Some converters keep layer 0's att.v0/v1/v2; v7 ignores them (rwkv.cpp aborts)."""
    rng = np.random.default_rng(3)
    tensors = []
    for key, value in random_tensors("7", N_LAYER, N_EMBED, N_VOCAB, HEAD_SIZE, seed=7):
        tensors.append((key, value))
        if key == "blocks.0.att.a0":
            tensors.append(("blocks.0.att.v1", rng.standard_normal((32, N_EMBED), np.float32)))
            tensors.append(("blocks.0.att.v2", rng.standard_normal((N_EMBED, 32), np.float32)))
            tensors.append(("blocks.0.att.v0", rng.standard_normal((1, 1, N_EMBED), np.float32)))
    path = write_tensors(tmp_path / "v7-layer0-v.bin", tensors)
    with_extra, _, _, _ = evaluate(lib, path, PROMPT)
    plain, _, _, _ = evaluate(lib, random_models["7"], PROMPT)
    np.testing.assert_array_equal(with_extra, plain)


MISSING = {
    "5.1": "blocks.2.att.time_first",
    "5.2": "blocks.1.att.gate.weight",
    "6": "blocks.1.att.time_decay_w2",
    "7": "blocks.2.att.v0",
}


@pytest.mark.parametrize("arch", ARCHS)
def test_file_missing_a_needed_tensor_is_refused_naming_it(lib, tmp_path, arch):
    missing = MISSING[arch]
    tensors = (
        (k, v) for k, v in random_tensors(arch, N_LAYER, N_EMBED, N_VOCAB, HEAD_SIZE) if k != missing
    )
    path = write_tensors(tmp_path / "incomplete.bin", tensors)
    lib.set_print_errors(None, False)
    try:
        with pytest.raises(native.RWKVError, match=missing.replace(".", r"\.")):
            lib.init_from_file(path, 1)
    finally:
        lib.set_print_errors(None, True)
