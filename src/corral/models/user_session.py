from __future__ import annotations

import uuid
from datetime import datetime

from sqlalchemy import ForeignKey, LargeBinary, String, false
from sqlalchemy.orm import Mapped, mapped_column

from corral.kit.db import IdMixin, Model


class UserSession(IdMixin, Model):
    """A server-side sign-in session. The cookie holds a random token; only its SHA-256 is stored."""

    __tablename__ = "user_sessions"

    token_hash: Mapped[bytes] = mapped_column(LargeBinary(32), unique=True)
    user_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"), index=True)
    csrf_token: Mapped[str] = mapped_column(String(64))
    created_at: Mapped[datetime]
    last_seen_at: Mapped[datetime]
    expires_at: Mapped[datetime]
    # Password correct, second factor still owed: the session grants nothing until it is verified.
    pending_mfa: Mapped[bool] = mapped_column(default=False)
    # Opened for an end user (single sign-on where only end users are admitted): it reaches self-service only,
    # even if the person is given a role meanwhile (that takes a new sign-in where administrators may).
    self_service_only: Mapped[bool] = mapped_column(default=False, server_default=false())
    ip_address: Mapped[str | None] = mapped_column(String(64), default=None)
    user_agent: Mapped[str | None] = mapped_column(String(512), default=None)
