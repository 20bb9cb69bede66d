from __future__ import annotations

import uuid

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from corral.models import ApiToken, User


async def list_for_user(session: AsyncSession, user_id: uuid.UUID) -> list[ApiToken]:
    stmt = select(ApiToken).where(ApiToken.user_id == user_id).order_by(ApiToken.created_at.desc())
    return list((await session.scalars(stmt)).all())


async def list_all(session: AsyncSession) -> list[tuple[ApiToken, str]]:
    stmt = (
        select(ApiToken, User.user_principal_name)
        .join(User, User.id == ApiToken.user_id)
        .order_by(ApiToken.created_at.desc())
    )
    return [(row[0], row[1]) for row in (await session.execute(stmt)).all()]


async def get(session: AsyncSession, token_id: uuid.UUID) -> ApiToken | None:
    return await session.get(ApiToken, token_id)
