"""The NumPy reference against rwkv.cpp's expected logits and states, and against itself."""

from __future__ import annotations

import numpy as np
import pytest
from helpers import FIXTURE_TOKENS, tiny_expected, tiny_model
from reference import Reference

from rwkv_cli.formats.synthetic import ARCHS, write_random_model

# rwkv.cpp normalizes v5 heads with eps 1e-5 (the official code uses 64e-5).
RWKV_CPP_V5_EPS = {"5v1": 1e-5, "5v2": 1e-5}

# README limits on |sum(logits - expected)| (checked with a 5% margin, as rwkv.cpp does).
DIFF_SUM_LIMITS = {
    ("4v0", "FP32"): 0.001, ("5v1", "FP32"): 0.001, ("5v2", "FP32"): 0.001,
    ("7v0", "FP32"): 0.001,
    ("4v0", "FP16"): 0.013652, ("5v1", "FP16"): 0.289921, ("5v2", "FP16"): 0.455912,
    ("7v0", "FP16"): 0.005766,
    ("4v0", "Q5_0"): 0.170404, ("4v0", "Q5_1"): 0.278034,
    ("5v1", "Q5_0"): 163.439407, ("5v1", "Q5_1"): 18.017435,
    ("5v2", "Q5_0"): 25.273308, ("5v2", "Q5_1"): 48.068733,
    ("6v0", "Q5_1"): 3.576909,
}


def fixture_reference(version: str, dtype: str) -> Reference:
    return Reference.from_file(
        tiny_model(version, dtype), v5_ln_x_eps=RWKV_CPP_V5_EPS.get(version, 64e-5)
    )


def expected(version: str, what: str) -> np.ndarray:
    return np.fromfile(tiny_expected(version, what), dtype="<f4")


def run_serial(ref: Reference, tokens, state=None):
    state = ref.init_state() if state is None else state
    for token in tokens:
        logits, state = ref.forward(token, state)
    return logits, state


def assert_diff_sum_within(logits, want, limit):
    diff_sum = float((logits.astype(np.float64) - want).sum())
    assert abs(diff_sum) <= abs(limit) * 1.05, f"diff sum {diff_sum} over limit {limit}"


# --- against rwkv.cpp's fixtures ----------------------------------------------------------------


@pytest.mark.parametrize("version", ["4v0", "5v1", "5v2", "7v0"])
def test_fp32_fixture_logits_and_state_match_rwkv_cpp(version):
    ref = fixture_reference(version, "FP32")
    want_logits, want_state = expected(version, "logits"), expected(version, "state")
    logits, state = run_serial(ref, FIXTURE_TOKENS)
    assert np.abs(logits - want_logits).max() < 1e-4
    assert_diff_sum_within(logits, want_logits, DIFF_SUM_LIMITS[(version, "FP32")])
    assert state.shape == want_state.shape
    assert np.abs(state - want_state).max() < 1e-4


@pytest.mark.parametrize("version", ["4v0", "5v1", "5v2", "7v0"])
def test_fp32_fixture_sequence_mode_matches_rwkv_cpp(version):
    ref = fixture_reference(version, "FP32")
    want_logits = expected(version, "logits")
    logits, state = ref.forward_sequence(FIXTURE_TOKENS)
    assert np.abs(logits - want_logits).max() < 1e-4
    assert_diff_sum_within(logits, want_logits, DIFF_SUM_LIMITS[(version, "FP32")])
    assert np.abs(state - expected(version, "state")).max() < 1e-4


def test_v6_quantized_fixture_matches_rwkv_cpp():
    # rwkv.cpp ran 6v0 from its Q5_1 file, whose matmuls also round the activations to 8 bits;
    # the reference uses the dequantized weights with exact activations, hence the looser bounds.
    ref = fixture_reference("6v0", "Q5_1")
    want_logits = expected("6v0", "logits")
    for logits, state in (run_serial(ref, FIXTURE_TOKENS), ref.forward_sequence(FIXTURE_TOKENS)):
        assert_diff_sum_within(logits, want_logits, DIFF_SUM_LIMITS[("6v0", "Q5_1")])
        assert np.abs(logits - want_logits).max() < 0.15
        want_state = expected("6v0", "state")
        assert np.abs(state - want_state).max() < 0.02 * np.abs(want_state).max()


