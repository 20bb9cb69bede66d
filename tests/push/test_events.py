"""GET /device/v1/events against a real server: ready, wake-ups within a second of the admin's request, a
wake-up at connect when commands already wait, heartbeats, no database connection held, clean ends."""

from __future__ import annotations

import time
from collections.abc import Callable

import httpx
import pytest
from fastapi import FastAPI
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from corral.push.hub import PushHub
from tests.conftest import Factory, audit_rows
from tests.devices.device import TestDevice
from tests.devices.test_enrollment_and_checkin import enrolled
from tests.live import LiveServer
from tests.push.conftest import EVENTS, enroll_on, eventually, lock, open_events


def hub_of(live: LiveServer) -> PushHub:
    hub: PushHub = live.app.state.push_hub
    return hub


async def test_a_connected_device_is_woken_within_a_second_and_its_check_in_delivers_the_lock(
    live: LiveServer, factory: Factory
) -> None:
    admin = await factory.admin("Global administrator")
    helpdesk = await factory.admin("Help desk operator")
    async with httpx.AsyncClient(base_url=live.url, timeout=10) as client:
        device = await enroll_on(client, admin, live.url)
        async with open_events(device) as events:
            assert events.response.headers["content-type"].startswith("text/event-stream")
            assert events.response.headers["cache-control"] == "no-store"
            assert await events.next() == ("ready", {"device_id": device.device_id})

            started = time.perf_counter()
            queued = await lock(client, helpdesk, device)
            assert await events.next(timeout=1.0) == ("wake", {"reason": "command"})
            elapsed = time.perf_counter() - started
            assert elapsed < 1.0, f"wake-up took {elapsed:.3f} s"

            checkin = await device.checkin({})
            assert checkin.status_code == 200, checkin.text
            commands = checkin.json()["commands"]
            assert [(c["id"], c["type"]) for c in commands] == [(queued.json()["id"], "lock")]


async def test_commands_waiting_when_the_device_connects_wake_it_at_once(
    live: LiveServer, factory: Factory
) -> None:
    admin = await factory.admin("Global administrator")
    async with httpx.AsyncClient(base_url=live.url, timeout=10) as client:
        device = await enroll_on(client, admin, live.url)
        await lock(client, admin, device)
        async with open_events(device) as events:
            assert (await events.next())[0] == "ready"
            assert await events.next(timeout=1.0) == ("wake", {"reason": "command"})
        # Delivered but not acknowledged ("sent") still counts as waiting: it comes again.
        assert len((await device.checkin({})).json()["commands"]) == 1
        async with open_events(device) as events:
            assert (await events.next())[0] == "ready"
            assert await events.next(timeout=1.0) == ("wake", {"reason": "command"})
        command_id = (await device.checkin({})).json()["commands"][0]["id"]
        await device.checkin({"command_results": [{"command_id": command_id, "status": "acknowledged"}]})
        async with open_events(device) as events:
            assert (await events.next())[0] == "ready"
            with pytest.raises(TimeoutError):
                await events.next(timeout=0.5)  # nothing waits any more: no wake-up


async def test_only_the_device_the_command_is_for_is_woken(live: LiveServer, factory: Factory) -> None:
    admin = await factory.admin("Global administrator")
    async with httpx.AsyncClient(base_url=live.url, timeout=10) as client:
        target = await enroll_on(client, admin, live.url)
        bystander = await enroll_on(client, admin, live.url)
        async with open_events(target) as woken, open_events(bystander) as quiet:
            assert (await woken.next())[0] == "ready" and (await quiet.next())[0] == "ready"
            await lock(client, admin, target)
            assert await woken.next(timeout=1.0) == ("wake", {"reason": "command"})
            with pytest.raises(TimeoutError):
                await quiet.next(timeout=0.5)


async def test_heartbeat_comments_keep_an_idle_stream_alive(
    live_servers: Callable[..., LiveServer], factory: Factory
) -> None:
    live = live_servers(push_heartbeat_seconds=1)
    admin = await factory.admin("Global administrator")
    async with httpx.AsyncClient(base_url=live.url, timeout=10) as client:
        device = await enroll_on(client, admin, live.url)
        async with open_events(device) as events:
            await events.next()
            assert await events.next_comment(timeout=2) == "ping"
            first = time.perf_counter()
            assert await events.next_comment(timeout=2) == "ping"
            assert 0.5 < time.perf_counter() - first < 1.6  # one per heartbeat interval
            await lock(client, admin, device)
            assert await events.next(timeout=1.0) == ("wake", {"reason": "command"})


