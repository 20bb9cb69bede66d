from __future__ import annotations

import uuid
from typing import Any

from fastapi import Response, status

from corral.auth.dependencies import SettingsRead, SettingsWrite
from corral.identity.schemas import IdentityConnectionCreate, IdentityConnectionOut, IdentityConnectionUpdate
from corral.identity.service import identity_service
from corral.kit.db import SessionDep
from corral.kit.deps import SettingsDep
from corral.kit.routing import APIRouter

router = APIRouter(prefix="/identity-connections", tags=["identity connections"])

NOT_FOUND: dict[int | str, dict[str, Any]] = {404: {"description": "Not found"}}
INVALID: dict[int | str, dict[str, Any]] = {
    422: {"description": "Invalid, or the provider's discovery document is unreachable or invalid"}
}


@router.get("", response_model=list[IdentityConnectionOut])
async def list_connections(
    session: SessionDep, settings: SettingsDep, _: SettingsRead
) -> list[IdentityConnectionOut]:
    return [identity_service.out(settings, c) for c in await identity_service.all(session)]


@router.post(
    "",
    response_model=IdentityConnectionOut,
    status_code=status.HTTP_201_CREATED,
    responses={409: {"description": "Name taken"}, **INVALID},
)
async def create_connection(
    data: IdentityConnectionCreate, session: SessionDep, settings: SettingsDep, _: SettingsWrite
) -> IdentityConnectionOut:
    """Checks the provider's discovery document before saving; the client secret is stored encrypted."""
    return identity_service.out(settings, await identity_service.create(session, settings, data))


@router.get("/{connection_id:uuid}", response_model=IdentityConnectionOut, responses=NOT_FOUND)
async def get_connection(
    connection_id: uuid.UUID, session: SessionDep, settings: SettingsDep, _: SettingsRead
) -> IdentityConnectionOut:
    return identity_service.out(settings, await identity_service.get(session, connection_id))


@router.patch(
    "/{connection_id:uuid}",
    response_model=IdentityConnectionOut,
    responses={**NOT_FOUND, 409: {"description": "Name taken"}, **INVALID},
)
async def update_connection(
    connection_id: uuid.UUID,
    data: IdentityConnectionUpdate,
    session: SessionDep,
    settings: SettingsDep,
    _: SettingsWrite,
) -> IdentityConnectionOut:
    connection = await identity_service.update(session, settings, connection_id, data)
    return identity_service.out(settings, connection)


@router.delete("/{connection_id:uuid}", status_code=status.HTTP_204_NO_CONTENT, responses=NOT_FOUND)
async def delete_connection(connection_id: uuid.UUID, session: SessionDep, _: SettingsWrite) -> Response:
    await identity_service.delete(session, connection_id)
    return Response(status_code=status.HTTP_204_NO_CONTENT)
