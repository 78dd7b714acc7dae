"""The native engine on RWKV v4: our quantizer against the NumPy one, random-weight models against
the NumPy reference, and the C API's semantics. (Against rwkv.cpp's fixtures:
test_shared_engine.py.)"""

from __future__ import annotations

import numpy as np
import pytest
from engine_utils import run_sequence, run_serial
from reference import Reference

from rwkv_cli import engine as native
from rwkv_cli.formats import modelfile
from rwkv_cli.formats.synthetic import write_random_model


@pytest.fixture(scope="module")
def lib() -> native.Library:
    return native.default_library()


def load(lib, path, threads=2):
    ctx = lib.init_from_file(path, threads)
    return ctx


@pytest.mark.parametrize("target", ["Q4_0", "Q4_1", "Q5_0", "Q5_1", "Q8_0"])
def test_c_quantizer_equals_numpy_quantizer(lib, tmp_path, target):
    src = write_random_model(tmp_path / "src.bin", "4", 2, 96, 300, data_type="FP16", seed=3)
    out = tmp_path / "q.bin"
    lib.quantize_model_file(src, out, target)
    infos = {i.key: i for i in modelfile.list_tensors(out)}
    raw = out.read_bytes()
    for info in modelfile.list_tensors(src):
        q = infos[info.key]
        if modelfile.should_quantize(info.key, info.shape, info.data_type):
            values = modelfile.read_tensor(src, info)
            assert q.data_type == modelfile.DATA_TYPES[target]
            expected = modelfile.quantize_array(values.reshape(-1, info.shape[-1]), target)
            assert raw[q.offset : q.offset + q.nbytes] == expected, info.key
        else:
            assert q.data_type == info.data_type, info.key


@pytest.mark.parametrize("head", ["Q8_0", "Q4_0", "Q5_1"])
def test_c_quantizer_quantizes_the_head_only_when_asked(lib, tmp_path, head):
    """rwkv_quantize_model_file_ex: the head in its own type (the numpy quantizer's bytes),
    every other tensor as the default quantization writes it; the embedding stays FP16."""
    src = write_random_model(tmp_path / "src.bin", "4", 2, 96, 300, data_type="FP16", seed=3)
    plain, with_head = tmp_path / "q.bin", tmp_path / "qh.bin"
    lib.quantize_model_file(src, plain, "Q4_0")
    lib.quantize_model_file(src, with_head, "Q4_0", head_type=head)
    plain_infos = {i.key: i for i in modelfile.list_tensors(plain)}
    raw_plain, raw = plain.read_bytes(), with_head.read_bytes()
    assert modelfile.read_header(with_head).data_type_name == "Q4_0"
    for info in modelfile.list_tensors(with_head):
        if info.key == "head.weight":
            assert info.data_type_name == head
            values = modelfile.read_tensor(src, info_of(src, "head.weight"))
            assert raw[info.offset : info.offset + info.nbytes] == modelfile.quantize_array(values, head)
        else:
            other = plain_infos[info.key]
            assert info.data_type == other.data_type, info.key
            assert raw[info.offset : info.offset + info.nbytes] == raw_plain[
                other.offset : other.offset + other.nbytes], info.key
    assert plain_infos["head.weight"].data_type_name == "FP16"
    assert plain_infos["emb.weight"].data_type_name == "FP16"
    ctx = lib.init_from_file(with_head, 1)
    try:
        assert (lib.get_data_type_name(ctx), lib.get_head_type_name(ctx)) == ("Q4_0", head)
        # the head's bytes are what a token reads less: FP16 300 x 96 against the head type's
        assert lib.get_weight_bytes_per_token(ctx) < plain.stat().st_size
    finally:
        lib.free(ctx)


def info_of(path, key):
    return next(i for i in modelfile.list_tensors(path) if i.key == key)


def test_quantizer_refuses_a_head_type_it_cannot_write(lib, tmp_path):
    src = write_random_model(tmp_path / "src.bin", "4", 1, 96, 300, data_type="FP16", seed=3)
    for bad in ("Q3_K", "FP16", "nonsense"):
        with pytest.raises(native.RWKVError, match="head quantization format"):
            lib.quantize_model_file(src, tmp_path / "out.bin", "Q8_0", head_type=bad)
    odd = write_random_model(tmp_path / "odd.bin", "4", 1, 40, 300, data_type="FP16", seed=3)
    with pytest.raises(native.RWKVError, match="multiple of 32"):
        lib.quantize_model_file(odd, tmp_path / "out.bin", "Q8_0", head_type="Q8_0")
    assert not (tmp_path / "out.bin").exists()


