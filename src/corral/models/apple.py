"""Apple MDM enrollment: Corral's own service identities, SCEP challenges and identities SCEP issued."""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Any

from sqlalchemy import ForeignKey, Index, LargeBinary, SmallInteger, String, Text, text
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.orm import Mapped, mapped_column

from corral.kit.db import IdMixin, Model


class ServiceCertificate(IdMixin, Model):
    """A key pair Corral uses to speak a protocol, not a CA: the SCEP registration authority (RSA, issued by
    the device CA, whose key decrypts SCEP requests and signs the replies) and the enrollment profile signer
    (RSA, issued by the root CA). Kept apart from ``certificate_authorities`` because these never issue
    certificates, and their keys are RSA where the CAs' are EC. The key is encrypted by the secret key."""

    __tablename__ = "service_certificates"

    purpose: Mapped[str] = mapped_column(String(32), index=True)
    certificate_pem: Mapped[str] = mapped_column(Text)
    private_key_encrypted: Mapped[str] = mapped_column(Text)
    fingerprint_sha256: Mapped[str] = mapped_column(String(64), unique=True)
    #: The CA that issued it: a new CA means a new service certificate.
    issuer_fingerprint_sha256: Mapped[str] = mapped_column(String(64))
    not_after: Mapped[datetime]
    created_at: Mapped[datetime]
    active: Mapped[bool] = mapped_column(default=True)


class AppleScepChallenge(IdMixin, Model):
    """The one-time SCEP challenge an enrollment profile carries. Only its SHA-256 is stored: the profile,
    served once to the token's holder, is where the secret lives. A challenge is good for one certificate."""

    __tablename__ = "apple_scep_challenges"

    token_id: Mapped[uuid.UUID] = mapped_column(
        ForeignKey("enrollment_tokens.id", ondelete="CASCADE"), index=True
    )
    challenge_hash: Mapped[bytes] = mapped_column(LargeBinary(32), unique=True)
    created_at: Mapped[datetime]
    expires_at: Mapped[datetime] = mapped_column(index=True)
    used_at: Mapped[datetime | None] = mapped_column(default=None)
    source_ip: Mapped[str | None] = mapped_column(String(64), default=None)


class ApplePendingIdentity(Model):
    """A certificate SCEP issued that no device holds yet: it becomes a device's identity when the device
    first checks in with it (Authenticate), and is purged unused when it expires here."""

    __tablename__ = "apple_pending_identities"

    fingerprint_sha256: Mapped[str] = mapped_column(String(64), primary_key=True)
    token_id: Mapped[uuid.UUID] = mapped_column(
        ForeignKey("enrollment_tokens.id", ondelete="CASCADE"), index=True
    )
    challenge_id: Mapped[uuid.UUID] = mapped_column(
        ForeignKey("apple_scep_challenges.id", ondelete="CASCADE"), unique=True
    )
    certificate_pem: Mapped[str] = mapped_column(Text)
    serial_number: Mapped[str] = mapped_column(String(64))
    issuer_fingerprint_sha256: Mapped[str] = mapped_column(String(64))
    not_before: Mapped[datetime]
    not_after: Mapped[datetime]
    created_at: Mapped[datetime]
    expires_at: Mapped[datetime] = mapped_column(index=True)


