"""Enrollment tokens, and enrolling a device with one: device row, certificate, token use and audit event in
one transaction. Every refusal is counted and audited with a reason code and the token the server found (and
logged on that token), aggregated per kind (audit/refusals.py): nothing the request said reaches the audit
log."""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import timedelta
from typing import Any
from urllib.parse import urlencode

import segno
from cryptography import x509
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession

from corral.assignments import hooks as assignment_hooks
from corral.audit.refusals import Refusal, RefusalLog, Summary
from corral.audit.service import audit_service, hidden_categories
from corral.checkin.throttle import UNKNOWN_TOKEN
from corral.config import Settings
from corral.enrollment import repository
from corral.enrollment.schemas import EnrollmentTokenCreate, EnrollmentTokenOut, EnrollmentTokenUseOut
from corral.errors import Conflict, CorralError, Forbidden, NotAuthenticated, NotFound, ValidationFailed
from corral.kit import context
from corral.kit.security import new_token, token_digest
from corral.kit.time import utcnow
from corral.licensing.service import licence_service
from corral.models import (
    Device,
    DeviceCertificate,
    EnrollmentRefusal,
    EnrollmentToken,
    EnrollmentTokenUse,
    ManagementChannel,
    ManagementState,
    Platform,
)
from corral.pki import certs
from corral.pki.service import pki_service
from corral.rbac import repository as rbac_repository
from corral.rbac.permissions import P
from corral.rbac.principal import EVERYWHERE, Principal, Scope, authorize_object
from corral.users import repository as users_repository

TOKEN_PREFIX = "cet"  # noqa: S105 - a prefix, not a secret
UNIQUE_VIOLATION = "23505"  # SQLSTATE

#: Why an enrollment was refused: code (a metric label; stored on the token's uses) -> the server's words (the
#: audit log's). The response says more; the audit log never repeats what the request said, and never tells
#: whether a user holds a licence (readers of the audit log need not hold licences:read).
REASONS = {
    "unknown_token": "the enrollment token is not valid",
    EnrollmentRefusal.revoked: "the enrollment token was revoked",
    EnrollmentRefusal.expired: "the enrollment token has expired",
    EnrollmentRefusal.used_up: "the enrollment token has been used up",
    EnrollmentRefusal.platform_not_allowed: "the enrollment token does not allow this platform",
    EnrollmentRefusal.user_disabled: "the bound user may not enroll devices (disabled or not entitled)",
    EnrollmentRefusal.user_unlicensed: "the bound user may not enroll devices (disabled or not entitled)",
    EnrollmentRefusal.csr_refused: "the certificate signing request was refused",
    EnrollmentRefusal.duplicate_serial: "a managed device with this serial number already exists",
}


def token_status(token: EnrollmentToken) -> str:
    if token.revoked_at is not None:
        return "revoked"
    if token.expires_at <= utcnow():
        return "expired"
    if token.max_uses is not None and token.use_count >= token.max_uses:
        return "used_up"
    return "active"


def token_out(token: EnrollmentToken) -> EnrollmentTokenOut:
    return EnrollmentTokenOut(
        id=token.id,
        name=token.name,
        prefix=token.prefix,
        platforms=list(token.platforms),
        ownership=token.ownership,
        expires_at=token.expires_at,
        max_uses=token.max_uses,
        use_count=token.use_count,
        user_id=token.user_id,
        scope_tags=sorted(tag.name for tag in token.scope_tags),
        created_at=token.created_at,
        revoked_at=token.revoked_at,
        status=token_status(token),
    )


# A bound user's refusal tells whether they hold a licence (audit category "licence", licences:read). A
# reader who may not see that category gets one stand-in for the whole family (a disabled user reads the
# same), so the generic text does not single out the licence reason.
_USER_REFUSALS = frozenset({EnrollmentRefusal.user_disabled, EnrollmentRefusal.user_unlicensed})
USER_INELIGIBLE = "The bound user may not enroll devices: their account is disabled or not entitled."


def visible_refusal(
    reason: EnrollmentRefusal | None, detail: str | None, hidden: frozenset[str]
) -> tuple[EnrollmentRefusal | None, str | None]:
    """A refusal as a reader who may not see the audit categories ``hidden`` sees it."""
    if reason in _USER_REFUSALS and "licence" in hidden:
        return EnrollmentRefusal.user_ineligible, USER_INELIGIBLE
    return reason, detail


