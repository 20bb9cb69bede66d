"""SCIM 2.0 at ``/scim/v2`` (authenticated by the connection's bearer token), and the admin API that issues
that token (``/api/v1/identity-connections/{id}/scim-token``, settings:write)."""

from __future__ import annotations

import json
import uuid
from datetime import datetime
from typing import Annotated, Any

from fastapi import Depends, Query, Request, Response, status
from fastapi.responses import JSONResponse
from pydantic import BaseModel, Field

from corral.auth.dependencies import Require, SettingsWrite
from corral.kit.db import SessionDep
from corral.kit.deps import SettingsDep
from corral.kit.routing import APIRouter
from corral.models import Group, IdentityConnection, User
from corral.rbac.permissions import P
from corral.rbac.principal import Principal
from corral.scim.auth import ScimToken
from corral.scim.errors import MEDIA_TYPE, ScimError
from corral.scim.resources import (
    group_resource,
    list_response,
    project,
    resource_types,
    schemas,
    service_provider_config,
    user_resource,
)
from corral.scim.service import paging, scim_service

PREFIX = "/scim/v2"
router = APIRouter(prefix=PREFIX, include_in_schema=False)


def base_url(request: Request) -> str:
    settings = request.app.state.settings
    return str(settings.base_url).rstrip("/") + PREFIX


def scim(body: Any, status_code: int = 200, headers: dict[str, str] | None = None) -> JSONResponse:
    return JSONResponse(body, status_code=status_code, media_type=MEDIA_TYPE, headers=headers)


async def read_body(request: Request) -> Any:
    raw = await request.body()  # at most CORRAL_MAX_BODY_SCIM_BYTES (corral/body_limits.py)
    try:
        return json.loads(raw)
    except ValueError:
        raise ScimError(400, "The body is not JSON.", "invalidSyntax") from None


Attributes = Annotated[str | None, Query(max_length=2048)]
Filter = Annotated[str | None, Query(max_length=2048)]
StartIndex = Annotated[int | None, Query(alias="startIndex", ge=-(2**31), le=2**31)]
Count = Annotated[int | None, Query(ge=-(2**31), le=2**31)]


# ------------------------------------------------------------------------------------------------ discovery
@router.get("/ServiceProviderConfig")
async def get_service_provider_config(request: Request, _: ScimToken) -> JSONResponse:
    """SCIM: what this service provider supports."""
    docs = "https://github.com/corral-mdm/corral/blob/main/docs/identity.md#provisioning-with-scim"
    return scim(service_provider_config(base_url(request), docs))


@router.get("/ResourceTypes")
async def list_resource_types(request: Request, _: ScimToken) -> JSONResponse:
    """SCIM: the resource types (User, Group)."""
    found = resource_types(base_url(request))
    return scim(list_response(found, len(found), 1))


@router.get("/ResourceTypes/{name}")
async def get_resource_type(request: Request, _: ScimToken, name: str) -> JSONResponse:
    """SCIM: one resource type."""
    for item in resource_types(base_url(request)):
        if item["id"] == name:
            return scim(item)
    raise ScimError(404, f"No resource type {name}.")


@router.get("/Schemas")
async def list_schemas(request: Request, _: ScimToken) -> JSONResponse:
    """SCIM: the schemas (User, enterprise User extension, Group)."""
    found = schemas(base_url(request))
    return scim(list_response(found, len(found), 1))


@router.get("/Schemas/{urn}")
async def get_schema(request: Request, _: ScimToken, urn: str) -> JSONResponse:
    """SCIM: one schema."""
    for item in schemas(base_url(request)):
        if item["id"] == urn:
            return scim(item)
    raise ScimError(404, f"No schema {urn}.")


@router.post("/.search")
async def search_all(_: ScimToken) -> JSONResponse:
    """SCIM: searching several resource types at once is not supported (501, RFC 7644 §3.4.3)."""
    raise ScimError(
        501, "Searching several resource types at once is not supported: use GET /Users or /Groups."
    )


# ------------------------------------------------------------------------------------------------ users
def _user(request: Request, user: User, attributes: str | None = None, excluded: str | None = None) -> Any:
    return project(user_resource(base_url(request), user), attributes, excluded)


