"""The Apple MDM push (APNs) certificate: requested in Corral, signed through Apple, uploaded back.

Corral makes the RSA key and its certificate signing request; the key never leaves Corral (encrypted at rest
by the secret key, as the device CA's). Apple issues the certificate for the CSR (after an MDM vendor signed
the request: docs/apple-mdm.md); the administrator uploads it. Its subject's UID is the **topic** every push
to Apple devices is sent on and every enrollment profile names, so a renewal must keep it: a certificate for
another topic would orphan every enrolled Apple device, and is refused."""

from __future__ import annotations

import datetime as dt
import uuid
from dataclasses import dataclass
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.x509.oid import NameOID
from sqlalchemy import Select, delete, func, select
from sqlalchemy.ext.asyncio import AsyncSession

from corral.audit.service import audit_service
from corral.config import Settings
from corral.errors import Conflict, ValidationFailed
from corral.kit.security import SecretBox
from corral.kit.time import utcnow
from corral.models import ApplePushCertificate
from corral.pki import certs

TOPIC_PREFIX = "com.apple.mgmt."
KEY_BITS = 2048
#: Days before expiry at which Corral warns (the dashboard and /readyz's details), the later one louder.
WARN_DAYS = (30, 7)
MAX_PEM = 64 * 1024
# Requests and uploads take their turn (one waiting request at most, a renewal checked against the certificate
# in use as it is): a transaction-scoped advisory lock.
_LOCK = 0x41504E53  # "APNS"


@dataclass(frozen=True)
class Expiry:
    state: str  # "valid", "expiring" (≤ 30 days), "expiring_soon" (≤ 7 days), "expired"
    days_left: int


def expiry(not_after: dt.datetime, now: dt.datetime) -> Expiry:
    left = not_after - now
    days = left.days
    if left <= dt.timedelta(0):
        return Expiry("expired", days)
    if left <= dt.timedelta(days=WARN_DAYS[1]):
        return Expiry("expiring_soon", days)
    if left <= dt.timedelta(days=WARN_DAYS[0]):
        return Expiry("expiring", days)
    return Expiry("valid", days)


def topic_of(certificate: x509.Certificate) -> str | None:
    """The subject's UID (0.9.2342.19200300.100.1.1): Apple puts the push topic there."""
    values = certificate.subject.get_attributes_for_oid(NameOID.USER_ID)
    value = values[0].value if values else None
    return value if isinstance(value, str) else None


def _spki(key: Any) -> bytes:
    return bytes(
        key.public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    )


def in_use(stmt: Select[Any]) -> Select[Any]:
    """``stmt`` over the certificate in use: the newest one uploaded."""
    return (
        stmt.where(ApplePushCertificate.certificate_pem.is_not(None))
        .order_by(ApplePushCertificate.uploaded_at.desc())
        .limit(1)
    )