@pytest.fixture(scope="module")
def random_v4(tmp_path_factory):
    path = tmp_path_factory.mktemp("v4") / "v4-3x96.bin"
    return write_random_model(path, "4", 3, 96, 1000, data_type="FP32", seed=7)


def test_random_model_matches_numpy_reference(lib, random_v4):
    tokens = [5, 999, 0, 17, 512, 3]
    reference = Reference.from_file(random_v4)
    ref_logits, ref_state = reference.forward_sequence(tokens)
    ctx = load(lib, random_v4)
    try:
        serial, state = run_serial(lib, ctx, tokens)
        sequence, seq_state = run_sequence(lib, ctx, tokens)
    finally:
        lib.free(ctx)
    np.testing.assert_allclose(serial, ref_logits, atol=2e-4, rtol=1e-4)
    np.testing.assert_allclose(state, ref_state, atol=2e-4, rtol=1e-4)
    np.testing.assert_allclose(sequence, serial, atol=1e-5, rtol=1e-5)
    np.testing.assert_allclose(seq_state, state, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("chunk", [1, 2, 7, 64])
def test_sequence_in_chunks_equals_serial(lib, random_v4, chunk):
    tokens = list(np.random.default_rng(1).integers(0, 1000, size=70))
    ctx = load(lib, random_v4)
    try:
        serial, state = run_serial(lib, ctx, tokens)
        chunked, chunked_state = run_sequence(lib, ctx, tokens, chunk=chunk)
    finally:
        lib.free(ctx)
    np.testing.assert_allclose(chunked, serial, atol=1e-5, rtol=1e-5)
    np.testing.assert_allclose(chunked_state, state, atol=1e-5, rtol=1e-5)


def test_fresh_state_layout(lib, random_v4):
    ctx = load(lib, random_v4)
    try:
        state = np.full(lib.get_state_len(ctx), 7.0, np.float32)
        lib.init_state(ctx, state)
    finally:
        lib.free(ctx)
    per_layer = state.reshape(3, 5, 96)
    assert np.all(per_layer[:, :4] == 0.0)
    assert np.all(per_layer[:, 4] == np.float32(-1e30))


def test_shapes_and_information(lib, random_v4):
    ctx = load(lib, random_v4)
    try:
        assert lib.get_n_vocab(ctx) == lib.get_logits_len(ctx) == 1000
        assert lib.get_n_embed(ctx) == 96
        assert lib.get_n_layer(ctx) == 3
        assert lib.get_state_len(ctx) == 3 * 5 * 96
        assert lib.get_arch_version(ctx) == "4"
        assert lib.get_data_type_name(ctx) == "FP32"
        assert lib.get_kernel_path(ctx) in lib.get_system_info_string()
    finally:
        lib.free(ctx)


def test_null_logits_and_state_in_equal_to_state_out_continue_the_sequence(lib, random_v4):
    ctx = load(lib, random_v4)
    try:
        state = np.empty(lib.get_state_len(ctx), np.float32)
        logits = np.empty(1000, np.float32)
        lib.eval(ctx, 1, None, state, None)
        lib.eval(ctx, 2, state, state, None)  # in place
        lib.eval(ctx, 3, state, state, logits)
        expected, _ = run_serial(lib, ctx, [1, 2, 3])
    finally:
        lib.free(ctx)
    np.testing.assert_array_equal(logits, expected)


def test_bad_arguments_raise(lib, random_v4):
    ctx = load(lib, random_v4)
    try:
        state = np.empty(lib.get_state_len(ctx), np.float32)
        with pytest.raises(native.RWKVError, match="out of range"):
            lib.eval(ctx, 1000, None, state, None)
        with pytest.raises(native.RWKVError, match="no tokens"):
            lib.eval_sequence(ctx, [], None, state, None)
        with pytest.raises(native.RWKVError, match="no GPU backend"):
            lib.gpu_offload_layers(ctx, 2)
        lib.gpu_offload_layers(ctx, 0)
        with pytest.raises(ValueError, match="elements"):
            lib.eval(ctx, 1, None, np.empty(3, np.float32), None)
    finally:
        lib.free(ctx)
    with pytest.raises(native.RWKVError, match="no GPU backend"):
        lib.init_from_file(random_v4, 1, 4)


@pytest.mark.parametrize("threads", [1, 3])
def test_thread_counts_give_identical_logits(lib, random_v4, threads):
    tokens = [4, 8, 15, 16, 23, 42]
    one = load(lib, random_v4, threads=2)
    other = load(lib, random_v4, threads=threads)
    try:
        a, _ = run_sequence(lib, one, tokens)
        b, _ = run_sequence(lib, other, tokens)
    finally:
        lib.free(one)
        lib.free(other)
    np.testing.assert_array_equal(a, b)
