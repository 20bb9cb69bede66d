from __future__ import annotations

import uuid
from datetime import datetime
from enum import StrEnum
from typing import Any

from sqlalchemy import BigInteger, Column, Date, ForeignKey, Index, String, Table, Uuid, func, text
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.orm import Mapped, mapped_column, query_expression, relationship

from corral.kit.db import EPOCH_SQL, IdMixin, Model, TimestampMixin, str_enum, trigram_index
from corral.models.scope_tag import ScopeTag


class Platform(StrEnum):
    windows = "windows"
    macos = "macos"
    linux = "linux"
    ios = "ios"
    ipados = "ipados"
    android = "android"


class Ownership(StrEnum):
    company = "company"
    personal = "personal"


class ManagementState(StrEnum):
    """Intune's managementState, narrowed to what Corral's lifecycle uses."""

    managed = "managed"
    retire_pending = "retire_pending"
    retire_issued = "retire_issued"
    retired = "retired"
    wipe_pending = "wipe_pending"
    wipe_issued = "wipe_issued"
    wiped = "wiped"


class ManagementChannel(StrEnum):
    """How Corral reaches the device: its agent (docs/device-protocol.md) or Apple's MDM protocol
    (docs/apple-mdm.md)."""

    agent = "agent"
    apple_mdm = "apple_mdm"


class ComplianceState(StrEnum):
    unknown = "unknown"
    compliant = "compliant"
    noncompliant = "noncompliant"
    in_grace_period = "in_grace_period"
    error = "error"
    not_evaluated = "not_evaluated"


device_scope_tags = Table(
    "device_scope_tags",
    Model.metadata,
    Column("device_id", ForeignKey("devices.id", ondelete="CASCADE"), primary_key=True),
    Column("scope_tag_id", ForeignKey("scope_tags.id", ondelete="RESTRICT"), primary_key=True, index=True),
)


# The days on which each device checked in (UTC), for the dashboard's check-in chart: one row per device and
# day, written by the check-in (its first of the day) and by the batched last-seen flush; derived data without
# foreign keys (rows of deleted devices drop out of every count through the join with devices), purged by
# housekeeping after ``checkin_days_retention_days``.
device_checkin_days = Table(
    "device_checkin_days",
    Model.metadata,
    Column("day", Date(), primary_key=True),
    Column("device_id", Uuid(), primary_key=True),
)


class Device(IdMixin, TimestampMixin, Model):
    __tablename__ = "devices"
    __table_args__ = (
        Index("ix_devices_last_checkin_at_id", "last_checkin_at", "id"),
        # One managed record per physical device; retired and wiped records stay as history.
        Index(
            "uq_devices_active_serial",
            "platform",
            "serial_number",
            unique=True,
            postgresql_where=text("management_state NOT IN ('retired', 'wiped')"),
        ),
    )

    name: Mapped[str] = mapped_column(String(256))
    serial_number: Mapped[str] = mapped_column(String(128), index=True)
    platform: Mapped[Platform] = mapped_column(str_enum(Platform), index=True)
    os_version: Mapped[str | None] = mapped_column(String(64), default=None)
    os_build: Mapped[str | None] = mapped_column(String(128), default=None)
    model: Mapped[str | None] = mapped_column(String(256), default=None)
    manufacturer: Mapped[str | None] = mapped_column(String(256), default=None)
    ownership: Mapped[Ownership] = mapped_column(str_enum(Ownership), index=True)
    management_channel: Mapped[ManagementChannel] = mapped_column(
        str_enum(ManagementChannel),
        default=ManagementChannel.agent,
        server_default=ManagementChannel.agent.value,
    )
    #: Apple devices: supervised (Apple Configurator or Automated Device Enrollment), as reported;
    #: None until it has (and for agent devices).
    supervised: Mapped[bool | None] = mapped_column(default=None)
    management_state: Mapped[ManagementState] = mapped_column(
        str_enum(ManagementState), default=ManagementState.managed, index=True
    )
    compliance_state: Mapped[ComplianceState] = mapped_column(
        str_enum(ComplianceState), default=ComplianceState.unknown, index=True
    )
    user_id: Mapped[uuid.UUID | None] = mapped_column(
        ForeignKey("users.id", ondelete="SET NULL"), index=True, default=None
    )
    primary_user: Mapped[str | None] = mapped_column(String(256), default=None)
    enrollment_token_id: Mapped[uuid.UUID | None] = mapped_column(
        ForeignKey("enrollment_tokens.id", ondelete="SET NULL"), default=None
    )
    enrolled_at: Mapped[datetime]
    last_checkin_at: Mapped[datetime | None] = mapped_column(default=None)
    last_checkin_ip: Mapped[str | None] = mapped_column(String(64), default=None)
    agent_version: Mapped[str | None] = mapped_column(String(64), default=None)
    # Hardware and posture columns are copies of inventory fields, kept for filtering and sorting in SQL.
    cpu_architecture: Mapped[str | None] = mapped_column(String(32), default=None)
    memory_bytes: Mapped[int | None] = mapped_column(BigInteger, default=None)
    storage_total_bytes: Mapped[int | None] = mapped_column(BigInteger, default=None)
    storage_free_bytes: Mapped[int | None] = mapped_column(BigInteger, default=None)
    hostname: Mapped[str | None] = mapped_column(String(256), default=None)
    disk_encrypted: Mapped[bool | None] = mapped_column(default=None)
    firewall_enabled: Mapped[bool | None] = mapped_column(default=None)
    screen_lock_enabled: Mapped[bool | None] = mapped_column(default=None)
    jailbroken: Mapped[bool | None] = mapped_column(default=None)
    secure_boot: Mapped[bool | None] = mapped_column(default=None)
    inventory: Mapped[dict[str, Any]] = mapped_column(JSONB, default=dict)
    inventory_hash: Mapped[str | None] = mapped_column(String(64), default=None)
    inventory_updated_at: Mapped[datetime | None] = mapped_column(default=None)

    scope_tags: Mapped[list[ScopeTag]] = relationship(secondary=device_scope_tags, lazy="raise")
    # The groups the device, or its primary user, belongs to directly: not a column, loaded with the device
    # where an administrator's scope groups decide whether they reach it (devices.repository.MEMBER_OF).
    # None when not loaded.
    member_of: Mapped[list[uuid.UUID] | None] = query_expression(expire_on_flush=False)


# The device list: each sort key with the id after it (keyset order), and its search.
Index("ix_devices_name_lower_id", func.lower(Device.name), Device.id)
Index("ix_devices_last_checkin_sort", func.coalesce(Device.last_checkin_at, EPOCH_SQL), Device.id)
Index("ix_devices_enrolled_at_id", Device.enrolled_at, Device.id)
trigram_index("ix_devices_name_trgm", Device.name)
trigram_index("ix_devices_serial_number_trgm", Device.serial_number)
trigram_index("ix_devices_primary_user_trgm", Device.primary_user)
