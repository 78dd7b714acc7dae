"""The model-file layer: reading, writing, the numpy quantizer and the random-model generator."""

from __future__ import annotations

import struct

import numpy as np
import pytest

from rwkv_cli.formats.modelfile import (
    BLOCK_BYTES,
    DATA_TYPES,
    QUANTIZED_TYPES,
    ModelFileError,
    ModelWriter,
    dequantize_bytes,
    describe,
    detect_arch,
    list_tensors,
    quantize_array,
    read_header,
    read_model,
    read_tensor,
    should_quantize,
    tensor_type,
)
from rwkv_cli.formats.synthetic import ARCHS, random_tensors, write_random_model

MAGIC = 0x67676D66


def write_header(f, version=101, n_vocab=256, n_embed=32, n_layer=1, data_type=0):
    f.write(struct.pack("<6i", MAGIC, version, n_vocab, n_embed, n_layer, data_type))


def tensor_record(key: str, dims: tuple[int, ...], data_type: int, data: bytes) -> bytes:
    """A tensor as it sits in the file; dims in file (ggml) order."""
    raw = key.encode()
    head = struct.pack(f"<3i{len(dims)}i", len(dims), len(raw), data_type, *dims)
    return head + raw + data


@pytest.fixture
def small_file(tmp_path):
    """A hand-assembled file with one FP32 matrix (2 rows of 32) and one FP16 vector."""
    path = tmp_path / "small.bin"
    matrix = np.arange(64, dtype="<f4").reshape(2, 32)
    vector = np.array([0.5, -1.0, 2.0], dtype="<f2")
    with open(path, "wb") as f:
        write_header(f, n_embed=32)
        f.write(tensor_record("m", (32, 2), 0, matrix.tobytes()))
        f.write(tensor_record("v", (3,), 1, vector.tobytes()))
    return path, matrix, vector


# --- reading ------------------------------------------------------------------------------------


def test_hand_written_file_reads_back_in_pytorch_shape(small_file):
    path, matrix, vector = small_file
    infos = list_tensors(path)
    assert [(i.key, i.shape, i.data_type) for i in infos] == [("m", (2, 32), 0), ("v", (3,), 1)]
    assert infos[0].nbytes == 256 and infos[1].nbytes == 6
    np.testing.assert_array_equal(read_tensor(path, infos[0]), matrix)
    header, tensors = read_model(path)
    assert header.data_type_name == "FP32" and header.n_embed == 32
    np.testing.assert_array_equal(tensors["v"], vector.astype(np.float32))
    assert tensors["v"].dtype == np.float32


@pytest.mark.parametrize("dtype", ["FP32", "FP16", "Q5_1", "Q8_0"])
@pytest.mark.parametrize("arch", ARCHS)
def test_header_and_tensors_cover_a_random_model_file(tmp_path, arch, dtype):
    """The reader on files of every architecture and type written by our writer (on rwkv.cpp's
    own files: test_shared_files.py)."""
    path = write_random_model(tmp_path / "m.bin", arch, 2, 64, 100, dtype, head_size=16)
    header = read_header(path)
    assert (header.data_type_name, header.n_vocab, header.n_embed, header.n_layer) == (
        dtype, 100, 64, 2)
    infos = list_tensors(path)
    assert infos[0].offset > 24 and infos[-1].offset + infos[-1].nbytes == path.stat().st_size
    assert all(a.offset + a.nbytes < b.offset for a, b in zip(infos, infos[1:]))
    assert detect_arch(i.key for i in infos) == arch
    info = describe(path)
    assert info["arch"] == arch
    assert info["n_params"] == sum(int(np.prod(v.shape)) for _, v in
                                   random_tensors(arch, 2, 64, 100, head_size=16))
    assert info["file_size"] == path.stat().st_size


def test_bad_magic_is_refused(tmp_path):
    path = tmp_path / "bad.bin"
    path.write_bytes(struct.pack("<6i", 0x12345678, 101, 1, 1, 1, 0))
    with pytest.raises(ModelFileError, match="magic"):
        read_header(path)


