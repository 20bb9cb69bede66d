from __future__ import annotations

import uuid
from collections.abc import Sequence
from dataclasses import dataclass

from sqlalchemy import Select, and_, func, not_, select, tuple_
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm import selectinload

from corral.models import (
    Group,
    RoleAssignment,
    RoleDefinition,
    ScopeTag,
    User,
    group_children,
    group_users,
    role_assignment_member_groups,
    role_assignment_members,
)


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


# One advisory lock serialises the changes that take the Global administrator role from someone.
GLOBAL_ADMINISTRATORS_LOCK = 0x636F7272616C61  # "corrala"


async def lock_global_administrators(session: AsyncSession) -> None:
    """Held until the transaction ends."""
    await session.execute(select(func.pg_advisory_xact_lock(GLOBAL_ADMINISTRATORS_LOCK)))


@dataclass(frozen=True)
class Without:
    """A change not made yet, to count a role's holders as they would be after it."""

    users: frozenset[uuid.UUID] = frozenset()  # users deleted or disabled
    group: uuid.UUID | None = None  # a group deleted (with its memberships and nestings)
    group_users: frozenset[tuple[uuid.UUID, uuid.UUID]] = frozenset()  # (group, user): users leaving groups
    nestings: frozenset[tuple[uuid.UUID, uuid.UUID]] = frozenset()  # (parent, child): groups un-nested
    assignment: uuid.UUID | None = None  # a role assignment deleted
    assignment_users: tuple[uuid.UUID, frozenset[uuid.UUID]] | None = None  # (assignment, members removed)


async def enabled_members_of_role(
    session: AsyncSession, role_id: uuid.UUID, without: Without = Without()
) -> list[uuid.UUID]:
    """The enabled users holding the role through an unscoped assignment: as members, or as users of a member
    group or of a group nested in one at any depth; with ``without``, as they would be after that change.
    One statement."""
    assignments = select(RoleAssignment.id).where(
        RoleAssignment.role_id == role_id,
        RoleAssignment.scope_all.is_(True),
        ~RoleAssignment.scope_groups.any(),  # unscoped: no scope groups either
    )
    if without.assignment is not None:
        assignments = assignments.where(RoleAssignment.id != without.assignment)
    seed = select(role_assignment_member_groups.c.group_id.label("id")).where(
        role_assignment_member_groups.c.role_assignment_id.in_(assignments)
    )
    step = select(group_children.c.child_id)
    if without.group is not None:
        seed = seed.where(role_assignment_member_groups.c.group_id != without.group)
        step = step.where(group_children.c.child_id != without.group)
    if without.nestings:
        step = step.where(
            tuple_(group_children.c.parent_id, group_children.c.child_id).not_in(list(without.nestings))
        )
    # UNION (not UNION ALL): terminates even if a cycle of nested groups slipped in.
    groups = seed.cte("holder_groups", recursive=True)
    groups = groups.union(step.where(group_children.c.parent_id == groups.c.id))
    direct = select(role_assignment_members.c.user_id).where(
        role_assignment_members.c.role_assignment_id.in_(assignments)
    )
    if without.assignment_users is not None:
        assignment_id, removed = without.assignment_users
        direct = direct.where(
            not_(
                and_(
                    role_assignment_members.c.role_assignment_id == assignment_id,
                    role_assignment_members.c.user_id.in_(removed),
                )
            )
        )
    via_group = select(group_users.c.user_id).where(group_users.c.group_id.in_(select(groups.c.id)))
    if without.group_users:
        via_group = via_group.where(
            tuple_(group_users.c.group_id, group_users.c.user_id).not_in(list(without.group_users))
        )
    stmt = select(User.id).where(User.enabled.is_(True), User.id.in_(direct.union(via_group)))
    if without.users:
        stmt = stmt.where(User.id.not_in(without.users))
    return list((await session.scalars(stmt)).all())
