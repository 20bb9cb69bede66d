from __future__ import annotations

from datetime import datetime

from sqlalchemy import String, Text
from sqlalchemy.orm import Mapped, mapped_column

from corral.kit.db import IdMixin, Model


class ApplePushCertificate(IdMixin, Model):
    """The Apple MDM push (APNs) certificate, and the key it was requested with.

    A row starts as a request: Corral makes an RSA key and its CSR (the key encrypted by the secret key, as
    the CA's). The administrator gets the CSR signed (docs/apple-mdm.md) and uploads the certificate Apple
    issued for it; the row then holds it, its topic and its validity. The newest row with a certificate is the
    one in use; a renewal is a new request whose certificate must carry the same topic."""

    __tablename__ = "apple_push_certificates"

    private_key_encrypted: Mapped[str] = mapped_column(Text)
    csr_pem: Mapped[str] = mapped_column(Text)
    certificate_pem: Mapped[str | None] = mapped_column(Text)
    #: The certificate subject's UID: ``com.apple.mgmt.External.<uuid>``, the topic every push is sent on.
    topic: Mapped[str | None] = mapped_column(String(255), index=True)
    serial_number: Mapped[str | None] = mapped_column(String(64))
    not_before: Mapped[datetime | None]
    not_after: Mapped[datetime | None]
    #: The Apple Account the certificate was created with (renewals must use the same one): a note for admins.
    apple_account: Mapped[str | None] = mapped_column(String(320))
    requested_at: Mapped[datetime]
    requested_by: Mapped[str] = mapped_column(String(320))
    uploaded_at: Mapped[datetime | None]
    uploaded_by: Mapped[str | None] = mapped_column(String(320))
