"""Apple wake-ups end to end on the server side, against real PostgreSQL and the stand-in APNs (real TLS with
the push certificate as client certificate, HTTP/2 on loopback): ``push_service.wake_many`` queues one row per
Apple device and defers the ``apple.push`` job in the caller's transaction; the job sends what is due and
settles each row by APNs' answer."""

from __future__ import annotations

import asyncio
import datetime as dt
import secrets
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy import select, text, update
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from corral.apple import push as apple_push
from corral.apple.apns import ApnsClient
from corral.config import Settings
from corral.kit.time import utcnow
from corral.models import (
    AppleEnrollment,
    ApplePushCertificate,
    ApplePushQueue,
    Device,
    ManagementChannel,
    Ownership,
    Platform,
)
from corral.push.service import push_service
from corral.worker.runner import run_worker
from tests.apple.support import apple_ca_pem, set_up_push_certificate
from tests.conftest import Factory, audit_rows, make_settings
from tests.peers.apns_standin import ApnsStandin
from tests.worker.conftest import QUIET, fetch

Sessionmaker = async_sessionmaker[AsyncSession]


@dataclass(frozen=True)
class Phone:
    id: uuid.UUID
    token: str  # hex
    magic: str


@pytest.fixture
async def apns(tmp_path: Path) -> AsyncIterator[ApnsStandin]:
    async with ApnsStandin(apple_ca_pem(), tmp_path / "apns") as standin:
        yield standin


@pytest.fixture
async def push_settings(tmp_path: Path, db_url: str, apns: ApnsStandin) -> AsyncIterator[Settings]:
    """The worker's settings: APNs is the stand-in. The job keeps its APNs client between runs: it is
    closed before the stand-in stops."""
    yield make_settings(
        tmp_path, db_url, apple_apns_url=apns.url, apple_apns_ca_file=Path(apns.ca_file), **QUIET
    )
    await apple_push.clients.aclose()


@pytest.fixture
async def topic(client: httpx.AsyncClient, factory: Factory) -> str:
    """The push certificate in use (set up through the API); its topic."""
    return await set_up_push_certificate(client, await factory.admin())


async def add_phones(
    sessionmaker: Sessionmaker,
    topic: str,
    count: int = 1,
    *,
    ended: bool = False,
    with_token: bool = True,
) -> list[Phone]:
    """Enrolled iPhones, as Authenticate and TokenUpdate leave them."""
    now = utcnow()
    phones = [
        Phone(uuid.uuid4(), secrets.token_bytes(32).hex(), str(uuid.uuid4()).upper()) for _ in range(count)
    ]
    async with sessionmaker() as session:
        for phone in phones:
            device_id = phone.id
            session.add(
                Device(
                    id=device_id,
                    name=f"iPhone-{device_id.hex[:6]}",
                    serial_number=device_id.hex[:12].upper(),
                    platform=Platform.ios,
                    ownership=Ownership.company,
                    management_channel=ManagementChannel.apple_mdm,
                    enrolled_at=now,
                )
            )
        await session.flush()  # the devices first (no relationship tells the session)
        for phone in phones:
            session.add(
                AppleEnrollment(
                    device_id=phone.id,
                    udid=secrets.token_hex(20),
                    topic=topic,
                    profile_identifier="com.corral.enroll.test",
                    push_token=bytes.fromhex(phone.token) if with_token else None,
                    push_magic=phone.magic if with_token else None,
                    authenticated_at=now,
                    first_token_update_at=now if with_token else None,
                    push_state="ok" if with_token else "pending",
                    ended_at=now if ended else None,
                )
            )
        await session.commit()
    return phones


async def add_agent_device(sessionmaker: Sessionmaker) -> uuid.UUID:
    device_id = uuid.uuid4()
    async with sessionmaker() as session:
        session.add(
            Device(
                id=device_id,
                name=f"laptop-{device_id.hex[:6]}",
                serial_number=device_id.hex[:12],
                platform=Platform.linux,
                ownership=Ownership.company,
                enrolled_at=utcnow(),
            )
        )
        await session.commit()
    return device_id


async def wake(sessionmaker: Sessionmaker, *device_ids: uuid.UUID, reason: str = "command") -> None:
    """What every command path does: wake the devices in its own transaction."""
    async with sessionmaker() as session:
        await push_service.wake_many(session, list(device_ids), reason)
        await session.commit()


async def queue(sessionmaker: Sessionmaker) -> list[ApplePushQueue]:
    async with sessionmaker() as session:
        return list((await session.scalars(select(ApplePushQueue))).all())


async def enrollment(sessionmaker: Sessionmaker, device_id: uuid.UUID) -> AppleEnrollment:
    async with sessionmaker() as session:
        found = await session.get(AppleEnrollment, device_id)
        assert found is not None
        return found


