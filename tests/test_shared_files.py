"""Our file reader, quantizers, random-model writer and converter against the files rwkv.cpp
wrote (needs ../shared): the trained tiny models in every type, their tensors' keys, order,
shapes and types, and rwkv.cpp's quantized blocks bit for bit.

Skipped as a whole without ../shared (a failure under RWKV_REQUIRE_FIXTURES=1); the same code
on files of our own is tested in test_modelfile.py and test_convert.py.
"""

from __future__ import annotations

import numpy as np
import pytest
from checkpoints import Shape, raw_checkpoint, write_pth
from helpers import FIXTURE_VERSIONS, TINY, may_skip_without, tiny_model

from rwkv_cli.formats import modelfile
from rwkv_cli.formats.convert import convert
from rwkv_cli.formats.modelfile import (
    DATA_TYPES,
    describe,
    detect_arch,
    list_tensors,
    quantize_array,
    read_header,
    read_model,
    should_quantize,
)
from rwkv_cli.formats.synthetic import ARCHS, random_tensors, write_random_model

if may_skip_without(TINY):
    pytest.skip(
        f"{TINY} absent: the comparisons with the files rwkv.cpp wrote did not run",
        allow_module_level=True,
    )

ARCH_OF_VERSION = {"4v0": "4", "5v1": "5.1", "5v2": "5.2", "6v0": "6", "7v0": "7"}
FIXTURE_FILES = [
    (version, dtype)
    for version in FIXTURE_VERSIONS
    for dtype in ("FP32", "FP16", "Q5_0", "Q5_1")
    if version != "6v0" or dtype.startswith("Q")
]


# ---- the reader and the NumPy quantizer --------------------------------------------------------


@pytest.mark.parametrize("version,dtype", FIXTURE_FILES)
def test_fixture_header_and_tensors_cover_the_file(version, dtype):
    path = tiny_model(version, dtype)
    header = read_header(path)
    assert header.data_type_name == dtype
    assert header.n_vocab == 256
    infos = list_tensors(path)
    last = infos[-1]
    assert last.offset + last.nbytes == path.stat().st_size
    assert detect_arch(i.key for i in infos) == ARCH_OF_VERSION[version]
    info = describe(path)
    assert info["arch"] == ARCH_OF_VERSION[version]
    assert info["n_params"] == sum(int(np.prod(i.shape)) for i in infos)
    assert info["file_size"] == path.stat().st_size


@pytest.mark.parametrize("version", ["4v0", "5v1", "5v2", "7v0"])
@pytest.mark.parametrize("dtype", ["FP16", "Q5_0", "Q5_1"])
def test_fixture_copies_decode_close_to_the_fp32_weights(version, dtype):
    _, fp32 = read_model(tiny_model(version, "FP32"))
    _, other = read_model(tiny_model(version, dtype))
    assert list(other) == list(fp32)
    for key, value in fp32.items():
        assert other[key].shape == value.shape, key
        scale = float(np.abs(value).max()) or 1.0
        tolerance = 1e-3 if dtype == "FP16" else 0.07  # a 5-bit step is 1/31 of a block's range
        # (+1e-6: 4v0 has a matrix of values below 1e-6, where half precision is subnormal)
        assert np.abs(other[key] - value).max() <= tolerance * scale + 1e-6, key


@pytest.mark.parametrize("version", ["4v0", "5v1", "5v2", "7v0"])
@pytest.mark.parametrize("qtype", ["Q5_0", "Q5_1"])
def test_quantize_array_reproduces_rwkv_cpp_bit_for_bit(version, qtype):
    fp32_path = tiny_model(version, "FP32")
    quant_path = tiny_model(version, qtype)
    _, fp32 = read_model(fp32_path)
    n_quantized = 0
    with open(quant_path, "rb") as f:
        for info in list_tensors(quant_path):
            f.seek(info.offset)
            stored = f.read(info.nbytes)
            source = fp32[info.key]
            if should_quantize(info.key, source.shape, "FP32"):
                n_quantized += 1
                assert info.data_type == DATA_TYPES[qtype], info.key
                assert quantize_array(source, qtype) == stored, info.key
            else:
                assert info.data_type == DATA_TYPES["FP32"], info.key
                assert source.astype("<f4").tobytes() == stored, info.key
    assert n_quantized > 0


