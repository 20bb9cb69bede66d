from __future__ import annotations

import uuid
from collections.abc import Sequence
from typing import Any, cast

from sqlalchemy import ScalarSelect, Select, exists, func, select
from sqlalchemy.ext.asyncio import AsyncSession

from corral.models import Licence, User, UserLicence
from corral.rbac.principal import Scope
from corral.users import repository as users_repository


def _assigned_count() -> ScalarSelect[int]:
    return (
        select(func.count())
        .select_from(UserLicence)
        .where(UserLicence.licence_id == Licence.id)
        .correlate(Licence)
        .scalar_subquery()
    )


async def list_with_counts(session: AsyncSession) -> list[tuple[Licence, int]]:
    stmt = select(Licence, _assigned_count()).order_by(func.lower(Licence.name))
    return [(row[0], int(row[1])) for row in (await session.execute(stmt)).all()]


async def get(session: AsyncSession, licence_id: uuid.UUID, *, for_update: bool = False) -> Licence | None:
    stmt = select(Licence).where(Licence.id == licence_id)
    if for_update:
        stmt = stmt.with_for_update()
    result: Licence | None = await session.scalar(stmt)
    return result


async def by_name(session: AsyncSession, name: str) -> Licence | None:
    return await session.scalar(select(Licence).where(func.lower(Licence.name) == name.lower()))


async def by_sku(session: AsyncSession, sku: str) -> Licence | None:
    return await session.scalar(select(Licence).where(func.lower(Licence.sku) == sku.lower()))


async def assigned_count(session: AsyncSession, licence_id: uuid.UUID) -> int:
    stmt = select(func.count()).select_from(UserLicence).where(UserLicence.licence_id == licence_id)
    return int(await session.scalar(stmt) or 0)


async def assignment(session: AsyncSession, user_id: uuid.UUID, licence_id: uuid.UUID) -> UserLicence | None:
    return await session.get(UserLicence, (user_id, licence_id))


async def of_user(session: AsyncSession, user_id: uuid.UUID) -> list[tuple[UserLicence, Licence]]:
    stmt = (
        select(UserLicence, Licence)
        .join(Licence, Licence.id == UserLicence.licence_id)
        .where(UserLicence.user_id == user_id)
        .order_by(func.lower(Licence.name))
    )
    return [(row[0], row[1]) for row in (await session.execute(stmt)).all()]


async def holds_any(session: AsyncSession, user_id: uuid.UUID) -> bool:
    return bool(await session.scalar(select(exists().where(UserLicence.user_id == user_id))))


async def holders(
    session: AsyncSession, licence_id: uuid.UUID, scope: Scope, limit: int = 1000
) -> list[tuple[UserLicence, User]]:
    """The licence's holders among the users ``scope`` reaches."""
    stmt = (
        cast("Select[Any]", select(UserLicence, User))
        .join(User, User.id == UserLicence.user_id)
        .where(UserLicence.licence_id == licence_id)
        .order_by(func.lower(User.user_principal_name))
        .limit(limit)
    )
    stmt = users_repository.scoped(stmt, scope)
    return [(row[0], row[1]) for row in (await session.execute(stmt)).all()]


async def names_by_user(session: AsyncSession, user_ids: Sequence[uuid.UUID]) -> dict[uuid.UUID, list[str]]:
    """The SKUs each user holds, for exports."""
    found: dict[uuid.UUID, list[str]] = {}
    for start in range(0, len(user_ids), 10_000):
        stmt = (
            select(UserLicence.user_id, Licence.sku)
            .join(Licence, Licence.id == UserLicence.licence_id)
            .where(UserLicence.user_id.in_(user_ids[start : start + 10_000]))
            .order_by(Licence.sku)
        )
        for user_id, sku in (await session.execute(stmt)).all():
            found.setdefault(user_id, []).append(sku)
    return found
