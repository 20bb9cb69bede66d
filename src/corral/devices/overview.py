"""The dashboard's device figures, within the reader's device scope: devices by platform and by compliance
state, and how many checked in on each of the last days."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date, timedelta
from typing import Any, cast

from sqlalchemy import Select, func, select
from sqlalchemy.ext.asyncio import AsyncSession

from corral.devices.repository import scoped
from corral.models import ComplianceState, Device, ManagementState, Platform, device_checkin_days
from corral.rbac.principal import Scope

#: Retired and wiped devices are history, not the fleet.
ENDED = (ManagementState.retired, ManagementState.wiped)


@dataclass(frozen=True)
class DeviceOverview:
    total: int
    by_platform: dict[Platform, int]
    by_compliance: dict[ComplianceState, int]
    #: (day, devices that checked in that day), oldest first, ``days`` of them ending today.
    checkins: list[tuple[date, int]]


async def device_overview(
    session: AsyncSession, scope: Scope, today: date, *, days: int = 7
) -> DeviceOverview:
    active = Device.management_state.not_in(ENDED)
    counts = cast("Select[Any]", select(Device.platform, Device.compliance_state, func.count()).where(active))
    rows = (
        await session.execute(scoped(counts, scope).group_by(Device.platform, Device.compliance_state))
    ).all()
    by_platform: dict[Platform, int] = {}
    by_compliance: dict[ComplianceState, int] = {}
    for platform, state, count in rows:
        by_platform[platform] = by_platform.get(platform, 0) + count
        by_compliance[state] = by_compliance.get(state, 0) + count
    first = today - timedelta(days=days - 1)
    day_counts = dict(
        (
            await session.execute(
                scoped(
                    select(device_checkin_days.c.day, func.count())
                    .select_from(device_checkin_days)
                    .join(Device, Device.id == device_checkin_days.c.device_id)
                    .where(device_checkin_days.c.day >= first, device_checkin_days.c.day <= today),
                    scope,
                ).group_by(device_checkin_days.c.day)
            )
        ).all()
    )
    checkins = [
        (first + timedelta(days=i), int(day_counts.get(first + timedelta(days=i), 0))) for i in range(days)
    ]
    return DeviceOverview(
        total=sum(by_platform.values()),
        by_platform=by_platform,
        by_compliance=by_compliance,
        checkins=checkins,
    )
