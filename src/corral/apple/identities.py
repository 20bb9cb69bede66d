"""Corral's own RSA identities for Apple enrollment, made on first use and kept with the key encrypted:

- the **SCEP registration authority** (RA), issued by the device CA. SCEP moves the device's request to the
  server encrypted to an RSA key (key transport), and the device CA is EC; the RA's key decrypts requests
  and signs replies, so the CA's own key is never a decryption oracle for anyone on the network.
- the **profile signer**, issued by the root CA: it signs the enrollment profile, so a device (and the
  simulator) can check where the profile came from before installing it.

Each is replaced when its issuing CA changes or it nears expiry; the decrypted key is cached per process.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import timedelta

from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import rsa
from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncSession

from corral.audit.service import audit_service
from corral.config import Settings
from corral.kit.security import SecretBox
from corral.kit.time import utcnow
from corral.models import CertificateAuthority, ServiceCertificate
from corral.pki import certs
from corral.pki.service import DEVICE, ROOT, pki_service

SCEP_RA = "scep_ra"
PROFILE_SIGNER = "profile_signer"
_ISSUER = {SCEP_RA: DEVICE, PROFILE_SIGNER: ROOT}
_NAMES = {SCEP_RA: "Corral SCEP RA", PROFILE_SIGNER: "Corral enrollment profile signer"}
KEY_BITS = 2048
DAYS = 825
#: Replaced this long before it expires, so a device never meets an expired one.
RENEW_BEFORE = timedelta(days=30)
_LOCK = 0x53435250  # "SCRP": one writer makes the identity; the others read it


@dataclass(frozen=True)
class Identity:
    certificate: x509.Certificate
    key: rsa.RSAPrivateKey
    #: The CA that issued it (the RA's is the device CA: SCEP's GetCACert answers both).
    issuer: x509.Certificate


class Identities:
    def __init__(self) -> None:
        self._cache: dict[tuple[uuid.UUID, str], Identity] = {}

    def _box(self, settings: Settings) -> SecretBox:
        return SecretBox(settings.resolved_secret_key(), "service-key")

    async def get(self, session: AsyncSession, settings: Settings, purpose: str) -> Identity:
        ca = await pki_service.get_or_create_ca(session, settings, _ISSUER[purpose])
        row = await self._current(session, purpose, ca)
        if row is None:
            await session.execute(select(func.pg_advisory_xact_lock(_LOCK)))
            row = await self._current(session, purpose, ca) or await self._create(
                session, settings, purpose, ca
            )
        key = (row.id, row.private_key_encrypted)
        identity = self._cache.get(key)
        if identity is None:
            if len(self._cache) >= 8:
                self._cache.clear()
            identity = Identity(
                x509.load_pem_x509_certificate(row.certificate_pem.encode()),
                certs.load_rsa_key(self._box(settings).decrypt(row.private_key_encrypted)),
                x509.load_pem_x509_certificate(ca.certificate_pem.encode()),
            )
            self._cache[key] = identity
        return identity

    async def _current(
        self, session: AsyncSession, purpose: str, ca: CertificateAuthority
    ) -> ServiceCertificate | None:
        return await session.scalar(
            select(ServiceCertificate)
            .where(
                ServiceCertificate.purpose == purpose,
                ServiceCertificate.active.is_(True),
                ServiceCertificate.issuer_fingerprint_sha256 == ca.fingerprint_sha256,
                ServiceCertificate.not_after > utcnow() + RENEW_BEFORE,
            )
            .order_by(ServiceCertificate.created_at.desc())
            .limit(1)
        )

    async def _create(
        self, session: AsyncSession, settings: Settings, purpose: str, ca: CertificateAuthority
    ) -> ServiceCertificate:
        ca_cert, ca_key = pki_service.signer(settings, ca)
        key = rsa.generate_private_key(public_exponent=65537, key_size=KEY_BITS)
        now = utcnow()
        cert = certs.issue_leaf(
            ca_cert,
            ca_key,
            key.public_key(),
            _NAMES[purpose],
            None,
            now,
            DAYS,
            client=False,
            key_encipherment=purpose == SCEP_RA,
            organization="Corral",
        )
        row = ServiceCertificate(
            id=uuid.uuid4(),
            purpose=purpose,
            certificate_pem=certs.cert_pem(cert).decode(),
            private_key_encrypted=self._box(settings).encrypt(certs.key_pem(key)),
            fingerprint_sha256=certs.fingerprint(cert),
            issuer_fingerprint_sha256=ca.fingerprint_sha256,
            not_after=cert.not_valid_after_utc,
            created_at=now,
        )
        session.add(row)
        await session.flush()
        await audit_service.record(
            session,
            activity="service_certificate.create",
            category="pki",
            operation="create",
            target_type="service_certificate",
            target_id=row.id,
            target_name=_NAMES[purpose],
            changes=[("fingerprint_sha256", None, row.fingerprint_sha256)],
        )
        return row


identities = Identities()