async def push_jobs(db_url: str) -> list[tuple[str, str | None, Any]]:
    """The apple.push jobs waiting: (queueing lock, status, scheduled_at)."""
    rows = await fetch(
        db_url,
        "SELECT queueing_lock, status::text, scheduled_at FROM procrastinate.procrastinate_jobs "
        "WHERE task_name = 'apple.push' AND status = 'todo' ORDER BY id",
    )
    return [(r[0], r[1], r[2]) for r in rows]


async def test_three_wakes_before_the_job_runs_make_one_push(
    sessionmaker: Sessionmaker, push_settings: Settings, apns: ApnsStandin, topic: str, db_url: str
) -> None:
    [phone] = await add_phones(sessionmaker, topic)
    for reason in ("command", "desired_state", "command"):
        await wake(sessionmaker, phone.id, reason=reason)
    [row] = await queue(sessionmaker)
    assert row.device_id == phone.id and row.attempts == 0
    assert [lock for lock, _s, _at in await push_jobs(db_url)] == ["apple.push"]  # one waiting is enough

    summary = await apple_push.send_due(sessionmaker, push_settings)

    assert summary.counts()["sent"] == 1
    [sent] = apns.pushes
    assert (sent.token, sent.topic, sent.magic) == (phone.token, topic, phone.magic)
    assert sent.http_version == "2"
    assert await queue(sessionmaker) == []
    state = await enrollment(sessionmaker, phone.id)
    assert state.push_state == "ok" and state.last_push_at is not None and state.push_failed_reason is None
    # Nothing left to do: the run deferred no other job (the one the wakes queued waits; no worker runs here).
    assert [lock for lock, _s, _at in await push_jobs(db_url)] == ["apple.push"]


async def test_an_unregistered_token_makes_the_device_unreachable_once(
    sessionmaker: Sessionmaker, push_settings: Settings, apns: ApnsStandin, topic: str
) -> None:
    [phone] = await add_phones(sessionmaker, topic)
    apns.script(phone.token, [410, 410])
    await wake(sessionmaker, phone.id)

    summary = await apple_push.send_due(sessionmaker, push_settings)

    assert summary.counts()["unreachable"] == 1 and apns.pushes == []
    assert await queue(sessionmaker) == []
    state = await enrollment(sessionmaker, phone.id)
    assert (state.push_state, state.push_failed_reason) == ("unreachable", "410 Unregistered")
    [event] = await audit_rows(sessionmaker, activity="device.apple.push_unreachable")
    assert event.target_id == str(phone.id) and event.actor_type == "system"
    assert event.modified_properties == [{"name": "push_state", "old": "ok", "new": "unreachable"}]

    # Woken again, refused again: still unreachable, and no second event.
    await wake(sessionmaker, phone.id)
    await apple_push.send_due(sessionmaker, push_settings)
    assert len(apns.refusals) == 2 and await queue(sessionmaker) == []
    assert len(await audit_rows(sessionmaker, activity="device.apple.push_unreachable")) == 1


async def test_a_busy_apns_is_retried_later(
    sessionmaker: Sessionmaker, push_settings: Settings, apns: ApnsStandin, topic: str, db_url: str
) -> None:
    [phone] = await add_phones(sessionmaker, topic)
    apns.script(phone.token, [429])
    await wake(sessionmaker, phone.id)

    before = utcnow()
    summary = await apple_push.send_due(sessionmaker, push_settings)

    assert summary.counts()["retry"] == 1 and apns.pushes == []
    [row] = await queue(sessionmaker)
    # The first retry waits 5 s·2^1, ±20 %.
    assert row.attempts == 1 and row.last_error == "429 TooManyRequests"
    assert before + dt.timedelta(seconds=7.9) < row.due_at < utcnow() + dt.timedelta(seconds=12.1)
    state = await enrollment(sessionmaker, phone.id)
    assert (state.push_state, state.push_failed_reason) == ("retrying", "429 TooManyRequests")
    # The run deferred the next one for then (its own queueing lock: a wake-up meanwhile is not held up).
    later = [at for lock, _s, at in await push_jobs(db_url) if lock == apple_push.LATER_LOCK]
    assert later == [row.due_at]

    # A run before then sends nothing; once it is due, the push goes.
    await apple_push.send_due(sessionmaker, push_settings)
    assert apns.pushes == [] and len(await queue(sessionmaker)) == 1
    async with sessionmaker() as session:
        await session.execute(update(ApplePushQueue).values(due_at=utcnow() - dt.timedelta(seconds=1)))
        await session.commit()
    await apple_push.send_due(sessionmaker, push_settings)
    assert [p.token for p in apns.pushes] == [phone.token]
    assert await queue(sessionmaker) == []
    state = await enrollment(sessionmaker, phone.id)
    assert (state.push_state, state.push_failed_reason) == ("ok", None)


