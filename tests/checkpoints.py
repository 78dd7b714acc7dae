"""Test helper: write PyTorch `.pth` checkpoints without torch, and make random RAW checkpoints.

`write_pth` emits torch's zip serialization by hand (a protocol-2 pickle naming
`torch._utils._rebuild_tensor_v2` and the storage classes, raw little-endian storages in
`<name>/data/<key>`, members 64-byte aligned as torch aligns them), so that the converter's
reader is tested on files with exactly torch's structure, including strided views and shared
storages, in FP32, FP16 and BF16. `torch.load` reads these files too (checked where torch is
installed).

`raw_checkpoint(arch, ...)` builds the tensors of an RWKV checkpoint as the model authors
publish it (before rwkv.cpp's transforms), in their key order, with random but well-behaved
values at tiny shapes, deterministically from a seed.
"""

from __future__ import annotations

import struct
import zipfile
from collections import OrderedDict
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

ARCHES = ("4", "5.1", "5.2", "6", "7")
ELEMENT_TYPES = ("F32", "F16", "BF16")
_STORAGE_CLASS = {"F32": "FloatStorage", "F16": "HalfStorage", "BF16": "BFloat16Storage"}
_ITEMSIZE = {"F32": 4, "F16": 2, "BF16": 2}


# ----------------------------------------------------------------------------------------------
# Element types


def f32_to_bf16_bits(values: np.ndarray) -> np.ndarray:
    """float32 -> bfloat16 bit patterns, rounding to nearest even (as torch does)."""
    bits = np.ascontiguousarray(values, dtype=np.float32).view(np.uint32).astype(np.uint64)
    rounded = (bits + 0x7FFF + ((bits >> 16) & 1)) >> 16
    return rounded.astype(np.uint16)


def as_stored(values: np.ndarray, dtype: str) -> np.ndarray:
    """What a checkpoint of element type `dtype` holds for `values`, widened back to float32."""
    values = np.asarray(values, dtype=np.float32)
    if dtype == "F32":
        return values.copy()
    if dtype == "F16":
        return values.astype(np.float16).astype(np.float32)
    if dtype == "BF16":
        return (f32_to_bf16_bits(values).astype(np.uint32) << 16).view(np.float32).reshape(
            values.shape
        )
    raise ValueError(f"unknown element type {dtype!r}")


def _encode(values: np.ndarray, dtype: str) -> bytes:
    values = np.ascontiguousarray(values, dtype=np.float32)
    if dtype == "F32":
        return values.astype("<f4").tobytes()
    if dtype == "F16":
        return values.astype("<f2").tobytes()
    return f32_to_bf16_bits(values).astype("<u2").tobytes()


# ----------------------------------------------------------------------------------------------
# Pickle opcodes (protocol 2), written out by hand so no torch class is needed to write them