def _created(request: Request, resource: dict[str, Any]) -> JSONResponse:
    return scim(resource, status.HTTP_201_CREATED, {"Location": resource["meta"]["location"]})


@router.get("/Users")
async def list_users(
    request: Request,
    session: SessionDep,
    connection: ScimToken,
    filter: Filter = None,
    start_index: StartIndex = None,
    count: Count = None,
    attributes: Attributes = None,
    excluded_attributes: Annotated[str | None, Query(alias="excludedAttributes", max_length=2048)] = None,
) -> JSONResponse:
    """SCIM: users provisioned by this connection (filter, startIndex, count)."""
    start, limit = paging(start_index, count)
    users, total = await scim_service.list_users(session, connection, filter, start, limit)
    found = [_user(request, u, attributes, excluded_attributes) for u in users]
    return scim(list_response(found, total, start))


@router.post("/Users")
async def create_user(request: Request, session: SessionDep, connection: ScimToken) -> JSONResponse:
    """SCIM: provision a user."""
    user = await scim_service.create_user(session, connection, await read_body(request))
    return _created(request, _user(request, user))


@router.get("/Users/{user_id}")
async def get_user(
    request: Request,
    session: SessionDep,
    connection: ScimToken,
    user_id: str,
    attributes: Attributes = None,
    excluded_attributes: Annotated[str | None, Query(alias="excludedAttributes", max_length=2048)] = None,
) -> JSONResponse:
    """SCIM: one user."""
    user = await scim_service.get_user(session, connection, user_id)
    return scim(_user(request, user, attributes, excluded_attributes))


@router.put("/Users/{user_id}")
async def replace_user(
    request: Request, session: SessionDep, connection: ScimToken, user_id: str
) -> JSONResponse:
    """SCIM: replace a user."""
    user = await scim_service.replace_user(session, connection, user_id, await read_body(request))
    return scim(_user(request, user))


@router.patch("/Users/{user_id}")
async def patch_user(
    request: Request, session: SessionDep, connection: ScimToken, user_id: str
) -> JSONResponse:
    """SCIM: change a user (active=false disables them: their sessions end)."""
    user = await scim_service.patch_user(session, connection, user_id, await read_body(request))
    return scim(_user(request, user))


@router.delete("/Users/{user_id}", status_code=204)
async def delete_user(session: SessionDep, connection: ScimToken, user_id: str) -> Response:
    """SCIM: deprovision and delete a user."""
    await scim_service.delete_user(session, connection, user_id)
    return Response(status_code=204)


# ------------------------------------------------------------------------------------------------ groups
async def _groups(
    request: Request,
    session: SessionDep,
    groups: list[Group],
    attributes: str | None = None,
    excluded: str | None = None,
) -> list[dict[str, Any]]:
    wanted = project({"members": True, "id": 1}, attributes, excluded)
    members = await scim_service.members(session, groups) if "members" in wanted else {}
    return [
        project(group_resource(base_url(request), g, members.get(g.id)), attributes, excluded) for g in groups
    ]


@router.get("/Groups")
async def list_groups(
    request: Request,
    session: SessionDep,
    connection: ScimToken,
    filter: Filter = None,
    start_index: StartIndex = None,
    count: Count = None,
    attributes: Attributes = None,
    excluded_attributes: Annotated[str | None, Query(alias="excludedAttributes", max_length=2048)] = None,
) -> JSONResponse:
    """SCIM: groups provisioned by this connection (filter, startIndex, count)."""
    start, limit = paging(start_index, count)
    groups, total = await scim_service.list_groups(session, connection, filter, start, limit)
    found = await _groups(request, session, groups, attributes, excluded_attributes)
    return scim(list_response(found, total, start))


@router.post("/Groups")
async def create_group(request: Request, session: SessionDep, connection: ScimToken) -> JSONResponse:
    """SCIM: provision a group."""
    group = await scim_service.create_group(session, connection, await read_body(request))
    return _created(request, (await _groups(request, session, [group]))[0])


@router.get("/Groups/{group_id}")
async def get_group(
    request: Request,
    session: SessionDep,
    connection: ScimToken,
    group_id: str,
    attributes: Attributes = None,
    excluded_attributes: Annotated[str | None, Query(alias="excludedAttributes", max_length=2048)] = None,
) -> JSONResponse:
    """SCIM: one group with its members."""
    group = await scim_service.get_group(session, connection, group_id)
    return scim((await _groups(request, session, [group], attributes, excluded_attributes))[0])


