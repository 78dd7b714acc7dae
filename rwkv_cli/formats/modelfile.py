"""Read and write rwkv.cpp model files in pure Python + numpy.

File layout (facts of the rwkv.cpp format, all integers int32 little endian):

    header:  magic=0x67676d66 ("ggmf"), version (100 | 101), n_vocab, n_embed, n_layer, data_type
    tensors, until end of file:
             n_dims, key_len, data_type, dims[n_dims], key (utf-8, key_len bytes), data

`dims` are ggml's order, i.e. reversed against PyTorch: a PyTorch (rows, cols) matrix is stored
with dims = [cols, rows], rows contiguous. Data are FP32, FP16 or ggml blocks of 32 values (see
QUANT_FORMATS.md in the shared docs). Version 100 files hold quantized blocks in an older layout
that this module refuses; FP32/FP16 tensors in version 100 files are read normally.

The quantizer here is written with numpy in float32 only, so that its output is bit-compatible
with rwkv.cpp's (it is the independent check of the C quantizer).
"""

from __future__ import annotations

import math
import os
import struct
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO, Union

import numpy as np

from ..errors import UserError
from .tensor_types import (  # noqa: F401 (re-exported: the facts of the format, with its reader)
    BLOCK_BYTES,
    BLOCK_SIZE,
    DATA_TYPE_NAMES,
    DATA_TYPES,
    MAGIC,
    MAX_DIMS,
    MAX_ELEMENTS,
    MAX_KEY_LEN,
    MAX_N_EMBED,
    MAX_N_LAYER,
    MAX_N_VOCAB,
    QUANTIZED_MIN_VERSION,
    QUANTIZED_TYPES,
    VERSIONS,
    should_quantize,
    tensor_type,
)

HEADER_STRUCT = struct.Struct("<6i")
TENSOR_HEAD_STRUCT = struct.Struct("<3i")

PathLike = Union[str, os.PathLike]


class ModelFileError(UserError, ValueError):
    """A model file that cannot be read or written; the message names file, offset and key."""


@dataclass
class ModelHeader:
    version: int
    n_vocab: int
    n_embed: int
    n_layer: int
    data_type: int

    @property
    def data_type_name(self) -> str:
        return DATA_TYPE_NAMES.get(self.data_type, f"unknown({self.data_type})")


@dataclass
class TensorInfo:
    key: str
    data_type: int
    shape: tuple[int, ...]  # PyTorch order
    offset: int  # file offset of the data
    nbytes: int

    @property
    def data_type_name(self) -> str:
        return DATA_TYPE_NAMES.get(self.data_type, f"unknown({self.data_type})")

    @property
    def n_values(self) -> int:
        return int(np.prod(self.shape, dtype=np.int64))


# ----------------------------------------------------------------------------------------------
# Data types


def type_id(data_type: str | int) -> int:
    """The numeric id of a data type given by name ("Q5_1") or id (8)."""
    return tensor_type(data_type).id


def type_name(data_type: str | int) -> str:
    return tensor_type(data_type).name


def tensor_nbytes(data_type: str | int, n_values: int) -> int:
    """Bytes of `n_values` values stored as `data_type` (n_values a multiple of 32 if quantized)."""
    return tensor_type(data_type).nbytes(n_values)


# ----------------------------------------------------------------------------------------------
# Reading


def _read_exact(f: BinaryIO, n: int, path: PathLike, offset: int, what: str) -> bytes:
    data = f.read(n)
    if len(data) != n:
        raise ModelFileError(
            f"{path}: truncated file at offset {offset}: expected {n} bytes of {what}, "
            f"got {len(data)}"
        )
    return data


