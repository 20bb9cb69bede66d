from __future__ import annotations

import uuid
from collections.abc import Sequence

from sqlalchemy import delete, func, select
from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.ext.asyncio import AsyncSession

from corral.models import Group, GroupSource, IdentityConnection, User, UserIdentity, group_users


async def connections(session: AsyncSession) -> list[IdentityConnection]:
    stmt = select(IdentityConnection).order_by(func.lower(IdentityConnection.name))
    return list((await session.scalars(stmt)).all())


async def sign_in_connections(session: AsyncSession) -> list[IdentityConnection]:
    stmt = (
        select(IdentityConnection)
        .where(
            IdentityConnection.enabled.is_(True),
            IdentityConnection.oidc_enabled.is_(True),
            IdentityConnection.issuer.isnot(None),
        )
        .order_by(func.lower(IdentityConnection.name))
    )
    return list((await session.scalars(stmt)).all())


async def connection_named(session: AsyncSession, name: str) -> IdentityConnection | None:
    stmt = select(IdentityConnection).where(func.lower(IdentityConnection.name) == name.lower())
    return await session.scalar(stmt)


async def identity(session: AsyncSession, issuer: str, subject: str) -> UserIdentity | None:
    stmt = select(UserIdentity).where(UserIdentity.issuer == issuer, UserIdentity.subject == subject)
    return await session.scalar(stmt)


async def user_by_upn(session: AsyncSession, upn: str) -> User | None:
    return await session.scalar(select(User).where(func.lower(User.user_principal_name) == upn.lower()))


async def oidc_groups(
    session: AsyncSession, connection_id: uuid.UUID, external_ids: Sequence[str]
) -> dict[str, uuid.UUID]:
    """The connection's groups for these claim values, created when missing."""
    if not external_ids:
        return {}
    await session.execute(
        insert(Group)
        .values(
            [
                {
                    "id": uuid.uuid4(),
                    "display_name": value[:256],
                    "description": "From the identity provider's group claim",
                    "source": GroupSource.oidc,
                    "external_id": value,
                    "connection_id": connection_id,
                }
                for value in external_ids
            ]
        )
        .on_conflict_do_nothing(
            index_elements=[Group.connection_id, Group.external_id],
            index_where=Group.external_id.isnot(None),
        )
    )
    rows = await session.execute(
        select(Group.external_id, Group.id).where(
            Group.connection_id == connection_id, Group.external_id.in_(external_ids)
        )
    )
    return {str(row[0]): row[1] for row in rows.all()}


async def user_oidc_groups(
    session: AsyncSession, connection_id: uuid.UUID, user_id: uuid.UUID
) -> dict[uuid.UUID, str]:
    rows = await session.execute(
        select(Group.id, Group.external_id)
        .join(group_users, group_users.c.group_id == Group.id)
        .where(
            group_users.c.user_id == user_id,
            Group.connection_id == connection_id,
            Group.source == GroupSource.oidc,
        )
    )
    return {row[0]: str(row[1]) for row in rows.all()}


async def add_memberships(session: AsyncSession, user_id: uuid.UUID, group_ids: Sequence[uuid.UUID]) -> None:
    if group_ids:
        await session.execute(
            insert(group_users)
            .values([{"group_id": g, "user_id": user_id} for g in group_ids])
            .on_conflict_do_nothing()
        )


async def remove_memberships(
    session: AsyncSession, user_id: uuid.UUID, group_ids: Sequence[uuid.UUID]
) -> None:
    if group_ids:
        await session.execute(
            delete(group_users).where(group_users.c.user_id == user_id, group_users.c.group_id.in_(group_ids))
        )