@router.put("/Groups/{group_id}")
async def replace_group(
    request: Request, session: SessionDep, connection: ScimToken, group_id: str
) -> JSONResponse:
    """SCIM: replace a group (its members too)."""
    group = await scim_service.replace_group(session, connection, group_id, await read_body(request))
    await session.refresh(group)
    return scim((await _groups(request, session, [group]))[0])


@router.patch("/Groups/{group_id}")
async def patch_group(
    request: Request, session: SessionDep, connection: ScimToken, group_id: str
) -> JSONResponse:
    """SCIM: change a group (members added, removed or replaced)."""
    group = await scim_service.patch_group(session, connection, group_id, await read_body(request))
    await session.refresh(group)
    return scim((await _groups(request, session, [group]))[0])


@router.delete("/Groups/{group_id}", status_code=204)
async def delete_group(session: SessionDep, connection: ScimToken, group_id: str) -> Response:
    """SCIM: delete a group."""
    await scim_service.delete_group(session, connection, group_id)
    return Response(status_code=204)


# ------------------------------------------------------------------------------------- the admin API
api_router = APIRouter(tags=["identity"])


class ScimTokenOut(BaseModel):
    connection_id: uuid.UUID
    token: str = Field(description="The bearer token: shown this once, store it in the identity provider")
    prefix: str = Field(description="Its first characters, shown in Corral to recognise it")
    created_at: datetime
    scim_url: str = Field(description="The tenant URL to give the identity provider")


class ScimStatus(BaseModel):
    connection_id: uuid.UUID
    scim_enabled: bool
    prefix: str | None
    created_at: datetime | None
    last_request_at: datetime | None
    scim_url: str


def scim_url(settings: Any) -> str:
    return str(settings.base_url).rstrip("/") + PREFIX


def scim_status(connection: IdentityConnection, settings: Any) -> ScimStatus:
    return ScimStatus(
        connection_id=connection.id,
        scim_enabled=connection.scim_enabled,
        prefix=connection.scim_token_prefix,
        created_at=connection.scim_token_created_at,
        last_request_at=connection.scim_last_request_at,
        scim_url=scim_url(settings),
    )


@api_router.post(
    "/identity-connections/{connection_id:uuid}/scim-token",
    response_model=ScimTokenOut,
    status_code=201,
    responses={404: {"description": "Not found"}},
)
async def issue_scim_token(
    session: SessionDep, settings: SettingsDep, _: SettingsWrite, connection_id: uuid.UUID
) -> ScimTokenOut:
    """Issue the connection's SCIM token (shown once; replaces the previous one) and turn SCIM on."""
    issued = await scim_service.issue_token(session, connection_id)
    connection = issued.connection
    assert connection.scim_token_prefix is not None and connection.scim_token_created_at is not None
    return ScimTokenOut(
        connection_id=connection.id,
        token=issued.token,
        prefix=connection.scim_token_prefix,
        created_at=connection.scim_token_created_at,
        scim_url=scim_url(settings),
    )


@api_router.delete(
    "/identity-connections/{connection_id:uuid}/scim-token",
    response_model=ScimStatus,
    responses={404: {"description": "Not found"}},
)
async def revoke_scim_token(
    session: SessionDep, settings: SettingsDep, _: SettingsWrite, connection_id: uuid.UUID
) -> ScimStatus:
    """Revoke the connection's SCIM token and turn SCIM off (provisioned users and groups stay)."""
    return scim_status(await scim_service.revoke_token(session, connection_id), settings)


@api_router.get(
    "/identity-connections/{connection_id:uuid}/scim",
    response_model=ScimStatus,
    responses={404: {"description": "Not found"}},
)
async def get_scim_status(
    session: SessionDep,
    settings: SettingsDep,
    _: Annotated[Principal, Depends(Require(P.settings_read))],
    connection_id: uuid.UUID,
) -> ScimStatus:
    """SCIM provisioning of a connection: on or off, the token's prefix, the last request."""
    return scim_status(await scim_service.connection(session, connection_id), settings)
