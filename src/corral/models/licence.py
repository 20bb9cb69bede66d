from __future__ import annotations

import uuid
from datetime import datetime

from sqlalchemy import CheckConstraint, ForeignKey, String, Text
from sqlalchemy.orm import Mapped, mapped_column

from corral.kit.db import IdMixin, Model, TimestampMixin


class Licence(IdMixin, TimestampMixin, Model):
    """A product the organisation holds seats of; a user needs one to enroll devices as theirs."""

    __tablename__ = "licences"
    __table_args__ = (CheckConstraint("seats >= 0", name="seats_not_negative"),)

    name: Mapped[str] = mapped_column(String(128), unique=True)
    sku: Mapped[str] = mapped_column(String(64), unique=True)
    description: Mapped[str] = mapped_column(Text, default="")
    seats: Mapped[int]


class UserLicence(Model):
    __tablename__ = "user_licences"

    user_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"), primary_key=True)
    licence_id: Mapped[uuid.UUID] = mapped_column(
        ForeignKey("licences.id", ondelete="CASCADE"), primary_key=True, index=True
    )
    assigned_at: Mapped[datetime]
    assigned_by_id: Mapped[uuid.UUID | None] = mapped_column(
        ForeignKey("users.id", ondelete="SET NULL"), default=None
    )
