"""Apple device authentication on the check-in and command routes (docs/apple-mdm.md).

A device proves its SCEP identity on every request: the ``Mdm-Signature`` header, a base64 *detached* CMS
signature over the exact body bytes by that identity (the profile sets ``SignMessage``), or, behind a trusted
TLS-terminating proxy that verified the device's client certificate, an RFC 9440 ``Client-Cert`` header (the
agents' rule). The certificate must be one Corral's device CA issued and is looked up by fingerprint with its
device; its first use (Authenticate) may find it still waiting in ``apple_pending_identities``.

Answers, in Apple's terms: 401 only for a request that fails to authenticate (a 401 can make a real device
unenroll, so the server's own trouble is never one: a lost database is a 503); 403 with Apple's
``ErrorUnrecognizedDevice`` document for a device whose management has ended, which makes iOS 17 and macOS 14
unenroll cleanly. Every refusal is counted and audited like the agents' (checkin/auth.refuse_device).

Replays: Apple's messages carry no nonce. When the signature has a signing time (Apple's and the
simulator's do), it must be within ``MAX_AGE`` and the signature's hash is stored as a nonce of the device:
a second use is refused, unless it comes within ``SAME_SECOND`` of the signing time (the device's own repeat
of an unchanged message). A signature without one relies on TLS (see docs/apple-mdm.md, security notes).
"""

from __future__ import annotations

import base64
import binascii
import hashlib
from dataclasses import dataclass
from datetime import timedelta
from typing import Annotated, Any

from cryptography import x509
from fastapi import Depends, Request
from sqlalchemy import bindparam, select
from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm import defer

from corral.apple import plist
from corral.assignments.engine import desired_version
from corral.audit.refusals import Refusal, get_refusals
from corral.checkin.auth import (
    CLIENT_CERT,
    ENDED_STATES,
    client_cert_allowed,
    client_certificate,
    issued_by_device_ca,
    refuse_device,
)
from corral.checkin.throttle import endpoint_of
from corral.config import Settings
from corral.errors import BadRequest
from corral.kit import cms, context
from corral.kit.db import SessionDep
from corral.kit.time import utcnow
from corral.models import AppleEnrollment, ApplePendingIdentity, Device, DeviceCertificate, DeviceNonce
from corral.pki import certs

SIGNATURE = "mdm-signature"
MAX_SIGNATURE = 16 * 1024
#: How far a signature's signing time may be from the server's clock, either way.
MAX_AGE = timedelta(seconds=300)
UNRECOGNIZED = "com.apple.unrecognized.device"
#: The signing time has whole seconds: a device that sends the same message twice within a second (an Idle
#: poll right after another) sends the same signature. Such a repeat, within this long of its signing time,
#: is the device's own and is answered; later, it is a replay.
SAME_SECOND = timedelta(seconds=2)

REASONS = {
    "unsigned": "the request carries no Mdm-Signature (nor a client certificate from a trusted proxy)",
    "malformed_signature": "malformed Mdm-Signature",
    "bad_signature": "the Mdm-Signature does not verify over the body",
    "malformed_client_cert": "malformed Client-Cert header",
    "not_from_device_ca": "the device certificate was not issued by Corral's device CA",
    "unknown_certificate": "unknown device certificate",
    "certificate_revoked": "the device certificate is revoked",
    "certificate_not_valid_now": "the device certificate is not valid now",
    "stale_signature": "the signature's signing time is too far from the server's clock",
    "replayed": "replayed request (signature already used)",
    "udid_mismatch": "the message's UDID is not the device's",
    "topic_mismatch": "the message's Topic is not the one the device enrolled with",
    "wrong_channel": "the device is managed through the agent, not Apple MDM",
}

