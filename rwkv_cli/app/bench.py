"""`rwkv-cpp --dragon`: the original tool's benchmark.

The dragon prompt, N completion tokens streamed, then one JSON line: the perf object's
camelCase keys, the usage counts, and which model, engine and thread count produced them. With
no model installed it runs on a random-weight model of the 0.1B/169M shape (12 layers x 768),
generated once into RWKV_HOME: decoding speed does not depend on the weight values, so the
benchmark works on a fresh machine without a download (the JSON says `"synthetic": true`).
"""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path
from typing import Any

from rich.console import Console

from . import home

DRAGON_PROMPT = (
    "In a shocking finding, scientist discovered a herd of dragons living in a remote, "
    "previously unexplored valley, in Tibet. Even more surprising to the researchers was the "
    "fact that the dragons spoke perfect Chinese."
)

# The synthetic model: RWKV-7 at the 0.1B shape (the v4 169M model has the same 12 x 768
# body); the World vocabulary needs no tokenizer file, so it works offline. Q8_0, the type
# most users pick for small models.
# Not a prefix of the dragon prompt, so the timed run never hits the state cache.
WARMUP_PROMPT = "\n"

SYNTHETIC_SHAPE = {"arch": "7", "n_layer": 12, "n_embed": 768, "n_vocab": 65536}
SYNTHETIC_TYPE = "Q8_0"
SYNTHETIC_NAME = "synthetic-rwkv7-0.1b-shape"
SYNTHETIC_SEED = 0


def synthetic_model_path() -> Path:
    return home.synthetic_dir() / f"{SYNTHETIC_NAME}-{SYNTHETIC_TYPE}.bin"


def synthetic_model_size() -> int:
    from ..formats.synthetic import random_model_size

    return random_model_size(data_type=SYNTHETIC_TYPE, **SYNTHETIC_SHAPE)


def ensure_synthetic_model(console: Console | None = None) -> Path:
    """The synthetic benchmark model, written (once) if it is not in RWKV_HOME yet."""
    from ..formats.synthetic import write_random_model
    from .download import check_free_space, human_bytes

    path = synthetic_model_path()
    if path.is_file():
        return path
    home.make_dir(path.parent)
    size = synthetic_model_size()
    check_free_space(path.parent, size)
    tmp = path.with_name(path.name + ".tmp")
    note = (
        f"No model installed: writing a random-weight benchmark model of the 0.1B shape "
        f"(12 x 768, {SYNTHETIC_TYPE}, {human_bytes(size)}) into {path.parent}, once; "
        f"`rwkv-cpp rm {path.stem}` removes it"
    )
    # Said before the wait (on stderr, so that --json output stays one line).
    Console(stderr=True, highlight=False).print(note, soft_wrap=True)
    status = console.status("Writing the benchmark model...") if console is not None else None
    try:
        if status is not None:
            status.start()
        write_random_model(tmp, data_type=SYNTHETIC_TYPE, seed=SYNTHETIC_SEED, **SYNTHETIC_SHAPE)
        os.replace(tmp, path)
    except OSError as exc:
        error = home.not_writable(exc, path.parent)
        if error is not None:
            raise error from exc
        raise
    finally:
        if status is not None:
            status.stop()
        if tmp.exists():
            tmp.unlink()
    return path


def _choose(model_path: Path | None, model_name: str | None,
            console: Console | None) -> home.ModelChoice:
    if model_path is not None or model_name is not None:
        return home.resolve_model(model_path, model_name)
    if home.default_model() is not None or home.last_model() is not None:
        return home.resolve_model()  # the default model (or why it cannot run)
    path = ensure_synthetic_model(console)
    return home.ModelChoice(name=path.stem, path=path, synthetic=True)


def dragon(
    model_path: Path | None = None,
    model_name: str | None = None,
    size: int = 100,
    threads: int | None = None,
    gpu: int | str = 0,
    stream=None,
    console: Console | None = None,
    on_loaded=None,
    tokenizer: str | None = None,
) -> dict[str, Any]:
    """Run the benchmark; returns the JSON object. `stream(text)` receives the completion;
    `on_loaded()` is called once the model is loaded, before the prompt is evaluated."""
    from .load import load_model

    choice = _choose(model_path, model_name, console)
    quiet = console is None
    model = load_model(console or Console(stderr=True), choice, threads, gpu, quiet=quiet,
                       tokenizer=tokenizer)
    try:
        # One untimed token first: the weights are memory-mapped, and the first pass over them
        # pays for page faults (or disk reads), which is load time, not decoding speed.
        started = time.perf_counter()
        model.completion(WARMUP_PROMPT, max_tokens=1, temperature=0)
        warmup_ms = (time.perf_counter() - started) * 1000.0
        if on_loaded is not None:
            on_loaded()
        result = model.completion(
            DRAGON_PROMPT,
            max_tokens=size,
            temperature=1.0,
            top_p=0.7,
            seed=0,
            stream_callback=(lambda piece, _so_far: stream(piece)) if stream else None,
        )
        report: dict[str, Any] = {
            "model": choice.name,
            "modelPath": str(choice.path),
            "synthetic": choice.synthetic,
            "arch": model.arch,
            "dataType": model.data_type,
            "headType": model.head_type,
            "threads": model.threads,
            "engine": model.engine,
            "size": size,
        }
        report.update(result.usage.to_dict())
        report.update(result.perf.to_dict())
        report["finishReason"] = result.finish_reason
        report["warmupTime"] = warmup_ms
        return report
    finally:
        model.free()


def run_dragon(
    console: Console,
    size: int = 100,
    json_output: bool = False,
    model_path: Path | None = None,
    model_name: str | None = None,
    threads: int | None = None,
    gpu: int | str = 0,
    tokenizer: str | None = None,
) -> dict[str, Any]:
    def write(text: str) -> None:
        sys.stdout.write(text)
        sys.stdout.flush()

    def show_prompt() -> None:
        console.print(f"[bold]{DRAGON_PROMPT}[/]", end="", soft_wrap=True)

    quiet = json_output
    report = dragon(model_path, model_name, size, threads, gpu,
                    stream=None if quiet else write, console=None if quiet else console,
                    on_loaded=None if quiet else show_prompt, tokenizer=tokenizer)
    if not json_output:
        write("\n\n")
    print(json.dumps(report), flush=True)
    return report
