"""`rwkv-cpp serve`: an OpenAI-compatible HTTP server over the `RWKV` class.

- `app.py`: the Starlette application (endpoints, admission, cancellation), `schemas.py`
  (request checks, response bodies), `errors.py` (OpenAI-shaped errors), `stream.py` (the
  SSE response), `metrics.py` (Prometheus), `server.py` (uvicorn: socket, URL line, stop).

Why Starlette on uvicorn, not FastAPI: the API's shapes are OpenAI's, not a framework's.
Errors must be `{"error": {...}}` with 400 (FastAPI's validation answers 422 with its own
body), a field of the wrong type must not be coerced ("5" is not 5), and streams need control
over cancellation; FastAPI would add pydantic and a layer to undo. Starlette gives routing,
requests and responses, and nothing that has to be worked around.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import TYPE_CHECKING

from rich.console import Console

from .app import ServeOptions, create_app
from .server import DEFAULT_GRACE_SECONDS, Server, listen, url_of

if TYPE_CHECKING:
    from ...core.model import RWKV

DEFAULT_PORT = 8000
DEFAULT_PARALLEL = 8
DEFAULT_QUEUE = 64

__all__ = [
    "ServeOptions", "Server", "create_app", "listen", "prepare_app", "run_server", "served_name",
]


def served_name(choice_name: str, path: Path) -> str:
    """The model's id in the API: its registry name, or the file's stem."""
    return path.stem if choice_name == path.name else choice_name


def _loopback(sock) -> bool:
    import ipaddress

    return ipaddress.ip_address(sock.getsockname()[0]).is_loopback


def prepare_app(model: RWKV, options: ServeOptions):
    """The application for a loaded model. Every conversation without a system message opens
    with the chat format's preamble, so its state is computed once and kept (pinned)."""
    model.preload_prompt(options.chat_format.preamble, pin=True)
    return create_app(model, options)


def run_server(
    console: Console,
    model_path: Path | None = None,
    model_name: str | None = None,
    threads: int | None = None,
    gpu: int | str = 0,
    tokenizer: str | None = None,
    host: str = "127.0.0.1",
    port: int = DEFAULT_PORT,
    parallel: int = DEFAULT_PARALLEL,
    queue: int = DEFAULT_QUEUE,
    api_key: str | None = None,
    grace: float = DEFAULT_GRACE_SECONDS,
) -> None:
    from ...core.chat_format import ChatFormat
    from .. import home
    from ..load import load_model

    choice = home.resolve_model(model_path, model_name)
    sock = listen(host, port)  # before the load: a taken port fails at once
    if not api_key and not _loopback(sock):
        Console(stderr=True, highlight=False).print(
            f"note: listening on {host} without --api-key: anyone who can reach this machine "
            "can use the model", soft_wrap=True, markup=False,
        )
    try:
        model = load_model(console, choice, threads, gpu, tokenizer=tokenizer,
                           concurrent=parallel)
    except BaseException:
        sock.close()
        raise
    fmt = ChatFormat.for_model(model.n_vocab, choice.prompt_format, choice.name)
    name = served_name(choice.name, choice.path)
    try:
        app = prepare_app(model, ServeOptions(name, fmt, parallel, queue, api_key or None))
    except BaseException:
        model.free()
        sock.close()
        raise
    url = url_of(sock)

    def announce() -> None:
        key = " · API key required" if api_key else ""
        console.print(
            f"rwkv-cpp serve · {name} (RWKV v{model.arch}, {model.data_type}, {parallel} "
            f"parallel, queue {queue}, {model.threads} threads{key}) · {url}/v1 · Ctrl-C stops",
            soft_wrap=True, highlight=False, markup=False,
        )
        sys.stdout.flush()

    server = Server(app, grace=grace, on_started=announce)
    try:
        server.serve_on(sock)
    finally:
        model.free()  # the app frees it at shutdown; this covers a failed startup
        sock.close()
    if server.stop_signal is not None:
        console.print("rwkv-cpp serve: stopped", highlight=False, markup=False)
