from __future__ import annotations

import uuid
from datetime import datetime
from enum import StrEnum

from sqlalchemy import Column, ForeignKey, LargeBinary, String, Table
from sqlalchemy.dialects.postgresql import ARRAY
from sqlalchemy.orm import Mapped, mapped_column, relationship

from corral.kit.db import IdMixin, Model, str_enum
from corral.models.scope_tag import ScopeTag

enrollment_token_scope_tags = Table(
    "enrollment_token_scope_tags",
    Model.metadata,
    Column("enrollment_token_id", ForeignKey("enrollment_tokens.id", ondelete="CASCADE"), primary_key=True),
    Column("scope_tag_id", ForeignKey("scope_tags.id", ondelete="RESTRICT"), primary_key=True),
)


class EnrollmentToken(IdMixin, Model):
    """Lets devices enroll: which platforms and ownership, until when, how many times, for whom."""

    __tablename__ = "enrollment_tokens"

    name: Mapped[str] = mapped_column(String(128))
    token_hash: Mapped[bytes] = mapped_column(LargeBinary(32), unique=True)
    prefix: Mapped[str] = mapped_column(String(32))
    platforms: Mapped[list[str]] = mapped_column(ARRAY(String(16)))
    ownership: Mapped[str] = mapped_column(String(16))
    expires_at: Mapped[datetime]
    max_uses: Mapped[int | None] = mapped_column(default=None)
    use_count: Mapped[int] = mapped_column(default=0)
    user_id: Mapped[uuid.UUID | None] = mapped_column(
        ForeignKey("users.id", ondelete="SET NULL"), default=None
    )
    created_by_id: Mapped[uuid.UUID | None] = mapped_column(
        ForeignKey("users.id", ondelete="SET NULL"), default=None
    )
    created_at: Mapped[datetime]
    revoked_at: Mapped[datetime | None] = mapped_column(default=None)

    scope_tags: Mapped[list[ScopeTag]] = relationship(secondary=enrollment_token_scope_tags, lazy="raise")


class EnrollmentRefusal(StrEnum):
    """Why an enrollment was refused: stored beside the text, so what a reader sees of the reason can follow
    the same visibility rules as the rest of the data (see enrollment.service.visible_refusal)."""

    revoked = "revoked"
    expired = "expired"
    used_up = "used_up"
    platform_not_allowed = "platform_not_allowed"
    user_disabled = "user_disabled"
    user_unlicensed = "user_unlicensed"
    csr_refused = "csr_refused"
    duplicate_serial = "duplicate_serial"
    # Never stored: what a reader without licences:read sees for user_disabled and user_unlicensed.
    user_ineligible = "user_ineligible"


class EnrollmentTokenUse(IdMixin, Model):
    """Each attempt to enroll with a token, successful or not."""

    __tablename__ = "enrollment_token_uses"

    token_id: Mapped[uuid.UUID] = mapped_column(
        ForeignKey("enrollment_tokens.id", ondelete="CASCADE"), index=True
    )
    occurred_at: Mapped[datetime]
    ip_address: Mapped[str | None] = mapped_column(String(64), default=None)
    serial_number: Mapped[str | None] = mapped_column(String(128), default=None)
    result: Mapped[str] = mapped_column(String(16))
    reason: Mapped[EnrollmentRefusal | None] = mapped_column(str_enum(EnrollmentRefusal, 32), default=None)
    detail: Mapped[str | None] = mapped_column(String(512), default=None)
    device_id: Mapped[uuid.UUID | None] = mapped_column(default=None)
