"""Random-weight RWKV models of any shape, in the rwkv.cpp file format.

For tests (tiny models checked against an independent reference) and benchmarks (the real
shapes: decoding speed does not depend on the weight values). Keys, their order, shapes and the
stored value conventions are those of files converted by rwkv.cpp (see the shared fixtures):

- v4: `time_decay` stored as `-exp(w)`, `time_first` raw, both (C,).
- v5.1: `time_decay` as `exp(-exp(w))` and `time_first` as `exp(u)`, both (n_head, 1, 1); no gate.
- v5.2: `time_decay` as `exp(-exp(w))`, `time_faaaa` raw, both (n_head, head_size, 1); gate.
- v6: `time_decay` raw (n_head, head_size, 1), `time_faaaa` raw (n_head, head_size, 1);
  low-rank matrices transposed against the checkpoints: `time_maa_w1` (5*D, C), `time_maa_w2`
  (5, C, D), `time_decay_w1` (D2, C), `time_decay_w2` (C, D2).
- v7: `att.x_rwkvag` (6, 1, C); `w1 a1 v1 g1` (D, C); `w2 a2 v2 g2` (C, D); `w0 a0 v0 k_k k_a`
  and `ffn.x_k` (1, 1, C); `r_k` (n_head, head_size); layer 0 has no v0/v1/v2.

All shapes are PyTorch order; every matrix is (out, in).
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import numpy as np

from ..errors import InvalidArgument
from .modelfile import (
    HEADER_STRUCT,
    TENSOR_HEAD_STRUCT,
    ModelFileError,
    ModelWriter,
    tensor_nbytes,
    type_name,
)
from .tensor_types import QUANTIZED_TYPES, should_quantize

ARCHS = ("4", "5.1", "5.2", "6", "7")

# Tensors kept in FP32 in FP16 files (besides every tensor that is not 2-D): v7's r_k, and
# every time_* tensor (v6's low-rank time_maa_w1, time_decay_w1, time_decay_w2), as rwkv.cpp's
# converter does.
_FP32_IN_FP16_FILES = ("att.r_k",)


def _fp32_in_fp16_files(key: str) -> bool:
    return key.endswith(_FP32_IN_FP16_FILES) or key.rsplit(".", 1)[-1].startswith("time_")


def default_ffn_dim(arch: str, n_embed: int) -> int:
    if arch == "6":
        return int(3.5 * n_embed) // 32 * 32
    return 4 * n_embed


def _lora_dim(n_embed: int, power: float, factor: float) -> int:
    # The low-rank sizes of the RWKV-7 reference models (64/64/32/128 at C=768).
    return max(32, round(n_embed**power * factor / 32) * 32)


def v7_lora_dims(n_embed: int) -> dict[str, int]:
    return {
        "w": _lora_dim(n_embed, 0.5, 1.8),
        "a": _lora_dim(n_embed, 0.5, 1.8),
        "v": _lora_dim(n_embed, 0.5, 1.3),
        "g": _lora_dim(n_embed, 0.8, 0.6),
    }


def v6_lora_dims(n_embed: int) -> tuple[int, int]:
    """(token-shift mix rank, decay rank) of the RWKV-6 reference models."""
    return (32, 64) if n_embed < 4096 else (64, 128)


class _Random:
    """Value generators with the right magnitudes for a numerically sane forward pass."""

    def __init__(self, seed: int):
        self.rng = np.random.default_rng(seed)

    def normal(self, shape, std: float, mean: float = 0.0) -> np.ndarray:
        out = self.rng.standard_normal(shape, dtype=np.float32)
        out *= np.float32(std)
        if mean:
            out += np.float32(mean)
        return out

    def uniform(self, shape, low: float, high: float) -> np.ndarray:
        return self.rng.uniform(low, high, shape).astype(np.float32)

    def matrix(self, n_out: int, n_in: int, gain: float = 1.0) -> np.ndarray:
        """(out, in) with N(0, gain / sqrt(n_in)) entries: outputs of order gain."""
        return self.normal((n_out, n_in), gain / np.sqrt(n_in))

    def ln_weight(self, n: int) -> np.ndarray:
        return self.normal((n,), 0.05, mean=1.0)

    def ln_bias(self, n: int) -> np.ndarray:
        return self.normal((n,), 0.02)


def _layer_norm_tensors(r: _Random, prefix: str, c: int) -> Iterator[tuple[str, np.ndarray]]:
    yield f"{prefix}.weight", r.ln_weight(c)
    yield f"{prefix}.bias", r.ln_bias(c)


def _v4_v5_layer(arch: str, r: _Random, layer: int, c: int, n_head: int, ffn: int):
    b = f"blocks.{layer}."
    yield from _layer_norm_tensors(r, b + "ln1", c)
    yield from _layer_norm_tensors(r, b + "ln2", c)
    head_size = c // n_head if n_head else 0
    if arch == "4":
        yield b + "att.time_decay", -np.exp(r.uniform((c,), -1.0, 2.0))
        yield b + "att.time_first", r.normal((c,), 0.3)
    elif arch == "5.1":
        yield b + "att.time_decay", np.exp(-np.exp(r.uniform((n_head, 1, 1), -2.0, 1.0)))
        yield b + "att.time_first", np.exp(r.normal((n_head, 1, 1), 0.3))
    else:
        shape = (n_head, head_size, 1)
        yield b + "att.time_decay", np.exp(-np.exp(r.uniform(shape, -2.0, 1.0)))
        yield b + "att.time_faaaa", r.normal(shape, 0.3)
    mixes = "kvrg" if arch == "5.2" else "kvr"
    for name in mixes:
        yield b + f"att.time_mix_{name}", r.uniform((c,), 0.0, 1.0)
    if arch != "4":
        yield b + "att.ln_x.weight", r.normal((c,), 0.1, mean=1.0)
        yield b + "att.ln_x.bias", r.normal((c,), 0.02)
    yield b + "att.key.weight", r.matrix(c, c)
    yield b + "att.value.weight", r.matrix(c, c)
    yield b + "att.receptance.weight", r.matrix(c, c)
    yield b + "att.output.weight", r.matrix(c, c, 0.5)
    if arch == "5.2":
        yield b + "att.gate.weight", r.matrix(c, c)
    yield b + "ffn.time_mix_k", r.uniform((c,), 0.0, 1.0)
    yield b + "ffn.time_mix_r", r.uniform((c,), 0.0, 1.0)
    yield b + "ffn.key.weight", r.matrix(ffn, c)
    yield b + "ffn.value.weight", r.matrix(c, ffn, 0.5)
    yield b + "ffn.receptance.weight", r.matrix(c, c)
    if layer == 0:  # v4/v5 checkpoints list ln0 after the rest of block 0
        yield from _layer_norm_tensors(r, b + "ln0", c)


def _v6_layer(r: _Random, layer: int, c: int, n_head: int, ffn: int):
    b = f"blocks.{layer}."
    head_size = c // n_head
    mix_dim, decay_dim = v6_lora_dims(c)
    yield from _layer_norm_tensors(r, b + "ln1", c)
    yield from _layer_norm_tensors(r, b + "ln2", c)
    if layer == 0:
        yield from _layer_norm_tensors(r, b + "ln0", c)
    for name in "xwkvrg":
        yield b + f"att.time_maa_{name}", r.uniform((c,), 0.0, 1.0)
    yield b + "att.time_maa_w1", r.matrix(5 * mix_dim, c, 0.1)
    yield b + "att.time_maa_w2", r.normal((5, c, mix_dim), 0.1 / np.sqrt(mix_dim))
    yield b + "att.time_decay", r.uniform((n_head, head_size, 1), -6.0, -1.0)
    yield b + "att.time_decay_w1", r.matrix(decay_dim, c, 0.1)
    yield b + "att.time_decay_w2", r.matrix(c, decay_dim, 0.1)
    yield b + "att.time_faaaa", r.normal((n_head, head_size, 1), 0.1)
    yield b + "att.receptance.weight", r.matrix(c, c)
    yield b + "att.key.weight", r.matrix(c, c)
    yield b + "att.value.weight", r.matrix(c, c)
    yield b + "att.output.weight", r.matrix(c, c, 0.5)
    yield b + "att.gate.weight", r.matrix(c, c)
    yield b + "att.ln_x.weight", r.normal((c,), 0.1, mean=1.0)
    yield b + "att.ln_x.bias", r.normal((c,), 0.02)
    yield b + "ffn.time_maa_k", r.uniform((c,), 0.0, 1.0)
    yield b + "ffn.time_maa_r", r.uniform((c,), 0.0, 1.0)
    yield b + "ffn.key.weight", r.matrix(ffn, c)
    yield b + "ffn.receptance.weight", r.matrix(c, c)
    yield b + "ffn.value.weight", r.matrix(c, ffn, 0.5)


def _v7_layer(r: _Random, layer: int, c: int, n_head: int, ffn: int):
    b = f"blocks.{layer}."
    head_size = c // n_head
    dims = v7_lora_dims(c)
    vec = (1, 1, c)
    yield from _layer_norm_tensors(r, b + "ln1", c)
    yield from _layer_norm_tensors(r, b + "ln2", c)
    if layer == 0:
        yield from _layer_norm_tensors(r, b + "ln0", c)
    yield b + "att.x_rwkvag", r.uniform((6, 1, c), 0.0, 1.0)
    yield b + "att.w1", r.matrix(dims["w"], c, 0.1)
    yield b + "att.w2", r.matrix(c, dims["w"], 0.1)
    yield b + "att.w0", r.uniform(vec, -6.0, -0.5)
    yield b + "att.a1", r.matrix(dims["a"], c, 0.1)
    yield b + "att.a2", r.matrix(c, dims["a"], 0.1)
    yield b + "att.a0", r.normal(vec, 0.5)
    if layer > 0:  # layer 0's value is v_first itself
        yield b + "att.v1", r.matrix(dims["v"], c, 0.1)
        yield b + "att.v2", r.matrix(c, dims["v"], 0.1)
        yield b + "att.v0", r.normal(vec, 0.5)
    yield b + "att.g1", r.matrix(dims["g"], c, 0.1)
    yield b + "att.g2", r.matrix(c, dims["g"], 1.0)
    yield b + "att.k_k", r.normal(vec, 0.05, mean=0.85)
    yield b + "att.k_a", r.normal(vec, 0.05, mean=1.0)
    yield b + "att.r_k", r.normal((n_head, head_size), 0.1)
    yield b + "att.receptance.weight", r.matrix(c, c)
    yield b + "att.key.weight", r.matrix(c, c)
    yield b + "att.value.weight", r.matrix(c, c)
    yield b + "att.output.weight", r.matrix(c, c, 0.5)
    yield b + "att.ln_x.weight", r.normal((c,), 0.1, mean=1.0)
    yield b + "att.ln_x.bias", r.normal((c,), 0.02)
    yield b + "ffn.x_k", r.uniform(vec, 0.0, 1.0)
    yield b + "ffn.key.weight", r.matrix(ffn, c)
    yield b + "ffn.value.weight", r.matrix(c, ffn, 0.5)


class _Shapes(_Random):
    """Zeros without memory (broadcast views) in place of random values: the tensors' keys,
    shapes and order without the cost of drawing hundreds of MB of numbers."""

    def __init__(self) -> None:
        pass

    def normal(self, shape, std: float, mean: float = 0.0) -> np.ndarray:
        return np.broadcast_to(np.float32(mean), shape)

    def uniform(self, shape, low: float, high: float) -> np.ndarray:
        return np.broadcast_to(np.float32(low), shape)


def random_tensors(
    arch: str,
    n_layer: int,
    n_embed: int,
    n_vocab: int,
    head_size: int = 64,
    ffn_dim: int | None = None,
    seed: int = 0,
) -> Iterator[tuple[str, np.ndarray]]:
    """(key, float32 array in PyTorch shape) for every tensor, in rwkv.cpp's file order."""
    yield from _tensors(arch, n_layer, n_embed, n_vocab, head_size, ffn_dim, _Random(seed))


