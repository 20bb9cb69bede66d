"""Enrolling an Apple device, up to the identity it will check in with: the enrollment profile (downloaded
with an enrollment token; it carries a one-time SCEP challenge) and the SCEP server that turns that challenge
into a certificate from Corral's device CA. The device itself is created at its first check-in
(Authenticate), where the token's use is counted.

Every refusal is counted and audited through the refusal log, aggregated, and logged on the token when one is
known, like an agent's refused enrollment (enrollment/service.py).
"""

from __future__ import annotations

import hashlib
import secrets
import uuid
from dataclasses import dataclass
from datetime import timedelta

from cryptography import x509
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from corral.apple import profile as profiles
from corral.apple import scep
from corral.apple.identities import PROFILE_SIGNER, SCEP_RA, identities
from corral.apple.push_certificate import expiry, push_certificate_service
from corral.audit.refusals import RefusalLog
from corral.audit.service import audit_service
from corral.config import Settings
from corral.enrollment import repository as enrollment_repository
from corral.enrollment.service import enrollment_service, token_status
from corral.errors import BadRequest, Conflict
from corral.kit import context
from corral.kit.rate_limit import ClientRateLimit
from corral.kit.security import token_digest
from corral.kit.time import utcnow
from corral.models import ApplePendingIdentity, AppleScepChallenge, EnrollmentToken, Platform
from corral.pki import certs
from corral.pki.service import DEVICE, ROOT, pki_service
from corral.tenant.service import tenant_service

APPLE_PLATFORMS = frozenset({Platform.ios, Platform.ipados, Platform.macos})
PROFILE_ENDPOINT = "/apple/v1/enroll"
SCEP_ENDPOINT = "/apple/v1/scep"
#: An identity nobody checked in with is purged after this long.
PENDING_FOR = timedelta(hours=24)

#: Why SCEP refused a request: code → the server's words (the audit log's).
SCEP_REASONS = {
    "bad_message": "the SCEP message could not be read or decrypted",
    "unsupported_message_type": "only certificate requests (PKCSReq) are accepted",
    "unknown_challenge": "the SCEP challenge is not valid",
    "challenge_used": "the SCEP challenge has already been used",
    "challenge_expired": "the SCEP challenge has expired",
    "token_inactive": "the enrollment token is no longer active",
    "csr_refused": "the certificate signing request was refused",
}


@dataclass(frozen=True)
class ScepAnswer:
    body: bytes
    #: The certificate issued, or None when the answer is a FAILURE.
    issued: x509.Certificate | None


