"""Job queue gauges for /metrics, read from the database at scrape time (the queue is shared by every
process, so every replica reports the same numbers)."""

from __future__ import annotations

import logging

from prometheus_client import Gauge
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from corral.worker import JOB_QUEUE_SCHEMA

log = logging.getLogger("corral.worker")

REPORTED_STATUSES = ("todo", "doing", "failed")
# A worker beats every 10 s; one silent for longer than this is gone (procrastinate's stalled timeout).
ALIVE_SECONDS = 30

JOBS = Gauge(
    "corral_worker_jobs",
    "Background jobs by status: todo (waiting, including scheduled), doing (running), failed (within the "
    "retention period)",
    ["status"],
)
WORKERS = Gauge("corral_worker_processes", "Worker processes with a recent heartbeat")

# Constants only in these f-strings (the schema name and a number).
_COUNTS = text(
    f"SELECT status::text AS status, count(*) AS n FROM {JOB_QUEUE_SCHEMA}.procrastinate_jobs "  # noqa: S608
    "WHERE status IN ('todo', 'doing', 'failed') GROUP BY status"
)
_WORKERS = text(
    f"SELECT count(*) FROM {JOB_QUEUE_SCHEMA}.procrastinate_workers "  # noqa: S608
    f"WHERE last_heartbeat > now() - interval '{ALIVE_SECONDS} seconds'"
)


async def queue_depth(engine: AsyncEngine) -> tuple[dict[str, int], int]:
    """Jobs per reported status (0 when none), and live workers."""
    async with engine.connect() as connection:
        rows = (await connection.execute(_COUNTS)).all()
        workers = int(await connection.scalar(_WORKERS) or 0)
    counts = dict.fromkeys(REPORTED_STATUSES, 0)
    counts.update({row.status: int(row.n) for row in rows})
    return counts, workers


async def refresh(engine: AsyncEngine) -> None:
    """Update the gauges; on a database error they keep their last values (and the error is logged)."""
    try:
        counts, workers = await queue_depth(engine)
    except Exception:
        log.warning("cannot read the job queue for /metrics", exc_info=True)
        return
    for status, n in counts.items():
        JOBS.labels(status=status).set(n)
    WORKERS.set(workers)
