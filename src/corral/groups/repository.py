"""Every query of the groups feature."""

from __future__ import annotations

import contextlib
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy import (
    ColumnElement,
    Select,
    String,
    any_,
    case,
    delete,
    exists,
    func,
    literal,
    or_,
    select,
    tuple_,
    type_coerce,
    union_all,
)
from sqlalchemy.dialects.postgresql import ARRAY, insert
from sqlalchemy.dialects.postgresql import UUID as PG_UUID
from sqlalchemy.ext.asyncio import AsyncSession

from corral.devices import repository as devices_repository
from corral.errors import BadRequest
from corral.groups.schemas import GroupFilter, MemberCounts, MemberFilter, MemberType
from corral.kit.pagination import decode_cursor, encode_cursor, keyset_page
from corral.models import (
    AuditEvent,
    Device,
    EnrollmentToken,
    Group,
    IdentityConnection,
    RoleAssignment,
    User,
    group_children,
    group_devices,
    group_users,
    role_assignment_member_groups,
    role_assignment_scope_groups,
)
from corral.rbac.principal import Scope
from corral.users import repository as users_repository

NESTING_LOCK = 0x636F7272616C67  # "corralg": one advisory lock serialises every change to group nesting
BAD_CURSOR = "The pagination cursor is malformed; start again from the first page."


# ------------------------------------------------------------------------------------------------ groups
def _group_filter(filters: GroupFilter) -> Select[Any]:
    stmt = select(Group)
    if filters.search:
        stmt = stmt.where(Group.display_name.icontains(filters.search.strip(), autoescape=True))
    for column, value in (
        (Group.membership_type, filters.membership_type),
        (Group.dynamic_kind, filters.dynamic_kind),
        (Group.source, filters.source),
    ):
        if value is not None:
            stmt = stmt.where(column == value)
    return stmt


async def page(session: AsyncSession, filters: GroupFilter) -> tuple[list[Group], str | None, int]:
    """Groups by name (case-insensitively), keyset-paged on (lower(name), id)."""
    base = _group_filter(filters)
    total = int(await session.scalar(select(func.count()).select_from(base.subquery())) or 0)
    key = func.lower(Group.display_name)
    stmt = base
    cursor = decode_cursor(filters.cursor)
    if cursor is not None:
        try:
            name, last_id = str(cursor[0]), uuid.UUID(str(cursor[1]))
        except (ValueError, TypeError, IndexError) as exc:
            raise BadRequest(BAD_CURSOR) from exc
        stmt = stmt.where(tuple_(key, Group.id) > tuple_(name, last_id))
    rows = (
        await session.execute(stmt.add_columns(key).order_by(key, Group.id).limit(filters.limit + 1))
    ).all()
    items, next_cursor = keyset_page(rows, filters.limit)
    return items, next_cursor, total


async def get(session: AsyncSession, group_id: uuid.UUID, *, for_update: bool = False) -> Group | None:
    stmt = select(Group).where(Group.id == group_id)
    if for_update:
        stmt = stmt.with_for_update(key_share=True)  # FOR NO KEY UPDATE: members may still reference it
    result: Group | None = await session.scalar(stmt)
    return result


async def by_ids(session: AsyncSession, ids: Sequence[uuid.UUID]) -> list[Group]:
    if not ids:
        return []
    return list((await session.scalars(select(Group).where(Group.id.in_(ids)))).all())


async def member_counts(session: AsyncSession, ids: Sequence[uuid.UUID]) -> dict[uuid.UUID, MemberCounts]:
    """Direct member counts of each group, three grouped index scans."""
    counts = {i: MemberCounts() for i in ids}
    if not ids:
        return counts
    for field, table, column in (
        ("users", group_users, group_users.c.group_id),
        ("devices", group_devices, group_devices.c.group_id),
        ("groups", group_children, group_children.c.parent_id),
    ):
        rows = await session.execute(
            select(column, func.count()).select_from(table).where(column.in_(ids)).group_by(column)
        )
        for group_id, count in rows.all():
            setattr(counts[group_id], field, int(count))
    return counts


