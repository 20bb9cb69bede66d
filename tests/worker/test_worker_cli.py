"""`corral worker` as an operator runs it: a process against the test database that takes jobs, logs JSON and
stops cleanly on SIGTERM."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import time
from pathlib import Path

import asyncpg
from sqlalchemy import insert, select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from corral.checkin.auth import MAX_AGE
from corral.kit.time import utcnow
from corral.models import DeviceNonce
from corral.worker import tasks
from corral.worker.app import defer
from tests.conftest import Cluster, with_database
from tests.test_cli import CORRAL, corral, env_for
from tests.worker.conftest import QUIET, ago, fetch, make_device, wait_for_job


def worker_env(db_url: str, tmp_path: Path) -> dict[str, str]:
    quiet = {f"CORRAL_{name.upper()}": cron for name, cron in QUIET.items()}
    return env_for(db_url, tmp_path, CORRAL_LOG_JSON="true", CORRAL_WORKER_SHUTDOWN_SECONDS="5", **quiet)


async def wait_registered(db_url: str, proc: subprocess.Popen[str], timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise AssertionError(
                f"worker exited with {proc.returncode}: {proc.stderr.read() if proc.stderr else ''}"
            )
        if await fetch(db_url, "SELECT id FROM procrastinate.procrastinate_workers"):
            return
        await asyncio.sleep(0.2)
    raise AssertionError("the worker did not register")


async def test_worker_takes_a_deferred_job_and_stops_cleanly_on_sigterm(
    sessionmaker: async_sessionmaker[AsyncSession], db_url: str, tmp_path: Path
) -> None:
    device = await make_device(sessionmaker)
    now = utcnow()
    proc = subprocess.Popen(
        [*CORRAL, "worker", "--concurrency", "2"],
        env=worker_env(db_url, tmp_path),
        text=True,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    try:
        await wait_registered(db_url, proc)
        async with sessionmaker() as session:
            await session.execute(
                insert(DeviceNonce),
                [
                    {"device_id": device.id, "nonce": "old", "expires_at": ago(now, hours=1)},
                    {"device_id": device.id, "nonce": "live", "expires_at": now + MAX_AGE},
                ],
            )
            job_id = await defer(session, tasks.purge_device_nonces, timestamp=0)
            await session.commit()
        await wait_for_job(db_url, job_id)
    finally:
        proc.send_signal(signal.SIGTERM)
        _out, err = await asyncio.to_thread(proc.communicate, timeout=30)

    assert proc.returncode == 0, err
    async with sessionmaker() as session:
        assert (await session.scalars(select(DeviceNonce.nonce))).all() == ["live"]
    assert await fetch(db_url, "SELECT id FROM procrastinate.procrastinate_workers") == []
    lines = [json.loads(line) for line in err.splitlines() if line.startswith("{")]
    assert lines and len(lines) == len(err.splitlines()), err  # every line is JSON
    messages = {(line["msg"], line.get("request_id")) for line in lines}
    assert ("housekeeping: deleted 1 expired device nonces", f"job-{job_id}") in messages
    assert ("worker starting (concurrency 2)", None) in {(m, None) for m, _ in messages}
    assert any(msg == "worker stopped" for msg, _ in messages)


async def test_worker_refuses_an_unmigrated_database(cluster: Cluster, tmp_path: Path) -> None:
    name = f"empty_{os.getpid()}_{time.monotonic_ns()}"
    conn = await asyncpg.connect(cluster.admin_url)
    await conn.execute(f"CREATE DATABASE {name}")
    await conn.close()
    try:
        result = await asyncio.to_thread(
            corral, ["worker"], env_for(with_database(cluster.admin_url, name), tmp_path)
        )
    finally:
        conn = await asyncpg.connect(cluster.admin_url)
        await conn.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")
        await conn.close()
    assert result.returncode == 1
    assert "not current" in result.stderr and "corral db upgrade" in result.stderr
