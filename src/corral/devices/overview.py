"""The dashboard's device figures, within the reader's device scope: devices by platform and by compliance
state, noncompliant devices by the setting they fail, grace periods ending on each of the next days, and how
many devices checked in on each of the last days."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, date, datetime, time, timedelta
from typing import Any, cast

from sqlalchemy import Select, func, select, true
from sqlalchemy.ext.asyncio import AsyncSession

from corral.devices.repository import scoped
from corral.models import (
    ComplianceState,
    Device,
    DeviceCompliancePolicy,
    ManagementState,
    Platform,
    device_checkin_days,
)
from corral.models.compliance import setting_results
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
    #: (compliance setting id, devices failing it), most first.
    failing_settings: list[tuple[str, int]] = field(default_factory=list)
    #: (day, devices whose grace period ends that day, UTC), ``days`` of them starting today.
    grace_ending: list[tuple[date, int]] = field(default_factory=list)


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
    each = setting_results()
    failing = (
        await session.execute(
            scoped(
                cast(
                    "Select[Any]",
                    select(each.c.key, func.count(func.distinct(DeviceCompliancePolicy.device_id)))
                    .select_from(DeviceCompliancePolicy)
                    .join(each, true())
                    .join(Device, Device.id == DeviceCompliancePolicy.device_id)
                    .where(active, each.c.value["state"].astext == ComplianceState.noncompliant.value),
                ),
                scope,
            ).group_by(each.c.key)
        )
    ).all()
    start = datetime.combine(today, time(), tzinfo=UTC)
    ends_on = func.date(func.timezone("UTC", DeviceCompliancePolicy.grace_ends_at))
    grace_counts = dict(
        (
            await session.execute(
                scoped(
                    cast(
                        "Select[Any]",
                        select(ends_on, func.count(func.distinct(DeviceCompliancePolicy.device_id)))
                        .select_from(DeviceCompliancePolicy)
                        .join(Device, Device.id == DeviceCompliancePolicy.device_id)
                        .where(
                            active,
                            Device.compliance_state == ComplianceState.in_grace_period,
                            DeviceCompliancePolicy.state == ComplianceState.in_grace_period,
                            DeviceCompliancePolicy.grace_ends_at >= start,
                            DeviceCompliancePolicy.grace_ends_at < start + timedelta(days=days),
                        ),
                    ),
                    scope,
                ).group_by(ends_on)
            )
        ).all()
    )
    return DeviceOverview(
        total=sum(by_platform.values()),
        by_platform=by_platform,
        by_compliance=by_compliance,
        checkins=checkins,
        failing_settings=sorted(((str(k), int(v)) for k, v in failing), key=lambda kv: (-kv[1], kv[0])),
        grace_ending=[
            (today + timedelta(days=i), int(grace_counts.get(today + timedelta(days=i), 0)))
            for i in range(days)
        ],
    )
