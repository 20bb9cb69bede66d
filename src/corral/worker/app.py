"""The job API: Corral's procrastinate application, and deferring a job inside the caller's transaction.

Declare a task on :data:`app` with a stable name (jobs already queued outlive refactors), in a module listed
in ``TASK_MODULES`` so that every worker knows it::

    # corral/groups/jobs.py
    from corral.worker.app import WorkerResources, app, resources

    @app.task(name="groups.recompute", queueing_lock="groups.recompute", pass_context=True)
    async def recompute(context: JobContext, group_id: str) -> None:
        async with resources(context).sessionmaker() as session:
            ...  # a transaction of its own; commit when done
            await session.commit()

and defer it from a service, in the request's transaction::

    from corral.worker.app import defer
    await defer(session, recompute, group_id=str(group.id))
    await defer(session, recompute.configure(schedule_in={"minutes": 5}), group_id=str(group.id))

The job is inserted by the caller's session, so it exists exactly when the caller's transaction commits (and a
worker is woken by NOTIFY at that commit); a rollback discards it. Jobs must be idempotent: a job whose worker
was killed runs again (``housekeeping.retry_stalled_jobs``). Task arguments are JSON values.
"""

from __future__ import annotations

import json
import socket
from dataclasses import dataclass
from typing import Any

from procrastinate import App, JobContext, PsycopgConnector
from procrastinate.exceptions import AlreadyEnqueued
from procrastinate.jobs import JobDeferrer
from procrastinate.tasks import Task
from procrastinate.types import JSONValue
from sqlalchemy import text
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from corral.config import Settings
from corral.kit import context
from corral.worker import JOB_QUEUE_SCHEMA

# Modules that declare tasks: a worker imports them all before it takes jobs.
TASK_MODULES = [
    "corral.worker.tasks",
    "corral.assignments.jobs",
    "corral.compliance.jobs",
    "corral.apple.push",
]

WORKER_ACTOR = context.Actor(type="system", name="worker")
QUEUEING_LOCK_INDEX = "procrastinate_jobs_queueing_lock_idx_v1"

# The connector is replaced by a real one (with the database URL) while a worker runs: see runner.py.
app = App(connector=PsycopgConnector(), import_paths=TASK_MODULES)


@dataclass(frozen=True)
class WorkerResources:
    """What tasks get from the worker running them (``pass_context=True``, then :func:`resources`)."""

    settings: Settings
    sessionmaker: async_sessionmaker[AsyncSession]


def resources(job_context: JobContext) -> WorkerResources:
    found = job_context.additional_context.get("corral")
    if not isinstance(found, WorkerResources):
        raise RuntimeError("this task needs a Corral worker (corral.worker.runner), which provides resources")
    return found


def worker_name() -> str:
    return f"corral-worker@{socket.gethostname()}"


_DEFER = text(
    f"""
    SELECT unnest({JOB_QUEUE_SCHEMA}.procrastinate_defer_jobs_v1(ARRAY[ROW(
        CAST(:queue AS varchar), CAST(:task_name AS varchar), CAST(:priority AS integer), CAST(:lock AS text),
        CAST(:queueing_lock AS text), CAST(:args AS jsonb), CAST(:scheduled_at AS timestamptz)
    )::{JOB_QUEUE_SCHEMA}.procrastinate_job_to_defer_v1]))
    """
)
_SEARCH_PATH = text("SELECT set_config('search_path', :path, true)")


async def defer(
    session: AsyncSession, task: Task[Any, Any, Any] | JobDeferrer, /, **task_kwargs: JSONValue
) -> int:
    """Queue a job for ``task`` (or ``task.configure(...)``: lock, queueing lock, schedule, priority, queue)
    in the session's transaction; returns the job id. Raises procrastinate's ``AlreadyEnqueued`` when a job
    with the same queueing lock is already waiting, leaving the session's transaction usable."""
    deferrer = task.configure() if isinstance(task, Task) else task
    job = deferrer.make_new_job(**task_kwargs)
    values = {
        "queue": job.queue,
        "task_name": job.task_name,
        "priority": job.priority,
        "lock": job.lock,
        "queueing_lock": job.queueing_lock,
        "args": json.dumps(job.task_kwargs),
        "scheduled_at": job.scheduled_at,
    }
    try:
        async with session.begin_nested():
            # procrastinate's functions and triggers name their tables without a schema.
            previous = await session.scalar(text("SELECT current_setting('search_path')"))
            await session.execute(_SEARCH_PATH, {"path": f"{JOB_QUEUE_SCHEMA}, {previous}"})
            job_id = await session.scalar(_DEFER, values)
            await session.execute(_SEARCH_PATH, {"path": previous})
    except IntegrityError as exc:
        if job.queueing_lock is not None and QUEUEING_LOCK_INDEX in str(exc.orig):
            raise AlreadyEnqueued(
                f"A job with the queueing lock {job.queueing_lock!r} is already waiting."
            ) from exc
        raise
    assert isinstance(job_id, int)
    return job_id