def _parse_header(raw: bytes, path: PathLike) -> ModelHeader:
    magic, version, n_vocab, n_embed, n_layer, data_type = HEADER_STRUCT.unpack(raw)
    if magic != MAGIC:
        raise ModelFileError(
            f"{path}: bad magic 0x{magic & 0xFFFFFFFF:08x} at offset 0 "
            f"(expected 0x{MAGIC:08x}, 'ggmf'); not an rwkv.cpp model file"
        )
    if version not in VERSIONS:
        raise ModelFileError(
            f"{path}: unsupported file version {version} at offset 4 (expected 100 or 101)"
        )
    # The limits of native/model.c: larger values are damage, not models.
    for name, value, off, limit in (("n_vocab", n_vocab, 8, MAX_N_VOCAB),
                                    ("n_embed", n_embed, 12, MAX_N_EMBED),
                                    ("n_layer", n_layer, 16, MAX_N_LAYER)):
        if not 0 < value <= limit:
            raise ModelFileError(
                f"{path}: implausible header: {name} {value} at offset {off} "
                f"(1 to {limit} allowed)"
            )
    if data_type not in DATA_TYPE_NAMES:
        raise ModelFileError(
            f"{path}: unsupported data type {data_type} at offset 20 in the header "
            f"(known: {sorted(DATA_TYPE_NAMES)})"
        )
    if version < QUANTIZED_MIN_VERSION and DATA_TYPE_NAMES[data_type] in QUANTIZED_TYPES:
        raise ModelFileError(
            f"{path}: quantized file of version {version} uses an old block layout that is not "
            f"supported; quantize the FP32/FP16 model again with a current tool"
        )
    return ModelHeader(version, n_vocab, n_embed, n_layer, data_type)


def read_header(path: PathLike) -> ModelHeader:
    """The file header; raises ModelFileError for anything but an rwkv.cpp model file."""
    with open(path, "rb") as f:
        return _parse_header(_read_exact(f, HEADER_STRUCT.size, path, 0, "header"), path)


def _iter_tensor_infos(f: BinaryIO, path: PathLike, header: ModelHeader, file_size: int):
    offset = HEADER_STRUCT.size
    seen: set[str] = set()
    while offset < file_size:
        start = offset
        f.seek(offset)
        n_dims, key_len, data_type = TENSOR_HEAD_STRUCT.unpack(
            _read_exact(f, TENSOR_HEAD_STRUCT.size, path, offset, "tensor header")
        )
        offset += TENSOR_HEAD_STRUCT.size
        if not 1 <= n_dims <= MAX_DIMS:
            raise ModelFileError(
                f"{path}: bad dimension count {n_dims} in the tensor header at offset {start}"
            )
        if not 0 < key_len <= MAX_KEY_LEN:
            raise ModelFileError(
                f"{path}: bad key length {key_len} in the tensor header at offset {start} "
                f"(1 to {MAX_KEY_LEN} allowed)"
            )
        dims = struct.unpack(
            f"<{n_dims}i", _read_exact(f, 4 * n_dims, path, offset, "tensor dimensions")
        )
        offset += 4 * n_dims
        key_raw = _read_exact(f, key_len, path, offset, "tensor key")
        offset += key_len
        try:
            key = key_raw.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise ModelFileError(
                f"{path}: tensor key at offset {offset - key_len} is not utf-8: {key_raw!r}"
            ) from exc
        if "\x00" in key:
            raise ModelFileError(
                f"{path}: tensor key at offset {offset - key_len} contains a NUL byte: {key!r}"
            )
        if data_type not in DATA_TYPE_NAMES:
            raise ModelFileError(
                f"{path}: tensor {key!r} (offset {start}) has unsupported data type {data_type}"
            )
        name = DATA_TYPE_NAMES[data_type]
        if any(d <= 0 for d in dims):
            raise ModelFileError(
                f"{path}: tensor {key!r} (offset {start}) has bad dimensions {list(dims)}"
            )
        n_values = math.prod(dims)  # Python integers: four int32 dimensions overflow int64
        if n_values > MAX_ELEMENTS:
            raise ModelFileError(
                f"{path}: tensor {key!r} (offset {start}) is too large: dimensions {list(dims)}"
            )
        if name in QUANTIZED_TYPES:
            if header.version < QUANTIZED_MIN_VERSION:
                raise ModelFileError(
                    f"{path}: tensor {key!r} is quantized ({name}) in a version {header.version} "
                    f"file, whose old block layout is not supported; quantize the FP32/FP16 "
                    f"model again with a current tool"
                )
            if dims[0] % BLOCK_SIZE:
                raise ModelFileError(
                    f"{path}: quantized tensor {key!r} (offset {start}) has row length "
                    f"{dims[0]}, not a multiple of {BLOCK_SIZE}"
                )
        if key in seen:
            raise ModelFileError(f"{path}: duplicate tensor key {key!r} at offset {start}")
        seen.add(key)
        nbytes = tensor_nbytes(data_type, n_values)
        if offset + nbytes > file_size:
            raise ModelFileError(
                f"{path}: truncated file: tensor {key!r} needs {nbytes} bytes at offset {offset}, "
                f"but the file ends at {file_size}"
            )
        yield TensorInfo(key, data_type, tuple(reversed(dims)), offset, nbytes)
        offset += nbytes