async def parents(session: AsyncSession, group_id: uuid.UUID) -> list[Group]:
    stmt = (
        select(Group)
        .join(group_children, group_children.c.parent_id == Group.id)
        .where(group_children.c.child_id == group_id)
        .order_by(func.lower(Group.display_name), Group.id)
    )
    return list((await session.scalars(stmt)).all())


async def role_assignment_usage(
    session: AsyncSession, group_id: uuid.UUID
) -> list[tuple[uuid.UUID, str, str]]:
    """(assignment id, name, "members" or "scope") for every role assignment naming the group."""
    stmt = union_all(
        select(RoleAssignment.id, RoleAssignment.name, literal("members", String))
        .join(role_assignment_member_groups)
        .where(role_assignment_member_groups.c.group_id == group_id),
        select(RoleAssignment.id, RoleAssignment.name, literal("scope", String))
        .join(role_assignment_scope_groups)
        .where(role_assignment_scope_groups.c.group_id == group_id),
    )
    return [(row[0], row[1], row[2]) for row in (await session.execute(stmt)).all()]


async def connection_name(session: AsyncSession, connection_id: uuid.UUID | None) -> str | None:
    if connection_id is None:
        return None
    name: str | None = await session.scalar(
        select(IdentityConnection.name).where(IdentityConnection.id == connection_id)
    )
    return name


async def last_evaluation(session: AsyncSession, group_id: uuid.UUID) -> AuditEvent | None:
    """The audit event of the group's latest full evaluation (create, rule change or on demand)."""
    stmt = (
        select(AuditEvent)
        .where(
            AuditEvent.target_type == "group",
            AuditEvent.target_id == str(group_id),
            AuditEvent.activity.in_(("group.create", "group.update", "group.evaluate")),
            AuditEvent.detail.like("Evaluated:%"),
        )
        .order_by(AuditEvent.seq.desc())
        .limit(1)
    )
    result: AuditEvent | None = await session.scalar(stmt)
    return result


# ----------------------------------------------------------------------------------------------- members
async def lock_nesting(session: AsyncSession) -> None:
    """Serialise nesting changes for the rest of the transaction, so two concurrent additions can't each
    pass the cycle check and together close a cycle."""
    await session.execute(select(func.pg_advisory_xact_lock(NESTING_LOCK)))


def descendants(group_id: uuid.UUID) -> Any:
    """A recursive CTE of the group and every group nested in it, at any depth (``UNION``: terminates even
    if a cycle slipped in)."""
    seed = select(literal(group_id, group_children.c.parent_id.type).label("id")).cte(
        "descendants", recursive=True
    )
    return seed.union(select(group_children.c.child_id).where(group_children.c.parent_id == seed.c.id))


async def reachable(session: AsyncSession, start: uuid.UUID, target: uuid.UUID) -> bool:
    """Whether ``target`` is ``start`` or nested in it at any depth."""
    tree = descendants(start)
    return bool(await session.scalar(select(exists().where(tree.c.id == target))))


async def add_member(
    session: AsyncSession, group_id: uuid.UUID, kind: MemberType, member_id: uuid.UUID
) -> bool:
    """Insert the membership; False when it was already there."""
    if kind is MemberType.user:
        stmt = insert(group_users).values(group_id=group_id, user_id=member_id)
    elif kind is MemberType.device:
        stmt = insert(group_devices).values(group_id=group_id, device_id=member_id)
    else:
        stmt = insert(group_children).values(parent_id=group_id, child_id=member_id)
    result = await session.execute(stmt.on_conflict_do_nothing())
    return bool(result.rowcount)  # type: ignore[attr-defined]


