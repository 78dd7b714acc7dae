"""Seed corpora for the fuzz targets, written at fuzz time by our own writers (no blobs in git).

    python tests/fuzz/make_seeds.py OUT

writes OUT/load/ (a small model of every architecture and tensor type, for fuzz_load),
OUT/quantize/ (the FP32 and FP16 ones, for fuzz_quantize), OUT/pth/, OUT/safetensors/,
OUT/registry/ and OUT/chat_load/ (for the Python targets). Small on purpose: a fuzzer's
executions per second fall with the input's size.
"""

from __future__ import annotations

import io
import json
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # tests/, for checkpoints.py

from checkpoints import Shape, raw_checkpoint, write_pth, write_safetensors

from rwkv_cli.formats.synthetic import write_random_model

ARCHS = ("4", "5.1", "5.2", "6", "7")
TYPES = ("FP32", "FP16", "Q4_0", "Q4_1", "Q5_0", "Q5_1", "Q8_0")


def model_seeds(out: Path) -> None:
    load, quantize = out / "load", out / "quantize"
    load.mkdir(parents=True, exist_ok=True)
    quantize.mkdir(parents=True, exist_ok=True)
    for arch in ARCHS:
        # v7's layers after the first mix v with the first layer's: two layers cover both kinds
        n_layer = 2 if arch == "7" else 1
        for data_type in TYPES:
            path = load / f"v{arch}-{data_type}.bin"
            write_random_model(path, arch, n_layer, 32, 12, data_type, head_size=16, ffn_dim=32, seed=1)
            if data_type in ("FP32", "FP16"):
                (quantize / path.name).write_bytes(path.read_bytes())


def checkpoint_seeds(out: Path) -> None:
    pth, safetensors = out / "pth", out / "safetensors"
    pth.mkdir(parents=True, exist_ok=True)
    safetensors.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    small = {
        "emb.weight": rng.standard_normal((4, 8), np.float32),
        "blocks.0.att.key.weight": rng.standard_normal((8, 8), np.float32),
        "blocks.0.ln1.bias": rng.standard_normal(8, np.float32),
    }
    for dtype in ("F32", "F16", "BF16"):
        write_pth(pth / f"small-{dtype}.pth", small, dtype)
        write_safetensors(safetensors / f"small-{dtype}.safetensors", small, dtype)
    write_pth(pth / "transposed.pth", small, "F16", transposed=["blocks.0.att.key.weight"])
    write_pth(pth / "shared.pth", small, "BF16", shared_storage=True)
    raw = raw_checkpoint("7", Shape(n_layer=1, n_embed=8, n_vocab=8, head_size=4, lora=2))
    write_pth(pth / "v7.pth", raw, "BF16")
    write_safetensors(safetensors / "v7.safetensors", raw, "BF16")


def registry_seeds(out: Path) -> None:
    registry = out / "registry"
    registry.mkdir(parents=True, exist_ok=True)
    entry = {
        "name": "rwkv7-0.1b", "path": "/nonexistent/rwkv7-0.1b-Q8_0.bin", "arch": "7",
        "data_type": "Q8_0", "n_vocab": 65536, "n_layer": 12, "n_embed": 768,
        "file_size": 301500000, "tokenizer": "auto", "tokenizer_path": "", "prompt_format": "",
        "title": "RWKV-7 0.1B", "source": "catalog", "installed_at": "2025-01-01T00:00:00+00:00",
    }
    two = {"last": "rwkv7-0.1b", "models": {"rwkv7-0.1b": entry, "other": {**entry, "name": "other"}}}
    (registry / "two.json").write_text(json.dumps(two, indent=2))
    (registry / "empty.json").write_text(json.dumps({"last": None, "models": {}}))


def chat_seeds(out: Path, state_len: int) -> None:
    chat = out / "chat_load"
    chat.mkdir(parents=True, exist_ok=True)
    for name, n in (("right.npz", state_len), ("wrong-length.npz", 3)):
        buffer = io.BytesIO()
        np.savez(
            buffer, state=np.arange(n, dtype=np.float32), history=np.array("User: hi\n\nBot: hello"),
            model=np.array("m.bin"), n_vocab=np.array(12),
        )
        (chat / name).write_bytes(buffer.getvalue())


# the state length the chat target's stand-in model reports
CHAT_STATE_LEN = 40


def main(argv: list[str]) -> int:
    if len(argv) != 1:
        print("usage: python tests/fuzz/make_seeds.py OUT", file=sys.stderr)
        return 2
    out = Path(argv[0])
    model_seeds(out)
    checkpoint_seeds(out)
    registry_seeds(out)
    chat_seeds(out, CHAT_STATE_LEN)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
