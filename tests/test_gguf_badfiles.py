"""Malformed GGUF files give a clear exception, never a crash or an out-of-bounds read.

Rerun under AddressSanitizer + UndefinedBehaviorSanitizer with test_badfiles.py (see
`test_bad_files_under_sanitizers` there).
"""

from __future__ import annotations

import os
import struct
from pathlib import Path

import numpy as np
import pytest
from gguf_writer import (
    ARRAY,
    F32,
    I32,
    STRING,
    U32,
    U64,
    GGUFTensor,
    write_container,
    write_rwkv_gguf,
)

from rwkv_cli import engine as native
from rwkv_cli.formats.synthetic import random_tensors


@pytest.fixture(scope="module")
def lib() -> native.Library:
    library = native.Library(os.environ.get("RWKV_CPP_LIB"))
    library.set_print_errors(None, False)
    return library


@pytest.fixture(scope="module")
def good(tmp_path_factory):
    d = tmp_path_factory.mktemp("good-gguf")
    v7 = write_rwkv_gguf(d / "v7.gguf", "7", random_tensors("7", 1, 64, 40, 32, seed=1), 1, 64, 32)
    v6 = write_rwkv_gguf(d / "v6.gguf", "6", random_tensors("6", 2, 64, 40, 32, seed=1), 2, 64, 32,
                         rescale_every=1)
    k = write_rwkv_gguf(d / "k.gguf", "7", random_tensors("7", 1, 256, 40, 64, seed=1), 1, 256, 64,
                        kind="Q4_K")
    return {"v7": v7.path, "v6": v6.path, "k": k.path}


def assert_refused(lib, path, match=None):
    with pytest.raises(native.RWKVError) as info:
        lib.free(lib.init_from_file(path, 1))
    message = str(info.value)
    assert message
    if match:
        assert match in message, message
    return message


def write(tmp_path: Path, data: bytes, name="bad.gguf") -> Path:
    path = tmp_path / name
    path.write_bytes(data)
    return path


def test_good_files_load_and_run(lib, good):
    for path in good.values():
        ctx = lib.init_from_file(path, 1)
        state = np.empty(lib.get_state_len(ctx), np.float32)
        logits = np.empty(lib.get_logits_len(ctx), np.float32)
        lib.eval(ctx, 1, None, state, logits)
        assert np.isfinite(logits).all()
        lib.free(ctx)


