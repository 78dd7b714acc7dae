"""The `rwkv-cpp` command (Typer): flags and subcommands, nothing else.

Bare `rwkv-cpp` chats with the last installed model; the original tool's flags (`--setup`,
`--dragon`, `--modelPath`, `--threads`, `--gpu`, `--size`) keep working beside the
subcommands. Heavy modules (numpy, the engine, httpx) are imported inside the commands, so
`rwkv-cpp --help` starts fast.
"""
# Typer evaluates these annotations at run time, and Python 3.9 cannot evaluate `X | None`:
# ruff: noqa: UP045, UP007

from __future__ import annotations

import os
import sys
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional, Union

import typer

from ..errors import RWKVError, UserError
from ..version import __version__

app = typer.Typer(
    name="rwkv-cpp",
    help=(
        "Run RWKV language models locally.\n\n"
        "[bold]rwkv-cpp --setup[/] picks and downloads a model, [bold]rwkv-cpp[/] chats with it, "
        "[bold]rwkv-cpp --dragon --size 100[/] benchmarks it (offline, even with nothing "
        "installed)."
    ),
    epilog=(
        "Environment: RWKV_HOME (models, default ~/.rwkv) · RWKV_DOWNLOAD_BASE (mirror) · "
        "RWKV_CATALOG (catalog file) · RWKV_OFFLINE=1 (no look-ups) · RWKV_DEBUG=1 (tracebacks) "
        "· RWKV_CPP_LIB (an rwkv.cpp librwkv.so instead of the built-in engine)"
    ),
    add_completion=False,
    rich_markup_mode="rich",
    context_settings={"help_option_names": ["-h", "--help"]},
    pretty_exceptions_enable=False,
)


class CLIError(UserError):
    """An error with a message a user can act on; printed as one line."""


@dataclass
class RootOptions:
    """Options given before the subcommand; subcommands fall back to them."""

    values: dict[str, Any] = field(default_factory=dict)

    def pick(self, name: str, given: Any, default: Any = None) -> Any:
        if given is not None:
            return given
        value = self.values.get(name)
        return default if value is None else value


def _debug_enabled() -> bool:
    return "--debug" in sys.argv[1:] or os.environ.get("RWKV_DEBUG", "") not in ("", "0")


def _root(ctx: typer.Context) -> RootOptions:
    obj = ctx.find_root().obj
    return obj if isinstance(obj, RootOptions) else RootOptions()


def _console(stderr: bool = False):
    from rich.console import Console

    return Console(stderr=stderr, highlight=False)


def _version_callback(value: bool) -> None:
    if value:
        typer.echo(f"rwkv-cpp {__version__}")
        raise typer.Exit()


# ---- shared option declarations ----

ThreadsOpt = typer.Option(None, "--threads", "-t", help="Engine threads (default: physical cores).")
GpuOpt = typer.Option(
    None, "--gpu", help="Layers to offload to a GPU: N or N% (needs an engine with a GPU backend)."
)
ModelPathOpt = typer.Option(
    None, "--model-path", "--modelPath", help="A model file to use instead of an installed one."
)
ModelNameOpt = typer.Option(
    None, "--model", "-m", help="An installed model by name (see `rwkv-cpp models`)."
)
TemperatureOpt = typer.Option(None, "--temperature", help="Sampling temperature (0 = greedy).")
TopPOpt = typer.Option(None, "--top-p", help="Nucleus sampling threshold, in (0, 1].")
MaxTokensOpt = typer.Option(None, "--max-tokens", help="Most tokens per reply.")
JsonOpt = typer.Option(None, "--json", help="Print only the JSON result.")
DebugOpt = typer.Option(False, "--debug", help="Show tracebacks of errors.")
StopOpt = typer.Option(None, "--stop", help="Stop string (repeatable).")
SeedOpt = typer.Option(None, "--seed", help="Seed for reproducible sampling.")
PromptArg = typer.Argument(..., help="The text to continue ('-' reads standard input).")
CheckpointArg = typer.Argument(
    ..., help="A .pth or .safetensors checkpoint, or a Hugging Face checkpoint folder (RWKV-6/7)."
)
ModelOutArg = typer.Argument(..., help="The rwkv.cpp model file to write.")
QuantizeSrcArg = typer.Argument(..., help="An FP32 or FP16 rwkv.cpp model file.")
QuantizeDestArg = typer.Argument(..., help="The quantized file to write.")
QuantTypeArg = typer.Argument(..., help="Q4_0, Q4_1, Q5_0, Q5_1 or Q8_0.")
TextFileArg = typer.Argument(..., help="A UTF-8 text file.")