async def remove_member(
    session: AsyncSession, group_id: uuid.UUID, kind: MemberType, member_id: uuid.UUID
) -> bool:
    if kind is MemberType.user:
        stmt = delete(group_users).where(
            group_users.c.group_id == group_id, group_users.c.user_id == member_id
        )
    elif kind is MemberType.device:
        stmt = delete(group_devices).where(
            group_devices.c.group_id == group_id, group_devices.c.device_id == member_id
        )
    else:
        stmt = delete(group_children).where(
            group_children.c.parent_id == group_id, group_children.c.child_id == member_id
        )
    result = await session.execute(stmt)
    return bool(result.rowcount)  # type: ignore[attr-defined]


def _s(column: Any) -> ColumnElement[str]:
    return type_coerce(column, String)


def _user_state(enabled: Any) -> ColumnElement[str]:
    return case((enabled.is_(True), "enabled"), else_="disabled")


async def descendant_ids(session: AsyncSession, group_id: uuid.UUID) -> list[uuid.UUID]:
    """The group and every group nested in it, at any depth."""
    tree = descendants(group_id)
    return list((await session.scalars(select(tree.c.id))).all())


def _any(ids: list[uuid.UUID]) -> Any:
    """``= ANY(:ids)`` with the ids as one array parameter: the planner sees how many there are."""
    return any_(literal(ids, ARRAY(PG_UUID(as_uuid=True))))


@dataclass(frozen=True)
class _Branch:
    """One kind of member: its rows (rank, type, id, name, detail, state, sort), whether the caller sees
    them, and how to count them (all, and visible)."""

    rank: int
    rows: Select[Any] | None  # None: hidden from the caller
    count_all: Any
    count_visible: Any


def _branches(
    group_id: uuid.UUID, ids: list[uuid.UUID], kind: MemberType | None, device_scope: Scope, user_scope: Scope
) -> list[_Branch]:
    """The kinds of member to list, in order: nested groups (direct listing only), users, devices. ``ids``
    are the groups whose members count (the group alone, or with every group nested in it)."""
    in_groups = _any(ids)
    user_ids = select(group_users.c.user_id).where(group_users.c.group_id == in_groups)
    device_ids = select(group_devices.c.device_id).where(group_devices.c.group_id == in_groups)
    branches: list[tuple[MemberType, _Branch]] = []
    if len(ids) == 1 or kind is MemberType.group:  # nested groups are listed only as direct members
        children = (
            select(
                literal(0).label("rank"),
                literal("group", String).label("type"),
                Group.id.label("id"),
                _s(Group.display_name).label("name"),
                _s(Group.membership_type).label("detail"),
                literal(None, String).label("state"),
                func.lower(Group.display_name).label("sort"),
            )
            .join(group_children, group_children.c.child_id == Group.id)
            .where(group_children.c.parent_id == group_id)
        )
        count = (
            select(func.count()).select_from(group_children).where(group_children.c.parent_id == group_id)
        ).scalar_subquery()
        branches.append((MemberType.group, _Branch(0, children, count, count)))
    users = select(
        literal(1).label("rank"),
        literal("user", String).label("type"),
        User.id.label("id"),
        _s(User.display_name).label("name"),
        _s(User.user_principal_name).label("detail"),
        _user_state(User.enabled).label("state"),
        func.lower(User.display_name).label("sort"),
    ).where(User.id.in_(user_ids))
    count_users = _count_members(user_ids, transitive=len(ids) > 1)
    visible_users = users_repository.scoped(users, user_scope)
    if user_scope.empty:
        users_branch = _Branch(1, None, count_users, literal(0))
    elif visible_users is users:
        users_branch = _Branch(1, users, count_users, count_users)
    else:
        count = select(func.count()).select_from(visible_users.subquery()).scalar_subquery()
        users_branch = _Branch(1, visible_users, count_users, count)
    branches.append((MemberType.user, users_branch))
    devices = select(
        literal(2).label("rank"),
        literal("device", String).label("type"),
        Device.id.label("id"),
        _s(Device.name).label("name"),
        _s(Device.serial_number).label("detail"),
        _s(Device.management_state).label("state"),
        func.lower(Device.name).label("sort"),
    ).where(Device.id.in_(device_ids))
    count_devices = _count_members(device_ids, transitive=len(ids) > 1)
    visible_devices = devices_repository.scoped(devices, device_scope)
    count_visible = (
        count_devices
        if visible_devices is devices
        else select(func.count()).select_from(visible_devices.subquery()).scalar_subquery()
    )
    branches.append((MemberType.device, _Branch(2, visible_devices, count_devices, count_visible)))
    return [b for t, b in branches if kind is None or kind is t]


