"""Housekeeping: deleting rows that no longer mean anything, and closing commands whose time ran out.

Each function works in batches of ``batch`` rows, one short transaction per batch, so a large backlog never
holds many locks for long; rows another transaction holds are skipped (``SKIP LOCKED``), not waited for. Every
function is idempotent and safe to run from several workers at once: the conditions are re-checked under the
row locks, so no row is counted twice. Each returns how many rows it deleted or changed.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import ColumnElement, and_, delete, func, or_, select, tuple_
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from corral.checkin.auth import CLOCK_SKEW
from corral.commands.service import command_service
from corral.config import Settings
from corral.kit.time import utcnow
from corral.models import (
    AuditEvent,
    CommandStatus,
    DeviceCommand,
    DeviceComplianceChange,
    DeviceInventoryChange,
    DeviceNonce,
    SignInThrottle,
    User,
    UserSession,
    device_checkin_days,
)

Sessionmaker = async_sessionmaker[AsyncSession]


async def _delete_in_batches(
    sessionmaker: Sessionmaker,
    model: Any,
    key: tuple[Any, ...],
    where: ColumnElement[bool],
    batch: int,
    *,
    settings: dict[str, str] | None = None,
) -> int:
    """DELETE … WHERE key IN (SELECT key … WHERE where LIMIT batch FOR UPDATE SKIP LOCKED), until a batch
    comes back short. ``settings``: configuration parameters set for each batch's transaction."""
    total = 0
    while True:
        chosen = select(*key).where(where).limit(batch).with_for_update(skip_locked=True)
        async with sessionmaker() as session:
            for name, value in (settings or {}).items():
                await session.execute(select(func.set_config(name, value, True)))
            result = await session.execute(delete(model).where(tuple_(*key).in_(chosen)))
            await session.commit()
        deleted = int(result.rowcount or 0)  # type: ignore[attr-defined]
        total += deleted
        if deleted < batch:
            return total


async def purge_device_nonces(sessionmaker: Sessionmaker, *, batch: int, now: datetime | None = None) -> int:
    """Signature nonces past their replay window. A nonce is kept until ``expires_at`` (its request's time
    plus the window, set at check-in) and one more clock-skew allowance, for API replicas whose clocks run
    behind the worker's: deleting one too early would let a captured request be replayed."""
    now = now or utcnow()
    return await _delete_in_batches(
        sessionmaker,
        DeviceNonce,
        (DeviceNonce.device_id, DeviceNonce.nonce),
        DeviceNonce.expires_at < now - CLOCK_SKEW,
        batch,
    )


async def purge_checkin_days(
    sessionmaker: Sessionmaker, settings: Settings, *, batch: int, now: datetime | None = None
) -> int:
    """Check-in days (the dashboard's chart) older than ``checkin_days_retention_days``."""
    now = now or utcnow()
    cutoff = (now - timedelta(days=settings.checkin_days_retention_days)).date()
    return await _delete_in_batches(
        sessionmaker,
        device_checkin_days,
        (device_checkin_days.c.day, device_checkin_days.c.device_id),
        device_checkin_days.c.day < cutoff,
        batch,
    )


async def purge_user_sessions(
    sessionmaker: Sessionmaker, settings: Settings, *, batch: int, now: datetime | None = None
) -> int:
    """Admin sessions that ended: past their absolute lifetime, idle for longer than the idle timeout, or of
    an account that was disabled (the rules of ``auth_service.session_from_token``)."""
    now = now or utcnow()
    idle = timedelta(minutes=settings.session_idle_minutes)
    disabled = select(User.id).where(User.enabled.is_(False))
    return await _delete_in_batches(
        sessionmaker,
        UserSession,
        (UserSession.id,),
        or_(
            UserSession.expires_at <= now,
            UserSession.last_seen_at <= now - idle,
            UserSession.user_id.in_(disabled),
        ),
        batch,
    )


