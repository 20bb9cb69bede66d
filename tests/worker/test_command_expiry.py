"""Commands past their deadline expire; a retire or wipe that never reached its device gives it back."""

from __future__ import annotations

import asyncio
import uuid
from datetime import datetime, timedelta
from typing import Any

import httpx
from sqlalchemy import func, insert, select, update
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from corral.kit.time import utcnow
from corral.models import AuditEvent, Device, DeviceCommand, ManagementState
from corral.models.device_command import CommandStatus
from corral.worker import housekeeping
from tests.conftest import Admin, Factory
from tests.devices.device import TestDevice
from tests.devices.test_enrollment_and_checkin import enrolled
from tests.worker.conftest import ago, make_device


async def act(client: httpx.AsyncClient, admin: Admin, device: TestDevice, action: str, **body: Any) -> str:
    response = await client.post(
        f"/api/v1/devices/{device.device_id}/actions/{action}", json=body, headers=admin.headers
    )
    assert response.status_code == 202, response.text
    return str(response.json()["id"])


async def age(sessionmaker: async_sessionmaker[AsyncSession], command_id: str, by: timedelta) -> None:
    """Move a command's deadline into the past, as if its lifetime had run out."""
    async with sessionmaker() as session:
        await session.execute(
            update(DeviceCommand)
            .where(DeviceCommand.id == uuid.UUID(command_id))
            .values(expires_at=DeviceCommand.expires_at - by)
        )
        await session.commit()


async def state(sessionmaker: async_sessionmaker[AsyncSession], device: TestDevice) -> ManagementState:
    async with sessionmaker() as session:
        found = await session.scalar(select(Device.management_state).where(Device.id == device.device_id))
    assert found is not None
    return found


async def command(sessionmaker: async_sessionmaker[AsyncSession], command_id: str) -> DeviceCommand:
    async with sessionmaker() as session:
        found = await session.get(DeviceCommand, uuid.UUID(command_id))
    assert found is not None
    return found


async def test_a_retire_that_expired_before_delivery_leaves_the_device_managed(
    client: httpx.AsyncClient, factory: Factory, sessionmaker: async_sessionmaker[AsyncSession]
) -> None:
    admin = await factory.admin("Global administrator")
    device = await enrolled(client, admin)
    retire = await act(client, admin, device, "retire", reason="Left the company", confirm=device.name)
    assert await state(sessionmaker, device) is ManagementState.retire_pending
    await age(sessionmaker, retire, timedelta(days=31))

    outcome = await housekeeping.expire_commands(sessionmaker, batch=100)

    assert (outcome.expired, outcome.devices_managed_again) == (1, 1)
    expired = await command(sessionmaker, retire)
    assert expired.status is CommandStatus.expired and expired.completed_at is not None
    assert await state(sessionmaker, device) is ManagementState.managed
    async with sessionmaker() as session:
        event = await session.scalar(select(AuditEvent).where(AuditEvent.activity == "device.action.expire"))
    assert event is not None
    assert event.target_id == str(device.device_id)
    assert {c["name"]: (c["old"], c["new"]) for c in event.modified_properties}["management_state"] == (
        "retire_pending",
        "managed",
    )
    # The device can be given actions again; the expired retire is not delivered.
    assert (await device.checkin({})).json()["commands"] == []


async def test_a_retire_delivered_but_not_done_expires_and_the_device_stays_issued(
    client: httpx.AsyncClient, factory: Factory, sessionmaker: async_sessionmaker[AsyncSession]
) -> None:
    admin = await factory.admin("Global administrator")
    device = await enrolled(client, admin)
    retire = await act(client, admin, device, "retire", reason="Left the company", confirm=device.name)
    assert [c["id"] for c in (await device.checkin({})).json()["commands"]] == [retire]
    assert await state(sessionmaker, device) is ManagementState.retire_issued
    await age(sessionmaker, retire, timedelta(days=31))

    outcome = await housekeeping.expire_commands(sessionmaker, batch=100)

    assert (outcome.expired, outcome.devices_managed_again) == (1, 0)
    assert (await command(sessionmaker, retire)).status is CommandStatus.expired
    assert await state(sessionmaker, device) is ManagementState.retire_issued


async def test_a_wipe_never_approved_expires_and_the_device_is_managed_again(
    client: httpx.AsyncClient, factory: Factory, sessionmaker: async_sessionmaker[AsyncSession]
) -> None:
    admin = await factory.admin("Global administrator")
    device = await enrolled(client, admin)
    response = await client.patch(
        "/api/v1/settings", json={"wipe_requires_approval": True}, headers=admin.headers
    )
    assert response.status_code == 200, response.text
    wipe = await act(client, admin, device, "wipe", reason="Lost on a train", confirm=device.name)
    assert (await command(sessionmaker, wipe)).status is CommandStatus.pending_approval
    await age(sessionmaker, wipe, timedelta(days=31))

    outcome = await housekeeping.expire_commands(sessionmaker, batch=100)

    assert (outcome.expired, outcome.devices_managed_again) == (1, 1)
    expired = await command(sessionmaker, wipe)
    assert expired.status is CommandStatus.expired
    assert expired.error is not None and "Not approved in time" in expired.error
    assert await state(sessionmaker, device) is ManagementState.managed


