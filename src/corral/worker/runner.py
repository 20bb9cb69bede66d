"""Running a worker: ``corral worker`` (a process of its own) or inside ``corral serve``.

A worker holds a psycopg connection pool of its own for procrastinate (one connection of it LISTENs for new
jobs; the rest fetch and finish jobs, beat the heartbeat and defer the periodic jobs), and runs tasks with
Corral's SQLAlchemy sessions. It stops gracefully: no new jobs, running ones get
``CORRAL_WORKER_SHUTDOWN_SECONDS`` to finish, then they are aborted (and run again later).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

from fastapi import FastAPI
from procrastinate import App, JobContext, PsycopgConnector
from procrastinate.worker import Worker
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from corral.config import Settings
from corral.kit import context
from corral.kit.db import asyncpg_dsn
from corral.worker import JOB_QUEUE_SCHEMA, tasks
from corral.worker.app import WORKER_ACTOR, WorkerResources, app, worker_name

log = logging.getLogger("corral.worker")

# Beyond the jobs themselves: the LISTEN connection, fetching, the heartbeat, the periodic deferrer.
POOL_EXTRA_CONNECTIONS = 4
RESTART_DELAYS = (1.0, 2.0, 5.0, 10.0, 30.0)


class WorkerStopped(RuntimeError):
    """The worker stopped without being asked to (e.g. its LISTEN connection failed)."""


def connector(database_url: str, concurrency: int) -> PsycopgConnector:
    """procrastinate's connector for Corral's database URL, its objects found in the job queue schema."""
    return PsycopgConnector(
        conninfo=asyncpg_dsn(database_url),
        min_size=1,
        max_size=concurrency + POOL_EXTRA_CONNECTIONS,
        name="corral-worker",
        kwargs={"options": f"-c search_path={JOB_QUEUE_SCHEMA}", "application_name": "corral-worker"},
    )


@contextlib.asynccontextmanager
async def opened(database_url: str, concurrency: int) -> AsyncIterator[App]:
    """The application with a connector to this database, open for the block (for workers, and for
    procrastinate's job manager API)."""
    with app.replace_connector(connector(database_url, concurrency)):
        async with app.open_async():
            yield app


async def _in_job_context(call_next: Callable[[], Awaitable[Any]], job: JobContext, worker: Worker) -> Any:
    """Every job runs with its own correlation id (``job-<id>``, in its log lines and audit events), as the
    worker."""
    context.set_current(
        context.RequestContext(correlation_id=f"job-{job.job.id or uuid.uuid4().hex}", actor=WORKER_ACTOR)
    )
    return await call_next()


async def run_worker(
    settings: Settings,
    database_url: str,
    sessionmaker: async_sessionmaker[AsyncSession],
    stop: asyncio.Event,
    *,
    concurrency: int | None = None,
) -> None:
    """Take jobs until ``stop`` is set, then shut down gracefully. Raises :class:`WorkerStopped` (or the
    worker's exception) when it ends on its own."""
    concurrency = concurrency or settings.worker_concurrency
    tasks.schedule(settings)
    async with opened(database_url, concurrency) as job_app:
        running = asyncio.create_task(
            job_app.run_worker_async(
                name=worker_name(),
                concurrency=concurrency,
                shutdown_graceful_timeout=settings.worker_shutdown_seconds,
                install_signal_handlers=False,
                additional_context={"corral": WorkerResources(settings, sessionmaker)},
                worker_middleware=[_in_job_context],
            ),
            name="corral-worker",
        )
        stopping = asyncio.create_task(stop.wait())
        await asyncio.wait({running, stopping}, return_when=asyncio.FIRST_COMPLETED)
        if not stop.is_set():
            stopping.cancel()
            running.result()  # its exception, if it failed
            raise WorkerStopped("the worker stopped on its own (see the log lines before)")
        running.cancel()  # procrastinate: cancelling is a graceful stop
        with contextlib.suppress(asyncio.CancelledError):
            await running
    log.info("worker stopped")


def embed_worker(application: FastAPI, settings: Settings, database_url: str) -> None:
    """Run a worker inside this application (``corral serve`` with ``CORRAL_EMBEDDED_WORKER``): started once
    the application has started (schema checked, sessions ready), stopped before it shuts down, restarted
    with a delay if it fails meanwhile."""
    inner = application.router.lifespan_context

    @contextlib.asynccontextmanager
    async def lifespan(app_: FastAPI) -> AsyncIterator[Any]:
        async with inner(app_) as state:
            stop = asyncio.Event()
            supervisor = asyncio.create_task(
                _supervise(settings, database_url, app_.state.sessionmaker, stop),
                name="corral-embedded-worker",
            )
            try:
                yield state
            finally:
                stop.set()
                await supervisor

    application.router.lifespan_context = lifespan


async def _supervise(
    settings: Settings, database_url: str, sessionmaker: async_sessionmaker[AsyncSession], stop: asyncio.Event
) -> None:
    failures = 0
    while not stop.is_set():
        try:
            await run_worker(settings, database_url, sessionmaker, stop)
            return
        except Exception:
            delay = RESTART_DELAYS[min(failures, len(RESTART_DELAYS) - 1)]
            failures += 1
            log.exception("embedded worker failed; restarting in %.0f s", delay)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), delay)
