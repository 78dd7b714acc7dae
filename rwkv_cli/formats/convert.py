"""Convert RWKV checkpoints (`.pth`, `.safetensors`, Hugging Face folders) to rwkv.cpp model
files, and quantize them.

No torch: `.pth` files are read by `pth.py` (a restricted unpickler over the zip, data
memory-mapped tensor by tensor), `.safetensors` by `safetensors_io.py`, and Hugging Face-format
RWKV-6 / RWKV-7 folders by `hf.py` (their tensors renamed and viewed back into the authors'
layout, so the file written is the one the `.pth` of the same weights gives).

The output is what rwkv.cpp's own converter writes for the same checkpoint, tensor for tensor:
the checkpoint's keys in its order, with the stored-value transforms the format defines
(facts of the format; the forward passes read these stored values):

- every architecture: `.time_*` mixing vectors squeezed from (1, 1, C) to (C,);
- v4: `time_decay` stored as `-exp(w)`; `time_first` as is;
- v5.1: `time_decay` as `exp(-exp(w))` and `time_first` as `exp(u)`, both (n_head, 1, 1);
- v5.2: `time_decay` as `exp(-exp(w))` and `time_faaaa` as is, both (n_head, head_size, 1);
- v6: `time_decay` as is, (n_head, head_size, 1); `time_faaaa` (n_head, head_size, 1); the
  low-rank `time_maa_w1`, `time_decay_w1`, `time_decay_w2` transposed, `time_maa_w2`
  transposed on its last two axes;
- v7: the six token-shift mixes `att.x_r, x_w, x_k, x_v, x_a, x_g` concatenated into
  `att.x_rwkvag` (6, 1, C), written where `att.x_r` was; the low-rank `w1 w2 a1 a2 v1 v2 g1 g2`
  transposed; layer 0's `att.v0/v1/v2` (unused: layer 0's value is `v_first`) dropped, as
  rwkv.cpp's files of v7 models hold none;
- an FP16 file stores only 2-D matrices in FP16 (except v7's small `att.r_k` and every
  `time_*` tensor, v6's low-rank `time_maa_w1`, `time_decay_w1`, `time_decay_w2` included);
  vectors and the 3-D tensors (decays, bonuses, v6 `time_maa_w2`, v7 `x_rwkvag w0 a0 v0 k_k k_a
  x_k`) stay FP32, as in rwkv.cpp's files.

Both steps write to a temporary file next to the destination and rename it at the end, so an
interrupted run never leaves a file that looks complete; both refuse a destination that is the
source itself.
"""

from __future__ import annotations

import os
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional, Union

import numpy as np

from . import modelfile
from .hf import is_hf_checkpoint, read_hf_checkpoint
from .pth import ConversionError, StoredTensor, is_torch_zip, read_pth, read_stored, rows_of
from .safetensors_io import read_safetensors
from .tensor_types import FLOAT_TYPES, QUANTIZED_TYPES

__all__ = [
    "ARCH_NAMES",
    "QUANTIZED_TYPES",
    "ConversionError",
    "check_output_type",
    "check_quantize",
    "convert",
    "detect_checkpoint_arch",
    "quantize",
    "read_checkpoint",
    "refuse_same_file",
]

PathLike = Union[str, "os.PathLike[str]"]
Progress = Optional[Callable[[int, int], None]]

ARCH_NAMES = {
    "4": "RWKV v4",
    "5.1": "RWKV v5.1",
    "5.2": "RWKV v5.2 (Eagle)",
    "6": "RWKV v6 (Finch)",
    "7": "RWKV v7 (Goose)",
}
OUTPUT_TYPES = FLOAT_TYPES  # what a checkpoint converts to; quantize() does the rest

_BLOCK_KEY = re.compile(r"^blocks\.(\d+)\.(.+)$")
_V7_MIX_ORDER = ("x_r", "x_w", "x_k", "x_v", "x_a", "x_g")
_V7_LOW_RANK = ("w1", "w2", "a1", "a2", "v1", "v2", "g1", "g2")


# ----------------------------------------------------------------------------------------------
# Reading checkpoints