def test_unknown_version_is_refused(tmp_path):
    path = tmp_path / "v99.bin"
    with open(path, "wb") as f:
        write_header(f, version=99)
    with pytest.raises(ModelFileError, match="version 99"):
        list_tensors(path)


def test_quantized_version_100_file_is_refused(tmp_path):
    path = tmp_path / "old.bin"
    with open(path, "wb") as f:
        write_header(f, version=100, data_type=0)
        f.write(tensor_record("m", (32, 1), DATA_TYPES["Q4_0"], bytes(18)))
    with pytest.raises(ModelFileError, match="old block layout"):
        list_tensors(path)


def test_short_header_is_a_truncated_file(tmp_path):
    path = tmp_path / "short.bin"
    path.write_bytes(struct.pack("<3i", MAGIC, 101, 1))
    with pytest.raises(ModelFileError, match="truncated"):
        read_header(path)


@pytest.mark.parametrize("cut", [1, 10, 100])
def test_truncated_file_error_names_file_and_offset(small_file, tmp_path, cut):
    path, _, _ = small_file
    data = path.read_bytes()
    cut_path = tmp_path / "cut.bin"
    cut_path.write_bytes(data[: len(data) - cut])
    with pytest.raises(ModelFileError, match="truncated") as err:
        list_tensors(cut_path)
    assert str(cut_path) in str(err.value) and "offset" in str(err.value)


def test_bad_tensor_type_is_refused(tmp_path):
    path = tmp_path / "type.bin"
    with open(path, "wb") as f:
        write_header(f)
        f.write(tensor_record("x", (4,), 5, bytes(16)))
    with pytest.raises(ModelFileError, match="'x'.*data type 5"):
        list_tensors(path)


def test_detect_arch_refuses_unknown_keys():
    with pytest.raises(ModelFileError, match="architecture"):
        detect_arch(["emb.weight", "head.weight"])


# --- the quantizer ------------------------------------------------------------------------------


def test_q4_0_block_layout_is_ggml_nibble_order():
    # d = 1.0 (half 0x3c00); byte j holds value j (low nibble) and value j+16 (high nibble)
    codes = np.arange(32) % 16
    qs = bytes(int(codes[j]) | (int(codes[j + 16]) << 4) for j in range(16))
    block = struct.pack("<H", 0x3C00) + qs
    np.testing.assert_array_equal(dequantize_bytes(block, "Q4_0", 32), codes - 8.0)


def test_q5_1_high_bits_come_from_the_qh_word():
    # d = 1, m = -16; all low nibbles 0; qh has bit j set for odd j -> values 16 for odd j
    qh = sum(1 << j for j in range(1, 32, 2))
    block = struct.pack("<HHI", 0x3C00, 0xCC00, qh) + bytes(16)
    expected = np.where(np.arange(32) % 2 == 1, 0.0, -16.0)
    np.testing.assert_array_equal(dequantize_bytes(block, "Q5_1", 32), expected)


def test_symmetric_scale_keeps_the_sign_of_the_first_largest_value():
    block = np.zeros((1, 32), np.float32)
    block[0, 3], block[0, 7] = -2.0, 2.0
    d = np.frombuffer(quantize_array(block, "Q4_0")[:2], "<f2")[0]
    assert d == np.float16(0.25)  # max is -2 (first), d = -2 / -8
    block[0, 3], block[0, 7] = 2.0, -2.0
    d = np.frombuffer(quantize_array(block, "Q4_0")[:2], "<f2")[0]
    assert d == np.float16(-0.25)


def test_q8_0_rounds_half_away_from_zero():
    block = np.zeros((1, 32), np.float32)
    block[0, 0] = 127.0  # d = 1 exactly
    block[0, 1:5] = [0.5, -0.5, 2.5, 0.49999997]
    q = np.frombuffer(quantize_array(block, "Q8_0")[2:], np.int8)
    assert list(q[:5]) == [127, 1, -1, 3, 0]