def use_out(use: EnrollmentTokenUse, hidden: frozenset[str]) -> EnrollmentTokenUseOut:
    reason, detail = visible_refusal(use.reason, use.detail, hidden)
    return EnrollmentTokenUseOut(
        occurred_at=use.occurred_at,
        ip_address=use.ip_address,
        serial_number=use.serial_number,
        result=use.result,
        reason=reason,
        detail=detail,
        device_id=use.device_id,
    )


def enrollment_url(settings: Settings, secret: str, ca_fingerprint: str | None) -> str:
    query = {"token": secret}
    if ca_fingerprint:
        query["ca"] = f"sha256:{ca_fingerprint}"
    return f"{settings.base_url}/device/v1/enroll?{urlencode(query)}"


APPLE_PLATFORMS = frozenset({"ios", "ipados", "macos"})


def apple_enrollment_url(settings: Settings, token: EnrollmentToken, secret: str) -> str | None:
    """Where an iPhone, iPad or Mac downloads its enrollment profile (Apple MDM, no agent), for a token that
    allows one of them; None otherwise."""
    if not APPLE_PLATFORMS & set(token.platforms):
        return None
    return f"{settings.base_url}/apple/v1/enroll?{urlencode({'token': secret})}"


def qr_svg(url: str) -> str:
    data_uri: str = segno.make(url, error="m").svg_data_uri(scale=4, border=2)
    return data_uri


@dataclass
class DeviceFacts:
    serial_number: str
    name: str
    platform: Platform
    os_version: str | None
    model: str | None
    manufacturer: str | None


@dataclass(frozen=True, kw_only=True)
class RefusedEnrollment(Refusal):
    """A refused enrollment; with a known token, also logged on the token (its uses)."""

    token_id: uuid.UUID | None = None
    #: What the token's holder said the device is (the token's log only, never the audit log).
    serial_number: str | None = None
    #: The server's full text for the token's log, where readers see what the visibility rules allow
    #: (``use_out``); the audit log gets the reason's words only.
    token_detail: str | None = None

    def extra_rows(self, summary: Summary | None, detail: str) -> Sequence[Any]:
        if self.token_id is None:
            return ()
        return (
            EnrollmentTokenUse(
                id=uuid.uuid4(),
                token_id=self.token_id,
                occurred_at=summary.last_at if summary else utcnow(),
                ip_address=summary.source if summary else self.source,
                serial_number=None if summary else self.serial_number,
                result="refused",
                reason=self.reason if self.reason in EnrollmentRefusal._value2member_map_ else None,
                detail=(detail if summary or not self.token_detail else self.token_detail)[:512],
            ),
        )


@dataclass
class Enrolled:
    device: Device
    certificate_pem: str
    ca_pem: str
    fingerprint: str


@dataclass(frozen=True)
class TokenNames:
    """What a refusal names of its token."""

    id: uuid.UUID
    name: str
    prefix: str


