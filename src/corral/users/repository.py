from __future__ import annotations

import uuid

from sqlalchemy import exists, func, select
from sqlalchemy.ext.asyncio import AsyncSession

from corral.models import User, role_assignment_members


async def get(session: AsyncSession, user_id: uuid.UUID) -> User | None:
    return await session.get(User, user_id)


async def by_email(session: AsyncSession, email: str) -> User | None:
    return await session.scalar(select(User).where(func.lower(User.email) == email.strip().lower()))


async def list_admins(session: AsyncSession) -> list[User]:
    is_member = exists().where(role_assignment_members.c.user_id == User.id)
    return list((await session.scalars(select(User).where(is_member).order_by(User.email))).all())


async def list_all(session: AsyncSession, search: str | None = None, limit: int = 200) -> list[User]:
    stmt = select(User).order_by(User.email).limit(limit)
    if search:
        stmt = stmt.where(
            User.email.icontains(search, autoescape=True)
            | User.display_name.icontains(search, autoescape=True)
        )
    return list((await session.scalars(stmt)).all())


async def count(session: AsyncSession) -> int:
    return int(await session.scalar(select(func.count()).select_from(User)) or 0)
