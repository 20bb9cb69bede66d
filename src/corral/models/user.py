from __future__ import annotations

import uuid
from datetime import datetime
from enum import StrEnum

from sqlalchemy import ForeignKey, Index, String, func, text
from sqlalchemy.orm import Mapped, mapped_column, query_expression

from corral.kit.db import EPOCH_SQL, IdMixin, Model, TimestampMixin, str_enum, trigram_index


class UserSource(StrEnum):
    local = "local"
    oidc = "oidc"
    scim = "scim"


class User(IdMixin, TimestampMixin, Model):
    """A person: an end user, an administrator (a user holding role assignments), or both."""

    __tablename__ = "users"

    # The sign-in name (Entra's userPrincipalName); local accounts use their email address.
    user_principal_name: Mapped[str] = mapped_column(String(320))
    email: Mapped[str | None] = mapped_column(String(320), default=None)
    display_name: Mapped[str] = mapped_column(String(256))
    given_name: Mapped[str | None] = mapped_column(String(128), default=None)
    surname: Mapped[str | None] = mapped_column(String(128), default=None)
    department: Mapped[str | None] = mapped_column(String(128), default=None)
    job_title: Mapped[str | None] = mapped_column(String(128), default=None)
    source: Mapped[UserSource] = mapped_column(str_enum(UserSource), default=UserSource.local)
    # Users provisioned by an identity provider: the connection, and its id for the user (SCIM externalId).
    connection_id: Mapped[uuid.UUID | None] = mapped_column(
        ForeignKey("identity_connections.id", ondelete="SET NULL"), index=True, default=None
    )
    external_id: Mapped[str | None] = mapped_column(String(256), default=None)
    enabled: Mapped[bool] = mapped_column(default=True)
    password_hash: Mapped[str | None] = mapped_column(String(256), default=None)
    must_change_password: Mapped[bool] = mapped_column(default=False)
    totp_secret_encrypted: Mapped[str | None] = mapped_column(String(512), default=None)
    totp_enabled_at: Mapped[datetime | None] = mapped_column(default=None)
    totp_last_used_step: Mapped[int | None] = mapped_column(default=None)
    last_sign_in_at: Mapped[datetime | None] = mapped_column(default=None)
    # Part of every known-client cookie's signature (auth_service): raised when the password changes and when
    # all the account's sessions end (disable, reset), so that every browser it had signed in on is forgotten.
    known_clients_generation: Mapped[int] = mapped_column(default=0, server_default=text("0"))
    # The groups the user belongs to directly: not a column, loaded with the user where an administrator's
    # scope groups decide whether they reach them (users.repository.MEMBER_OF). None when not loaded.
    member_of: Mapped[list[uuid.UUID] | None] = query_expression(expire_on_flush=False)

    @property
    def totp_enabled(self) -> bool:
        return self.totp_enabled_at is not None


# Sign-in names are unique regardless of case; email addresses are looked up the same way.
Index("uq_users_upn_lower", func.lower(User.user_principal_name), unique=True)
Index("ix_users_email_lower", func.lower(User.email))
# The user list: each sort key with the id after it (keyset order; sign-in names are unique), and its search.
Index("ix_users_display_name_lower_id", func.lower(User.display_name), User.id)
Index("ix_users_last_sign_in_sort", func.coalesce(User.last_sign_in_at, EPOCH_SQL), User.id)
Index("ix_users_created_at_id", User.created_at, User.id)
trigram_index("ix_users_user_principal_name_trgm", User.user_principal_name)
trigram_index("ix_users_display_name_trgm", User.display_name)
trigram_index("ix_users_email_trgm", User.email)
Index(
    "uq_users_connection_external_id",
    User.connection_id,
    User.external_id,
    unique=True,
    postgresql_where=User.external_id.isnot(None),
)
