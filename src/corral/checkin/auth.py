"""Device authentication (docs/device-protocol.md §3): an RFC 9421 signature by the device key on every
request, or, behind a trusted TLS-terminating proxy that verified the device's client certificate, an RFC 9440
``Client-Cert`` header. Either way the device is identified by its certificate's fingerprint, looked up in the
database together with the device (revocation, validity, lifecycle). Every refusal is counted and audited
with a reason code and the identity the server found, aggregated (audit/refusals.py); past a per-client limit,
refusals are answered 429 (checkin/throttle.py). The path of an authenticated request does neither."""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from functools import lru_cache
from typing import Annotated, Any

import http_sf
from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric import ec
from fastapi import Depends, Request
from sqlalchemy import DateTime, String, bindparam, delete, func, select
from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm import defer

from corral.assignments.engine import desired_version
from corral.audit.refusals import Refusal, get_refusals
from corral.checkin import signature
from corral.checkin.throttle import UNKNOWN_DEVICE, DeviceLimits, endpoint_of
from corral.commands.repository import PENDING_FOR_DEVICE
from corral.config import Settings
from corral.errors import CorralError, NotAuthenticated, TooManyRequests
from corral.kit import context
from corral.kit.db import SessionDep
from corral.kit.middleware import is_trusted_proxy
from corral.kit.time import utcnow
from corral.models import (
    CertificateAuthority,
    Device,
    DeviceCertificate,
    DeviceNonce,
    ManagementChannel,
    ManagementState,
)
from corral.pki import certs
from corral.pki.service import DEVICE as DEVICE_CA

MAX_AGE = dt.timedelta(seconds=300)
CLOCK_SKEW = dt.timedelta(seconds=60)
ENDED_STATES = frozenset({ManagementState.retired, ManagementState.wiped})
#: RFC 9440: the client certificate a trusted TLS-terminating proxy verified, as structured-field bytes.
CLIENT_CERT = "client-cert"
MAX_CLIENT_CERT = 16 * 1024
VERIFIED_CLIENT_CERTS = 16_384

# The certificate, its device (without the inventory document: only an inventory upload needs it) and whether
# commands are pending: one indexed lookup per request. Built once; SQLAlchemy caches its compiled form.
# The device's desired-state version rides along (its version row and its targets, by index, in the same
# statement): the check-in answer carries it without a query of its own.
_DESIRED = desired_version(Device.id)
_LOOKUP = (
    select(DeviceCertificate, Device, PENDING_FOR_DEVICE.label("pending"), _DESIRED.label("desired"))
    .join(Device, Device.id == DeviceCertificate.device_id)
    .where(DeviceCertificate.fingerprint_sha256 == bindparam("fingerprint"))
    .options(defer(Device.inventory, raiseload=True))
)
# A signed request's nonce is stored by the same statement (a data-modifying CTE: one round trip), for the
# device of the certificate named, before the signature is checked: a request refused for any reason (bad
# signature, revoked certificate, replay...) rolls its transaction back, nonce included, so only a request
# that passes every check uses its nonce up. "fresh" is 0 when the nonce was already used (a replay).
_NONCES: Any = DeviceNonce.__table__
_CERTIFICATES: Any = DeviceCertificate.__table__
_USE_NONCE = (
    insert(_NONCES)
    .from_select(
        ["device_id", "nonce", "expires_at"],
        select(
            _CERTIFICATES.c.device_id,
            bindparam("nonce", type_=String(128)),
            bindparam("expires_at", type_=DateTime(timezone=True)),
        ).where(_CERTIFICATES.c.fingerprint_sha256 == bindparam("fingerprint")),
    )
    .on_conflict_do_nothing()
    .returning(_NONCES.c.nonce)
    .cte("used_nonce")
)
_LOOKUP_USING_NONCE = _LOOKUP.add_columns(
    select(func.count()).select_from(_USE_NONCE).scalar_subquery().label("fresh")
)