class _PickleWriter:
    def __init__(self) -> None:
        self.out = bytearray(b"\x80\x02")  # PROTO 2

    def global_(self, module: str, name: str) -> None:
        self.out += b"c" + f"{module}\n{name}\n".encode()

    def text(self, value: str) -> None:
        raw = value.encode("utf-8")
        self.out += b"X" + struct.pack("<I", len(raw)) + raw  # BINUNICODE

    def integer(self, value: int) -> None:
        if 0 <= value < 256:
            self.out += b"K" + bytes([value])  # BININT1
        elif 0 <= value < 65536:
            self.out += b"M" + struct.pack("<H", value)  # BININT2
        elif -(2**31) <= value < 2**31:
            self.out += b"J" + struct.pack("<i", value)  # BININT
        else:
            raw = value.to_bytes((value.bit_length() + 8) // 8, "little", signed=True)
            self.out += b"\x8a" + bytes([len(raw)]) + raw  # LONG1

    def int_tuple(self, values: Iterable[int]) -> None:
        self.out += b"("  # MARK
        for v in values:
            self.integer(v)
        self.out += b"t"  # TUPLE

    def empty_ordered_dict(self) -> None:
        self.global_("collections", "OrderedDict")
        self.out += b")R"  # EMPTY_TUPLE, REDUCE

    def mark(self) -> None:
        self.out += b"("

    def raw(self, opcodes: bytes) -> None:
        self.out += opcodes


@dataclass
class TensorEntry:
    """One tensor of a checkpoint: a view (offset, shape, stride) into a named storage."""

    key: str
    storage: str
    dtype: str
    offset: int
    shape: tuple[int, ...]
    stride: tuple[int, ...]


def pickle_state_dict(entries: list[TensorEntry], storage_numel: dict[str, int]) -> bytes:
    """data.pkl of a state dict, as torch.save writes it (an OrderedDict of rebuilt tensors)."""
    p = _PickleWriter()
    p.empty_ordered_dict()
    p.mark()
    for entry in entries:
        p.text(entry.key)
        p.global_("torch._utils", "_rebuild_tensor_v2")
        p.mark()
        p.mark()  # the persistent id of the storage
        p.text("storage")
        p.global_("torch", _STORAGE_CLASS[entry.dtype])
        p.text(entry.storage)
        p.text("cpu")
        p.integer(storage_numel[entry.storage])
        p.raw(b"tQ")  # TUPLE, BINPERSID
        p.integer(entry.offset)
        p.int_tuple(entry.shape)
        p.int_tuple(entry.stride)
        p.raw(b"\x89")  # NEWFALSE: requires_grad
        p.empty_ordered_dict()  # backward hooks
        p.raw(b"tR")  # TUPLE, REDUCE
    p.raw(b"u.")  # SETITEMS, STOP
    return bytes(p.out)


def _contiguous_stride(shape: tuple[int, ...]) -> tuple[int, ...]:
    stride, step = [], 1
    for n in reversed(shape):
        stride.append(step)
        step *= max(n, 1)
    return tuple(reversed(stride))


def write_zip(path: Path, archive_name: str, members: list[tuple[str, bytes]]) -> None:
    """A torch-style zip: stored members under `archive_name/`, data 64-byte aligned."""
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_STORED) as archive:
        for name, data in members:
            info = zipfile.ZipInfo(f"{archive_name}/{name}", date_time=(1980, 1, 1, 0, 0, 0))
            info.compress_type = zipfile.ZIP_STORED
            start = archive.fp.tell() + 30 + len(info.filename.encode()) + 4
            pad = -start % 64
            info.extra = b"FB" + struct.pack("<H", pad) + b"Z" * pad
            archive.writestr(info, data)


def write_pth(
    path: str | Path,
    tensors: dict[str, np.ndarray],
    dtype: str | dict[str, str] = "F32",
    transposed: Iterable[str] = (),
    shared_storage: bool = False,
    pickled: bytes | None = None,
) -> Path:
    """Write `tensors` (float32 values, PyTorch shapes, in this order) as a torch `.pth` zip.

    `dtype` is the element type of all tensors or of each key. Keys in `transposed` (2-D) are
    stored as the transpose of a contiguous storage, i.e. with a non-contiguous stride, the way
    torch saves a `.t()` view. `shared_storage` packs all tensors of one element type into a
    single storage at increasing offsets. `pickled` replaces data.pkl (for malformed files).
    """
    path = Path(path)
    transposed = set(transposed)
    entries: list[TensorEntry] = []
    blobs: dict[str, list[bytes]] = {}
    numel: dict[str, int] = {}
    for key, values in tensors.items():
        kind = dtype if isinstance(dtype, str) else dtype[key]
        values = np.asarray(values, dtype=np.float32)
        shape = tuple(values.shape)
        if key in transposed:
            if values.ndim != 2:
                raise ValueError(f"{key}: only 2-D tensors can be stored transposed")
            stored, stride = values.T, (1, shape[0])
        else:
            stored, stride = values, _contiguous_stride(shape)
        storage = f"shared_{kind}" if shared_storage else str(len(blobs))
        offset = numel.get(storage, 0)
        blobs.setdefault(storage, []).append(_encode(stored, kind))
        numel[storage] = offset + values.size
        entries.append(TensorEntry(key, storage, kind, offset, shape, stride))
    data_pkl = pickled if pickled is not None else pickle_state_dict(entries, numel)
    members = [("data.pkl", data_pkl), ("byteorder", b"little")]
    members += [(f"data/{name}", b"".join(parts)) for name, parts in blobs.items()]
    members += [("version", b"3\n"), (".data/serialization_id", b"0123456789")]
    write_zip(path, path.stem or "archive", members)
    return path


