"""Where rwkv-cpp keeps its files (a base module: every layer may import it).

The home folder is `$RWKV_HOME`, else `~/.rwkv`. The library looks there for the GPT-NeoX 20B
tokenizer file; the `rwkv-cpp` command also installs models there (see `app/home.py`).
"""

from __future__ import annotations

import os
from pathlib import Path

TOKENIZER_20B_FILE = "20B_tokenizer.json"


def rwkv_home() -> Path:
    """The home folder: `$RWKV_HOME` if set, else `~/.rwkv`."""
    value = os.environ.get("RWKV_HOME")
    return Path(value).expanduser() if value else Path.home() / ".rwkv"


def tokenizer_20b_path() -> Path:
    """Where the GPT-NeoX 20B tokenizer of RWKV-4 Pile/Raven models is kept."""
    return rwkv_home() / TOKENIZER_20B_FILE