class EnrollmentService:
    # ---------------------------------------------------------------- tokens (admins)
    def _required_scope(self, tag_ids: frozenset[uuid.UUID]) -> Scope:
        # Untagged objects are in the default scope, which only unscoped grants reach.
        return Scope(tag_ids=tag_ids) if tag_ids else EVERYWHERE

    async def create_token(
        self, session: AsyncSession, settings: Settings, principal: Principal, data: EnrollmentTokenCreate
    ) -> tuple[EnrollmentToken, str, str]:
        tags = await rbac_repository.tags_by_ids(session, data.scope_tag_ids)
        if len(tags) != len(set(data.scope_tag_ids)):
            raise ValidationFailed("One or more scope tags do not exist.")
        required = self._required_scope(frozenset(t.id for t in tags))
        if not principal.scope_for(P.enrollment_manage).ignoring_groups().contains(required):
            raise Forbidden(
                "Devices enrolled with this token would fall outside your scope: choose scope tags "
                "you administer."
            )
        if data.user_id is not None:
            # A user outside the caller's users:read scope does not exist for them.
            bound = await users_repository.get_with_groups(session, data.user_id)
            if bound is None or not users_repository.reaches_user(bound)(principal.scope_for(P.users_read)):
                raise ValidationFailed("The bound user does not exist.")
        secret = new_token(TOKEN_PREFIX, 24)
        now = utcnow()
        token = EnrollmentToken(
            id=uuid.uuid4(),
            name=data.name,
            token_hash=token_digest(secret),
            prefix=secret[: len(TOKEN_PREFIX) + 7],
            platforms=[p.value for p in data.platforms],
            ownership=data.ownership.value,
            expires_at=now + timedelta(days=data.expires_in_days),
            max_uses=data.max_uses,
            use_count=0,
            user_id=data.user_id,
            created_by_id=principal.user_id,
            created_at=now,
            scope_tags=tags,
        )
        session.add(token)
        await session.flush()
        await audit_service.record(
            session,
            activity="enrollment_token.create",
            category="enrollment",
            operation="create",
            target_type="enrollment_token",
            target_id=token.id,
            target_name=token.name,
            changes=[
                ("platforms", None, token.platforms),
                ("ownership", None, token.ownership),
                ("expires_at", None, token.expires_at.isoformat()),
                ("max_uses", None, token.max_uses),
                ("scope_tags", None, sorted(t.name for t in tags)),
            ],
        )
        ca = (
            await pki_service.tls_ca_fingerprint(session)
            if settings.tls and not settings.tls_cert_file
            else None
        )
        return token, secret, enrollment_url(settings, secret, ca)

    async def list_tokens(self, session: AsyncSession, principal: Principal) -> list[EnrollmentToken]:
        return await repository.list_tokens(session, principal.scope_for(P.enrollment_read))

    async def get_token(
        self,
        session: AsyncSession,
        principal: Principal,
        token_id: uuid.UUID,
        permission: P = P.enrollment_read,
    ) -> EnrollmentToken:
        token = await repository.get_token(session, token_id)
        if token is None:
            raise NotFound("No such enrollment token.")
        tags = {t.id for t in token.scope_tags}
        try:
            authorize_object(
                principal, permission, lambda scope: scope.covers(tags), read_permission=P.enrollment_read
            )
        except NotFound:
            raise NotFound("No such enrollment token.") from None
        return token

    async def revoke_token(
        self, session: AsyncSession, principal: Principal, token_id: uuid.UUID
    ) -> EnrollmentToken:
        token = await self.get_token(session, principal, token_id, P.enrollment_manage)
        if token.revoked_at is not None:
            raise Conflict("This enrollment token is already revoked.")
        token.revoked_at = utcnow()
        await session.flush()
        await audit_service.record(
            session,
            activity="enrollment_token.revoke",
            category="enrollment",
            operation="update",
            target_type="enrollment_token",
            target_id=token.id,
            target_name=token.name,
            changes=[("revoked_at", None, token.revoked_at.isoformat())],
        )
        return token

    async def uses(
        self, session: AsyncSession, principal: Principal, token_id: uuid.UUID
    ) -> list[EnrollmentTokenUseOut]:
        """The token's uses, each refusal reason as this reader may see it. Uses that enrolled a device
        outside the caller's devices:read scope are left out (failed attempts, which enrolled nothing, stay:
        they are the token's)."""
        await self.get_token(session, principal, token_id)
        hidden = hidden_categories(principal)
        uses = await repository.uses_of(session, token_id, principal.scope_for(P.devices_read))
        return [use_out(use, hidden) for use in uses]

    async def revoke_tokens_bound_to(self, session: AsyncSession, user_id: uuid.UUID) -> list[str]:
        """When a user is deleted: their tokens would otherwise enroll devices for nobody. Returns the
        revoked tokens' names (the caller audits the deletion that caused it)."""
        return await repository.revoke_bound_to(session, user_id, utcnow())

    # ---------------------------------------------------------------- enrolling (devices)
    async def refuse(
        self,
        refusals: RefusalLog,
        token: EnrollmentToken | TokenNames | None,
        serial_number: str | None,
        reason: str,
        error: CorralError,
        *,
        endpoint: str = "/device/v1/enroll",
        text: str | None = None,
        activity: str = "device.enroll",
        category: str = "device",
    ) -> CorralError:
        """Count and audit the refusal (and log it on the token), in a transaction of its own, then hand the
        error back to raise (the request's own transaction rolls back). Apple's SCEP refusals come through
        here too, as their own activity."""
        actor = f"enrollment token {token.prefix}…" if token else UNKNOWN_TOKEN
        await refusals.record(
            RefusedEnrollment(
                activity=activity,
                category=category,
                operation="create",
                endpoint=endpoint,
                reason=reason,
                text=text or REASONS[reason],
                source=context.current().client_ip,
                actor=context.Actor(type="device", name=actor),
                target_type="enrollment_token" if token else None,
                target_id=token.id if token else None,
                target_name=token.name if token else None,
                subject=f"enrollment_token:{token.id}" if token else None,
                token_id=token.id if token else None,
                serial_number=serial_number[:128] if serial_number else None,
                token_detail=error.detail,
            )
        )
        return error

    async def admit_token(
        self,
        session: AsyncSession,
        refusals: RefusalLog,
        token: EnrollmentToken | None,
        *,
        platforms: frozenset[Platform],
        serial_number: str | None,
        endpoint: str = "/device/v1/enroll",
    ) -> EnrollmentToken:
        """The rules every enrollment passes, whatever its protocol: the token (locked by the caller) exists,
        is active, allows one of ``platforms`` (the device's; before Apple's device says what it is, the
        Apple platforms), and its bound user may hold devices. A refusal is counted, audited and logged on
        the token, then raised."""
        if token is None:
            raise await self.refuse(
                refusals,
                None,
                serial_number,
                "unknown_token",
                NotAuthenticated("The enrollment token is not valid."),
                endpoint=endpoint,
            )
        status = token_status(token)
        if status != "active":
            message, reason = {
                "revoked": ("The enrollment token was revoked.", EnrollmentRefusal.revoked),
                "expired": ("The enrollment token has expired.", EnrollmentRefusal.expired),
                "used_up": ("The enrollment token has been used up.", EnrollmentRefusal.used_up),
            }[status]
            raise await self.refuse(
                refusals, token, serial_number, reason, NotAuthenticated(message), endpoint=endpoint
            )
        if not any(p.value in token.platforms for p in platforms):
            wanted = " or ".join(sorted(p.value for p in platforms))
            raise await self.refuse(
                refusals,
                token,
                serial_number,
                EnrollmentRefusal.platform_not_allowed,
                Forbidden(
                    f"This enrollment token does not allow {wanted} devices "
                    f"(allowed: {', '.join(token.platforms)})."
                ),
                endpoint=endpoint,
            )
        if token.user_id is not None:
            # Devices enrolled with a bound token are the user's: the user must be able to hold them.
            user = await users_repository.get(session, token.user_id)
            refusal: tuple[str, EnrollmentRefusal] | None = None
            if user is None or not user.enabled:
                name = user.user_principal_name if user else "The bound user"
                refusal = f"{name} is disabled: their devices cannot enroll.", EnrollmentRefusal.user_disabled
            elif not await licence_service.holds_any(session, user.id):
                # The device's user is told plainly (it is their own licence); readers of the token's uses
                # without licences:read, and the audit log, get the generic text (visible_refusal, REASONS).
                refusal = (
                    f"{user.user_principal_name} holds no Corral licence.",
                    EnrollmentRefusal.user_unlicensed,
                )
            if refusal:
                raise await self.refuse(
                    refusals, token, serial_number, refusal[1], Forbidden(refusal[0]), endpoint=endpoint
                )
        return token

    async def enroll(
        self,
        session: AsyncSession,
        refusals: RefusalLog,
        settings: Settings,
        *,
        secret: str,
        csr_pem: str,
        facts: DeviceFacts,
    ) -> Enrolled:
        token = await self.admit_token(
            session,
            refusals,
            await repository.token_by_hash_for_update(session, token_digest(secret)),
            platforms=frozenset({facts.platform}),
            serial_number=facts.serial_number,
        )
        try:
            csr = certs.load_csr(csr_pem)
        except certs.CsrRefused as exc:
            raise await self.refuse(
                refusals,
                token,
                facts.serial_number,
                EnrollmentRefusal.csr_refused,
                ValidationFailed(f"CSR refused: {exc}"),
            ) from exc

        device = await self.new_device(session, refusals, token, facts)
        cert, ca = await pki_service.issue_device_certificate(session, settings, device.id, csr)
        fingerprint = await self.record_enrollment(session, token, device, cert, ca.fingerprint_sha256, facts)
        return Enrolled(device, certs.cert_pem(cert).decode(), ca.certificate_pem, fingerprint)

    async def new_device(
        self,
        session: AsyncSession,
        refusals: RefusalLog,
        token: EnrollmentToken,
        facts: DeviceFacts,
        *,
        channel: ManagementChannel = ManagementChannel.agent,
        endpoint: str = "/device/v1/enroll",
    ) -> Device:
        """The admitted token's new device, flushed: refused (409, counted, audited, logged on the token) when
        a managed device of the platform already has its serial number."""
        device = Device(
            id=uuid.uuid4(),
            name=facts.name or facts.serial_number,
            serial_number=facts.serial_number,
            platform=facts.platform,
            os_version=facts.os_version,
            model=facts.model,
            manufacturer=facts.manufacturer,
            ownership=token.ownership,
            management_channel=channel,
            management_state=ManagementState.managed,
            user_id=token.user_id,
            enrollment_token_id=token.id,
            enrolled_at=utcnow(),
            scope_tags=list(token.scope_tags),
            inventory={},
        )
        duplicate = Conflict(
            f"A managed {facts.platform.value} device with serial number {facts.serial_number} "
            "already exists; retire or delete it before enrolling it again."
        )
        # What a refusal names of the token, readable after a failed flush has expired the token.
        names = TokenNames(token.id, token.name, token.prefix)
        session.add(device)
        try:
            await session.flush()
        except IntegrityError as exc:
            # uq_devices_active_serial: one managed device per platform and serial, also when the same serial
            # enrolls twice at once (the index decides; no query beforehand).
            if getattr(exc.orig, "sqlstate", None) != UNIQUE_VIOLATION:
                raise
            raise await self.refuse(
                refusals,
                names,
                facts.serial_number,
                EnrollmentRefusal.duplicate_serial,
                duplicate,
                endpoint=endpoint,
            ) from exc
        return device

    async def record_enrollment(
        self,
        session: AsyncSession,
        token: EnrollmentToken,
        device: Device,
        cert: x509.Certificate,
        issuer_fingerprint: str,
        facts: DeviceFacts,
    ) -> str:
        """The new device's certificate, the token's use, the audit event and the device's groups and
        assignments (at once): the end of every enrollment. Returns the certificate's fingerprint."""
        now = device.enrolled_at
        fingerprint = certs.fingerprint(cert)
        session.add(
            DeviceCertificate(
                id=uuid.uuid4(),
                device_id=device.id,
                fingerprint_sha256=fingerprint,
                serial_number=format(cert.serial_number, "x"),
                certificate_pem=certs.cert_pem(cert).decode(),
                issuer_fingerprint_sha256=issuer_fingerprint,
                not_before=cert.not_valid_before_utc,
                not_after=cert.not_valid_after_utc,
                created_at=now,
            )
        )
        token.use_count += 1
        ctx = context.current()
        session.add(
            EnrollmentTokenUse(
                id=uuid.uuid4(),
                token_id=token.id,
                occurred_at=now,
                ip_address=ctx.client_ip,
                serial_number=facts.serial_number,
                result="enrolled",
                device_id=device.id,
            )
        )
        await session.flush()
        await audit_service.record(
            session,
            activity="device.enroll",
            category="device",
            operation="create",
            target_type="device",
            target_id=device.id,
            target_name=device.name,
            actor=context.Actor(type="device", id=device.id, name=f"enrollment token {token.prefix}…"),
            changes=[
                ("serial_number", None, device.serial_number),
                ("platform", None, device.platform),
                ("ownership", None, device.ownership),
                ("management_channel", None, device.management_channel),
                ("certificate_fingerprint", None, fingerprint),
            ],
        )
        await assignment_hooks.device_changed(session, device)  # dynamic device groups and targets, at once
        return fingerprint


enrollment_service = EnrollmentService()
