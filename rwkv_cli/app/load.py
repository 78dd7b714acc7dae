"""The model a command runs, loaded with a status line (shared by chat, complete and bench).

The library's errors say what is wrong; here they gain the advice that only the command can
give (which `rwkv-cpp` command or flag fixes it).
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from rich.console import Console

from ..errors import InvalidArgument, UserError
from . import home
from .terms import cli_terms

if TYPE_CHECKING:
    from ..core.model import RWKV

CHECKPOINT_SUFFIXES = (".pth", ".pt", ".ckpt", ".safetensors")


class ModelLoadError(UserError):
    """The model cannot run yet; the message says which command fixes it."""


def _checkpoint_advice(path: Path) -> ModelLoadError | None:
    """A PyTorch or safetensors checkpoint given as a model: say how to convert it."""
    from ..formats.pth import is_torch_zip

    looks_like = path.suffix.lower() in CHECKPOINT_SUFFIXES
    try:
        looks_like = looks_like or is_torch_zip(path)
    except OSError:
        pass
    if not looks_like:
        return None
    out = path.with_name(path.stem + "-FP16.bin")
    return ModelLoadError(
        f"{path} is a checkpoint ({path.suffix or 'PyTorch zip'}), not an rwkv.cpp model file: "
        f"convert it first with `rwkv-cpp convert {path} {out}` (then `rwkv-cpp quantize` "
        "for a smaller file), and run that"
    )


def _read_header(path: Path) -> None:
    from ..formats.gguf import is_gguf, read_gguf
    from ..formats.modelfile import ModelFileError, read_header

    advice = _checkpoint_advice(path)
    if advice is not None:
        raise advice
    if is_gguf(path):
        info = read_gguf(path, tensors=False)  # GGUFError: malformed
        if info.rwkv_version is None:
            raise ModelLoadError(
                f"{path}: a GGUF file of architecture {info.architecture!r}; this engine "
                "runs RWKV-6 and RWKV-7 GGUF files (rwkv6, rwkv7)"
            )
        return
    try:
        read_header(path)  # not an rwkv.cpp file, old quantized format, ...: a clear message
    except ModelFileError:
        raise
    except IsADirectoryError:
        home.check_model_file(path)
        raise


def thread_note(model: RWKV) -> str | None:
    """A line for `--threads N` asking for more threads than there are CPUs."""
    from ..core.model import available_cpus

    requested = model.threads_requested
    if requested is None or requested <= model.threads:
        return None
    return (f"note: --threads {requested} is more than the {available_cpus()} CPUs available; "
            f"using {model.threads} (more threads than CPUs only slows the engine down)")


def load_model(
    console: Console,
    choice: home.ModelChoice,
    threads: int | None = None,
    gpu: int | str = 0,
    quiet: bool = False,
    tokenizer: str | None = None,
    concurrent: int = 1,
) -> RWKV:
    """Check the file header (for a clear message), then load it in the engine
    (`concurrent`: completions it runs together, the server's --parallel)."""
    from ..core.model import RWKV
    from ..core.tokenizer import TokenizerNotFound

    _read_header(choice.path)
    try:
        model = RWKV(choice.path, threads=threads, gpu_offload=gpu, concurrent=concurrent,
                     tokenizer=tokenizer or choice.tokenizer)
    except InvalidArgument as exc:
        if tokenizer is not None and exc.option == "tokenizer":
            raise ModelLoadError(
                f"--tokenizer {tokenizer}: neither a known tokenizer (world, 20B, bytes) nor a "
                "tokenizer file (.json for Hugging Face, .txt for a World vocabulary)"
            ) from exc
        raise
    note = thread_note(model)
    if note is not None:
        Console(stderr=True, highlight=False).print(note, soft_wrap=True)
    try:
        if quiet:
            return model.setup()
        with console.status(f"Loading {choice.name}...", spinner="dots"):
            return model.setup()
    except TokenizerNotFound as exc:
        raise ModelLoadError(
            f"{exc}; `rwkv-cpp --setup` fetches it when it installs a model that needs it, "
            "or pass --tokenizer FILE"
        ) from exc
    except InvalidArgument as exc:
        if exc.option == "gpu_offload":
            raise ModelLoadError(
                f"--gpu {gpu}: the engine {_engine_name()} has no GPU backend; leave out --gpu, "
                "or set RWKV_CPP_LIB to an rwkv.cpp library built with one"
            ) from exc
        if exc.option == "tokenizer":
            raise ModelLoadError(
                f"{choice.path}: {cli_terms(str(exc))}; --tokenizer takes world, 20B, bytes, or "
                "a tokenizer file (.json for Hugging Face, .txt for a World vocabulary)"
            ) from exc
        raise


def _engine_name() -> str:
    try:
        from ..engine import default_library

        return default_library().name
    except Exception:  # noqa: BLE001 - only for a message
        return "in use"
