"""Apple MDM enrollment: Corral's own service identities, SCEP challenges and identities SCEP issued."""

from __future__ import annotations

import uuid
from datetime import datetime

from sqlalchemy import ForeignKey, LargeBinary, String, Text
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