def _count_members(member_ids: Select[Any], *, transitive: bool) -> Any:
    """How many distinct members: through nesting a member may come twice (a hash aggregate, not a sort)."""
    rows = member_ids.distinct() if transitive else member_ids
    return select(func.count()).select_from(rows.subquery()).scalar_subquery()


def _after(branch: _Branch, after: tuple[int, str, uuid.UUID] | None) -> Select[Any] | None:
    """A kind's members after the cursor in (name, id) order; None when the cursor is past that kind or the
    caller sees none of it."""
    if branch.rows is None or (after is not None and branch.rank < after[0]):
        return None
    members = branch.rows.subquery("members")
    stmt = select(members)
    if after is not None and branch.rank == after[0]:
        stmt = stmt.where(tuple_(members.c.sort, members.c.id) > tuple_(after[1], after[2]))
    return stmt.order_by(members.c.sort, members.c.id)


async def member_page(
    session: AsyncSession, group_id: uuid.UUID, filters: MemberFilter, device_scope: Scope, user_scope: Scope
) -> tuple[list[dict[str, Any]], str | None, int, int]:
    """A page of members (nested groups first, then users, then devices, each by name), the next cursor,
    how many the caller may see and how many are hidden from them.

    Each kind is read by its own keyset query ordered by (lower(name), id), so a page of a group with
    100,000 members walks the name index instead of sorting them all; the counts come in one round trip."""
    ids = await descendant_ids(session, group_id) if filters.transitive else [group_id]
    branches = _branches(group_id, ids, filters.type, device_scope, user_scope)
    if not branches:
        return [], None, 0, 0
    # Each count once, in one round trip (the visible count is often the same expression).
    expressions: list[Any] = []
    for b in branches:
        expressions.extend(e for e in (b.count_all, b.count_visible) if not any(e is x for x in expressions))
    values = (await session.execute(select(*expressions))).one()

    def value(expression: Any) -> int:
        return int(values[next(i for i, x in enumerate(expressions) if x is expression)] or 0)

    total_all = sum(value(b.count_all) for b in branches)
    total = sum(value(b.count_visible) for b in branches)
    cursor = decode_cursor(filters.cursor)
    after: tuple[int, str, uuid.UUID] | None = None
    if cursor is not None:
        try:
            after = (int(cursor[0]), str(cursor[1]), uuid.UUID(str(cursor[2])))
        except (ValueError, TypeError, IndexError) as exc:
            raise BadRequest(BAD_CURSOR) from exc
    rows: list[dict[str, Any]] = []
    for branch in branches:
        stmt = _after(branch, after)
        if stmt is None:
            continue
        wanted = filters.limit + 1 - len(rows)
        found = await session.execute(stmt.limit(wanted))
        rows.extend(dict(row._mapping) for row in found.all())
        if len(rows) > filters.limit:
            break
    items = rows[: filters.limit]
    next_cursor = None
    if len(rows) > filters.limit and items:
        last = items[-1]
        next_cursor = encode_cursor([last["rank"], last["sort"], str(last["id"])])
    return items, next_cursor, total, total_all - total


# ------------------------------------------------------------------------------------- member-of (upwards)
async def direct_groups_of(session: AsyncSession, kind: MemberType, member_id: uuid.UUID) -> list[uuid.UUID]:
    if kind is MemberType.device:
        stmt = select(group_devices.c.group_id).where(group_devices.c.device_id == member_id)
    elif kind is MemberType.user:
        stmt = select(group_users.c.group_id).where(group_users.c.user_id == member_id)
    else:
        stmt = select(group_children.c.parent_id).where(group_children.c.child_id == member_id)
    return list((await session.scalars(stmt)).all())