def read_checkpoint(path: PathLike) -> list[StoredTensor]:
    """The tensors of a `.pth` or `.safetensors` checkpoint (lazy, in the file's order), or of
    a Hugging Face checkpoint folder (under the `.pth` keys)."""
    path = Path(path)
    if path.is_dir():
        if is_hf_checkpoint(path):
            return read_hf_checkpoint(path)[1]
        raise ConversionError(
            f"{path}: a folder, but not a Hugging Face checkpoint (config.json and *.safetensors)"
        )
    if not path.is_file():
        raise ConversionError(f"{path}: no such file")
    if path.suffix == ".safetensors":
        return read_safetensors(path)
    if is_torch_zip(path) or path.suffix in (".pth", ".pt", ".bin", ".ckpt"):
        return read_pth(path)
    with open(path, "rb") as f:
        head = f.read(8)
    if len(head) == 8 and 0 < int.from_bytes(head, "little") < 100 * 1024 * 1024:
        return read_safetensors(path)
    raise ConversionError(f"{path}: neither a PyTorch .pth checkpoint nor a .safetensors file")


def detect_checkpoint_arch(keys: Sequence[str] | set[str]) -> str:
    """Architecture of a raw checkpoint from its keys: "4", "5.1", "5.2", "6" or "7"."""
    keys = set(keys)
    if "emb.weight" not in keys or not any(k.startswith("blocks.0.") for k in keys):
        raise ConversionError(
            "unrecognized checkpoint layout: an RWKV checkpoint has emb.weight and blocks.0.*"
        )
    if "blocks.0.att.r_k" in keys or "blocks.0.att.x_r" in keys:
        return "7"
    if "blocks.0.att.time_maa_x" in keys:
        return "6"
    if "blocks.0.att.ln_x.weight" in keys:
        if "blocks.0.att.gate.weight" not in keys:
            return "5.1"
        if "blocks.0.att.time_faaaa" in keys:
            return "5.2"
        raise ConversionError(
            "an RWKV v5 checkpoint with a gate but without time_faaaa (an early v5 variant) "
            "has no rwkv.cpp layout"
        )
    if "blocks.0.att.time_decay" in keys and "blocks.0.att.time_first" in keys:
        return "4"
    raise ConversionError(
        "unrecognized RWKV checkpoint layout: none of blocks.0.att.r_k (v7), time_maa_x (v6), "
        "ln_x (v5), time_decay + time_first (v4) is present"
    )


# ----------------------------------------------------------------------------------------------
# The conversion plan: every output tensor, its sources and its transform, from shapes alone


Transform = Callable[[list[np.ndarray]], np.ndarray]


@dataclass
class PlannedTensor:
    key: str
    sources: tuple[str, ...]
    shape: tuple[int, ...]  # PyTorch order, as written
    transform: Transform
    float16: bool  # stored as FP16 in an FP16 file


@dataclass
class Dimensions:
    n_vocab: int
    n_embed: int
    n_layer: int
    n_ffn: int
    n_head: int
    head_size: int


def _identity(x: list[np.ndarray]) -> np.ndarray:
    return x[0]


def _reshaped(shape: tuple[int, ...]) -> Transform:
    return lambda x: x[0].reshape(shape)


def _transposed(x: list[np.ndarray]) -> np.ndarray:
    return np.ascontiguousarray(x[0].T)


def _last_axes_swapped(x: list[np.ndarray]) -> np.ndarray:
    return np.ascontiguousarray(x[0].transpose(0, 2, 1))


def _neg_exp(shape: tuple[int, ...]) -> Transform:
    # float64 then one rounding: the correctly rounded float32 of -exp(w)
    return lambda x: (-np.exp(x[0].astype(np.float64))).astype(np.float32).reshape(shape)


def _exp(shape: tuple[int, ...]) -> Transform:
    return lambda x: np.exp(x[0].astype(np.float64)).astype(np.float32).reshape(shape)


def _exp_neg_exp(shape: tuple[int, ...]) -> Transform:
    return lambda x: np.exp(-np.exp(x[0].astype(np.float64))).astype(np.float32).reshape(shape)


