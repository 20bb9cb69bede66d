"""Every query on ``device_commands``. Locks are taken device first, then its commands (the order check-in,
the admin actions and expiry all use, so none of them can deadlock with another)."""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from datetime import datetime
from typing import Any, cast

from sqlalchemy import (
    ColumnElement,
    Select,
    and_,
    bindparam,
    case,
    exists,
    func,
    insert,
    select,
    tuple_,
    update,
)
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm import selectinload

from corral.devices.repository import scoped, with_member_of
from corral.models import CommandStatus, Device, DeviceCommand
from corral.models.device_command import OPEN_STATUSES, WAITING_STATUSES
from corral.rbac.principal import Scope

NOT_APPROVED_IN_TIME = "Not approved in time: never sent to the device."

# Whether commands wait for the device, as a column of the check-in's certificate lookup (checkin/auth.py).
# The statuses are rendered as literals: PostgreSQL can then always use the partial index
# ix_device_commands_pending.
PENDING_FOR_DEVICE = exists().where(
    DeviceCommand.device_id == Device.id,
    DeviceCommand.status.in_(
        bindparam("open_statuses", [s.value for s in OPEN_STATUSES], expanding=True, literal_execute=True)
    ),
)


async def has_open(session: AsyncSession, device_id: uuid.UUID) -> bool:
    """Whether commands wait for the device (queued, sent and unacknowledged, or answered "not now")."""
    stmt = select(
        exists().where(DeviceCommand.device_id == device_id, DeviceCommand.status.in_(OPEN_STATUSES))
    )
    return bool(await session.scalar(stmt))


# ------------------------------------------------------------------------------------------- one device
async def get(
    session: AsyncSession, device_id: uuid.UUID, command_id: uuid.UUID, *, for_update: bool = False
) -> DeviceCommand | None:
    """The device's command (locked with ``for_update``: take the device's lock first)."""
    stmt = select(DeviceCommand).where(DeviceCommand.id == command_id, DeviceCommand.device_id == device_id)
    if for_update:
        stmt = stmt.with_for_update().execution_options(populate_existing=True)
    result: DeviceCommand | None = await session.scalar(stmt)
    return result


async def history(session: AsyncSession, device_id: uuid.UUID, limit: int) -> list[DeviceCommand]:
    """The device's commands, newest first."""
    stmt = (
        select(DeviceCommand)
        .where(DeviceCommand.device_id == device_id)
        .order_by(DeviceCommand.created_at.desc())
        .limit(limit)
    )
    return list((await session.scalars(stmt)).all())


async def by_idempotency_key(
    session: AsyncSession, requested_by_id: uuid.UUID, key: str
) -> DeviceCommand | None:
    stmt = select(DeviceCommand).where(
        DeviceCommand.requested_by_id == requested_by_id, DeviceCommand.idempotency_key == key
    )
    result: DeviceCommand | None = await session.scalar(stmt)
    return result


async def waiting(
    session: AsyncSession, device_id: uuid.UUID, statuses: Sequence[CommandStatus] = OPEN_STATUSES
) -> list[DeviceCommand]:
    """The device's commands in ``statuses``, oldest first, locked (the device's lock taken first)."""
    stmt = (
        select(DeviceCommand)
        .where(DeviceCommand.device_id == device_id, DeviceCommand.status.in_(statuses))
        .order_by(DeviceCommand.created_at)
        .with_for_update()
    )
    return list((await session.scalars(stmt)).all())


async def of_device(
    session: AsyncSession, device_id: uuid.UUID, command_ids: Sequence[uuid.UUID]
) -> dict[uuid.UUID, DeviceCommand]:
    """Those of the commands that are the device's, locked, by id."""
    stmt = (
        select(DeviceCommand)
        .where(DeviceCommand.id.in_(command_ids), DeviceCommand.device_id == device_id)
        .with_for_update()
    )
    return {command.id: command for command in (await session.scalars(stmt)).all()}


# ------------------------------------------------------------------------------------------- many devices
async def insert_many(session: AsyncSession, rows: Sequence[dict[str, Any]]) -> None:
    """New commands (their columns), one statement for any number."""
    if rows:
        await session.execute(insert(DeviceCommand), list(rows))


async def close_expired(session: AsyncSession, command_ids: Sequence[uuid.UUID], now: datetime) -> None:
    """Close commands found past their deadline (locked) as expiry does: one statement for any number."""
    if command_ids:
        await session.execute(
            update(DeviceCommand)
            .where(DeviceCommand.id.in_(command_ids))
            .values(
                status=CommandStatus.expired,
                completed_at=now,
                error=case(
                    (DeviceCommand.status == CommandStatus.pending_approval, NOT_APPROVED_IN_TIME),
                    else_=DeviceCommand.error,
                ),
            )
            .execution_options(synchronize_session=False)
        )


async def overdue_approvals(
    session: AsyncSession, device_ids: Sequence[uuid.UUID], now: datetime
) -> list[DeviceCommand]:
    """The devices' requests still waiting for approval past their deadline, by device then oldest first,
    locked (take the devices' locks first)."""
    if not device_ids:
        return []
    stmt = (
        select(DeviceCommand)
        .where(
            DeviceCommand.device_id.in_(device_ids),
            DeviceCommand.status == CommandStatus.pending_approval,
            DeviceCommand.expires_at <= now,
        )
        .order_by(DeviceCommand.device_id, DeviceCommand.created_at, DeviceCommand.id)
        .with_for_update()
    )
    return list((await session.scalars(stmt)).all())


