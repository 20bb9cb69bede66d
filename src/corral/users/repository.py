from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Callable, Sequence
from datetime import datetime
from typing import Any

from sqlalchemy import (
    ColumnElement,
    CompoundSelect,
    Select,
    exists,
    false,
    func,
    literal_column,
    or_,
    select,
    tuple_,
    union,
)
from sqlalchemy.dialects.postgresql import ARRAY
from sqlalchemy.dialects.postgresql import UUID as PG_UUID
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm import with_expression

from corral.errors import BadRequest
from corral.kit.csvexport import EXPORT_BATCH
from corral.kit.db import EPOCH_SQL
from corral.kit.pagination import Total, decode_cursor, keyset_page, page_total
from corral.models import (
    RoleAssignment,
    RoleDefinition,
    User,
    group_children,
    group_users,
    role_assignment_member_groups,
    role_assignment_members,
)
from corral.rbac.principal import Scope
from corral.users.schemas import UserFilter

TEXT_SORTS = {"display_name", "user_principal_name"}


async def get(session: AsyncSession, user_id: uuid.UUID, *, for_update: bool = False) -> User | None:
    if for_update:
        result: User | None = await session.scalar(select(User).where(User.id == user_id).with_for_update())
        return result
    return await session.get(User, user_id)


# The groups a user belongs to directly (User.member_of).
MEMBER_OF: ColumnElement[list[uuid.UUID]] = func.coalesce(
    select(func.array_agg(group_users.c.group_id)).where(group_users.c.user_id == User.id).scalar_subquery(),
    literal_column("'{}'::uuid[]", ARRAY(PG_UUID(as_uuid=True))),
    type_=ARRAY(PG_UUID(as_uuid=True)),
)


async def get_with_groups(session: AsyncSession, user_id: uuid.UUID) -> User | None:
    """The user with ``User.member_of`` loaded (refreshing the one already in the session)."""
    stmt = (
        select(User)
        .where(User.id == user_id)
        .options(with_expression(User.member_of, MEMBER_OF))
        .execution_options(populate_existing=True)
    )
    result: User | None = await session.scalar(stmt)
    return result


def reaches_user(user: User) -> Callable[[Scope], bool]:
    """Whether a scope reaches the user: users carry no scope tags, so by the groups they belong to
    (``User.member_of``, loaded by ``get_with_groups``) when a reach is limited to groups."""

    def within(scope: Scope) -> bool:
        if not scope.limits_groups:
            return not scope.empty
        if user.member_of is None:
            raise RuntimeError("user loaded without their groups: use users.repository.get_with_groups")
        return scope.covers_user(user.member_of)

    return within


def scoped(stmt: Select[Any], scope: Scope) -> Select[Any]:
    """Users in a scope: users carry no scope tags, so only scope groups limit it (members of one of the
    groups some reach names; everyone if a reach names none)."""
    if scope.empty:
        return stmt.where(false())
    if any(reach.group_ids is None for reach in scope.reaches):
        return stmt
    ids = sorted({g for reach in scope.reaches for g in reach.group_ids or ()})
    return stmt.where(exists().where(group_users.c.user_id == User.id, group_users.c.group_id.in_(ids)))


async def by_upn(session: AsyncSession, upn: str) -> User | None:
    return await session.scalar(
        select(User).where(func.lower(User.user_principal_name) == upn.strip().lower())
    )


def _role_holdings() -> CompoundSelect[tuple[uuid.UUID, uuid.UUID]]:
    """(user_id, role_assignment_id) for every role assignment a user holds: as a member, or as a user of a
    member group or of a group nested in one at any depth (a recursive CTE over the member groups)."""
    seed = select(
        role_assignment_member_groups.c.role_assignment_id, role_assignment_member_groups.c.group_id
    ).cte("assignment_groups", recursive=True)
    # UNION (not UNION ALL): terminates even if a cycle of nested groups slipped in.
    tree = seed.union(
        select(seed.c.role_assignment_id, group_children.c.child_id).where(
            group_children.c.parent_id == seed.c.group_id
        )
    )
    return union(
        select(role_assignment_members.c.user_id, role_assignment_members.c.role_assignment_id),
        select(group_users.c.user_id, tree.c.role_assignment_id).where(
            group_users.c.group_id == tree.c.group_id
        ),
    )


def _admin_ids() -> Select[tuple[uuid.UUID]]:
    """The ids of users holding at least one role assignment, directly or through groups."""
    holdings = _role_holdings().subquery("holdings")
    return select(holdings.c.user_id)


def _is_admin() -> ColumnElement[bool]:
    return User.id.in_(_admin_ids())


async def is_admin(session: AsyncSession, user_id: uuid.UUID) -> bool:
    holdings = _role_holdings().subquery("holdings")
    return bool(await session.scalar(select(exists().where(holdings.c.user_id == user_id))))


async def admin_ids(session: AsyncSession, user_ids: list[uuid.UUID]) -> set[uuid.UUID]:
    holdings = _role_holdings().subquery("holdings")
    stmt = select(holdings.c.user_id).where(holdings.c.user_id.in_(user_ids)).distinct()
    return set((await session.scalars(stmt)).all())


