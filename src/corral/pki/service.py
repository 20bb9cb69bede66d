"""Corral's own certificate authority, kept in the database with its key encrypted by the secret key."""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec
from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncSession

from corral.audit.service import audit_service
from corral.config import Settings
from corral.kit.security import SecretBox
from corral.kit.time import utcnow
from corral.models import CertificateAuthority
from corral.pki import certs

_CREATE_LOCK = 0x43414B59  # "CAKY"
ROOT = "root"
DEVICE = "device"


@dataclass(frozen=True)
class ServerCertificate:
    chain_pem: bytes
    key_pem: bytes
    ca_pem: bytes
    ca_fingerprint: str


class PkiService:
    def __init__(self) -> None:
        # The device CA's certificate and key, parsed and decrypted once per process instead of on every
        # enrollment and renewal (a third of the issuing's CPU), keyed by the stored, encrypted key: a new CA
        # or a re-encrypted key is a new entry.
        self._signers: dict[tuple[uuid.UUID, str], tuple[x509.Certificate, ec.EllipticCurvePrivateKey]] = {}

    def _box(self, settings: Settings) -> SecretBox:
        return SecretBox(settings.resolved_secret_key(), "ca-key")

    async def get_or_create_ca(
        self, session: AsyncSession, settings: Settings, purpose: str = ROOT
    ) -> CertificateAuthority:
        stmt = (
            select(CertificateAuthority)
            .where(CertificateAuthority.purpose == purpose, CertificateAuthority.active.is_(True))
            .order_by(CertificateAuthority.created_at.desc())
            .limit(1)
        )
        ca = await session.scalar(stmt)
        if ca is not None:
            return ca
        # The first requests of a new installation may come together (devices enrolling at once): one makes
        # the CA, the others wait for it and use it (a transaction-scoped lock, held until the maker commits).
        await session.execute(select(func.pg_advisory_xact_lock(_CREATE_LOCK)))
        ca = await session.scalar(stmt)
        if ca is not None:
            return ca
        now = utcnow()
        cert, key = certs.build_ca(f"Corral {purpose} CA", now)
        ca = CertificateAuthority(
            id=uuid.uuid4(),
            purpose=purpose,
            certificate_pem=certs.cert_pem(cert).decode(),
            private_key_encrypted=self._box(settings).encrypt(certs.key_pem(key)),
            fingerprint_sha256=certs.fingerprint(cert),
            not_after=cert.not_valid_after_utc,
            created_at=now,
        )
        session.add(ca)
        await session.flush()
        await audit_service.record(
            session,
            activity="ca.create",
            category="pki",
            operation="create",
            target_type="certificate_authority",
            target_id=ca.id,
            target_name=f"Corral {purpose} CA",
            changes=[("fingerprint_sha256", None, ca.fingerprint_sha256)],
        )
        return ca

    async def issue_server_certificate(
        self, session: AsyncSession, settings: Settings, hostnames: list[str]
    ) -> ServerCertificate:
        """A TLS server certificate (chain included) from the root CA, for ``serve --https``."""
        ca = await self.get_or_create_ca(session, settings)
        ca_cert = x509.load_pem_x509_certificate(ca.certificate_pem.encode())
        ca_key = certs.load_key(self._box(settings).decrypt(ca.private_key_encrypted))
        cert, key = certs.issue_server_certificate(ca_cert, ca_key, hostnames, utcnow())
        return ServerCertificate(
            chain_pem=certs.cert_pem(cert) + ca.certificate_pem.encode(),
            key_pem=certs.key_pem(key),
            ca_pem=ca.certificate_pem.encode(),
            ca_fingerprint=ca.fingerprint_sha256,
        )

    def write_server_certificate(self, certificate: ServerCertificate, directory: Path) -> tuple[Path, Path]:
        directory.mkdir(parents=True, exist_ok=True)
        cert_path, key_path = directory / "server.crt", directory / "server.key"
        cert_path.write_bytes(certificate.chain_pem)
        key_path.touch(mode=0o600)
        key_path.chmod(0o600)
        key_path.write_bytes(certificate.key_pem)
        (directory / "ca.crt").write_bytes(certificate.ca_pem)
        return cert_path, key_path

    def signer(
        self, settings: Settings, ca: CertificateAuthority
    ) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
        key = (ca.id, ca.private_key_encrypted)
        signer = self._signers.get(key)
        if signer is None:
            if len(self._signers) >= 4:  # CAs are few; never grow without bound
                self._signers.clear()
            signer = (
                x509.load_pem_x509_certificate(ca.certificate_pem.encode()),
                certs.load_key(self._box(settings).decrypt(ca.private_key_encrypted)),
            )
            self._signers[key] = signer
        return signer

    async def issue_device_certificate(
        self,
        session: AsyncSession,
        settings: Settings,
        device_id: uuid.UUID,
        csr: x509.CertificateSigningRequest,
    ) -> tuple[x509.Certificate, CertificateAuthority]:
        ca = await self.get_or_create_ca(session, settings, DEVICE)
        ca_cert, ca_key = self.signer(settings, ca)
        cert = certs.issue_device_certificate(ca_cert, ca_key, csr, str(device_id), utcnow())
        return cert, ca

    async def tls_ca_fingerprint(self, session: AsyncSession) -> str | None:
        """The fingerprint of the CA behind Corral's own TLS certificate, if one was ever issued."""
        ca = await session.scalar(
            select(CertificateAuthority)
            .where(CertificateAuthority.purpose == ROOT, CertificateAuthority.active.is_(True))
            .order_by(CertificateAuthority.created_at.desc())
            .limit(1)
        )
        return ca.fingerprint_sha256 if ca else None


pki_service = PkiService()
