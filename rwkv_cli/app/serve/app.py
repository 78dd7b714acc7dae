"""The HTTP application (Starlette): OpenAI's endpoints over one loaded `RWKV`.

Handlers only read requests, call the model's public API (`acompletion`, streamed or not)
and write responses; the model schedules the work. What the server adds is admission: at
most `parallel` completions run and `queue` more wait; beyond that a request gets 503 with
Retry-After at once rather than a wait of unknown length.

Cancellation: a streamed completion whose client disconnects is cancelled at once (the
library stops it at its next token and frees its slot), and so is a plain one (its handler
watches for the disconnect while it waits). On shutdown, `stopping` is set after the grace
period: every completion still running ends at its next token, and its client gets an error
saying the server is shutting down.
"""

from __future__ import annotations

import asyncio
import hmac
import json
import threading
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from ...core.chat_format import ChatFormat, build_prompt
from ...errors import InvalidArgument, RWKVError
from . import errors
from .errors import APIError
from .metrics import ServerMetrics
from .schemas import CompletionRequest, ResponseWriter, parse_chat, parse_completion
from .stream import EventStream

if TYPE_CHECKING:
    from ...core.model import RWKV

MAX_BODY_BYTES = 1 << 20
OPEN_PATHS = ("/health",)  # answered without the API key (load balancers probe it)
CLIENT_CLOSED = 499  # the status nginx logs for a client that left before the response


@dataclass
class ServeOptions:
    model_name: str
    chat_format: ChatFormat
    parallel: int
    queue: int
    api_key: str | None = None
    max_body_bytes: int = MAX_BODY_BYTES


class Serving:
    """What the handlers share: the model, the admission count, the metrics, the stop flag."""

    def __init__(self, model: RWKV, options: ServeOptions):
        self.model = model
        self.options = options
        self.admitted = 0  # running + waiting; touched on the event loop only
        self.stopping = threading.Event()  # set: completions end at their next token
        self.created = int(time.time())
        try:
            self.created = int(model.path.stat().st_mtime)
        except OSError:
            pass
        self.metrics = ServerMetrics(self.running, self.waiting, options.parallel)

    def running(self) -> int:
        return self.model.active_work_count()

    def waiting(self) -> int:
        return max(0, self.admitted - self.running())

    def admit(self) -> None:
        if self.stopping.is_set():
            raise errors.shutting_down()
        if self.admitted >= self.options.parallel + self.options.queue:
            raise errors.overloaded(self.running(), self.waiting())
        self.admitted += 1

    def release(self) -> None:
        self.admitted -= 1

    def count_completion(self, finish_reason: str, usage: Any) -> None:
        m = self.metrics
        m.completions.labels(finish_reason).inc()
        if usage is not None:
            m.prompt_tokens.inc(usage.prompt_tokens)
            m.cached_tokens.inc(usage.prompt_tokens_cached)
            m.generated_tokens.inc(usage.completion_tokens)


# ---- reading requests ----


async def read_json(request: Request, limit: int) -> Any:
    """The body as JSON; 413 past `limit` bytes (checked as it arrives, whatever the
    Content-Length said), 400 when it is not JSON."""
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise errors.body_too_large(limit)
        chunks.append(chunk)
    try:
        return json.loads(b"".join(chunks))
    except (ValueError, UnicodeDecodeError) as exc:
        raise errors.bad_request(f"the body is not valid JSON: {exc}") from None


async def _wait_disconnect(request: Request) -> None:
    while (await request.receive())["type"] != "http.disconnect":
        pass


# ---- the completion endpoints ----


def _library_error(exc: RWKVError) -> APIError:
    if isinstance(exc, APIError):
        return exc
    if isinstance(exc, InvalidArgument):
        return errors.bad_request(str(exc), exc.option)
    return APIError(str(exc), 503, errors.SERVER, "model_unavailable")


