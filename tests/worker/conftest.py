"""Helpers for the worker tests: settings whose schedules stay quiet, and reading procrastinate's tables."""

from __future__ import annotations

import asyncio
import time
import uuid
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import asyncpg
import pytest
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from corral.config import Settings
from corral.kit.time import utcnow
from corral.models import Device, Ownership, Platform
from tests.conftest import _asyncpg_url, make_settings

# A schedule whose latest tick is always long past: a worker started in a test defers no periodic job
# (procrastinate ignores ticks more than 10 minutes old), so only the jobs a test defers run.
NEVER = "0 0 29 2 *"
QUIET = {name: NEVER for name in Settings.model_fields if name.endswith("_cron")}


@pytest.fixture
def quiet_settings(tmp_path: Path, db_url: str) -> Settings:
    return make_settings(tmp_path, db_url, **QUIET)


async def fetch(db_url: str, query: str, *args: Any) -> list[asyncpg.Record]:
    conn = await asyncpg.connect(_asyncpg_url(db_url))
    try:
        return list(await conn.fetch(query, *args))
    finally:
        await conn.close()


async def job_status(db_url: str, job_id: int) -> str | None:
    rows = await fetch(
        db_url, "SELECT status::text FROM procrastinate.procrastinate_jobs WHERE id = $1", job_id
    )
    return rows[0][0] if rows else None


async def wait_for_job(db_url: str, job_id: int, status: str = "succeeded", timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        current = await job_status(db_url, job_id)
        if current == status:
            return
        if current in {"failed", "aborted", "cancelled"} and current != status:
            raise AssertionError(f"job {job_id} ended {current}")
        await asyncio.sleep(0.1)
    raise AssertionError(
        f"job {job_id} is {await job_status(db_url, job_id)}, not {status}, after {timeout} s"
    )


async def make_device(
    sessionmaker: async_sessionmaker[AsyncSession], *, name: str | None = None, **values: Any
) -> Device:
    device = Device(
        id=uuid.uuid4(),
        name=name or f"device-{uuid.uuid4().hex[:6]}",
        serial_number=uuid.uuid4().hex[:12],
        platform=Platform.linux,
        ownership=Ownership.company,
        enrolled_at=utcnow(),
        **values,
    )
    async with sessionmaker() as session:
        session.add(device)
        await session.commit()
    return device


def ago(now: datetime, **delta: float) -> datetime:
    return now - timedelta(**delta)
