"""The Apple MDM check-in protocol, ``PUT /apple/v1/checkin`` (docs/apple-mdm.md): Authenticate (the device
becomes a Corral device, its SCEP identity its certificate, the token's use counted), TokenUpdate (how to
push to it, and the UnlockToken), CheckOut (the user removed the profile: management ends). Messages Corral
does not implement are refused plainly; every refusal is counted and audited.

The device becomes *enrolled* with its first TokenUpdate (Apple: a device is not enrolled until the server
has its push token); until then it shows as enrolled with push "pending".
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from cryptography import x509
from fastapi import Request
from sqlalchemy import delete, select
from sqlalchemy.ext.asyncio import AsyncSession

from corral.apple import commands as apple_commands
from corral.apple import profile as profiles
from corral.apple.auth import AppleCaller
from corral.apple.push_certificate import push_certificate_service
from corral.audit.refusals import Refusal, RefusalLog
from corral.audit.service import audit_service
from corral.checkin.throttle import endpoint_of
from corral.commands.service import command_service
from corral.config import Settings
from corral.enrollment import repository as enrollment_repository
from corral.enrollment.service import DeviceFacts, enrollment_service
from corral.errors import BadRequest, Conflict, CorralError, Forbidden, NotAuthenticated
from corral.kit import context
from corral.kit.security import SecretBox
from corral.kit.time import utcnow
from corral.models import (
    AppleCommand,
    AppleEnrollment,
    ApplePendingIdentity,
    Device,
    EnrollmentRefusal,
    ManagementChannel,
    Platform,
)
from corral.push.service import push_service

ENDPOINT = "/apple/v1/checkin"
UNLOCK_TOKEN_PURPOSE = "apple-unlock-token"  # noqa: S105 - a key derivation label
#: Messages Apple defines that Corral does not implement: the profile advertises none of the capabilities
#: that would make a device send them.
NOT_SUPPORTED = frozenset(
    {"GetBootstrapToken", "SetBootstrapToken", "DeclarativeManagement", "GetToken", "ReturnToService"}
)
#: Model identifier prefixes (ProductName, e.g. "iPhone16,1", "iPad14,1", "Mac15,6", "iMac14,2") → platform.
_PRODUCTS = (
    ("iPhone", Platform.ios),
    ("iPod", Platform.ios),
    ("iPad", Platform.ipados),
    ("MacBook", Platform.macos),
    ("Macmini", Platform.macos),
    ("MacPro", Platform.macos),
    ("iMac", Platform.macos),
    ("Mac", Platform.macos),
    ("VirtualMac", Platform.macos),
)


def platform_of(message: dict[str, Any]) -> Platform | None:
    """The device's platform from its model identifier; None for Apple TV, Watch, Vision and the unknown."""
    product = message.get("ProductName") or message.get("Model") or ""
    if not isinstance(product, str):
        return None
    for prefix, platform in _PRODUCTS:
        if product.startswith(prefix):
            return platform
    return None


@dataclass(frozen=True, kw_only=True)
class MessageRefused(Refusal):
    """A well-authenticated device's message Corral refuses."""


def unlock_box(settings: Settings) -> SecretBox:
    return SecretBox(settings.resolved_secret_key(), UNLOCK_TOKEN_PURPOSE)


def _text(message: dict[str, Any], key: str, limit: int, *, required: bool = False) -> str | None:
    value = message.get(key)
    if value is None and not required:
        return None
    if not isinstance(value, str) or not value or len(value) > limit:
        raise BadRequest(f"{key} must be a string of 1 to {limit} characters.")
    return value


async def queue_inventory(session: AsyncSession, device_id: uuid.UUID, now: datetime) -> None:
    """Corral's own inventory queries (after enrollment): answered at the device's next connection."""
    for step, (request_type, params) in enumerate(apple_commands.INVENTORY):
        session.add(
            AppleCommand(
                id=uuid.uuid4(),
                device_id=device_id,
                step=step,
                request_type=request_type,
                params=params,
                created_at=now,
            )
        )


