"""Bare long-lived handlers for the push floors (F_conn), no Corral application around them:

- ``/plain``: Starlette's ``StreamingResponse`` over an async generator (a comment, then one every 25 s);
- ``/sse``: sse-starlette's ``EventSourceResponse`` (an event, then its own ping every 25 s);
- ``/eventstream``: Corral's own ``EventStream`` response with a hub that is not listening.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator

from sse_starlette import EventSourceResponse
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import PlainTextResponse, Response, StreamingResponse
from starlette.routing import Route

from corral.push.hub import PushHub
from corral.push.stream import EventStream

HEARTBEAT = 25.0
hub = PushHub("postgresql://unused@127.0.0.1:9/unused")  # never started: streams subscribe, nothing listens


async def index(request: Request) -> Response:
    return PlainTextResponse("ok")


async def plain(request: Request) -> Response:
    async def body() -> AsyncIterator[bytes]:
        yield b": hello\n\n"
        while True:
            await asyncio.sleep(HEARTBEAT)
            yield b": ping\n\n"

    return StreamingResponse(body(), media_type="text/event-stream")


async def sse(request: Request) -> Response:
    async def body() -> AsyncIterator[dict[str, str]]:
        yield {"event": "ready", "data": "{}"}
        await asyncio.Event().wait()  # nothing more; sse-starlette sends the pings

    return EventSourceResponse(body(), ping=int(HEARTBEAT))


async def eventstream(request: Request) -> Response:
    async def nothing_pending() -> bool:
        return False

    return EventStream(hub, str(uuid.uuid4()), has_pending=nothing_pending, heartbeat=HEARTBEAT)


app = Starlette(
    routes=[Route("/", index), Route("/plain", plain), Route("/sse", sse), Route("/eventstream", eventstream)]
)