@pytest.mark.parametrize("qtype", QUANTIZED_TYPES)
def test_zero_block_quantizes_to_zeros(qtype):
    raw = quantize_array(np.zeros((2, 32), np.float32), qtype)
    assert len(raw) == 2 * BLOCK_BYTES[qtype]
    np.testing.assert_array_equal(dequantize_bytes(raw, qtype, 64), np.zeros(64))


@pytest.mark.parametrize("qtype", QUANTIZED_TYPES)
def test_quantization_error_is_within_one_step(qtype):
    rng = np.random.default_rng(1)
    a = rng.standard_normal((8, 96)).astype(np.float32) * rng.uniform(0.01, 10, (8, 1))
    back = dequantize_bytes(quantize_array(a, qtype), qtype, a.size).reshape(a.shape)
    blocks = a.reshape(-1, 32)
    span = blocks.max(1) - blocks.min(1)
    amax = np.abs(blocks).max(1)
    levels = {"Q4_0": 8, "Q5_0": 16, "Q8_0": 127, "Q4_1": 15, "Q5_1": 31}[qtype]
    step = (span if qtype.endswith("_1") else amax) / levels
    err = np.abs(back.reshape(-1, 32) - blocks).max(1)
    assert np.all(err <= step * 1.01 + 1e-6)


def test_quantize_refuses_rows_not_a_multiple_of_32():
    with pytest.raises(ModelFileError, match="multiple of 32"):
        quantize_array(np.zeros((2, 40), np.float32), "Q8_0")


def test_should_quantize_rule():
    assert should_quantize("blocks.0.att.key.weight", (64, 64), "FP32")
    assert should_quantize("blocks.3.ffn.value.weight", (64, 256), 1)
    assert should_quantize("blocks.0.att.time_decay_w1", (64, 128), "FP32")
    assert not should_quantize("emb.weight", (256, 64), "FP32")
    assert not should_quantize("head.weight", (256, 64), "FP32")
    for name in ("w1", "w2", "a1", "a2", "v1", "v2", "g1", "g2", "r_k"):
        assert not should_quantize(f"blocks.1.att.{name}", (32, 64), "FP32"), name
    assert not should_quantize("blocks.0.att.time_maa_w2", (5, 64, 32), "FP32")
    assert not should_quantize("blocks.0.ln1.weight", (64,), "FP32")
    assert not should_quantize("blocks.0.att.key.weight", (64, 64), "Q8_0")


# --- writing ------------------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", list(DATA_TYPES))
def test_write_read_round_trip(tmp_path, dtype):
    rng = np.random.default_rng(2)
    matrix = rng.standard_normal((3, 64)).astype(np.float32)
    vector = rng.standard_normal(5).astype(np.float32)
    path = tmp_path / f"{dtype}.bin"
    with ModelWriter(path, n_vocab=10, n_embed=64, n_layer=2, data_type=dtype) as writer:
        writer.write_tensor("blocks.0.att.key.weight", matrix, dtype)
        writer.write_tensor("blocks.0.ln1.weight", vector)
    header, tensors = read_model(path)
    assert (header.version, header.n_vocab, header.n_embed, header.n_layer) == (101, 10, 64, 2)
    assert header.data_type_name == dtype
    info = list_tensors(path)[0]
    assert info.shape == (3, 64) and info.data_type == DATA_TYPES[dtype]
    if dtype == "FP32":
        expected = matrix
    elif dtype == "FP16":
        expected = matrix.astype(np.float16).astype(np.float32)
    else:
        expected = dequantize_bytes(quantize_array(matrix, dtype), dtype, matrix.size)
    np.testing.assert_array_equal(tensors["blocks.0.att.key.weight"], expected.reshape(3, 64))
    np.testing.assert_array_equal(tensors["blocks.0.ln1.weight"], vector)