@pytest.mark.parametrize(
    "version,dtype",
    [key for key in DIFF_SUM_LIMITS if key[1] != "FP32" and key[0] != "6v0"],
)
def test_reduced_precision_fixtures_stay_within_rwkv_cpp_limits(version, dtype):
    logits, _ = fixture_reference(version, dtype).forward_sequence(FIXTURE_TOKENS)
    assert_diff_sum_within(logits, expected(version, "logits"), DIFF_SUM_LIMITS[(version, dtype)])


@pytest.mark.parametrize("version", ["5v1", "5v2"])
def test_v5_group_norm_eps_is_what_rwkv_cpp_differs_in(version):
    official = Reference.from_file(tiny_model(version, "FP32"))  # default eps 64e-5
    logits, _ = official.forward_sequence(FIXTURE_TOKENS)
    assert np.abs(logits - expected(version, "logits")).max() > 0.1


# --- self-consistency on random models ----------------------------------------------------------

TOKENS = [5, 17, 0, 42, 42, 9, 31]


@pytest.fixture(scope="module", params=ARCHS)
def random_reference(request, tmp_path_factory):
    arch = request.param
    path = tmp_path_factory.mktemp("ref") / f"rand-{arch}.bin"
    write_random_model(path, arch, n_layer=2, n_embed=64, n_vocab=50, head_size=16, seed=3)
    return Reference.from_file(path)


def test_fresh_state_layout(random_reference):
    ref = random_reference
    state = ref.init_state()
    assert state.dtype == np.float32
    if ref.arch == "4":
        assert ref.state_len == ref.n_layer * 5 * ref.n_embed
        per_layer = state.reshape(ref.n_layer, 5, ref.n_embed)
        assert np.all(per_layer[:, :4] == 0) and np.all(per_layer[:, 4] == -1e30)
    else:
        assert ref.state_len == ref.n_layer * (2 + ref.head_size) * ref.n_embed
        assert not state.any()


def test_sequence_equals_token_by_token(random_reference):
    ref = random_reference
    serial_logits, serial_state = run_serial(ref, TOKENS)
    seq_logits, seq_state = ref.forward_sequence(TOKENS)
    np.testing.assert_allclose(seq_logits, serial_logits, rtol=0, atol=1e-5)
    np.testing.assert_allclose(seq_state, serial_state, rtol=0, atol=1e-5)


def test_state_continues_across_calls(random_reference):
    ref = random_reference
    whole_logits, whole_state = ref.forward_sequence(TOKENS)
    _, half_state = ref.forward_sequence(TOKENS[:3])
    logits, state = ref.forward_sequence(TOKENS[3:], half_state)
    np.testing.assert_allclose(logits, whole_logits, rtol=0, atol=1e-5)
    np.testing.assert_allclose(state, whole_state, rtol=0, atol=1e-5)


def test_forward_does_not_modify_its_input_state(random_reference):
    ref = random_reference
    state = ref.init_state()
    _, state = ref.forward(TOKENS[0], state)
    before = state.copy()
    ref.forward(TOKENS[1], state)
    np.testing.assert_array_equal(state, before)


def test_history_changes_the_logits(random_reference):
    ref = random_reference
    a, _ = ref.forward_sequence([1, 2, 3])
    b, _ = ref.forward_sequence([4, 2, 3])
    assert np.all(np.isfinite(a)) and a.shape == (50,)
    assert np.abs(a - b).max() > 1e-3


@pytest.mark.parametrize("arch", ARCHS)
def test_quantized_random_model_stays_close_to_fp32(tmp_path, arch):
    kw = {"n_layer": 2, "n_embed": 64, "n_vocab": 50, "head_size": 16, "seed": 4}
    fp32 = Reference.from_file(write_random_model(tmp_path / "f.bin", arch, **kw))
    q8 = Reference.from_file(write_random_model(tmp_path / "q.bin", arch, data_type="Q8_0", **kw))
    a, _ = fp32.forward_sequence(TOKENS)
    b, _ = q8.forward_sequence(TOKENS)
    assert np.abs(a - b).max() < 0.05 * np.abs(a).max()
