"""Corral itself queues commands (a compliance step, a tenant policy) through the same path as administrators:
no principal, a reason audited, the device's rules still checked, and at most once per idempotency key."""

from __future__ import annotations

import uuid
from typing import Any

import httpx
import pytest
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from corral.commands.service import CommandRequest, System, command_service
from corral.errors import Conflict, CorralError, NotFound, ValidationFailed
from corral.kit import context
from corral.models import AuditEvent, DeviceCommand, ManagementState
from corral.models.device_command import CommandStatus
from corral.rbac.principal import SYSTEM_USER_ID
from tests.conftest import Factory
from tests.devices.device import TestDevice
from tests.devices.test_enrollment_and_checkin import enrolled
from tests.worker.test_command_expiry import state

Sessionmaker = async_sessionmaker[AsyncSession]
COMPLIANCE = System("Corral (compliance: Disk encryption)")


async def queue(
    sessionmaker: Sessionmaker, device: TestDevice | str, type_: str, **request: Any
) -> tuple[DeviceCommand, bool]:
    """As the worker would: its own transaction, no request, the system actor."""
    context.set_current(context.RequestContext(correlation_id="worker", actor=context.SYSTEM))
    device_id = uuid.UUID(device if isinstance(device, str) else str(device.device_id))
    request.setdefault("params", {})
    async with sessionmaker() as session:
        command, created = await command_service.queue(
            session, COMPLIANCE, device_id, CommandRequest(type=type_, **request)
        )
        await session.commit()
    return command, created


async def commands_of(sessionmaker: Sessionmaker, device: TestDevice) -> list[DeviceCommand]:
    async with sessionmaker() as session:
        stmt = select(DeviceCommand).where(DeviceCommand.device_id == uuid.UUID(str(device.device_id)))
        return list((await session.scalars(stmt)).all())


async def test_corral_locks_a_device_with_an_audited_reason_and_the_device_gets_it(
    client: httpx.AsyncClient, factory: Factory, sessionmaker: Sessionmaker
) -> None:
    admin = await factory.admin("Global administrator")
    device = await enrolled(client, admin)

    command, created = await queue(
        sessionmaker,
        device,
        "lock",
        params={"message": "Encrypt your disk"},
        reason="Noncompliant for 3 days",
        idempotency_key="compliance:episode-1:lock",
    )

    assert created and command.status is CommandStatus.queued
    assert (command.requested_by_id, command.requested_by_name) == (SYSTEM_USER_ID, COMPLIANCE.name)
    assert command.reason == "Noncompliant for 3 days"
    async with sessionmaker() as session:
        event = await session.scalar(select(AuditEvent).where(AuditEvent.activity == "device.action.lock"))
    assert event is not None and event.actor_type == "system" and event.target_id == str(device.device_id)
    assert event.detail == "Noncompliant for 3 days"
    assert {"name": "requested_by", "old": None, "new": COMPLIANCE.name} in event.modified_properties
    delivered = (await device.checkin({})).json()["commands"]
    assert [(c["id"], c["type"], c["params"]) for c in delivered] == [
        (str(command.id), "lock", {"message": "Encrypt your disk"})
    ]


async def test_the_same_key_queues_at_most_once_whatever_became_of_the_first(
    client: httpx.AsyncClient, factory: Factory, sessionmaker: Sessionmaker
) -> None:
    admin = await factory.admin("Global administrator")
    device, other = await enrolled(client, admin), await enrolled(client, admin)
    key = "compliance:episode-7:sync"
    first, created = await queue(sessionmaker, device, "sync", reason="Step one", idempotency_key=key)
    assert created
    delivered = (await device.checkin({})).json()["commands"]
    done = [{"command_id": delivered[0]["id"], "status": "succeeded"}]
    assert (await device.checkin({"command_results": done})).status_code == 200

    again, created = await queue(sessionmaker, device, "sync", reason="Step one", idempotency_key=key)

    assert (again.id, created, again.status) == (first.id, False, CommandStatus.succeeded)
    assert len(await commands_of(sessionmaker, device)) == 1
    with pytest.raises(Conflict):
        await queue(sessionmaker, other, "sync", reason="Step one", idempotency_key=key)
    # An administrator's key of the same text is theirs, not Corral's.
    response = await client.post(
        f"/api/v1/devices/{device.device_id}/actions/sync",
        json={"idempotency_key": key},
        headers=admin.headers,
    )
    assert response.status_code == 202 and response.json()["id"] != str(first.id)


@pytest.mark.parametrize(
    ("type_", "request_", "error", "message"),
    [
        ("lock", {}, ValidationFailed, "needs a reason"),
        ("lock", {"reason": "  no  "}, ValidationFailed, "needs a reason"),
        (
            "lost_mode_on",
            {"reason": "Lost on a train", "params": {"message": "x"}},
            ValidationFailed,
            "linux",
        ),
        ("lock", {"reason": "Noncompliant", "params": {"colour": "red"}}, ValidationFailed, "params.colour"),
        ("teleport", {"reason": "Noncompliant"}, NotFound, "no remote action named"),
    ],
)
async def test_corral_is_refused_what_the_device_cannot_take_and_nothing_is_written(
    client: httpx.AsyncClient,
    factory: Factory,
    sessionmaker: Sessionmaker,
    type_: str,
    request_: dict[str, Any],
    error: type[CorralError],
    message: str,
) -> None:
    admin = await factory.admin("Global administrator")
    device = await enrolled(client, admin)
    with pytest.raises(error, match=message):
        await queue(sessionmaker, device, type_, **request_)
    assert await commands_of(sessionmaker, device) == []


async def test_corral_retires_without_a_typed_confirmation_and_an_unknown_device_is_not_found(
    client: httpx.AsyncClient, factory: Factory, sessionmaker: Sessionmaker
) -> None:
    admin = await factory.admin("Global administrator")
    device = await enrolled(client, admin)

    retire, _created = await queue(sessionmaker, device, "retire", reason="Noncompliant for 30 days")

    assert retire.status is CommandStatus.queued
    assert await state(sessionmaker, device) is ManagementState.retire_pending
    with pytest.raises(Conflict, match="already under way"):
        await queue(sessionmaker, device, "retire", reason="Noncompliant for 31 days")
    with pytest.raises(NotFound):
        await queue(sessionmaker, str(uuid.uuid4()), "lock", reason="Noncompliant")


async def test_nothing_is_queued_when_the_callers_transaction_rolls_back(
    client: httpx.AsyncClient, factory: Factory, sessionmaker: Sessionmaker
) -> None:
    admin = await factory.admin("Global administrator")
    device = await enrolled(client, admin)
    async with sessionmaker() as session:
        await command_service.queue(
            session,
            COMPLIANCE,
            uuid.UUID(str(device.device_id)),
            CommandRequest("sync", {}, reason="Step one"),
        )
        await session.rollback()
    assert await commands_of(sessionmaker, device) == []
    assert (await device.checkin({})).json()["commands"] == []