# The device's desired-state version rides along (as in the agents' lookup): the connection compares the
# device's configuration profiles only when it moved, without a statement of its own.
_LOOKUP = (
    select(DeviceCertificate, Device, AppleEnrollment, desired_version(Device.id).label("desired"))
    .join(Device, Device.id == DeviceCertificate.device_id)
    .outerjoin(AppleEnrollment, AppleEnrollment.device_id == Device.id)
    .where(DeviceCertificate.fingerprint_sha256 == bindparam("fingerprint"))
    .options(defer(Device.inventory, raiseload=True))
)
# Locked: two Authenticates with one identity at once bind it once (the second finds it gone).
_PENDING = (
    select(ApplePendingIdentity)
    .where(ApplePendingIdentity.fingerprint_sha256 == bindparam("fingerprint"))
    .with_for_update()
)
_NONCE = (
    insert(DeviceNonce)
    .values(device_id=bindparam("device_id"), nonce=bindparam("nonce"), expires_at=bindparam("expires_at"))
    .on_conflict_do_nothing()
    .returning(DeviceNonce.nonce)
)


@dataclass
class AppleCaller:
    """Who sent an authenticated Apple request, and what it said."""

    fingerprint: str
    message: dict[str, Any]
    body: bytes
    #: The enrolled device, its certificate row and its enrollment; None for an identity still pending.
    device: Device | None = None
    certificate: DeviceCertificate | None = None
    enrollment: AppleEnrollment | None = None
    #: The SCEP identity no device holds yet (only an Authenticate may use it).
    pending: ApplePendingIdentity | None = None
    method: str = "signature"
    #: The device's desired-state version when it was authenticated (0: nothing assigned).
    desired_state_version: int = 0


class DeviceEnded(Exception):
    """The device's management has ended: answered 403 with Apple's ErrorUnrecognizedDevice document, which
    makes the device unenroll (iOS 17, macOS 14)."""

    def __init__(self, device: Device, description: str) -> None:
        super().__init__(description)
        self.device = device


def unrecognized_body(description: str) -> bytes:
    return plist.dump({"code": UNRECOGNIZED, "description": description})


class _Refused(Exception):
    def __init__(self, code: str, device: Device | None = None, explanation: str | None = None) -> None:
        super().__init__(code)
        self.code, self.device = code, device
        self.message = REASONS[code] + (f" ({explanation})" if explanation else "")


def _proof(request: Request, settings: Settings, body: bytes) -> tuple[x509.Certificate, cms.Signed | None]:
    header = request.headers.get(SIGNATURE)
    if header is not None:
        if len(header) > MAX_SIGNATURE:
            raise _Refused("malformed_signature", explanation="too long")
        try:
            der = base64.b64decode(header.strip(), validate=True)
        except (binascii.Error, ValueError) as exc:
            raise _Refused("malformed_signature", explanation="not base64") from exc
        try:
            signed = cms.verify_signed_data(der, detached=body, max_bytes=MAX_SIGNATURE)
        except cms.CmsError as exc:
            code = "malformed_signature" if exc.code in ("malformed", "size") else "bad_signature"
            raise _Refused(code, explanation=str(exc)) from exc
        return signed.signer, signed
    value = request.headers.get(CLIENT_CERT)
    if value is not None and client_cert_allowed(request, settings):
        try:
            return client_certificate(value), None
        except ValueError as exc:
            raise _Refused("malformed_client_cert", explanation=str(exc)) from exc
    raise _Refused("unsigned")


async def _use_nonce(session: AsyncSession, device: Device, signed: cms.Signed | None, header: str) -> None:
    """A signature with a signing time is good once, and only near the server's time."""
    if signed is None or signed.signing_time is None:
        return
    now = utcnow()
    if abs(now - signed.signing_time) > MAX_AGE:
        raise _Refused("stale_signature", device)
    nonce = "mdm:" + hashlib.sha256(header.encode()).hexdigest()
    fresh = await session.scalar(
        _NONCE, {"device_id": device.id, "nonce": nonce, "expires_at": now + MAX_AGE + MAX_AGE}
    )
    if fresh is None and now - signed.signing_time > SAME_SECOND:
        raise _Refused("replayed", device)