async def purge_signin_throttles(
    sessionmaker: Sessionmaker, settings: Settings, *, batch: int, now: datetime | None = None
) -> int:
    """Sign-in failure counters that count for nothing any more: the window has passed since counting began
    (no delay yet) or since the key's last delay ended. (The next failure would start afresh anyway; see
    ``auth_service._admit``.)"""
    now = now or utcnow()
    window = timedelta(minutes=settings.signin_window_minutes)
    return await _delete_in_batches(
        sessionmaker,
        SignInThrottle,
        (SignInThrottle.key,),
        func.coalesce(SignInThrottle.locked_until, SignInThrottle.window_started_at) <= now - window,
        batch,
    )


@dataclass
class CommandExpiry:
    expired: int = 0
    devices_managed_again: int = 0
    skipped_busy: int = 0


async def expire_commands(
    sessionmaker: Sessionmaker, *, batch: int, now: datetime | None = None
) -> CommandExpiry:
    """Open commands (queued, sent, not now) past ``expires_at`` become expired; a retire or wipe that never
    reached its device leaves the device managed again (``corral.commands.service.expiry``, the rule check-in
    applies too). Each overdue command is
    considered once per run (keyset order), so commands of busy devices cannot make a run loop."""
    now = now or utcnow()
    outcome = CommandExpiry()
    after: tuple[datetime, uuid.UUID] | None = None
    while True:
        async with sessionmaker() as session:
            done = await command_service.expire_overdue(session, now, limit=batch, after=after)
            await session.commit()
        outcome.expired += done.expired
        outcome.devices_managed_again += done.devices_managed_again
        outcome.skipped_busy += done.skipped_busy
        if done.considered < batch or done.after is None:
            return outcome
        after = done.after


#: Command states that are history: the device answered, or the command ran out or was called off.
FINISHED_COMMANDS = (
    CommandStatus.succeeded,
    CommandStatus.failed,
    CommandStatus.expired,
    CommandStatus.canceled,
)


async def purge_history(
    sessionmaker: Sessionmaker, settings: Settings, *, batch: int, now: datetime | None = None
) -> dict[str, int]:
    """History older than its retention (``*_retention_days``; 0 keeps it for ever): audit events, devices'
    inventory changes, finished commands and compliance state changes. Returns the rows deleted per kind."""
    now = now or utcnow()
    kinds: list[tuple[str, int, Any, tuple[Any, ...], Any]] = [
        (
            "audit_events",
            settings.audit_retention_days,
            AuditEvent,
            (AuditEvent.seq,),
            AuditEvent.occurred_at,
        ),
        (
            "inventory_changes",
            settings.inventory_history_retention_days,
            DeviceInventoryChange,
            (DeviceInventoryChange.seq,),
            DeviceInventoryChange.changed_at,
        ),
        (
            "commands",
            settings.command_retention_days,
            DeviceCommand,
            (DeviceCommand.id,),
            DeviceCommand.created_at,
        ),
        (
            "compliance_changes",
            settings.compliance_history_retention_days,
            DeviceComplianceChange,
            (DeviceComplianceChange.id,),
            DeviceComplianceChange.at,
        ),
    ]
    deleted: dict[str, int] = {}
    for name, days, model, key, column in kinds:
        if days <= 0:
            deleted[name] = 0
            continue
        cutoff = now - timedelta(days=days)
        where = column < cutoff
        if model is DeviceCommand:
            where = and_(where, DeviceCommand.status.in_(FINISHED_COMMANDS))
        # The audit trail refuses deletes but of events older than the cutoff its transaction declares (and
        # never of events younger than 30 days): see the migration e3a9c5d1b7f2.
        declared = {"corral.audit_retention_cutoff": cutoff.isoformat()} if model is AuditEvent else None
        deleted[name] = await _delete_in_batches(sessionmaker, model, key, where, batch, settings=declared)
    return deleted
