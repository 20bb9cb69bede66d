from __future__ import annotations

import uuid
from collections.abc import Sequence

from sqlalchemy import Select, func, select
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm import selectinload

from corral.models import Group, RoleAssignment, RoleDefinition, ScopeTag, User, role_assignment_members


async def list_roles(session: AsyncSession) -> list[RoleDefinition]:
    stmt = select(RoleDefinition).order_by(RoleDefinition.is_builtin.desc(), RoleDefinition.name)
    return list((await session.scalars(stmt)).all())


async def get_role(session: AsyncSession, role_id: uuid.UUID) -> RoleDefinition | None:
    return await session.get(RoleDefinition, role_id)


async def role_by_name(session: AsyncSession, name: str) -> RoleDefinition | None:
    return await session.scalar(select(RoleDefinition).where(func.lower(RoleDefinition.name) == name.lower()))


async def assignment_count_for_role(session: AsyncSession, role_id: uuid.UUID) -> int:
    count = await session.scalar(select(func.count()).where(RoleAssignment.role_id == role_id))
    return int(count or 0)


def _assignment_query() -> Select[RoleAssignment]:
    return select(RoleAssignment).options(
        selectinload(RoleAssignment.role),
        selectinload(RoleAssignment.members),
        selectinload(RoleAssignment.member_groups),
        selectinload(RoleAssignment.scope_tags),
        selectinload(RoleAssignment.scope_groups),
    )


async def list_assignments(session: AsyncSession, role_id: uuid.UUID | None = None) -> list[RoleAssignment]:
    stmt = _assignment_query().order_by(RoleAssignment.name)
    if role_id is not None:
        stmt = stmt.where(RoleAssignment.role_id == role_id)
    return list((await session.scalars(stmt)).all())


async def get_assignment(session: AsyncSession, assignment_id: uuid.UUID) -> RoleAssignment | None:
    result: RoleAssignment | None = await session.scalar(
        _assignment_query().where(RoleAssignment.id == assignment_id)
    )
    return result


async def assignments_of_user(session: AsyncSession, user_id: uuid.UUID) -> list[RoleAssignment]:
    stmt = (
        _assignment_query()
        .join(role_assignment_members, role_assignment_members.c.role_assignment_id == RoleAssignment.id)
        .where(role_assignment_members.c.user_id == user_id)
        .order_by(RoleAssignment.name)
    )
    return list((await session.scalars(stmt)).unique().all())


async def users_by_ids(session: AsyncSession, ids: Sequence[uuid.UUID]) -> list[User]:
    return list((await session.scalars(select(User).where(User.id.in_(ids)))).all())


async def groups_by_ids(session: AsyncSession, ids: Sequence[uuid.UUID]) -> list[Group]:
    return list((await session.scalars(select(Group).where(Group.id.in_(ids)))).all())


async def list_groups(session: AsyncSession, limit: int = 200) -> list[Group]:
    """Groups for the role assignment form's pickers, by name."""
    stmt = select(Group).order_by(func.lower(Group.display_name), Group.id).limit(limit)
    return list((await session.scalars(stmt)).all())


async def tags_by_ids(session: AsyncSession, ids: Sequence[uuid.UUID]) -> list[ScopeTag]:
    return list((await session.scalars(select(ScopeTag).where(ScopeTag.id.in_(ids)))).all())


async def list_scope_tags(session: AsyncSession) -> list[ScopeTag]:
    return list((await session.scalars(select(ScopeTag).order_by(ScopeTag.name))).all())


async def scope_tag_by_name(session: AsyncSession, name: str) -> ScopeTag | None:
    return await session.scalar(select(ScopeTag).where(func.lower(ScopeTag.name) == name.lower()))


async def enabled_members_of_role(session: AsyncSession, role_id: uuid.UUID) -> list[uuid.UUID]:
    stmt = (
        select(User.id)
        .join(role_assignment_members, role_assignment_members.c.user_id == User.id)
        .join(RoleAssignment, RoleAssignment.id == role_assignment_members.c.role_assignment_id)
        .where(RoleAssignment.role_id == role_id, RoleAssignment.scope_all.is_(True), User.enabled.is_(True))
        .distinct()
    )
    return list((await session.scalars(stmt)).all())
