"""The Apple MDM device protocol, /apple/v1 (docs/apple-mdm.md): the enrollment profile and the SCEP server.

These routes speak Apple's and RFC 8894's formats, not Corral's JSON: a signed ``.mobileconfig``, SCEP's CMS
messages. Both are public, with a credential inside: the enrollment token (the profile) and the one-time
challenge the profile carries (SCEP). Refusals are counted against the address's enrollment refusal limit.
"""

from __future__ import annotations

import base64
import binascii
from typing import Annotated

from fastapi import Query, Request
from fastapi.responses import Response

from corral.apple import profile as profiles
from corral.apple import scep
from corral.apple.auth import CurrentAppleDevice, DeviceEnded, unrecognized_body
from corral.apple.checkin import apple_checkin, refuse_message
from corral.apple.connect import apple_connect
from corral.apple.enrollment import apple_enrollment
from corral.audit.refusals import RefusalsDep
from corral.auth.dependencies import PUBLIC
from corral.checkin.throttle import ENROLL_THROTTLE
from corral.errors import BadRequest, CorralError
from corral.kit.db import SessionDep
from corral.kit.deps import SettingsDep
from corral.kit.routing import APIRouter

router = APIRouter(prefix="/apple/v1", include_in_schema=False)

SCEP_OPERATIONS = ("GetCACaps", "GetCACert", "PKIOperation")
PKI_MESSAGE = "application/x-pki-message"


@router.get("/enroll", dependencies=[PUBLIC, ENROLL_THROTTLE])
async def enrollment_profile(
    session: SessionDep,
    refusals: RefusalsDep,
    settings: SettingsDep,
    token: Annotated[str, Query(min_length=1, max_length=128)],
) -> Response:
    """Public: the enrollment token in the query is the credential. A signed enrollment profile, with a
    one-time SCEP challenge inside, for an iPhone, iPad or Mac to install."""
    body = await apple_enrollment.profile(session, refusals, settings, token)
    return Response(
        body,
        media_type=profiles.CONTENT_TYPE,
        headers={
            "Content-Disposition": f'attachment; filename="{profiles.FILENAME}"',
            "Cache-Control": "no-store",
        },
    )


async def _scep(
    request: Request,
    session: SessionDep,
    refusals: RefusalsDep,
    settings: SettingsDep,
    operation: str,
    message: str | None,
) -> Response:
    if operation == "GetCACaps":
        return Response(scep.capabilities(), media_type="text/plain")
    if operation == "GetCACert":
        body = await apple_enrollment.ca_certificates(session, settings)
        return Response(body, media_type="application/x-x509-ca-ra-cert")
    if operation != "PKIOperation":
        raise BadRequest(f"Unknown SCEP operation; use one of {', '.join(SCEP_OPERATIONS)}.")
    if request.method == "POST":
        der = await request.body()
    else:
        try:
            der = base64.b64decode(message or "", validate=False)
        except (binascii.Error, ValueError) as exc:
            raise BadRequest("The SCEP message is not base64.") from exc
    if not der:
        raise BadRequest("The SCEP PKIOperation carries no message.")
    limit = request.app.state.device_limits.enroll
    try:
        answer = await apple_enrollment.pki_operation(session, refusals, settings, limit, der)
    except scep.ScepError as exc:  # counted against the address by ENROLL_THROTTLE (a 4xx)
        raise BadRequest(str(exc)) from exc
    return Response(answer.body, media_type=PKI_MESSAGE)


@router.get("/scep", dependencies=[PUBLIC, ENROLL_THROTTLE])
async def scep_get(
    request: Request,
    session: SessionDep,
    refusals: RefusalsDep,
    settings: SettingsDep,
    operation: Annotated[str, Query(max_length=32)],
    message: Annotated[str | None, Query(max_length=96 * 1024)] = None,
) -> Response:
    """Public: RFC 8894's GetCACaps, GetCACert and (GET form) PKIOperation, whose challenge is the
    credential."""
    return await _scep(request, session, refusals, settings, operation, message)


@router.post("/scep", dependencies=[PUBLIC, ENROLL_THROTTLE])
async def scep_post(
    request: Request,
    session: SessionDep,
    refusals: RefusalsDep,
    settings: SettingsDep,
    operation: Annotated[str, Query(max_length=32)],
) -> Response:
    """Public: PKIOperation with the message as the body (``application/x-pki-message``)."""
    return await _scep(request, session, refusals, settings, operation, None)


@router.put("/checkin")
async def checkin(
    request: Request,
    session: SessionDep,
    refusals: RefusalsDep,
    settings: SettingsDep,
    caller: CurrentAppleDevice,
) -> Response:
    """Apple's check-in protocol: Authenticate, TokenUpdate, CheckOut (plist bodies, signed)."""
    await apple_checkin.handle(request, session, refusals, settings, caller)
    return Response(status_code=200)


async def device_ended(request: Request, exc: Exception) -> Response:
    """A device whose management has ended gets Apple's ErrorUnrecognizedDevice document (403, XML), which
    makes iOS 17 and macOS 14 unenroll; older systems keep asking and keep getting it."""
    assert isinstance(exc, DeviceEnded)
    return Response(unrecognized_body(str(exc)), status_code=403, media_type="application/xml")


@router.put("/connect")
async def connect(
    request: Request,
    session: SessionDep,
    refusals: RefusalsDep,
    settings: SettingsDep,
    caller: CurrentAppleDevice,
) -> Response:
    """Apple's command protocol: the device's report on its last command (or Idle), answered with the next
    command, or an empty body when there is none."""
    try:
        body = await apple_connect.handle(session, settings, caller)
    except CorralError as exc:
        await refuse_message(request, refusals, caller, str(caller.message.get("Status"))[:64], exc)
        raise
    return Response(body, media_type="application/xml" if body else None)
