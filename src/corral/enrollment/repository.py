from __future__ import annotations

import uuid
from datetime import datetime

from sqlalchemy import Select, bindparam, exists, or_, select, update
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm import joinedload, selectinload

from corral.devices import repository as devices_repository
from corral.models import (
    Device,
    EnrollmentToken,
    EnrollmentTokenUse,
    enrollment_token_scope_tags,
)
from corral.rbac.principal import Scope


def scoped(stmt: Select[EnrollmentToken], scope: Scope) -> Select[EnrollmentToken]:
    """Tokens visible in a scope: all, or those carrying one of its tags (scope groups concern users and
    devices, not tokens)."""
    scope = scope.ignoring_groups()
    if scope.all:
        return stmt
    tagged = exists().where(
        enrollment_token_scope_tags.c.enrollment_token_id == EnrollmentToken.id,
        enrollment_token_scope_tags.c.scope_tag_id.in_(scope.tag_ids),
    )
    return stmt.where(tagged)


async def list_tokens(session: AsyncSession, scope: Scope) -> list[EnrollmentToken]:
    stmt = select(EnrollmentToken).options(selectinload(EnrollmentToken.scope_tags))
    stmt = scoped(stmt, scope).order_by(EnrollmentToken.created_at.desc())
    return list((await session.scalars(stmt)).all())


async def get_token(session: AsyncSession, token_id: uuid.UUID) -> EnrollmentToken | None:
    stmt = (
        select(EnrollmentToken)
        .options(selectinload(EnrollmentToken.scope_tags))
        .where(EnrollmentToken.id == token_id)
    )
    result: EnrollmentToken | None = await session.scalar(stmt)
    return result


# Built once (enrollment's hot path); its scope tags in the same round trip. FOR NO KEY UPDATE of the token
# row only: token-use rows may still reference it.
_TOKEN_BY_HASH = (
    select(EnrollmentToken)
    .options(joinedload(EnrollmentToken.scope_tags))
    .where(EnrollmentToken.token_hash == bindparam("token_hash"))
    .with_for_update(of=EnrollmentToken, key_share=True)
)


_TOKEN_BY_ID = (
    select(EnrollmentToken)
    .options(joinedload(EnrollmentToken.scope_tags))
    .where(EnrollmentToken.id == bindparam("token_id"))
    .with_for_update(of=EnrollmentToken, key_share=True)
)


async def token_for_update(session: AsyncSession, token_id: uuid.UUID) -> EnrollmentToken | None:
    """The token, locked as for an enrollment (Apple's devices name theirs through the identity SCEP
    issued for it)."""
    result = await session.scalars(_TOKEN_BY_ID, {"token_id": token_id})
    token: EnrollmentToken | None = result.unique().first()
    return token


async def token_by_hash_for_update(session: AsyncSession, token_hash: bytes) -> EnrollmentToken | None:
    result = await session.scalars(_TOKEN_BY_HASH, {"token_hash": token_hash})
    token: EnrollmentToken | None = result.unique().first()
    return token


async def uses_of(
    session: AsyncSession, token_id: uuid.UUID, device_scope: Scope, limit: int = 200
) -> list[EnrollmentTokenUse]:
    """The token's latest uses: attempts that enrolled no device, and those whose device ``device_scope``
    reaches."""
    stmt = (
        select(EnrollmentTokenUse)
        .where(EnrollmentTokenUse.token_id == token_id)
        .order_by(EnrollmentTokenUse.occurred_at.desc())
        .limit(limit)
    )
    if not device_scope.all:
        reached = devices_repository.scoped(select(Device.id), device_scope)
        stmt = stmt.where(
            or_(EnrollmentTokenUse.device_id.is_(None), EnrollmentTokenUse.device_id.in_(reached))
        )
    return list((await session.scalars(stmt)).all())


async def revoke_bound_to(session: AsyncSession, user_id: uuid.UUID, now: datetime) -> list[str]:
    """Revoke the live tokens bound to a user; returns their names."""
    result = await session.execute(
        update(EnrollmentToken)
        .where(EnrollmentToken.user_id == user_id, EnrollmentToken.revoked_at.is_(None))
        .values(revoked_at=now)
        .returning(EnrollmentToken.name)
    )
    return sorted(result.scalars().all())
