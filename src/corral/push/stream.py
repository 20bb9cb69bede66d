"""The wake-up stream as a small ASGI response: Server-Sent Events (WHATWG HTML §9.2) of one device.

Built for many idle connections (docs/benchmarks.md, S7). The request goes through the application as usual
(middleware, routing, the device-signature guard, the session committed and returned to the pool); the
response sends its headers and ``ready``, and then — when :class:`StreamHandoff` wraps the application — hands
the open stream to that outermost layer and returns, so that the frames, exit stacks and request objects of
every layer in between are freed instead of being held for hours per device. What stays per stream: one
coroutine, one task waiting for the client to go away and a :class:`~corral.push.hub.WakeQueue`. No database
connection is held.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import weakref

from starlette.responses import Response
from starlette.types import ASGIApp, Receive, Scope, Send

from corral.push.hub import PING, PushHub, WakeQueue

HEARTBEAT = b": ping\n\n"
HANDOFF = "corral.push.handoff"
# The keys of an HTTP connection scope in the ASGI specification; the application's own (routing, exit stacks)
# are dropped once a stream is handed off, so that what they reference is freed.
ASGI_SCOPE_KEYS = frozenset(
    {
        "type",
        "asgi",
        "http_version",
        "method",
        "scheme",
        "path",
        "raw_path",
        "query_string",
        "root_path",
        "headers",
        "client",
        "server",
        "state",
        "extensions",
    }
)


def sse(event: str, data: dict[str, str]) -> bytes:
    """One event: ``event:`` and a one-line JSON ``data:``."""
    return f"event: {event}\ndata: {json.dumps(data, separators=(',', ':'))}\n\n".encode()


class _Handoff:
    """Filled in by :class:`EventStream`, run by :class:`StreamHandoff` (shared through the scope)."""

    __slots__ = ("stream",)

    def __init__(self) -> None:
        self.stream: _OpenStream | None = None


class _OpenStream:
    """A stream whose headers and first events are sent: wake-ups and heartbeats until it ends."""

    __slots__ = ("hub", "queue")

    def __init__(self, hub: PushHub, queue: WakeQueue) -> None:
        self.hub, self.queue = hub, queue

    async def run(self, receive: Receive, send: Send) -> None:
        watcher = asyncio.create_task(self._watch_disconnect(receive))
        try:
            await self._pump(send)
        except OSError:
            pass  # the client went away while we wrote
        finally:
            watcher.cancel()
            self.hub.unsubscribe(self.queue)

    def abandon(self) -> None:
        self.hub.unsubscribe(self.queue)

    async def _pump(self, send: Send) -> None:
        while True:
            reason = await self.queue.get()
            if reason is None:  # closed: the client left, or the server is draining
                with contextlib.suppress(OSError):  # (a server drops writes to a closed connection)
                    await send({"type": "http.response.body", "body": b"", "more_body": False})
                return
            chunk = HEARTBEAT if reason == PING else sse("wake", {"reason": reason})
            await send({"type": "http.response.body", "body": chunk, "more_body": True})

    async def _watch_disconnect(self, receive: Receive) -> None:
        """The request has no body to read: the next message is ``http.disconnect``."""
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                self.queue.close()
                return


class EventStream(Response):
    """``text/event-stream`` for one device: ``ready``, then ``wake`` per wake-up and a ``: ping`` comment
    whenever the hub's heartbeat comes round, until the client leaves or the server drains.

    It takes over a queue already subscribed to the hub (see :class:`~corral.push.service.PushService`); if it
    is never sent (the request failed after the handler returned), the queue is unsubscribed when it is
    dropped."""

    media_type = "text/event-stream"

    def __init__(self, hub: PushHub, queue: WakeQueue, *, pending: bool) -> None:
        self.status_code = 200
        self.background = None
        self.device_id = queue.device_id
        self.pending = pending
        self._stream = _OpenStream(hub, queue)
        self._unused = weakref.finalize(self, hub.unsubscribe, queue)
        # Proxies must pass events on at once (nginx reads X-Accel-Buffering; see docs/operations.md).
        self.init_headers({"Cache-Control": "no-store", "X-Accel-Buffering": "no"})

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        self._unused.detach()  # from here on the stream unsubscribes itself
        stream = self._stream
        try:
            await send({"type": "http.response.start", "status": 200, "headers": self.raw_headers})
            first = sse("ready", {"device_id": self.device_id})
            if self.pending:
                first += sse("wake", {"reason": "command"})
            await send({"type": "http.response.body", "body": first, "more_body": True})
        except BaseException:
            stream.abandon()
            raise
        handoff = scope.get(HANDOFF)
        if isinstance(handoff, _Handoff):
            handoff.stream = stream  # continued by StreamHandoff, outside every other layer
        else:
            await stream.run(receive, send)


class StreamHandoff:
    """The outermost application middleware: runs the open wake-up streams handed to it.

    The rest of the stack (Corral's request context, FastAPI's routing and exit stacks, the request object)
    has returned by then and is freed; only this frame stays with each long-lived stream."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        handoff = _Handoff()
        scope[HANDOFF] = handoff
        try:
            await self.app(scope, receive, send)
        except BaseException:
            if handoff.stream is not None:
                handoff.stream.abandon()
            raise
        stream, handoff.stream = handoff.stream, None
        if stream is not None:
            for key in [key for key in scope if key not in ASGI_SCOPE_KEYS]:
                del scope[key]
            await stream.run(receive, send)
