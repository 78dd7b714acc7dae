"""Make golden logits with the official `rwkv` package (needs torch; run by hand, not by CI).

    pip install torch==2.13.0 rwkv   # CPU torch
    python tests/golden/make_golden.py          # writes tests/golden/golden-<arch>.npz

For each architecture, a tiny random RAW checkpoint is generated deterministically by
`tests/checkpoints.py` (seeded; written by our own torch-free .pth writer, which torch.load
reads), the official package runs it with strategy "cpu fp32" on a few tokens fed one at a
time from a fresh state, and the logits after each token are saved with the parameters that
regenerate the checkpoint. `tests/test_golden.py` regenerates the same checkpoint without
torch, converts it with our converter and compares our engine and the NumPy reference against
these logits. The package's v5 group norm uses eps 64e-5, the default of our engine.

Each architecture runs in its own process: RWKV_V7_ON must be set before the package is
imported, and then it serves v7 only.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))

from checkpoints import ARCHES, Shape, raw_checkpoint, write_pth

GOLDEN_SHAPE = Shape(n_layer=2, n_embed=32, n_vocab=50, head_size=8, lora=4)
GOLDEN_SEED = 20260
GOLDEN_TOKENS = [3, 14, 15, 9, 26, 5, 35]


def golden_path(arch: str) -> Path:
    return HERE / f"golden-{arch}.npz"


def package_version() -> str:
    from importlib.metadata import version

    return version("rwkv")


def run_package(arch: str) -> None:
    """In a child process: run the official package on the checkpoint of `arch`."""
    import torch

    torch.set_num_threads(1)
    from rwkv.model import RWKV

    shape = GOLDEN_SHAPE
    with tempfile.TemporaryDirectory() as tmp:
        ckpt = write_pth(Path(tmp) / "golden.pth", raw_checkpoint(arch, shape, GOLDEN_SEED))
        name = str(ckpt)[: -len(".pth")] if arch == "7" else str(ckpt)
        model = RWKV(model=name, strategy="cpu fp32")
        state, rows = None, []
        for token in GOLDEN_TOKENS:
            logits, state = model.forward([token], state)
            rows.append(logits.float().numpy().copy())
    np.savez_compressed(
        golden_path(arch),
        arch=np.array(arch),
        seed=np.array(GOLDEN_SEED),
        n_layer=np.array(shape.n_layer),
        n_embed=np.array(shape.n_embed),
        n_vocab=np.array(shape.n_vocab),
        head_size=np.array(shape.head_size),
        lora=np.array(shape.lora),
        tokens=np.array(GOLDEN_TOKENS, dtype=np.int32),
        logits=np.stack(rows).astype(np.float32),
        package_version=np.array(package_version()),
        torch_version=np.array(torch.__version__),
    )
    print(f"golden {arch}: {golden_path(arch).name}")


def main() -> int:
    if len(sys.argv) == 3 and sys.argv[1] == "--arch":
        run_package(sys.argv[2])
        return 0
    for arch in ARCHES:
        env = dict(os.environ, RWKV_JIT_ON="0", RWKV_CUDA_ON="0",
                   RWKV_V7_ON="1" if arch == "7" else "0")
        subprocess.run([sys.executable, __file__, "--arch", arch], env=env, check=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
