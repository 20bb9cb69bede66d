"""Push tests: real servers (the stream is long-lived, so not ASGITransport, which buffers whole responses),
devices that hold a wake-up stream, and a small Server-Sent Events reader that also sees comments."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.conftest import Admin
from tests.devices.device import TestDevice
from tests.devices.test_enrollment_and_checkin import make_token
from tests.live import LiveServer, start_live_server

EVENTS = "/device/v1/events"


@pytest.fixture
def live_servers(tmp_path: Path, db_url: str) -> Iterator[Callable[..., LiveServer]]:
    """Start live servers on the test's database (settings overrides as keyword arguments)."""
    started: list[LiveServer] = []

    def start(**overrides: Any) -> LiveServer:
        directory = tmp_path / f"server{len(started)}"
        directory.mkdir()
        server = start_live_server(directory, db_url, **overrides)
        started.append(server)
        return server

    yield start
    for server in started:
        server.stop()


@pytest.fixture
def live(live_servers: Callable[..., LiveServer]) -> LiveServer:
    return live_servers()


class EventReader:
    """Events (and comments) of one open stream, read as they arrive."""

    def __init__(self, response: httpx.Response) -> None:
        self.response = response
        self._lines = response.aiter_lines()
        self.comments: list[str] = []
        self.ended = False

    async def next(self, timeout: float = 5.0) -> tuple[str, Any]:
        """The next event as (name, data parsed as JSON); skips comments (kept in ``comments``)."""
        async with asyncio.timeout(timeout):
            name, data = "message", []
            async for line in self._lines:
                if line == "":
                    if data:
                        return name, json.loads("\n".join(data))
                    name = "message"
                elif line.startswith(":"):
                    self.comments.append(line[1:].strip())
                else:
                    field, _, value = line.partition(":")
                    value = value[1:] if value.startswith(" ") else value
                    if field == "event":
                        name = value
                    elif field == "data":
                        data.append(value)
        self.ended = True
        raise EOFError("the stream ended")

    async def next_comment(self, timeout: float) -> str:
        async with asyncio.timeout(timeout):
            async for line in self._lines:
                if line.startswith(":"):
                    self.comments.append(line[1:].strip())
                    return line[1:].strip()
        self.ended = True
        raise EOFError("the stream ended")

    async def until_end(self, timeout: float = 5.0) -> list[str]:
        """Read to the end of the stream; returns the lines read."""
        lines = []
        async with asyncio.timeout(timeout):
            async for line in self._lines:
                lines.append(line)
        self.ended = True
        return lines


@asynccontextmanager
async def open_events(device: TestDevice, **sign: Any) -> AsyncIterator[EventReader]:
    headers = device.signed_headers("GET", EVENTS, b"", **sign)
    headers["Accept"] = "text/event-stream"
    async with device.client.stream("GET", EVENTS, headers=headers) as response:
        assert response.status_code == 200, (await response.aread()).decode()
        yield EventReader(response)


async def enroll_on(client: httpx.AsyncClient, admin: Admin, base_url: str, **token: Any) -> TestDevice:
    """A device enrolled with the server at ``base_url`` (it signs its requests for that URL)."""
    device = TestDevice(client, base_url=base_url)
    response = await device.enroll(await make_token(client, admin, **token))
    assert response.status_code == 201, response.text
    return device


async def lock(client: httpx.AsyncClient, admin: Admin, device: TestDevice) -> httpx.Response:
    response = await client.post(
        f"/api/v1/devices/{device.device_id}/actions/lock",
        json={"params": {"message": "Call IT"}},
        headers=admin.headers,
    )
    assert response.status_code == 202, response.text
    return response


async def eventually(check: Callable[[], Any], timeout: float = 5.0, interval: float = 0.05) -> Any:
    """Poll an (async or plain) check until it returns something truthy."""
    deadline = asyncio.get_running_loop().time() + timeout
    while True:
        result = check()
        if asyncio.iscoroutine(result):
            result = await result
        if result:
            return result
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError("condition not met in time")
        await asyncio.sleep(interval)