async def ancestor_edges(
    session: AsyncSession, start: Sequence[uuid.UUID]
) -> list[tuple[uuid.UUID, uuid.UUID]]:
    """(child, parent) nesting edges above the ``start`` groups, at any height."""
    if not start:
        return []
    seed = (
        select(group_children.c.child_id.label("child"), group_children.c.parent_id.label("parent"))
        .where(group_children.c.child_id.in_(start))
        .cte("up", recursive=True)
    )
    up = seed.union(
        select(group_children.c.child_id, group_children.c.parent_id).where(
            group_children.c.child_id == seed.c.parent
        )
    )
    return [(row[0], row[1]) for row in (await session.execute(select(up.c.child, up.c.parent))).all()]


# ------------------------------------------------------------------------------------------ preview lookups
def devices_scoped(stmt: Select[Any], scope: Scope) -> Select[Any]:
    return devices_repository.scoped(stmt, scope)


async def enrollment_token_name(session: AsyncSession, token_id: uuid.UUID | None) -> str | None:
    if token_id is None:
        return None
    name: str | None = await session.scalar(
        select(EnrollmentToken.name).where(EnrollmentToken.id == token_id)
    )
    return name


async def preview(
    session: AsyncSession, stmt: Select[Any], sort: ColumnElement[Any], id_column: Any, limit: int
) -> tuple[int, list[Any]]:
    count = int(await session.scalar(select(func.count()).select_from(stmt.subquery())) or 0)
    rows: list[Any] = []
    if limit:
        rows = list((await session.execute(stmt.order_by(sort, id_column).limit(limit))).all())
    return count, rows


async def devices_named(session: AsyncSession, lookup: str, scope: Scope, limit: int = 5) -> list[Device]:
    """Devices in scope whose name or serial number is ``lookup`` (ignoring case), active ones first."""
    needle = lookup.strip().lower()
    conditions: list[ColumnElement[bool]] = [
        func.lower(Device.name) == needle,
        func.lower(Device.serial_number) == needle,
    ]
    with contextlib.suppress(ValueError):
        conditions.append(Device.id == uuid.UUID(needle))
    stmt = devices_repository.scoped(select(Device).where(or_(*conditions)), scope)
    stmt = stmt.order_by(Device.management_state.in_(("retired", "wiped")), Device.enrolled_at.desc())
    return list((await session.scalars(stmt.limit(limit))).all())


async def users_named(session: AsyncSession, lookup: str, scope: Scope, limit: int = 5) -> list[User]:
    """Users in scope whose sign-in name or email address is ``lookup`` (ignoring case), or with that id."""
    needle = lookup.strip().lower()
    conditions: list[ColumnElement[bool]] = [
        func.lower(User.user_principal_name) == needle,
        func.lower(User.email) == needle,
    ]
    with contextlib.suppress(ValueError):
        conditions.append(User.id == uuid.UUID(needle))
    stmt = users_repository.scoped(select(User).where(or_(*conditions)), scope)
    return list((await session.scalars(stmt.limit(limit))).all())


async def groups_named(session: AsyncSession, lookup: str, limit: int = 5) -> list[Group]:
    needle = lookup.strip().lower()
    conditions: list[ColumnElement[bool]] = [func.lower(Group.display_name) == needle]
    with contextlib.suppress(ValueError):
        conditions.append(Group.id == uuid.UUID(needle))
    return list((await session.scalars(select(Group).where(or_(*conditions)).limit(limit))).all())


async def matches_one(
    session: AsyncSession, condition: ColumnElement[bool], entity: Any, object_id: uuid.UUID
) -> bool:
    return bool(await session.scalar(select(condition).select_from(entity).where(entity.id == object_id)))