@pytest.mark.parametrize("which", ["v7", "v6", "k"])
def test_truncated_at_many_offsets(lib, tmp_path, good, which):
    data = good[which].read_bytes()
    offsets = sorted(set(range(0, 400, 3)) | set(range(400, len(data), max(1, len(data) // 120))))
    for n in offsets:
        if n < len(data):
            assert_refused(lib, write(tmp_path, data[:n]))


# ---- the header ------------------------------------------------------------------------------


def patched(path: Path, offset: int, fmt: str, value) -> bytes:
    data = bytearray(path.read_bytes())
    struct.pack_into(fmt, data, offset, value)
    return bytes(data)


@pytest.mark.parametrize("version,message", [(1, "GGUF version 1"), (4, "GGUF version 4"),
                                             (0x03000000, "big endian")])
def test_unsupported_versions(lib, tmp_path, good, version, message):
    assert_refused(lib, write(tmp_path, patched(good["v7"], 4, "<I", version)), message)


@pytest.mark.parametrize("offset,what", [(8, "tensors"), (16, "metadata entries")])
@pytest.mark.parametrize("count", [1 << 62, 1 << 30, 0xFFFFFFFFFFFFFFFF])
def test_huge_counts(lib, tmp_path, good, offset, what, count):
    assert_refused(lib, write(tmp_path, patched(good["v7"], offset, "<Q", count)), what)


def test_not_gguf_nor_rwkv_cpp(lib, tmp_path, good):
    data = good["v7"].read_bytes()
    assert_refused(lib, write(tmp_path, b"GGUG" + data[4:]), "nor a GGUF file")


# ---- metadata --------------------------------------------------------------------------------


def small_container(tmp_path, metadata, tensors=(), **kw) -> Path:
    return write_container(tmp_path / "c.gguf", metadata, list(tensors), **kw)


def raw_kv(key: bytes, vtype: int, payload: bytes) -> bytes:
    return struct.pack("<Q", len(key)) + key + struct.pack("<I", vtype) + payload


def container_with_raw_kv(kv: bytes, n_kv=1) -> bytes:
    return b"GGUF" + struct.pack("<IQQ", 3, 0, n_kv) + kv


@pytest.mark.parametrize(
    "kv,message",
    [
        (struct.pack("<Q", 1 << 40) + b"key" + b"\0" * 32, "truncated"),  # key length past the end
        (struct.pack("<Q", 0) + struct.pack("<I", U32) + b"\0" * 4, "empty"),
        (raw_kv(b"a\0b", U32, b"\0" * 4), "NUL"),
        (raw_kv(b"k", 99, b"\0" * 8), "unknown value type 99"),
        (raw_kv(b"k", STRING, struct.pack("<Q", 1 << 50) + b"abc"), "truncated"),
        (raw_kv(b"k", ARRAY, struct.pack("<IQ", 77, 3)), "array of unknown type 77"),
        (raw_kv(b"k", ARRAY, struct.pack("<IQ", U64, 1 << 61)), "truncated"),
        (raw_kv(b"k", ARRAY, struct.pack("<IQ", STRING, 1 << 40) + b"\0" * 64), "truncated"),
        (raw_kv(b"k", ARRAY, struct.pack("<IQ", ARRAY, 1) * 6 + struct.pack("<IQ", U32, 0)),
         "nests arrays"),
        (raw_kv(b"k", U64, b"\0" * 3), "truncated"),
    ],
    ids=["key-length", "empty-key", "nul-key", "value-type", "string-length", "array-type",
         "array-count", "string-array-count", "nested", "short-scalar"],
)
def test_bad_metadata(lib, tmp_path, kv, message):
    assert_refused(lib, write(tmp_path, container_with_raw_kv(kv)), message)


@pytest.mark.parametrize("alignment", [(U32, 0), (U32, 3), (U32, 1 << 30), (STRING, "32"),
                                       (F32, 32.0)])
def test_bad_alignment(lib, tmp_path, alignment):
    path = small_container(tmp_path, {"general.architecture": "rwkv7", "general.alignment": alignment})
    assert_refused(lib, path, "general.alignment")


# ---- tensor records --------------------------------------------------------------------------


def tensor_record(name: bytes, dims, type_id=0, offset=0, n_dims=None) -> bytes:
    out = struct.pack("<Q", len(name)) + name + struct.pack("<I", len(dims) if n_dims is None else n_dims)
    out += struct.pack(f"<{len(dims)}Q", *dims) + struct.pack("<IQ", type_id, offset)
    return out


def container_with_tensor(record: bytes, data_bytes=256, extra_tensors=b"", n_tensors=1) -> bytes:
    head = b"GGUF" + struct.pack("<IQQ", 3, n_tensors, 0) + record + extra_tensors
    head += b"\0" * (-len(head) % 32)
    return head + b"\x01" * data_bytes


@pytest.mark.parametrize(
    "record,message",
    [
        (tensor_record(b"t", [4], n_dims=0), "dimensions"),
        (tensor_record(b"t", [4, 1, 1, 1, 1]), "dimensions"),
        (tensor_record(b"t", [0]), "dimension 0 = 0"),
        (tensor_record(b"t", [1 << 30, 1 << 30]), "too large"),
        (tensor_record(b"t", [0xFFFFFFFFFFFFFFFF]), "too large"),
        (tensor_record(b"t", [4], type_id=99), "unknown GGUF type id 99"),
        (tensor_record(b"t", [256], type_id=16), "IQ2_XXS"),
        (tensor_record(b"t", [256], type_id=15), "Q8_K"),
        (tensor_record(b"t", [100], type_id=12), "multiple of 256"),
        (tensor_record(b"t", [48], type_id=8), "multiple of 32"),
        (tensor_record(b"t", [4], offset=4), "alignment"),
        (tensor_record(b"t", [4], offset=1 << 40), "truncated"),
        (tensor_record(b"t", [1000]), "truncated"),
        (tensor_record(b"", [4]), "name"),
        (tensor_record(b"a\0b", [4]), "name"),
        (tensor_record(b"x" * 2000, [4]), "name"),
    ],
    ids=["0-dims", "5-dims", "zero-dim", "overflow", "dim-max", "unknown-type", "iq2", "q8k",
         "k-row", "q8-row", "misaligned", "offset-past-end", "size-past-end", "empty-name",
         "nul-name", "long-name"],
)
def test_bad_tensor_records(lib, tmp_path, record, message):
    assert_refused(lib, write(tmp_path, container_with_tensor(record)), message)


def test_duplicate_tensor_names(lib, tmp_path):
    data = container_with_tensor(tensor_record(b"same", [4]), extra_tensors=tensor_record(b"same", [4], offset=32),
                                 n_tensors=2)
    assert_refused(lib, write(tmp_path, data), "appears twice")


def test_data_section_missing(lib, tmp_path):
    data = b"GGUF" + struct.pack("<IQQ", 3, 1, 0) + tensor_record(b"t", [4])
    assert_refused(lib, write(tmp_path, data), "data section")


# ---- RWKV content ----------------------------------------------------------------------------


def rewrite(tmp_path, good_path: Path, drop=(), metadata=None, reshape=None, retype=None) -> Path:
    """The good file with tensors dropped, metadata replaced, or a tensor given another shape
    or declared type (its bytes as they were)."""
    import gguf

    reader = gguf.GGUFReader(good_path)
    md = {}
    for field in reader.fields.values():
        if field.name.startswith("GGUF.") or field.name == "general.alignment":
            continue
        vtype = int(field.types[0])
        if vtype == ARRAY:
            elem = int(field.types[1])
            items = [field.contents(i) for i in range(len(field.data))]
            md[field.name] = (ARRAY, (elem, items))
        else:
            md[field.name] = (vtype, field.contents())
    for key, value in (metadata or {}).items():
        if value is None:
            md.pop(key, None)
        else:
            md[key] = value
    tensors = []
    for t in reader.tensors:
        if t.name in drop:
            continue
        kind = t.tensor_type.name
        shape = tuple(int(d) for d in reversed(t.shape.tolist()))
        if reshape and t.name in reshape:
            shape = reshape[t.name]
        if retype and t.name in retype:
            kind = retype[t.name]
        tensors.append(GGUFTensor(t.name, kind, shape, bytes(t.data.tobytes())))
    return write_container(tmp_path / "rewritten.gguf", md, tensors)


def test_rewriting_the_good_file_changes_nothing(lib, tmp_path, good):
    path = rewrite(tmp_path, good["v7"])
    lib.free(lib.init_from_file(path, 1))


@pytest.mark.parametrize(
    "which,name,ours",
    [("v7", "token_embd.weight", "token_embd.weight"), ("v7", "output.weight", "output.weight"),
     ("v7", "blk.0.time_mix_key.weight", "blk.0.time_mix_key.weight"),
     ("v7", "blk.0.time_mix_lerp_fused.weight", "blk.0.time_mix_lerp_fused.weight"),
     ("v7", "blk.0.time_mix_r_k.weight", "blk.0.time_mix_r_k.weight"),
     ("v6", "blk.1.time_mix_lerp_fused.weight", "time_mix_lerp_fused"),
     ("v6", "blk.1.time_mix_first.weight", "blk.1.time_mix_first.weight"),
     ("v6", "blk.0.channel_mix_receptance.weight", "blk.0.channel_mix_receptance.weight")],
)
def test_missing_tensor_is_named_as_in_the_file(lib, tmp_path, good, which, name, ours):
    assert_refused(lib, rewrite(tmp_path, good[which], drop={name}), ours)


@pytest.mark.parametrize(
    "which,name,shape",
    [("v7", "blk.0.time_mix_key.weight", (64, 32)), ("v7", "token_embd.weight", (40, 32)),
     ("v6", "blk.0.time_mix_w2.weight", (4, 64, 32)), ("v6", "blk.0.time_mix_lerp_fused.weight", (4, 1, 1, 64)),
     ("v7", "blk.0.time_mix_lerp_fused.weight", (5, 1, 1, 64))],
)
def test_misshapen_tensor_is_refused(lib, tmp_path, good, which, name, shape):
    import gguf

    size = {t.name: t.data.nbytes for t in gguf.GGUFReader(good[which]).tensors}[name]
    if int(np.prod(shape)) * 4 > size:
        pytest.skip("the new shape needs more bytes than the tensor has")
    assert_refused(lib, rewrite(tmp_path, good[which], reshape={name: shape}))


@pytest.mark.parametrize(
    "which,metadata,message",
    [
        ("v7", {"general.architecture": (STRING, "llama")}, "architecture 'llama'"),
        ("v7", {"general.architecture": None}, "general.architecture"),
        ("v7", {"general.architecture": (U32, 7)}, "general.architecture"),
        ("v7", {"rwkv7.wkv.head_size": None}, "rwkv7.wkv.head_size"),
        ("v7", {"rwkv7.wkv.head_size": (U32, 48)}, "implausible"),
        ("v7", {"rwkv7.embedding_length": (U32, 0)}, "implausible"),
        ("v7", {"rwkv7.embedding_length": (U32, 128)}, "token_embd.weight"),
        ("v7", {"rwkv7.block_count": (U32, 2)}, "blk.1."),
        ("v7", {"rwkv7.block_count": (I32, -1)}, "rwkv7.block_count"),
        ("v7", {"rwkv7.token_shift_count": (U32, 1)}, "token_shift_count"),
        ("v7", {"rwkv7.rescale_every_n_layers": (U32, 6)}, "only rwkv6"),
        ("v6", {"general.architecture": (STRING, "rwkv7")}, "rwkv7.embedding_length"),
    ],
    ids=["llama", "no-arch", "arch-not-string", "no-head-size", "head-size", "no-embed",
         "embed-mismatch", "more-blocks", "negative-blocks", "token-shift", "rescale-v7",
         "v6-as-v7"],
)
def test_bad_rwkv_metadata(lib, tmp_path, good, which, metadata, message):
    assert_refused(lib, rewrite(tmp_path, good[which], metadata=metadata), message)


def test_block_type_where_rows_do_not_fit_is_refused(lib, tmp_path, good):
    """A 64-wide matrix declared Q4_K: rows must be whole 256-value super-blocks."""
    path = rewrite(tmp_path, good["v7"], retype={"blk.0.time_mix_key.weight": "Q4_K"})
    assert_refused(lib, path, "multiple of 256")


def test_random_byte_corruption_never_crashes(lib, tmp_path, good):
    rng = np.random.default_rng(0)
    for which in ("v7", "k"):
        data = bytearray(good[which].read_bytes())
        for _ in range(120):
            mutated = bytearray(data)
            for pos in rng.integers(0, min(len(data), 2048), size=3):
                mutated[pos] = int(rng.integers(0, 256))
            path = write(tmp_path, bytes(mutated))
            try:
                ctx = lib.init_from_file(path, 1)
            except native.RWKVError:
                continue
            state = np.empty(lib.get_state_len(ctx), np.float32)
            logits = np.empty(lib.get_logits_len(ctx), np.float32)
            lib.eval(ctx, 1, None, state, logits)
            lib.free(ctx)


def test_quantizer_refuses_gguf_input(lib, tmp_path, good):
    with pytest.raises(native.RWKVError, match="GGUF"):
        lib.quantize_model_file(good["v7"], tmp_path / "o.bin", "Q8_0")
    assert not (tmp_path / "o.bin").exists()