def _tensors(arch, n_layer, n_embed, n_vocab, head_size, ffn_dim, r: _Random):
    if arch not in ARCHS:
        raise InvalidArgument(f"unknown architecture {arch!r}; expected one of {', '.join(ARCHS)}")
    if arch != "4" and n_embed % head_size:
        raise InvalidArgument(f"n_embed {n_embed} is not a multiple of head_size {head_size}")
    if n_layer <= 0 or n_embed <= 0 or n_vocab <= 0:
        raise InvalidArgument(f"bad shape: n_layer={n_layer}, n_embed={n_embed}, n_vocab={n_vocab}")
    ffn = ffn_dim or default_ffn_dim(arch, n_embed)
    n_head = n_embed // head_size if arch != "4" else 0
    yield "emb.weight", r.normal((n_vocab, n_embed), 1.0)
    for layer in range(n_layer):
        if arch in ("4", "5.1", "5.2"):
            tensors = _v4_v5_layer(arch, r, layer, n_embed, n_head, ffn)
        elif arch == "6":
            tensors = _v6_layer(r, layer, n_embed, n_head, ffn)
        else:
            tensors = _v7_layer(r, layer, n_embed, n_head, ffn)
        for key, value in tensors:
            yield key, np.asarray(value, dtype=np.float32)
    yield from _layer_norm_tensors(r, "ln_out", n_embed)
    yield "head.weight", r.matrix(n_vocab, n_embed)


