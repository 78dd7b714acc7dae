"""Hugging Face-format RWKV-6 and RWKV-7 checkpoints, read as the authors' `.pth` tensors.

A Hugging Face checkpoint is a folder with `config.json` and `model.safetensors` (or shards
`model-0000K-of-0000N.safetensors` listed in `model.safetensors.index.json`). Its tensors are
the authors' weights under other names, some transposed (facts in HF_FORMATS.md):

- RWKV-7 (`RWKV7ForCausalLM`, flash-linear-attention naming): `model.embeddings` = emb,
  `model.layers.0.pre_norm` = ln0, `attn_norm` / `ffn_norm` = ln1 / ln2, `attn.x_r ... x_g` (or
  one `attn.x_x` (6, C) in the order r, w, k, v, a, g, in checkpoints converted before April
  2025), `attn.{w,a,v}_lora.lora.2.bias` = w0 / a0 / v0, `attn.{w,a,v,g}_lora.lora.0.weight`
  (r, C) = w1 ... g1 transposed, `lora.2.weight` (C, r) = w2 ... g2 transposed,
  `attn.r/k/v/o_proj` = receptance / key / value / output, `attn.g_norm` = ln_x, `model.norm` =
  ln_out, `lm_head` = head. No value changes (the same w0: fla's decay sigmoid equals the
  authors' softplus form).
- RWKV-6 (`Rwkv6ForCausalLM`): pure renames: `rwkv.embeddings` = emb, `rwkv.blocks.0.pre_ln` =
  ln0, `rwkv.blocks.i.attention` = att, `rwkv.blocks.i.feed_forward` = ffn, the rest under
  `rwkv.`, `head.weight` as is. Weights are stored unscaled (the HF model rescales at load).

The tensors come back as the `.pth` keys and shapes, transposes as strided views of the same
bytes, so the converter makes exactly the file it makes from the `.pth`.
"""

from __future__ import annotations

import json
import re
from dataclasses import replace
from pathlib import Path

from .pth import ConversionError, PathLike, StoredTensor, rows_of
from .safetensors_io import read_safetensors

CONFIG = "config.json"
INDEX = "model.safetensors.index.json"

_V7_LAYER = re.compile(r"^model\.layers\.(\d+)\.(.+)$")
_V6_BLOCK = re.compile(r"^rwkv\.blocks\.(\d+)\.(.+)$")
_V7_MIXES = "rwkvag"  # the rows of attn.x_x

_V7_NAMES = {
    "attn_norm.weight": "ln1.weight", "attn_norm.bias": "ln1.bias",
    "ffn_norm.weight": "ln2.weight", "ffn_norm.bias": "ln2.bias",
    "pre_norm.weight": "ln0.weight", "pre_norm.bias": "ln0.bias",
    "attn.k_k": "att.k_k", "attn.k_a": "att.k_a", "attn.r_k": "att.r_k",
    "attn.r_proj.weight": "att.receptance.weight", "attn.k_proj.weight": "att.key.weight",
    "attn.v_proj.weight": "att.value.weight", "attn.o_proj.weight": "att.output.weight",
    "attn.g_norm.weight": "att.ln_x.weight", "attn.g_norm.bias": "att.ln_x.bias",
    "ffn.x_k": "ffn.x_k", "ffn.key.weight": "ffn.key.weight", "ffn.value.weight": "ffn.value.weight",
}
_V7_GLOBAL = {"model.embeddings.weight": "emb.weight", "model.norm.weight": "ln_out.weight",
              "model.norm.bias": "ln_out.bias", "lm_head.weight": "head.weight"}
_V6_GLOBAL = {"rwkv.embeddings.weight": "emb.weight", "rwkv.ln_out.weight": "ln_out.weight",
              "rwkv.ln_out.bias": "ln_out.bias", "head.weight": "head.weight"}


def is_hf_checkpoint(path: PathLike) -> bool:
    """A folder holding config.json and safetensors weights."""
    path = Path(path)
    return path.is_dir() and (path / CONFIG).is_file() and (
        (path / INDEX).is_file() or any(path.glob("*.safetensors"))
    )