def _parse_gpu(value: Optional[str]) -> Union[int, str]:
    if value is None or value == "":
        return 0
    text = value.strip()
    if text.endswith("%"):
        number = text[:-1]
        if number.replace(".", "", 1).isdigit() and 0 <= float(number) <= 100:
            return text
    elif text.isdigit():
        return int(text)
    raise CLIError(f"--gpu takes a layer count N or a percentage N%, not {value!r}")


def _model_options(ctx: typer.Context, model_path, model, threads, gpu) -> dict[str, Any]:
    root = _root(ctx)
    return {
        "model_path": root.pick("model_path", model_path),
        "model_name": root.pick("model", model),
        "threads": root.pick("threads", threads),
        "gpu": _parse_gpu(root.pick("gpu", gpu)),
    }


def _sampling(ctx: typer.Context, temperature, top_p, max_tokens, default_max: int) -> dict:
    root = _root(ctx)
    return {
        "temperature": root.pick("temperature", temperature, 1.0),
        "top_p": root.pick("top_p", top_p, 0.7),
        "max_tokens": root.pick("max_tokens", max_tokens, default_max),
    }


# ---- the root: original flags ----


@app.callback(invoke_without_command=True)
def root(
    ctx: typer.Context,
    setup: bool = typer.Option(False, "--setup", help="Pick, download and install a model."),
    dragon: bool = typer.Option(
        False, "--dragon", help="Benchmark with the dragon prompt (same as `bench`)."
    ),
    size: Optional[int] = typer.Option(
        None, "--size", "-n", help="Tokens to generate with --dragon (default 100)."
    ),
    model: Optional[str] = typer.Option(
        None, "--model", "-m",
        help="Installed model to use, or with --setup the catalog model to install.",
    ),
    yes: bool = typer.Option(False, "--yes", "-y", help="With --setup: no questions."),
    quant_type: Optional[str] = typer.Option(
        None, "--type", help="With --setup: quantization for .pth models (e.g. Q8_0, Q5_1)."
    ),
    base_url: Optional[str] = typer.Option(
        None, "--base-url", help="With --setup: download mirror (default $RWKV_DOWNLOAD_BASE "
        "or https://huggingface.co).",
    ),
    model_path: Optional[Path] = ModelPathOpt,
    threads: Optional[int] = ThreadsOpt,
    gpu: Optional[str] = GpuOpt,
    temperature: Optional[float] = TemperatureOpt,
    top_p: Optional[float] = TopPOpt,
    max_tokens: Optional[int] = MaxTokensOpt,
    json_output: Optional[bool] = JsonOpt,
    debug: bool = DebugOpt,
    version: bool = typer.Option(
        False, "--version", "-V", callback=_version_callback, is_eager=True,
        help="Show the version and exit.",
    ),
) -> None:
    """Run RWKV language models locally: chat, complete, benchmark, install."""
    ctx.obj = RootOptions(
        {
            "model": model,
            "model_path": model_path,
            "threads": threads,
            "gpu": gpu,
            "temperature": temperature,
            "top_p": top_p,
            "max_tokens": max_tokens,
            "json": json_output,
            "size": size,
            "yes": yes,
            "type": quant_type,
            "base_url": base_url,
        }
    )
    if ctx.invoked_subcommand is not None:
        return
    if setup:
        ctx.invoke(setup_command, ctx=ctx, model=model, yes=yes, quant_type=quant_type,
                   base_url=base_url, list_models=False, refresh=False)
    elif dragon:
        ctx.invoke(bench_command, ctx=ctx, size=size, json_output=json_output,
                   model_path=model_path, model=model, threads=threads, gpu=gpu)
    else:
        ctx.invoke(chat_command, ctx=ctx, model_path=model_path, model=model, threads=threads,
                   gpu=gpu, temperature=temperature, top_p=top_p, max_tokens=max_tokens)


# ---- subcommands ----


