"""Desired-state versions: every kind of change moves a device's version forward, and assigning an object to
many devices at once writes no per-device version row (the targets carry it)."""

from __future__ import annotations

import uuid

import httpx
from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from corral.models import DeviceDesiredState
from tests.assignments.helpers import group_target, make_policy, put_assignments, version
from tests.conftest import Factory
from tests.groups.helpers import add, create_group, insert_devices, remove


async def own_rows(sessionmaker: async_sessionmaker[AsyncSession], *device_ids: uuid.UUID) -> int:
    async with sessionmaker() as session:
        return int(
            await session.scalar(
                select(func.count())
                .select_from(DeviceDesiredState)
                .where(DeviceDesiredState.device_id.in_(device_ids))
            )
            or 0
        )


async def test_every_kind_of_change_moves_the_version_forward_and_assigning_writes_no_row_per_device(
    client: httpx.AsyncClient, factory: Factory, sessionmaker: async_sessionmaker[AsyncSession]
) -> None:
    admin = await factory.admin()
    fleet = await create_group(client, admin, "Fleet")
    a, b = await insert_devices(sessionmaker, [{"name": "a"}, {"name": "b"}])
    for device in (a, b):
        assert (await add(client, admin, fleet["id"], "device", device)).status_code == 201
    policy = await make_policy(sessionmaker, "Baseline")
    seen = {a: [await version(sessionmaker, a)], b: [await version(sessionmaker, b)]}
    assert seen == {a: [0], b: [0]}  # nothing assigned yet

    async def moved(*devices: uuid.UUID) -> None:
        """Exactly these devices have a new version, greater than each one they had."""
        for device in (a, b):
            now = await version(sessionmaker, device)
            if device in devices:
                assert now > max(seen[device]), (device, now, seen[device])
            else:
                assert now == seen[device][-1], (device, now, seen[device])
            seen[device].append(now)

    # Assigned to the group (an object-wide recompute): both move, through their targets alone.
    assert (await put_assignments(client, admin, policy, [group_target(fleet["id"])])).status_code == 200
    await moved(a, b)
    assert await own_rows(sessionmaker, a, b) == 0

    # What the policy asks changes: both move (each with a row of its own).
    response = await client.patch(
        f"/api/v1/compliance-policies/{policy}",
        json={"settings": {"firewall.required": True, "os.min_version": "10.0.22631"}},
        headers=admin.headers,
    )
    assert response.status_code == 200, response.text
    await moved(a, b)
    assert await own_rows(sessionmaker, a, b) == 2

    # One device leaves the group (a change of that device): only it moves, with a row of its own.
    assert (await remove(client, admin, fleet["id"], "device", b)).status_code == 204
    await moved(b)

    # The assignment goes (object-wide, a loss of targets): the device that had it moves.
    assert (await put_assignments(client, admin, policy, [])).status_code == 200
    await moved(a)
    # And comes back; then the device rejoins and is reached again.
    assert (await put_assignments(client, admin, policy, [group_target(fleet["id"])])).status_code == 200
    await moved(a)
    assert (await add(client, admin, fleet["id"], "device", b)).status_code == 201
    await moved(b)
    # Deleting the policy is a loss of targets for the device it reaches.
    response = await client.delete(f"/api/v1/compliance-policies/{policy}", headers=admin.headers)
    assert response.status_code == 204, response.text
    await moved(a, b)
