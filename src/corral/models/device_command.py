from __future__ import annotations

import uuid
from datetime import datetime
from enum import StrEnum
from typing import Any

from sqlalchemy import ForeignKey, Index, String, text
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.orm import Mapped, mapped_column

from corral.kit.db import IdMixin, Model, str_enum


class CommandStatus(StrEnum):
    # A wipe waiting for a second administrator (tenant setting ``wipe_requires_approval``): not delivered.
    pending_approval = "pending_approval"
    queued = "queued"
    sent = "sent"
    acknowledged = "acknowledged"
    succeeded = "succeeded"
    failed = "failed"
    not_now = "not_now"
    expired = "expired"
    canceled = "canceled"


# Waiting for the device: delivered at its check-ins until it answers or the command's deadline passes.
OPEN_STATUSES = (CommandStatus.queued, CommandStatus.sent, CommandStatus.not_now)
# Waiting for something (the device, or a second administrator) until the deadline, then expired.
WAITING_STATUSES = (*OPEN_STATUSES, CommandStatus.pending_approval)
FINAL_STATUSES = (
    CommandStatus.succeeded,
    CommandStatus.failed,
    CommandStatus.expired,
    CommandStatus.canceled,
)


class DeviceCommand(IdMixin, Model):
    """A remote action for one device and its whole lifecycle."""

    __tablename__ = "device_commands"
    __table_args__ = (
        Index("ix_device_commands_device_id_created_at", "device_id", "created_at"),
        Index("ix_device_commands_created_at", "created_at"),  # retention
        Index(
            "ix_device_commands_pending",
            "device_id",
            postgresql_where=text("status IN ('queued', 'sent', 'not_now')"),
        ),
        Index(
            "uq_device_commands_idempotency",
            "requested_by_id",
            "idempotency_key",
            unique=True,
            postgresql_where=text("idempotency_key IS NOT NULL"),
        ),
    )

    device_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("devices.id", ondelete="CASCADE"))
    bulk_action_id: Mapped[uuid.UUID | None] = mapped_column(
        ForeignKey("bulk_actions.id", ondelete="SET NULL"), index=True, default=None
    )
    type: Mapped[str] = mapped_column(String(32))
    params: Mapped[dict[str, Any]] = mapped_column(JSONB, default=dict)
    status: Mapped[CommandStatus] = mapped_column(str_enum(CommandStatus), default=CommandStatus.queued)
    reason: Mapped[str | None] = mapped_column(String(1024), default=None)
    requested_by_id: Mapped[uuid.UUID | None] = mapped_column(default=None)
    requested_by_name: Mapped[str | None] = mapped_column(String(320), default=None)
    idempotency_key: Mapped[str | None] = mapped_column(String(128), default=None)
    # The second administrator who approved or rejected a command that needed approval.
    reviewed_by_id: Mapped[uuid.UUID | None] = mapped_column(default=None)
    reviewed_by_name: Mapped[str | None] = mapped_column(String(320), default=None)
    reviewed_at: Mapped[datetime | None] = mapped_column(default=None)
    created_at: Mapped[datetime]
    expires_at: Mapped[datetime]
    sent_at: Mapped[datetime | None] = mapped_column(default=None)
    acknowledged_at: Mapped[datetime | None] = mapped_column(default=None)
    completed_at: Mapped[datetime | None] = mapped_column(default=None)
    delivery_count: Mapped[int] = mapped_column(default=0)
    result: Mapped[dict[str, Any] | None] = mapped_column(JSONB, default=None)
    error: Mapped[str | None] = mapped_column(String(1024), default=None)