# ---- the random-model writer --------------------------------------------------------------------

# (fixture version, data type, n_layer, n_embed, head_size, ffn_dim) of the shared tiny models
FIXTURE_SHAPES = {
    "4": ("4v0", "FP32", 4, 128, 64, 256),
    "5.1": ("5v1", "FP32", 12, 64, 8, 256),
    "5.2": ("5v2", "FP32", 12, 64, 8, 256),
    "6": ("6v0", "Q5_1", 12, 128, 8, 448),
    "7": ("7v0", "FP32", 12, 64, 64, 256),
}


@pytest.mark.parametrize("arch", ARCHS)
def test_random_tensors_have_rwkv_cpp_keys_order_and_shapes(arch):
    version, dtype, n_layer, n_embed, head_size, ffn = FIXTURE_SHAPES[arch]
    expected = [(i.key, i.shape) for i in list_tensors(tiny_model(version, dtype))]
    produced = [
        (key, value.shape)
        for key, value in random_tensors(arch, n_layer, n_embed, 256, head_size, ffn)
    ]
    assert produced == expected


@pytest.mark.parametrize("version", ["4v0", "5v1", "5v2", "7v0"])
def test_random_fp16_model_stores_types_like_rwkv_cpp(tmp_path, version):
    arch = ARCH_OF_VERSION[version]
    _, _, n_layer, n_embed, head_size, ffn = FIXTURE_SHAPES[arch]
    path = write_random_model(tmp_path / "m.bin", arch, n_layer, n_embed, 256, "FP16",
                              head_size=head_size, ffn_dim=ffn)
    expected = [(i.key, i.data_type) for i in list_tensors(tiny_model(version, "FP16"))]
    assert [(i.key, i.data_type) for i in list_tensors(path)] == expected


# ---- the converter ------------------------------------------------------------------------------


def _fixture_dims(infos) -> tuple[Shape, int]:
    by_key = {i.key: i.shape for i in infos}
    n_vocab, n_embed = by_key["emb.weight"]
    n_layer = 1 + max(int(i.key.split(".")[1]) for i in infos if i.key.startswith("blocks."))
    n_ffn = by_key["blocks.0.ffn.key.weight"][0]
    head_size, lora = 8, 4
    if "blocks.0.att.r_k" in by_key:
        head_size, lora = by_key["blocks.0.att.r_k"][1], by_key["blocks.0.att.w1"][0]
    elif "blocks.0.att.time_faaaa" in by_key:
        head_size = by_key["blocks.0.att.time_faaaa"][1]
        if "blocks.0.att.time_maa_w1" in by_key:
            lora = by_key["blocks.0.att.time_maa_w1"][0] // 5
    elif "blocks.0.att.time_first" in by_key and len(by_key["blocks.0.att.time_first"]) == 3:
        head_size = n_embed // by_key["blocks.0.att.time_first"][0]
    return Shape(n_layer, n_embed, n_vocab, head_size, n_ffn, lora), n_layer


@pytest.mark.parametrize("version", ["4v0", "5v1", "5v2", "6v0", "7v0"])
def test_keys_shapes_and_types_match_rwkv_cpp_files(tmp_path, version):
    arch = ARCH_OF_VERSION[version]
    types = ("Q5_1",) if version == "6v0" else ("FP16", "FP32")
    for data_type in types:
        theirs = modelfile.list_tensors(tiny_model(version, data_type))
        shape, _ = _fixture_dims(theirs)
        raw = raw_checkpoint(arch, shape, seed=1)
        dest = tmp_path / "ours.bin"
        convert(write_pth(tmp_path / "m.pth", raw), dest, "FP32" if data_type == "Q5_1" else data_type)
        ours = {i.key: i for i in modelfile.list_tensors(dest)}
        # the tiny models were trained with their own key order; compare as sets
        assert set(ours) == {i.key for i in theirs}
        for info in theirs:
            assert ours[info.key].shape == info.shape, info.key
            if info.data_type_name in ("FP32", "FP16"):
                assert ours[info.key].data_type_name == info.data_type_name, info.key


def test_fixture_layer0_of_v7_has_no_value_mix():
    keys = {i.key for i in modelfile.list_tensors(tiny_model("7v0", "FP32"))}
    assert "blocks.0.att.v0" not in keys and "blocks.1.att.v0" in keys


