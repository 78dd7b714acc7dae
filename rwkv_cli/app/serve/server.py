"""Running the application on uvicorn: the listening socket, the URL line, a clean stop.

The socket is bound before the model loads, so a port already taken fails in a second, not
after a long load; port 0 takes a free port, and the URL line says which. On SIGINT / SIGTERM
uvicorn stops accepting and waits for the running requests; after `grace` seconds the app's
`stopping` flag ends every completion still running at its next token (each client gets an
error event or a 503 saying so), and the model is freed. The process then exits normally.
"""

from __future__ import annotations

import asyncio
import signal
import socket
from typing import Any, Callable

import uvicorn

from ...errors import UserError

DEFAULT_GRACE_SECONDS = 5.0
# After the grace period completions end at their next token; uvicorn cancels what is left
# this much later (a request stuck anywhere else), so a stop never hangs.
HARD_STOP_AFTER = 3.0


class ListenError(UserError):
    """The address cannot be listened on (taken, not local, not permitted)."""


def listen(host: str, port: int) -> socket.socket:
    """A socket bound to host:port, listening."""
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except socket.gaierror as exc:
        raise ListenError(f"--host {host}: not an address of this machine ({exc.strerror})") from None
    family, _, _, _, address = infos[0]
    try:
        return socket.create_server(address, family=family, backlog=2048)
    except OSError as exc:
        hint = (" (is another server running there? pick another --port, or 0 for any free one)"
                if exc.errno == 98 else "")
        raise ListenError(f"cannot listen on {host}:{port}: {exc.strerror or exc}{hint}") from None


def url_of(sock: socket.socket) -> str:
    host, port = sock.getsockname()[:2]
    if ":" in host:
        host = f"[{host}]"
    return f"http://{host}:{port}"


class Server(uvicorn.Server):
    """uvicorn's server, announcing itself once it accepts, and stopping within a grace
    period. `app` is the application of `create_app` (its `serving` holds the stop flag)."""

    def __init__(self, app: Any, grace: float = DEFAULT_GRACE_SECONDS,
                 on_started: Callable[[], None] | None = None, **config: Any):
        config.setdefault("log_level", "warning")
        config.setdefault("access_log", False)
        super().__init__(uvicorn.Config(
            app, lifespan="on", timeout_graceful_shutdown=grace + HARD_STOP_AFTER, **config
        ))
        self.grace = grace
        self.on_started = on_started
        self.stop_signal: int | None = None

    async def startup(self, sockets: list[socket.socket] | None = None) -> None:
        await super().startup(sockets=sockets)
        if self.started and self.on_started is not None:
            self.on_started()

    async def shutdown(self, sockets: list[socket.socket] | None = None) -> None:
        stopping = self.config.app.serving.stopping
        timer = asyncio.get_running_loop().call_later(self.grace, stopping.set)
        try:
            await super().shutdown(sockets=sockets)
        finally:
            timer.cancel()

    def handle_exit(self, sig: int, frame: Any) -> None:
        self.stop_signal = sig
        super().handle_exit(sig, frame)

    def serve_on(self, sock: socket.socket) -> None:
        """Serve until stopped. uvicorn re-raises the signal that stopped it once it is done;
        what it finds then is a handler that ignores it: the stop was clean."""
        import threading

        main = threading.current_thread() is threading.main_thread()
        signals = (signal.SIGINT, signal.SIGTERM)
        previous = [signal.signal(sig, lambda *_: None) for sig in signals] if main else []
        try:
            self.run(sockets=[sock])
        finally:
            for sig, handler in zip(signals, previous):
                signal.signal(sig, handler)