@dataclass
class AuthenticatedDevice:
    device: Device
    certificate: DeviceCertificate
    body: bytes
    #: Whether commands waited for the device when it was authenticated (queued, sent, or "not now").
    pending_commands: bool = False
    #: "signature" (RFC 9421) or "client-cert" (RFC 9440, from a trusted proxy).
    method: str = "signature"
    #: The device's desired-state version when it was authenticated (0: nothing assigned yet).
    desired_state_version: int = 0


#: Why a device request was refused: code (a metric label) -> the server's words (the audit log's). The
#: response may add what the parser said; the audit log never does.
REASONS = {
    "unsigned": "the request is not signed",
    "malformed_signature_input": "malformed Signature-Input",
    "unknown_certificate": "unknown device certificate",
    "certificate_revoked": "the device certificate is revoked",
    "certificate_not_valid_now": "the device certificate is not valid now",
    **{f"device_{state}": f"the device is {state}" for state in sorted(ENDED_STATES)},
    "unusable_certificate": "the device certificate does not hold an EC key",
    "bad_signature": "bad signature",
    "bad_nonce": "the signature needs a nonce of 16 to 128 characters",
    "replayed": "replayed request (nonce already used)",
    "malformed_client_cert": "malformed Client-Cert header",
    "client_cert_not_from_device_ca": "the Client-Cert certificate was not issued by Corral's device CA",
    "wrong_channel": "the device is managed through Apple MDM, not the agent protocol",
}


class _Refused(Exception):
    def __init__(self, code: str, device: Device | None = None, explanation: str | None = None) -> None:
        super().__init__(code)
        self.code, self.device = code, device
        self.message = REASONS[code] + (f" ({explanation})" if explanation else "")


@lru_cache(maxsize=16_384)
def _public_key(certificate_pem: str) -> ec.EllipticCurvePublicKey:
    """The device key of a stored certificate. Keyed by the certificate itself, so always right; revocation
    and the device's state are still read from the database on every request."""
    key = x509.load_pem_x509_certificate(certificate_pem.encode()).public_key()
    if not isinstance(key, ec.EllipticCurvePublicKey):
        raise ValueError("the device certificate does not hold an EC key")
    return key


def client_certificate(value: str) -> x509.Certificate:
    """The certificate of an RFC 9440 ``Client-Cert`` field: a structured-field byte sequence (``:base64:``)
    holding the DER certificate. Raises ValueError when malformed."""
    if len(value) > MAX_CLIENT_CERT:
        raise ValueError("too long")
    try:
        parsed: Any = http_sf.parse(value.encode("ascii"), tltype="item")
    except Exception as exc:  # the parser raises ValueError, but be certain nothing else becomes a 500
        raise ValueError("not a structured-field item") from exc
    item = parsed[0] if isinstance(parsed, tuple) else parsed
    if not isinstance(item, bytes) or not item:
        raise ValueError("not a byte sequence (:base64-DER:)")
    return x509.load_der_x509_certificate(item)


async def _device_cas(request: Request, session: AsyncSession, reload: bool) -> list[x509.Certificate]:
    """The certificates of every device CA this installation has had (a device certificate stays valid across
    a CA rotation until it expires or is revoked), kept per application: a CA row never changes."""
    cache: list[x509.Certificate] | None = getattr(request.app.state, "device_cas", None)
    if cache is None or reload:
        pems = await session.scalars(
            select(CertificateAuthority.certificate_pem).where(CertificateAuthority.purpose == DEVICE_CA)
        )
        cache = [x509.load_pem_x509_certificate(pem.encode()) for pem in pems]
        request.app.state.device_cas = cache
    return cache


async def issued_by_device_ca(request: Request, session: AsyncSession, cert: x509.Certificate) -> bool:
    for reload in (
        False,
        True,
    ):  # a CA created since the cache was filled (the first enrollment) is read once
        for ca in await _device_cas(request, session, reload):
            try:
                cert.verify_directly_issued_by(ca)
            except (ValueError, TypeError, InvalidSignature):
                continue
            return True
    return False


