"""The facts of rwkv.cpp model files that more than one module needs, written once.

- the tensor types (ids, names, block layout), as rwkv.cpp files number them, and the types
  of GGUF files (llama.cpp's numbering; which of them the engine runs);
- which tensors rwkv.cpp's quantizer leaves unquantized;
- the file magic and versions, and the limits a header must stay within.

The C engine has its own copy of these facts (native/tensor.c, native/quantize.c,
native/model.c): it reads files without Python. native/model.c is the authority for what a
loadable file is; the limits below mirror it, so that Python refuses the same files with the
same reasons before the engine is asked.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from ..errors import InvalidArgument

# ---- the file ----

MAGIC = 0x67676D66  # "ggmf"
VERSIONS = (100, 101)
# Quantized files of version 100 use an older block layout that is not supported.
QUANTIZED_MIN_VERSION = 101

# Limits mirrored from native/model.c (the authority; keep in step with it).
MAX_N_VOCAB = 1 << 24
MAX_N_EMBED = 1 << 20
MAX_N_LAYER = 4096
MAX_DIMS = 4
MAX_KEY_LEN = 1024
MAX_ELEMENTS = 1 << 40  # values in one tensor


# ---- tensor types ----

BLOCK_SIZE = 32  # values per block of every quantized type (ggml's QK)


@dataclass(frozen=True)
class TensorType:
    """One tensor type: `block_bytes` bytes hold `block_size` values."""

    id: int
    name: str
    block_size: int
    block_bytes: int

    @property
    def quantized(self) -> bool:
        return self.block_size > 1

    @property
    def bytes_per_value(self) -> float:
        return self.block_bytes / self.block_size

    def nbytes(self, n_values: int) -> int:
        """Bytes of `n_values` values (a multiple of the block size)."""
        return (n_values // self.block_size) * self.block_bytes


# Block layouts (QUANT_FORMATS.md): an fp16 scale; _1 types add an fp16 minimum; Q5 types a
# 32-bit mask of high bits; then 4-bit codes packed two per byte, or 32 int8 codes for Q8_0.
TENSOR_TYPES: tuple[TensorType, ...] = (
    TensorType(0, "FP32", 1, 4),
    TensorType(1, "FP16", 1, 2),
    TensorType(2, "Q4_0", BLOCK_SIZE, 2 + 16),
    TensorType(3, "Q4_1", BLOCK_SIZE, 2 + 2 + 16),
    TensorType(7, "Q5_0", BLOCK_SIZE, 2 + 4 + 16),
    TensorType(8, "Q5_1", BLOCK_SIZE, 2 + 2 + 4 + 16),
    TensorType(9, "Q8_0", BLOCK_SIZE, 2 + 32),
)
BY_NAME: dict[str, TensorType] = {t.name: t for t in TENSOR_TYPES}
BY_ID: dict[int, TensorType] = {t.id: t for t in TENSOR_TYPES}

DATA_TYPES: dict[str, int] = {t.name: t.id for t in TENSOR_TYPES}
DATA_TYPE_NAMES: dict[int, str] = {t.id: t.name for t in TENSOR_TYPES}
FLOAT_TYPES: tuple[str, ...] = tuple(t.name for t in TENSOR_TYPES if not t.quantized)
QUANTIZED_TYPES: tuple[str, ...] = tuple(t.name for t in TENSOR_TYPES if t.quantized)
BLOCK_BYTES: dict[str, int] = {t.name: t.block_bytes for t in TENSOR_TYPES if t.quantized}


# ---- GGUF files: llama.cpp's type ids; the engine runs those marked `runs` (native/gguf.c
# maps them onto its own ids). K-quants pack 256 values into a super-block (native/kquants.c).

@dataclass(frozen=True)
class GGUFType:
    id: int
    name: str  # GGUF's name ("F16", "Q4_K")
    block_size: int
    block_bytes: int
    runs: bool

    @property
    def label(self) -> str:
        """The name as our files and listings spell the float types ("FP16")."""
        return {"F32": "FP32", "F16": "FP16"}.get(self.name, self.name)

    @property
    def bytes_per_value(self) -> float:
        return self.block_bytes / self.block_size


GGUF_TYPES: tuple[GGUFType, ...] = (
    GGUFType(0, "F32", 1, 4, True), GGUFType(1, "F16", 1, 2, True),
    GGUFType(2, "Q4_0", 32, 18, True), GGUFType(3, "Q4_1", 32, 20, True),
    GGUFType(6, "Q5_0", 32, 22, True), GGUFType(7, "Q5_1", 32, 24, True),
    GGUFType(8, "Q8_0", 32, 34, True), GGUFType(9, "Q8_1", 32, 40, False),
    GGUFType(10, "Q2_K", 256, 84, True), GGUFType(11, "Q3_K", 256, 110, True),
    GGUFType(12, "Q4_K", 256, 144, True), GGUFType(13, "Q5_K", 256, 176, True),
    GGUFType(14, "Q6_K", 256, 210, True), GGUFType(15, "Q8_K", 256, 292, False),
    GGUFType(16, "IQ2_XXS", 256, 66, False), GGUFType(17, "IQ2_XS", 256, 74, False),
    GGUFType(18, "IQ3_XXS", 256, 98, False), GGUFType(19, "IQ1_S", 256, 50, False),
    GGUFType(20, "IQ4_NL", 32, 18, False), GGUFType(21, "IQ3_S", 256, 110, False),
    GGUFType(22, "IQ2_S", 256, 82, False), GGUFType(23, "IQ4_XS", 256, 136, False),
    GGUFType(24, "I8", 1, 1, False), GGUFType(25, "I16", 1, 2, False),
    GGUFType(26, "I32", 1, 4, False), GGUFType(27, "I64", 1, 8, False),
    GGUFType(28, "F64", 1, 8, False), GGUFType(29, "IQ1_M", 256, 56, False),
    GGUFType(30, "BF16", 1, 2, True), GGUFType(34, "TQ1_0", 256, 54, False),
    GGUFType(35, "TQ2_0", 256, 66, False), GGUFType(39, "MXFP4", 32, 17, False),
)
GGUF_BY_ID: dict[int, GGUFType] = {t.id: t for t in GGUF_TYPES}


def tensor_type(data_type: str | int) -> TensorType:
    """The type given by name ("Q5_1", any case) or id (8)."""
    if isinstance(data_type, str):
        found = BY_NAME.get(data_type.upper())
        if found is None:
            raise InvalidArgument(
                f"unknown data type {data_type!r}; expected one of {', '.join(BY_NAME)}"
            )
        return found
    found = BY_ID.get(int(data_type))
    if found is None:
        raise InvalidArgument(f"unknown data type id {data_type}; expected one of {sorted(BY_ID)}")
    return found


# ---- what rwkv.cpp's quantizer leaves alone ----

# 2-D tensors kept as they are: the embedding and the head (quality), and v7's low-rank
# matrices and r_k (small, and sensitive).
NEVER_QUANTIZED_KEYS = ("emb.weight", "head.weight")
NEVER_QUANTIZED_SUFFIXES = tuple(
    f"att.{name}" for name in ("w1", "w2", "a1", "a2", "v1", "v2", "g1", "g2", "r_k")
)


def should_quantize(key: str, shape: Iterable[int], data_type: str | int) -> bool:
    """rwkv.cpp's rule: only 2-D FP32/FP16 tensors, except emb, head, v7 low-rank and r_k."""
    if len(tuple(shape)) != 2 or tensor_type(data_type).quantized:
        return False
    if key in NEVER_QUANTIZED_KEYS:
        return False
    return not key.endswith(NEVER_QUANTIZED_SUFFIXES)
