"""Settings, Apple MDM push certificate (API). Reading it needs settings:read, changing it settings:write."""

from __future__ import annotations

from corral.apple.push_certificate import expiry, push_certificate_service
from corral.apple.schemas import (
    PushCertificateOut,
    PushCertificateRequestOut,
    PushCertificateStatus,
    PushCertificateUpload,
)
from corral.auth.dependencies import SettingsRead, SettingsWrite
from corral.kit.db import SessionDep
from corral.kit.deps import SettingsDep
from corral.kit.routing import APIRouter
from corral.kit.time import utcnow
from corral.models import ApplePushCertificate

router = APIRouter(prefix="/apple/push-certificate", tags=["apple"])


def certificate_out(row: ApplePushCertificate) -> PushCertificateOut:
    assert row.not_after is not None
    state = expiry(row.not_after, utcnow())
    return PushCertificateOut(
        topic=row.topic or "",
        serial_number=row.serial_number or "",
        not_before=row.not_before or row.not_after,
        not_after=row.not_after,
        apple_account=row.apple_account,
        uploaded_at=row.uploaded_at or row.requested_at,
        uploaded_by=row.uploaded_by or "",
        expiry_state=state.state,
        days_left=state.days_left,
    )


@router.get("", response_model=PushCertificateStatus)
async def status(session: SessionDep, _: SettingsRead) -> PushCertificateStatus:
    """The certificate in use (its topic and expiry) and the request waiting for Apple's certificate."""
    current = await push_certificate_service.current(session)
    pending = await push_certificate_service.pending(session)
    return PushCertificateStatus(
        certificate=certificate_out(current) if current else None,
        pending_request=PushCertificateRequestOut.model_validate(pending) if pending else None,
    )


@router.post("/request", response_model=PushCertificateRequestOut, status_code=201)
async def create_request(
    session: SessionDep, settings: SettingsDep, principal: SettingsWrite
) -> PushCertificateRequestOut:
    """A new key and its certificate signing request, replacing any request still waiting.

    Get the CSR signed and upload Apple's certificate for it (docs/apple-mdm.md)."""
    row = await push_certificate_service.request(session, settings, principal.user_principal_name)
    return PushCertificateRequestOut.model_validate(row)


@router.put(
    "",
    response_model=PushCertificateOut,
    responses={
        409: {"description": "No request waiting, or a certificate for another topic than the one in use"}
    },
)
async def upload(
    data: PushCertificateUpload, session: SessionDep, settings: SettingsDep, principal: SettingsWrite
) -> PushCertificateOut:
    """Upload Apple's certificate for the waiting request (first time or renewal: the topic must stay)."""
    row = await push_certificate_service.upload(
        session, settings, data.certificate_pem, data.apple_account, principal.user_principal_name
    )
    return certificate_out(row)
