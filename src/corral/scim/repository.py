"""Every query of the SCIM service provider: a connection sees only the users and groups it provisioned."""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from typing import Any

from sqlalchemy import ColumnElement, and_, exists, false, func, select, true
from sqlalchemy.ext.asyncio import AsyncSession

from corral.models import (
    Group,
    GroupSource,
    IdentityConnection,
    User,
    UserSource,
    group_children,
    group_users,
)
from corral.scim.filters import ENTERPRISE, Attribute

CHILD = Group.__table__.alias("child")


def _uuid_or_none(value: Any) -> uuid.UUID | None:
    try:
        return uuid.UUID(str(value))
    except ValueError:
        return None


def _string_condition(column: Any, op: str, value: Any) -> ColumnElement[bool]:
    from corral.scim.filters import _compare_string

    return _compare_string(Attribute(column=column), op, value)


def _email_type(op: str, value: Any) -> ColumnElement[bool]:
    """The one address Corral keeps is of type work."""
    has_email: ColumnElement[bool] = User.email.isnot(None)
    if op == "pr":
        return has_email
    if op not in {"eq", "ne"} or not isinstance(value, str):
        from corral.scim.errors import ScimError

        raise ScimError(400, "emails.type is compared with eq or ne and a string.", "invalidFilter")
    work = value.lower() == "work"
    matched = has_email if work else false()
    return matched if op == "eq" else ~matched


USER_ATTRIBUTES: dict[str, Attribute] = {
    "id": Attribute(User.id, kind="uuid"),
    "username": Attribute(User.user_principal_name),
    "externalid": Attribute(User.external_id, case_exact=True),
    "displayname": Attribute(User.display_name),
    "name.givenname": Attribute(User.given_name),
    "name.familyname": Attribute(User.surname),
    "title": Attribute(User.job_title),
    "emails": Attribute(User.email),
    "emails.value": Attribute(User.email),
    "emails.type": Attribute(condition=_email_type),
    "active": Attribute(User.enabled, kind="boolean"),
    f"{ENTERPRISE.lower()}:department": Attribute(User.department),
    "meta.created": Attribute(User.created_at, kind="datetime"),
    "meta.lastmodified": Attribute(User.updated_at, kind="datetime"),
}


def _members_value(op: str, value: Any) -> ColumnElement[bool]:
    if op == "pr":
        return _has_members()
    if op not in {"eq", "ne"} or not isinstance(value, str):
        from corral.scim.errors import ScimError

        raise ScimError(400, "members.value is compared with eq or ne and an id.", "invalidFilter")
    wanted = _uuid_or_none(value)
    if wanted is None:
        found: ColumnElement[bool] = ~true()
    else:
        found = exists().where(
            group_users.c.group_id == Group.id, group_users.c.user_id == wanted
        ) | exists().where(group_children.c.parent_id == Group.id, group_children.c.child_id == wanted)
    return found if op == "eq" else ~found


def _has_members() -> ColumnElement[bool]:
    return exists().where(group_users.c.group_id == Group.id) | exists().where(
        group_children.c.parent_id == Group.id
    )


GROUP_ATTRIBUTES: dict[str, Attribute] = {
    "id": Attribute(Group.id, kind="uuid"),
    "displayname": Attribute(Group.display_name),
    "externalid": Attribute(Group.external_id, case_exact=True),
    "members": Attribute(condition=lambda op, value: _members_value(op, value)),
    "members.value": Attribute(condition=lambda op, value: _members_value(op, value)),
    "meta.created": Attribute(Group.created_at, kind="datetime"),
    "meta.lastmodified": Attribute(Group.updated_at, kind="datetime"),
}


# ------------------------------------------------------------------------------------------------ users
def _users_of(connection: IdentityConnection) -> ColumnElement[bool]:
    return and_(User.connection_id == connection.id, User.source == UserSource.scim)


async def user(session: AsyncSession, connection: IdentityConnection, user_id: str) -> User | None:
    ident = _uuid_or_none(user_id)
    if ident is None:
        return None
    return await session.scalar(select(User).where(User.id == ident, _users_of(connection)))