class AppleEnrollment(Model):
    """An Apple device's MDM enrollment, one per device: what the device said at Authenticate and TokenUpdate
    (its UDID, push token and magic, UnlockToken), and how pushes to it fare. Kept apart from ``devices`` so
    lists and lookups never carry tokens. The UnlockToken (it clears the passcode) is encrypted at rest."""

    __tablename__ = "apple_enrollments"
    __table_args__ = (
        # One live enrollment per device UDID; ended ones (checked out, retired, wiped) stay as history.
        Index(
            "uq_apple_enrollments_live_udid", "udid", unique=True, postgresql_where=text("ended_at IS NULL")
        ),
    )

    device_id: Mapped[uuid.UUID] = mapped_column(
        ForeignKey("devices.id", ondelete="CASCADE"), primary_key=True
    )
    #: 40 hex digits (older iPhones and iPads) or a UUID (Macs, newer devices).
    udid: Mapped[str] = mapped_column(String(64))
    topic: Mapped[str] = mapped_column(String(255))
    #: The enrollment profile's identifier: removing it (RemoveProfile) ends management.
    profile_identifier: Mapped[str] = mapped_column(String(255))
    push_token: Mapped[bytes | None] = mapped_column(LargeBinary(100), default=None)
    push_magic: Mapped[str | None] = mapped_column(String(64), default=None)
    unlock_token_encrypted: Mapped[str | None] = mapped_column(Text, default=None)
    awaiting_configuration: Mapped[bool] = mapped_column(default=False)
    authenticated_at: Mapped[datetime]
    first_token_update_at: Mapped[datetime | None] = mapped_column(default=None)
    last_token_update_at: Mapped[datetime | None] = mapped_column(default=None)
    #: When management ended (CheckOut, retire, wipe): the device's requests are refused from then on.
    ended_at: Mapped[datetime | None] = mapped_column(default=None)
    #: "pending" (no push token yet), "ok", "retrying" or "unreachable" (APNs refused the token).
    push_state: Mapped[str] = mapped_column(String(16), default="pending")
    push_failed_reason: Mapped[str | None] = mapped_column(String(64), default=None)
    last_push_at: Mapped[datetime | None] = mapped_column(default=None)
    lost_mode_enabled: Mapped[bool | None] = mapped_column(default=None)
    #: The device's desired-state version its configuration profiles were last compared at (apple/connect):
    #: a connection compares them again only when it moved.
    reconciled_version: Mapped[int] = mapped_column(default=0, server_default="0")
    #: What the device reported that has no column: its profiles, certificates (never their bytes).
    facts: Mapped[dict[str, Any]] = mapped_column(JSONB, default=dict)


class ApplePushQueue(Model):
    """A device waiting for an APNs wake-up: one row per device, so that every wake before the push is sent
    becomes one push. ``push_service.wake_many`` adds it; the ``apple.push`` job sends it when ``due_at`` has
    come and deletes it, or pushes ``due_at`` back (with ``attempts``) when APNs asks to retry."""

    __tablename__ = "apple_push_queue"

    device_id: Mapped[uuid.UUID] = mapped_column(
        ForeignKey("devices.id", ondelete="CASCADE"), primary_key=True
    )
    due_at: Mapped[datetime] = mapped_column(index=True)
    attempts: Mapped[int] = mapped_column(SmallInteger, default=0, server_default=text("0"))
    #: Why the device was woken last (``wake_many``'s reason): for the log and the administrator.
    reason: Mapped[str] = mapped_column(String(32))
    enqueued_at: Mapped[datetime]
    #: APNs' answer (or the transport error) of the last attempt that is to be retried.
    last_error: Mapped[str | None] = mapped_column(String(256), default=None)


class AppleCommand(IdMixin, Model):
    """A command as an Apple device receives it (its ``id`` is the CommandUUID): one step of a Corral command
    (a retire is one RemoveProfile per managed profile, then the enrollment profile's), or a query Corral
    sends of its own (inventory). Statuses follow Apple's reports: queued, sent, acknowledged, error,
    not_now (sent again after ``not_before``), canceled, expired. ``params`` never holds a secret: the
    UnlockToken and the like are put in when the command is sent."""

    __tablename__ = "apple_commands"
    __table_args__ = (
        Index(
            "ix_apple_commands_open",
            "device_id",
            "created_at",
            "step",
            postgresql_where=text("status IN ('queued', 'sent', 'not_now')"),
        ),
    )

    device_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("devices.id", ondelete="CASCADE"), index=True)
    device_command_id: Mapped[uuid.UUID | None] = mapped_column(
        ForeignKey("device_commands.id", ondelete="CASCADE"), default=None, index=True
    )
    step: Mapped[int] = mapped_column(default=0)
    request_type: Mapped[str] = mapped_column(String(64))
    params: Mapped[dict[str, Any]] = mapped_column(JSONB, default=dict)
    status: Mapped[str] = mapped_column(String(16), default="queued")
    not_before: Mapped[datetime | None] = mapped_column(default=None)
    not_now_count: Mapped[int] = mapped_column(default=0)
    delivery_count: Mapped[int] = mapped_column(default=0)
    created_at: Mapped[datetime]
    sent_at: Mapped[datetime | None] = mapped_column(default=None)
    completed_at: Mapped[datetime | None] = mapped_column(default=None)
    result: Mapped[dict[str, Any] | None] = mapped_column(JSONB, default=None)
    #: Apple's ErrorChain (code, domain, English description) of an Error report.
    error_chain: Mapped[list[dict[str, Any]] | None] = mapped_column(JSONB, default=None)