def _stacked(shape: tuple[int, ...]) -> Transform:
    return lambda x: np.concatenate([v.reshape(1, 1, -1) for v in x]).reshape(shape)


def _squeezed(shape: tuple[int, ...]) -> tuple[int, ...]:
    return tuple(n for n in shape if n != 1)


class _Planner:
    def __init__(self, path: PathLike, tensors: list[StoredTensor]):
        self.path = path
        self.shapes = {t.key: t.shape for t in tensors}
        self.order = [t.key for t in tensors]
        self.arch = detect_checkpoint_arch(self.order)
        self.name = ARCH_NAMES[self.arch]

    # -- checks

    def need(self, key: str) -> tuple[int, ...]:
        if key not in self.shapes:
            raise ConversionError(f"{self.path}: missing key {key} (required by {self.name})")
        return self.shapes[key]

    def expect(self, key: str, shape: tuple[int, ...], vector: bool = False) -> None:
        """`vector`: any shape with the same non-unit dims is accepted, e.g. (1, 1, C) ~ (C,)."""
        actual = self.need(key)
        same = _squeezed(actual) == _squeezed(shape) if vector else actual == shape
        if not same:
            raise ConversionError(
                f"{self.path}: tensor {key} has shape {list(actual)}, expected {list(shape)} "
                f"({self.name}, from emb.weight and the layer shapes)"
            )

    # -- dimensions

    def dimensions(self) -> Dimensions:
        emb = self.need("emb.weight")
        if len(emb) != 2:
            raise ConversionError(f"{self.path}: emb.weight has shape {list(emb)}, expected 2-D")
        n_vocab, n_embed = emb
        layers = set()
        for key in self.order:
            match = _BLOCK_KEY.match(key)
            if match:
                layers.add(int(match.group(1)))
        n_layer = len(layers)
        if layers != set(range(n_layer)):
            missing = min(set(range(max(layers) + 1)) - layers)
            raise ConversionError(f"{self.path}: blocks.{missing}.* missing (layers {sorted(layers)})")
        ffn = self.need("blocks.0.ffn.key.weight")
        if len(ffn) != 2:
            raise ConversionError(f"{self.path}: blocks.0.ffn.key.weight is not a matrix")
        n_head, head_size = 0, 0
        if self.arch != "4":
            # v5.1: one decay per head; later versions: (n_head, head_size) bonus or r_k
            head_key = {"5.1": "time_decay", "5.2": "time_faaaa", "6": "time_faaaa", "7": "r_k"}
            key = "blocks.0.att." + head_key[self.arch]
            shape = self.need(key)
            if self.arch == "5.1":
                n_head = int(np.prod(shape))
            elif len(shape) == 2 and shape[0] * shape[1] == n_embed:
                n_head = shape[0]
            if n_head <= 0 or n_embed % n_head:
                raise ConversionError(
                    f"{self.path}: cannot derive the heads of {self.name} from {key} of shape "
                    f"{list(shape)} with n_embed {n_embed}"
                )
            head_size = n_embed // n_head
        return Dimensions(n_vocab, n_embed, n_layer, ffn[0], n_head, head_size)

    # -- the plan

    def plan(self, checkpoint_order: bool = True) -> tuple[Dimensions, list[PlannedTensor]]:
        """Every output tensor, in the checkpoint's order or else in the architecture's own
        (embedding, layers in turn, head; within a layer the authors' `.pth` order), for
        containers whose order means nothing."""
        dims = self.dimensions()
        C, V, F = dims.n_embed, dims.n_vocab, dims.n_ffn
        H, N = dims.n_head, dims.head_size
        specs: dict[str, PlannedTensor] = {}
        dropped: set[str] = set()

        def add(key, out_shape, transform=_identity, sources=None, raw_shape=None,
                vector=False, float16=None):
            sources = tuple(sources or (key,))
            if raw_shape is not None:
                for source in sources:
                    self.expect(source, raw_shape, vector)
            if float16 is None:  # rwkv.cpp keeps every time_* tensor in FP32
                float16 = len(out_shape) == 2 and not key.rsplit(".", 1)[-1].startswith("time_")
            specs[sources[0]] = PlannedTensor(key, sources, tuple(out_shape), transform, float16)

        def vec(key):  # a squeezed (C,) vector
            add(key, (C,), _reshaped((C,)), raw_shape=(C,), vector=True)

        def matrix(key, rows, cols):
            add(key, (rows, cols), raw_shape=(rows, cols))

        def low_rank_pair(first, second):  # raw (C, D) and (D, C), both stored transposed
            d = self.need(first)[1] if len(self.need(first)) == 2 else -1
            add(first, (d, C), _transposed, raw_shape=(C, d))
            add(second, (C, d), _transposed, raw_shape=(d, C))

        matrix("emb.weight", V, C)
        for i in range(dims.n_layer):
            b, att, ffn = f"blocks.{i}.", f"blocks.{i}.att.", f"blocks.{i}.ffn."
            for name in ("ln1", "ln2") + (("ln0",) if i == 0 else ()):
                vec(f"{b}{name}.weight")
                vec(f"{b}{name}.bias")
            if self.arch in ("4", "5.1", "5.2"):
                for m in "kvr" + ("g" if self.arch == "5.2" else ""):
                    vec(f"{att}time_mix_{m}")
                for m in ("key", "value", "receptance", "output") + (
                    ("gate",) if self.arch == "5.2" else ()
                ):
                    matrix(f"{att}{m}.weight", C, C)
            if self.arch == "4":
                add(att + "time_decay", (C,), _neg_exp((C,)), raw_shape=(C,), vector=True)
                vec(att + "time_first")
            elif self.arch == "5.1":
                add(att + "time_decay", (H, 1, 1), _exp_neg_exp((H, 1, 1)), raw_shape=(H,),
                    vector=True)
                add(att + "time_first", (H, 1, 1), _exp((H, 1, 1)), raw_shape=(H,), vector=True)
            elif self.arch == "5.2":
                add(att + "time_decay", (H, N, 1), _exp_neg_exp((H, N, 1)), raw_shape=(H, N))
                add(att + "time_faaaa", (H, N, 1), _reshaped((H, N, 1)), raw_shape=(H, N))
            elif self.arch == "6":
                for m in "xwkvrg":
                    vec(f"{att}time_maa_{m}")
                w1 = self.need(att + "time_maa_w1")
                d5 = w1[1] if len(w1) == 2 and w1[1] % 5 == 0 else -1
                add(att + "time_maa_w1", (d5, C), _transposed, raw_shape=(C, d5))
                add(att + "time_maa_w2", (5, C, d5 // 5), _last_axes_swapped,
                    raw_shape=(5, d5 // 5, C))
                add(att + "time_decay", (H, N, 1), _reshaped((H, N, 1)), raw_shape=(C,),
                    vector=True)
                low_rank_pair(att + "time_decay_w1", att + "time_decay_w2")
                add(att + "time_faaaa", (H, N, 1), _reshaped((H, N, 1)), raw_shape=(H, N))
                for m in ("receptance", "key", "value", "output", "gate"):
                    matrix(f"{att}{m}.weight", C, C)
            else:  # 7
                add(att + "x_rwkvag", (6, 1, C), _stacked((6, 1, C)),
                    sources=[att + m for m in _V7_MIX_ORDER], raw_shape=(C,), vector=True,
                    float16=False)
                for m in "wavg":
                    if m == "v" and i == 0:
                        dropped.update(f"{att}v{j}" for j in "012" if f"{att}v{j}" in self.shapes)
                        continue
                    if m != "g":
                        add(f"{att}{m}0", (1, 1, C), _reshaped((1, 1, C)), raw_shape=(C,),
                            vector=True)
                    low_rank_pair(f"{att}{m}1", f"{att}{m}2")
                for m in ("k_k", "k_a"):
                    add(att + m, (1, 1, C), _reshaped((1, 1, C)), raw_shape=(C,), vector=True)
                add(att + "r_k", (H, N), raw_shape=(H, N), float16=False)
                for m in ("receptance", "key", "value", "output"):
                    matrix(f"{att}{m}.weight", C, C)
            if self.arch != "4":
                vec(att + "ln_x.weight")
                vec(att + "ln_x.bias")
            if self.arch == "7":
                add(ffn + "x_k", (1, 1, C), _reshaped((1, 1, C)), raw_shape=(C,), vector=True)
            else:
                mix = "time_maa" if self.arch == "6" else "time_mix"
                vec(f"{ffn}{mix}_k")
                vec(f"{ffn}{mix}_r")
            matrix(ffn + "key.weight", F, C)
            if self.arch != "7":
                matrix(ffn + "receptance.weight", C, C)
            matrix(ffn + "value.weight", C, F)
        vec("ln_out.weight")
        vec("ln_out.bias")
        matrix("head.weight", V, C)

        used = dropped | {s for spec in specs.values() for s in spec.sources}
        unknown = [k for k in self.order if k not in used]
        if unknown:
            shown = ", ".join(unknown[:5]) + (" ..." if len(unknown) > 5 else "")
            raise ConversionError(
                f"{self.path}: {len(unknown)} tensor(s) that {self.name} does not have: {shown}"
            )
        # checkpoint order; a tensor made of several sources sits where its first one was
        planned = [specs[k] for k in (self.order if checkpoint_order else specs) if k in specs]
        return dims, planned


# ----------------------------------------------------------------------------------------------
# Streaming: large matrices go through in slices of rows, so memory stays near one slice

CHUNK_BYTES = 8 << 20  # float32 bytes per slice


def _chunks(src: Path, p: PlannedTensor, by_key: dict[str, StoredTensor]):
    """The values of a planned tensor as float32 arrays of consecutive rows."""
    if p.transform is _identity and len(p.shape) >= 2:
        tensor = by_key[p.sources[0]]
        row_values = max(1, int(np.prod(p.shape[1:])))
        step = max(1, CHUNK_BYTES // (4 * row_values))
        for start in range(0, p.shape[0], step):
            yield read_stored(src, rows_of(tensor, start, min(start + step, p.shape[0])))
        return
    values = p.transform([read_stored(src, by_key[s]) for s in p.sources])
    if values.shape != p.shape:  # a planning bug, never a user error
        raise AssertionError(f"{p.key}: produced {values.shape}, planned {p.shape}")
    yield values


# ----------------------------------------------------------------------------------------------
# Public API


def check_output_type(data_type: str) -> str:
    """The name of a type a checkpoint converts to (FP16, FP32); ConversionError otherwise."""
    name = str(data_type).upper()
    if name not in OUTPUT_TYPES:
        raise ConversionError(
            f"cannot convert to {data_type!r}: convert to FP16 or FP32, then quantize "
            f"to one of {', '.join(QUANTIZED_TYPES)}"
        )
    return name


def refuse_same_file(src: PathLike, dest: PathLike) -> None:
    """Raise ConversionError when `dest` is `src` itself (by device and inode, so another
    name or a hard link of the source is caught too): the output replaces the destination,
    and a source overwritten by its own conversion is lost."""
    try:
        same = os.path.samefile(src, dest)
    except OSError:  # the destination does not exist yet (or the source does not)
        return
    if same:
        raise ConversionError(f"{dest} is the source file itself; write to another file")


def check_head_type(head_type: str | None) -> str | None:
    """The head type's name (None: the head stays as the source has it)."""
    if head_type is None or head_type == "":
        return None
    name = str(head_type).upper()
    if name not in QUANTIZED_TYPES:
        raise ConversionError(
            f"unknown head quantization type {head_type!r}; choose one of "
            f"{', '.join(QUANTIZED_TYPES)}"
        )
    return name


def check_quantize(src: PathLike, type_name: str, head_type: str | None = None) -> str:
    """The checks `quantize` makes before it writes anything; returns the type's name."""
    name = str(type_name).upper()
    if name not in QUANTIZED_TYPES:
        raise ConversionError(
            f"unknown quantization type {type_name!r}; choose one of {', '.join(QUANTIZED_TYPES)}"
        )
    check_head_type(head_type)
    try:
        header = modelfile.read_header(src)
    except (modelfile.ModelFileError, OSError) as exc:
        raise ConversionError(f"{src}: not an rwkv.cpp model file ({exc})") from exc
    if header.data_type_name not in FLOAT_TYPES:
        raise ConversionError(
            f"{src}: is already {header.data_type_name}; quantize an FP32 or FP16 file"
        )
    if head_type and header.n_embed % 32:
        raise ConversionError(
            f"{src}: the head cannot be quantized: its rows ({header.n_embed} values) are not "
            "a multiple of 32"
        )
    return name


def convert(
    src: PathLike, dest: PathLike, data_type: str = "FP16", progress: Progress = None
) -> dict:
    """Convert a checkpoint to an rwkv.cpp model file of type FP16 or FP32.

    `progress(done, total)` is called as data are written (after each tensor, and after each
    slice of a large one) with the output bytes written so far and in all. Returns `{"arch", "arch_name", "n_layer", "n_embed", "n_vocab", "n_head",
    "data_type", "tensors", "bytes"}`. Raises ConversionError (a ValueError) for anything
    wrong with the checkpoint, before the destination is touched.
    """
    data_type = check_output_type(data_type)
    src, dest = Path(src), Path(dest)
    refuse_same_file(src, dest)
    tensors = read_checkpoint(src)
    by_key = {t.key: t for t in tensors}
    planner = _Planner(src, tensors)
    # safetensors files (and so Hugging Face folders) order tensors by element type and name,
    # not as the model has them
    dims, planned = planner.plan(checkpoint_order=src.suffix != ".safetensors" and not src.is_dir())
    itemsize = {True: 2 if data_type == "FP16" else 4, False: 4}
    total = sum(int(np.prod(p.shape)) * itemsize[p.float16] for p in planned)
    done = 0

    def counted(chunks, element_bytes: int):
        nonlocal done
        for chunk in chunks:
            yield chunk
            done += chunk.size * element_bytes  # written once the writer asks for more
            if progress is not None:
                progress(done, total)

    with modelfile.ModelWriter(dest, dims.n_vocab, dims.n_embed, dims.n_layer, data_type) as out:
        for p in planned:
            out_type = "FP16" if p.float16 and data_type == "FP16" else "FP32"
            chunks = counted(_chunks(src, p, by_key), itemsize[p.float16])
            out.write_tensor_chunks(p.key, p.shape, out_type, chunks)
    return {
        "arch": planner.arch,
        "arch_name": planner.name,
        "n_layer": dims.n_layer,
        "n_embed": dims.n_embed,
        "n_vocab": dims.n_vocab,
        "n_head": dims.n_head,
        "data_type": data_type,
        "tensors": len(planned),
        "bytes": dest.stat().st_size,
    }


def quantize(
    src: PathLike, dest: PathLike, type_name: str, progress: Progress = None, library=None,
    head_type: str | None = None,
) -> dict:
    """Quantize an FP32/FP16 rwkv.cpp model file with the engine's quantizer.

    `head_type` (e.g. "Q8_0") quantizes the head too (opt-in; by default the head stays as the
    source has it, as rwkv.cpp's quantizer leaves it). Writes to a temporary file beside `dest`
    and renames it at the end. Returns `{"type", "head_type", "bytes_before", "bytes_after"}`.
    """
    src, dest = Path(src), Path(dest)
    name = check_quantize(src, type_name, head_type)
    head = check_head_type(head_type)
    refuse_same_file(src, dest)
    if library is None:
        from ..engine import default_library

        library = default_library()
    tmp = dest.with_name(f".{dest.name}.{os.getpid()}.part")
    try:
        if head:
            library.quantize_model_file(src, tmp, name, progress=progress, head_type=head)
        else:
            library.quantize_model_file(src, tmp, name, progress=progress)
        os.replace(tmp, dest)
    finally:
        if tmp.exists():
            tmp.unlink()
    return {"type": name, "head_type": head, "bytes_before": src.stat().st_size,
            "bytes_after": dest.stat().st_size}
