"""The job API and the worker against real PostgreSQL: deferring in the caller's transaction, running jobs,
periodic jobs deferred once per tick by any number of workers, the worker inside the web application, and the
queue depth in /metrics."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
from procrastinate import JobContext
from procrastinate.exceptions import AlreadyEnqueued
from procrastinate.periodic import PeriodicDeferrer
from pydantic import ValidationError
from sqlalchemy import insert, select, text
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from corral.checkin.auth import MAX_AGE
from corral.config import Settings
from corral.kit import context
from corral.kit.time import utcnow
from corral.main import create_app
from corral.models import DeviceNonce
from corral.worker import tasks
from corral.worker.app import app, defer, resources
from corral.worker.runner import embed_worker, opened, run_worker
from tests.conftest import Factory, make_settings, new_client
from tests.worker.conftest import ago, fetch, make_device, wait_for_job

SEEN: list[dict[str, Any]] = []


@app.task(name="tests.worker.record", pass_context=True)
async def record(job: JobContext, note: str) -> None:
    """A task for these tests: remembers what a job saw."""
    ctx = context.current()
    async with resources(job).sessionmaker() as session:
        nonces = len((await session.scalars(select(DeviceNonce))).all())
    SEEN.append(
        {
            "note": note,
            "correlation_id": ctx.correlation_id,
            "actor": ctx.actor,
            "job_id": job.job.id,
            "n": nonces,
        }
    )


async def _jobs(db_url: str) -> list[tuple[str, str, dict[str, Any] | str]]:
    rows = await fetch(
        db_url,
        "SELECT task_name, status::text, args::text FROM procrastinate.procrastinate_jobs ORDER BY id",
    )
    return [(r[0], r[1], r[2]) for r in rows]


@contextlib.asynccontextmanager
async def worker_running(
    settings: Settings, db_url: str, sessionmaker: async_sessionmaker[AsyncSession]
) -> AsyncIterator[asyncio.Task[None]]:
    stop = asyncio.Event()
    running = asyncio.create_task(run_worker(settings, db_url, sessionmaker, stop, concurrency=2))
    try:
        yield running
    finally:
        stop.set()
        await asyncio.wait_for(running, 30)


async def test_a_job_deferred_in_a_transaction_exists_only_once_it_commits(
    sessionmaker: async_sessionmaker[AsyncSession], db_url: str
) -> None:
    async with sessionmaker() as session:
        await defer(session, record, note="rolled back")
        await session.rollback()
    assert await _jobs(db_url) == []

    async with sessionmaker() as session:
        job_id = await defer(session, record.configure(priority=5), note="kept")
        await session.commit()
    rows = await fetch(
        db_url,
        "SELECT id, task_name, queue_name, status::text, priority, args->>'note' "
        "FROM procrastinate.procrastinate_jobs",
    )
    assert [tuple(r) for r in rows] == [(job_id, "tests.worker.record", "default", "todo", 5, "kept")]


async def test_a_queueing_lock_conflict_raises_and_leaves_the_transaction_usable(
    sessionmaker: async_sessionmaker[AsyncSession], db_url: str
) -> None:
    device = await make_device(sessionmaker)
    async with sessionmaker() as session:
        search_path = await session.scalar(text("SELECT current_setting('search_path')"))
        await defer(session, tasks.purge_device_nonces, timestamp=0)
        with pytest.raises(AlreadyEnqueued):
            await defer(session, tasks.purge_device_nonces, timestamp=1)
        assert await session.scalar(text("SELECT current_setting('search_path')")) == search_path
        session.add(DeviceNonce(device_id=device.id, nonce="after", expires_at=utcnow()))
        await session.commit()
    assert [(t, s) for t, s, _ in await _jobs(db_url)] == [("housekeeping.purge_device_nonces", "todo")]
    async with sessionmaker() as session:
        assert (await session.scalars(select(DeviceNonce.nonce))).all() == ["after"]


async def test_the_worker_runs_deferred_jobs_as_the_worker_with_their_own_correlation_id(
    sessionmaker: async_sessionmaker[AsyncSession], quiet_settings: Settings, db_url: str
) -> None:
    SEEN.clear()
    device = await make_device(sessionmaker)
    now = utcnow()
    async with sessionmaker() as session:
        await session.execute(
            insert(DeviceNonce),
            [
                {"device_id": device.id, "nonce": "old", "expires_at": ago(now, hours=1)},
                {"device_id": device.id, "nonce": "live", "expires_at": now + MAX_AGE},
            ],
        )
        purge = await defer(session, tasks.purge_device_nonces, timestamp=0)
        await session.commit()

    async with worker_running(quiet_settings, db_url, sessionmaker):
        await wait_for_job(db_url, purge)
        async with sessionmaker() as session:
            noted = await defer(session, record, note="after the purge")
            await session.commit()
        await wait_for_job(db_url, noted)

    assert [
        {
            "note": "after the purge",
            "correlation_id": f"job-{noted}",
            "actor": context.Actor(type="system", name="worker"),
            "job_id": noted,
            "n": 1,
        }
    ] == SEEN
    async with sessionmaker() as session:
        assert (await session.scalars(select(DeviceNonce.nonce))).all() == ["live"]
    # Stopped cleanly: the worker unregistered itself.
    assert await fetch(db_url, "SELECT id FROM procrastinate.procrastinate_workers") == []


async def test_periodic_jobs_are_deferred_once_per_tick_however_many_workers_defer_them(
    quiet_settings: Settings, db_url: str
) -> None:
    settings = quiet_settings.model_copy(update={"housekeeping_commands_cron": "*/5 * * * *"})
    tasks.schedule(settings)
    (periodic_task,) = [
        p
        for p in app.periodic_registry.periodic_tasks.values()
        if p.task.name == "housekeeping.expire_commands"
    ]
    tick = int(periodic_task.croniter.get_prev(float, start_time=utcnow().timestamp()))
    async with opened(db_url, concurrency=4):
        # Each worker runs a deferrer like these; they race for the same tick.
        deferrers = [PeriodicDeferrer(registry=app.periodic_registry) for _ in range(4)]
        await asyncio.gather(*(d.defer_jobs([(periodic_task, tick)]) for d in deferrers))
        await asyncio.gather(*(d.defer_jobs([(periodic_task, tick)]) for d in deferrers))
    rows = await fetch(
        db_url,
        "SELECT j.task_name, j.args->>'timestamp', d.defer_timestamp FROM procrastinate.procrastinate_jobs j "
        "JOIN procrastinate.procrastinate_periodic_defers d ON d.job_id = j.id",
    )
    assert [tuple(r) for r in rows] == [("housekeeping.expire_commands", str(tick), tick)]


async def test_the_schedules_come_from_the_settings(quiet_settings: Settings) -> None:
    settings = quiet_settings.model_copy(
        update={"housekeeping_nonces_cron": "*/3 * * * *", "housekeeping_finished_jobs_cron": "5 4 * * *"}
    )
    tasks.schedule(settings)
    crons = {p.task.name: p.cron for p in app.periodic_registry.periodic_tasks.values()}
    assert crons["housekeeping.purge_device_nonces"] == "*/3 * * * *"
    assert crons["housekeeping.purge_finished_jobs"] == "5 4 * * *"
    assert set(crons) == {task.name for task, _cron in tasks.SCHEDULES.values()}
    assert crons["compliance.evaluate_due"] == settings.compliance_cron
    tasks.schedule(settings)  # again (a restarted embedded worker): no duplicate registration
    assert len(app.periodic_registry.periodic_tasks) == len(tasks.SCHEDULES)


async def test_a_fresh_worker_runs_the_housekeeping_whose_tick_just_passed(
    sessionmaker: async_sessionmaker[AsyncSession], quiet_settings: Settings, db_url: str
) -> None:
    # Every minute: the latest tick is less than a minute old, so a starting worker defers it at once.
    settings = quiet_settings.model_copy(update={"housekeeping_signin_throttles_cron": "* * * * *"})
    async with worker_running(settings, db_url, sessionmaker):
        for _ in range(300):
            rows = await _jobs(db_url)
            if rows and rows[0][1] == "succeeded":
                break
            await asyncio.sleep(0.1)
    assert [(t, s) for t, s, _ in rows] == [("housekeeping.purge_signin_throttles", "succeeded")]


async def test_the_embedded_worker_runs_jobs_while_the_application_runs(
    sessionmaker: async_sessionmaker[AsyncSession], quiet_settings: Settings, db_url: str
) -> None:
    SEEN.clear()
    application = create_app(quiet_settings, database_url=db_url)
    embed_worker(application, quiet_settings, db_url)
    async with application.router.lifespan_context(application):
        async with sessionmaker() as session:
            job_id = await defer(session, record, note="embedded")
            await session.commit()
        await wait_for_job(db_url, job_id)
        assert len(await fetch(db_url, "SELECT id FROM procrastinate.procrastinate_workers")) == 1
    assert [s["note"] for s in SEEN] == ["embedded"]
    assert await fetch(db_url, "SELECT id FROM procrastinate.procrastinate_workers") == []


async def test_metrics_report_the_job_queue_depth(
    sessionmaker: async_sessionmaker[AsyncSession], factory: Factory, tmp_path: Any, db_url: str
) -> None:
    admin = await factory.admin("Global administrator")
    async with sessionmaker() as session:
        for note in ("a", "b", "c"):
            await defer(session, record, note=note)
        await session.commit()
    async with opened(db_url, concurrency=1):
        job = await app.job_manager.fetch_job(queues=None, worker_id=None)
        assert job is not None and job.id is not None
        from procrastinate.jobs import Status

        await app.job_manager.finish_job_by_id_async(job.id, status=Status.FAILED, delete_job=False)
    application = create_app(make_settings(tmp_path, db_url), database_url=db_url)
    async with application.router.lifespan_context(application), new_client(application) as client:
        response: httpx.Response = await client.get("/metrics", headers=admin.headers)
    assert response.status_code == 200
    lines = set(response.text.splitlines())
    assert {
        'corral_worker_jobs{status="todo"} 2.0',
        'corral_worker_jobs{status="doing"} 0.0',
        'corral_worker_jobs{status="failed"} 1.0',
        "corral_worker_processes 0.0",
    } <= lines


def test_a_schedule_that_is_not_a_cron_expression_is_a_configuration_error(tmp_path: Any) -> None:
    with pytest.raises(ValidationError, match="not a cron expression"):
        make_settings(tmp_path, "postgresql://x/y", housekeeping_commands_cron="every five minutes")
    settings = make_settings(tmp_path, "postgresql://x/y", housekeeping_commands_cron=" 0  4 * * * ")
    assert settings.housekeeping_commands_cron == "0 4 * * *"
