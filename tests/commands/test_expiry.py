"""One expiry rule, whoever finds a command past its deadline: the worker's housekeeping or the device's own
check-in. Both close the command the same way, give back a device only from the pending state that command
put it in, and record that in the audit log as Corral's doing."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from datetime import timedelta

import httpx
import pytest
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from corral.models import AuditEvent, ManagementState
from corral.models.device_command import CommandStatus
from corral.worker import housekeeping
from tests.conftest import Factory
from tests.devices.device import TestDevice
from tests.devices.test_enrollment_and_checkin import enrolled
from tests.worker.test_command_expiry import act, age, command, state

Sessionmaker = async_sessionmaker[AsyncSession]
Finder = Callable[[Sessionmaker, TestDevice], Awaitable[None]]


async def by_the_worker(sessionmaker: Sessionmaker, device: TestDevice) -> None:
    await housekeeping.expire_commands(sessionmaker, batch=100)


async def by_a_checkin(sessionmaker: Sessionmaker, device: TestDevice) -> None:
    response = await device.checkin({})
    assert response.status_code == 200, response.text
    assert response.json()["commands"] == []  # an expired command is never delivered


FINDERS = [pytest.param(by_the_worker, id="worker"), pytest.param(by_a_checkin, id="checkin")]


async def expiry_events(sessionmaker: Sessionmaker) -> list[AuditEvent]:
    async with sessionmaker() as session:
        stmt = select(AuditEvent).where(AuditEvent.activity == "device.action.expire")
        return list((await session.scalars(stmt)).all())


@pytest.mark.parametrize("expire", FINDERS)
async def test_a_retire_never_delivered_gives_the_device_back_with_an_audit_event(
    client: httpx.AsyncClient, factory: Factory, sessionmaker: Sessionmaker, expire: Finder
) -> None:
    admin = await factory.admin("Global administrator")
    device = await enrolled(client, admin)
    retire = await act(client, admin, device, "retire", reason="Left the company", confirm=device.name)
    assert await state(sessionmaker, device) is ManagementState.retire_pending
    await age(sessionmaker, retire, timedelta(days=31))

    await expire(sessionmaker, device)

    assert (await command(sessionmaker, retire)).status is CommandStatus.expired
    assert await state(sessionmaker, device) is ManagementState.managed
    [event] = await expiry_events(sessionmaker)
    # Corral's rule did it, not the device whose check-in found the command overdue.
    assert (event.target_id, event.actor_type) == (str(device.device_id), "system")
    changes = {c["name"]: (c["old"], c["new"]) for c in event.modified_properties}
    assert changes["management_state"] == ("retire_pending", "managed")
    assert changes["status"] == ("queued", "expired")


@pytest.mark.parametrize("expire", FINDERS)
async def test_a_retire_delivered_but_never_done_expires_and_the_device_stays_issued(
    client: httpx.AsyncClient, factory: Factory, sessionmaker: Sessionmaker, expire: Finder
) -> None:
    admin = await factory.admin("Global administrator")
    device = await enrolled(client, admin)
    retire = await act(client, admin, device, "retire", reason="Left the company", confirm=device.name)
    assert [c["id"] for c in (await device.checkin({})).json()["commands"]] == [retire]
    assert await state(sessionmaker, device) is ManagementState.retire_issued
    await age(sessionmaker, retire, timedelta(days=31))

    await expire(sessionmaker, device)

    assert (await command(sessionmaker, retire)).status is CommandStatus.expired
    # The device may have taken it: it is not handed back as if nothing had been sent.
    assert await state(sessionmaker, device) is ManagementState.retire_issued
    assert await expiry_events(sessionmaker) == []
