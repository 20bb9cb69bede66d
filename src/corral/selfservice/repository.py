from __future__ import annotations

import uuid
from collections.abc import Sequence

from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncSession

from corral.models import Device, ManagementState

# Retired and wiped records are history: Corral no longer manages those devices for anyone.
GONE = (ManagementState.retired, ManagementState.wiped)


async def devices_of(session: AsyncSession, user_id: uuid.UUID) -> Sequence[Device]:
    """The devices whose primary user is ``user_id`` and that are still managed (or being retired or
    wiped), by name."""
    stmt = (
        select(Device)
        .where(Device.user_id == user_id, Device.management_state.not_in(GONE))
        .order_by(func.lower(Device.name), Device.id)
    )
    return (await session.scalars(stmt)).all()
