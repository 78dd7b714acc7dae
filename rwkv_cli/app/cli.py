"""The `rwkv-cpp` command (Typer): flags and subcommands, nothing else.

Bare `rwkv-cpp` chats with the default model; the original tool's flags (`--setup`,
`--dragon`, `--modelPath`, `--threads`, `--gpu`, `--size`) keep working beside the
subcommands. Heavy modules (numpy, the engine, httpx) are imported inside the commands, so
`rwkv-cpp --help` starts fast.

Every error is one line on stderr, usage errors included (unknown command or option, a
missing argument, a value out of range: Typer runs with standalone_mode=False, and `main`
prints what it raises). An option that does nothing in the mode it was given with is an
error too, never silently ignored.
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

from ..errors import InvalidArgument, RWKVError, UserError
from ..version import __version__

# Chat and completion defaults, shown in --help.
CHAT_TEMPERATURE = 1.0
CHAT_TOP_P = 0.7
CHAT_MAX_TOKENS = 250
COMPLETE_MAX_TOKENS = 64
BENCH_SIZE = 100

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


# What each root option is for, to say so when it is given where it does nothing.
ROOT_OPTION_USE = {
    "size": ("--size", "the --dragon benchmark (its length in tokens)"),
    "json": ("--json", "complete, bench (--dragon), models and setup --list"),
    "yes": ("--yes", "--setup (and rm)"),
    "type": ("--type", "--setup (the quantization of a .pth model)"),
    "head_type": ("--head-type", "--setup (quantizing the head of a .pth model too)"),
    "base_url": ("--base-url", "--setup (the download mirror)"),
    "list_models": ("--list", "--setup"),
    "model_path": ("--model-path", "chat, complete, serve and --dragon"),
    "threads": ("--threads", "chat, complete, serve and --dragon"),
    "gpu": ("--gpu", "chat, complete, serve and --dragon"),
    "tokenizer": ("--tokenizer", "chat, complete, serve and --dragon"),
    "temperature": ("--temperature", "chat and complete"),
    "top_p": ("--top-p", "chat and complete"),
    "max_tokens": ("--max-tokens", "chat and complete"),
    "seed": ("--seed", "chat and complete"),
    "stop": ("--stop", "chat and complete"),
    "system": ("--system", "chat"),
    "think": ("--think", "chat"),
    "model": ("--model", "chat, complete, serve, --dragon and --setup"),
}
RUN_OPTIONS = {"model", "model_path", "threads", "gpu", "tokenizer"}
MODE_OPTIONS = {
    "chat": RUN_OPTIONS | {"temperature", "top_p", "max_tokens", "seed", "stop", "system", "think"},
    "complete": RUN_OPTIONS | {"temperature", "top_p", "max_tokens", "seed", "stop", "json"},
    "bench": RUN_OPTIONS | {"size", "json"},
    "serve": RUN_OPTIONS,
    "setup": {"model", "yes", "type", "head_type", "base_url", "list_models", "json"},
    "models": {"json"},
    "rm": {"yes"},
}
MODE_NAMES = {"chat": "when chat starts", "bench": "with --dragon", "setup": "with --setup"}


@dataclass
class RootOptions:
    """Options given before the subcommand; subcommands fall back to them."""

    values: dict[str, Any] = field(default_factory=dict)

    def pick(self, name: str, given: Any, default: Any = None) -> Any:
        if given is not None:
            return given
        value = self.values.get(name)
        return default if value is None else value

    def given(self) -> list[str]:
        return [name for name, value in self.values.items() if value not in (None, False, [])]


def _debug_enabled() -> bool:
    return "--debug" in sys.argv[1:] or os.environ.get("RWKV_DEBUG", "") not in ("", "0")


def _root(ctx: typer.Context) -> RootOptions:
    obj = ctx.find_root().obj
    return obj if isinstance(obj, RootOptions) else RootOptions()


def _only_used(ctx: typer.Context, mode: str) -> None:
    """Refuse root options that the mode would ignore."""
    allowed = MODE_OPTIONS.get(mode, set())
    for name in _root(ctx).given():
        if name in allowed or name not in ROOT_OPTION_USE:
            continue
        flag, use = ROOT_OPTION_USE[name]
        where = MODE_NAMES.get(mode, f"with {mode}")
        raise CLIError(f"{flag} does nothing {where}: it is for {use}")


def _console(stderr: bool = False):
    from rich.console import Console

    return Console(stderr=stderr, highlight=False)


def _version_callback(value: bool) -> None:
    if value:
        typer.echo(f"rwkv-cpp {__version__}")
        raise typer.Exit()


# ---- shared option declarations ----

ThreadsOpt = typer.Option(
    None, "--threads", "-t", min=1,
    help="Engine threads (default: the physical cores; capped at the CPUs available).",
)
GpuOpt = typer.Option(
    None, "--gpu", help="Layers to offload to a GPU: N or N% (needs an engine with a GPU backend)."
)
ModelPathOpt = typer.Option(
    None, "--model-path", "--modelPath", help="A model file to use instead of an installed one."
)
ModelNameOpt = typer.Option(
    None, "--model", "-m", help="An installed model by name (see `rwkv-cpp models`)."
)
TokenizerOpt = typer.Option(
    None, "--tokenizer",
    help="world, 20B, bytes or a tokenizer file (default: from the model's vocabulary size).",
)
TemperatureOpt = typer.Option(
    None, "--temperature", min=0.0,
    help=f"Sampling temperature; 0 = greedy. \\[default: {CHAT_TEMPERATURE}]",
)
TopPOpt = typer.Option(
    None, "--top-p", min=0.0, max=1.0,
    help=f"Nucleus sampling: sample from the tokens of this much probability, in (0, 1]. "
    f"\\[default: {CHAT_TOP_P}]",
)
ChatMaxTokensOpt = typer.Option(
    None, "--max-tokens", min=1, help=f"Most tokens per reply. \\[default: {CHAT_MAX_TOKENS}]"
)
CompleteMaxTokensOpt = typer.Option(
    None, "--max-tokens", min=0,
    help=f"Most tokens to generate (0: only read the prompt). \\[default: {COMPLETE_MAX_TOKENS}]",
)
JsonOpt = typer.Option(None, "--json", help="Print only the JSON result.")
DebugOpt = typer.Option(False, "--debug", help="Show tracebacks of errors.")
StopOpt = typer.Option(None, "--stop", help="Stop string (repeatable).")
SeedOpt = typer.Option(None, "--seed", help="Seed for reproducible sampling.")
SystemOpt = typer.Option(
    None, "--system", help="A system prompt, for the chat formats that have one (World, G1)."
)
ThinkOpt = typer.Option(
    None, "--think/--no-think",
    help="Reasoning models (RWKV-7 G series): think before answering. \\[default: no-think]",
)
ForceOpt = typer.Option(False, "--force", "-f", help="Overwrite DEST if it exists.")
PromptArg = typer.Argument(..., help="The text to continue ('-' reads standard input).")
CheckpointArg = typer.Argument(
    ..., help="A .pth or .safetensors checkpoint, or a Hugging Face checkpoint folder (RWKV-6/7)."
)
ModelOutArg = typer.Argument(..., help="The rwkv.cpp model file to write.")
QuantizeSrcArg = typer.Argument(..., help="An FP32 or FP16 rwkv.cpp model file.")
QuantizeDestArg = typer.Argument(..., help="The quantized file to write.")
QuantTypeArg = typer.Argument(..., help="Q4_0, Q4_1, Q5_0, Q5_1 or Q8_0.")
HeadTypeOpt = typer.Option(
    None, "--head", "--head-type",
    help="Quantize the head too, to this type (Q8_0, Q5_1, Q4_0...): faster decoding at a small "
         "cost in accuracy; the default keeps it FP16, as rwkv.cpp's quantizer does.",
)
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


def _model_options(ctx: typer.Context, model_path, model, threads, gpu,
                   tokenizer=None) -> dict[str, Any]:
    root = _root(ctx)
    return {
        "model_path": root.pick("model_path", model_path),
        "model_name": root.pick("model", model),
        "threads": root.pick("threads", threads),
        "gpu": _parse_gpu(root.pick("gpu", gpu)),
        "tokenizer": root.pick("tokenizer", tokenizer),
    }


def _sampling(ctx: typer.Context, temperature, top_p, max_tokens, default_max: int) -> dict:
    root = _root(ctx)
    chosen = {
        "temperature": root.pick("temperature", temperature, CHAT_TEMPERATURE),
        "top_p": root.pick("top_p", top_p, CHAT_TOP_P),
        "max_tokens": root.pick("max_tokens", max_tokens, default_max),
    }
    if chosen["top_p"] <= 0:  # the range check above lets 0 through
        raise CLIError(f"--top-p must be in (0, 1], not {chosen['top_p']}")
    return chosen


# ---- the root: original flags ----


@app.callback(invoke_without_command=True)
def root(
    ctx: typer.Context,
    setup: bool = typer.Option(False, "--setup", help="Pick, download and install a model."),
    dragon: bool = typer.Option(
        False, "--dragon", help="Benchmark with the dragon prompt (same as `bench`)."
    ),
    size: Optional[int] = typer.Option(
        None, "--size", "-n", min=1,
        help=f"Tokens to generate with --dragon. \\[default: {BENCH_SIZE}]",
    ),
    model: Optional[str] = typer.Option(
        None, "--model", "-m",
        help="Installed model to use, or with --setup the catalog model to install.",
    ),
    yes: bool = typer.Option(False, "--yes", "-y", help="With --setup: no questions."),
    quant_type: Optional[str] = typer.Option(
        None, "--type", help="With --setup: quantization for .pth models (e.g. Q8_0, Q5_1)."
    ),
    head_type: Optional[str] = typer.Option(
        None, "--head-type", help="With --setup: quantize the head of a .pth model too (e.g. "
        "Q8_0; faster decoding; default: FP16 as rwkv.cpp keeps it).",
    ),
    base_url: Optional[str] = typer.Option(
        None, "--base-url", help="With --setup: download mirror (default $RWKV_DOWNLOAD_BASE "
        "or https://huggingface.co).",
    ),
    list_models: bool = typer.Option(
        False, "--list", help="With --setup: list the models it can install, and exit."
    ),
    model_path: Optional[Path] = ModelPathOpt,
    threads: Optional[int] = ThreadsOpt,
    gpu: Optional[str] = GpuOpt,
    tokenizer: Optional[str] = TokenizerOpt,
    temperature: Optional[float] = TemperatureOpt,
    top_p: Optional[float] = TopPOpt,
    max_tokens: Optional[int] = ChatMaxTokensOpt,
    seed: Optional[int] = SeedOpt,
    stop: Optional[list[str]] = StopOpt,
    system: Optional[str] = SystemOpt,
    think: Optional[bool] = ThinkOpt,
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
            "model": model, "model_path": model_path, "threads": threads, "gpu": gpu,
            "tokenizer": tokenizer, "temperature": temperature, "top_p": top_p,
            "max_tokens": max_tokens, "seed": seed, "stop": stop, "system": system,
            "think": think, "json": json_output, "size": size, "yes": yes, "type": quant_type,
            "head_type": head_type, "base_url": base_url, "list_models": list_models,
        }
    )
    if ctx.invoked_subcommand is not None:
        if setup or dragon:
            flag = "--setup" if setup else "--dragon"
            raise CLIError(f"{flag} is a mode of its own; give it without the "
                           f"{ctx.invoked_subcommand} command")
        return
    if setup and dragon:
        raise CLIError("--setup and --dragon are separate modes; give one of them")
    if setup:
        ctx.invoke(setup_command, ctx=ctx, model=model, yes=yes, quant_type=quant_type,
                   head_type=head_type, base_url=base_url, list_models=list_models, refresh=False,
                   json_output=json_output)
    elif dragon:
        ctx.invoke(bench_command, ctx=ctx, size=size, json_output=json_output,
                   model_path=model_path, model=model, threads=threads, gpu=gpu,
                   tokenizer=tokenizer)
    else:
        ctx.invoke(chat_command, ctx=ctx, model_path=model_path, model=model, threads=threads,
                   gpu=gpu, tokenizer=tokenizer, temperature=temperature, top_p=top_p,
                   max_tokens=max_tokens, seed=seed, stop=stop, system=system, think=think)


# ---- subcommands ----


@app.command("chat")
def chat_command(
    ctx: typer.Context,
    model_path: Optional[Path] = ModelPathOpt,
    model: Optional[str] = ModelNameOpt,
    threads: Optional[int] = ThreadsOpt,
    gpu: Optional[str] = GpuOpt,
    tokenizer: Optional[str] = TokenizerOpt,
    temperature: Optional[float] = TemperatureOpt,
    top_p: Optional[float] = TopPOpt,
    max_tokens: Optional[int] = ChatMaxTokensOpt,
    seed: Optional[int] = SeedOpt,
    stop: Optional[list[str]] = StopOpt,
    system: Optional[str] = SystemOpt,
    think: Optional[bool] = ThinkOpt,
) -> None:
    """Chat in the terminal (the default command). /help lists the chat commands.

    Enter sends; a line ending in \\ continues on the next line; a paste of several lines is
    one message."""
    from .chat import run_chat
    from .home import last_model

    _only_used(ctx, "chat")
    root = _root(ctx)
    options = _model_options(ctx, model_path, model, threads, gpu, tokenizer)
    console = _console()
    if options["model_path"] is None and options["model_name"] is None and last_model() is None:
        _offer_setup(console)
    run_chat(
        console, **options, **_sampling(ctx, temperature, top_p, max_tokens, CHAT_MAX_TOKENS),
        seed=root.pick("seed", seed), stop=root.pick("stop", stop) or None,
        system=root.pick("system", system), think=bool(root.pick("think", think, False)),
    )


def _offer_setup(console) -> None:
    """First run in a terminal: offer the setup instead of an error about a missing model."""
    from .home import default_model

    if not (sys.stdin.isatty() and sys.stdout.isatty()) or default_model() is not None:
        return  # run_chat raises the one-line error ("no model installed", "its file is gone")
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
    tokenizer: Optional[str] = TokenizerOpt,
    temperature: Optional[float] = TemperatureOpt,
    top_p: Optional[float] = TopPOpt,
    max_tokens: Optional[int] = CompleteMaxTokensOpt,
    stop: Optional[list[str]] = StopOpt,
    seed: Optional[int] = SeedOpt,
    json_output: Optional[bool] = JsonOpt,
) -> None:
    """One completion to standard output (--json: the full result with usage and perf)."""
    from .chat import run_complete

    _only_used(ctx, "complete")
    root = _root(ctx)
    if prompt == "-":
        prompt = sys.stdin.read()
    if not prompt:
        raise CLIError("the prompt is empty: give the text to continue, or - to read it from "
                       "standard input")
    options = _model_options(ctx, model_path, model, threads, gpu, tokenizer)
    run_complete(
        _console(), prompt, **options,
        **_sampling(ctx, temperature, top_p, max_tokens, COMPLETE_MAX_TOKENS),
        stop=root.pick("stop", stop) or None, seed=root.pick("seed", seed),
        json_output=bool(root.pick("json", json_output)),
    )


@app.command("bench")
def bench_command(
    ctx: typer.Context,
    size: Optional[int] = typer.Option(
        None, "--size", "-n", min=1, help=f"Tokens to generate. \\[default: {BENCH_SIZE}]"
    ),
    json_output: Optional[bool] = JsonOpt,
    model_path: Optional[Path] = ModelPathOpt,
    model: Optional[str] = ModelNameOpt,
    threads: Optional[int] = ThreadsOpt,
    gpu: Optional[str] = GpuOpt,
    tokenizer: Optional[str] = TokenizerOpt,
) -> None:
    """The dragon benchmark (same as --dragon): streamed text, then one JSON line of perf.

    Runs on the default model. With none installed it runs on a random-weight RWKV-7 model
    of the 0.1B shape (12 layers x 768, vocabulary 65536, Q8_0, about 300 MB), written once
    into RWKV_HOME/synthetic (speed does not depend on the weight values; the JSON says
    "synthetic": true; `rwkv-cpp rm` removes it)."""
    from .bench import run_dragon

    _only_used(ctx, "bench")
    root = _root(ctx)
    options = _model_options(ctx, model_path, model, threads, gpu, tokenizer)
    n = root.pick("size", size, BENCH_SIZE)
    run_dragon(_console(), size=n, json_output=bool(root.pick("json", json_output)), **options)


@app.command("serve")
def serve_command(
    ctx: typer.Context,
    model_path: Optional[Path] = ModelPathOpt,
    model: Optional[str] = ModelNameOpt,
    host: str = typer.Option("127.0.0.1", "--host", help="Address to listen on."),
    port: int = typer.Option(
        8000, "--port", "-p", min=0, max=65535, help="Port to listen on (0: any free port)."
    ),
    parallel: int = typer.Option(
        8, "--parallel", min=1, help="Completions generated together (sequences in a batch)."
    ),
    queue: int = typer.Option(
        64, "--queue", min=0,
        help="Requests that may wait for a slot beyond --parallel; more get 503 + Retry-After.",
    ),
    api_key: Optional[str] = typer.Option(
        None, "--api-key", envvar="RWKV_API_KEY", show_envvar=True,
        help="Require `Authorization: Bearer KEY` (all but /health).",
    ),
    threads: Optional[int] = ThreadsOpt,
    gpu: Optional[str] = GpuOpt,
    tokenizer: Optional[str] = TokenizerOpt,
    grace: float = typer.Option(
        5.0, "--grace", min=0.0,
        help="On Ctrl-C / SIGTERM, seconds running completions get to finish before they are "
        "cut short.",
    ),
) -> None:
    """An OpenAI-compatible HTTP server: /v1/chat/completions, /v1/completions, /v1/models,
    /health, /metrics (Prometheus). Prints its URL once the model is loaded."""
    from .serve import run_server

    _only_used(ctx, "serve")
    options = _model_options(ctx, model_path, model, threads, gpu, tokenizer)
    run_server(_console(), **options, host=host, port=port, parallel=parallel, queue=queue,
               api_key=api_key, grace=grace)


@app.command("perplexity")
def perplexity_command(
    ctx: typer.Context,
    text_file: Path = TextFileArg,
    model_path: Optional[Path] = ModelPathOpt,
    model: Optional[str] = ModelNameOpt,
    threads: Optional[int] = ThreadsOpt,
    gpu: Optional[str] = GpuOpt,
    tokenizer: Optional[str] = TokenizerOpt,
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
    options = _model_options(ctx, model_path, model, threads, gpu, tokenizer)
    run_perplexity(_console(), text_file, **options, ctx=ctx_size, reference=reference,
                   max_chunks=chunks)


@app.command("models")
def models_command(
    ctx: typer.Context,
    json_output: Optional[bool] = JsonOpt,
) -> None:
    """Installed models: name, architecture, type, size, path; * marks the default."""
    from .model_files import show_installed

    _only_used(ctx, "models")
    show_installed(_console(), json_output=bool(_root(ctx).pick("json", json_output)))


@app.command("rm")
def rm_command(
    ctx: typer.Context,
    name: str = typer.Argument(..., help="The model's name (see `rwkv-cpp models`)."),
    yes: bool = typer.Option(False, "--yes", "-y", help="Remove without asking."),
) -> None:
    """Remove an installed model (its file and its entry), or the synthetic benchmark model."""
    from .model_files import remove_model

    _only_used(ctx, "rm")
    remove_model(_console(), name, yes=yes or bool(_root(ctx).values.get("yes")),
                 interactive=sys.stdin.isatty() and sys.stdout.isatty())


@app.command("default")
def default_command(
    ctx: typer.Context,
    name: str = typer.Argument(..., help="The model's name (see `rwkv-cpp models`)."),
) -> None:
    """Make an installed model the default one (the one `rwkv-cpp` chats with)."""
    from .model_files import set_default

    _only_used(ctx, "default")
    set_default(_console(), name)


@app.command("setup")
def setup_command(
    ctx: typer.Context,
    model: Optional[str] = typer.Option(None, "--model", "-m", help="Catalog model to install."),
    yes: bool = typer.Option(False, "--yes", "-y", help="No questions (for scripts)."),
    quant_type: Optional[str] = typer.Option(
        None, "--type", help="Quantization for .pth models: FP16, Q8_0, Q5_1, Q5_0, Q4_1, Q4_0."
    ),
    head_type: Optional[str] = typer.Option(
        None, "--head-type", help="Quantize the head of a .pth model too (Q8_0, Q5_1, Q4_0...): "
        "faster decoding; by default it stays FP16, as rwkv.cpp keeps it.",
    ),
    base_url: Optional[str] = typer.Option(None, "--base-url", help="Download mirror."),
    list_models: bool = typer.Option(
        False, "--list", help="List the models it can install (name, size, RAM, notes), and exit."
    ),
    refresh: bool = typer.Option(
        False, "--refresh", help="With --list: also ask Hugging Face for newer checkpoints."
    ),
    json_output: Optional[bool] = typer.Option(None, "--json", help="With --list: JSON."),
) -> None:
    """Pick a model from the catalog, download it (resumable), convert and install it."""
    from .setup_wizard import check_base_url, run_setup, show_catalog

    _only_used(ctx, "setup")
    root = _root(ctx)
    list_models = list_models or bool(root.values.get("list_models"))
    json_output = bool(root.pick("json", json_output))
    base_url = base_url or root.values.get("base_url")
    if list_models:
        for flag, value in (("--model", model or root.values.get("model")),
                            ("--type", quant_type or root.values.get("type")),
                            ("--head-type", head_type or root.values.get("head_type")),
                            ("--yes", yes or root.values.get("yes"))):
            if value:
                raise CLIError(f"{flag} does nothing with --list: it is for installing a model")
        check_base_url(base_url)
        show_catalog(_console(), refresh=refresh, base_url=base_url, json_output=json_output)
        return
    if refresh:
        raise CLIError("--refresh goes with --list (an install looks for new models when it "
                       "does not know the name)")
    if json_output:
        raise CLIError("--json goes with --list (the setup itself prints progress)")
    run_setup(
        _console(),
        name=model or root.values.get("model"),
        yes=yes or bool(root.values.get("yes")),
        data_type=quant_type or root.values.get("type"),
        base_url=base_url,
        head_type=head_type or root.values.get("head_type"),
    )


@app.command("convert")
def convert_command(
    ctx: typer.Context,
    src: Path = CheckpointArg,
    dest: Path = ModelOutArg,
    data_type: str = typer.Option("FP16", "--type", help="FP16 or FP32."),
    force: bool = ForceOpt,
) -> None:
    """Convert a checkpoint (.pth, .safetensors, Hugging Face folder) to an rwkv.cpp model file
    (no torch needed)."""
    from .model_files import convert_with_progress

    _only_used(ctx, "convert")
    convert_with_progress(_console(), src, dest, data_type.upper(), force=force)


@app.command("quantize")
def quantize_command(
    ctx: typer.Context,
    src: Path = QuantizeSrcArg,
    dest: Path = QuantizeDestArg,
    type_name: str = QuantTypeArg,
    force: bool = ForceOpt,
    head_type: Optional[str] = HeadTypeOpt,
) -> None:
    """Quantize an rwkv.cpp model file."""
    from .model_files import quantize_with_progress

    _only_used(ctx, "quantize")
    quantize_with_progress(_console(), src, dest, type_name.upper(), force=force,
                           head_type=head_type)


# ---- errors and the entry point ----


def _user_message(exc: BaseException) -> Optional[str]:
    """The one-line message for errors a user can act on; None for programming errors."""
    from .terms import cli_terms

    if isinstance(exc, InvalidArgument):
        return cli_terms(str(exc))
    if isinstance(exc, RWKVError):  # ours: every error the package raises on purpose
        return str(exc)
    if isinstance(exc, FileNotFoundError):
        return str(exc) if not exc.filename else f"file not found: {exc.filename}"
    if isinstance(exc, OSError) and exc.errno == 28:
        return f"disk full: {exc.filename or ''} {exc.strerror}".replace("  ", " ")
    if isinstance(exc, OSError):  # permissions, I/O errors: the system's message names the file
        return str(exc)
    return None


def _click_class(name: str) -> type:
    """A class of the click that Typer runs on (its own copy in recent Typer versions)."""
    return next(c for c in typer.BadParameter.__mro__ if c.__name__ == name)


def _usage_message(exc: Exception) -> str:
    """A usage error as one line: what is wrong, and where the help is."""
    message = exc.format_message().strip().rstrip(".")  # type: ignore[attr-defined]
    message = " ".join(message.split())
    ctx = getattr(exc, "ctx", None)
    command = ctx.command_path if ctx is not None else "rwkv-cpp"
    return f"{message}; `{command} --help` lists the options"


def _fail(message: str, code: int = 1) -> None:
    _console(stderr=True).print(f"[bold red]error:[/] {message}", markup=True, soft_wrap=True,
                                highlight=False)
    sys.exit(code)


def main(argv: Optional[list[str]] = None) -> None:
    """Console-script entry point: errors become one line on stderr (tracebacks with --debug)."""
    debug = _debug_enabled() or (argv is not None and "--debug" in argv)
    click_exception = _click_class("ClickException")
    abort = typer.Abort
    try:
        code = app(args=argv, prog_name="rwkv-cpp", standalone_mode=False)
    except SystemExit:
        raise
    except click_exception as exc:
        if debug:
            traceback.print_exc()
        _fail(_usage_message(exc), getattr(exc, "exit_code", 2))
    except (KeyboardInterrupt, abort):
        _console(stderr=True).print("\n[bold red]interrupted[/]")
        sys.exit(130)
    except Exception as exc:  # noqa: BLE001 - the one place errors meet the user
        if debug:
            traceback.print_exc()
        message = _user_message(exc)
        if message is None:
            message = f"{type(exc).__name__}: {exc} (run with --debug for the traceback)"
        _fail(message, getattr(exc, "exit_code", 1))
    else:
        if code == 130:  # Typer turns a Ctrl-C into exit code 130
            _console(stderr=True).print("\n[bold red]interrupted[/]")
        if isinstance(code, int) and code:
            sys.exit(code)