async def test_streams_hold_no_database_connection(
    live_servers: Callable[..., LiveServer], factory: Factory
) -> None:
    """Authentication uses the request's session, which is committed and returned to the pool before the
    stream starts: with a pool of ONE connection, three open streams still leave it free for check-ins."""
    live = live_servers(db_pool_size=1, db_max_overflow=0)
    admin = await factory.admin("Global administrator")
    pool = live.app.state.engine.sync_engine.pool
    async with httpx.AsyncClient(base_url=live.url, timeout=5) as client:
        devices = [await enroll_on(client, admin, live.url) for _ in range(3)]
        async with open_events(devices[0]) as a, open_events(devices[1]) as b, open_events(devices[2]) as c:
            for events in (a, b, c):
                assert (await events.next())[0] == "ready"
            assert await live.call(pool.checkedout) == 0
            await lock(client, admin, devices[1])
            assert await b.next(timeout=1.0) == ("wake", {"reason": "command"})
            checkin = await devices[1].checkin({})
            assert checkin.status_code == 200 and checkin.json()["commands"][0]["type"] == "lock"
            assert await live.call(pool.checkedout) == 0


async def test_a_closed_stream_is_forgotten_and_metrics_count_streams_and_notifications(
    live: LiveServer, factory: Factory
) -> None:
    admin = await factory.admin("Global administrator")
    hub = hub_of(live)
    async with httpx.AsyncClient(base_url=live.url, timeout=10) as client:
        device = await enroll_on(client, admin, live.url)
        assert device.device_id is not None
        async with open_events(device) as events:
            await events.next()
            assert await live.call(lambda: hub.connected(str(device.device_id)))
            await lock(client, admin, device)
            await events.next(timeout=1.0)
            metrics = (await client.get("/metrics", headers=admin.headers)).text
            assert "corral_push_connected_devices" in metrics and "corral_push_listener_up" in metrics
            assert 'corral_push_notifications_total{connected="yes"}' in metrics
        await eventually(lambda: live.call(lambda: not hub.connected(str(device.device_id))))


async def test_a_draining_server_ends_streams_and_sends_new_ones_elsewhere(
    live: LiveServer, factory: Factory
) -> None:
    admin = await factory.admin("Global administrator")
    async with httpx.AsyncClient(base_url=live.url, timeout=10) as client:
        device = await enroll_on(client, admin, live.url)
        async with open_events(device) as events:
            await events.next()
            await live.call(hub_of(live).drain)
            assert await events.until_end(timeout=2) == []
        headers = device.signed_headers("GET", EVENTS, b"")
        refused = await client.get(EVENTS, headers=headers)
        assert refused.status_code == 503 and refused.headers["retry-after"] == "5"


# ------------------------------------------------------------------------------------------ refusals (c)
async def test_unsigned_forged_replayed_and_ended_devices_are_refused(
    app: FastAPI,
    client: httpx.AsyncClient,
    factory: Factory,
    sessionmaker: async_sessionmaker[AsyncSession],
) -> None:
    admin = await factory.admin("Global administrator")
    device = await enrolled(client, admin)

    unsigned = await client.get(EVENTS)
    assert unsigned.status_code == 401
    assert unsigned.headers["content-type"].startswith("application/problem+json")

    impostor = TestDevice(client)  # signs with its own key but claims the device's certificate
    forged = await client.get(
        EVENTS, headers=impostor.signed_headers("GET", EVENTS, b"", key_id=device.fingerprint)
    )
    assert forged.status_code == 401 and "bad signature" in forged.json()["detail"]

    unknown = await client.get(EVENTS, headers=impostor.signed_headers("GET", EVENTS, b"", key_id="ab" * 32))
    assert unknown.status_code == 401 and "unknown device certificate" in unknown.json()["detail"]

    nonce = "replayed-nonce-0123456789"
    assert (await device.checkin({}, nonce=nonce)).status_code == 200
    replayed = await client.get(EVENTS, headers=device.signed_headers("GET", EVENTS, b"", nonce=nonce))
    assert replayed.status_code == 401 and "replayed" in replayed.json()["detail"]

    other_target = await client.get(  # signed for another URL (@target-uri covers it)
        EVENTS, headers=device.signed_headers("GET", "/device/v1/checkin", b"")
    )
    assert other_target.status_code == 401

    # Audited per kind (reason, and the device when its certificate was found): the second bad signature for
    # the device waits for the window's summary.
    failures = await audit_rows(sessionmaker, activity="device.auth", result="failure")
    assert [row.detail for row in failures] == [
        f"{EVENTS}: the request is not signed",
        f"{EVENTS}: bad signature",
        f"{EVENTS}: unknown device certificate",
        f"{EVENTS}: replayed request (nonce already used)",
    ]
    assert [row.target_id for row in failures] == [None, device.device_id, None, device.device_id]
    assert await app.state.refusals.flush() == 1
    summary = (await audit_rows(sessionmaker, activity="device.auth", result="failure"))[-1]
    assert summary.target_id == device.device_id and summary.detail.startswith(f"1 further refusal ({EVENTS}")
