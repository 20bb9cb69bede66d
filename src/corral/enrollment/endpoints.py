from __future__ import annotations

import uuid
from typing import Annotated, Any

from fastapi import Depends, status

from corral.auth.dependencies import Require
from corral.enrollment.schemas import (
    EnrollmentTokenCreate,
    EnrollmentTokenCreated,
    EnrollmentTokenOut,
    EnrollmentTokenUseOut,
)
from corral.enrollment.service import apple_enrollment_url, enrollment_service, qr_svg, token_out
from corral.kit.db import SessionDep
from corral.kit.deps import SettingsDep
from corral.kit.routing import APIRouter
from corral.rbac.permissions import P
from corral.rbac.principal import Principal

router = APIRouter(prefix="/enrollment-tokens", tags=["enrollment"])

EnrollmentRead = Annotated[Principal, Depends(Require(P.enrollment_read))]
EnrollmentManage = Annotated[Principal, Depends(Require(P.enrollment_manage))]
NOT_FOUND: dict[int | str, dict[str, Any]] = {404: {"description": "Not found"}}


@router.get("", response_model=list[EnrollmentTokenOut])
async def list_enrollment_tokens(session: SessionDep, principal: EnrollmentRead) -> list[EnrollmentTokenOut]:
    return [token_out(t) for t in await enrollment_service.list_tokens(session, principal)]


@router.post("", response_model=EnrollmentTokenCreated, status_code=status.HTTP_201_CREATED)
async def create_enrollment_token(
    data: EnrollmentTokenCreate, session: SessionDep, settings: SettingsDep, principal: EnrollmentManage
) -> EnrollmentTokenCreated:
    """Create a token; the secret, the enrollment URL and its QR code are shown once."""
    token, secret, url = await enrollment_service.create_token(session, settings, principal, data)
    apple_url = apple_enrollment_url(settings, token, secret)
    return EnrollmentTokenCreated(
        token=secret,
        enrollment_url=url,
        qr_svg_data_uri=qr_svg(url),
        apple_enrollment_url=apple_url,
        apple_qr_svg_data_uri=qr_svg(apple_url) if apple_url else None,
        enrollment_token=token_out(token),
    )


@router.get("/{token_id:uuid}", response_model=EnrollmentTokenOut, responses=NOT_FOUND)
async def get_enrollment_token(
    token_id: uuid.UUID, session: SessionDep, principal: EnrollmentRead
) -> EnrollmentTokenOut:
    return token_out(await enrollment_service.get_token(session, principal, token_id))


@router.get("/{token_id:uuid}/uses", response_model=list[EnrollmentTokenUseOut], responses=NOT_FOUND)
async def list_enrollment_token_uses(
    token_id: uuid.UUID, session: SessionDep, principal: EnrollmentRead
) -> list[EnrollmentTokenUseOut]:
    """Every enrollment attempt with this token: time, address, serial number, result, refusal reason.

    Without licences:read, a bound user's refusal (disabled or no licence) reads `user_ineligible`."""
    return await enrollment_service.uses(session, principal, token_id)


@router.post(
    "/{token_id:uuid}/revoke",
    response_model=EnrollmentTokenOut,
    responses={**NOT_FOUND, 409: {"description": "Already revoked"}},
)
async def revoke_enrollment_token(
    token_id: uuid.UUID, session: SessionDep, principal: EnrollmentManage
) -> EnrollmentTokenOut:
    return token_out(await enrollment_service.revoke_token(session, principal, token_id))
