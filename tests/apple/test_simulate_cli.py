"""`corral simulate --platform ios`: simulated iPhones enroll against a running Corral over HTTP with Apple's
protocol (profile, SCEP, Authenticate, TokenUpdate) and answer the inventory queries; the command line a demo
or a load test runs."""

from __future__ import annotations

import asyncio
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from corral.models import AppleEnrollment, Device
from corral.rbac.roles import GLOBAL_ADMINISTRATOR
from tests.apple.support import apple_token, set_up_push_certificate
from tests.conftest import Factory
from tests.live import LiveServer, start_live_server


@pytest.fixture
def live(tmp_path: Path, db_url: str) -> Iterator[LiveServer]:
    server = start_live_server(tmp_path, db_url, apple_allow_http=True)
    yield server
    server.stop()


async def test_simulated_iphones_enroll_and_report_inventory(
    live: LiveServer, tmp_path: Path, factory: Factory, sessionmaker: async_sessionmaker[AsyncSession]
) -> None:
    async with httpx.AsyncClient(base_url=live.url, timeout=30) as client:
        admin = await factory.admin(GLOBAL_ADMINISTRATOR.name)
        await set_up_push_certificate(client, admin)
        secret = await apple_token(client, admin)
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "corral.cli", "simulate",
        "--url", live.url, "--token", secret, "--devices", "3", "--platform", "ios",
        "--duration", "3", "--connect-interval", "1",
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )  # fmt: skip
    output, _ = await asyncio.wait_for(process.communicate(), timeout=60)
    text = output.decode()
    assert process.returncode == 0, text
    assert "3/3 enrolled" in text and "0 errors" in text, text
    async with sessionmaker() as session:
        rows = (await session.execute(select(Device, AppleEnrollment).join(AppleEnrollment))).all()
    assert len(rows) == 3
    for device, enrollment in rows:
        assert device.platform == "ios" and enrollment.push_state == "ok"
        assert device.inventory["os"]["name"] == "iOS"  # the inventory queries were answered
