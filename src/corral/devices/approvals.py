"""Multi administrator approval of wipes: the queries behind it (the rules are in ``DeviceService``).

With the tenant setting ``wipe_requires_approval`` on, a wipe is created ``pending_approval``: check-in never
delivers it (it reads only the open statuses) until a second administrator holding ``remote:approve`` over the
device approves it (then it is queued like any other command) or rejects it (then it is canceled)."""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from datetime import datetime
from typing import Any, cast

from sqlalchemy import Select, select
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm import selectinload

from corral.devices.expiry import NOT_APPROVED_IN_TIME as APPROVAL_ERROR_EXPIRED
from corral.devices.repository import scoped, with_member_of
from corral.models import CommandStatus, Device, DeviceCommand
from corral.rbac.principal import Scope

# The remote actions that the tenant setting puts behind a second administrator.
APPROVAL_TYPES = frozenset({"wipe"})
__all__ = ["APPROVAL_ERROR_EXPIRED", "APPROVAL_TYPES", "overdue", "pending"]
MAX_LISTED = 500


async def pending(
    session: AsyncSession, scopes: tuple[Scope, ...], now: datetime, limit: int = MAX_LISTED
) -> list[tuple[DeviceCommand, Device]]:
    """Requests waiting for approval, oldest first, on devices inside every one of ``scopes`` (the caller's
    read scope and approval scope); those past their deadline are left out (they expire, see ``overdue``)."""
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


async def overdue(
    session: AsyncSession, device_ids: Sequence[uuid.UUID], now: datetime
) -> list[DeviceCommand]:
    """The devices' requests still waiting for approval past their deadline, by device then oldest first,
    locked (take the devices' locks first, as check-in and cancel do)."""
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
