"""The model-file commands: `rwkv-cpp models` (installed models), `convert` (a checkpoint or a
Hugging Face folder to an rwkv.cpp file) and `quantize`, with progress bars. The setup wizard uses the same conversion
steps when it installs a `.pth` checkpoint."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Callable

from rich.console import Console
from rich.progress import BarColumn, Progress, TaskProgressColumn, TextColumn, TimeElapsedColumn
from rich.table import Table

from ..errors import FileMissing
from . import home
from .download import human_bytes


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


def convert_with_progress(console: Console, src: Path, dest: Path, data_type: str = "FP16") -> Path:
    from ..formats.convert import convert

    if not Path(src).exists():  # a file, or a Hugging Face checkpoint folder
        raise FileMissing(f"checkpoint not found: {src}")
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


def quantize_with_progress(console: Console, src: Path, dest: Path, type_name: str) -> Path:
    from ..formats.convert import quantize

    if not Path(src).is_file():
        raise FileMissing(f"model file not found: {src}")
    with _work_progress(console) as progress:
        task = progress.add_task(f"Quantizing to {type_name}", total=None)
        quantize(src, dest, type_name, progress=_progress_callback(progress, task))
    _report_file(console, "Wrote", dest, src)
    return Path(dest)


def _report_file(console: Console, verb: str, dest: Path, src: Path) -> None:
    before, after = Path(src).stat().st_size, Path(dest).stat().st_size
    console.print(
        f"{verb} {dest} ({human_bytes(after)}; source {human_bytes(before)})", highlight=False
    )


# ---- listings ----


def show_installed(console: Console, json_output: bool = False) -> None:
    registry = home.load_registry()
    models = list(registry.models.values())
    if json_output:
        rows = [
            {
                "name": m.name, "arch": m.arch, "dataType": m.data_type, "fileSize": m.file_size,
                "path": m.path, "present": m.exists, "last": m.name == registry.last,
            }
            for m in models
        ]
        print(json.dumps(rows))
        return
    if not models:
        console.print(
            f"No models installed in {home.rwkv_home()}. Run [bold]rwkv-cpp --setup[/] to add one."
        )
        return
    table = Table(title=f"Installed models ({home.rwkv_home()})", title_justify="left")
    for column, justify in (("name", "left"), ("arch", "center"), ("type", "center"),
                            ("size", "right"), ("path", "left")):
        table.add_column(column, justify=justify)  # type: ignore[arg-type]
    for m in models:
        name = m.name + (" [bold green]*[/]" if m.name == registry.last else "")
        path = m.path if m.exists else f"[red]{m.path} (missing)[/]"
        table.add_row(name, f"v{m.arch}" if m.arch else "?", m.data_type or "?",
                      human_bytes(m.file_size), path)
    console.print(table)
    console.print("[bold green]*[/] the model `rwkv-cpp` chats with (the last installed)")
