"""The NumPy reference against rwkv.cpp (needs ../shared): the logits and states rwkv.cpp
computed for its trained tiny models, within rwkv.cpp's own limits.

Skipped as a whole without ../shared (a failure under RWKV_REQUIRE_FIXTURES=1); the
reference's self-consistency and the official package's goldens are in test_reference.py and
test_golden.py.
"""

from __future__ import annotations

import numpy as np
import pytest
from helpers import FIXTURE_TOKENS, TINY, may_skip_without, tiny_expected, tiny_model
from reference import Reference

if may_skip_without(TINY):
    pytest.skip(
        f"{TINY} absent: the comparisons of the NumPy reference with rwkv.cpp's outputs "
        "did not run",
        allow_module_level=True,
    )

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