async def test_only_open_commands_past_their_deadline_expire(
    client: httpx.AsyncClient, factory: Factory, sessionmaker: async_sessionmaker[AsyncSession]
) -> None:
    admin = await factory.admin("Global administrator")
    device = await enrolled(client, admin)
    overdue_lock = await act(client, admin, device, "lock")
    sent_sync = await act(client, admin, device, "sync")
    fresh_restart = await act(client, admin, device, "restart")
    done_lock = await act(client, admin, device, "lock", params={"message": "done"})
    await device.checkin({})  # all four sent
    await device.checkin({"command_results": [{"command_id": done_lock, "status": "succeeded"}]})
    for overdue in (overdue_lock, sent_sync, done_lock):
        await age(sessionmaker, overdue, timedelta(days=2))

    outcome = await housekeeping.expire_commands(sessionmaker, batch=100)

    assert (outcome.expired, outcome.devices_managed_again) == (2, 0)
    statuses = {
        c: (await command(sessionmaker, c)).status
        for c in (overdue_lock, sent_sync, fresh_restart, done_lock)
    }
    assert statuses == {
        overdue_lock: CommandStatus.expired,
        sent_sync: CommandStatus.expired,
        fresh_restart: CommandStatus.sent,
        done_lock: CommandStatus.succeeded,
    }
    assert await state(sessionmaker, device) is ManagementState.managed


async def _overdue_commands(
    sessionmaker: async_sessionmaker[AsyncSession], devices: int, per_device: int, now: datetime
) -> None:
    rows = []
    for d in range(devices):
        device = await make_device(sessionmaker, name=f"fleet-{d}")
        for n in range(per_device):
            rows.append(
                {
                    "id": uuid.uuid4(),
                    "device_id": device.id,
                    "type": "sync",
                    "params": {},
                    "status": CommandStatus.queued,
                    "created_at": ago(now, days=1, minutes=n),
                    "expires_at": ago(now, minutes=n + 1),
                }
            )
    async with sessionmaker() as session:
        await session.execute(insert(DeviceCommand), rows)
        await session.commit()


async def _count(sessionmaker: async_sessionmaker[AsyncSession], status: CommandStatus) -> int:
    async with sessionmaker() as session:
        query = select(func.count()).select_from(DeviceCommand).where(DeviceCommand.status == status)
        return int(await session.scalar(query) or 0)


async def test_expiry_works_through_a_backlog_in_batches(
    sessionmaker: async_sessionmaker[AsyncSession],
) -> None:
    now = utcnow()
    await _overdue_commands(sessionmaker, devices=7, per_device=9, now=now)

    outcome = await housekeeping.expire_commands(sessionmaker, batch=10, now=now)

    assert outcome.expired == 63 and outcome.skipped_busy == 0
    assert await _count(sessionmaker, CommandStatus.expired) == 63


async def test_a_device_busy_in_another_transaction_is_skipped_not_waited_for(
    sessionmaker: async_sessionmaker[AsyncSession],
) -> None:
    now = utcnow()
    await _overdue_commands(sessionmaker, devices=2, per_device=2, now=now)
    async with sessionmaker() as busy:
        first = await busy.scalar(select(Device).where(Device.name == "fleet-0").with_for_update())
        assert first is not None
        outcome = await asyncio.wait_for(housekeeping.expire_commands(sessionmaker, batch=10, now=now), 10)
        await busy.rollback()
    assert (outcome.expired, outcome.skipped_busy) == (2, 2)
    assert (await housekeeping.expire_commands(sessionmaker, batch=10, now=now)).expired == 2


async def test_two_expiry_runs_at_once_expire_each_command_once(
    sessionmaker: async_sessionmaker[AsyncSession],
) -> None:
    now = utcnow()
    await _overdue_commands(sessionmaker, devices=30, per_device=10, now=now)

    first, second = await asyncio.gather(
        housekeeping.expire_commands(sessionmaker, batch=25, now=now),
        housekeeping.expire_commands(sessionmaker, batch=25, now=now),
    )
    # A device one run holds is skipped by the other; whatever both happened to skip, the next run takes.
    last = await housekeeping.expire_commands(sessionmaker, batch=25, now=now)

    assert first.expired + second.expired + last.expired == 300  # none counted twice
    assert await _count(sessionmaker, CommandStatus.expired) == 300
    assert await _count(sessionmaker, CommandStatus.queued) == 0
