"""Admin center: an identity connection's SCIM provisioning (the tenant URL, the token shown once, turn off).
Calls the same service as ``/api/v1/identity-connections/{id}/scim-token``."""

from __future__ import annotations

import uuid

from fastapi import Request
from fastapi.responses import Response

from corral.auth.dependencies import SettingsRead, SettingsWrite
from corral.kit.db import SessionDep
from corral.kit.deps import SettingsDep
from corral.kit.routing import APIRouter
from corral.portal.rendering import clear_reveal, read_reveal, redirect, render, set_reveal
from corral.rbac.permissions import P
from corral.scim.endpoints import scim_url
from corral.scim.service import scim_service

router = APIRouter(prefix="/portal", include_in_schema=False)

REVEAL = "scim-token"


def _page(connection_id: uuid.UUID) -> str:
    return f"/portal/identity-connections/{connection_id}/scim"


@router.get("/identity-connections/{connection_id:uuid}/scim")
async def scim_page(
    request: Request,
    connection_id: uuid.UUID,
    session: SessionDep,
    settings: SettingsDep,
    principal: SettingsRead,
) -> Response:
    connection = await scim_service.connection(session, connection_id)
    revealed = read_reveal(request, REVEAL)
    token = revealed["token"] if revealed and revealed.get("connection_id") == str(connection.id) else None
    response = render(
        request,
        "identity/scim.html",
        {
            "connection": connection,
            "scim_url": scim_url(settings),
            "token": token,
            "can_write": principal.has(P.settings_write),
        },
    )
    return clear_reveal(response) if token else response


@router.post("/identity-connections/{connection_id:uuid}/scim/token")
async def scim_issue_token(
    request: Request, connection_id: uuid.UUID, session: SessionDep, _: SettingsWrite
) -> Response:
    issued = await scim_service.issue_token(session, connection_id)
    response = redirect(request, _page(connection_id))
    set_reveal(response, request, REVEAL, {"connection_id": str(connection_id), "token": issued.token})
    return response


@router.post("/identity-connections/{connection_id:uuid}/scim/off")
async def scim_turn_off(
    request: Request, connection_id: uuid.UUID, session: SessionDep, _: SettingsWrite
) -> Response:
    connection = await scim_service.revoke_token(session, connection_id)
    return redirect(
        request,
        _page(connection_id),
        f"SCIM provisioning of {connection.name} is off: its token no longer works. Users and groups it "
        "provisioned stay.",
    )
