from __future__ import annotations

from datetime import datetime

from sqlalchemy import String, Text
from sqlalchemy.orm import Mapped, mapped_column

from corral.kit.db import IdMixin, Model


class CertificateAuthority(IdMixin, Model):
    """Corral's own CA (ECDSA P-256). The private key is encrypted with a key derived from the secret key."""

    __tablename__ = "certificate_authorities"

    purpose: Mapped[str] = mapped_column(String(32), index=True)
    certificate_pem: Mapped[str] = mapped_column(Text)
    private_key_encrypted: Mapped[str] = mapped_column(Text)
    fingerprint_sha256: Mapped[str] = mapped_column(String(64), unique=True)
    not_after: Mapped[datetime]
    created_at: Mapped[datetime]
    active: Mapped[bool] = mapped_column(default=True)
