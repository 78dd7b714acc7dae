"""The native engine against rwkv.cpp (needs ../shared): the logits and states rwkv.cpp computed
for its trained tiny models, for every tensor type of the fixture files and every type our
quantizer makes of them, and the quantizer's blocks against rwkv.cpp's own Q5 files.

Skipped as a whole without ../shared (a failure under RWKV_REQUIRE_FIXTURES=1); the engine's
tests on models of its own are in test_engine_v4.py and test_engine_archs.py.
"""

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
from helpers import FIXTURE_TOKENS, TINY, may_skip_without, tiny_expected, tiny_model
from reference import Reference

from rwkv_cli import engine as native

if may_skip_without(TINY):
    pytest.skip(
        f"{TINY} absent: the comparisons of the engine with rwkv.cpp's outputs did not run",
        allow_module_level=True,
    )

QUANT_TYPES = ("Q4_0", "Q4_1", "Q5_0", "Q5_1", "Q8_0")


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


def expected_logits(version: str) -> np.ndarray:
    return np.fromfile(tiny_expected(version), dtype="<f4")


# ---- RWKV v4 -----------------------------------------------------------------------------------

V4_FILE_LIMITS = {"FP32": 0.001, "FP16": 0.013652, "Q5_0": 0.170404, "Q5_1": 0.278034}
V4_QUANTIZED_LIMITS = {
    "FP32": {"Q4_0": 0.160030, "Q4_1": 0.547409, "Q5_0": 0.170404, "Q5_1": 0.278034, "Q8_0": 0.076282},
    "FP16": {"Q4_0": 0.154614, "Q4_1": 0.539827, "Q5_0": 0.180142, "Q5_1": 0.294953, "Q8_0": 0.077226},
}


@pytest.mark.parametrize("dtype", list(V4_FILE_LIMITS))
@pytest.mark.parametrize("mode", ["serial", "sequence"])
def test_v4_fixture_files_match_rwkv_cpp_logits(lib, dtype, mode):
    expected = np.fromfile(tiny_expected("4v0"), dtype="<f4")
    ctx = lib.init_from_file(tiny_model("4v0", dtype), 2)
    try:
        run = run_serial if mode == "serial" else run_sequence
        logits, _ = run(lib, ctx, FIXTURE_TOKENS)
    finally:
        lib.free(ctx)
    assert within_fixture_limit(logits, expected, V4_FILE_LIMITS[dtype])
    if dtype == "FP32":
        assert np.max(np.abs(logits - expected)) < 1e-4
    if dtype in ("Q5_0", "Q5_1"):
        want, _ = Reference.from_file(tiny_model("4v0", dtype)).forward_sequence(FIXTURE_TOKENS)
        assert max_logit_error(logits, want) < QUANTIZED_MAX_ERROR["4v0"]


def test_v4_fp32_state_matches_rwkv_cpp_state(lib):
    expected = np.fromfile(tiny_expected("4v0", "state"), dtype="<f4")
    ctx = lib.init_from_file(tiny_model("4v0", "FP32"), 2)
    try:
        assert lib.get_state_len(ctx) == expected.size == 5 * 128 * 4
        _, state = run_serial(lib, ctx, FIXTURE_TOKENS)
    finally:
        lib.free(ctx)
    np.testing.assert_allclose(state, expected, atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("source", ["FP32", "FP16"])
@pytest.mark.parametrize("target", ["Q4_0", "Q4_1", "Q5_0", "Q5_1", "Q8_0"])
def test_v4_files_quantized_by_us_stay_within_limits(lib, tmp_path, source, target):
    out = tmp_path / f"4v0-{target}.bin"
    lib.quantize_model_file(tiny_model("4v0", source), out, target)
    expected = np.fromfile(tiny_expected("4v0"), dtype="<f4")
    ctx = lib.init_from_file(out, 2)
    try:
        assert lib.get_data_type_name(ctx) == target
        serial, _ = run_serial(lib, ctx, FIXTURE_TOKENS)
        sequence, _ = run_sequence(lib, ctx, FIXTURE_TOKENS)
    finally:
        lib.free(ctx)
    limit = V4_QUANTIZED_LIMITS[source][target]
    assert within_fixture_limit(serial, expected, limit)
    assert within_fixture_limit(sequence, expected, limit)
    want, _ = Reference.from_file(out).forward_sequence(FIXTURE_TOKENS)
    assert max_logit_error(serial, want) < QUANTIZED_MAX_ERROR["4v0"]
    assert max_logit_error(sequence, want) < QUANTIZED_MAX_ERROR["4v0"]


@pytest.mark.parametrize("target", ["Q5_0", "Q5_1"])
def test_v4_quantizer_is_bit_compatible_with_rwkv_cpp_files(lib, tmp_path, target):
    """The fixture's Q5 files were written by rwkv.cpp's quantizer from the FP32 file."""
    ours = tmp_path / "ours.bin"
    lib.quantize_model_file(tiny_model("4v0", "FP32"), ours, target)
    theirs = tiny_model("4v0", target)
    # rwkv.cpp wrote that file as version 101 from a version 100 source; the tensors are what
    # must agree byte for byte.
    ours_bytes, theirs_bytes = ours.read_bytes(), theirs.read_bytes()
    assert ours_bytes[24:] == theirs_bytes[24:]
    assert ours_bytes[8:24] == theirs_bytes[8:24]


# ---- RWKV v5.1, v5.2, v6, v7 -----------------------------------------------------------------

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
# The file the fixture's expected state was computed from (6v0 has no FP32 copy).
STATE_SOURCE = {"5v1": "FP32", "5v2": "FP32", "6v0": "Q5_1", "7v0": "FP32"}


@pytest.fixture
def fixture_eps(monkeypatch):
    """rwkv.cpp made the v5 fixtures with group-norm eps 1e-5 (the engine reads it at load)."""
    monkeypatch.setenv("RWKV_V5_LN_X_EPS", "1e-5")


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


# ---- rwkv_eval_batch ----------------------------------------------------------------------------


@pytest.mark.parametrize("version", ["4v0", "5v2", "7v0"])
def test_fixture_prompt_in_a_batch_matches_rwkv_cpp(lib, monkeypatch, version):
    """The fixture prompt, one token per step in a batch with two other sequences, ends on
    rwkv.cpp's logits."""
    if version.startswith("5"):
        monkeypatch.setenv("RWKV_V5_LN_X_EPS", "1e-5")  # as rwkv.cpp made the v5 fixtures
    path = tiny_model(version, "FP32")
    expected = np.fromfile(tiny_expected(version), dtype="<f4")
    ctx = lib.init_from_file(path, 2)
    try:
        n_state, n_vocab = lib.get_state_len(ctx), lib.get_logits_len(ctx)
        states = [np.empty(n_state, np.float32) for _ in range(3)]
        logits = [np.empty(n_vocab, np.float32) for _ in range(3)]
        for step, token in enumerate(FIXTURE_TOKENS):
            lib.eval_batch(
                ctx, [101, token, 32 + step], None if step == 0 else states, states, logits
            )
    finally:
        lib.free(ctx)
    assert within_fixture_limit(logits[1], expected, 0.001)
    assert np.max(np.abs(logits[1] - expected)) < 1e-4
