"""Compliance results: per device, policy and setting; per device and policy (with its grace period); the
history of each device's state; administrators' overrides; the noncompliance actions taken; e-mail
templates. Written only by corral.compliance."""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Any

from sqlalchemy import BigInteger, ForeignKey, Integer, String, Text, column, func
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.orm import Mapped, mapped_column

from corral.kit.db import IdMixin, Model, TimestampMixin, str_enum
from corral.models.device import ComplianceState


class DeviceCompliancePolicy(Model):
    """A device's result under one compliance policy, with each setting's: ``settings`` maps a setting id
    to ``{"state", "expected", "observed"[, "message"]}`` (state compliant, noncompliant or error — not
    reported by the device). ``failing_since`` starts a noncompliance episode (the first evaluation that
    found a setting failing); until ``grace_ends_at`` the device is in grace period. ``evaluated_at``: the
    evaluation that reached this result (one that finds the same result writes nothing).

    Derived data, written for a whole fleet at once: no foreign keys (their per-row checks cost more than the
    rows), as for ``device_targets``; the rows of a deleted device or policy are deleted with it (the devices
    and compliance services)."""

    __tablename__ = "device_compliance_policies"
    # Half of each page free: a policy change rewrites all its results, in place when there is room (HOT).
    __table_args__ = {"postgresql_with": {"fillfactor": 50}}

    device_id: Mapped[uuid.UUID] = mapped_column(primary_key=True)
    policy_id: Mapped[uuid.UUID] = mapped_column(primary_key=True, index=True)
    state: Mapped[ComplianceState] = mapped_column(str_enum(ComplianceState, 32))
    policy_version: Mapped[int] = mapped_column(Integer)
    failing_since: Mapped[datetime | None] = mapped_column(default=None)
    grace_ends_at: Mapped[datetime | None] = mapped_column(default=None, index=True)
    settings: Mapped[dict[str, Any]] = mapped_column(JSONB, default=dict, server_default="{}")
    evaluated_at: Mapped[datetime]


def setting_results() -> Any:
    """The settings' results of ``DeviceCompliancePolicy`` rows as rows of their own (``key``: the setting id,
    ``value``: its result): join it with ``true()``."""
    return func.jsonb_each(DeviceCompliancePolicy.settings).table_valued("key", column("value", JSONB))


class DeviceComplianceChange(Model):
    """A change of a device's compliance state (the history and the trend read it)."""

    __tablename__ = "device_compliance_history"

    id: Mapped[int] = mapped_column(BigInteger, primary_key=True, autoincrement=True)
    device_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("devices.id", ondelete="CASCADE"), index=True)
    at: Mapped[datetime] = mapped_column(index=True)
    old_state: Mapped[ComplianceState] = mapped_column(str_enum(ComplianceState, 32))
    new_state: Mapped[ComplianceState] = mapped_column(str_enum(ComplianceState, 32))
    reason: Mapped[str] = mapped_column(Text, default="")


class ComplianceOverride(Model):
    """An administrator marked the device compliant until ``until`` (with a reason)."""

    __tablename__ = "compliance_overrides"

    device_id: Mapped[uuid.UUID] = mapped_column(
        ForeignKey("devices.id", ondelete="CASCADE"), primary_key=True
    )
    until: Mapped[datetime]
    reason: Mapped[str] = mapped_column(Text)
    created_by_id: Mapped[uuid.UUID | None] = mapped_column(
        ForeignKey("users.id", ondelete="SET NULL"), default=None
    )
    created_by_name: Mapped[str] = mapped_column(String(320), default="")
    created_at: Mapped[datetime]


class ComplianceActionRun(Model):
    """A step of a policy's noncompliance ladder taken for one device in one episode (at most once)."""

    __tablename__ = "compliance_action_runs"

    device_id: Mapped[uuid.UUID] = mapped_column(
        ForeignKey("devices.id", ondelete="CASCADE"), primary_key=True
    )
    policy_id: Mapped[uuid.UUID] = mapped_column(
        ForeignKey("compliance_policies.id", ondelete="CASCADE"), primary_key=True
    )
    episode_started_at: Mapped[datetime] = mapped_column(primary_key=True)
    step: Mapped[int] = mapped_column(Integer, primary_key=True)
    action: Mapped[str] = mapped_column(String(32))
    ran_at: Mapped[datetime]
    result: Mapped[str] = mapped_column(Text, default="")


class NotificationTemplate(IdMixin, TimestampMixin, Model):
    """An e-mail sent to a device's user by a compliance policy's ladder (subject and body with
    placeholders, rendered in a sandbox)."""

    __tablename__ = "notification_templates"

    name: Mapped[str] = mapped_column(String(256), unique=True)
    subject: Mapped[str] = mapped_column(String(256))
    body: Mapped[str] = mapped_column(Text)
