"""Settings, Apple MDM push certificate (portal): the same service as /api/v1/apple/push-certificate."""

from __future__ import annotations

from typing import Annotated

from fastapi import Form, Request
from fastapi.responses import Response

from corral.apple.endpoints import certificate_out
from corral.apple.push_certificate import MAX_PEM, push_certificate_service
from corral.auth.dependencies import SettingsRead, SettingsWrite
from corral.errors import CorralError, NotFound
from corral.kit.db import SessionDep
from corral.kit.deps import SettingsDep
from corral.kit.routing import APIRouter
from corral.portal.rendering import redirect, render

router = APIRouter(prefix="/portal/settings/apple-push-certificate", include_in_schema=False)
PAGE = "/portal/settings/apple-push-certificate"


async def _page(
    request: Request, session: SessionDep, *, error: str | None = None, status_code: int = 200
) -> Response:
    current = await push_certificate_service.current(session)
    pending = await push_certificate_service.pending(session)
    return render(
        request,
        "tenant/apple_push.html",
        {
            "certificate": certificate_out(current) if current else None,
            "pending": pending,
            "error": error,
        },
        status_code=status_code,
    )


@router.get("")
async def push_certificate_page(request: Request, session: SessionDep, _: SettingsRead) -> Response:
    return await _page(request, session)


@router.post("/request")
async def create_request(
    request: Request, session: SessionDep, settings: SettingsDep, principal: SettingsWrite
) -> Response:
    await push_certificate_service.request(session, settings, principal.user_principal_name)
    return redirect(request, PAGE, "Certificate request created: download the CSR and get it signed.")


@router.get("/request.csr")
async def download_csr(session: SessionDep, _: SettingsRead) -> Response:
    pending = await push_certificate_service.pending(session)
    if pending is None:
        raise NotFound("There is no certificate request waiting.")
    return Response(
        pending.csr_pem,
        media_type="application/pkcs10",
        headers={"Content-Disposition": 'attachment; filename="corral-mdm-push.csr"'},
    )


@router.post("")
async def upload(
    request: Request,
    session: SessionDep,
    settings: SettingsDep,
    principal: SettingsWrite,
    certificate_pem: Annotated[str, Form(max_length=MAX_PEM)] = "",
    apple_account: Annotated[str, Form(max_length=320)] = "",
) -> Response:
    try:
        row = await push_certificate_service.upload(
            session, settings, certificate_pem, apple_account.strip() or None, principal.user_principal_name
        )
    except CorralError as exc:
        return await _page(request, session, error=exc.detail, status_code=exc.status_code)
    return redirect(request, PAGE, f"Push certificate saved: topic {row.topic}.")
