"""The stream response on its own (a fake ASGI server): events as bytes, the hand-off to the outermost layer
that frees the rest of the stack, and subscriptions that are always given back."""

from __future__ import annotations

import asyncio
import gc
from collections.abc import AsyncIterator
from typing import Any

import pytest

from corral.push.hub import PushHub
from corral.push.stream import EventStream, StreamHandoff


@pytest.fixture
async def hub() -> AsyncIterator[PushHub]:
    local = PushHub("postgresql://unused@127.0.0.1:9/unused", heartbeat_seconds=3600, backoff_min=60)
    yield local
    await local.stop()


class FakeServer:
    def __init__(self) -> None:
        self.sent: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
        self.gone = asyncio.Event()

    async def receive(self) -> dict[str, Any]:
        await self.gone.wait()
        return {"type": "http.disconnect"}

    async def send(self, message: dict[str, Any]) -> None:
        await self.sent.put(message)

    async def body(self) -> bytes:
        message = await asyncio.wait_for(self.sent.get(), 2)
        assert message["type"] == "http.response.body"
        return bytes(message["body"])


def http_scope(**extra: Any) -> dict[str, Any]:
    return {"type": "http", "method": "GET", "path": "/device/v1/events", "headers": [], **extra}


async def test_events_heartbeats_and_the_end_of_a_stream(hub: PushHub) -> None:
    server = FakeServer()
    response = EventStream(hub, hub.subscribe("dev-1"), pending=True)
    running = asyncio.create_task(response(http_scope(), server.receive, server.send))
    start = await asyncio.wait_for(server.sent.get(), 2)
    headers = dict(start["headers"])
    assert start["status"] == 200 and headers[b"content-type"] == b"text/event-stream; charset=utf-8"
    assert headers[b"x-accel-buffering"] == b"no" and b"content-length" not in headers
    assert await server.body() == (
        b'event: ready\ndata: {"device_id":"dev-1"}\n\nevent: wake\ndata: {"reason":"command"}\n\n'
    )
    assert hub.wake("dev-1", "command") == 1
    assert await server.body() == b'event: wake\ndata: {"reason":"command"}\n\n'
    for queue in list(hub._slots[0]):
        queue.ping()
    assert await server.body() == b": ping\n\n"

    server.gone.set()  # the client leaves
    await asyncio.wait_for(running, 2)
    assert not hub.connected("dev-1") and hub.stream_count == 0


async def test_the_stream_continues_in_the_outermost_layer_after_the_rest_has_returned(hub: PushHub) -> None:
    server = FakeServer()
    inner_returned = asyncio.Event()

    async def application(scope: dict[str, Any], receive: Any, send: Any) -> None:
        scope["route"] = object()  # what routing adds; dropped once the stream is handed off
        await EventStream(hub, hub.subscribe("dev-2"), pending=False)(scope, receive, send)
        inner_returned.set()

    scope = http_scope()
    running = asyncio.create_task(StreamHandoff(application)(scope, server.receive, server.send))
    await asyncio.wait_for(server.sent.get(), 2)
    assert (await server.body()).startswith(b"event: ready")
    await asyncio.wait_for(inner_returned.wait(), 2)
    assert not running.done() and "route" not in scope and scope["path"] == "/device/v1/events"

    hub.drain()  # the server is going away: the stream ends properly
    assert await server.body() == b""
    await asyncio.wait_for(running, 2)
    assert hub.stream_count == 0


async def test_a_stream_response_never_sent_gives_its_subscription_back(hub: PushHub) -> None:
    response = EventStream(hub, hub.subscribe("dev-3"), pending=False)
    assert hub.connected("dev-3")
    del response
    gc.collect()
    assert not hub.connected("dev-3")