class AppleEnrollment:
    async def profile(
        self, session: AsyncSession, refusals: RefusalLog, settings: Settings, secret: str
    ) -> bytes:
        """The signed enrollment profile for the token's holder, with a new one-time SCEP challenge."""
        token = await enrollment_service.admit_token(
            session,
            refusals,
            await enrollment_repository.token_by_hash_for_update(session, token_digest(secret)),
            platforms=APPLE_PLATFORMS,
            serial_number=None,
            endpoint=PROFILE_ENDPOINT,
        )
        now = utcnow()
        push = await push_certificate_service.current(session)
        problem = None
        if not settings.base_url.startswith("https://") and not settings.apple_allow_http:
            problem = (
                "Apple devices enroll over HTTPS only: set CORRAL_BASE_URL to this server's https:// address."
            )
        elif push is None or push.topic is None or push.not_after is None:
            problem = (
                "Apple devices cannot enroll yet: an administrator must set up the Apple MDM push "
                "certificate (in Settings, Apple MDM push certificate)."
            )
        elif expiry(push.not_after, now).state == "expired":
            problem = (
                "Apple devices cannot enroll: the Apple MDM push certificate has expired; an administrator "
                "must renew it."
            )
        if problem is not None or push is None or push.topic is None:
            raise await enrollment_service.refuse(
                refusals,
                token,
                None,
                "apple_not_ready",
                Conflict(problem or "Apple enrollment is not set up."),
                endpoint=PROFILE_ENDPOINT,
                text="Apple enrollment is not set up (push certificate or HTTPS)",
            )
        challenge = secrets.token_urlsafe(32)
        session.add(
            AppleScepChallenge(
                id=uuid.uuid4(),
                token_id=token.id,
                challenge_hash=hashlib.sha256(challenge.encode()).digest(),
                created_at=now,
                expires_at=now + timedelta(seconds=settings.apple_scep_challenge_ttl_seconds),
                source_ip=context.current().client_ip,
            )
        )
        trust = None
        if settings.tls and not settings.tls_cert_file:
            root = await pki_service.get_or_create_ca(session, settings, ROOT)
            trust = x509.load_pem_x509_certificate(root.certificate_pem.encode())
        signer = await identities.get(session, settings, PROFILE_SIGNER)
        tenant = await tenant_service.get(session)
        body = profiles.signed(
            profiles.EnrollmentProfile(
                base_url=settings.base_url,
                topic=push.topic,
                challenge=challenge,
                organization=tenant.organization_name,
                identifier=profiles.identifier_for(settings.base_url),
                trust=trust,
            ),
            signer.certificate,
            signer.key,
            [signer.issuer],
        )
        await audit_service.record(
            session,
            activity="apple.enrollment_profile.download",
            category="enrollment",
            operation="read",
            target_type="enrollment_token",
            target_id=token.id,
            target_name=token.name,
            actor=context.Actor(type="device", name=f"enrollment token {token.prefix}…"),
        )
        return body

    async def ca_certificates(self, session: AsyncSession, settings: Settings) -> bytes:
        ra = await identities.get(session, settings, SCEP_RA)
        return scep.ca_certificates(ra.certificate, ra.issuer)

    async def pki_operation(
        self,
        session: AsyncSession,
        refusals: RefusalLog,
        settings: Settings,
        limit: ClientRateLimit,
        body: bytes,
    ) -> ScepAnswer:
        """A certificate request: verified, decrypted, its challenge spent, a certificate issued from the
        device CA. Anything refused after the message verifies is a signed FAILURE (HTTP 200, as RFC 8894
        has it); a message that does not verify raises ``scep.ScepError`` (the caller answers 400)."""
        try:
            message = scep.read_message(body)
        except scep.ScepError:
            await self._refuse(refusals, None, None, "bad_message")
            raise
        ra = await identities.get(session, settings, SCEP_RA)
        try:
            if message.message_type != scep.PKCS_REQ:
                raise scep.ScepFailure(scep.FailInfo.bad_request, "unsupported_message_type")
            request = scep.decrypt_request(
                message, ra.certificate, ra.key, allow_des=settings.apple_scep_allow_des
            )
        except scep.ScepFailure as exc:
            code = str(exc) if str(exc) in SCEP_REASONS else "bad_message"
            await self._refuse(refusals, limit, None, code)
            return ScepAnswer(scep.failure(message, exc.fail_info, ra.certificate, ra.key), None)
        challenge = await session.scalar(
            select(AppleScepChallenge)
            .where(AppleScepChallenge.challenge_hash == hashlib.sha256(request.challenge.encode()).digest())
            .with_for_update()
        )
        now = utcnow()
        reason: str | None = None
        token = None
        if challenge is None:
            reason = "unknown_challenge"
        elif challenge.used_at is not None:
            reason = "challenge_used"
        elif challenge.expires_at <= now:
            reason = "challenge_expired"
        else:
            token = await enrollment_repository.get_token(session, challenge.token_id)
            if token is None or token_status(token) != "active":
                reason = "token_inactive"
        if reason is None:
            try:
                public_key = certs.check_identity_csr(request.csr)
            except certs.CsrRefused:
                reason = "csr_refused"
        if reason is not None or challenge is None or token is None:
            await self._refuse(refusals, limit, token, reason or "unknown_challenge")
            return ScepAnswer(scep.failure(message, scep.FailInfo.bad_request, ra.certificate, ra.key), None)
        challenge.used_at = now
        ca = await pki_service.get_or_create_ca(session, settings, DEVICE)
        ca_cert, ca_key = pki_service.signer(settings, ca)
        identity_id = uuid.uuid4()
        issued = certs.issue_leaf(
            ca_cert,
            ca_key,
            public_key,
            f"apple-identity:{identity_id}",
            f"urn:corral:apple-identity:{identity_id}",
            now,
            settings.apple_identity_days,
            client=True,
            key_encipherment=True,
        )
        fingerprint = certs.fingerprint(issued)
        session.add(
            ApplePendingIdentity(
                fingerprint_sha256=fingerprint,
                token_id=token.id,
                challenge_id=challenge.id,
                certificate_pem=certs.cert_pem(issued).decode(),
                serial_number=format(issued.serial_number, "x"),
                issuer_fingerprint_sha256=ca.fingerprint_sha256,
                not_before=issued.not_valid_before_utc,
                not_after=issued.not_valid_after_utc,
                created_at=now,
                expires_at=now + PENDING_FOR,
            )
        )
        await session.flush()
        await audit_service.record(
            session,
            activity="apple.scep.issue",
            category="enrollment",
            operation="create",
            target_type="enrollment_token",
            target_id=token.id,
            target_name=token.name,
            actor=context.Actor(type="device", name=f"enrollment token {token.prefix}…"),
            changes=[("certificate_fingerprint", None, fingerprint)],
        )
        return ScepAnswer(scep.success(message, issued, ra.certificate, ra.key), issued)

    async def _refuse(
        self, refusals: RefusalLog, limit: ClientRateLimit | None, token: EnrollmentToken | None, reason: str
    ) -> None:
        """Counted and audited like a refused enrollment, and against the address's refusal limit (a FAILURE
        answer is a 200, which the enrollment throttle does not see)."""
        if limit is not None:
            await limit.count(context.current().client_ip)
        await enrollment_service.refuse(
            refusals,
            token,
            None,
            reason,
            BadRequest(SCEP_REASONS[reason]),
            endpoint=SCEP_ENDPOINT,
            text=SCEP_REASONS[reason],
            activity="apple.scep.issue",
            category="enrollment",
        )


apple_enrollment = AppleEnrollment()
