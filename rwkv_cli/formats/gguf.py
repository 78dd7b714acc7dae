"""Reading GGUF files (llama.cpp's container) without loading their weights: the metadata
(architecture, shapes, the vocabulary) and the tensor table. The engine maps the weights
itself (native/gguf.c); this is what the Python side needs: tokenizers, `rwkv-cpp models`,
the setup wizard.

Layout (little endian, versions 2 and 3): "GGUF", u32 version, u64 tensor count, u64 metadata
count; metadata entries (string key, u32 value type, value); tensor records (string name, u32
dims, u64 dims with the row length first, u32 type, u64 offset). A string is a u64 length and
UTF-8 bytes; an array is a u32 element type, a u64 count and the elements.
"""

from __future__ import annotations

import math
import os
import struct
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..errors import UserError
from .tensor_types import GGUF_BY_ID

MAGIC = b"GGUF"
VERSIONS = (2, 3)

# value types
_U8, _I8, _U16, _I16, _U32, _I32, _F32, _BOOL, _STRING, _ARRAY, _U64, _I64, _F64 = range(13)
_SCALARS = {_U8: "<B", _I8: "<b", _U16: "<H", _I16: "<h", _U32: "<I", _I32: "<i", _F32: "<f",
            _BOOL: "<?", _U64: "<Q", _I64: "<q", _F64: "<d"}
_ARRAY_CODES = {_U8: "B", _I8: "b", _U16: "H", _I16: "h", _U32: "I", _I32: "i", _F32: "f",
                _BOOL: "?", _U64: "Q", _I64: "q", _F64: "d"}

# GGUF's tensor type ids, by name
TYPE_NAMES = {t.id: t.name for t in GGUF_BY_ID.values()}

# llama.cpp's file types (general.file_type), as our type labels
FILE_TYPES = {
    0: "FP32", 1: "FP16", 2: "Q4_0", 3: "Q4_1", 7: "Q8_0", 8: "Q5_0", 9: "Q5_1", 10: "Q2_K",
    11: "Q3_K_S", 12: "Q3_K_M", 13: "Q3_K_L", 14: "Q4_K_S", 15: "Q4_K_M", 16: "Q5_K_S",
    17: "Q5_K_M", 18: "Q6_K", 21: "Q2_K_S", 32: "BF16",
}
_FILE_TYPE_GUESSED = 1024

ARCHITECTURES = {"rwkv6": "6", "rwkv7": "7"}


class GGUFError(UserError, ValueError):
    """A file that is not a GGUF file, or a malformed one."""


@dataclass
class GGUFTensorInfo:
    name: str
    shape: tuple[int, ...]  # NumPy order: the file's dims reversed
    type_name: str
    offset: int


@dataclass
class GGUFInfo:
    path: Path
    version: int
    metadata: dict[str, Any] = field(default_factory=dict)
    tensors: list[GGUFTensorInfo] = field(default_factory=list)

    @property
    def architecture(self) -> str | None:
        value = self.metadata.get("general.architecture")
        return value if isinstance(value, str) else None

    @property
    def rwkv_version(self) -> str | None:
        """"6" or "7" for the RWKV architectures the engine runs, else None."""
        return ARCHITECTURES.get(self.architecture or "")

    def arch_value(self, key: str, default: Any = None) -> Any:
        return self.metadata.get(f"{self.architecture}.{key}", default)

    @property
    def file_type(self) -> str | None:
        """llama.cpp's file type as a label ("Q4_K_M", "FP16"), when the file says it."""
        value = self.metadata.get("general.file_type")
        if not isinstance(value, int):
            return None
        return FILE_TYPES.get(value & ~_FILE_TYPE_GUESSED)

    @property
    def tokens(self) -> list[str] | None:
        tokens = self.metadata.get("tokenizer.ggml.tokens")
        return tokens if isinstance(tokens, list) else None

    @property
    def n_vocab(self) -> int | None:
        """Rows of the embedding (or, without the tensor table, the vocabulary's length)."""
        for t in self.tensors:
            if t.name == "token_embd.weight":
                return math.prod(t.shape[:-1])
        tokens = self.tokens
        return len(tokens) if tokens is not None else None


class _Reader:
    def __init__(self, data: bytes | memoryview, path: Path):
        self.data = data
        self.pos = 0
        self.path = path

    def take(self, n: int, what: str) -> memoryview:
        if n < 0 or self.pos + n > len(self.data):
            raise GGUFError(f"{self.path}: GGUF file truncated reading {what} at offset {self.pos}")
        out = memoryview(self.data)[self.pos:self.pos + n]
        self.pos += n
        return out

    def scalar(self, fmt: str, what: str):
        size = struct.calcsize(fmt)
        return struct.unpack(fmt, self.take(size, what))[0]

    def string(self, what: str) -> str:
        n = self.scalar("<Q", what)
        return bytes(self.take(n, what)).decode("utf-8", "replace")

    def value(self, vtype: int, key: str, depth: int = 0) -> Any:
        if vtype == _STRING:
            return self.string(f"the value of {key}")
        if vtype in _SCALARS:
            return self.scalar(_SCALARS[vtype], f"the value of {key}")
        if vtype != _ARRAY:
            raise GGUFError(f"{self.path}: metadata {key!r} has unknown value type {vtype}")
        if depth >= 4:
            raise GGUFError(f"{self.path}: metadata {key!r} nests arrays too deep")
        elem = self.scalar("<I", f"the array type of {key}")
        count = self.scalar("<Q", f"the array length of {key}")
        if elem in _ARRAY_CODES:
            size = struct.calcsize("<" + _ARRAY_CODES[elem])
            if count > (len(self.data) - self.pos) // size:
                raise GGUFError(f"{self.path}: GGUF file truncated reading the array {key!r}")
            raw = self.take(count * size, key)
            return list(struct.unpack(f"<{count}{_ARRAY_CODES[elem]}", raw))
        if elem == _STRING:
            if count > (len(self.data) - self.pos) // 8:
                raise GGUFError(f"{self.path}: GGUF file truncated reading the array {key!r}")
            return [self.string(key) for _ in range(count)]
        return [self.value(elem, key, depth + 1) for _ in range(count)]