def read_config(folder: Path) -> dict:
    try:
        config = json.loads((folder / CONFIG).read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ConversionError(f"{folder / CONFIG}: not a readable JSON file: {exc}") from exc
    if not isinstance(config, dict):
        raise ConversionError(f"{folder / CONFIG}: not a JSON object")
    return config


def checkpoint_arch(config: dict, folder: Path) -> str:
    """"6" or "7" from config.json (model_type or architectures)."""
    model_type = str(config.get("model_type", "")).lower()
    archs = " ".join(str(a) for a in config.get("architectures") or []).lower()
    if model_type == "rwkv7" or "rwkv7" in archs:
        return "7"
    if model_type == "rwkv6" or "rwkv6" in archs:
        return "6"
    raise ConversionError(
        f"{folder / CONFIG}: model_type {config.get('model_type')!r} "
        f"(architectures {config.get('architectures')}) is not a Hugging Face RWKV-6 or RWKV-7 "
        "checkpoint (Rwkv6ForCausalLM, RWKV7ForCausalLM)"
    )


def _shard_files(folder: Path) -> list[Path]:
    index = folder / INDEX
    if index.is_file():
        try:
            weight_map = json.loads(index.read_text(encoding="utf-8"))["weight_map"]
            names = sorted(set(weight_map.values()))
        except (OSError, ValueError, KeyError, TypeError, AttributeError) as exc:
            raise ConversionError(f"{index}: not a safetensors index (weight_map): {exc}") from exc
        files = [folder / name for name in names]
        missing = [f.name for f in files if not f.is_file()]
        if missing:
            raise ConversionError(f"{folder}: shard(s) named in {INDEX} are missing: {', '.join(missing)}")
        return files
    files = sorted(folder.glob("*.safetensors"))
    if not files:
        raise ConversionError(f"{folder}: no .safetensors files")
    return files


def _transposed(t: StoredTensor, key: str) -> StoredTensor:
    if len(t.shape) != 2:
        raise ConversionError(f"{t.file}: tensor {t.key} has shape {list(t.shape)}, expected a matrix")
    return replace(t, key=key, shape=t.shape[::-1], stride=t.stride[::-1])


def _v7_key(name: str, t: StoredTensor, out: list[StoredTensor]) -> bool:
    if name in _V7_GLOBAL:
        out.append(replace(t, key=_V7_GLOBAL[name]))
        return True
    match = _V7_LAYER.match(name)
    if not match:
        return False
    layer, rest = int(match.group(1)), match.group(2)
    prefix = f"blocks.{layer}."
    if rest in _V7_NAMES:
        out.append(replace(t, key=prefix + _V7_NAMES[rest]))
        return True
    mix = re.fullmatch(r"attn\.x_([rwkvag])", rest)
    if mix:
        out.append(replace(t, key=f"{prefix}att.x_{mix.group(1)}"))
        return True
    if rest == "attn.x_x":  # the older fla form: (6, C), rows r, w, k, v, a, g
        if len(t.shape) != 2 or t.shape[0] != 6:
            raise ConversionError(f"{t.file}: {name} has shape {list(t.shape)}, expected [6, C]")
        for i, m in enumerate(_V7_MIXES):
            out.append(replace(rows_of(t, i, i + 1), key=f"{prefix}att.x_{m}"))
        return True
    lora = re.fullmatch(r"attn\.([wavg])_lora\.lora\.([02])\.(weight|bias)", rest)
    if lora:
        m, index, kind = lora.groups()
        if kind == "bias":
            if index != "2" or m == "g":
                return False
            out.append(replace(t, key=f"{prefix}att.{m}0"))
        else:  # lora.0: (r, C) = the authors' m1 transposed; lora.2: (C, r) = m2 transposed
            out.append(_transposed(t, f"{prefix}att.{m}{'1' if index == '0' else '2'}"))
        return True
    return False


def _v6_key(name: str, t: StoredTensor, out: list[StoredTensor]) -> bool:
    if name in _V6_GLOBAL:
        out.append(replace(t, key=_V6_GLOBAL[name]))
        return True
    match = _V6_BLOCK.match(name)
    if not match:
        return False
    layer, rest = match.groups()
    if rest.startswith("pre_ln."):
        rest = "ln0." + rest[len("pre_ln."):]
    elif rest.startswith("attention."):
        rest = "att." + rest[len("attention."):]
    elif rest.startswith("feed_forward."):
        rest = "ffn." + rest[len("feed_forward."):]
    elif not rest.startswith(("ln1.", "ln2.")):
        return False
    out.append(replace(t, key=f"blocks.{layer}.{rest}"))
    return True


def read_hf_checkpoint(path: PathLike) -> tuple[str, list[StoredTensor]]:
    """(architecture "6" or "7", the tensors under the authors' `.pth` keys and shapes)."""
    folder = Path(path)
    if not is_hf_checkpoint(folder):
        raise ConversionError(f"{folder}: not a Hugging Face checkpoint folder ({CONFIG} and *.safetensors)")
    config = read_config(folder)
    arch = checkpoint_arch(config, folder)
    rename = _v7_key if arch == "7" else _v6_key
    out: list[StoredTensor] = []
    unknown: list[str] = []
    seen: set[str] = set()
    for file in _shard_files(folder):
        for t in read_safetensors(file):
            if t.key in seen:
                raise ConversionError(f"{folder}: tensor {t.key} appears in more than one shard")
            seen.add(t.key)
            if not rename(t.key, replace(t, file=file), out):
                unknown.append(t.key)
    if unknown:
        shown = ", ".join(unknown[:5]) + (" ..." if len(unknown) > 5 else "")
        raise ConversionError(
            f"{folder}: {len(unknown)} tensor(s) that a Hugging Face RWKV-{arch} checkpoint does "
            f"not have: {shown}"
        )
    keys = {t.key for t in out}
    if "head.weight" not in keys and config.get("tie_word_embeddings") and "emb.weight" in keys:
        emb = next(t for t in out if t.key == "emb.weight")
        out.append(replace(emb, key="head.weight"))
    return arch, out