async def admin_role_names(session: AsyncSession) -> dict[uuid.UUID, set[str]]:
    """Each administrator's role names, held directly or through groups."""
    holdings = _role_holdings().subquery("holdings")
    stmt = (
        select(holdings.c.user_id, RoleDefinition.name)
        .join(RoleAssignment, RoleAssignment.id == holdings.c.role_assignment_id)
        .join(RoleDefinition, RoleDefinition.id == RoleAssignment.role_id)
        .distinct()
    )
    roles: dict[uuid.UUID, set[str]] = {}
    for user_id, name in (await session.execute(stmt)).all():
        roles.setdefault(user_id, set()).add(name)
    return roles


async def list_admins(session: AsyncSession, scope: Scope) -> list[User]:
    """The administrators a scope reaches."""
    stmt = scoped(select(User).where(_is_admin()), scope).order_by(func.lower(User.user_principal_name))
    return list((await session.scalars(stmt)).all())


async def list_all(session: AsyncSession, needle: str | None = None, limit: int = 200) -> list[User]:
    """A short list for pickers (role assignment members): administrators first, then by name."""
    stmt = select(User).order_by(_is_admin().desc(), func.lower(User.user_principal_name)).limit(limit)
    if needle:
        stmt = stmt.where(search(needle))
    return list((await session.scalars(stmt)).all())


async def count(session: AsyncSession, scope: Scope) -> int:
    """How many users a scope reaches."""
    stmt = scoped(select(func.count()).select_from(User), scope)
    return int(await session.scalar(stmt) or 0)


# ------------------------------------------------------------------------------------------- the user list
def search(needle: str) -> ColumnElement[bool]:
    needle = needle.strip()
    return or_(
        User.user_principal_name.icontains(needle, autoescape=True),
        User.display_name.icontains(needle, autoescape=True),
        User.email.icontains(needle, autoescape=True),
    )


def _sort_expr(sort: str) -> tuple[ColumnElement[Any], bool]:
    descending = sort.startswith("-")
    key = sort.lstrip("-")
    expr: ColumnElement[Any]
    if key == "display_name":
        expr = func.lower(User.display_name)
    elif key == "user_principal_name":
        expr = func.lower(User.user_principal_name)
    elif key == "last_sign_in_at":
        expr = func.coalesce(User.last_sign_in_at, EPOCH_SQL)
    else:
        expr = User.created_at.expression
    return expr, descending


def filtered(filters: UserFilter, scope: Scope) -> Select[Any]:
    stmt = scoped(select(User), scope)
    if filters.search and filters.search.strip():
        stmt = stmt.where(search(filters.search))
    if filters.source is not None:
        stmt = stmt.where(User.source == filters.source)
    if filters.enabled is not None:
        stmt = stmt.where(User.enabled.is_(filters.enabled))
    if filters.department:
        stmt = stmt.where(func.lower(User.department) == filters.department.strip().lower())
    return stmt


def page_statements(filters: UserFilter, scope: Scope) -> tuple[Select[Any], Select[Any]]:
    """A page's two statements: the filtered users (what its total counts) and its rows, the users after the
    cursor in sort order with their sort key last, one more than the limit (is there a next page?)."""
    base = filtered(filters, scope)
    expr, descending = _sort_expr(filters.sort)
    stmt = base
    cursor = decode_cursor(filters.cursor)
    if cursor is not None:
        try:
            value, last_id = cursor
            if filters.sort.lstrip("-") not in TEXT_SORTS:
                value = datetime.fromisoformat(value)
            elif not isinstance(value, str):
                raise TypeError("not a text key")
            last_uuid = uuid.UUID(str(last_id))
        except (ValueError, TypeError) as exc:
            raise BadRequest("The pagination cursor is malformed; start again from the first page.") from exc
        key = tuple_(expr, User.id)
        stmt = stmt.where(key < tuple_(value, last_uuid) if descending else key > tuple_(value, last_uuid))
    order = (expr.desc(), User.id.desc()) if descending else (expr.asc(), User.id.asc())
    # The cursor holds the sort key as the database computed it (its lower() is what it compares).
    return base, stmt.add_columns(expr).order_by(*order).limit(filters.limit + 1)


async def page(
    session: AsyncSession, filters: UserFilter, scope: Scope
) -> tuple[list[User], str | None, Total]:
    base, rows_stmt = page_statements(filters, scope)
    rows = (await session.execute(rows_stmt)).all()
    items, next_cursor = keyset_page(rows, filters.limit)
    return items, next_cursor, await page_total(session, base, filters.cursor, items, next_cursor)


async def export(session: AsyncSession, filters: UserFilter, scope: Scope) -> AsyncIterator[Sequence[User]]:
    """Every filtered user in sort order, in batches of ``EXPORT_BATCH`` read from one server-side cursor."""
    expr, descending = _sort_expr(filters.sort)
    stmt = filtered(filters, scope).order_by(expr.desc() if descending else expr.asc(), User.id)
    result = await session.stream_scalars(stmt.execution_options(yield_per=EXPORT_BATCH))
    async for batch in result.partitions():
        yield batch


async def departments(session: AsyncSession, scope: Scope, limit: int = 500) -> list[str]:
    """The departments of the users a scope reaches (the user list's filter choices)."""
    stmt = (
        scoped(select(User.department), scope)
        .where(User.department.isnot(None), User.department != "")
        .group_by(User.department)
        .order_by(func.lower(User.department))
        .limit(limit)
    )
    return [d for d in (await session.scalars(stmt)).all() if d]
