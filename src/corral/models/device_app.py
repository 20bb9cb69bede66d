from __future__ import annotations

import uuid

from sqlalchemy import ForeignKey, String
from sqlalchemy.orm import Mapped, mapped_column

from corral.kit.db import Model


class DeviceApp(Model):
    """An app installed on a device, as last reported (one row per app: searchable across the fleet)."""

    __tablename__ = "device_apps"

    device_id: Mapped[uuid.UUID] = mapped_column(
        ForeignKey("devices.id", ondelete="CASCADE"), primary_key=True
    )
    identifier: Mapped[str] = mapped_column(String(512), primary_key=True)
    name: Mapped[str] = mapped_column(String(512), index=True)
    version: Mapped[str | None] = mapped_column(String(128), default=None)