def list_tensors(path: PathLike) -> list[TensorInfo]:
    """Every tensor's key, type, PyTorch shape and data location; reads no tensor data."""
    file_size = os.path.getsize(path)
    with open(path, "rb") as f:
        header = _parse_header(_read_exact(f, HEADER_STRUCT.size, path, 0, "header"), path)
        return list(_iter_tensor_infos(f, path, header, file_size))


def _decode(raw: bytes, info: TensorInfo) -> np.ndarray:
    name = DATA_TYPE_NAMES[info.data_type]
    if name == "FP32":
        values = np.frombuffer(raw, dtype="<f4").astype(np.float32, copy=True)
    elif name == "FP16":
        values = np.frombuffer(raw, dtype="<f2").astype(np.float32)
    else:
        values = dequantize_bytes(raw, name, info.n_values)
    return values.reshape(info.shape)


def read_tensor(path: PathLike, info: TensorInfo) -> np.ndarray:
    """One tensor as float32 in PyTorch shape (quantized tensors are dequantized)."""
    with open(path, "rb") as f:
        f.seek(info.offset)
        raw = _read_exact(f, info.nbytes, path, info.offset, f"tensor {info.key!r}")
    return _decode(raw, info)


def read_model(path: PathLike) -> tuple[ModelHeader, dict[str, np.ndarray]]:
    """The header and every tensor as float32 in PyTorch shape, in file order."""
    header = read_header(path)
    infos = list_tensors(path)
    tensors: dict[str, np.ndarray] = {}
    with open(path, "rb") as f:
        for info in infos:
            f.seek(info.offset)
            raw = _read_exact(f, info.nbytes, path, info.offset, f"tensor {info.key!r}")
            tensors[info.key] = _decode(raw, info)
    return header, tensors


def detect_arch(keys: Iterable[str]) -> str:
    """Architecture version from the tensor keys: "4", "5.1", "5.2", "6" or "7"."""
    keys = set(keys)
    if "blocks.0.att.k_k" in keys:
        return "7"
    if "blocks.0.att.time_maa_x" in keys:
        return "6"
    if "blocks.0.att.ln_x.weight" in keys:
        return "5.2" if "blocks.0.att.gate.weight" in keys else "5.1"
    if "blocks.0.att.time_decay" in keys and "blocks.0.att.time_first" in keys:
        return "4"
    raise ModelFileError(
        "cannot detect the RWKV architecture: none of the keys blocks.0.att.k_k (v7), "
        "blocks.0.att.time_maa_x (v6), blocks.0.att.ln_x.weight (v5), "
        "blocks.0.att.time_decay + time_first (v4) is present"
    )


def describe(path: PathLike) -> dict:
    """A summary of a model file for listings (no tensor data read)."""
    header = read_header(path)
    infos = list_tensors(path)
    return {
        "arch": detect_arch(info.key for info in infos),
        "data_type": header.data_type_name,
        "n_vocab": header.n_vocab,
        "n_embed": header.n_embed,
        "n_layer": header.n_layer,
        "n_params": int(sum(info.n_values for info in infos)),
        "file_size": os.path.getsize(path),
        "version": header.version,
        "head_type": next((i.data_type_name for i in infos if i.key == "head.weight"), ""),
    }


# ----------------------------------------------------------------------------------------------
# Quantization (ggml block formats; see QUANT_FORMATS.md). Everything float32, vectorized.