def test_writer_stores_dims_reversed(tmp_path):
    path = tmp_path / "dims.bin"
    with ModelWriter(path, 1, 1, 1) as writer:
        writer.write_tensor("t", np.zeros((2, 3, 4), np.float32))
    raw = path.read_bytes()
    assert struct.unpack("<6i", raw[24:48]) == (3, 1, 0, 4, 3, 2)


def test_writer_leaves_no_file_on_error(tmp_path):
    path = tmp_path / "fail.bin"
    with pytest.raises(RuntimeError), ModelWriter(path, 1, 32, 1) as writer:
        writer.write_tensor("t", np.zeros(32, np.float32))
        raise RuntimeError("interrupted")
    assert list(tmp_path.iterdir()) == []


def test_writer_refuses_quantized_version_100(tmp_path):
    with pytest.raises(ModelFileError, match="version"):
        ModelWriter(tmp_path / "x.bin", 1, 1, 1, data_type="Q4_0", version=100)




@pytest.mark.parametrize("arch", ARCHS)
def test_default_ffn_dim(arch):
    shapes = {key: value.shape for key, value in random_tensors(arch, 1, 256, 8, head_size=64)}
    expected = {"4": 1024, "5.1": 1024, "5.2": 1024, "6": 896, "7": 1024}[arch]
    assert shapes["blocks.0.ffn.key.weight"] == (expected, 256)


@pytest.mark.parametrize("source_type", ["FP32", "FP16"])
def test_random_quantized_model_quantizes_what_the_rule_selects(tmp_path, source_type):
    path = write_random_model(tmp_path / "q.bin", "7", 2, 64, 100, "Q5_1", head_size=32,
                              source_type=source_type)
    assert read_header(path).data_type_name == "Q5_1"
    types = {i.key: (i.data_type, i.shape) for i in list_tensors(path)}
    assert types["blocks.1.att.key.weight"][0] == DATA_TYPES["Q5_1"]
    assert types["blocks.1.att.w1"][0] == DATA_TYPES[source_type]
    assert types["head.weight"][0] == DATA_TYPES[source_type]
    assert types["blocks.1.att.r_k"][0] == DATA_TYPES["FP32"]
    assert types["blocks.1.att.x_rwkvag"][0] == DATA_TYPES["FP32"]


def test_random_model_is_reproducible_from_its_seed(tmp_path):
    a = write_random_model(tmp_path / "a.bin", "6", 1, 64, 50, head_size=16, seed=7)
    b = write_random_model(tmp_path / "b.bin", "6", 1, 64, 50, head_size=16, seed=7)
    c = write_random_model(tmp_path / "c.bin", "6", 1, 64, 50, head_size=16, seed=8)
    assert a.read_bytes() == b.read_bytes() != c.read_bytes()


# ---- the one table of tensor types ----


def test_tensor_types_by_name_and_id():
    assert tensor_type("q5_1") is tensor_type(8)
    assert tensor_type("Q5_1").nbytes(64) == 2 * BLOCK_BYTES["Q5_1"]
    assert tensor_type("FP16").nbytes(3) == 6 and not tensor_type("FP16").quantized
    with pytest.raises(ValueError, match="Q3_K"):
        tensor_type("Q3_K")
    with pytest.raises(ValueError, match="id 4"):
        tensor_type(4)


@pytest.mark.parametrize("qtype", QUANTIZED_TYPES)
def test_the_table_sizes_the_tensors_the_engine_quantizer_writes(tmp_path, qtype):
    from rwkv_cli.engine import default_library

    source = write_random_model(tmp_path / "fp32.bin", "7", 1, 64, 96, seed=3)
    target = tmp_path / f"{qtype}.bin"
    default_library().quantize_model_file(source, target, qtype)
    infos = list_tensors(target)
    assert any(info.data_type_name == qtype for info in infos)
    for info in infos:
        assert info.nbytes == tensor_type(info.data_type).nbytes(info.n_values), info.key
    # The records tile the file exactly: the sizes are those the engine wrote.
    end = infos[-1].offset + infos[-1].nbytes
    assert end == target.stat().st_size