def is_gguf(path: str | os.PathLike) -> bool:
    try:
        with open(path, "rb") as f:
            return f.read(4) == MAGIC
    except OSError:
        return False


def read_gguf(path: str | os.PathLike, tensors: bool = True) -> GGUFInfo:
    """The metadata and (tensors=True) the tensor table of a GGUF file; no weights are read."""
    path = Path(path)
    with open(path, "rb") as f:
        head = f.read(24)
        if len(head) < 4 or head[:4] != MAGIC:
            raise GGUFError(f"{path}: not a GGUF file")
        if len(head) < 24:
            raise GGUFError(f"{path}: GGUF file truncated in its header")
        version, n_tensors, n_kv = struct.unpack("<IQQ", head[4:24])
        if version not in VERSIONS:
            raise GGUFError(f"{path}: GGUF version {version} is not supported (2 and 3)")
        # the metadata and tensor records sit before the data; the vocabulary can take a few MB
        size = os.fstat(f.fileno()).st_size
        f.seek(0)
        data = f.read(min(size, 64 << 20))
    reader = _Reader(data, path)
    reader.pos = 24
    info = GGUFInfo(path, version)
    if n_kv > len(data) // 13 or n_tensors > len(data) // 33:
        raise GGUFError(f"{path}: GGUF header counts exceed the file")
    for _ in range(n_kv):
        key = reader.string("a metadata key")
        vtype = reader.scalar("<I", f"the type of {key}")
        info.metadata[key] = reader.value(vtype, key)
    if tensors:
        for _ in range(n_tensors):
            name = reader.string("a tensor name")
            n_dims = reader.scalar("<I", f"the dimensions of {name}")
            if not 1 <= n_dims <= 4:
                raise GGUFError(f"{path}: tensor {name!r} has {n_dims} dimensions")
            dims = struct.unpack(f"<{n_dims}Q", reader.take(8 * n_dims, f"the shape of {name}"))
            type_id, offset = struct.unpack("<IQ", reader.take(12, f"the type of {name}"))
            info.tensors.append(GGUFTensorInfo(
                name, tuple(reversed(dims)), TYPE_NAMES.get(type_id, f"type {type_id}"), offset))
    return info


def decode_token(text: str) -> bytes:
    """A token of `tokenizer.ggml.tokens` in llama.cpp's RWKV files: the bytes written as
    Python's repr(bytes) without the b'' around them (\\xNN, \\n, \\t, \\r, \\\\, \\' and \\"
    escapes; every other character is one ASCII byte)."""
    out = bytearray()
    i, n = 0, len(text)
    simple = {"n": 10, "t": 9, "r": 13, "\\": 92, "'": 39, '"': 34}
    while i < n:
        c = text[i]
        if c != "\\":
            code = ord(c)
            if code > 127:
                raise ValueError(f"token {text!r}: non-ASCII character {c!r} outside an escape")
            out.append(code)
            i += 1
            continue
        if i + 1 >= n:
            raise ValueError(f"token {text!r} ends with a backslash")
        e = text[i + 1]
        if e in simple:
            out.append(simple[e])
            i += 2
        elif e == "x" and i + 4 <= n:
            out.append(int(text[i + 2:i + 4], 16))
            i += 4
        else:
            raise ValueError(f"token {text!r}: unknown escape \\{e}")
    return bytes(out)


# the layers' big matrices: what decides a file's type when general.file_type is absent
_MATRIX_SUFFIXES = ("_key.weight", "_value.weight", "_receptance.weight", "_output.weight",
                    "_gate.weight")


def describe(path: str | os.PathLike) -> dict:
    """A summary of an RWKV GGUF file for listings (as modelfile.describe for rwkv.cpp files)."""
    info = read_gguf(path)
    if info.rwkv_version is None:
        raise GGUFError(
            f"{path}: GGUF architecture {info.architecture!r} is not one this engine runs "
            "(rwkv6, rwkv7)"
        )
    data_type = info.file_type
    if data_type is None:
        sizes: dict[str, int] = {}
        for t in info.tensors:
            if t.name.startswith("blk.") and t.name.endswith(_MATRIX_SUFFIXES):
                sizes[t.type_name] = sizes.get(t.type_name, 0) + math.prod(t.shape)
        label = max(sizes, key=sizes.get) if sizes else "FP32"
        data_type = {"F32": "FP32", "F16": "FP16"}.get(label, label)
    head = next((t.type_name for t in info.tensors if t.name == "output.weight"), "")
    return {
        "arch": info.rwkv_version,
        "data_type": data_type,
        "n_vocab": info.n_vocab or 0,
        "n_embed": int(info.arch_value("embedding_length", 0)),
        "n_layer": int(info.arch_value("block_count", 0)),
        "n_params": int(sum(math.prod(t.shape) for t in info.tensors)),
        "file_size": os.path.getsize(path),
        "version": info.version,
        "head_type": {"F32": "FP32", "F16": "FP16"}.get(head, head),
    }