class PushCertificateService:
    def _box(self, settings: Settings) -> SecretBox:
        return SecretBox(settings.resolved_secret_key(), "apple-push-key")

    async def current(self, session: AsyncSession) -> ApplePushCertificate | None:
        """The certificate in use: the newest one uploaded."""
        result: ApplePushCertificate | None = await session.scalar(in_use(select(ApplePushCertificate)))
        return result

    def private_key_pem(self, settings: Settings, certificate: ApplePushCertificate) -> bytes:
        """The certificate's key, decrypted (PEM): for the APNs client alone, never stored or shown."""
        return self._box(settings).decrypt(certificate.private_key_encrypted)

    async def pending(self, session: AsyncSession) -> ApplePushCertificate | None:
        """The request waiting for its certificate, if any (at most one)."""
        stmt = select(ApplePushCertificate).where(ApplePushCertificate.certificate_pem.is_(None)).limit(1)
        result: ApplePushCertificate | None = await session.scalar(stmt)
        return result

    async def request(self, session: AsyncSession, settings: Settings, actor: str) -> ApplePushCertificate:
        """A new key and CSR; a request still waiting is replaced (its key is dropped)."""
        await session.execute(select(func.pg_advisory_xact_lock(_LOCK)))
        await session.execute(
            delete(ApplePushCertificate).where(ApplePushCertificate.certificate_pem.is_(None))
        )
        key = rsa.generate_private_key(public_exponent=65537, key_size=KEY_BITS)
        csr = (
            x509.CertificateSigningRequestBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "Corral MDM push")]))
            .sign(key, hashes.SHA256())
        )
        row = ApplePushCertificate(
            id=uuid.uuid4(),
            private_key_encrypted=self._box(settings).encrypt(certs.key_pem(key)),
            csr_pem=csr.public_bytes(serialization.Encoding.PEM).decode(),
            requested_at=utcnow(),
            requested_by=actor,
        )
        session.add(row)
        await session.flush()
        await audit_service.record(
            session,
            activity="apple_push_certificate.request",
            category="settings",
            operation="create",
            target_type="apple_push_certificate",
            target_id=row.id,
            target_name="Apple MDM push certificate",
        )
        return row

    async def upload(
        self,
        session: AsyncSession,
        settings: Settings,
        certificate_pem: str,
        apple_account: str | None,
        actor: str,
    ) -> ApplePushCertificate:
        """Take Apple's certificate for the waiting request. Refused (nothing changed): not a PEM certificate,
        not for the request's key, no push topic, expired, or another topic than the certificate in use."""
        if len(certificate_pem) > MAX_PEM:
            raise ValidationFailed("The certificate is too large to be an APNs certificate.")
        try:
            certificate = x509.load_pem_x509_certificate(certificate_pem.strip().encode())
        except (ValueError, TypeError) as exc:
            raise ValidationFailed(
                "This is not a PEM certificate (-----BEGIN CERTIFICATE-----). Apple's portal gives a .pem "
                "file."
            ) from exc
        await session.execute(select(func.pg_advisory_xact_lock(_LOCK)))
        pending = await self.pending(session)
        if pending is None:
            raise Conflict("There is no certificate request waiting: create one, get it signed, then upload.")
        key = serialization.load_pem_private_key(
            self._box(settings).decrypt(pending.private_key_encrypted), None
        )
        if _spki(certificate.public_key()) != _spki(key.public_key()):
            raise ValidationFailed(
                "This certificate was not issued for Corral's current request (its key differs). Upload the "
                "certificate Apple issued for the CSR you downloaded last."
            )
        topic = topic_of(certificate)
        if topic is None or not topic.startswith(TOPIC_PREFIX):
            raise ValidationFailed(
                f"This is not an MDM push certificate: its subject has no {TOPIC_PREFIX}… topic."
            )
        now = utcnow()
        if not certificate.not_valid_before_utc <= now <= certificate.not_valid_after_utc:
            raise ValidationFailed("This certificate is not valid now (expired, or not yet valid).")
        current = await self.current(session)
        if current is not None and current.topic != topic:
            raise Conflict(
                f"This certificate is for the topic {topic}, the one in use is for {current.topic}: Apple "
                "devices enrolled with it could no longer be reached. Renew the certificate in Apple's "
                "portal with the same Apple Account instead of creating a new one."
            )
        pending.certificate_pem = certs.cert_pem(certificate).decode()
        pending.topic = topic
        pending.serial_number = format(certificate.serial_number, "x")
        pending.not_before = certificate.not_valid_before_utc
        pending.not_after = certificate.not_valid_after_utc
        pending.apple_account = apple_account
        pending.uploaded_at = now
        pending.uploaded_by = actor
        await session.flush()
        await audit_service.record(
            session,
            activity="apple_push_certificate.renew"
            if current is not None
            else "apple_push_certificate.upload",
            category="settings",
            operation="update",
            target_type="apple_push_certificate",
            target_id=pending.id,
            target_name="Apple MDM push certificate",
            changes=[
                ("topic", current.topic if current else None, topic),
                (
                    "not_after",
                    current.not_after.isoformat() if current and current.not_after else None,
                    pending.not_after.isoformat(),
                ),
                ("apple_account", current.apple_account if current else None, apple_account),
            ],
        )
        return pending


push_certificate_service = PushCertificateService()
