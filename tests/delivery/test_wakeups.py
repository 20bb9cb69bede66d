"""A change of what reaches a device, or of what it asks, wakes the device through the push hub's channel when
the change commits: one notification per device and transaction."""

from __future__ import annotations

import asyncio

import asyncpg
import httpx

from corral.push.hub import WAKE_CHANNEL
from tests.conftest import Factory, _asyncpg_url
from tests.devices.test_enrollment_and_checkin import enrolled


async def test_assigning_and_changing_a_profile_wakes_its_devices(
    client: httpx.AsyncClient, factory: Factory, db_url: str
) -> None:
    admin = await factory.admin()
    device = await enrolled(client, admin)
    other = await enrolled(client, admin)
    received: list[str] = []
    connection = await asyncpg.connect(_asyncpg_url(db_url))
    await connection.add_listener(WAKE_CHANNEL, lambda *args: received.append(args[3]))
    try:
        made = await client.post(
            "/api/v1/configuration-profiles",
            json={"name": "Banner", "platform": "linux", "settings": {"login_banner.text": "Hi"}},
            headers=admin.headers,
        )
        assert received == []  # not assigned: reaches nobody
        await client.put(
            f"/api/v1/configuration-profiles/{made.json()['id']}/assignments",
            json={"assignments": [{"target": "all_devices"}]},
            headers=admin.headers,
        )
        await asyncio.sleep(0.3)
        assert sorted(received) == sorted(f"{d.device_id}:desired_state" for d in (device, other))
        received.clear()
        await client.patch(
            f"/api/v1/configuration-profiles/{made.json()['id']}",
            json={"settings": {"login_banner.text": "Hello"}},
            headers=admin.headers,
        )
        await asyncio.sleep(0.3)
        assert sorted(received) == sorted(f"{d.device_id}:desired_state" for d in (device, other))
        received.clear()
        await client.patch(
            f"/api/v1/configuration-profiles/{made.json()['id']}",
            json={"description": "x"},
            headers=admin.headers,
        )
        await asyncio.sleep(0.3)
        assert received == []  # nothing a device applies changed
    finally:
        await connection.close()
