"""The model-file commands: `rwkv-cpp models` (installed models), `rm`, `default`, `convert`
(a checkpoint or a Hugging Face checkpoint folder to an rwkv.cpp file) and `quantize`, with
progress bars. The setup wizard uses the same conversion steps when it installs a `.pth`
checkpoint.

Everything a command can check is checked before its progress bar appears: the type, the
source, and the destination (an existing file is replaced only with `--force`, and never when
it is the source itself).
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Callable

from rich.console import Console
from rich.progress import BarColumn, Progress, TaskProgressColumn, TextColumn, TimeElapsedColumn

from ..errors import FileMissing, NotAFile, UserError
from . import home
from .download import human_bytes
from .tables import print_table


class DestinationExists(UserError, FileExistsError):
    """The file a command would write exists already, and --force was not given."""


def _work_progress(console: Console) -> Progress:
    return Progress(
        TextColumn("[bold blue]{task.description}"),
        BarColumn(),
        TaskProgressColumn(),
        TimeElapsedColumn(),
        console=console,
    )


def _progress_callback(progress: Progress, task) -> Callable[[int, int], None]:
    def update(done: int, total: int) -> None:
        progress.update(task, completed=done, total=total or None)

    return update


def _check_paths(src: Path, dest: Path, force: bool, what: str, folder_ok: bool = False) -> None:
    from ..formats.convert import refuse_same_file
    from ..formats.hf import is_hf_checkpoint

    if Path(src).is_dir() and not (folder_ok and is_hf_checkpoint(src)):
        hint = " or a Hugging Face checkpoint folder (config.json and *.safetensors)" if folder_ok else ""
        raise NotAFile(f"{src} is a directory; give the {what} file{hint}")
    if not Path(src).exists():
        raise FileMissing(f"{what} not found: {src}")
    refuse_same_file(src, dest)  # even with --force: the source would be lost
    if Path(dest).is_dir():
        raise NotAFile(f"{dest} is a directory; give the name of the file to write")
    if Path(dest).exists() and not force:
        raise DestinationExists(f"{dest} exists already; pass --force to overwrite it")


def convert_with_progress(console: Console, src: Path, dest: Path, data_type: str = "FP16",
                          force: bool = False) -> Path:
    from ..formats.convert import check_output_type, convert

    data_type = check_output_type(data_type)
    _check_paths(src, dest, force, "checkpoint", folder_ok=True)
    with _work_progress(console) as progress:
        task = progress.add_task(f"Converting to {data_type}", total=None)
        info = convert(src, dest, data_type=data_type,
                       progress=_progress_callback(progress, task))
    if isinstance(info, dict) and info.get("arch_name"):
        console.print(
            f"{info['arch_name']}: {info.get('n_layer')} layers x {info.get('n_embed')}, "
            f"vocabulary {info.get('n_vocab')}"
        )
    _report_file(console, "Wrote", dest, src)
    return Path(dest)


def quantize_with_progress(console: Console, src: Path, dest: Path, type_name: str,
                           force: bool = False, head_type: str | None = None) -> Path:
    from ..formats.convert import check_head_type, check_quantize, quantize

    _check_paths(src, dest, force, "model file")
    type_name = check_quantize(src, type_name, head_type)
    head_type = check_head_type(head_type)
    with _work_progress(console) as progress:
        what = f"{type_name}, head {head_type}" if head_type else type_name
        task = progress.add_task(f"Quantizing to {what}", total=None)
        quantize(src, dest, type_name, progress=_progress_callback(progress, task),
                 head_type=head_type)
    _report_file(console, "Wrote", dest, src)
    return Path(dest)


def _report_file(console: Console, verb: str, dest: Path, src: Path) -> None:
    src = Path(src)
    # a Hugging Face checkpoint folder: its weights
    before = sum(f.stat().st_size for f in src.glob("*.safetensors")) if src.is_dir() else src.stat().st_size
    after = Path(dest).stat().st_size
    console.print(
        f"{verb} {dest} ({human_bytes(after)}; source {human_bytes(before)})", highlight=False
    )


# ---- listings ----


def synthetic_models() -> list[Path]:
    """The random-weight benchmark models written into the home (`--dragon`)."""
    folder = home.synthetic_dir()
    return sorted(folder.glob("*.bin")) if folder.is_dir() else []


def file_head_type(path: str | Path) -> str:
    """The head's tensor type read from a model file ("" when it cannot be read)."""
    from ..formats import gguf, modelfile

    try:
        info = gguf.describe(path) if gguf.is_gguf(path) else modelfile.describe(path)
        return str(info.get("head_type", ""))
    except (modelfile.ModelFileError, gguf.GGUFError, OSError, ValueError):
        return ""


