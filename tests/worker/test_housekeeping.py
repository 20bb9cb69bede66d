"""Housekeeping deletes exactly what no longer means anything, in batches; two runs at once are safe."""

from __future__ import annotations

import asyncio
import uuid
from datetime import timedelta

from sqlalchemy import insert, select, update
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from corral.checkin.auth import CLOCK_SKEW, MAX_AGE
from corral.config import Settings
from corral.kit.time import utcnow
from corral.models import DeviceNonce, SignInThrottle, User, UserSession
from corral.worker import housekeeping
from tests.conftest import Factory
from tests.worker.conftest import ago, make_device


async def _nonces(sessionmaker: async_sessionmaker[AsyncSession]) -> set[str]:
    async with sessionmaker() as session:
        return set((await session.scalars(select(DeviceNonce.nonce))).all())


async def test_nonces_past_the_replay_window_are_deleted_and_the_others_kept(
    sessionmaker: async_sessionmaker[AsyncSession],
) -> None:
    device = await make_device(sessionmaker)
    now = utcnow()
    expires = {
        # expires_at is set at check-in to the request time + MAX_AGE + CLOCK_SKEW.
        **{f"old-{n}": ago(now, hours=1 + n) for n in range(7)},
        "just-past-window-and-skew": now - CLOCK_SKEW - timedelta(seconds=1),
        "past-window-within-skew": now - CLOCK_SKEW + timedelta(seconds=5),
        "in-window": now + MAX_AGE,
    }
    async with sessionmaker() as session:
        await session.execute(
            insert(DeviceNonce),
            [{"device_id": device.id, "nonce": nonce, "expires_at": at} for nonce, at in expires.items()],
        )
        await session.commit()

    deleted = await housekeeping.purge_device_nonces(sessionmaker, batch=3, now=now)  # 3 + 3 + 2

    assert deleted == 8
    assert await _nonces(sessionmaker) == {"past-window-within-skew", "in-window"}
    assert await housekeeping.purge_device_nonces(sessionmaker, batch=3, now=now) == 0


async def test_ended_admin_sessions_are_deleted_and_live_ones_kept(
    sessionmaker: async_sessionmaker[AsyncSession], factory: Factory, settings: Settings
) -> None:
    active = await factory.admin(token=False)
    disabled = await factory.admin(token=False)
    now = utcnow()
    idle = timedelta(minutes=settings.session_idle_minutes)
    rows = {
        "past-absolute-lifetime": (active.id, ago(now, minutes=1), now - timedelta(minutes=2), False),
        "idle-too-long": (active.id, now + timedelta(hours=5), now - idle - timedelta(seconds=1), False),
        "disabled-account": (disabled.id, now + timedelta(hours=5), now - timedelta(minutes=1), False),
        "in-use": (active.id, now + timedelta(hours=5), now - timedelta(minutes=1), False),
        "waiting-for-second-factor": (active.id, now + timedelta(hours=5), now - timedelta(minutes=2), True),
        "almost-idle": (active.id, now + timedelta(hours=5), now - idle + timedelta(seconds=30), False),
    }
    ids = {name: uuid.uuid4() for name in rows}
    async with sessionmaker() as session:
        for name, (user_id, expires_at, last_seen_at, pending_mfa) in rows.items():
            session.add(
                UserSession(
                    id=ids[name],
                    token_hash=uuid.uuid4().bytes * 2,
                    user_id=user_id,
                    csrf_token=name,
                    created_at=now - timedelta(hours=1),
                    last_seen_at=last_seen_at,
                    expires_at=expires_at,
                    pending_mfa=pending_mfa,
                )
            )
        await session.execute(update(User).where(User.id == disabled.id).values(enabled=False))
        await session.commit()

    deleted = await housekeeping.purge_user_sessions(sessionmaker, settings, batch=2, now=now)

    assert deleted == 3
    async with sessionmaker() as session:
        left = set((await session.scalars(select(UserSession.csrf_token))).all())
    assert left == {"in-use", "waiting-for-second-factor", "almost-idle"}


async def test_throttle_rows_are_deleted_once_a_window_has_passed_since_counting_or_their_delay(
    sessionmaker: async_sessionmaker[AsyncSession], settings: Settings
) -> None:
    now = utcnow()
    window = timedelta(minutes=settings.signin_window_minutes)
    old = now - window - timedelta(seconds=1)
    rows = [
        ("account:old-window", old, None),
        ("client:delay-ended-a-window-ago", old - window, old),
        # Remembered for a window after its delay ended: a guesser who comes back waits longer.
        ("account-client:delay-just-ended|192.0.2.1", old - window, now - timedelta(seconds=1)),
        ("account:still-delayed", old, now + timedelta(minutes=5)),
        ("client:counting", now - timedelta(minutes=1), None),
        ("known:0123abcd:client-id", now - timedelta(minutes=1), now + window),
    ]
    async with sessionmaker() as session:
        await session.execute(
            insert(SignInThrottle),
            [{"key": k, "failures": 5, "window_started_at": w, "locked_until": lk} for k, w, lk in rows],
        )
        await session.commit()

    deleted = await housekeeping.purge_signin_throttles(sessionmaker, settings, batch=5000, now=now)

    assert deleted == 2
    async with sessionmaker() as session:
        left = set((await session.scalars(select(SignInThrottle.key))).all())
    assert left == {
        "account-client:delay-just-ended|192.0.2.1",
        "account:still-delayed",
        "client:counting",
        "known:0123abcd:client-id",
    }


async def test_two_purges_at_once_delete_every_row_exactly_once(
    sessionmaker: async_sessionmaker[AsyncSession],
) -> None:
    device = await make_device(sessionmaker)
    now = utcnow()
    async with sessionmaker() as session:
        await session.execute(
            insert(DeviceNonce),
            [
                {"device_id": device.id, "nonce": f"old-{n}", "expires_at": ago(now, hours=1)}
                for n in range(2500)
            ]
            + [{"device_id": device.id, "nonce": "fresh", "expires_at": now + MAX_AGE}],
        )
        await session.commit()

    first, second = await asyncio.gather(
        housekeeping.purge_device_nonces(sessionmaker, batch=100, now=now),
        housekeeping.purge_device_nonces(sessionmaker, batch=100, now=now),
    )

    assert first + second == 2500  # each row counted by the run that deleted it, none twice
    assert await _nonces(sessionmaker) == {"fresh"}
