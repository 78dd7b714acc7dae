"""A small GGUF writer for the tests and benchmarks: RWKV-6 and RWKV-7 files laid out as
llama.cpp writes them (its tensor names, shapes and metadata keys, GGUF_NOTES.md), from the
tensors of our random-weight models (rwkv.cpp's conventions, `rwkv_cli.formats.synthetic`).

The container and the K-quant quantizers are ours, written from the format's description
(native/kquants.c documents the block layouts). The classic block types and BF16 come from the
`gguf` package's NumPy quantizers, and every tensor's values as the file holds them are read
back with `gguf.quants.dequantize`: an independent reader, so a test that runs the NumPy
reference on those values checks our engine's layouts against someone else's.
"""

from __future__ import annotations

import struct
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from gguf import GGMLQuantizationType as QT
from gguf import quants

from rwkv_cli.formats.synthetic import v7_lora_dims

GGUF_TYPE_IDS = {
    "F32": 0, "F16": 1, "Q4_0": 2, "Q4_1": 3, "Q5_0": 6, "Q5_1": 7, "Q8_0": 8,
    "Q2_K": 10, "Q3_K": 11, "Q4_K": 12, "Q5_K": 13, "Q6_K": 14, "BF16": 30,
}
BLOCK_VALUES = {
    "F32": 1, "F16": 1, "BF16": 1, "Q4_0": 32, "Q4_1": 32, "Q5_0": 32, "Q5_1": 32, "Q8_0": 32,
    "Q2_K": 256, "Q3_K": 256, "Q4_K": 256, "Q5_K": 256, "Q6_K": 256,
}
K_TYPES = ("Q2_K", "Q3_K", "Q4_K", "Q5_K", "Q6_K")

# metadata value types of the container
U8, I8, U16, I16, U32, I32, F32, BOOL, STRING, ARRAY, U64, I64, F64 = range(13)
_SCALAR_FORMATS = {U8: "<B", I8: "<b", U16: "<H", I16: "<h", U32: "<I", I32: "<i", F32: "<f",
                   BOOL: "<?", U64: "<Q", I64: "<q", F64: "<d"}


# ---- K-quants: our quantizers (valid blocks close to the values; not llama.cpp's search) -------


def _f16(a: np.ndarray) -> np.ndarray:
    return np.asarray(a, np.float32).astype(np.float16)


def _safe_div(a, b):
    out = np.zeros(np.broadcast(a, b).shape, np.float32)
    np.divide(a, b, out=out, where=np.broadcast_to(b, out.shape) != 0)
    return out


def _scale_min_blocks(x: np.ndarray, group: int, qmax: int, bits: int):
    """Asymmetric sub-blocks (Q4_K, Q5_K, Q2_K): value = d*sc*q - dmin*m."""
    nb = x.shape[0]
    xs = x.reshape(nb, -1, group)
    low = np.minimum(xs.min(-1), 0.0)
    scale = (xs.max(-1) - low) / qmax
    top = (1 << bits) - 1
    d = _f16(scale.max(-1) / top)
    dmin = _f16(-low.min(-1) / top)
    d32, dmin32 = d.astype(np.float32)[:, None], dmin.astype(np.float32)[:, None]
    sc = np.clip(np.rint(_safe_div(scale, d32)), 0, top).astype(np.uint8)
    m = np.clip(np.rint(_safe_div(-low, dmin32)), 0, top).astype(np.uint8)
    eff, off = d32 * sc, dmin32 * m
    q = np.clip(np.rint(_safe_div(xs + off[..., None], eff[..., None])), 0, qmax).astype(np.uint8)
    return d, dmin, sc, m, q.reshape(nb, 256)


def _symmetric_blocks(x: np.ndarray, levels_neg: int, levels_pos: int, scale_max: int):
    """Signed sub-blocks of 16 (Q6_K, Q3_K): value = d*sc*(q - levels_neg)."""
    nb = x.shape[0]
    xs = x.reshape(nb, 16, 16)
    scale = np.abs(xs).max(-1) / levels_neg
    d = _f16(scale.max(-1) / scale_max)
    d32 = d.astype(np.float32)[:, None]
    sc = np.clip(np.rint(_safe_div(scale, d32)), 0, scale_max).astype(np.int32)
    eff = d32 * sc
    q = np.clip(np.rint(_safe_div(xs, eff[..., None])), -levels_neg, levels_pos) + levels_neg
    return d, sc, q.astype(np.uint8).reshape(nb, 256)