def stored_type(key: str, shape: tuple[int, ...], data_type: str, source_type: str) -> str:
    """The type a tensor gets in a file of `data_type` converted from a `source_type` model.

    FP16 files hold every 2-D tensor in FP16 except v7's r_k and the time_* tensors; vectors
    and 3-D tensors stay FP32.
    Quantized files quantize what should_quantize selects and keep the rest as the source had it.
    """
    half_ok = len(shape) == 2 and not _fp32_in_fp16_files(key)
    if data_type in QUANTIZED_TYPES:
        if should_quantize(key, shape, "FP32"):
            return data_type
        return "FP16" if source_type == "FP16" and half_ok else "FP32"
    if data_type == "FP16":
        return "FP16" if half_ok else "FP32"
    return "FP32"


def random_model_size(
    arch: str,
    n_layer: int,
    n_embed: int,
    n_vocab: int,
    data_type: str = "FP32",
    head_size: int = 64,
    ffn_dim: int | None = None,
    source_type: str = "FP16",
) -> int:
    """The exact size in bytes of the file `write_random_model` writes for these arguments,
    known before writing it (no values are drawn)."""
    data_type, source_type = type_name(data_type), type_name(source_type)
    size = HEADER_STRUCT.size
    for key, value in _tensors(arch, n_layer, n_embed, n_vocab, head_size, ffn_dim, _Shapes()):
        stored = stored_type(key, value.shape, data_type, source_type)
        size += TENSOR_HEAD_STRUCT.size + 4 * value.ndim + len(key.encode("utf-8"))
        size += tensor_nbytes(stored, int(np.prod(value.shape)))
    return size


