from __future__ import annotations

import uuid
from datetime import datetime

from sqlalchemy import Select, bindparam, case, delete, func, select, text, update
from sqlalchemy.dialects.postgresql import ARRAY, insert
from sqlalchemy.dialects.postgresql import UUID as PG_UUID
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm import joinedload

from corral.models import (
    ApiToken,
    RoleAssignment,
    SignInThrottle,
    User,
    UserSession,
    UserSource,
    group_children,
    group_users,
    role_assignment_member_groups,
    role_assignment_members,
)


async def user_by_sign_in_name(session: AsyncSession, name: str) -> User | None:
    """The account a typed sign-in name means: its user principal name (any case) or, failing that, the
    email address of exactly one local account (never an address that two users share, never an
    identity-provider account, whose sign-in belongs to the provider)."""
    needle = name.strip().lower()
    if not needle:
        return None
    user: User | None = await session.scalar(
        select(User).where(func.lower(User.user_principal_name) == needle)
    )
    if user is not None:
        return user
    holders = list(
        (await session.scalars(select(User).where(func.lower(User.email) == needle).limit(2))).all()
    )
    if len(holders) == 1 and holders[0].source == UserSource.local:
        return holders[0]
    return None


async def session_with_user(session: AsyncSession, token_hash: bytes) -> tuple[UserSession, User] | None:
    row = (
        await session.execute(
            select(UserSession, User)
            .join(User, User.id == UserSession.user_id)
            .where(UserSession.token_hash == token_hash)
        )
    ).first()
    return (row[0], row[1]) if row else None


async def token_with_user(session: AsyncSession, token_hash: bytes) -> tuple[ApiToken, User] | None:
    row = (
        await session.execute(
            select(ApiToken, User)
            .join(User, User.id == ApiToken.user_id)
            .where(ApiToken.token_hash == token_hash)
        )
    ).first()
    return (row[0], row[1]) if row else None


def _assignments_of_user() -> Select[RoleAssignment]:
    user_id = bindparam("user_id", type_=PG_UUID(as_uuid=True))
    seed = select(group_users.c.group_id.label("id")).where(group_users.c.user_id == user_id)
    groups = seed.cte("user_groups", recursive=True)
    groups = groups.union(select(group_children.c.parent_id).where(group_children.c.child_id == groups.c.id))
    via_group = select(role_assignment_member_groups.c.role_assignment_id).where(
        role_assignment_member_groups.c.group_id.in_(select(groups.c.id))
    )
    direct = select(role_assignment_members.c.role_assignment_id).where(
        role_assignment_members.c.user_id == user_id
    )
    return (
        select(RoleAssignment)
        .where(RoleAssignment.id.in_(direct.union(via_group)))
        # One round trip on every admin request: an administrator holds a few assignments with a few scope
        # tags and groups each, so joining them costs less than a query per relationship.
        .options(
            joinedload(RoleAssignment.role),
            joinedload(RoleAssignment.scope_tags),
            joinedload(RoleAssignment.scope_groups),
        )
        .order_by(RoleAssignment.name)
    )


# Built once: on every admin request, building it (a recursive CTE, three eager loads) cost more CPU than
# running it.
_ASSIGNMENTS_OF_USER = _assignments_of_user()


async def assignments_of(session: AsyncSession, user_id: uuid.UUID) -> list[RoleAssignment]:
    """The role assignments a user holds: as a member, or through a member group they belong to directly
    or through nested groups (at any depth)."""
    result = await session.scalars(_ASSIGNMENTS_OF_USER, {"user_id": user_id})
    return list(result.unique().all())


_NESTED = text(
    """
    WITH RECURSIVE tree(root, id) AS (
        SELECT r, r FROM unnest(CAST(:roots AS uuid[])) AS r
        UNION
        SELECT tree.root, c.child_id FROM group_children c JOIN tree ON c.parent_id = tree.id
    )
    SELECT root, id FROM tree
    """
).bindparams(bindparam("roots", type_=ARRAY(PG_UUID(as_uuid=True))))


async def with_nested(session: AsyncSession, roots: set[uuid.UUID]) -> dict[uuid.UUID, frozenset[uuid.UUID]]:
    """Each group with every group nested in it at any depth (itself included), in one statement."""
    if not roots:
        return {}
    found: dict[uuid.UUID, set[uuid.UUID]] = {}
    for root, group_id in (await session.execute(_NESTED, {"roots": sorted(roots)})).all():
        found.setdefault(root, set()).add(group_id)
    return {root: frozenset(ids) for root, ids in found.items()}


async def delete_session(session: AsyncSession, session_id: uuid.UUID) -> None:
    await session.execute(delete(UserSession).where(UserSession.id == session_id))


async def delete_sessions_of(session: AsyncSession, user_id: uuid.UUID) -> int:
    result = await session.execute(delete(UserSession).where(UserSession.user_id == user_id))
    return int(result.rowcount or 0)  # type: ignore[attr-defined]


async def touch_session(session: AsyncSession, session_id: uuid.UUID, now: datetime) -> None:
    await session.execute(update(UserSession).where(UserSession.id == session_id).values(last_seen_at=now))


async def touch_token(session: AsyncSession, token_id: uuid.UUID, now: datetime) -> None:
    await session.execute(update(ApiToken).where(ApiToken.id == token_id).values(last_used_at=now))


async def throttle_delays(session: AsyncSession, keys: list[str], now: datetime) -> list[datetime]:
    """When the delays running under these keys end (the ones still running at ``now``)."""
    ends = await session.scalars(
        select(SignInThrottle.locked_until).where(
            SignInThrottle.key.in_(keys), SignInThrottle.locked_until > now
        )
    )
    return [end for end in ends if end is not None]


async def lock_throttle(session: AsyncSession, key: str, now: datetime) -> SignInThrottle:
    await session.execute(
        insert(SignInThrottle).values(key=key, failures=0, window_started_at=now).on_conflict_do_nothing()
    )
    row = await session.scalar(select(SignInThrottle).where(SignInThrottle.key == key).with_for_update())
    assert row is not None
    return row


async def uncount_throttles(session: AsyncSession, limits: list[tuple[str, int]]) -> None:
    """One failure fewer under each key (in the order given), no delay where that leaves it below its limit,
    and no row where it leaves none."""
    for key, limit in limits:
        await session.execute(
            update(SignInThrottle)
            .where(SignInThrottle.key == key)
            .values(
                failures=func.greatest(SignInThrottle.failures - 1, 0),
                locked_until=case(
                    (SignInThrottle.failures - 1 < limit, None), else_=SignInThrottle.locked_until
                ),
            )
        )
    keys = [key for key, _ in limits]
    if keys:
        await session.execute(
            delete(SignInThrottle).where(SignInThrottle.key.in_(keys), SignInThrottle.failures == 0)
        )


async def clear_throttles(session: AsyncSession, keys: list[str]) -> None:
    if keys:
        await session.execute(delete(SignInThrottle).where(SignInThrottle.key.in_(keys)))


async def sessions_of(session: AsyncSession, user_id: uuid.UUID) -> list[UserSession]:
    return list((await session.scalars(select(UserSession).where(UserSession.user_id == user_id))).all())
