"""A server-sent-events response that ends its generation as soon as the client leaves.

Starlette's StreamingResponse learns of a gone client only when a write fails (ASGI 2.4), or
cancels the body through an anyio cancel scope that keeps cancelling every await, including
the one in which the library waits for its worker to stop. This response watches for
`http.disconnect` itself and cancels the body once, so the body's cleanup (closing the
library's stream: the completion stops at its next token) runs to its end before `on_close`.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any, Callable

HEADERS = [
    (b"content-type", b"text/event-stream; charset=utf-8"),
    (b"cache-control", b"no-cache"),
    # nginx buffers proxied responses unless told not to; a stream must reach the client
    # token by token.
    (b"x-accel-buffering", b"no"),
]


async def _disconnected(receive: Callable[[], Any]) -> None:
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            return


class EventStream:
    """An ASGI response streaming `events` (bytes, each a whole SSE event); `on_close(gone)`
    runs once at the end, with gone=True when the client left before the end."""

    def __init__(self, events: AsyncIterator[bytes], on_close: Callable[[bool], None]):
        self.events = events
        self.on_close = on_close
        self.client_gone = False

    async def _pump(self, send: Callable[[dict], Any]) -> None:
        await send({"type": "http.response.start", "status": 200, "headers": HEADERS})
        async for event in self.events:
            await send({"type": "http.response.body", "body": event, "more_body": True})
        await send({"type": "http.response.body", "body": b"", "more_body": False})

    async def __call__(self, scope: dict, receive: Callable[[], Any], send: Callable) -> None:
        pump = asyncio.ensure_future(self._pump(send))
        watch = asyncio.ensure_future(_disconnected(receive))
        try:
            await asyncio.wait({pump, watch}, return_when=asyncio.FIRST_COMPLETED)
            self.client_gone = watch.done() and not pump.done()
        finally:
            for task in (pump, watch):
                task.cancel()
            await asyncio.gather(pump, watch, return_exceptions=True)
            aclose = getattr(self.events, "aclose", None)
            if aclose is not None:
                await aclose()
            self.on_close(self.client_gone)
        if not pump.cancelled() and pump.exception() is not None:
            raise pump.exception()  # type: ignore[misc]