def write_safetensors(
    path: str | Path, tensors: dict[str, np.ndarray], dtype: str = "F32"
) -> Path:
    """A .safetensors file: u64 header length, JSON header, raw little-endian data."""
    import json

    header: dict[str, dict] = {"__metadata__": {"format": "pt"}}
    blobs, offset = [], 0
    for key, values in tensors.items():
        raw = _encode(values, dtype)
        header[key] = {
            "dtype": dtype,
            "shape": list(np.shape(values)),
            "data_offsets": [offset, offset + len(raw)],
        }
        blobs.append(raw)
        offset += len(raw)
    text = json.dumps(header).encode()
    text += b" " * (-len(text) % 8)
    path = Path(path)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(text)))
        f.write(text)
        for raw in blobs:
            f.write(raw)
    return path


# ----------------------------------------------------------------------------------------------
# Random RAW checkpoints (the authors' layout and key order)


@dataclass(frozen=True)
class Shape:
    n_layer: int = 2
    n_embed: int = 32
    n_vocab: int = 50
    head_size: int = 8
    n_ffn: int = 0  # 0: the architecture's default multiple of n_embed
    lora: int = 4  # low-rank dimension of v6/v7

    @property
    def n_head(self) -> int:
        return self.n_embed // self.head_size


def raw_checkpoint(arch: str, shape: Shape = Shape(), seed: int = 0,
                   v7_layer0_v: bool = True) -> OrderedDict[str, np.ndarray]:
    """Random weights of architecture `arch` ("4", "5.1", "5.2", "6", "7"), float32, raw.

    Values are drawn so the model stays numerically tame (decays in (0, 1), mixes in [0, 1],
    layer norms near identity, matrices scaled by 1/sqrt(fan-in)). `v7_layer0_v` includes
    layer 0's unused `att.v0/v1/v2`, as the authors' v7 checkpoints do.
    """
    if arch not in ARCHES:
        raise ValueError(f"unknown architecture {arch!r}")
    rng = np.random.default_rng(seed)
    C, V, L, H, N, D = (shape.n_embed, shape.n_vocab, shape.n_layer, shape.n_head,
                        shape.head_size, shape.lora)
    F = shape.n_ffn or (C * 4 if arch in ("4", "5.1", "5.2", "7") else C * 7 // 2)
    t: OrderedDict[str, np.ndarray] = OrderedDict()

    def matrix(rows: int, cols: int, scale: float = 1.0) -> np.ndarray:
        return (rng.standard_normal((rows, cols)) * scale / np.sqrt(cols)).astype(np.float32)

    def uniform(lo: float, hi: float, *dims: int) -> np.ndarray:
        return rng.uniform(lo, hi, dims).astype(np.float32)

    def norm(prefix: str) -> None:
        t[prefix + ".weight"] = uniform(0.8, 1.2, C)
        t[prefix + ".bias"] = uniform(-0.1, 0.1, C)

    t["emb.weight"] = (rng.standard_normal((V, C)) * 0.5).astype(np.float32)
    for i in range(L):
        b, att, ffn = f"blocks.{i}.", f"blocks.{i}.att.", f"blocks.{i}.ffn."
        norm(b + "ln1")
        norm(b + "ln2")
        if i == 0:
            norm(b + "ln0")
        if arch == "4":
            t[att + "time_decay"] = uniform(-2.0, 1.0, C)
            t[att + "time_first"] = uniform(-1.0, 1.0, C)
            for m in "kvr":
                t[att + f"time_mix_{m}"] = uniform(0.0, 1.0, 1, 1, C)
            for m in ("key", "value", "receptance", "output"):
                t[att + f"{m}.weight"] = matrix(C, C)
        elif arch in ("5.1", "5.2"):
            for m in "kvr" + ("g" if arch == "5.2" else ""):
                t[att + f"time_mix_{m}"] = uniform(0.0, 1.0, 1, 1, C)
            if arch == "5.1":
                t[att + "time_decay"] = uniform(-3.0, 0.5, H)
                t[att + "time_first"] = uniform(-1.0, 1.0, H)
            else:
                t[att + "time_decay"] = uniform(-3.0, 0.5, H, N)
                t[att + "time_faaaa"] = uniform(-1.0, 1.0, H, N)
            for m in ("receptance", "key", "value", "output"):
                t[att + f"{m}.weight"] = matrix(C, C)
            if arch == "5.2":
                t[att + "gate.weight"] = matrix(C, C)
            norm(att + "ln_x")
        elif arch == "6":
            for m in "xwkvrg":
                t[att + f"time_maa_{m}"] = uniform(0.0, 1.0, 1, 1, C)
            t[att + "time_maa_w1"] = matrix(C, 5 * D, 0.5)
            t[att + "time_maa_w2"] = (rng.standard_normal((5, D, C)) * 0.1).astype(np.float32)
            t[att + "time_decay"] = uniform(-3.0, 0.5, 1, 1, C)
            t[att + "time_decay_w1"] = matrix(C, 2 * D, 0.5)
            t[att + "time_decay_w2"] = (rng.standard_normal((2 * D, C)) * 0.1).astype(np.float32)
            t[att + "time_faaaa"] = uniform(-1.0, 1.0, H, N)
            for m in ("receptance", "key", "value", "output", "gate"):
                t[att + f"{m}.weight"] = matrix(C, C)
            norm(att + "ln_x")
        else:  # 7
            for m in "rwkvag":
                t[att + f"x_{m}"] = uniform(0.0, 1.0, 1, 1, C)
            for m, lo, hi in (("w", -2.0, 1.0), ("a", -0.5, 0.5), ("v", -0.5, 0.5), ("g", 0, 0)):
                if m == "v" and i == 0 and not v7_layer0_v:
                    continue
                if m != "g":
                    t[att + f"{m}0"] = uniform(lo, hi, 1, 1, C)
                t[att + f"{m}1"] = matrix(C, D, 0.5)
                t[att + f"{m}2"] = (rng.standard_normal((D, C)) * 0.2).astype(np.float32)
            t[att + "k_k"] = uniform(0.5, 1.0, 1, 1, C)
            t[att + "k_a"] = uniform(0.5, 1.0, 1, 1, C)
            t[att + "r_k"] = uniform(-0.5, 0.5, H, N)
            for m in ("receptance", "key", "value", "output"):
                t[att + f"{m}.weight"] = matrix(C, C)
            norm(att + "ln_x")
        if arch == "7":
            t[ffn + "x_k"] = uniform(0.0, 1.0, 1, 1, C)
            t[ffn + "key.weight"] = matrix(F, C)
            t[ffn + "value.weight"] = matrix(C, F)
        else:
            prefix = "time_maa" if arch == "6" else "time_mix"
            t[ffn + f"{prefix}_k"] = uniform(0.0, 1.0, 1, 1, C)
            t[ffn + f"{prefix}_r"] = uniform(0.0, 1.0, 1, 1, C)
            t[ffn + "key.weight"] = matrix(F, C)
            t[ffn + "receptance.weight"] = matrix(C, C)
            t[ffn + "value.weight"] = matrix(C, F)
    norm("ln_out")
    t["head.weight"] = matrix(V, C)
    return t


# ----------------------------------------------------------------------------------------------
# Running a converted model: the engine and the NumPy reference of tests/reference.py

TOKENS = [3, 14, 15, 9, 26]


def engine_logits(path: Path, tokens=TOKENS) -> np.ndarray:
    """Logits after each token, token by token from a fresh state."""
    from rwkv_cli.engine import default_library

    lib = default_library()
    ctx = lib.init_from_file(path, 1)
    try:
        state = np.zeros(lib.get_state_len(ctx), dtype=np.float32)
        rows = []
        for i, token in enumerate(tokens):
            logits = np.zeros(lib.get_logits_len(ctx), dtype=np.float32)
            new_state = np.zeros_like(state)
            lib.eval(ctx, token, None if i == 0 else state, new_state, logits)
            state = new_state
            rows.append(logits)
        return np.stack(rows)
    finally:
        lib.free(ctx)


def reference_logits(path: Path, tokens=TOKENS) -> np.ndarray:
    from reference import Reference

    ref = Reference.from_file(path)
    state, rows = ref.init_state(), []
    for token in tokens:
        logits, state = ref.forward(token, state)
        rows.append(logits)
    return np.stack(rows)


# ----------------------------------------------------------------------------------------------
# Hugging Face-format checkpoints of the same weights (names, shapes and files per HF_FORMATS.md)


def hf_tensors(raw: dict[str, np.ndarray], arch: str, x_x: bool = False) -> dict[str, np.ndarray]:
    """The authors' tensors (`raw_checkpoint`) under Hugging Face names and shapes: RWKV-7 in
    flash-linear-attention's naming (`x_x`: the older single (6, C) mix tensor), RWKV-6 as
    Rwkv6ForCausalLM names them."""
    out: dict[str, np.ndarray] = {}
    if arch == "6":
        for key, value in raw.items():
            if key == "emb.weight":
                out["rwkv.embeddings.weight"] = value
            elif key == "head.weight":
                out[key] = value
            elif key.startswith("blocks."):
                _, i, rest = key.split(".", 2)
                rest = rest.replace("ln0.", "pre_ln.").replace("att.", "attention.").replace(
                    "ffn.", "feed_forward.")
                out[f"rwkv.blocks.{i}.{rest}"] = value
            else:
                out["rwkv." + key] = value
        return out
    names = {"ln1": "attn_norm", "ln2": "ffn_norm", "ln0": "pre_norm",
             "att.receptance.weight": "attn.r_proj.weight", "att.key.weight": "attn.k_proj.weight",
             "att.value.weight": "attn.v_proj.weight", "att.output.weight": "attn.o_proj.weight",
             "att.ln_x.weight": "attn.g_norm.weight", "att.ln_x.bias": "attn.g_norm.bias"}
    for key, value in raw.items():
        if key == "emb.weight":
            out["model.embeddings.weight"] = value
        elif key == "head.weight":
            out["lm_head.weight"] = value
        elif key.startswith("ln_out."):
            out["model.norm." + key.split(".")[1]] = value
        else:
            _, i, rest = key.split(".", 2)
            p = f"model.layers.{i}."
            head, _, tail = rest.partition(".")
            if rest in names:
                out[p + names[rest]] = value
            elif head in ("ln0", "ln1", "ln2"):
                out[p + names[head] + "." + tail] = value
            elif rest in ("att.v0", "att.v1", "att.v2") and i == "0":
                continue  # fla's layer 0 has no v_lora
            elif rest.startswith("att.x_"):
                if x_x:
                    if rest == "att.x_r":
                        out[p + "attn.x_x"] = np.stack(
                            [raw[f"blocks.{i}.att.x_{m}"].reshape(-1) for m in "rwkvag"])
                else:
                    out[p + "attn." + rest[4:]] = value
            elif rest[4:] in ("w0", "a0", "v0"):
                out[p + f"attn.{rest[4]}_lora.lora.2.bias"] = value.reshape(-1)
            elif rest[4:] in ("w1", "a1", "v1", "g1"):
                out[p + f"attn.{rest[4]}_lora.lora.0.weight"] = np.ascontiguousarray(value.T)
            elif rest[4:] in ("w2", "a2", "v2", "g2"):
                out[p + f"attn.{rest[4]}_lora.lora.2.weight"] = np.ascontiguousarray(value.T)
            elif rest in ("att.k_k", "att.k_a"):
                out[p + "attn." + rest[4:]] = value.reshape(-1)
            elif rest == "att.r_k":
                out[p + "attn.r_k"] = value
            elif rest == "ffn.x_k":
                out[p + "ffn.x_k"] = value.reshape(-1)
            else:  # ffn.key.weight, ffn.value.weight
                out[p + rest] = value
    return out


def write_hf_checkpoint(folder: str | Path, raw: dict[str, np.ndarray], arch: str, dtype: str = "BF16",
                        shards: int = 1, x_x: bool = False) -> Path:
    """A Hugging Face checkpoint folder of the same weights: config.json, the tensors sorted by
    name (as the safetensors library writes them) in `shards` files, an index when sharded."""
    import json

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    tensors = dict(sorted(hf_tensors(raw, arch, x_x).items()))
    names = list(tensors)
    if shards == 1:
        write_safetensors(folder / "model.safetensors", tensors, dtype)
    else:
        weight_map = {}
        per = -(-len(names) // shards)
        for k in range(shards):
            part = names[k * per:(k + 1) * per]
            file = f"model-{k + 1:05d}-of-{shards:05d}.safetensors"
            write_safetensors(folder / file, {n: tensors[n] for n in part}, dtype)
            weight_map.update({n: file for n in part})
        index = {"metadata": {"total_size": 0}, "weight_map": weight_map}
        (folder / "model.safetensors.index.json").write_text(json.dumps(index))
    emb = raw["emb.weight"]
    if arch == "7":
        config = {"architectures": ["RWKV7ForCausalLM"], "model_type": "rwkv7",
                  "hidden_size": int(emb.shape[1]), "head_dim": int(raw["blocks.0.att.r_k"].shape[1]),
                  "num_heads": 32, "vocab_size": int(emb.shape[0]), "tie_word_embeddings": False}
    else:
        config = {"architectures": ["Rwkv6ForCausalLM"], "model_type": "rwkv6",
                  "hidden_size": int(emb.shape[1]), "vocab_size": int(emb.shape[0]),
                  "intermediate_size": None, "rescale_every": 6}
    (folder / "config.json").write_text(json.dumps(config))
    return folder