async def test_a_wake_up_is_dropped_after_its_last_attempt(
    sessionmaker: Sessionmaker, push_settings: Settings, apns: ApnsStandin, topic: str
) -> None:
    [phone] = await add_phones(sessionmaker, topic)
    apns.script(phone.token, [503])
    await wake(sessionmaker, phone.id)
    async with sessionmaker() as session:
        await session.execute(
            update(ApplePushQueue).values(attempts=push_settings.apple_push_max_attempts - 1)
        )
        await session.commit()

    summary = await apple_push.send_due(sessionmaker, push_settings)

    assert summary.gave_up == 1 and await queue(sessionmaker) == []
    assert (await enrollment(sessionmaker, phone.id)).push_failed_reason == "503 ServiceUnavailable"


async def test_a_wake_up_resets_the_attempts_and_is_due_at_once(
    sessionmaker: Sessionmaker, push_settings: Settings, apns: ApnsStandin, topic: str
) -> None:
    [phone] = await add_phones(sessionmaker, topic)
    apns.script(phone.token, [429])
    await wake(sessionmaker, phone.id)
    await apple_push.send_due(sessionmaker, push_settings)
    [waiting] = await queue(sessionmaker)
    assert waiting.attempts == 1 and waiting.due_at > utcnow()

    await wake(sessionmaker, phone.id)

    [row] = await queue(sessionmaker)
    assert row.attempts == 0 and row.due_at <= utcnow()
    await apple_push.send_due(sessionmaker, push_settings)
    assert len(apns.pushes) == 1 and await queue(sessionmaker) == []