def _type_label(data_type: str, head_type: str) -> str:
    """The type column: the file's type, and the head's when it is quantized (rwkv.cpp's files
    keep it FP16; `rwkv-cpp quantize --head` and GGUF presets do not)."""
    if head_type and head_type not in ("FP16", "FP32", "BF16") and head_type != data_type:
        return f"{data_type or '?'}, head {head_type}"
    return data_type


def show_installed(console: Console, json_output: bool = False) -> None:
    registry = home.load_registry()
    models = list(registry.models.values())
    synthetic = synthetic_models()
    # records from before head types were kept: read it from the file
    heads = {m.name: m.head_type or (file_head_type(m.path) if m.exists else "") for m in models}
    synthetic_heads = {p: file_head_type(p) for p in synthetic}
    if json_output:
        rows = [
            {
                "name": m.name, "arch": m.arch, "dataType": m.data_type,
                "headType": heads[m.name], "fileSize": m.file_size,
                "path": m.path, "present": m.exists, "default": m.name == registry.last,
                "last": m.name == registry.last, "synthetic": False,
            }
            for m in models
        ]
        rows += [
            {"name": p.stem, "arch": "", "dataType": "", "headType": synthetic_heads[p],
             "fileSize": p.stat().st_size, "path": str(p), "present": True, "default": False,
             "last": False, "synthetic": True}
            for p in synthetic
        ]
        print(json.dumps(rows))
        return
    if not models and not synthetic:
        console.print(
            f"No models installed in {home.rwkv_home()}. Run [bold]rwkv-cpp --setup[/] to add one."
        )
        return
    rows = []
    for m in models:
        name = m.name + (" [bold green]*[/]" if m.name == registry.last else "")
        path = m.path if m.exists else f"[red]{m.path} (missing)[/]"
        rows.append([name, f"v{m.arch}" if m.arch else "?",
                     _type_label(m.data_type, heads[m.name]) or "?", human_bytes(m.file_size), path])
    for p in synthetic:
        rows.append([f"{p.stem} [dim](synthetic)[/]", "", "", human_bytes(p.stat().st_size),
                     str(p)])
    columns = [("name", "left"), ("arch", "center"), ("type", "center"), ("size", "right"),
               ("path", "left")]
    print_table(console, f"Installed models ({home.rwkv_home()})", columns, rows)
    if registry.last:
        console.print("* the default model (`rwkv-cpp` chats with it; change it with "
                      "`rwkv-cpp default NAME`)", highlight=False, markup=False)
    if synthetic:
        console.print("(synthetic): random weights, for `rwkv-cpp --dragon` only", markup=False,
                      highlight=False)


# ---- rm and default ----


def remove_model(console: Console, name: str, yes: bool = False, interactive: bool = False) -> None:
    """Delete an installed (or synthetic) model's file and forget it."""
    synthetic = {p.stem: p for p in synthetic_models()}
    registry = home.load_registry() if name not in synthetic else None
    if registry is not None and name not in registry.models:
        names = ", ".join(list(registry.models) + list(synthetic)) or "none"
        raise home.NoModelError(f"no installed model named {name!r} (installed: {names})")
    entry = registry.models[name] if registry is not None else None
    path = Path(entry.path) if entry is not None else synthetic[name]
    size = human_bytes(path.stat().st_size) if path.is_file() else "file already gone"
    if not yes:
        if not interactive:
            raise UserError(f"remove {name} ({path}, {size})? Pass --yes to remove without "
                            "asking (no terminal to ask in)")
        import questionary

        if not questionary.confirm(f"Remove {name} ({path}, {size})?", default=False).ask():
            console.print("Nothing removed.")
            return
    if path.is_file():
        try:
            os.unlink(path)
        except OSError as exc:
            error = home.not_writable(exc, path)
            if error is not None:
                raise error from exc
            raise
    if entry is None:
        console.print(f"Removed {name} ({path}).", highlight=False)
        return
    new_default = home.unregister_model(name)
    note = ""
    if registry.last == name:
        note = (f"; the default model is now {new_default}" if new_default
                else "; no model is installed now")
    console.print(f"Removed {name} ({path}){note}.", highlight=False)


def set_default(console: Console, name: str) -> None:
    registry = home.load_registry()
    entry = registry.models.get(name)
    if entry is None:
        synthetic = {p.stem for p in synthetic_models()}
        if name in synthetic:
            raise UserError(f"{name} is a random-weight benchmark model; it cannot chat. "
                            "`rwkv-cpp models` lists the installed ones")
        names = ", ".join(registry.models) or "none"
        raise home.NoModelError(f"no installed model named {name!r} (installed: {names})")
    if not entry.exists:
        raise home.NoModelError(
            f"{name}'s file is gone ({entry.path}): install it again with "
            f"`{entry.reinstall_command()}`"
        )
    home.set_last(name)
    console.print(f"{name} is now the default model.", highlight=False)
