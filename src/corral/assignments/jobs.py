"""Worker jobs of the assignment engine: recomputing objects that reach many devices."""

from __future__ import annotations

import contextlib
import hashlib
import logging
import uuid
from collections.abc import Sequence

from procrastinate import JobContext
from procrastinate.exceptions import AlreadyEnqueued
from procrastinate.types import JSONValue
from sqlalchemy.ext.asyncio import AsyncSession

from corral.assignments import engine
from corral.worker.app import app, defer, resources

log = logging.getLogger("corral.assignments")


@app.task(name="assignments.recompute", pass_context=True)
async def recompute(context: JobContext, object_ids: list[str]) -> int:
    """Bring the targets of these objects up to date, in a transaction of its own (safe to repeat)."""
    ids = [uuid.UUID(i) for i in object_ids]
    async with resources(context).sessionmaker() as session:
        changed = await engine.recompute_objects(session, ids)
        await session.commit()
    log.info("assignments: recomputed %d objects, %d devices changed", len(ids), len(changed))
    return len(changed)


async def defer_recompute(session: AsyncSession, object_ids: Sequence[uuid.UUID]) -> None:
    """Queue a recompute in the caller's transaction (one waiting job per set of objects)."""
    ids = sorted({str(i) for i in object_ids})
    lock = "assignments.recompute:" + hashlib.sha256(",".join(ids).encode()).hexdigest()[:32]
    args: list[JSONValue] = list(ids)
    # A job already waiting for the same objects will see this change too: it reads everything when it runs.
    with contextlib.suppress(AlreadyEnqueued):
        await defer(session, recompute.configure(queueing_lock=lock), object_ids=args)