async def test_a_device_woken_while_its_push_is_in_flight_is_pushed_again(
    sessionmaker: Sessionmaker,
    push_settings: Settings,
    apns: ApnsStandin,
    topic: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Rows are leased, not locked, while pushes are in flight: the wake does not wait for APNs, and what it
    woke the device for may have been committed after the device checked in, so it is pushed once more."""
    [phone] = await add_phones(sessionmaker, topic)
    original = ApnsClient.push_many
    woken_during: list[float] = []

    async def push_many(self: ApnsClient, items: Any) -> Any:
        results = await original(self, items)
        if not woken_during:
            started = time.monotonic()
            await asyncio.wait_for(wake(sessionmaker, phone.id), 5)
            woken_during.append(time.monotonic() - started)
        return results

    monkeypatch.setattr(ApnsClient, "push_many", push_many)
    await wake(sessionmaker, phone.id)

    summary = await apple_push.send_due(sessionmaker, push_settings)

    assert summary.counts()["sent"] == 2 and summary.batches == 2
    assert [p.token for p in apns.pushes] == [phone.token, phone.token]
    assert await queue(sessionmaker) == []
    assert woken_during[0] < 1


async def test_nothing_is_sent_without_a_push_certificate(
    sessionmaker: Sessionmaker, push_settings: Settings, apns: ApnsStandin
) -> None:
    [phone] = await add_phones(sessionmaker, "com.apple.mgmt.External.none-yet")
    await wake(sessionmaker, phone.id)

    summary = await apple_push.send_due(sessionmaker, push_settings)

    assert summary.skipped == "no_certificate" and apns.pushes == []
    assert [row.device_id for row in await queue(sessionmaker)] == [phone.id]


async def test_nothing_is_sent_with_an_expired_push_certificate(
    sessionmaker: Sessionmaker, push_settings: Settings, apns: ApnsStandin, topic: str
) -> None:
    [phone] = await add_phones(sessionmaker, topic)
    async with sessionmaker() as session:
        await session.execute(
            update(ApplePushCertificate).values(not_after=utcnow() - dt.timedelta(minutes=1))
        )
        await session.commit()
    await wake(sessionmaker, phone.id)

    summary = await apple_push.send_due(sessionmaker, push_settings)

    assert summary.skipped == "certificate_expired" and apns.pushes == []
    [row] = await queue(sessionmaker)
    assert row.device_id == phone.id and row.attempts == 0


async def test_devices_enrolled_on_another_topic_wait(
    sessionmaker: Sessionmaker, push_settings: Settings, apns: ApnsStandin, topic: str
) -> None:
    [ours] = await add_phones(sessionmaker, topic)
    [other] = await add_phones(sessionmaker, "com.apple.mgmt.External.another")
    await wake(sessionmaker, ours.id, other.id)

    await apple_push.send_due(sessionmaker, push_settings)

    assert [p.token for p in apns.pushes] == [ours.token]
    assert [row.device_id for row in await queue(sessionmaker)] == [other.id]


async def test_a_refused_certificate_stops_the_run_and_keeps_the_rows(
    sessionmaker: Sessionmaker, push_settings: Settings, apns: ApnsStandin, topic: str
) -> None:
    [phone] = await add_phones(sessionmaker, topic)
    apns.script(phone.token, [403])
    await wake(sessionmaker, phone.id)
    [before] = await queue(sessionmaker)

    summary = await apple_push.send_due(sessionmaker, push_settings)

    assert summary.skipped == "certificate_refused" and summary.batches == 1
    [row] = await queue(sessionmaker)
    assert (row.due_at, row.attempts) == (before.due_at, 0)  # as it was: sent once the certificate is fixed
    assert (await enrollment(sessionmaker, phone.id)).push_state == "ok"


async def test_agents_ended_enrollments_and_devices_without_a_token_are_never_queued(
    sessionmaker: Sessionmaker, topic: str, db_url: str
) -> None:
    agent = await add_agent_device(sessionmaker)
    [ended] = await add_phones(sessionmaker, topic, ended=True)
    [tokenless] = await add_phones(sessionmaker, topic, with_token=False)

    await wake(sessionmaker, agent, ended.id, tokenless.id)

    assert await queue(sessionmaker) == []
    assert await push_jobs(db_url) == []


async def test_a_rolled_back_wake_leaves_nothing(sessionmaker: Sessionmaker, topic: str, db_url: str) -> None:
    [phone] = await add_phones(sessionmaker, topic)
    async with sessionmaker() as session:
        await push_service.wake_many(session, [phone.id], "command")
        assert await session.scalar(text("SELECT count(*) FROM apple_push_queue")) == 1
        await session.rollback()
    assert await queue(sessionmaker) == []
    assert await push_jobs(db_url) == []


async def test_the_sweep_queues_the_job_when_pushes_are_due(
    sessionmaker: Sessionmaker, topic: str, db_url: str
) -> None:
    assert await apple_push.sweep(sessionmaker) is False
    [phone] = await add_phones(sessionmaker, topic)
    async with sessionmaker() as session:  # a row whose job was lost (or whose claim outlived its worker)
        now = utcnow()
        session.add(ApplePushQueue(device_id=phone.id, due_at=now, reason="command", enqueued_at=now))
        await session.commit()
    assert await push_jobs(db_url) == []

    assert await apple_push.sweep(sessionmaker) is True
    assert await apple_push.sweep(sessionmaker) is True  # one job waiting is enough
    assert [lock for lock, _s, _at in await push_jobs(db_url)] == ["apple.push"]


async def test_hundreds_of_devices_woken_at_once_take_one_run(
    sessionmaker: Sessionmaker, push_settings: Settings, apns: ApnsStandin, topic: str
) -> None:
    """(bench/apple_push_fanout.py measures 10,000.)"""
    phones = await add_phones(sessionmaker, topic, 300)
    started = time.perf_counter()
    await wake(sessionmaker, *(phone.id for phone in phones))
    queued = time.perf_counter() - started
    assert len(await queue(sessionmaker)) == 300

    started = time.perf_counter()
    summary = await apple_push.send_due(sessionmaker, push_settings)
    elapsed = time.perf_counter() - started

    print(f"\n300 Apple devices: woken (queued) in {queued:.3f} s, pushed in {elapsed:.3f} s")
    assert summary.counts()["sent"] == 300 and summary.batches == 1
    assert sorted(p.token for p in apns.pushes) == sorted(phone.token for phone in phones)
    assert len({p.connection for p in apns.pushes}) == 1  # one HTTP/2 connection
    assert await queue(sessionmaker) == []
    async with sessionmaker() as session:
        states = await session.scalars(select(AppleEnrollment.push_state).distinct())
        assert list(states) == ["ok"]


async def test_a_worker_sends_the_push_a_wake_queued(
    sessionmaker: Sessionmaker, push_settings: Settings, apns: ApnsStandin, topic: str, db_url: str
) -> None:
    """The job is registered with the worker, which finds its settings in the job's resources."""
    [phone] = await add_phones(sessionmaker, topic)
    stop = asyncio.Event()
    worker = asyncio.create_task(run_worker(push_settings, db_url, sessionmaker, stop, concurrency=2))
    try:
        await wake(sessionmaker, phone.id)
        [sent] = await apns.wait_for(1, timeout=20)
        assert (sent.token, sent.magic) == (phone.token, phone.magic)
        deadline = time.monotonic() + 10
        while await queue(sessionmaker) and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        assert await queue(sessionmaker) == []
    finally:
        stop.set()
        await asyncio.wait_for(worker, 30)
