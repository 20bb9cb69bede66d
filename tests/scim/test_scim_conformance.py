"""scim2-tester (the SCIM RFCs' conformance checks) against a live Corral server on loopback: no errors."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path

import httpx2
import pytest
from scim2_client.engines.httpx2 import SyncSCIMClient
from scim2_tester import Status, check_server
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from tests.live import LiveServer, start_live_server
from tests.scim.helpers import make_connection


@pytest.fixture
def live(tmp_path: Path, db_url: str) -> Iterator[LiveServer]:
    server = start_live_server(tmp_path, db_url)
    yield server
    server.stop()


def _run_checks(url: str, token: str) -> list[object]:
    with httpx2.Client(base_url=url, headers={"Authorization": f"Bearer {token}"}) as http:
        client = SyncSCIMClient(http)
        client.discover()
        return list(check_server(client))


async def test_scim2_tester_finds_no_errors(
    live: LiveServer, sessionmaker: async_sessionmaker[AsyncSession]
) -> None:
    connection = await make_connection(sessionmaker)
    results = await asyncio.to_thread(_run_checks, f"{live.url}/scim/v2", connection.token)
    errors = [r for r in results if r.status == Status.ERROR]  # type: ignore[attr-defined]
    summary = "\n".join(f"{r.title}: {r.reason}" for r in errors)  # type: ignore[attr-defined]
    print(
        f"scim2-tester: {len(results)} checks, "
        + ", ".join(
            f"{status.name.lower()} {sum(1 for r in results if r.status == status)}"  # type: ignore[attr-defined]
            for status in Status
        )
    )
    assert not errors, summary
    assert len(results) > 50
