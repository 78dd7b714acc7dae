"""The native engine on RWKV v5.1, v5.2, v6 and v7: the fixture logits and states of rwkv.cpp for
every tensor type (the fixture files and what our quantizer makes of them), the NumPy reference
on random-weight models of other shapes, sequence mode against token-by-token evaluation, the
state layout, and the refusal of incomplete files."""

from __future__ import annotations

import numpy as np
import pytest
from engine_utils import (
    QUANTIZED_MAX_ERROR,
    max_logit_error,
    run_sequence,
    run_serial,
    within_fixture_limit,
)
from helpers import FIXTURE_TOKENS, tiny_expected, tiny_model
from reference import Reference

from rwkv_cli import engine as native
from rwkv_cli.formats.modelfile import ModelWriter
from rwkv_cli.formats.synthetic import random_tensors, stored_type, write_random_model

QUANT_TYPES = ("Q4_0", "Q4_1", "Q5_0", "Q5_1", "Q8_0")

# The fixture README's limits on sum(logits - expected), per fixture version.
FILE_LIMITS = {
    "5v1": {"FP32": 0.001, "FP16": 0.289921, "Q5_0": 163.439407, "Q5_1": 18.017435},
    "5v2": {"FP32": 0.001, "FP16": 0.455912, "Q5_0": 25.273308, "Q5_1": 48.068733},
    "6v0": {"Q5_0": 21.151785, "Q5_1": 3.576909},
    "7v0": {"FP32": 0.001, "FP16": 0.005766},
}
QUANTIZED_LIMITS = {
    ("5v1", "FP32"): (117.932594, 26.712271, 163.439407, 18.017435, 0.585238),
    ("5v1", "FP16"): (119.471931, 28.245888, 159.870956, 39.708530, 0.962695),
    ("5v2", "FP32"): (35.271305, 67.015076, 25.273308, 48.068733, 9.441034),
    ("5v2", "FP16"): (34.135971, 65.573822, 21.588751, 29.726818, 7.242277),
    ("7v0", "FP32"): (0.136785, 0.002614, 0.063645, 0.064663, 0.011924),
    ("7v0", "FP16"): (0.136678, 0.005140, 0.064447, 0.063531, 0.010921),
}
ARCH_OF = {"5v1": "5.1", "5v2": "5.2", "6v0": "6", "7v0": "7"}
# The file the fixture's expected state was computed from (6v0 has no FP32 copy).
STATE_SOURCE = {"5v1": "FP32", "5v2": "FP32", "6v0": "Q5_1", "7v0": "FP32"}
ARCHS = ("5.1", "5.2", "6", "7")


@pytest.fixture(scope="module")
def lib() -> native.Library:
    return native.default_library()


@pytest.fixture
def fixture_eps(monkeypatch):
    """rwkv.cpp made the v5 fixtures with group-norm eps 1e-5 (the engine reads it at load)."""
    monkeypatch.setenv("RWKV_V5_LN_X_EPS", "1e-5")


def evaluate(lib, path, tokens, state=None):
    """(serial logits, serial state, sequence logits, sequence state) of one model file."""
    ctx = lib.init_from_file(path, 2)
    try:
        serial = run_serial(lib, ctx, tokens, state)
        sequence = run_sequence(lib, ctx, tokens, state)
    finally:
        lib.free(ctx)
    return (*serial, *sequence)


def expected_logits(version: str) -> np.ndarray:
    return np.fromfile(tiny_expected(version), dtype="<f4")


# ---- the shared fixtures ---------------------------------------------------------------------

FILE_CASES = [(v, t) for v, limits in FILE_LIMITS.items() for t in limits]


@pytest.mark.parametrize(("version", "dtype"), FILE_CASES, ids=[f"{v}-{t}" for v, t in FILE_CASES])
def test_fixture_files_match_rwkv_cpp_logits(lib, fixture_eps, version, dtype):
    expected = expected_logits(version)
    serial, _, sequence, _ = evaluate(lib, tiny_model(version, dtype), FIXTURE_TOKENS)
    limit = FILE_LIMITS[version][dtype]
    assert within_fixture_limit(serial, expected, limit), np.sum(serial - expected)
    assert within_fixture_limit(sequence, expected, limit), np.sum(sequence - expected)
    if dtype == "FP32":
        assert np.max(np.abs(serial - expected)) < 1e-4
        assert np.max(np.abs(sequence - expected)) < 1e-4
    if dtype in QUANT_TYPES:
        path = tiny_model(version, dtype)
        assert_close_to_reference_of_the_same_weights(path, version, serial, sequence)


def assert_close_to_reference_of_the_same_weights(path, version, serial, sequence):
    """The signed sum above lets errors cancel; this bounds the largest single one against the
    NumPy reference run on the file's own (dequantized) weights (see QUANTIZED_MAX_ERROR)."""
    eps = 1e-5 if version in ("5v1", "5v2") else 64e-5  # as fixture_eps sets for the engine
    want, _ = Reference.from_file(path, v5_ln_x_eps=eps).forward_sequence(FIXTURE_TOKENS)
    assert max_logit_error(serial, want) < QUANTIZED_MAX_ERROR[version]
    assert max_logit_error(sequence, want) < QUANTIZED_MAX_ERROR[version]