def write_random_model(
    path: str | os.PathLike,
    arch: str,
    n_layer: int,
    n_embed: int,
    n_vocab: int,
    data_type: str = "FP32",
    head_size: int = 64,
    ffn_dim: int | None = None,
    seed: int = 0,
    source_type: str = "FP16",
    head_type: str | None = None,
) -> Path:
    """Write a random-weight model, streaming tensor by tensor; returns the path.

    `source_type` ("FP32" or "FP16") matters for quantized files only: the tensors that are not
    quantized (embedding, head, v7 low-rank matrices) are kept as in a model quantized from an
    FP32 or an FP16 file (FP16 by default, like most published rwkv.cpp files). `head_type`
    stores the head in that type instead (as `rwkv-cpp quantize --head` does).
    """
    data_type = type_name(data_type)
    source_type = type_name(source_type)
    if source_type not in ("FP32", "FP16"):
        raise ModelFileError(f"source_type must be FP32 or FP16, not {source_type}")
    head = type_name(head_type) if head_type else None
    path = Path(path)
    with ModelWriter(path, n_vocab, n_embed, n_layer, data_type) as writer:
        for key, value in random_tensors(arch, n_layer, n_embed, n_vocab, head_size, ffn_dim, seed):
            stored = head if head and key == "head.weight" else stored_type(
                key, value.shape, data_type, source_type)
            writer.write_tensor(key, value, stored)
            del value
    return path
