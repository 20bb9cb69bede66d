from __future__ import annotations

import uuid
from datetime import datetime
from typing import Any

from sqlalchemy import BigInteger, ForeignKey, Identity, Index, String
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.orm import Mapped, mapped_column

from corral.kit.db import Model


class DeviceInventoryChange(Model):
    """One changed inventory field of one device: what, when, from what to what."""

    __tablename__ = "device_inventory_changes"
    __table_args__ = (
        Index("ix_device_inventory_changes_device_id_seq", "device_id", "seq"),
        Index("ix_device_inventory_changes_changed_at", "changed_at"),  # retention
    )

    seq: Mapped[int] = mapped_column(BigInteger, Identity(), primary_key=True)
    device_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("devices.id", ondelete="CASCADE"))
    changed_at: Mapped[datetime]
    field: Mapped[str] = mapped_column(String(128))
    old_value: Mapped[Any] = mapped_column(JSONB, nullable=True)
    new_value: Mapped[Any] = mapped_column(JSONB, nullable=True)
