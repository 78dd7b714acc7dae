"""The NumPy reference against itself on random-weight models. (Against rwkv.cpp's expected logits
and states: test_shared_reference.py; against the official package: test_golden.py.)"""

from __future__ import annotations

import numpy as np
import pytest
from reference import Reference

from rwkv_cli.formats.synthetic import ARCHS, write_random_model


def run_serial(ref: Reference, tokens, state=None):
    state = ref.init_state() if state is None else state
    for token in tokens:
        logits, state = ref.forward(token, state)
    return logits, state


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
