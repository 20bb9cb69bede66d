"""Every query of the assignments feature outside the engine's set-based maintenance (engine.py)."""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from typing import Any

from sqlalchemy import Select, delete, exists, func, select
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm import selectinload

from corral.assignments import engine
from corral.devices import repository as devices_repository
from corral.groups import effective
from corral.groups.membership import active_device
from corral.models import (
    Assignable,
    Assignment,
    AssignmentFilter,
    Device,
    Group,
    device_targets,
    group_devices,
    group_users,
)
from corral.rbac.principal import Scope


# ------------------------------------------------------------------------------------------------ objects
async def get_object(
    session: AsyncSession, object_id: uuid.UUID, *, for_update: bool = False
) -> Assignable | None:
    stmt = select(Assignable).where(Assignable.id == object_id).options(selectinload(Assignable.scope_tags))
    if for_update:
        stmt = stmt.with_for_update(of=Assignable.__table__)
    result: Assignable | None = await session.scalar(stmt)
    return result


async def objects_by_ids(session: AsyncSession, ids: Sequence[uuid.UUID]) -> list[Assignable]:
    if not ids:
        return []
    stmt = (
        select(Assignable)
        .where(effective.in_ids(Assignable.id, ids))
        .options(selectinload(Assignable.scope_tags))
        .order_by(func.lower(Assignable.name), Assignable.id)
    )
    return list((await session.scalars(stmt)).all())


async def all_objects(session: AsyncSession) -> list[Assignable]:
    stmt = (
        select(Assignable)
        .options(selectinload(Assignable.scope_tags))
        .order_by(Assignable.kind, func.lower(Assignable.name), Assignable.id)
    )
    return list((await session.scalars(stmt)).all())


async def targets_of_device(session: AsyncSession, device_id: uuid.UUID) -> list[Assignable]:
    stmt = (
        select(Assignable)
        .join(device_targets, device_targets.c.assignable_id == Assignable.id)
        .where(device_targets.c.device_id == device_id)
        .options(selectinload(Assignable.scope_tags))
        .order_by(Assignable.kind, func.lower(Assignable.name), Assignable.id)
    )
    return list((await session.scalars(stmt)).all())


async def is_target(session: AsyncSession, object_id: uuid.UUID, device_id: uuid.UUID) -> bool:
    stmt = select(
        exists().where(device_targets.c.assignable_id == object_id, device_targets.c.device_id == device_id)
    )
    return bool(await session.scalar(stmt))


async def desired_state_version(session: AsyncSession, device_id: uuid.UUID) -> int:
    """The device's desired-state version (engine.desired_version), 0 while nothing was assigned."""
    version = await session.scalar(select(engine.desired_version(device_id)))
    return int(version or 0)


async def count_targets(session: AsyncSession, object_id: uuid.UUID, device_scope: Scope) -> int:
    if device_scope.all:  # targets are rows of existing devices: counted by the index alone
        return await count_target_rows(session, [object_id])
    stmt = (
        select(func.count())
        .select_from(Device)
        .join(device_targets, device_targets.c.device_id == Device.id)
        .where(device_targets.c.assignable_id == object_id)
    )
    return int(await session.scalar(devices_repository.scoped(stmt, device_scope)) or 0)


async def count_target_rows(session: AsyncSession, object_ids: Sequence[uuid.UUID]) -> int:
    """How many targets these objects have now (all scopes): the size of recomputing them."""
    if not object_ids:
        return 0
    stmt = (
        select(func.count())
        .select_from(device_targets)
        .where(effective.in_ids(device_targets.c.assignable_id, object_ids))
    )
    return int(await session.scalar(stmt) or 0)


# -------------------------------------------------------------------------------------------- assignments
async def assignments_of(session: AsyncSession, object_id: uuid.UUID) -> list[Assignment]:
    stmt = (
        select(Assignment)
        .where(Assignment.assignable_id == object_id)
        .options(selectinload(Assignment.filter))
        .order_by(Assignment.mode, Assignment.target, Assignment.created_at, Assignment.id)
    )
    return list((await session.scalars(stmt)).all())


async def delete_assignments(session: AsyncSession, ids: Sequence[uuid.UUID]) -> None:
    if ids:
        await session.execute(delete(Assignment).where(effective.in_ids(Assignment.id, ids)))


async def groups_by_ids(session: AsyncSession, ids: Sequence[uuid.UUID]) -> dict[uuid.UUID, Group]:
    if not ids:
        return {}
    rows = await session.scalars(select(Group).where(effective.in_ids(Group.id, ids)))
    return {g.id: g for g in rows.all()}