@app.command("chat")
def chat_command(
    ctx: typer.Context,
    model_path: Optional[Path] = ModelPathOpt,
    model: Optional[str] = ModelNameOpt,
    threads: Optional[int] = ThreadsOpt,
    gpu: Optional[str] = GpuOpt,
    temperature: Optional[float] = TemperatureOpt,
    top_p: Optional[float] = TopPOpt,
    max_tokens: Optional[int] = MaxTokensOpt,
) -> None:
    """Chat in the terminal (the default command). /help lists the chat commands."""
    from .chat import run_chat
    from .home import last_model

    options = _model_options(ctx, model_path, model, threads, gpu)
    console = _console()
    if options["model_path"] is None and options["model_name"] is None and last_model() is None:
        _offer_setup(console)
    run_chat(console, **options, **_sampling(ctx, temperature, top_p, max_tokens, 250))


def _offer_setup(console) -> None:
    """First run in a terminal: offer the setup instead of an error about a missing model."""
    if not (sys.stdin.isatty() and sys.stdout.isatty()):
        return  # run_chat raises the one-line "no model installed" error
    import questionary

    from .setup_wizard import run_setup

    console.print("No model is installed yet.")
    if questionary.confirm("Pick and download one now?", default=True).ask():
        run_setup(console)


@app.command("complete")
def complete_command(
    ctx: typer.Context,
    prompt: str = PromptArg,
    model_path: Optional[Path] = ModelPathOpt,
    model: Optional[str] = ModelNameOpt,
    threads: Optional[int] = ThreadsOpt,
    gpu: Optional[str] = GpuOpt,
    temperature: Optional[float] = TemperatureOpt,
    top_p: Optional[float] = TopPOpt,
    max_tokens: Optional[int] = MaxTokensOpt,
    stop: Optional[list[str]] = StopOpt,
    seed: Optional[int] = SeedOpt,
    json_output: Optional[bool] = JsonOpt,
) -> None:
    """One completion to standard output (--json: the full result with usage and perf)."""
    from .chat import run_complete

    if prompt == "-":
        prompt = sys.stdin.read()
    options = _model_options(ctx, model_path, model, threads, gpu)
    run_complete(
        _console(), prompt, **options, **_sampling(ctx, temperature, top_p, max_tokens, 64),
        stop=stop or None, seed=seed, json_output=bool(_root(ctx).pick("json", json_output)),
    )


@app.command("bench")
def bench_command(
    ctx: typer.Context,
    size: Optional[int] = typer.Option(None, "--size", "-n", help="Tokens to generate."),
    json_output: Optional[bool] = JsonOpt,
    model_path: Optional[Path] = ModelPathOpt,
    model: Optional[str] = ModelNameOpt,
    threads: Optional[int] = ThreadsOpt,
    gpu: Optional[str] = GpuOpt,
) -> None:
    """The dragon benchmark (same as --dragon): streamed text, then one JSON line of perf.

    With no model installed it runs on a random-weight model of the 169M shape, generated
    once into RWKV_HOME (speed does not depend on the weight values)."""
    from .bench import run_dragon

    root = _root(ctx)
    options = _model_options(ctx, model_path, model, threads, gpu)
    n = root.pick("size", size, 100)
    if n < 1:
        raise CLIError(f"--size must be at least 1, got {n}")
    run_dragon(_console(), size=n, json_output=bool(root.pick("json", json_output)), **options)


@app.command("perplexity")
def perplexity_command(
    ctx: typer.Context,
    text_file: Path = TextFileArg,
    model_path: Optional[Path] = ModelPathOpt,
    model: Optional[str] = ModelNameOpt,
    threads: Optional[int] = ThreadsOpt,
    gpu: Optional[str] = GpuOpt,
    ctx_size: int = typer.Option(512, "--ctx", help="Tokens per chunk (llama.cpp's -c)."),
    chunks: Optional[int] = typer.Option(
        None, "--chunks", help="At most this many chunks from the start (llama.cpp's --chunks)."
    ),
    reference: Optional[str] = typer.Option(
        None, "--reference",
        help="Another file of the same model (path or installed name): mean KL divergence and "
        "top-1 agreement against it.",
    ),
) -> None:
    """Perplexity on a text as llama.cpp computes it (chunks of --ctx tokens from a fresh
    state, the second half of each scored), then one JSON line."""
    from .evaluate import run_perplexity

    if ctx_size < 2:
        raise CLIError(f"--ctx must be at least 2, got {ctx_size}")
    options = _model_options(ctx, model_path, model, threads, gpu)
    run_perplexity(_console(), text_file, **options, ctx=ctx_size, reference=reference,
                   max_chunks=chunks)


