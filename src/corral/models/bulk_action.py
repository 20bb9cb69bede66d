from __future__ import annotations

import uuid
from datetime import datetime
from typing import Any

from sqlalchemy import ForeignKey, String
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.orm import Mapped, mapped_column

from corral.kit.db import IdMixin, Model


class BulkAction(IdMixin, Model):
    """One remote action sent to a selection of devices. Each device that took it has a DeviceCommand
    pointing here (its progress is theirs); the devices that could not take it are listed in ``skipped``."""

    __tablename__ = "bulk_actions"

    type: Mapped[str] = mapped_column(String(32))
    params: Mapped[dict[str, Any]] = mapped_column(JSONB, default=dict)
    reason: Mapped[str | None] = mapped_column(String(1024), default=None)
    requested_by_id: Mapped[uuid.UUID | None] = mapped_column(
        ForeignKey("users.id", ondelete="SET NULL"), index=True, default=None
    )
    requested_by_name: Mapped[str | None] = mapped_column(String(320), default=None)
    created_at: Mapped[datetime] = mapped_column(index=True)
    requested_count: Mapped[int] = mapped_column(default=0)
    queued_count: Mapped[int] = mapped_column(default=0)
    # [{"device_id": ..., "device_name": ... or null when not visible, "reason": ...}]
    skipped: Mapped[list[dict[str, Any]]] = mapped_column(JSONB, default=list)
