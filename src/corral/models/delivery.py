"""What was delivered to each device and what it reported applying (corral.delivery)."""

from __future__ import annotations

import uuid
from datetime import datetime

from sqlalchemy import ForeignKey, Integer, String, Text
from sqlalchemy.orm import Mapped, mapped_column

from corral.kit.db import Model


class DeviceProfileDelivery(Model):
    """The version of a configuration profile last sent to a device (a report must name one of these)."""

    __tablename__ = "device_profile_deliveries"

    device_id: Mapped[uuid.UUID] = mapped_column(
        ForeignKey("devices.id", ondelete="CASCADE"), primary_key=True
    )
    profile_id: Mapped[uuid.UUID] = mapped_column(
        ForeignKey("configuration_profiles.id", ondelete="CASCADE"), primary_key=True, index=True
    )
    version: Mapped[int] = mapped_column(Integer)
    delivered_at: Mapped[datetime]


class DeviceSettingState(Model):
    """What the device reported applying one setting of one profile version did."""

    __tablename__ = "device_setting_states"

    device_id: Mapped[uuid.UUID] = mapped_column(
        ForeignKey("devices.id", ondelete="CASCADE"), primary_key=True
    )
    profile_id: Mapped[uuid.UUID] = mapped_column(
        ForeignKey("configuration_profiles.id", ondelete="CASCADE"), primary_key=True, index=True
    )
    setting_id: Mapped[str] = mapped_column(String(64), primary_key=True)
    profile_version: Mapped[int] = mapped_column(Integer)
    # succeeded, error, not_applicable, conflict
    state: Mapped[str] = mapped_column(String(16))
    message: Mapped[str] = mapped_column(Text, default="")
    reported_at: Mapped[datetime]
