"""Commands whose time ran out: one rule for closing them, used by the worker's housekeeping (and meant for
check-in, which closes a device's overdue commands when it calls)."""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import select, tuple_
from sqlalchemy.ext.asyncio import AsyncSession

from corral.audit.service import audit_service
from corral.devices.commands import REGISTRY
from corral.models import Device, DeviceCommand, ManagementState
from corral.models.device_command import OPEN_STATUSES, CommandStatus

# Open commands, and requests still waiting for a second administrator: both close at their deadline.
EXPIRABLE = (*OPEN_STATUSES, CommandStatus.pending_approval)
NOT_APPROVED_IN_TIME = "Not approved in time: never sent to the device."


def left_state(command: DeviceCommand, state: ManagementState) -> ManagementState | None:
    """The pending state (retire or wipe pending) a device in ``state`` leaves, managed again, when
    ``command`` expires: the one that command put it in, never reached. None when its state stays."""
    pending_state = REGISTRY[command.type].pending_state
    return pending_state if pending_state is not None and state == pending_state else None


def expire(command: DeviceCommand, device: Device, now: datetime) -> ManagementState | None:
    """Close an open command past its ``expires_at``. A command that put the device into a pending state
    (retire or wipe pending) and never reached it leaves the device managed again, as cancelling it does.
    Returns the state the device left, or None when its state did not change. The caller holds both rows
    locked (device first, then command: the order check-in and cancel take them)."""
    if command.status is CommandStatus.pending_approval:
        command.error = NOT_APPROVED_IN_TIME
    command.status = CommandStatus.expired
    command.completed_at = now
    left = left_state(command, device.management_state)
    if left is not None:
        device.management_state = ManagementState.managed
    return left


@dataclass
class ExpiryBatch:
    """What one call of :func:`expire_overdue` did; ``after`` is where the next batch starts."""

    considered: int = 0
    expired: int = 0
    devices_managed_again: int = 0
    after: tuple[datetime, uuid.UUID] | None = None
    skipped_busy: int = 0


async def expire_overdue(
    session: AsyncSession, now: datetime, *, limit: int, after: tuple[datetime, uuid.UUID] | None = None
) -> ExpiryBatch:
    """Expire up to ``limit`` open commands past their deadline, oldest deadline first, starting after the
    ``(expires_at, id)`` position ``after``. Devices busy in another transaction (a check-in, a cancel) are
    skipped, not waited for: that check-in closes their overdue commands itself, or a later run does. Flushes
    but does not commit; an audit event records every device that becomes managed again."""
    batch = ExpiryBatch()
    stmt = (
        select(DeviceCommand.id, DeviceCommand.device_id, DeviceCommand.expires_at)
        .where(DeviceCommand.status.in_(EXPIRABLE), DeviceCommand.expires_at <= now)
        .order_by(DeviceCommand.expires_at, DeviceCommand.id)
        .limit(limit)
    )
    if after is not None:
        stmt = stmt.where(tuple_(DeviceCommand.expires_at, DeviceCommand.id) > tuple_(*after))
    candidates = (await session.execute(stmt)).all()
    batch.considered = len(candidates)
    if not candidates:
        return batch
    batch.after = (candidates[-1].expires_at, candidates[-1].id)

    device_ids = sorted({row.device_id for row in candidates})
    devices = {
        device.id: device
        for device in await session.scalars(
            select(Device)
            .where(Device.id.in_(device_ids))
            .order_by(Device.id)
            .with_for_update(skip_locked=True)
        )
    }
    commands = list(
        await session.scalars(
            select(DeviceCommand)
            .where(
                DeviceCommand.id.in_([row.id for row in candidates]),
                DeviceCommand.device_id.in_(list(devices)),
                # Checked again under the lock: a check-in may have delivered or closed it meanwhile.
                DeviceCommand.status.in_(EXPIRABLE),
                DeviceCommand.expires_at <= now,
            )
            .order_by(DeviceCommand.created_at)
            .with_for_update(skip_locked=True)
        )
    )
    batch.skipped_busy = sum(1 for row in candidates if row.device_id not in devices)
    for command in commands:
        device = devices[command.device_id]
        previous = command.status
        left = expire(command, device, now)
        batch.expired += 1
        if left is not None:
            batch.devices_managed_again += 1
            await audit_service.record(
                session,
                activity="device.action.expire",
                category="remote_action",
                operation="update",
                target_type="device",
                target_id=device.id,
                target_name=device.name,
                changes=[
                    ("command", command.type, None),
                    ("status", previous.value, CommandStatus.expired.value),
                    ("management_state", left.value, ManagementState.managed.value),
                ],
                detail=f"The {REGISTRY[command.type].label.lower()} expired before the device received it.",
            )
    await session.flush()
    return batch
