"""Tenant administration → Identity connections: the same service as /api/v1/identity-connections."""

from __future__ import annotations

import uuid
from typing import Annotated, Any

from fastapi import Depends, Form, Request
from fastapi.responses import Response
from pydantic import ValidationError

from corral.auth.dependencies import SettingsRead, SettingsWrite
from corral.errors import CorralError
from corral.identity.schemas import IdentityConnectionCreate, IdentityConnectionUpdate
from corral.identity.service import identity_service
from corral.kit.db import SessionDep
from corral.kit.deps import SettingsDep
from corral.kit.routing import APIRouter
from corral.portal.rendering import redirect, render

router = APIRouter(prefix="/portal/identity-connections", include_in_schema=False)

Text = Annotated[str, Form(max_length=1024)]
Flag = Annotated[str, Form(max_length=8)]


def _error(exc: ValidationError) -> str:
    error = exc.errors()[0]
    where = ".".join(str(p) for p in error.get("loc", ()))
    return f"{where}: {error.get('msg', 'invalid')}" if where else str(error.get("msg", "invalid"))


class ConnectionForm:
    """The connection form as posted (create and edit alike): its values, the client secret apart."""

    def __init__(
        self,
        name: Text = "",
        issuer: Text = "",
        client_id: Text = "",
        client_secret: Text = "",
        scopes: Text = "",
        groups_claim: Text = "",
        admin_sign_in: Flag = "",
        user_sign_in: Flag = "",
        enabled: Flag = "",
    ) -> None:
        self.client_secret = client_secret
        self.values: dict[str, Any] = {
            "name": name,
            "issuer": issuer,
            "client_id": client_id,
            "scopes": scopes or "openid profile email groups",
            "groups_claim": groups_claim or "groups",
            "admin_sign_in": admin_sign_in == "on",
            "user_sign_in": user_sign_in == "on",
            "enabled": enabled == "on",
        }


Posted = Annotated[ConnectionForm, Depends()]


@router.get("")
async def connection_list(
    request: Request, session: SessionDep, settings: SettingsDep, _: SettingsRead
) -> Response:
    connections = [identity_service.out(settings, c) for c in await identity_service.all(session)]
    return render(request, "identity/connection_list.html", {"connections": connections})


@router.post("")
async def connection_create(
    request: Request,
    session: SessionDep,
    settings: SettingsDep,
    _: SettingsWrite,
    posted: Posted,
) -> Response:
    form = posted.values
    try:
        data = IdentityConnectionCreate.model_validate({**form, "client_secret": posted.client_secret})
        connection = await identity_service.create(session, settings, data)
    except (ValidationError, CorralError) as exc:
        message = _error(exc) if isinstance(exc, ValidationError) else exc.detail
        connections = [identity_service.out(settings, c) for c in await identity_service.all(session)]
        return render(
            request,
            "identity/connection_list.html",
            {"connections": connections, "form": form, "error": message},
            status_code=422 if isinstance(exc, ValidationError) else exc.status_code,
        )
    return redirect(request, f"/portal/identity-connections/{connection.id}", "Identity connection saved.")


@router.get("/{connection_id:uuid}")
async def connection_detail(
    request: Request, connection_id: uuid.UUID, session: SessionDep, settings: SettingsDep, _: SettingsRead
) -> Response:
    connection = identity_service.out(settings, await identity_service.get(session, connection_id))
    return render(request, "identity/connection_detail.html", {"connection": connection, "form": connection})


@router.post("/{connection_id:uuid}")
async def connection_update(
    request: Request,
    connection_id: uuid.UUID,
    session: SessionDep,
    settings: SettingsDep,
    _: SettingsWrite,
    posted: Posted,
) -> Response:
    form = posted.values
    try:
        data = IdentityConnectionUpdate.model_validate(
            {**form, "client_secret": posted.client_secret or None}
        )
        await identity_service.update(session, settings, connection_id, data)
    except (ValidationError, CorralError) as exc:
        message = _error(exc) if isinstance(exc, ValidationError) else exc.detail
        connection = identity_service.out(settings, await identity_service.get(session, connection_id))
        return render(
            request,
            "identity/connection_detail.html",
            {"connection": connection, "form": form, "error": message},
            status_code=422 if isinstance(exc, ValidationError) else exc.status_code,
        )
    return redirect(request, f"/portal/identity-connections/{connection_id}", "Identity connection saved.")


@router.post("/{connection_id:uuid}/delete")
async def connection_delete(
    request: Request, connection_id: uuid.UUID, session: SessionDep, _: SettingsWrite
) -> Response:
    await identity_service.delete(session, connection_id)
    return redirect(request, "/portal/identity-connections", "Identity connection deleted.")
