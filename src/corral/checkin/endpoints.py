"""The device protocol, /device/v1 (docs/device-protocol.md)."""

from __future__ import annotations

import json
from typing import Annotated, Any, TypeVar

from fastapi import Depends, Request
from fastapi.responses import JSONResponse, Response
from pydantic import BaseModel, ValidationError

from corral.audit.refusals import Refusal, RefusalsDep, get_refusals
from corral.auth.dependencies import PUBLIC
from corral.checkin.auth import CurrentDevice
from corral.checkin.last_seen import LastSeenBuffer
from corral.checkin.schemas import (
    CheckinRequest,
    CheckinResponse,
    EnrollRequest,
    EnrollResponse,
    RenewRequest,
    RenewResponse,
)
from corral.checkin.service import checkin_service
from corral.checkin.throttle import ENROLL_THROTTLE, endpoint_of
from corral.config import Settings
from corral.delivery.service import DesiredStateReport, NotDelivered, delivery_service
from corral.enrollment.service import DeviceFacts, enrollment_service
from corral.errors import UnsupportedMediaType, ValidationFailed
from corral.kit import context
from corral.kit.db import SessionDep
from corral.kit.deps import SettingsDep
from corral.kit.routing import APIRouter
from corral.kit.time import utcnow

BODY_METHODS = frozenset({"POST", "PUT", "PATCH"})


async def json_body(request: Request) -> None:
    """Every device request with a body declares it as JSON (``application/json``; a ``charset`` parameter
    may only say UTF-8), else 415 before anything else is looked at. The signature does not cover the type,
    so this is the only check that the bytes were meant as JSON (docs/device-protocol.md)."""
    if request.method not in BODY_METHODS:
        return
    if request.headers.get("content-length", "0") == "0" and "transfer-encoding" not in request.headers:
        return  # no body
    media_type, *parameters = request.headers.get("content-type", "").split(";")
    charsets = [
        value.strip().strip('"').lower()
        for name, _, value in (p.partition("=") for p in parameters)
        if name.strip().lower() == "charset"
    ]
    if media_type.strip().lower() != "application/json" or any(c not in ("utf-8", "utf8") for c in charsets):
        raise UnsupportedMediaType(
            "Device requests with a body must send it as JSON: Content-Type: application/json "
            "(UTF-8; a charset parameter may only say utf-8).",
            headers={"Accept-Post": "application/json"},
        )


router = APIRouter(prefix="/device/v1", include_in_schema=False, dependencies=[Depends(json_body)])

M = TypeVar("M", bound=BaseModel)


def parse(model: type[M], body: bytes) -> M:
    try:
        return model.model_validate_json(body)
    except ValidationError as exc:
        errors = [
            {
                "location": ".".join(str(p) for p in e.get("loc", ())) or "body",
                "message": e.get("msg", ""),
                "type": e.get("type", ""),
            }
            for e in exc.errors()[:50]
        ]
        summary = "; ".join(f"{e['location']}: {e['message']}" for e in errors[:5])
        raise ValidationFailed(summary or "The request body is not valid.", errors=errors) from exc


@router.post("/enroll", status_code=201, dependencies=[PUBLIC, ENROLL_THROTTLE])
async def enroll(
    request: Request, session: SessionDep, refusals: RefusalsDep, settings: SettingsDep
) -> JSONResponse:
    """Public: the enrollment token in the body is the credential (checked, counted and audited); an address
    with too many refused enrollments is answered 429 first (checkin/throttle.py). The body is at most
    CORRAL_MAX_BODY_DEVICE_BYTES, however it is sent (corral/body_limits.py)."""
    data = parse(EnrollRequest, await request.body())
    enrolled = await enrollment_service.enroll(
        session,
        refusals,
        settings,
        secret=data.token,
        csr_pem=data.csr,
        facts=DeviceFacts(
            serial_number=data.device.serial_number,
            name=data.device.name,
            platform=data.device.platform,
            os_version=data.device.os_version,
            model=data.device.model,
            manufacturer=data.device.manufacturer,
        ),
    )
    body = EnrollResponse(
        device_id=enrolled.device.id,
        certificate=enrolled.certificate_pem,
        ca_certificates=enrolled.ca_pem,
        certificate_fingerprint=enrolled.fingerprint,
        checkin_url=f"{settings.base_url}/device/v1/checkin",
        events_url=f"{settings.base_url}/device/v1/events",
        checkin_interval_seconds=settings.checkin_interval_new_seconds,
        server_time=utcnow(),
    )
    return JSONResponse(body.model_dump(mode="json"), status_code=201)


async def get_last_seen(request: Request) -> LastSeenBuffer | None:
    buffer: LastSeenBuffer | None = getattr(request.app.state, "last_seen", None)
    return buffer


async def get_settings(request: Request) -> Settings:
    """The settings without a thread-pool hop (a plain function dependency takes one on every request)."""
    settings: Settings = request.app.state.settings
    return settings


@router.post("/checkin")
async def checkin(
    session: SessionDep,
    settings: Annotated[Settings, Depends(get_settings)],
    device: CurrentDevice,
    last_seen: Annotated[LastSeenBuffer | None, Depends(get_last_seen)],
) -> CheckinResponse:
    data = parse(CheckinRequest, device.body)
    raw = json.loads(device.body).get("inventory") if data.inventory is not None else None
    return await checkin_service.checkin(session, settings, device, data, raw, last_seen)


@router.get("/desired-state", response_model=dict[str, Any])
async def desired_state(
    session: SessionDep, settings: Annotated[Settings, Depends(get_settings)], device: CurrentDevice
) -> Response:
    """The device's desired-state document (device-protocol.md §10): fetch it when the check-in's
    ``desired_state_version`` differs from the one applied. 429 with Retry-After when the server is busy."""
    document = await delivery_service.fetch(session, settings, device.device.id, device.desired_state_version)
    return Response(document, media_type="application/json")


@router.post("/desired-state/report")
async def desired_state_report(
    request: Request, session: SessionDep, device: CurrentDevice
) -> dict[str, Any]:
    """What applying the document did, per profile and setting. A profile (or version) never delivered to
    the device is refused (422) and audited."""
    data = parse(DesiredStateReport, device.body)
    try:
        stored = await delivery_service.report(session, device.device.id, data)
    except NotDelivered:
        await (await get_refusals(request)).record(
            Refusal(
                activity="device.desired_state_report",
                category="device",
                operation="update",
                endpoint=endpoint_of(request),
                reason="not_delivered",
                text="a report for a profile the device was never sent",
                source=context.current().client_ip,
                actor=context.Actor(type="device", id=device.device.id, name=device.device.name),
                target_type="device",
                target_id=device.device.id,
                target_name=device.device.name,
                subject=f"device:{device.device.id}",
            )
        )
        raise
    return {"stored": stored}


@router.post("/renew")
async def renew(session: SessionDep, settings: SettingsDep, device: CurrentDevice) -> RenewResponse:
    data = parse(RenewRequest, device.body)
    certificate, ca, fingerprint = await checkin_service.renew(session, settings, device, data.csr)
    return RenewResponse(certificate=certificate, ca_certificates=ca, certificate_fingerprint=fingerprint)