async def _lookup(
    session: AsyncSession, fingerprint: str, nonce: str | None = None
) -> tuple[DeviceCertificate, Device, bool, int, bool]:
    """The certificate and its device, refused when either may not be used now; with a nonce, also whether
    it was fresh (stored now; the caller's transaction must roll back unless the request passes)."""
    row: Any
    if nonce is None:
        row = (await session.execute(_LOOKUP, {"fingerprint": fingerprint})).first()
    else:
        expires_at = utcnow() + MAX_AGE + CLOCK_SKEW
        parameters = {"fingerprint": fingerprint, "nonce": nonce, "expires_at": expires_at}
        row = (await session.execute(_LOOKUP_USING_NONCE, parameters)).first()
    if row is None:
        raise _Refused("unknown_certificate")
    certificate, device, pending, desired = row[0], row[1], bool(row[2]), int(row[3] or 0)
    fresh = nonce is not None and bool(row[4])
    now = utcnow()
    if certificate.revoked_at is not None:
        raise _Refused("certificate_revoked", device)
    if not certificate.not_before <= now <= certificate.not_after:
        raise _Refused("certificate_not_valid_now", device)
    if device.management_state in ENDED_STATES:
        raise _Refused(f"device_{device.management_state}", device)
    if device.management_channel is not ManagementChannel.agent:
        raise _Refused("wrong_channel", device)
    return certificate, device, pending, desired, fresh


def _field(request: Request, name: str) -> str | None:
    """A header field's value: its lines joined by ", " (RFC 9110 §5.3), each without surrounding blanks."""
    lines = request.headers.getlist(name)
    return ", ".join(line.strip(" \t") for line in lines) if lines else None


async def _by_signature(
    request: Request, session: AsyncSession, settings: Settings, signature_input: str
) -> AuthenticatedDevice:
    try:
        parsed = signature.parse_signature_input(signature_input)
    except (ValueError, TypeError) as exc:
        raise _Refused("malformed_signature_input", explanation=str(exc)) from exc
    nonce = parsed.nonce
    certificate, device, pending, desired, fresh = await _lookup(session, parsed.key_id.lower(), nonce)
    body = await request.body()  # only now, and at most CORRAL_MAX_BODY_DEVICE_BYTES (corral/body_limits.py)
    try:
        public_key = _public_key(certificate.certificate_pem)
    except ValueError as exc:
        raise _Refused("unusable_certificate", device) from exc
    target = settings.base_url + request.url.path + (f"?{request.url.query}" if request.url.query else "")
    try:
        signature.verify(
            parsed,
            _field(request, "signature") or "",
            key=public_key,
            method=request.method,
            target_uri=target,
            content_digest=_field(request, "content-digest"),
            body=body,
            now=utcnow(),
            max_age=MAX_AGE,
            clock_skew=CLOCK_SKEW,
        )
    except signature.SignatureError as exc:
        raise _Refused("bad_signature", device, str(exc)) from exc
    if nonce is None:
        raise _Refused("bad_nonce", device)
    if not fresh:
        raise _Refused("replayed", device)
    return AuthenticatedDevice(device, certificate, body, pending, desired_state_version=desired)


async def _by_client_certificate(request: Request, session: AsyncSession, value: str) -> AuthenticatedDevice:
    """RFC 9440: the proxy verified the TLS client certificate (possession of the device key included); the
    certificate must be one Corral's device CA issued and is then treated exactly as a signature's keyid."""
    # Certificates already found issued by a device CA, by header value: the outcome depends only on the
    # certificate's bytes and on CA rows, which never change. Revocation and state are looked up every time.
    verified: dict[str, str] | None = getattr(request.app.state, "device_client_certs", None)
    if verified is None:
        verified = request.app.state.device_client_certs = {}
    fingerprint = verified.get(value)
    if fingerprint is None:
        try:
            cert = client_certificate(value)
        except ValueError as exc:
            raise _Refused("malformed_client_cert", explanation=str(exc)) from exc
        if not await issued_by_device_ca(request, session, cert):
            raise _Refused("client_cert_not_from_device_ca")
        fingerprint = certs.fingerprint(cert)  # as at enrollment: SHA-256 of the DER certificate
        if len(verified) >= VERIFIED_CLIENT_CERTS:
            verified.clear()
        verified[value] = fingerprint
    certificate, device, pending, desired, _ = await _lookup(session, fingerprint)
    body = await request.body()
    return AuthenticatedDevice(
        device, certificate, body, pending, method="client-cert", desired_state_version=desired
    )