async def _complete(serving: Serving, http: Request, request: CompletionRequest,
                    prompt: str) -> Response:
    arrived = time.perf_counter()
    serving.admit()
    try:
        options = request.options()
        writer = ResponseWriter(request, serving.options.model_name)
        if request.stream:
            chunks = await serving.model.acompletion(
                prompt, stream=True, stop_event=serving.stopping, **options
            )
            events = _events(serving, writer, chunks, arrived, request.endpoint == "chat")
            return EventStream(events, lambda gone: serving.release())  # type: ignore[return-value]
    except RWKVError as exc:
        serving.release()
        raise _library_error(exc) from None
    except BaseException:
        serving.release()
        raise
    try:
        return await _complete_whole(serving, http, writer, prompt, options)
    finally:
        serving.release()


async def _complete_whole(serving: Serving, http: Request, writer: ResponseWriter, prompt: str,
                          options: dict[str, Any]) -> Response:
    completion = asyncio.ensure_future(
        serving.model.acompletion(prompt, stop_event=serving.stopping, **options)
    )
    watch = asyncio.ensure_future(_wait_disconnect(http))
    try:
        await asyncio.wait({completion, watch}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for task in (completion, watch):
            if not task.done():
                task.cancel()  # acompletion stops the completion at its next token
        await asyncio.gather(completion, watch, return_exceptions=True)
    if completion.cancelled():  # the client left first
        serving.count_completion("cancelled", None)
        return Response(status_code=CLIENT_CLOSED)
    exc = completion.exception()
    if isinstance(exc, RWKVError):
        raise _library_error(exc)
    if exc is not None:
        raise exc
    result = completion.result()
    serving.count_completion(result.finish_reason, result.usage)
    if result.finish_reason == "cancelled":  # only `stopping` ends one this way here
        raise errors.shutting_down()
    return JSONResponse(writer.body(result))


async def _events(serving: Serving, writer: ResponseWriter, chunks: AsyncIterator[Any],
                  arrived: float, chat: bool) -> AsyncIterator[bytes]:
    """The SSE events of a streamed completion; closing this closes the library's stream."""
    usage, reason = None, "cancelled"
    first = True
    try:
        opening = writer.opening_event()
        if opening is not None:
            yield opening
        async for chunk in chunks:
            usage = chunk.usage
            if chunk.result is not None:
                reason = chunk.result.finish_reason
                break
            text = chunk.text
            if chat and first:
                text = text.lstrip()  # the reply's leading space belongs to the format
                if not text:
                    continue
            if first:
                serving.metrics.time_to_first_token.observe(time.perf_counter() - arrived)
                first = False
            yield writer.piece_event(text)
        if reason == "cancelled":  # the server is stopping (a gone client never gets here)
            yield writer.error_event(errors.shutting_down())
            return
        yield writer.finish_event(reason)
        if writer.include_usage and usage is not None:
            yield writer.usage_event(usage)
        yield writer.DONE
    except RWKVError as exc:
        reason = "error"
        yield writer.error_event(_library_error(exc))
    finally:
        serving.count_completion(reason, usage)
        await chunks.aclose()  # type: ignore[attr-defined]


def create_app(model: RWKV, options: ServeOptions) -> Starlette:
    """The ASGI application serving `model` (loaded; the app frees it when it shuts down)."""
    serving = Serving(model, options)
    name = options.model_name

    async def health(request: Request) -> Response:
        if serving.stopping.is_set():
            return JSONResponse({"status": "shutting down"}, status_code=503)
        return JSONResponse({"status": "ok", "model": name})

    def model_card() -> dict[str, Any]:
        return {"id": name, "object": "model", "created": serving.created, "owned_by": "rwkv-cpp"}

    async def list_models(request: Request) -> Response:
        return JSONResponse({"object": "list", "data": [model_card()]})

    async def get_model(request: Request) -> Response:
        asked = request.path_params["model"]
        if asked != name:
            raise errors.model_not_found(asked, name)
        return JSONResponse(model_card())

    async def completions(request: Request) -> Response:
        body = await read_json(request, options.max_body_bytes)
        parsed = parse_completion(body, name)
        return await _complete(serving, request, parsed, parsed.prompt)

    async def chat_completions(request: Request) -> Response:
        body = await read_json(request, options.max_body_bytes)
        parsed = parse_chat(body, name)
        try:
            prompt = build_prompt(options.chat_format, parsed.messages)
        except ValueError as exc:  # e.g. a system message for a format without a system turn
            raise errors.bad_request(f"messages: {exc}", "messages") from None
        parsed.stop = options.chat_format.stop + parsed.stop
        return await _complete(serving, request, parsed, prompt)

    async def metrics(request: Request) -> Response:
        text, content_type = serving.metrics.text()
        return Response(text, media_type=content_type)

    async def api_error(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, APIError)
        return Response(exc.json_bytes(), status_code=exc.status, headers=exc.headers,
                        media_type="application/json")

    async def http_error(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, HTTPException)
        what = {404: f"no such endpoint: {request.url.path}",
                405: f"{request.method} is not allowed on {request.url.path}"}
        error = APIError(what.get(exc.status_code, str(exc.detail)), exc.status_code,
                         errors.NOT_FOUND if exc.status_code == 404 else errors.INVALID_REQUEST,
                         headers=dict(exc.headers or {}))
        return await api_error(request, error)

    async def server_error(request: Request, exc: Exception) -> Response:
        error = APIError(f"internal error: {type(exc).__name__}: {exc}", 500, errors.SERVER)
        return await api_error(request, error)

    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        yield
        serving.stopping.set()
        # free() waits for the running completions to stop: off the event loop, which they
        # need to deliver their last chunks.
        await asyncio.to_thread(model.free)

    app = Starlette(
        routes=[
            Route("/health", health, methods=["GET"]),
            Route("/metrics", metrics, methods=["GET"]),
            Route("/v1/models", list_models, methods=["GET"]),
            Route("/v1/models/{model:path}", get_model, methods=["GET"]),
            Route("/v1/completions", completions, methods=["POST"]),
            Route("/v1/chat/completions", chat_completions, methods=["POST"]),
        ],
        exception_handlers={APIError: api_error, HTTPException: http_error,
                            Exception: server_error},
        lifespan=lifespan,
    )
    app.state.serving = serving
    return Gatekeeper(app, serving)  # type: ignore[return-value]


class Gatekeeper:
    """ASGI middleware in front of the app: the API key, the body size announced by
    Content-Length, and the count of responses by path and status."""

    def __init__(self, app: Starlette, serving: Serving):
        self.app = app
        self.serving = serving
        self.state = app.state
        key = serving.options.api_key
        self._key = key.encode() if key else None

    def _refusal(self, scope: dict) -> APIError | None:
        headers = dict(scope.get("headers") or [])
        if self._key is not None and scope["path"] not in OPEN_PATHS:
            given = headers.get(b"authorization", b"")
            scheme, _, token = given.partition(b" ")
            if scheme.lower() != b"bearer" or not hmac.compare_digest(token.strip(), self._key):
                return errors.unauthorized(bool(given))
        length = headers.get(b"content-length")
        limit = self.serving.options.max_body_bytes
        if length is not None and length.isdigit() and int(length) > limit:
            return errors.body_too_large(limit)
        return None

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        path = scope["path"]
        refusal = self._refusal(scope)
        if refusal is not None:
            self.serving.metrics.count_request(path, refusal.status)
            await Response(refusal.json_bytes(), status_code=refusal.status,
                           headers=refusal.headers, media_type="application/json")(
                scope, receive, send)
            return

        async def counting_send(message: dict) -> None:
            if message["type"] == "http.response.start":
                self.serving.metrics.count_request(path, message["status"])
            await send(message)

        await self.app(scope, receive, counting_send)
