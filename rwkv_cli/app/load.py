"""The model a command runs, loaded with a status line (shared by chat, complete and bench).

The library's errors say what is wrong; here they gain the advice that only the command can
give (which `rwkv-cpp` command fixes it).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from rich.console import Console

from ..errors import UserError
from . import home

if TYPE_CHECKING:
    from ..core.model import RWKV


class ModelLoadError(UserError):
    """The model cannot run yet; the message says which command fixes it."""


def load_model(
    console: Console,
    choice: home.ModelChoice,
    threads: int | None = None,
    gpu: int | str = 0,
    quiet: bool = False,
) -> RWKV:
    """Check the file header (for a clear message), then load it in the engine."""
    from ..core.model import RWKV
    from ..core.tokenizer import TokenizerNotFound
    from ..formats.gguf import is_gguf, read_gguf
    from ..formats.modelfile import read_header

    if is_gguf(choice.path):
        info = read_gguf(choice.path, tensors=False)  # GGUFError: malformed
        if info.rwkv_version is None:
            raise ModelLoadError(
                f"{choice.path}: a GGUF file of architecture {info.architecture!r}; this engine "
                "runs RWKV-6 and RWKV-7 GGUF files (rwkv6, rwkv7)"
            )
    else:
        read_header(choice.path)  # ModelFileError: not an rwkv.cpp file, old quantized format, ...
    model = RWKV(choice.path, threads=threads, gpu_offload=gpu, tokenizer=choice.tokenizer)
    try:
        if quiet:
            return model.setup()
        with console.status(f"Loading {choice.name}...", spinner="dots"):
            return model.setup()
    except TokenizerNotFound as exc:
        raise ModelLoadError(
            f"{exc}; `rwkv-cpp --setup` fetches it when it installs a model that needs it"
        ) from exc