async def _refuse(request: Request, refused: _Refused) -> CorralError:
    return await refuse_device(request, refused.code, REASONS[refused.code], refused.device, refused.message)


async def refuse_device(
    request: Request, code: str, text: str, device: Device | None, message: str
) -> CorralError:
    """Count and audit a refused device authentication (aggregated; only the reason code's text and the
    device the server found), then the error to answer: 401, or 429 once the client has had too many
    refusals. Every device channel (the agent's, Apple MDM's) refuses through here."""
    client = context.current().client_ip
    await (await get_refusals(request)).record(
        Refusal(
            activity="device.auth",
            category="device",
            operation="authenticate",
            endpoint=endpoint_of(request),
            reason=code,
            text=text,
            source=client,
            # The device whose certificate was presented: not proven to be the caller.
            actor=context.Actor(type="device", id=device.id if device else None, name=UNKNOWN_DEVICE),
            target_type="device",
            target_id=device.id if device else None,
            target_name=device.name if device else None,
            subject=f"device:{device.id}" if device else None,
        )
    )
    message = f"Device authentication failed: {message}."
    limits: DeviceLimits = request.app.state.device_limits
    wait = await limits.auth.hit(client)
    if wait is not None:
        return TooManyRequests(
            f"{message} Too many refused requests from this address: retry in {wait} s.",
            headers={"Retry-After": str(wait)},
        )
    return NotAuthenticated(message)


def client_cert_allowed(request: Request, settings: Settings) -> bool:
    """Whether this request may identify its device by an RFC 9440 ``Client-Cert`` header: the setting is on
    and the peer is a trusted proxy (every device channel follows the same rule)."""
    peer = request.client.host if request.client else None
    return settings.client_cert_header and is_trusted_proxy(peer, settings.trusted_proxy_networks)


async def authenticate_device(request: Request, session: SessionDep) -> AuthenticatedDevice:
    # Application state read directly: plain-function dependencies would each cost a thread-pool hop.
    settings: Settings = request.app.state.settings
    signature_input = _field(request, "signature-input")
    client_cert = request.headers.get(CLIENT_CERT)
    try:
        if signature_input and request.headers.get("signature"):
            authenticated = await _by_signature(request, session, settings, signature_input)
        elif client_cert is not None and not signature_input and client_cert_allowed(request, settings):
            authenticated = await _by_client_certificate(request, session, client_cert)
        else:
            raise _Refused("unsigned")
    except _Refused as refused:
        raise await _refuse(request, refused) from None
    device = authenticated.device
    context.set_actor(context.Actor(type="device", id=device.id, name=device.name))
    return authenticated


async def purge_nonces(session: AsyncSession) -> int:
    result = await session.execute(delete(DeviceNonce).where(DeviceNonce.expires_at < utcnow()))
    return int(result.rowcount or 0)  # type: ignore[attr-defined]


class DeviceSigned:
    """Route guard marker for the device protocol: the caller proves a device key (see docs)."""

    def __repr__(self) -> str:
        return "DeviceSigned()"

    async def __call__(
        self, device: Annotated[AuthenticatedDevice, Depends(authenticate_device)]
    ) -> AuthenticatedDevice:
        return device


CurrentDevice = Annotated[AuthenticatedDevice, Depends(DeviceSigned())]