async def usage_of_group(session: AsyncSession, group_id: uuid.UUID) -> list[Assignable]:
    """Objects with an assignment naming this group."""
    stmt = (
        select(Assignable)
        .where(Assignable.id.in_(select(Assignment.assignable_id).where(Assignment.group_id == group_id)))
        .order_by(func.lower(Assignable.name), Assignable.id)
    )
    return list((await session.scalars(stmt)).all())


# -------------------------------------------------------------------------------------------- filters
def _filters() -> Select[Any]:
    return select(AssignmentFilter).options(selectinload(AssignmentFilter.scope_tags))


async def filters(session: AsyncSession, search: str | None, platform: str | None) -> list[AssignmentFilter]:
    stmt = _filters()
    if search:
        stmt = stmt.where(AssignmentFilter.name.icontains(search.strip(), autoescape=True))
    if platform:
        stmt = stmt.where(AssignmentFilter.platform == platform)
    stmt = stmt.order_by(func.lower(AssignmentFilter.name), AssignmentFilter.id).limit(1000)
    return list((await session.scalars(stmt)).all())


async def get_filter(session: AsyncSession, filter_id: uuid.UUID) -> AssignmentFilter | None:
    result: AssignmentFilter | None = await session.scalar(_filters().where(AssignmentFilter.id == filter_id))
    return result


async def filters_by_ids(
    session: AsyncSession, ids: Sequence[uuid.UUID]
) -> dict[uuid.UUID, AssignmentFilter]:
    if not ids:
        return {}
    rows = await session.scalars(_filters().where(effective.in_ids(AssignmentFilter.id, ids)))
    return {f.id: f for f in rows.all()}


async def filter_name_taken(session: AsyncSession, name: str, except_id: uuid.UUID | None = None) -> bool:
    conditions = [func.lower(AssignmentFilter.name) == name.lower()]
    if except_id is not None:
        conditions.append(AssignmentFilter.id != except_id)
    return bool(await session.scalar(select(exists().where(*conditions))))


async def objects_using_filter(session: AsyncSession, filter_id: uuid.UUID) -> list[Assignable]:
    stmt = (
        select(Assignable)
        .where(Assignable.id.in_(select(Assignment.assignable_id).where(Assignment.filter_id == filter_id)))
        .options(selectinload(Assignable.scope_tags))
        .order_by(func.lower(Assignable.name), Assignable.id)
    )
    return list((await session.scalars(stmt)).all())


# ------------------------------------------------------------------------------------- device facts
async def device_memberships(
    session: AsyncSession, device: Device
) -> tuple[set[uuid.UUID], set[uuid.UUID], list[tuple[uuid.UUID, uuid.UUID]]]:
    """The device's direct groups, its primary user's direct groups, and the nesting edges above them."""
    direct = set(
        (
            await session.scalars(
                select(group_devices.c.group_id).where(group_devices.c.device_id == device.id)
            )
        ).all()
    )
    user: set[uuid.UUID] = set()
    if device.user_id is not None:
        user = set(
            (
                await session.scalars(
                    select(group_users.c.group_id).where(group_users.c.user_id == device.user_id)
                )
            ).all()
        )
    edges = await effective.ancestor_edges(session, sorted(direct | user))
    return direct, user, edges


async def evaluate_conditions(
    session: AsyncSession, device_id: uuid.UUID, conditions: Sequence[Any]
) -> list[bool]:
    """Boolean conditions on ``Device`` evaluated for one device, in one round trip."""
    if not conditions:
        return []
    row = (await session.execute(select(*conditions).where(Device.id == device_id))).one()
    return [bool(v) for v in row]


async def count_devices(session: AsyncSession, stmt: Select[Any], device_scope: Scope) -> int:
    scoped = devices_repository.scoped(stmt, device_scope)
    return int(await session.scalar(select(func.count()).select_from(scoped.subquery())) or 0)


async def sample_devices(
    session: AsyncSession, condition: Any, platforms: Sequence[str], device_scope: Scope, limit: int
) -> tuple[int, list[Device]]:
    stmt = select(Device).where(active_device(), Device.platform.in_(platforms), condition)
    scoped = devices_repository.scoped(stmt, device_scope)
    count = int(await session.scalar(select(func.count()).select_from(scoped.subquery())) or 0)
    rows: list[Device] = []
    if limit:
        rows = list(
            (await session.scalars(scoped.order_by(func.lower(Device.name), Device.id).limit(limit))).all()
        )
    return count, rows
