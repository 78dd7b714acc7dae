"""Live servers for the tests: `rwkv-cpp serve`'s application on uvicorn, in a thread, on an
ephemeral 127.0.0.1 port, with the same setup the command does (`prepare_app`); and the
server-sent events of a streamed response, parsed."""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path

import httpx

from rwkv_cli import RWKV
from rwkv_cli.app.serve import ServeOptions, Server, listen, prepare_app, served_name
from rwkv_cli.core.chat_format import ChatFormat

START_TIMEOUT = 20.0


class LiveServer:
    """A server over its own `RWKV` (so its prompt cache is its own) until `stop()`."""

    def __init__(self, model_path: Path, parallel: int = 4, queue: int = 16,
                 api_key: str | None = None, grace: float = 2.0):
        self.model = RWKV(model_path, threads=1, concurrent=parallel).setup()
        self.name = served_name(Path(model_path).name, Path(model_path))
        self.format = ChatFormat.for_model(self.model.n_vocab, "", Path(model_path).name)
        options = ServeOptions(self.name, self.format, parallel, queue, api_key)
        self.app = prepare_app(self.model, options)
        self.serving = self.app.serving
        self.sock = listen("127.0.0.1", 0)
        host, port = self.sock.getsockname()[:2]
        self.url = f"http://{host}:{port}"
        self.server = Server(self.app, grace=grace)
        self.thread = threading.Thread(target=self.server.serve_on, args=(self.sock,),
                                       name="live-server", daemon=True)
        self.thread.start()
        deadline = time.monotonic() + START_TIMEOUT
        while not self.server.started:
            if not self.thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError("the server did not start")
            time.sleep(0.01)

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=30)
        assert not self.thread.is_alive(), "the server did not stop"
        self.sock.close()

    def metrics(self) -> dict[str, float]:
        """The metrics' samples: `name{labels}` -> value."""
        text = httpx.get(self.url + "/metrics", headers=self.auth(), timeout=10).text
        samples = {}
        for line in text.splitlines():
            if line and not line.startswith("#"):
                key, _, value = line.rpartition(" ")
                samples[key] = float(value)
        return samples

    def auth(self) -> dict[str, str]:
        key = self.serving.options.api_key
        return {"Authorization": f"Bearer {key}"} if key else {}


def sse_data(lines) -> list[str]:
    """The `data:` payloads of a server-sent event stream, given its lines."""
    return [line[len("data: "):] for line in lines if line.startswith("data: ")]


def stream_events(client: httpx.Client, url: str, body: dict, **kwargs) -> tuple[list, str]:
    """A streamed request: (its JSON events, the last payload, "[DONE]" when it ended so)."""
    with client.stream("POST", url, json=body, **kwargs) as response:
        assert response.status_code == 200, response.read()
        assert response.headers["content-type"].startswith("text/event-stream")
        payloads = sse_data(response.iter_lines())
    events = [json.loads(p) for p in payloads if p != "[DONE]"]
    return events, payloads[-1] if payloads else ""
