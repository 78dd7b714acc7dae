"""`rwkv-cpp perplexity`: a model's perplexity on a text file, with a progress bar (stderr)
and one JSON line of results (stdout). The computation is `RWKV.perplexity`."""

from __future__ import annotations

import json
import os
from pathlib import Path

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

from . import home
from .load import load_model


def _reference_choice(reference: str) -> home.ModelChoice:
    """A model file path, else the name of an installed model."""
    path = Path(reference).expanduser()
    if path.is_file():
        return home.resolve_model(model_path=path)
    return home.resolve_model(model_name=reference)


def run_perplexity(
    console: Console,
    text_file: Path,
    model_path: Path | None = None,
    model_name: str | None = None,
    threads: int | None = None,
    gpu: int | str = 0,
    ctx: int = 512,
    reference: str | None = None,
    max_chunks: int | None = None,
    tokenizer: str | None = None,
) -> dict:
    text_file = Path(text_file)
    if not text_file.is_file():
        raise FileNotFoundError(f"text file not found: {text_file}")
    text = text_file.read_text(encoding="utf-8", errors="replace")
    choice = home.resolve_model(model_path, model_name)
    ref_choice = _reference_choice(reference) if reference else None
    err = Console(stderr=True, highlight=False)
    model = load_model(err, choice, threads, gpu, quiet=True, tokenizer=tokenizer)
    data_type, head_type, used_threads = model.data_type, model.head_type, model.threads
    ref_model = None
    try:
        if ref_choice is not None:
            ref_model = load_model(err, ref_choice, model.threads, gpu, quiet=True, tokenizer=tokenizer)
        columns = (TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
                   TextColumn("chunks · ppl {task.fields[ppl]}"), TimeRemainingColumn())
        with Progress(*columns, console=err, transient=True,
                      disable=not err.is_terminal or os.environ.get("CI") == "true") as bar:
            task = bar.add_task(f"Perplexity of {choice.name}", total=None, ppl="-")

            def progress(done: int, total: int, ppl: float) -> None:
                bar.update(task, completed=done, total=total, ppl=f"{ppl:.4f}")

            result = model.perplexity(text, ctx=ctx, reference=ref_model, progress=progress,
                                      max_chunks=max_chunks)
    finally:
        if ref_model is not None:
            ref_model.free()
        model.free()
    payload = {"model": choice.name, "modelPath": str(choice.path), "dataType": data_type,
               "headType": head_type, "textFile": str(text_file)}
    if ref_choice is not None:
        payload.update(reference=ref_choice.name, referencePath=str(ref_choice.path))
    payload.update(result.to_dict(), threads=used_threads)
    print(json.dumps(payload, ensure_ascii=False), flush=True)
    return payload
