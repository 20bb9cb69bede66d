from __future__ import annotations

import uuid
from datetime import datetime

from sqlalchemy import ForeignKey, Index, LargeBinary, String, UniqueConstraint
from sqlalchemy.orm import Mapped, mapped_column

from corral.kit.db import IdMixin, Model, TimestampMixin


class IdentityConnection(IdMixin, TimestampMixin, Model):
    """An identity provider Corral trusts: OpenID Connect sign-in and/or SCIM provisioning."""

    __tablename__ = "identity_connections"

    name: Mapped[str] = mapped_column(String(128), unique=True)
    enabled: Mapped[bool] = mapped_column(default=True)
    # OpenID Connect: admins and/or end users sign in through this issuer.
    oidc_enabled: Mapped[bool] = mapped_column(default=False)
    issuer: Mapped[str | None] = mapped_column(String(512), default=None)
    client_id: Mapped[str | None] = mapped_column(String(256), default=None)
    client_secret_encrypted: Mapped[str | None] = mapped_column(String(2048), default=None)
    scopes: Mapped[str] = mapped_column(String(256), default="openid profile email groups")
    groups_claim: Mapped[str] = mapped_column(String(64), default="groups")
    admin_sign_in: Mapped[bool] = mapped_column(default=True)
    user_sign_in: Mapped[bool] = mapped_column(default=True)
    # SCIM 2.0: one bearer token per connection, stored as a SHA-256 digest.
    scim_enabled: Mapped[bool] = mapped_column(default=False)
    scim_token_hash: Mapped[bytes | None] = mapped_column(LargeBinary(32), unique=True, default=None)
    scim_token_prefix: Mapped[str | None] = mapped_column(String(32), default=None)
    scim_token_created_at: Mapped[datetime | None] = mapped_column(default=None)
    scim_last_request_at: Mapped[datetime | None] = mapped_column(default=None)
    # use_alter: users refer to their connection too; the cycle is broken by adding this one last.
    created_by_id: Mapped[uuid.UUID | None] = mapped_column(
        ForeignKey("users.id", ondelete="SET NULL", use_alter=True), default=None
    )


class UserIdentity(IdMixin, Model):
    """A user's account at an OpenID provider: matched by issuer + subject, never by email."""

    __tablename__ = "user_identities"
    __table_args__ = (UniqueConstraint("issuer", "subject"),)

    user_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"), index=True)
    connection_id: Mapped[uuid.UUID] = mapped_column(
        ForeignKey("identity_connections.id", ondelete="CASCADE"), index=True
    )
    issuer: Mapped[str] = mapped_column(String(512))
    subject: Mapped[str] = mapped_column(String(255))
    created_at: Mapped[datetime]
    last_sign_in_at: Mapped[datetime | None] = mapped_column(default=None)


Index("ix_user_identities_connection_subject", UserIdentity.connection_id, UserIdentity.subject)