async def refuse_message(
    request: Request, refusals: RefusalLog, caller: AppleCaller, kind: str, error: CorralError
) -> None:
    """Count and audit a refused message of an authenticated Apple device (aggregated like every refusal:
    the reason is the status and the kind of message, never what the message said)."""
    device = caller.device
    known = kind if kind in KNOWN else "unknown"
    await refusals.record(
        MessageRefused(
            activity=f"device.apple.{'connect' if request.url.path.endswith('/connect') else 'checkin'}",
            category="device",
            operation="update",
            endpoint=endpoint_of(request),
            reason=f"{known}_{error.status_code}",
            text=f"a {known} message was refused ({error.status_code})",
            source=context.current().client_ip,
            actor=context.Actor(
                type="device",
                id=device.id if device else None,
                name=device.name if device else "unenrolled Apple device",
            ),
            target_type="device" if device else None,
            target_id=device.id if device else None,
            target_name=device.name if device else None,
            subject=f"device:{device.id}" if device else f"identity:{caller.fingerprint}",
        )
    )


class AppleCheckin:
    async def handle(
        self,
        request: Request,
        session: AsyncSession,
        refusals: RefusalLog,
        settings: Settings,
        caller: AppleCaller,
    ) -> None:
        kind = caller.message.get("MessageType")
        try:
            if kind == "Authenticate":
                await self.authenticate(session, refusals, settings, caller)
                return
            if caller.device is None or caller.enrollment is None:
                raise NotAuthenticated("This identity has not authenticated yet: send Authenticate first.")
            if kind == "TokenUpdate":
                await self.token_update(session, settings, caller.device, caller.enrollment, caller.message)
            elif kind == "CheckOut":
                await self.check_out(session, caller.device, caller.enrollment)
            elif kind == "UserAuthenticate":
                # Corral keeps no per-user channel: Apple's documented way to decline it (no user channel).
                raise _Gone()
            elif kind in NOT_SUPPORTED:
                raise BadRequest(f"{kind} is not supported by this server.")
            else:
                raise BadRequest("Unknown or missing MessageType.")
        except CorralError as exc:
            await refuse_message(request, refusals, caller, str(kind)[:64], exc)
            raise

    # -------------------------------------------------------------------------------- Authenticate
    async def authenticate(
        self, session: AsyncSession, refusals: RefusalLog, settings: Settings, caller: AppleCaller
    ) -> None:
        message = caller.message
        udid = _text(message, "UDID", 64, required=True)
        serial = _text(message, "SerialNumber", 128, required=True)
        topic = _text(message, "Topic", 255, required=True)
        assert udid is not None and serial is not None and topic is not None
        push = await push_certificate_service.current(session)
        if push is None or push.topic != topic:
            raise NotAuthenticated("The message's Topic is not this server's push topic.")
        if caller.device is not None and caller.enrollment is not None:
            # The device authenticates again with its identity (a reinstalled profile keeps nothing else):
            # not enrolled again until its next TokenUpdate.
            caller.enrollment.push_token = None
            caller.enrollment.push_magic = None
            caller.enrollment.push_state = "pending"
            caller.enrollment.authenticated_at = utcnow()
            return
        pending = caller.pending
        if pending is None:
            raise NotAuthenticated("Unknown device identity.")
        platform = platform_of(message)
        token = await enrollment_repository.token_for_update(session, pending.token_id)
        if platform is None:
            raise await enrollment_service.refuse(
                refusals,
                token,
                serial,
                EnrollmentRefusal.platform_not_allowed,
                Forbidden("Corral manages iPhone, iPad and Mac; this device is none of them."),
                endpoint=ENDPOINT,
            )
        token = await enrollment_service.admit_token(
            session, refusals, token, platforms=frozenset({platform}), serial_number=serial, endpoint=ENDPOINT
        )
        live = await session.scalar(
            select(AppleEnrollment.device_id).where(
                AppleEnrollment.udid == udid, AppleEnrollment.ended_at.is_(None)
            )
        )
        if live is not None:
            raise await enrollment_service.refuse(
                refusals,
                token,
                serial,
                EnrollmentRefusal.duplicate_serial,
                Conflict("This device is already enrolled; retire it before enrolling it again."),
                endpoint=ENDPOINT,
            )
        facts = DeviceFacts(
            serial_number=serial,
            name=_text(message, "DeviceName", 256) or serial,
            platform=platform,
            os_version=_text(message, "OSVersion", 64),
            model=_text(message, "ModelName", 256) or _text(message, "ProductName", 256),
            manufacturer="Apple",
        )
        device = await enrollment_service.new_device(
            session, refusals, token, facts, channel=ManagementChannel.apple_mdm, endpoint=ENDPOINT
        )
        device.os_build = _text(message, "BuildVersion", 128)
        session.add(
            AppleEnrollment(
                device_id=device.id,
                udid=udid,
                topic=topic,
                profile_identifier=profiles.identifier_for(settings.base_url),
                authenticated_at=device.enrolled_at,
                facts={},
            )
        )
        certificate = x509.load_pem_x509_certificate(pending.certificate_pem.encode())
        await session.execute(
            delete(ApplePendingIdentity).where(
                ApplePendingIdentity.fingerprint_sha256 == pending.fingerprint_sha256
            )
        )
        await enrollment_service.record_enrollment(
            session, token, device, certificate, pending.issuer_fingerprint_sha256, facts
        )
        context.set_actor(context.Actor(type="device", id=device.id, name=device.name))

    # -------------------------------------------------------------------------------- TokenUpdate
    async def token_update(
        self,
        session: AsyncSession,
        settings: Settings,
        device: Device,
        enrollment: AppleEnrollment,
        message: dict[str, Any],
    ) -> None:
        if "UserID" in message or "UserShortName" in message:
            return  # a user channel's token (macOS): Corral manages the device channel only
        token = message.get("Token")
        magic = _text(message, "PushMagic", 64, required=True)
        if not isinstance(token, bytes) or not 1 <= len(token) <= 100:
            raise BadRequest("Token must be data of 1 to 100 bytes.")
        unlock = message.get("UnlockToken")
        if unlock is not None and (not isinstance(unlock, bytes) or not unlock):
            raise BadRequest("UnlockToken must be data.")
        now = utcnow()
        enrollment.push_token = token
        enrollment.push_magic = magic
        if unlock is not None:
            enrollment.unlock_token_encrypted = unlock_box(settings).encrypt(unlock)
        enrollment.awaiting_configuration = message.get("AwaitingConfiguration") is True
        enrollment.last_token_update_at = now
        device.last_checkin_at = now
        device.last_checkin_ip = context.current().client_ip
        if enrollment.first_token_update_at is None or enrollment.push_state in ("pending", "unreachable"):
            # A new token (or the first): reachable again.
            first = enrollment.first_token_update_at is None
            enrollment.first_token_update_at = enrollment.first_token_update_at or now
            enrollment.push_state = "ok"
            enrollment.push_failed_reason = None
            if first:
                await queue_inventory(session, device.id, now)
                await session.flush()  # the wake-up reads the push token from the table
                await push_service.wake(session, device.id, "enrolled")  # over APNs: the device connects
                await audit_service.record(
                    session,
                    activity="device.apple.enrolled",
                    category="device",
                    operation="update",
                    target_type="device",
                    target_id=device.id,
                    target_name=device.name,
                    changes=[("push_state", "pending", "ok")],
                    detail="the device sent its push token: enrolled",
                )

    # -------------------------------------------------------------------------------- CheckOut
    async def check_out(self, session: AsyncSession, device: Device, enrollment: AppleEnrollment) -> None:
        await session.execute(select(Device.id).where(Device.id == device.id).with_for_update(key_share=True))
        enrollment.ended_at = utcnow()
        enrollment.push_token = None
        enrollment.push_magic = None
        enrollment.unlock_token_encrypted = None
        await command_service.device_left(
            session, device, "CheckOut: the enrollment profile was removed on the device"
        )


class _Gone(CorralError):
    status_code = 410
    title = "Gone"

    def __init__(self) -> None:
        super().__init__("Corral does not manage user channels: the device continues without one.")


KNOWN = (
    frozenset({"Authenticate", "TokenUpdate", "CheckOut", "UserAuthenticate"})
    | NOT_SUPPORTED
    | frozenset({"Idle", "Acknowledged", "Error", "CommandFormatError", "NotNow"})
)

apple_checkin = AppleCheckin()