async def authenticate(request: Request, session: AsyncSession, settings: Settings) -> AppleCaller:
    """The caller and its message, or a refusal: 401 (audited, counted), 403 unrecognized for an ended
    device, 400 for a body that is not an MDM property list (after authentication: nothing unauthenticated
    is parsed)."""
    try:
        if request.headers.get(SIGNATURE) is None and not (
            CLIENT_CERT in request.headers and client_cert_allowed(request, settings)
        ):
            raise _Refused("unsigned")  # before a byte of the body is read
        body = await request.body()
        caller = await _authenticate(request, session, settings, body)
    except _Refused as refused:
        raise await refuse_device(
            request, refused.code, REASONS[refused.code], refused.device, refused.message
        ) from None
    except BadRequest:
        # A proven device sent something that is not an MDM property list: nothing changes, audited.
        await (await get_refusals(request)).record(
            Refusal(
                activity="device.apple.message",
                category="device",
                operation="update",
                endpoint=endpoint_of(request),
                reason="malformed_plist",
                text="the body is not a valid MDM property list",
                source=context.current().client_ip,
                actor=context.Actor(type="device", name="Apple device"),
            )
        )
        raise
    except DeviceEnded as ended:
        # Audited and counted like a refusal; the answer is Apple's document, not a 401.
        await refuse_device(
            request, "device_ended", "the device's management has ended", ended.device, str(ended)
        )
        raise
    if caller.device is not None:
        context.set_actor(context.Actor(type="device", id=caller.device.id, name=caller.device.name))
    return caller


async def _authenticate(
    request: Request, session: AsyncSession, settings: Settings, body: bytes
) -> AppleCaller:
    certificate, signed = _proof(request, settings, body)
    if not await issued_by_device_ca(request, session, certificate):
        raise _Refused("not_from_device_ca")
    fingerprint = certs.fingerprint(certificate)
    row = (await session.execute(_LOOKUP, {"fingerprint": fingerprint})).first()
    pending = None
    if row is None:
        pending = await session.scalar(_PENDING, {"fingerprint": fingerprint})
        if pending is None:
            raise _Refused("unknown_certificate")
        if pending.expires_at <= utcnow():
            raise _Refused("certificate_not_valid_now")
    message = _message(body, settings)
    caller = AppleCaller(
        fingerprint, message, body, pending=pending, method="signature" if signed else "client-cert"
    )
    if row is None:
        return caller
    stored, device, enrollment, desired = row
    caller.desired_state_version = int(desired or 0)
    caller.device, caller.certificate, caller.enrollment = device, stored, enrollment
    if device.management_state in ENDED_STATES or (
        enrollment is not None and enrollment.ended_at is not None
    ):
        raise DeviceEnded(device, f"this device's management has ended ({device.management_state.value})")
    if enrollment is None:
        raise _Refused("wrong_channel", device)
    now = utcnow()
    if stored.revoked_at is not None:
        raise _Refused("certificate_revoked", device)
    if not stored.not_before <= now <= stored.not_after:
        raise _Refused("certificate_not_valid_now", device)
    udid = message.get("UDID")
    if udid is not None and udid != enrollment.udid:
        raise _Refused("udid_mismatch", device)
    topic = message.get("Topic")
    if topic is not None and topic != enrollment.topic:
        raise _Refused("topic_mismatch", device)
    await _use_nonce(session, device, signed, request.headers.get(SIGNATURE, ""))
    return caller


def _message(body: bytes, settings: Settings) -> dict[str, Any]:
    try:
        return plist.parse(body, max_bytes=settings.max_body_apple_bytes)
    except plist.PlistError as exc:
        raise BadRequest(f"The body is not a valid MDM property list: {exc}") from exc


class AppleDeviceSigned:
    """Route guard marker for Apple's MDM protocol: the caller proves its SCEP identity (see above)."""

    def __repr__(self) -> str:
        return "AppleDeviceSigned()"

    async def __call__(self, request: Request, session: SessionDep) -> AppleCaller:
        settings: Settings = request.app.state.settings
        return await authenticate(request, session, settings)


CurrentAppleDevice = Annotated[AppleCaller, Depends(AppleDeviceSigned())]