def _half_bytes(values: np.ndarray) -> np.ndarray:
    """float32 -> IEEE half (round to nearest even), as (n, 2) little-endian bytes."""
    return values.astype("<f2").view(np.uint8).reshape(-1, 2)


def _reciprocal(d: np.ndarray) -> np.ndarray:
    out = np.zeros_like(d)
    nonzero = d != 0
    np.divide(np.float32(1.0), d, out=out, where=nonzero)
    return out


def _trunc_int(v: np.ndarray) -> np.ndarray:
    # C's conversion float -> int8 truncates toward zero.
    return np.trunc(v).astype(np.int32)


def _round_half_away(v: np.ndarray) -> np.ndarray:
    # roundf: exact, no float32 add of 0.5 (which would round 0.49999997 up).
    whole = np.trunc(v)
    frac = v - whole  # exact for |v| < 2**23
    return (whole + np.sign(v) * (np.abs(frac) >= np.float32(0.5))).astype(np.int32)


def _pack_nibbles(q: np.ndarray) -> np.ndarray:
    """(nb, 32) codes -> (nb, 16) bytes: value j in the low nibble, value j+16 in the high one."""
    low = (q[:, :16] & 0x0F).astype(np.uint8)
    high = (q[:, 16:] & 0x0F).astype(np.uint8)
    return low | (high << 4)


def _pack_high_bits(q: np.ndarray) -> np.ndarray:
    """(nb, 32) 5-bit codes -> (nb, 4) bytes of the little-endian word whose bit j is q_j's bit 4."""
    bits = ((q >> 4) & 1).astype(np.uint32)
    word = (bits << np.arange(32, dtype=np.uint32)).sum(axis=1, dtype=np.uint64).astype("<u4")
    return word.view(np.uint8).reshape(-1, 4)


def _signed_absmax(blocks: np.ndarray) -> np.ndarray:
    # The value of largest magnitude, sign kept; argmax returns the first one on ties.
    idx = np.argmax(np.abs(blocks), axis=1)
    return blocks[np.arange(blocks.shape[0]), idx]


def quantize_array(a: np.ndarray, type_name: str) -> bytes:
    """Quantize a float32 matrix (row length a multiple of 32) into ggml blocks, row by row."""
    name = type_name.upper()
    if name not in QUANTIZED_TYPES:
        raise ModelFileError(f"{type_name!r} is not a quantized type ({', '.join(QUANTIZED_TYPES)})")
    a = np.asarray(a)
    if a.ndim < 1 or a.shape[-1] % BLOCK_SIZE:
        raise ModelFileError(
            f"cannot quantize an array of shape {a.shape} to {name}: the row length must be a "
            f"multiple of {BLOCK_SIZE}"
        )
    x = np.ascontiguousarray(a, dtype=np.float32).reshape(-1, BLOCK_SIZE)
    nb = x.shape[0]
    out = np.empty((nb, BLOCK_BYTES[name]), dtype=np.uint8)

    if name in ("Q4_0", "Q5_0"):
        levels = np.float32(-8.0 if name == "Q4_0" else -16.0)
        top = 15 if name == "Q4_0" else 31
        bias = np.float32(8.5 if name == "Q4_0" else 16.5)
        d = (_signed_absmax(x) / levels).astype(np.float32)
        inv = _reciprocal(d)
        q = np.minimum(top, _trunc_int(x * inv[:, None] + bias))
        out[:, 0:2] = _half_bytes(d)
        if name == "Q4_0":
            out[:, 2:18] = _pack_nibbles(q)
        else:
            out[:, 2:6] = _pack_high_bits(q)
            out[:, 6:22] = _pack_nibbles(q)
    elif name in ("Q4_1", "Q5_1"):
        lo = x.min(axis=1)
        hi = x.max(axis=1)
        d = ((hi - lo) / np.float32(15.0 if name == "Q4_1" else 31.0)).astype(np.float32)
        inv = _reciprocal(d)
        q = _trunc_int((x - lo[:, None]) * inv[:, None] + np.float32(0.5))
        out[:, 0:2] = _half_bytes(d)
        out[:, 2:4] = _half_bytes(lo)
        if name == "Q4_1":
            out[:, 4:20] = _pack_nibbles(np.minimum(15, q))
        else:
            out[:, 4:8] = _pack_high_bits(q)
            out[:, 8:24] = _pack_nibbles(q)
    else:  # Q8_0
        amax = np.abs(x).max(axis=1)
        d = (amax / np.float32(127.0)).astype(np.float32)
        inv = _reciprocal(d)
        q = _round_half_away(x * inv[:, None])
        out[:, 0:2] = _half_bytes(d)
        out[:, 2:34] = q.astype(np.int8).view(np.uint8)
    return out.tobytes()