async def user_page(
    session: AsyncSession,
    connection: IdentityConnection,
    condition: ColumnElement[bool] | None,
    offset: int,
    limit: int,
) -> tuple[list[User], int]:
    stmt = select(User).where(_users_of(connection))
    if condition is not None:
        stmt = stmt.where(condition)
    total = int(await session.scalar(select(func.count()).select_from(stmt.subquery())) or 0)
    if limit == 0:
        return [], total
    rows = await session.scalars(stmt.order_by(User.created_at, User.id).offset(offset).limit(limit))
    return list(rows.all()), total


async def user_with_external_id(
    session: AsyncSession, connection: IdentityConnection, external_id: str
) -> User | None:
    return await session.scalar(
        select(User).where(User.connection_id == connection.id, User.external_id == external_id)
    )


async def users_by_ids(
    session: AsyncSession, connection: IdentityConnection, ids: Sequence[uuid.UUID]
) -> list[User]:
    if not ids:
        return []
    return list((await session.scalars(select(User).where(User.id.in_(ids), _users_of(connection)))).all())


# ------------------------------------------------------------------------------------------------ groups
def _groups_of(connection: IdentityConnection) -> ColumnElement[bool]:
    return and_(Group.connection_id == connection.id, Group.source == GroupSource.scim)


async def group(
    session: AsyncSession, connection: IdentityConnection, group_id: str, *, for_update: bool = False
) -> Group | None:
    ident = _uuid_or_none(group_id)
    if ident is None:
        return None
    stmt = select(Group).where(Group.id == ident, _groups_of(connection))
    if for_update:
        stmt = stmt.with_for_update()
    return await session.scalar(stmt)


async def group_page(
    session: AsyncSession,
    connection: IdentityConnection,
    condition: ColumnElement[bool] | None,
    offset: int,
    limit: int,
) -> tuple[list[Group], int]:
    stmt = select(Group).where(_groups_of(connection))
    if condition is not None:
        stmt = stmt.where(condition)
    total = int(await session.scalar(select(func.count()).select_from(stmt.subquery())) or 0)
    if limit == 0:
        return [], total
    rows = await session.scalars(stmt.order_by(Group.created_at, Group.id).offset(offset).limit(limit))
    return list(rows.all()), total


async def group_with_external_id(
    session: AsyncSession, connection: IdentityConnection, external_id: str
) -> Group | None:
    return await session.scalar(
        select(Group).where(Group.connection_id == connection.id, Group.external_id == external_id)
    )


async def groups_by_ids(
    session: AsyncSession, connection: IdentityConnection, ids: Sequence[uuid.UUID]
) -> list[Group]:
    if not ids:
        return []
    return list((await session.scalars(select(Group).where(Group.id.in_(ids), _groups_of(connection)))).all())


async def members_of(
    session: AsyncSession, group_ids: Sequence[uuid.UUID]
) -> dict[uuid.UUID, list[tuple[str, str, str]]]:
    """Direct members of these groups as (\"User\"/\"Group\", id, display name): two queries in all."""
    out: dict[uuid.UUID, list[tuple[str, str, str]]] = {g: [] for g in group_ids}
    if not group_ids:
        return out
    users = await session.execute(
        select(group_users.c.group_id, User.id, User.display_name)
        .join(User, User.id == group_users.c.user_id)
        .where(group_users.c.group_id.in_(group_ids))
        .order_by(group_users.c.group_id, User.id)
    )
    for group_id, ident, name in users.all():
        out[group_id].append(("User", str(ident), name))
    groups = await session.execute(
        select(group_children.c.parent_id, CHILD.c.id, CHILD.c.display_name)
        .join(CHILD, CHILD.c.id == group_children.c.child_id)
        .where(group_children.c.parent_id.in_(group_ids))
        .order_by(group_children.c.parent_id, CHILD.c.id)
    )
    for group_id, ident, name in groups.all():
        out[group_id].append(("Group", str(ident), name))
    return out


async def connection(session: AsyncSession, connection_id: uuid.UUID) -> IdentityConnection | None:
    return await session.get(IdentityConnection, connection_id)
