"""The per-process hub: LISTEN on its own connection, fan-out to the wake queues of connected devices,
coalescing, reconnecting after the connection is lost (and waking everyone once), draining on exit."""

from __future__ import annotations

import asyncio
import signal
import uuid
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from corral.kit.db import asyncpg_dsn
from corral.push.hub import MAX_PENDING, PushHub, WakeQueue
from corral.push.service import push_service
from tests.conftest import Factory
from tests.live import LiveServer
from tests.push.conftest import enroll_on, eventually, lock, open_events


@pytest.fixture
async def hub(db_url: str) -> AsyncIterator[PushHub]:
    started = PushHub(asyncpg_dsn(db_url), backoff_min=0.05, backoff_max=0.2)
    await started.start()
    assert started.listening
    yield started
    await started.stop()


async def notify(sessionmaker: async_sessionmaker[AsyncSession], device_id: str, reason: str) -> None:
    async with sessionmaker() as session:
        await push_service.wake(session, uuid.UUID(device_id), reason)
        await session.commit()


# ------------------------------------------------------------------------------------------- wake queue
async def test_a_wake_queue_coalesces_duplicates_is_bounded_and_ends_with_none() -> None:
    queue = WakeQueue("d")
    assert queue.put("command") and not queue.put("command")  # the same reason twice: once
    for n in range(MAX_PENDING + 3):
        queue.put(f"reason-{n}")
    assert await queue.get() == "command"
    taken = [await queue.get() for _ in range(MAX_PENDING - 1)]
    assert taken == [f"reason-{n}" for n in range(MAX_PENDING - 1)]  # the rest was dropped (full)
    reader = asyncio.create_task(queue.get())
    await asyncio.sleep(0)
    assert queue.put("command")
    assert await reader == "command"  # a waiting reader is woken
    queue.close()
    assert await queue.get() is None and not queue.put("command")


# ------------------------------------------------------------------------------------------- fan-out
async def test_a_committed_notification_reaches_every_stream_of_that_device_only(
    hub: PushHub, sessionmaker: async_sessionmaker[AsyncSession]
) -> None:
    device, other = str(uuid.uuid4()), str(uuid.uuid4())
    first, second, elsewhere = hub.subscribe(device), hub.subscribe(device), hub.subscribe(other)
    assert hub.connected_devices == 2 and hub.stream_count == 3
    await notify(sessionmaker, device, "command")
    async with asyncio.timeout(2):
        assert await first.get() == "command" and await second.get() == "command"
    await asyncio.sleep(0.1)
    assert elsewhere._pending == []

    async with sessionmaker() as session:  # rolled back: PostgreSQL delivers nothing
        await push_service.wake(session, uuid.UUID(device), "command")
        await session.rollback()
    await asyncio.sleep(0.2)
    assert first._pending == []

    for queue in (first, second, elsewhere):
        hub.unsubscribe(queue)
    hub.unsubscribe(first)  # twice is harmless
    assert hub.connected_devices == 0 and hub.stream_count == 0


async def test_the_hub_keeps_trying_when_the_database_is_unreachable() -> None:
    unreachable = PushHub("postgresql://corral@127.0.0.1:9/none", backoff_min=0.05, backoff_max=0.1)
    await unreachable.start(wait=0.3)
    assert not unreachable.listening
    queue = unreachable.subscribe("d")  # streams still open; wake-ups resume once it can listen
    await unreachable.stop()
    assert queue.closed


async def test_the_listener_reconnects_after_its_connection_is_terminated_and_wakes_connected_devices(
    live: LiveServer, factory: Factory, sessionmaker: async_sessionmaker[AsyncSession]
) -> None:
    admin = await factory.admin("Global administrator")
    hub: PushHub = live.app.state.push_hub
    async with httpx.AsyncClient(base_url=live.url, timeout=10) as client:
        device = await enroll_on(client, admin, live.url)
        async with open_events(device) as events:
            assert (await events.next())[0] == "ready"
            old_pid = hub.listener_pid
            async with sessionmaker() as session:
                row = (
                    await session.execute(
                        text(
                            "SELECT application_name, pg_terminate_backend(pid) FROM pg_stat_activity "
                            "WHERE pid = :pid AND datname = current_database()"
                        ),
                        {"pid": old_pid},
                    )
                ).one()
            assert tuple(row) == ("corral-push", True)

            # Notifications sent while it was gone are lost: every connected device is woken once.
            assert await events.next(timeout=5) == ("wake", {"reason": "resync"})
            assert hub.listening and hub.listener_pid not in (None, old_pid)

            await lock(client, admin, device)  # and it listens again
            assert await events.next(timeout=1.0) == ("wake", {"reason": "command"})


class _FakeUvicorn:
    should_exit = False

    def handle_exit(self, sig: int, frame: Any) -> None:
        self.should_exit = True


async def test_streams_end_when_the_uvicorn_server_is_told_to_exit(hub: PushHub) -> None:
    """uvicorn drains connections before the lifespan shutdown: the hub notices the exit itself."""
    server = _FakeUvicorn()
    previous = signal.signal(signal.SIGTERM, server.handle_exit)
    try:
        queue = hub.subscribe("d")
        await asyncio.sleep(0.6)
        assert not hub.draining
        server.handle_exit(signal.SIGTERM, None)
        await eventually(lambda: hub.draining, timeout=2)
        assert await queue.get() is None
    finally:
        signal.signal(signal.SIGTERM, previous)
