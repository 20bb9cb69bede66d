"""Bare long-lived handlers for the push floors (F_conn), no Corral application around them:

- ``/plain``: Starlette's ``StreamingResponse`` over an async generator (a comment, then one every 25 s);
- ``/sse``: sse-starlette's ``EventSourceResponse`` (an event, then its own ping every 25 s), when installed;
- ``/eventstream``: Corral's own ``EventStream`` response, its hub sending heartbeats but not listening.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import PlainTextResponse, Response, StreamingResponse
from starlette.routing import Route

from corral.push.hub import PushHub
from corral.push.stream import EventStream

HEARTBEAT = 25.0
# Its heartbeats run; its LISTEN connection does not (nothing there): streams subscribe, nothing wakes them.
hub = PushHub(
    "postgresql://unused@127.0.0.1:9/unused", heartbeat_seconds=HEARTBEAT, backoff_min=60, backoff_max=60
)


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
    from sse_starlette import EventSourceResponse  # only for this comparison; not a Corral dependency

    async def body() -> AsyncIterator[dict[str, str]]:
        yield {"event": "ready", "data": "{}"}
        await asyncio.Event().wait()  # nothing more; sse-starlette sends the pings

    return EventSourceResponse(body(), ping=int(HEARTBEAT))


async def eventstream(request: Request) -> Response:
    return EventStream(hub, hub.subscribe(str(uuid.uuid4())), pending=False)


@asynccontextmanager
async def lifespan(app: Starlette) -> AsyncIterator[None]:
    await hub.start(wait=0)
    yield
    await hub.stop()


app = Starlette(
    routes=[
        Route("/", index),
        Route("/plain", plain),
        Route("/sse", sse),
        Route("/eventstream", eventstream),
    ],
    lifespan=lifespan,
)
