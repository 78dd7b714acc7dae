"""Write tests/golden/torch-save-v6.pth with torch itself (needs torch; run by hand, not by CI).

    pip install torch==2.13.0   # CPU torch
    python tests/golden/make_torch_save.py

The file is `torch.save` of a tiny RWKV-6 checkpoint (`raw_checkpoint("6", seed=8)` of
tests/checkpoints.py) in BF16, with one tensor stored transposed (a strided view), as published
checkpoints may hold them. `tests/test_convert.py` converts it and compares the result with
the conversion of the same weights written by our own torch-free writer: the reader is tested
on real torch output without CI installing torch (about 900 MB; measured at 47 s to install
from a local wheel on the 2-core machine). Rerun this script if `raw_checkpoint` changes.
"""

from __future__ import annotations

import sys
from collections import OrderedDict
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))

from checkpoints import raw_checkpoint

TORCH_SAVE_FILE = HERE / "torch-save-v6.pth"
SEED = 8
TRANSPOSED = "blocks.0.att.key.weight"


def main() -> None:
    import torch

    raw = raw_checkpoint("6", seed=SEED)
    state = OrderedDict((k, torch.from_numpy(v.copy()).to(torch.bfloat16)) for k, v in raw.items())
    state[TRANSPOSED] = state[TRANSPOSED].t().contiguous().t()
    torch.save(state, TORCH_SAVE_FILE)
    print(f"wrote {TORCH_SAVE_FILE} with torch {torch.__version__}")


if __name__ == "__main__":
    main()
