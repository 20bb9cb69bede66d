"""History past its retention is deleted by the worker in batches — audit events, inventory changes,
finished commands, compliance changes — and nothing younger; 0 keeps a kind for ever. The audit trail stays
append-only for everything else: only events older than the cutoff the retention job declares, and never
younger than 30 days, can be deleted."""

from __future__ import annotations

import uuid
from datetime import datetime, timedelta
from pathlib import Path

import pytest
from pydantic import ValidationError
from sqlalchemy import func, insert, select, text
from sqlalchemy.exc import DBAPIError
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from corral.kit.time import utcnow
from corral.models import (
    AuditEvent,
    CommandStatus,
    ComplianceState,
    DeviceCommand,
    DeviceComplianceChange,
    DeviceInventoryChange,
)
from corral.worker import housekeeping
from tests.conftest import make_settings
from tests.worker.conftest import make_device

Sessionmaker = async_sessionmaker[AsyncSession]


async def arrange(sessionmaker: Sessionmaker, now: datetime) -> uuid.UUID:
    """Rows of every kind at 10, 100 and 400 days old; commands finished and open."""
    device = (await make_device(sessionmaker)).id
    async with sessionmaker() as session:
        for days in (10, 100, 400):
            at = now - timedelta(days=days)
            await session.execute(
                insert(AuditEvent),
                [
                    {
                        "category": "test",
                        "activity": f"test.{days}",
                        "operation": "other",
                        "result": "success",
                        "actor_type": "system",
                        "modified_properties": [],
                        "occurred_at": at,
                    }
                ],
            )
            await session.execute(
                insert(DeviceInventoryChange),
                [
                    {
                        "device_id": device,
                        "changed_at": at,
                        "field": f"f{days}",
                        "old_value": 1,
                        "new_value": 2,
                    }
                ],
            )
            await session.execute(
                insert(DeviceComplianceChange),
                [
                    {
                        "device_id": device,
                        "at": at,
                        "old_state": ComplianceState.unknown,
                        "new_state": ComplianceState.compliant,
                        "reason": f"{days}",
                    }
                ],
            )
            for status in (CommandStatus.succeeded, CommandStatus.queued):
                session.add(
                    DeviceCommand(
                        device_id=device,
                        type="sync",
                        status=status,
                        reason=f"{days} {status}",
                        created_at=at,
                        expires_at=at + timedelta(days=1000),
                    )
                )
        await session.commit()
    return device


async def kept(sessionmaker: Sessionmaker) -> dict[str, set[str]]:
    async with sessionmaker() as session:
        return {
            "audit": set(
                (
                    await session.scalars(
                        select(AuditEvent.activity).where(AuditEvent.activity.startswith("test."))
                    )
                ).all()
            ),
            "inventory": set((await session.scalars(select(DeviceInventoryChange.field))).all()),
            "compliance": set((await session.scalars(select(DeviceComplianceChange.reason))).all()),
            "commands": {str(r) for r in (await session.scalars(select(DeviceCommand.reason))).all()},
        }


async def test_history_past_its_retention_is_deleted_in_batches(
    sessionmaker: Sessionmaker, tmp_path: Path, db_url: str
) -> None:
    now = utcnow()
    await arrange(sessionmaker, now)
    settings = make_settings(
        tmp_path,
        db_url,
        audit_retention_days=365,
        inventory_history_retention_days=90,
        command_retention_days=30,
        compliance_history_retention_days=0,  # for ever
    )
    deleted = await housekeeping.purge_history(sessionmaker, settings, batch=1, now=now)
    assert deleted == {"audit_events": 1, "inventory_changes": 2, "commands": 2, "compliance_changes": 0}
    assert await kept(sessionmaker) == {
        "audit": {"test.10", "test.100"},
        "inventory": {"f10"},
        "compliance": {"10", "100", "400"},
        # Open commands are never history, whatever their age.
        "commands": {
            "10 succeeded",
            "10 queued",
            "100 queued",
            "400 queued",
        },
    }
    again = await housekeeping.purge_history(sessionmaker, settings, batch=1000, now=now)
    assert set(again.values()) == {0}


async def test_the_audit_trail_refuses_any_other_delete(sessionmaker: Sessionmaker) -> None:
    now = utcnow()
    await arrange(sessionmaker, now)
    async with sessionmaker() as session:
        count = await session.scalar(select(func.count()).select_from(AuditEvent))
    statements = [
        # No cutoff declared: refused, however old.
        ("", "DELETE FROM audit_events WHERE activity = 'test.400'"),
        # A cutoff in the future still cannot reach events younger than 30 days.
        ((now + timedelta(days=1)).isoformat(), "DELETE FROM audit_events WHERE activity = 'test.10'"),
        # Older than 30 days but younger than the declared cutoff: refused.
        ((now - timedelta(days=200)).isoformat(), "DELETE FROM audit_events WHERE activity = 'test.100'"),
    ]
    for cutoff, statement in statements:
        async with sessionmaker() as session:
            if cutoff:
                await session.execute(select(func.set_config("corral.audit_retention_cutoff", cutoff, True)))
            with pytest.raises(DBAPIError, match="append-only"):
                await session.execute(text(statement))
            await session.rollback()
    async with sessionmaker() as session:
        assert await session.scalar(select(func.count()).select_from(AuditEvent)) == count
        with pytest.raises(DBAPIError, match="append-only"):
            await session.execute(text("UPDATE audit_events SET activity = 'x'"))
        await session.rollback()


def test_the_audit_retention_has_a_floor(tmp_path: Path, db_url: str) -> None:
    with pytest.raises(ValidationError, match="at least 30 days"):
        make_settings(tmp_path, db_url, audit_retention_days=7)
    assert make_settings(tmp_path, db_url, audit_retention_days=0).audit_retention_days == 0