# rwkv.cpp's limits for files quantized from FP16 carry the error of FP16 products summed in
# FP16 (ggml on ARM NEON: a NumPy model of that reproduces the 7v0 FP16 file's limit, 0.005766, to
# six digits). 7v0's FP16 file holds exactly the FP32 weights, so our FP16->Q8_0 file computes
# what the FP32->Q8_0 one does (+0.011924, that file's limit) and only FP16 accumulation would
# land inside this one limit; we sum in FP32 instead.
FP16_ACCUMULATION = pytest.mark.xfail(
    strict=True, reason="limit encodes rwkv.cpp's FP16-accumulated products (ARM NEON)"
)
QUANT_CASES = [
    pytest.param(
        v, s, t, id=f"{v}-{s}-{t}",
        marks=FP16_ACCUMULATION if (v, s, t) == ("7v0", "FP16", "Q8_0") else (),
    )
    for (v, s) in QUANTIZED_LIMITS
    for t in QUANT_TYPES
]


@pytest.mark.parametrize(("version", "source", "target"), QUANT_CASES)
def test_files_quantized_by_us_stay_within_limits(lib, fixture_eps, tmp_path, version, source, target):
    out = tmp_path / f"{version}-{target}.bin"
    lib.quantize_model_file(tiny_model(version, source), out, target)
    expected = expected_logits(version)
    serial, _, sequence, _ = evaluate(lib, out, FIXTURE_TOKENS)
    limit = QUANTIZED_LIMITS[(version, source)][QUANT_TYPES.index(target)]
    assert within_fixture_limit(serial, expected, limit), np.sum(serial - expected)
    assert within_fixture_limit(sequence, expected, limit), np.sum(sequence - expected)
    assert_close_to_reference_of_the_same_weights(out, version, serial, sequence)


def test_7v0_fp16_source_quantizes_exactly_like_the_fp32_source(lib, tmp_path):
    """The case marked FP16_ACCUMULATION above, stated positively: 7v0's FP16 file holds the FP32
    weights exactly, so its Q8_0 file computes what the FP32 file's does, within that limit."""
    results = []
    for source in ("FP32", "FP16"):
        out = tmp_path / f"7v0-{source}-Q8_0.bin"
        lib.quantize_model_file(tiny_model("7v0", source), out, "Q8_0")
        results.append(evaluate(lib, out, FIXTURE_TOKENS)[0])
    np.testing.assert_allclose(results[1], results[0], rtol=0, atol=1e-6)
    fp32_limit = QUANTIZED_LIMITS[("7v0", "FP32")][QUANT_TYPES.index("Q8_0")]
    assert within_fixture_limit(results[1], expected_logits("7v0"), fp32_limit)


def assert_close(actual, expected, dtype):
    """FP32: equal up to float rounding. Quantized (6v0's only files): products round their
    activations (the kernels', rwkv.cpp's) differently, so only close; transposed head matrices
    or a shifted layout would be off by about 100%."""
    if dtype == "FP32":
        np.testing.assert_allclose(actual, expected, atol=2e-4, rtol=1e-3)
    else:
        assert np.linalg.norm(actual - expected) < 0.02 * np.linalg.norm(expected)


@pytest.mark.parametrize("version", list(STATE_SOURCE))
def test_state_matches_rwkv_cpp_state(lib, fixture_eps, version):
    """Same length, same layout (including the orientation of the head matrices)."""
    expected = np.fromfile(tiny_expected(version, "state"), dtype="<f4")
    _, serial, _, sequence = evaluate(lib, tiny_model(version, STATE_SOURCE[version]), FIXTURE_TOKENS)
    assert serial.size == expected.size
    for state in (serial, sequence):
        assert_close(state, expected, STATE_SOURCE[version])


@pytest.mark.parametrize("version", list(STATE_SOURCE))
def test_continues_from_a_state_written_by_rwkv_cpp(lib, fixture_eps, version):
    path = tiny_model(version, STATE_SOURCE[version])
    state = np.fromfile(tiny_expected(version, "state"), dtype="<f4")
    ref = Reference.from_file(path, v5_ln_x_eps=1e-5)
    want_logits, want_state = ref.forward_sequence([32, 116, 104], state)
    serial, serial_state, sequence, sequence_state = evaluate(lib, path, [32, 116, 104], state)
    for logits, out in ((serial, serial_state), (sequence, sequence_state)):
        assert_close(logits, want_logits, STATE_SOURCE[version])
        assert_close(out, want_state, STATE_SOURCE[version])


@pytest.mark.parametrize("version", ["5v1", "5v2"])
def test_v5_default_group_norm_eps_is_the_official_one(lib, monkeypatch, version):
    """Without RWKV_V5_LN_X_EPS the engine uses 64e-5 (the published models' value)."""
    monkeypatch.delenv("RWKV_V5_LN_X_EPS", raising=False)
    path = tiny_model(version, "FP32")
    want, want_state = Reference.from_file(path, v5_ln_x_eps=64e-5).forward_sequence(FIXTURE_TOKENS)
    serial, serial_state, sequence, _ = evaluate(lib, path, FIXTURE_TOKENS)
    assert np.max(np.abs(serial - want)) < 1e-4
    assert np.max(np.abs(sequence - want)) < 1e-4
    np.testing.assert_allclose(serial_state, want_state, atol=1e-4, rtol=1e-4)
    # and the override is what makes the rwkv.cpp fixture match: the two differ visibly
    assert np.max(np.abs(serial - expected_logits(version))) > 1e-3


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