def _pack_6bit_4k(sc: np.ndarray, m: np.ndarray) -> np.ndarray:
    s = np.zeros((sc.shape[0], 12), np.uint8)
    s[:, 0:4] = (sc[:, 0:4] & 63) | ((sc[:, 4:8] >> 4) << 6)
    s[:, 4:8] = (m[:, 0:4] & 63) | ((m[:, 4:8] >> 4) << 6)
    s[:, 8:12] = (sc[:, 4:8] & 15) | ((m[:, 4:8] & 15) << 4)
    return s


def _nibbles_4k(q: np.ndarray) -> np.ndarray:
    g = q.reshape(-1, 4, 2, 32)  # group, low/high half, l
    return ((g[:, :, 0] & 15) | ((g[:, :, 1] & 15) << 4)).reshape(-1, 128).astype(np.uint8)


def quantize_k(x: np.ndarray, kind: str) -> np.ndarray:
    """(rows, cols) float32 with cols % 256 == 0 -> (rows, row_bytes) uint8."""
    rows = x.shape[0]
    b = np.ascontiguousarray(x, np.float32).reshape(-1, 256)
    nb = b.shape[0]
    if kind in ("Q4_K", "Q5_K"):
        d, dmin, sc, m, q = _scale_min_blocks(b, 32, 15 if kind == "Q4_K" else 31, 6)
        parts = [d.view(np.uint8).reshape(nb, 2), dmin.view(np.uint8).reshape(nb, 2),
                 _pack_6bit_4k(sc, m)]
        if kind == "Q5_K":
            high = ((q.reshape(nb, 8, 32) >> 4) & 1).astype(np.uint8)  # sub-block j, l
            parts.append(np.bitwise_or.reduce(high << np.arange(8, dtype=np.uint8)[None, :, None],
                                              axis=1))
        parts.append(_nibbles_4k(q))
    elif kind == "Q6_K":
        d, sc, q = _symmetric_blocks(b, 32, 31, 127)
        h = q.reshape(nb, 2, 4, 32)  # half, quarter, l
        ql = np.concatenate([(h[:, :, 0] & 15) | ((h[:, :, 2] & 15) << 4),
                             (h[:, :, 1] & 15) | ((h[:, :, 3] & 15) << 4)], axis=2)
        qh = ((h[:, :, 0] >> 4) | ((h[:, :, 1] >> 4) << 2) | ((h[:, :, 2] >> 4) << 4)
              | ((h[:, :, 3] >> 4) << 6))
        parts = [ql.reshape(nb, 128).astype(np.uint8), qh.reshape(nb, 64).astype(np.uint8),
                 sc.astype(np.int8).view(np.uint8), d.view(np.uint8).reshape(nb, 2)]
    elif kind == "Q2_K":
        d, dmin, sc, m, q = _scale_min_blocks(b, 16, 3, 4)
        h = q.reshape(nb, 2, 4, 32)
        qs = np.bitwise_or.reduce(h << (2 * np.arange(4, dtype=np.uint8))[None, None, :, None], axis=2)
        parts = [(sc | (m << 4)).astype(np.uint8), qs.reshape(nb, 64).astype(np.uint8),
                 d.view(np.uint8).reshape(nb, 2), dmin.view(np.uint8).reshape(nb, 2)]
    elif kind == "Q3_K":
        d, sc, q = _symmetric_blocks(b, 4, 3, 31)
        h = q.reshape(nb, 2, 4, 32)
        qs = np.bitwise_or.reduce((h & 3) << (2 * np.arange(4, dtype=np.uint8))[None, None, :, None],
                                  axis=2)
        bit = ((h >> 2) & 1).reshape(nb, 8, 32)  # bit index 4h + s
        hmask = np.bitwise_or.reduce(bit << np.arange(8, dtype=np.uint8)[None, :, None], axis=1)
        u = (sc + 32).astype(np.uint8)  # (nb, 16)
        scales = np.zeros((nb, 12), np.uint8)
        scales[:, 0:8] = (u[:, 0:8] & 15) | ((u[:, 8:16] & 15) << 4)
        for k in range(16):
            scales[:, 8 + k % 4] |= ((u[:, k] >> 4) & 3) << (2 * (k // 4))
        parts = [hmask.astype(np.uint8), qs.reshape(nb, 64).astype(np.uint8), scales,
                 d.view(np.uint8).reshape(nb, 2)]
    else:
        raise ValueError(f"not a K-quant: {kind}")
    return np.concatenate(parts, axis=1).reshape(rows, -1)


def encode(values: np.ndarray, kind: str) -> np.ndarray:
    """float32 values (rows of the last axis) -> the bytes (or float array) the file holds."""
    v = np.ascontiguousarray(values, np.float32)
    if kind == "F32":
        return v
    if kind == "F16":
        return v.astype(np.float16)
    if kind in K_TYPES:
        return quantize_k(v.reshape(-1, v.shape[-1]), kind).reshape(*v.shape[:-1], -1)
    return quants.quantize(v, getattr(QT, kind))


def decode(stored: np.ndarray, kind: str, shape: tuple[int, ...]) -> np.ndarray:
    """The values a file's bytes stand for, read by the gguf package (independent of us)."""
    if kind in ("F32", "F16"):
        return np.asarray(stored, np.float32).reshape(shape)
    return quants.dequantize(np.asarray(stored), getattr(QT, kind)).reshape(shape).astype(np.float32)


# ---- the container ----------------------------------------------------------------------------


def _string(s: str | bytes) -> bytes:
    data = s.encode("utf-8") if isinstance(s, str) else s
    return struct.pack("<Q", len(data)) + data


def _value(vtype: int, value) -> bytes:
    if vtype == STRING:
        return _string(value)
    if vtype == ARRAY:
        elem, items = value
        return struct.pack("<IQ", elem, len(items)) + b"".join(_value(elem, i) for i in items)
    return struct.pack(_SCALAR_FORMATS[vtype], value)


def _infer(value) -> tuple[int, object]:
    if isinstance(value, tuple) and len(value) == 2 and isinstance(value[0], int):
        return value  # (type, value) given explicitly
    if isinstance(value, bool):
        return BOOL, value
    if isinstance(value, int):
        return U32, value
    if isinstance(value, float):
        return F32, value
    if isinstance(value, (str, bytes)):
        return STRING, value
    if isinstance(value, list):
        if all(isinstance(v, str) for v in value):
            return ARRAY, (STRING, value)
        if all(isinstance(v, int) for v in value):
            return ARRAY, (I32, value)
        return ARRAY, (F32, value)
    raise TypeError(f"cannot store {value!r} as GGUF metadata")


@dataclass
class GGUFTensor:
    name: str
    kind: str  # F32, F16, BF16, Q4_0, ..., Q6_K
    shape: tuple[int, ...]  # NumPy order (the file's dims reversed)
    data: bytes


def _header(metadata: dict, infos: list[tuple[str, str, tuple[int, ...], int]], version: int,
            align: int) -> bytes:
    head = bytearray(b"GGUF" + struct.pack("<IQQ", version, len(infos), len(metadata)))
    for key, value in metadata.items():
        vtype, v = _infer(value)
        head += _string(key) + struct.pack("<I", vtype) + _value(vtype, v)
    for name, kind, shape, offset in infos:
        dims = tuple(reversed(shape))
        head += _string(name) + struct.pack("<I", len(dims)) + struct.pack(f"<{len(dims)}Q", *dims)
        head += struct.pack("<IQ", GGUF_TYPE_IDS[kind], offset)
    head += b"\0" * (-len(head) % align)
    return bytes(head)


def write_container(path: Path, metadata: dict, tensors: list[GGUFTensor], version: int = 3,
                    alignment: int | None = None) -> Path:
    align = alignment or 32
    kvs = dict(metadata)
    if alignment is not None:
        kvs["general.alignment"] = (U32, alignment)
    infos, offset = [], 0
    for t in tensors:
        infos.append((t.name, t.kind, t.shape, offset))
        offset += (len(t.data) + align - 1) // align * align
    with open(path, "wb") as f:
        f.write(_header(kvs, infos, version, align))
        for t in tensors:
            f.write(t.data)
            f.write(b"\0" * (-len(t.data) % align))
    return Path(path)


class _StreamingContainer:
    """Tensor data goes to a side file as it comes; the header (which lists every tensor)
    is written in front of it at the end."""

    def __init__(self, path: Path, alignment: int | None):
        self.path = Path(path)
        self.align = alignment or 32
        self.alignment = alignment
        self.data_path = self.path.with_name(self.path.name + ".data")
        self.data = open(self.data_path, "wb")  # noqa: SIM115 (closed by finish)
        self.infos: list[tuple[str, str, tuple[int, ...], int]] = []

    def add(self, name: str, kind: str, shape: tuple[int, ...], chunks: Iterable[bytes]) -> None:
        offset = self.data.tell()
        for chunk in chunks:
            self.data.write(chunk)
        self.data.write(b"\0" * (-(self.data.tell() - offset) % self.align))
        self.infos.append((name, kind, shape, offset))

    def finish(self, metadata: dict, version: int) -> None:
        self.data.close()
        kvs = dict(metadata)
        if self.alignment is not None:
            kvs["general.alignment"] = (U32, self.alignment)
        with open(self.path, "wb") as out, open(self.data_path, "rb") as data:
            out.write(_header(kvs, self.infos, version, self.align))
            while block := data.read(1 << 24):
                out.write(block)
        self.data_path.unlink()


# ---- RWKV files as llama.cpp lays them out ----------------------------------------------------

MATRIX_SUFFIXES = ("att.key.weight", "att.value.weight", "att.receptance.weight",
                   "att.output.weight", "att.gate.weight", "ffn.key.weight", "ffn.value.weight",
                   "ffn.receptance.weight")


@dataclass
class RWKVGGUF:
    path: Path
    # what the file holds, read back and put in rwkv.cpp's conventions: for the NumPy reference
    values: dict[str, np.ndarray] = field(default_factory=dict)
    kinds: dict[str, str] = field(default_factory=dict)  # GGUF tensor name -> type


def default_kind(key: str, shape: tuple[int, ...], matrix_kind: str) -> str:
    """llama-quantize's rule of thumb: the big matrices (and embedding and head) get the file's
    type when their rows are whole blocks (else Q8_0, else F16); vectors and the low-rank and
    mixing tensors stay F32."""
    big = key in ("emb.weight", "head.weight") or key.endswith(MATRIX_SUFFIXES)
    if not big:
        return "F32"
    for kind in (matrix_kind, "Q8_0", "F16"):
        if shape[-1] % BLOCK_VALUES[kind] == 0:
            return kind
    return "F32"


def _block(key: str) -> tuple[int, str] | None:
    if not key.startswith("blocks."):
        return None
    _, n, rest = key.split(".", 2)
    return int(n), rest


V7_NAMES = {
    "att.x_rwkvag": "time_mix_lerp_fused", "att.w0": "time_mix_w0", "att.w1": "time_mix_w1",
    "att.w2": "time_mix_w2", "att.a0": "time_mix_a0", "att.a1": "time_mix_a1",
    "att.a2": "time_mix_a2", "att.v0": "time_mix_v0", "att.v1": "time_mix_v1",
    "att.v2": "time_mix_v2", "att.g1": "time_mix_g1", "att.g2": "time_mix_g2",
    "att.k_k": "time_mix_k_k", "att.k_a": "time_mix_k_a", "att.r_k": "time_mix_r_k",
    "ffn.x_k": "channel_mix_lerp_k",
}
V6_NAMES = {
    "att.time_maa_x": "time_mix_lerp_x", "att.time_maa_w1": "time_mix_w1",
    "att.time_maa_w2": "time_mix_w2", "att.time_decay": "time_mix_decay",
    "att.time_decay_w1": "time_mix_decay_w1", "att.time_decay_w2": "time_mix_decay_w2",
    "att.time_faaaa": "time_mix_first", "att.gate.weight": "time_mix_gate.weight",
    "ffn.receptance.weight": "channel_mix_receptance.weight", "ffn.time_maa_k": "channel_mix_lerp_k",
    "ffn.time_maa_r": "channel_mix_lerp_r",
}
COMMON_NAMES = {
    "ln1.weight": "attn_norm.weight", "ln1.bias": "attn_norm.bias",
    "ln2.weight": "attn_norm_2.weight", "ln2.bias": "attn_norm_2.bias",
    "att.key.weight": "time_mix_key.weight", "att.value.weight": "time_mix_value.weight",
    "att.receptance.weight": "time_mix_receptance.weight",
    "att.output.weight": "time_mix_output.weight", "att.ln_x.weight": "time_mix_ln.weight",
    "att.ln_x.bias": "time_mix_ln.bias", "ffn.key.weight": "channel_mix_key.weight",
    "ffn.value.weight": "channel_mix_value.weight",
}
GLOBAL_NAMES = {
    "emb.weight": "token_embd.weight", "blocks.0.ln0.weight": "token_embd_norm.weight",
    "blocks.0.ln0.bias": "token_embd_norm.bias", "ln_out.weight": "output_norm.weight",
    "ln_out.bias": "output_norm.bias", "head.weight": "output.weight",
}
V6_MIXES = "wkvrg"  # the order of time_mix_lerp_fused


def gguf_name(arch: str, key: str) -> str:
    if key in GLOBAL_NAMES:
        return GLOBAL_NAMES[key]
    block, rest = _block(key)
    names = V7_NAMES if arch == "7" else V6_NAMES
    name = COMMON_NAMES.get(rest) or names.get(rest)
    if name is None:
        raise KeyError(f"no GGUF name for {key}")
    return f"blk.{block}.{name}" + ("" if name.endswith((".weight", ".bias")) else ".weight")


ROWS_PER_CHUNK = 2048  # rows encoded at a time: bounded memory for the large shapes


def write_rwkv_gguf(
    path: str | Path,
    arch: str,
    tensors: Iterable[tuple[str, np.ndarray]],
    n_layer: int,
    n_embed: int,
    head_size: int,
    kind: str = "F32",
    kind_of: Callable[[str, tuple[int, ...]], str] | None = None,
    rescale_every: int = 0,
    v6_fused_mixes: bool = True,
    squeeze_vectors: bool = True,
    layer0_value_lora: bool = False,
    metadata: dict | None = None,
    tokens: list[str] | None = None,
    version: int = 3,
    alignment: int | None = None,
    file_type: int | None = None,
    keep_values: bool = True,
) -> RWKVGGUF:
    """Write our rwkv.cpp-convention tensors (e.g. `synthetic.random_tensors`) as llama.cpp's
    GGUF of `arch` ("6" or "7"), streaming tensor by tensor. Returns the path and (keep_values)
    the values the file holds, back in rwkv.cpp's keys and shapes (v6 files with
    `rescale_every` hold their output and value matrices divided by 2^(block // rescale_every),
    as llama.cpp's converter writes them)."""
    path = Path(path)
    choose = kind_of or (lambda key, shape: default_kind(key, shape, kind))
    out = RWKVGGUF(path)
    sink = _StreamingContainer(path, alignment)
    shapes: dict[str, tuple[int, ...]] = {}
    pending_mixes: dict[str, np.ndarray] = {}

    def add(name: str, array: np.ndarray, tkind: str,
            back: Callable[[np.ndarray], dict[str, np.ndarray]]):
        array = np.ascontiguousarray(array, np.float32)
        rows = array.reshape(-1, array.shape[-1]) if array.ndim > 1 else array.reshape(1, -1)
        decoded = []

        def chunks():
            for r0 in range(0, rows.shape[0], ROWS_PER_CHUNK):
                part = rows[r0:r0 + ROWS_PER_CHUNK]
                stored = encode(part, tkind)
                if keep_values:
                    decoded.append(decode(stored, tkind, part.shape))
                yield np.asarray(stored).tobytes()

        sink.add(name, tkind, tuple(array.shape), chunks())
        out.kinds[name] = tkind
        if keep_values:
            out.values.update(back(np.concatenate(decoded).reshape(array.shape)))

    rng = np.random.default_rng(11)
    for key, value in tensors:
        blk = _block(key)
        shapes[key] = tuple(value.shape)
        if arch == "6" and rescale_every and blk and blk[1] in ("att.output.weight", "ffn.value.weight"):
            value = np.asarray(value, np.float32) / np.float32(2.0 ** (blk[0] // rescale_every))
        value = np.asarray(value, np.float32)
        shape = value.shape
        if arch == "6" and blk and blk[1] in tuple(f"att.time_maa_{m}" for m in V6_MIXES):
            if v6_fused_mixes:
                pending_mixes[blk[1][-1]] = value.reshape(-1)
                if len(pending_mixes) == len(V6_MIXES):
                    prefix = f"blocks.{blk[0]}.att.time_maa_"
                    fused = np.stack([pending_mixes[m] for m in V6_MIXES])
                    pending_mixes.clear()
                    add(f"blk.{blk[0]}.time_mix_lerp_fused.weight", fused.reshape(5, 1, 1, -1), "F32",
                        lambda v, p=prefix: {p + m: v.reshape(5, -1)[i] for i, m in enumerate(V6_MIXES)})
            else:
                add(f"blk.{blk[0]}.time_mix_lerp_{blk[1][-1]}.weight", value.reshape(-1), "F32",
                    lambda v, k=key: {k: v})
            continue
        name = gguf_name(arch, key)
        if value.ndim == 3 and key.endswith(("att.w0", "att.a0", "att.v0", "att.k_k", "att.k_a",
                                             "ffn.x_k")):
            array = value.reshape(-1) if squeeze_vectors else value.reshape(1, 1, -1)
        elif key.endswith("att.x_rwkvag"):
            array = value.reshape(6, 1, 1, -1)
        elif key.endswith("att.r_k"):
            array = value.reshape(-1)  # llama.cpp flattens it
        elif key.endswith(("att.time_decay", "att.time_maa_x", "ffn.time_maa_k", "ffn.time_maa_r")):
            array = value.reshape(-1) if squeeze_vectors else value.reshape(1, 1, -1)
        elif key.endswith("att.time_faaaa"):
            array = value.reshape(value.shape[0], -1)  # {N, H}
        else:
            array = value
        tkind = choose(key, shape) if array.ndim >= 2 and key.endswith(".weight") else "F32"
        add(name, array, tkind, lambda v, k=key, s=shape: {k: v.reshape(s)})
        del value, array
        if arch == "7" and layer0_value_lora and key == "blocks.0.att.a0":
            dv = v7_lora_dims(n_embed)["a"]  # llama.cpp gives layer 0's the iclr (a) rank
            for suffix, arr in (("v0", rng.standard_normal(n_embed)),
                                ("v1", rng.standard_normal((dv, n_embed)) * 0.1),
                                ("v2", rng.standard_normal((n_embed, dv)) * 0.1)):
                add(f"blk.0.time_mix_{suffix}.weight", arr, "F32", lambda v: {})
    arch_name = f"rwkv{arch}"
    md: dict = {
        "general.architecture": arch_name,
        "general.name": "random rwkv",
        f"{arch_name}.context_length": 1048576,
        f"{arch_name}.embedding_length": n_embed,
        f"{arch_name}.block_count": n_layer,
        f"{arch_name}.feed_forward_length": int(shapes["blocks.0.ffn.key.weight"][0]),
        f"{arch_name}.attention.layer_norm_epsilon": 1e-5,
        f"{arch_name}.wkv.head_size": head_size,
    }
    if arch == "6":
        md[f"{arch_name}.rescale_every_n_layers"] = rescale_every
        md[f"{arch_name}.time_mix_extra_dim"] = int(shapes["blocks.0.att.time_maa_w2"][2])
        md[f"{arch_name}.time_decay_extra_dim"] = int(shapes["blocks.0.att.time_decay_w1"][0])
    else:
        md[f"{arch_name}.token_shift_count"] = 2
        for key, meta in (("w1", "decay_lora_rank"), ("a1", "iclr_lora_rank"),
                          ("v1", "value_residual_mix_lora_rank"), ("g1", "gate_lora_rank")):
            layer = 1 if key == "v1" and n_layer > 1 else 0
            if f"blocks.{layer}.att.{key}" in shapes:
                md[f"{arch_name}.attention.{meta}"] = int(shapes[f"blocks.{layer}.att.{key}"][0])
    if file_type is not None:
        md["general.file_type"] = file_type
    if tokens is not None:
        md["tokenizer.ggml.model"] = "rwkv"
        md["tokenizer.ggml.tokens"] = tokens
        md["tokenizer.ggml.bos_token_id"] = 0
        md["tokenizer.ggml.eos_token_id"] = 0
    md.update(metadata or {})
    sink.finish(md, version)
    return out