@app.command("models")
def models_command(
    json_output: Optional[bool] = JsonOpt,
) -> None:
    """Installed models: name, architecture, type, size, path."""
    from .model_files import show_installed

    show_installed(_console(), json_output=bool(json_output))


@app.command("setup")
def setup_command(
    ctx: typer.Context,
    model: Optional[str] = typer.Option(None, "--model", "-m", help="Catalog model to install."),
    yes: bool = typer.Option(False, "--yes", "-y", help="No questions (for scripts)."),
    quant_type: Optional[str] = typer.Option(
        None, "--type", help="Quantization for .pth models: FP16, Q8_0, Q5_1, Q5_0, Q4_1, Q4_0."
    ),
    base_url: Optional[str] = typer.Option(None, "--base-url", help="Download mirror."),
    list_models: bool = typer.Option(False, "--list", help="List the catalog and exit."),
    refresh: bool = typer.Option(
        False, "--refresh", help="With --list: also ask Hugging Face for newer checkpoints."
    ),
) -> None:
    """Pick a model from the catalog, download it (resumable), convert and install it."""
    from .setup_wizard import run_setup, show_catalog

    root = _root(ctx)
    if list_models:
        show_catalog(_console(), refresh=refresh, base_url=base_url or root.values.get("base_url"))
        return
    run_setup(
        _console(),
        name=model or root.values.get("model"),
        yes=yes or bool(root.values.get("yes")),
        data_type=quant_type or root.values.get("type"),
        base_url=base_url or root.values.get("base_url"),
    )


@app.command("convert")
def convert_command(
    src: Path = CheckpointArg,
    dest: Path = ModelOutArg,
    data_type: str = typer.Option("FP16", "--type", help="FP16 or FP32."),
) -> None:
    """Convert a checkpoint (.pth, .safetensors, Hugging Face folder) to an rwkv.cpp model file
    (no torch needed)."""
    from .model_files import convert_with_progress

    convert_with_progress(_console(), src, dest, data_type.upper())


@app.command("quantize")
def quantize_command(
    src: Path = QuantizeSrcArg,
    dest: Path = QuantizeDestArg,
    type_name: str = QuantTypeArg,
) -> None:
    """Quantize an rwkv.cpp model file."""
    from .model_files import quantize_with_progress

    quantize_with_progress(_console(), src, dest, type_name.upper())


# ---- errors and the entry point ----


def _user_message(exc: BaseException) -> Optional[str]:
    """The one-line message for errors a user can act on; None for programming errors."""
    if isinstance(exc, RWKVError):  # ours: every error the package raises on purpose
        return str(exc)
    if isinstance(exc, FileNotFoundError):
        return str(exc) if not exc.filename else f"file not found: {exc.filename}"
    if isinstance(exc, OSError) and exc.errno == 28:
        return f"disk full: {exc.filename or ''} {exc.strerror}".replace("  ", " ")
    if isinstance(exc, OSError):  # permissions, I/O errors: the system's message names the file
        return str(exc)
    return None


def main(argv: Optional[list[str]] = None) -> None:
    """Console-script entry point: errors become one line on stderr (tracebacks with --debug)."""
    debug = _debug_enabled() or (argv is not None and "--debug" in argv)
    try:
        app(args=argv, prog_name="rwkv-cpp")
    except SystemExit:
        raise
    except KeyboardInterrupt:
        _console(stderr=True).print("\n[bold red]interrupted[/]")
        sys.exit(130)
    except Exception as exc:  # noqa: BLE001 - the one place errors meet the user
        if debug:
            traceback.print_exc()
        message = _user_message(exc)
        if message is None:
            message = f"{type(exc).__name__}: {exc} (run with --debug for the traceback)"
        _console(stderr=True).print(f"[bold red]error:[/] {message}", markup=True,
                                    soft_wrap=True, highlight=False)
        sys.exit(1)