def _unpack_nibbles(qs: np.ndarray) -> np.ndarray:
    return np.concatenate([qs & 0x0F, qs >> 4], axis=1).astype(np.int32)


def _unpack_high_bits(qh: np.ndarray) -> np.ndarray:
    word = np.ascontiguousarray(qh).view("<u4").reshape(-1, 1).astype(np.uint32)
    return ((word >> np.arange(32, dtype=np.uint32)) & 1).astype(np.int32) << 4


def _half(raw: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(raw).view("<f2").reshape(-1).astype(np.float32)


def dequantize_bytes(raw: bytes, type_name: str, n_values: int) -> np.ndarray:
    """ggml blocks -> flat float32 array of n_values values."""
    name = type_name.upper()
    if name not in QUANTIZED_TYPES:
        raise ModelFileError(f"{type_name!r} is not a quantized type ({', '.join(QUANTIZED_TYPES)})")
    if n_values % BLOCK_SIZE:
        raise ModelFileError(f"{n_values} values are not whole blocks of {BLOCK_SIZE}")
    nb = n_values // BLOCK_SIZE
    expected = nb * BLOCK_BYTES[name]
    if len(raw) != expected:
        raise ModelFileError(
            f"{name} data of {n_values} values needs {expected} bytes, got {len(raw)}"
        )
    blocks = np.frombuffer(raw, dtype=np.uint8).reshape(nb, BLOCK_BYTES[name])
    d = _half(blocks[:, 0:2])[:, None]
    if name == "Q4_0":
        q = _unpack_nibbles(blocks[:, 2:18]) - 8
        values = q.astype(np.float32) * d
    elif name == "Q5_0":
        q = (_unpack_nibbles(blocks[:, 6:22]) | _unpack_high_bits(blocks[:, 2:6])) - 16
        values = q.astype(np.float32) * d
    elif name == "Q4_1":
        m = _half(blocks[:, 2:4])[:, None]
        values = _unpack_nibbles(blocks[:, 4:20]).astype(np.float32) * d + m
    elif name == "Q5_1":
        m = _half(blocks[:, 2:4])[:, None]
        q = _unpack_nibbles(blocks[:, 8:24]) | _unpack_high_bits(blocks[:, 4:8])
        values = q.astype(np.float32) * d + m
    else:  # Q8_0
        values = blocks[:, 2:34].view(np.int8).astype(np.float32) * d
    return values.astype(np.float32, copy=False).reshape(-1)


# ----------------------------------------------------------------------------------------------
# Writing


class ModelWriter:
    """Write an rwkv.cpp model file tensor by tensor.

    Use as a context manager: the data go to `path + ".tmp"`, renamed to `path` when the block
    ends without an exception; on an exception the temporary file is removed.
    """

    def __init__(
        self,
        path: PathLike,
        n_vocab: int,
        n_embed: int,
        n_layer: int,
        data_type: str | int = "FP32",
        version: int = 101,
    ):
        self.path = Path(path)
        self.tmp_path = Path(str(self.path) + ".tmp")
        if version not in VERSIONS:
            raise ModelFileError(f"{self.path}: cannot write file version {version}")
        self.header = ModelHeader(version, n_vocab, n_embed, n_layer, type_id(data_type))
        if version < QUANTIZED_MIN_VERSION and self.header.data_type_name in QUANTIZED_TYPES:
            raise ModelFileError(f"{self.path}: quantized files must be version 101")
        self._file: BinaryIO | None = None
        self._keys: set[str] = set()

    def __enter__(self) -> ModelWriter:  # noqa: PYI034
        self.open()
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            self.close()
        else:
            self.abort()

    def open(self) -> None:
        self._file = open(self.tmp_path, "wb")  # noqa: SIM115 (closed in close/abort)
        h = self.header
        self._file.write(
            HEADER_STRUCT.pack(MAGIC, h.version, h.n_vocab, h.n_embed, h.n_layer, h.data_type)
        )

    def close(self) -> None:
        """Finish the file: flush, close and move the temporary file into place."""
        if self._file is None:
            return
        self._file.close()
        self._file = None
        os.replace(self.tmp_path, self.path)

    def abort(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None
        if self.tmp_path.exists():
            self.tmp_path.unlink()

    def write_tensor(
        self, key: str, array: np.ndarray, data_type: str | int = "FP32"
    ) -> TensorInfo:
        """Append one tensor (PyTorch order), converted or quantized to `data_type`."""
        if self._file is None:
            raise ModelFileError(f"{self.path}: writer is not open (use it as a context manager)")
        if key in self._keys:
            raise ModelFileError(f"{self.path}: tensor {key!r} written twice")
        name = type_name(data_type)
        array = np.asarray(array)
        shape = tuple(int(d) for d in array.shape)
        if not 1 <= len(shape) <= MAX_DIMS or any(d <= 0 for d in shape):
            raise ModelFileError(f"{self.path}: tensor {key!r} has unsupported shape {shape}")
        if name in QUANTIZED_TYPES and self.header.version < QUANTIZED_MIN_VERSION:
            raise ModelFileError(f"{self.path}: cannot store {key!r} as {name} in a version 100 file")
        if name == "FP32":
            data = np.ascontiguousarray(array, dtype="<f4").tobytes()
        elif name == "FP16":
            data = np.ascontiguousarray(array, dtype=np.float32).astype("<f2").tobytes()
        else:
            try:
                data = quantize_array(np.asarray(array, dtype=np.float32), name)
            except ModelFileError as exc:
                raise ModelFileError(f"{self.path}: tensor {key!r}: {exc}") from exc
        offset = self._write_tensor_head(key, shape, name)
        self._file.write(data)
        self._keys.add(key)
        return TensorInfo(key, DATA_TYPES[name], shape, offset, len(data))

    def write_tensor_chunks(
        self, key: str, shape: tuple[int, ...], data_type: str, chunks: Iterable[np.ndarray]
    ) -> None:
        """Append one FP32 or FP16 tensor given as consecutive slices of its values (PyTorch
        order), so a large tensor never has to be in memory whole."""
        if self._file is None:
            raise ModelFileError(f"{self.path}: writer is not open (use it as a context manager)")
        if key in self._keys:
            raise ModelFileError(f"{self.path}: tensor {key!r} written twice")
        name = type_name(data_type)
        if name not in ("FP32", "FP16"):
            raise ModelFileError(f"{self.path}: {key!r}: slices can be written as FP32 or FP16 only")
        element = "<f2" if name == "FP16" else "<f4"
        self._write_tensor_head(key, shape, name)
        written = 0
        for chunk in chunks:
            data = np.ascontiguousarray(chunk, dtype=element)
            self._file.write(memoryview(data).cast("B"))
            written += data.size
            del data, chunk
        if written != int(np.prod(shape)):
            raise ModelFileError(f"{self.path}: {key!r}: got {written} values for shape {shape}")
        self._keys.add(key)

    def _write_tensor_head(self, key: str, shape: tuple[int, ...], name: str) -> int:
        """Writes a tensor record's head; returns the offset its data starts at."""
        key_raw = key.encode("utf-8")
        dims = tuple(reversed(shape))
        self._file.write(TENSOR_HEAD_STRUCT.pack(len(dims), len(key_raw), DATA_TYPES[name]))
        self._file.write(struct.pack(f"<{len(dims)}i", *dims))
        self._file.write(key_raw)
        return self._file.tell()