async def pending_approvals(
    session: AsyncSession, scopes: tuple[Scope, ...], now: datetime, limit: int
) -> list[tuple[DeviceCommand, Device]]:
    """Requests waiting for approval, oldest first, on devices inside every one of ``scopes``; those past
    their deadline are left out (they expire)."""
    stmt = (
        with_member_of(cast("Select[Any]", select(DeviceCommand, Device)))
        .join(Device, Device.id == DeviceCommand.device_id)
        .options(selectinload(Device.scope_tags))
        .where(DeviceCommand.status == CommandStatus.pending_approval, DeviceCommand.expires_at > now)
        .order_by(DeviceCommand.created_at, DeviceCommand.id)
        .limit(limit)
    )
    for scope in scopes:
        stmt = scoped(stmt, scope)
    return [(row[0], row[1]) for row in (await session.execute(stmt)).all()]


# ------------------------------------------------------------------------------------------- expiry
async def overdue(
    session: AsyncSession, now: datetime, limit: int, after: tuple[datetime, uuid.UUID] | None
) -> list[tuple[uuid.UUID, uuid.UUID, datetime]]:
    """(id, device id, deadline) of up to ``limit`` waiting commands past their deadline, oldest deadline
    first, after the ``(expires_at, id)`` position ``after``; nothing locked."""
    stmt = (
        select(DeviceCommand.id, DeviceCommand.device_id, DeviceCommand.expires_at)
        .where(DeviceCommand.status.in_(WAITING_STATUSES), DeviceCommand.expires_at <= now)
        .order_by(DeviceCommand.expires_at, DeviceCommand.id)
        .limit(limit)
    )
    if after is not None:
        stmt = stmt.where(tuple_(DeviceCommand.expires_at, DeviceCommand.id) > tuple_(*after))
    return [(row[0], row[1], row[2]) for row in (await session.execute(stmt)).all()]


async def lock_overdue(
    session: AsyncSession, command_ids: Sequence[uuid.UUID], device_ids: Sequence[uuid.UUID], now: datetime
) -> list[DeviceCommand]:
    """Those of the commands, of the devices (locked by the caller), still waiting past their deadline,
    locked, oldest first; a command another transaction holds is skipped."""
    stmt = (
        select(DeviceCommand)
        .where(
            DeviceCommand.id.in_(command_ids),
            DeviceCommand.device_id.in_(device_ids),
            # Checked again under the lock: a check-in may have delivered or closed it meanwhile.
            DeviceCommand.status.in_(WAITING_STATUSES),
            DeviceCommand.expires_at <= now,
        )
        .order_by(DeviceCommand.created_at)
        .with_for_update(skip_locked=True)
    )
    return list((await session.scalars(stmt)).all())


# ------------------------------------------------------------------------------------------- bulk actions
def effective_status() -> ColumnElement[Any]:
    """A command still waiting past its deadline counts as expired: check-in or the worker closes it as such,
    and a device that never comes back must not keep a bulk action open for ever."""
    return case(
        (
            and_(DeviceCommand.status.in_(WAITING_STATUSES), DeviceCommand.expires_at <= func.now()),
            CommandStatus.expired.value,
        ),
        else_=DeviceCommand.status,
    )


async def bulk_counts(
    session: AsyncSession, bulk_ids: Sequence[uuid.UUID]
) -> dict[uuid.UUID, list[tuple[str, bool, int]]]:
    """(effective status, before its deadline, count) of the bulk actions' commands, in one GROUP BY."""
    if not bulk_ids:
        return {}
    # The state is computed in a subquery: grouping by an expression with bound parameters in it would not
    # match the same expression in the select list (each copy gets parameters of its own).
    inner = (
        select(
            DeviceCommand.bulk_action_id.label("bulk_action_id"),
            effective_status().label("state"),
            (DeviceCommand.expires_at > func.now()).label("live"),
        )
        .where(DeviceCommand.bulk_action_id.in_(bulk_ids))
        .subquery()
    )
    stmt = select(inner.c.bulk_action_id, inner.c.state, inner.c.live, func.count()).group_by(
        inner.c.bulk_action_id, inner.c.state, inner.c.live
    )
    out: dict[uuid.UUID, list[tuple[str, bool, int]]] = {}
    for bulk_id, state, is_live, n in (await session.execute(stmt)).all():
        out.setdefault(bulk_id, []).append((str(state), bool(is_live), int(n)))
    return out


async def bulk_items(session: AsyncSession, bulk_id: uuid.UUID, scope: Scope) -> list[Any]:
    """(device id, device name, command id, effective status, error, sent at, completed at) of the bulk
    action's commands on devices in ``scope``, by device name."""
    stmt = scoped(
        select(
            Device.id,
            Device.name,
            DeviceCommand.id,
            effective_status(),
            DeviceCommand.error,
            DeviceCommand.sent_at,
            DeviceCommand.completed_at,
        ).join(DeviceCommand, DeviceCommand.device_id == Device.id),
        scope,
    )
    stmt = stmt.where(DeviceCommand.bulk_action_id == bulk_id).order_by(func.lower(Device.name), Device.id)
    return list((await session.execute(stmt)).all())


async def bulk_undelivered(
    session: AsyncSession, bulk_id: uuid.UUID, statuses: Sequence[CommandStatus]
) -> list[tuple[uuid.UUID, uuid.UUID]]:
    """(device id, command id) of the bulk action's commands in ``statuses``, by device."""
    stmt = (
        select(DeviceCommand.device_id, DeviceCommand.id)
        .where(DeviceCommand.bulk_action_id == bulk_id, DeviceCommand.status.in_(statuses))
        .order_by(DeviceCommand.device_id)
    )
    return [(row[0], row[1]) for row in (await session.execute(stmt)).all()]
