"""A configuration profile's status report: per device and per setting what the devices it reaches reported
applying its current version (docs/policies.md, "Configuration profiles"), within the reader's device scope.

A device's state for a profile is read from its reports at the profile's current version: **pending** while it
has reported nothing at that version, else the worst of its settings — **error**, then **conflict** (another
profile gives a setting another value: delivered from neither), then **succeeded**; **not applicable** when
every setting was. One GROUP BY over the reports per question: the report costs what the devices reached
cost, whatever their number.
"""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Any, Literal

from pydantic import BaseModel, Field
from sqlalchemy import and_, case, func, literal, select
from sqlalchemy.ext.asyncio import AsyncSession

from corral.devices import repository as devices_repository
from corral.models import ConfigurationProfile, Device, device_targets
from corral.models.delivery import DeviceSettingState
from corral.profiles import catalog
from corral.rbac.permissions import P
from corral.rbac.principal import Principal

DeviceState = Literal["succeeded", "error", "conflict", "not_applicable", "pending"]
STATES: tuple[DeviceState, ...] = ("succeeded", "error", "conflict", "not_applicable", "pending")


class SettingStatus(BaseModel):
    setting_id: str
    name: str
    succeeded: int
    error: int
    conflict: int
    not_applicable: int
    pending: int = Field(description="Devices reached that have not reported this setting at this version")


class ProfileStatus(BaseModel):
    profile_id: uuid.UUID
    version: int
    counts: dict[str, int] = Field(description="Devices reached by state, within your device scope")
    settings: list[SettingStatus]


class ProfileStatusDevice(BaseModel):
    device_id: uuid.UUID
    device_name: str
    serial_number: str
    state: DeviceState
    message: str = Field(description="The device's message for the setting (or its first error)")
    reported_at: datetime | None


class ProfileStatusDevicePage(BaseModel):
    items: list[ProfileStatusDevice]
    total: int


def _reached(profile: ConfigurationProfile, principal: Principal) -> Any:
    """Devices the profile reaches, within the reader's device scope."""
    stmt = select(Device.id).join(
        device_targets,
        and_(device_targets.c.device_id == Device.id, device_targets.c.assignable_id == profile.id),
    )
    return devices_repository.scoped(stmt, principal.scope_for(P.devices_read))


def _reports(profile: ConfigurationProfile, setting_id: str | None = None) -> Any:
    condition = and_(
        DeviceSettingState.profile_id == profile.id, DeviceSettingState.profile_version == profile.version
    )
    if setting_id is not None:
        condition = and_(condition, DeviceSettingState.setting_id == setting_id)
    return condition


def _device_states(profile: ConfigurationProfile, principal: Principal, setting_id: str | None = None) -> Any:
    """(device id, state, message, reported at) of every device reached: one row each."""
    reached = _reached(profile, principal).subquery()
    s = DeviceSettingState
    state = case(
        (func.count(s.setting_id) == 0, literal("pending")),
        (func.bool_or(s.state == "error"), literal("error")),
        (func.bool_or(s.state == "conflict"), literal("conflict")),
        (func.bool_and(s.state == "not_applicable"), literal("not_applicable")),
        else_=literal("succeeded"),
    )
    message = func.coalesce(
        func.min(case((s.state == "error", s.message))), func.min(func.nullif(s.message, "")), literal("")
    )
    return (
        select(
            reached.c.id.label("device_id"),
            state.label("state"),
            message.label("message"),
            func.max(s.reported_at).label("reported_at"),
        )
        .select_from(reached)
        .outerjoin(s, and_(s.device_id == reached.c.id, _reports(profile, setting_id)))
        .group_by(reached.c.id)
    )


async def profile_status(
    session: AsyncSession, principal: Principal, profile: ConfigurationProfile
) -> ProfileStatus:
    per_device = _device_states(profile, principal).subquery()
    counts: dict[str, int] = dict(
        (await session.execute(select(per_device.c.state, func.count()).group_by(per_device.c.state))).all()
    )
    reached_count = sum(counts.values())
    per_setting: dict[str, dict[str, int]] = {}
    reached = _reached(profile, principal).subquery()
    rows = await session.execute(
        select(DeviceSettingState.setting_id, DeviceSettingState.state, func.count())
        .where(_reports(profile), DeviceSettingState.device_id.in_(select(reached.c.id)))
        .group_by(DeviceSettingState.setting_id, DeviceSettingState.state)
    )
    for setting_id, state, count in rows.all():
        per_setting.setdefault(setting_id, {})[state] = int(count)
    settings = []
    for setting_id in profile.settings or {}:
        found = per_setting.get(setting_id, {})
        setting = catalog.load().by_id.get(setting_id)
        settings.append(
            SettingStatus(
                setting_id=setting_id,
                name=setting.name if setting else setting_id,
                succeeded=found.get("succeeded", 0),
                error=found.get("error", 0),
                conflict=found.get("conflict", 0),
                not_applicable=found.get("not_applicable", 0),
                pending=reached_count - sum(found.values()),
            )
        )
    return ProfileStatus(
        profile_id=profile.id,
        version=profile.version,
        counts={state: int(counts.get(state, 0)) for state in STATES},
        settings=settings,
    )


async def profile_status_devices(
    session: AsyncSession,
    principal: Principal,
    profile: ConfigurationProfile,
    state: DeviceState | None,
    setting_id: str | None = None,
    limit: int = 500,
) -> ProfileStatusDevicePage:
    """The devices behind a count: by state, for the whole profile or one of its settings."""
    per_device = _device_states(profile, principal, setting_id).subquery()
    stmt = select(
        Device.id,
        Device.name,
        Device.serial_number,
        per_device.c.state,
        per_device.c.message,
        per_device.c.reported_at,
    ).join(per_device, per_device.c.device_id == Device.id)
    if state is not None:
        stmt = stmt.where(per_device.c.state == state)
    total = int(await session.scalar(select(func.count()).select_from(stmt.subquery())) or 0)
    rows = (await session.execute(stmt.order_by(func.lower(Device.name), Device.id).limit(limit))).all()
    return ProfileStatusDevicePage(
        items=[
            ProfileStatusDevice(
                device_id=r[0],
                device_name=r[1],
                serial_number=r[2] or "",
                state=r[3],
                message=r[4] or "",
                reported_at=r[5],
            )
            for r in rows
        ],
        total=total,
    )
