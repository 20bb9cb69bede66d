"""Device authentication: an RFC 9421 signature by the device key on every request, looked up by the
certificate fingerprint in the database, with a replay window and a nonce store."""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from typing import Annotated, Any

import http_sf
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec
from fastapi import Depends, Request
from http_message_signatures import HTTPMessageVerifier, HTTPSignatureKeyResolver, algorithms
from http_message_signatures.exceptions import HTTPMessageSignaturesException
from sqlalchemy import delete, select
from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from corral.audit.service import audit_service
from corral.errors import NotAuthenticated, PayloadTooLarge
from corral.kit import context
from corral.kit.db import SessionDep
from corral.kit.deps import SessionMakerDep, SettingsDep
from corral.kit.time import utcnow
from corral.models import Device, DeviceCertificate, DeviceNonce, ManagementState

SIGNATURE_LABEL = "corral"
SIGNATURE_TAG = "corral-device"
MAX_AGE = dt.timedelta(seconds=300)
CLOCK_SKEW = dt.timedelta(seconds=60)
MAX_BODY = 2 * 1024 * 1024
ENDED_STATES = frozenset({ManagementState.retired, ManagementState.wiped})


class _Verifier(HTTPMessageVerifier):
    max_clock_skew = CLOCK_SKEW


class _OneKey(HTTPSignatureKeyResolver):
    def __init__(self, key_id: str, key: ec.EllipticCurvePublicKey) -> None:
        self.key_id, self.key = key_id, key

    def resolve_public_key(self, key_id: str) -> Any:
        return self.key if key_id == self.key_id else None


@dataclass
class _Message:
    method: str
    url: str
    headers: Any


@dataclass
class AuthenticatedDevice:
    device: Device
    certificate: DeviceCertificate
    body: bytes


def _key_id(signature_input: str) -> str:
    parsed: Any = http_sf.parse(signature_input.encode(), tltype="dictionary")
    member = parsed.get(SIGNATURE_LABEL) if isinstance(parsed, dict) else None
    if member is None:
        raise ValueError(f'no signature labelled "{SIGNATURE_LABEL}"')
    params = member[1]
    key_id = params.get("keyid")
    if not isinstance(key_id, str) or not key_id:
        raise ValueError("the signature has no keyid")
    return key_id


async def _refuse(
    sessionmaker: async_sessionmaker[AsyncSession],
    request: Request,
    reason: str,
    device: Device | None = None,
) -> NotAuthenticated:
    await audit_service.record_now(
        sessionmaker,
        activity="device.auth",
        category="device",
        operation=request.method.lower(),
        result="failure",
        target_type="device",
        target_id=device.id if device else None,
        target_name=device.name if device else None,
        detail=f"{request.url.path}: {reason}",
        actor=context.Actor(type="device", id=device.id if device else None, name="unauthenticated device"),
    )
    return NotAuthenticated(f"Device authentication failed: {reason}.")


async def authenticate_device(
    request: Request, session: SessionDep, settings: SettingsDep, sessionmaker: SessionMakerDep
) -> AuthenticatedDevice:
    declared = request.headers.get("content-length", "0")
    if not declared.isdigit() or int(declared) > MAX_BODY:
        raise PayloadTooLarge(f"Device requests carry at most {MAX_BODY // (1024 * 1024)} MiB.")
    signature_input = request.headers.get("signature-input")
    if not signature_input or not request.headers.get("signature"):
        raise await _refuse(sessionmaker, request, "the request is not signed")
    try:
        key_id = _key_id(signature_input)
    except (ValueError, TypeError) as exc:
        raise await _refuse(sessionmaker, request, f"malformed Signature-Input ({exc})") from exc
    row = (
        await session.execute(
            select(DeviceCertificate, Device)
            .join(Device, Device.id == DeviceCertificate.device_id)
            .where(DeviceCertificate.fingerprint_sha256 == key_id.lower())
        )
    ).first()
    if row is None:
        raise await _refuse(sessionmaker, request, "unknown device certificate")
    certificate, device = row[0], row[1]
    now = utcnow()
    if certificate.revoked_at is not None:
        raise await _refuse(sessionmaker, request, "the device certificate is revoked", device)
    if not certificate.not_before <= now <= certificate.not_after:
        raise await _refuse(sessionmaker, request, "the device certificate is not valid now", device)
    if device.management_state in ENDED_STATES:
        raise await _refuse(sessionmaker, request, f"the device is {device.management_state}", device)

    body = await request.body()
    if len(body) > MAX_BODY:
        raise PayloadTooLarge(f"Device requests carry at most {MAX_BODY // (1024 * 1024)} MiB.")
    public_key = x509.load_pem_x509_certificate(certificate.certificate_pem.encode()).public_key()
    assert isinstance(public_key, ec.EllipticCurvePublicKey)
    target = settings.base_url + request.url.path + (f"?{request.url.query}" if request.url.query else "")
    required = ("@method", "@target-uri", "content-digest") if body else ("@method", "@target-uri")
    try:
        results = _Verifier(
            signature_algorithm=algorithms.ECDSA_P256_SHA256, key_resolver=_OneKey(key_id, public_key)
        ).verify(
            _Message(request.method, target, request.headers),
            max_age=MAX_AGE,
            expect_tag=SIGNATURE_TAG,
            expect_label=SIGNATURE_LABEL,
            require_components=required,
            body=body,
        )
    except HTTPMessageSignaturesException as exc:
        raise await _refuse(sessionmaker, request, f"bad signature ({exc})", device) from exc
    nonce = results[0].nonce
    if not nonce or not 16 <= len(nonce) <= 128:
        raise await _refuse(
            sessionmaker, request, "the signature needs a nonce of 16 to 128 characters", device
        )
    inserted = await session.execute(
        insert(DeviceNonce)
        .values(device_id=device.id, nonce=nonce, expires_at=now + MAX_AGE + CLOCK_SKEW)
        .on_conflict_do_nothing()
        .returning(DeviceNonce.nonce)
    )
    if inserted.first() is None:
        raise await _refuse(sessionmaker, request, "replayed request (nonce already used)", device)
    context.set_actor(context.Actor(type="device", id=device.id, name=device.name))
    return AuthenticatedDevice(device, certificate, body)


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
