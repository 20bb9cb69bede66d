from __future__ import annotations

from datetime import datetime
from enum import StrEnum

from sqlalchemy import Index, String, func
from sqlalchemy.orm import Mapped, mapped_column

from corral.kit.db import IdMixin, Model, TimestampMixin, str_enum


class UserSource(StrEnum):
    local = "local"
    oidc = "oidc"
    scim = "scim"


class User(IdMixin, TimestampMixin, Model):
    """A person: an end user, an administrator (a user holding role assignments), or both."""

    __tablename__ = "users"

    email: Mapped[str] = mapped_column(String(320))
    display_name: Mapped[str] = mapped_column(String(256))
    source: Mapped[UserSource] = mapped_column(str_enum(UserSource), default=UserSource.local)
    enabled: Mapped[bool] = mapped_column(default=True)
    password_hash: Mapped[str | None] = mapped_column(String(256), default=None)
    must_change_password: Mapped[bool] = mapped_column(default=False)
    totp_secret_encrypted: Mapped[str | None] = mapped_column(String(512), default=None)
    totp_enabled_at: Mapped[datetime | None] = mapped_column(default=None)
    totp_last_used_step: Mapped[int | None] = mapped_column(default=None)
    last_sign_in_at: Mapped[datetime | None] = mapped_column(default=None)

    @property
    def totp_enabled(self) -> bool:
        return self.totp_enabled_at is not None


# Email addresses are unique regardless of case.
Index("uq_users_email_lower", func.lower(User.email), unique=True)
