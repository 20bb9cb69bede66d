"""Worker jobs of compliance: evaluating many devices after a change, and the periodic, time-driven
evaluation (grace periods, validity period, overrides) with the noncompliance actions that fall due."""

from __future__ import annotations

import logging
import uuid
from collections.abc import Sequence
from typing import Any

from procrastinate import JobContext
from procrastinate.types import JSONValue
from sqlalchemy.ext.asyncio import AsyncSession

from corral.compliance.service import compliance_service
from corral.kit import context
from corral.worker.app import app, defer, resources

log = logging.getLogger("corral.compliance")

#: Devices per evaluation job.
CHUNK = 5000


@app.task(name="compliance.evaluate", pass_context=True)
async def evaluate(context_: JobContext, device_ids: list[str]) -> int:
    """Evaluate these devices in a transaction of its own (safe to repeat)."""
    ids = [uuid.UUID(i) for i in device_ids]
    async with resources(context_).sessionmaker() as session:
        changed = await compliance_service.evaluate(session, ids)
        await session.commit()
    log.info("compliance: evaluated %d devices, %d changed state", len(ids), len(changed))
    return len(changed)


async def defer_evaluation(session: AsyncSession, device_ids: Sequence[uuid.UUID]) -> None:
    """Queue evaluations in the caller's transaction, CHUNK devices per job."""
    ids = sorted({str(i) for i in device_ids})
    for start in range(0, len(ids), CHUNK):
        args: list[JSONValue] = list(ids[start : start + CHUNK])
        await defer(session, evaluate, device_ids=args)


@app.task(
    name="compliance.evaluate_due",
    queue="housekeeping",
    lock="compliance.evaluate_due",
    queueing_lock="compliance.evaluate_due",
    pass_context=True,
)
async def evaluate_due(context_: JobContext, timestamp: int) -> dict[str, Any]:
    """Every few minutes: devices whose state changes with time alone, then the ladder steps due."""
    from corral.compliance.ladder import run_due_steps

    res = resources(context_)
    context.set_current(
        context.RequestContext(correlation_id=f"compliance-{timestamp}", actor=context.SYSTEM)
    )
    async with res.sessionmaker() as session:
        changed = await compliance_service.evaluate_due(session)
        await session.commit()
    steps = await run_due_steps(res.sessionmaker, res.settings)
    log.info("compliance: %d devices changed state with time, %d actions taken", len(changed), steps)
    return {"changed": len(changed), "steps": steps}
