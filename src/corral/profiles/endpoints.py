"""/api/v1 for configuration profiles and the settings catalog."""

from __future__ import annotations

import uuid
from typing import Annotated, Any

from fastapi import Depends, Query, Response, status
from pydantic import BaseModel

from corral.auth.dependencies import Require
from corral.kit.db import SessionDep
from corral.kit.deps import SettingsDep
from corral.kit.routing import APIRouter
from corral.models import Platform
from corral.profiles.catalog import Mechanism
from corral.profiles.service import (
    ProfileCreate,
    ProfileOut,
    ProfileUpdate,
    ProfileVersionOut,
    profile_out,
    profile_service,
)
from corral.rbac.permissions import P
from corral.rbac.principal import Principal

router = APIRouter(tags=["configuration profiles"])

ProfilesRead = Annotated[Principal, Depends(Require(P.profiles_read))]
ProfilesWrite = Annotated[Principal, Depends(Require(P.profiles_write))]
NOT_FOUND: dict[int | str, dict[str, Any]] = {404: {"description": "Not found"}}
CONFLICT: dict[int | str, dict[str, Any]] = {409: {"description": "Refused: see the problem's detail"}}


class CatalogItem(BaseModel):
    name: str
    type: str
    max_length: int | None
    values: list[str] | None
    required: bool
    secret: bool


class CatalogEntry(BaseModel):
    id: str
    name: str
    description: str
    category: str
    type: str
    minimum: int | None
    maximum: int | None
    max_length: int | None
    values: list[str] | None
    max_items: int | None
    items: list[CatalogItem] | None
    default: Any
    platforms: dict[Platform, Mechanism]


@router.get("/settings-catalog", response_model=list[CatalogEntry])
async def settings_catalog(
    _: ProfilesRead,
    platform: Platform | None = None,
    search: Annotated[str | None, Query(max_length=200)] = None,
    category: Annotated[str | None, Query(max_length=100)] = None,
) -> list[CatalogEntry]:
    """What a configuration profile can set: by platform, name or category, with constraints and how each
    setting reaches each platform."""
    return [
        CatalogEntry.model_validate(s.model_dump())
        for s in profile_service.catalog(platform, search, category)
    ]


@router.get("/configuration-profiles", response_model=list[ProfileOut])
async def list_configuration_profiles(
    session: SessionDep,
    principal: ProfilesRead,
    search: Annotated[str | None, Query(max_length=200)] = None,
    platform: Platform | None = None,
) -> list[ProfileOut]:
    """Configuration profiles you may see (their scope tags), by name."""
    return [
        profile_out(p)
        for p in await profile_service.page(session, principal, search=search, platform=platform)
    ]


@router.post(
    "/configuration-profiles",
    response_model=ProfileOut,
    status_code=status.HTTP_201_CREATED,
    responses=CONFLICT,
)
async def create_configuration_profile(
    data: ProfileCreate, session: SessionDep, settings: SettingsDep, principal: ProfilesWrite
) -> ProfileOut:
    """Create a profile from catalog settings. Values outside their constraints, settings of another platform
    and unknown settings are refused (422) naming the setting; secrets are stored encrypted."""
    return profile_out(await profile_service.create(session, principal, data, settings))


@router.get("/configuration-profiles/{profile_id:uuid}", response_model=ProfileOut, responses=NOT_FOUND)
async def get_configuration_profile(
    profile_id: uuid.UUID, session: SessionDep, principal: ProfilesRead
) -> ProfileOut:
    return profile_out(await profile_service.get(session, principal, profile_id))


@router.patch(
    "/configuration-profiles/{profile_id:uuid}",
    response_model=ProfileOut,
    responses={**NOT_FOUND, **CONFLICT},
)
async def update_configuration_profile(
    profile_id: uuid.UUID,
    data: ProfileUpdate,
    session: SessionDep,
    settings: SettingsDep,
    principal: ProfilesWrite,
) -> ProfileOut:
    """Edit a profile; new settings make a new version and a new desired state for its devices."""
    return profile_out(await profile_service.update(session, principal, profile_id, data, settings))


@router.delete(
    "/configuration-profiles/{profile_id:uuid}", status_code=status.HTTP_204_NO_CONTENT, responses=NOT_FOUND
)
async def delete_configuration_profile(
    profile_id: uuid.UUID, session: SessionDep, principal: ProfilesWrite
) -> Response:
    await profile_service.delete(session, principal, profile_id)
    return Response(status_code=status.HTTP_204_NO_CONTENT)


@router.get(
    "/configuration-profiles/{profile_id:uuid}/versions",
    response_model=list[ProfileVersionOut],
    responses=NOT_FOUND,
)
async def configuration_profile_versions(
    profile_id: uuid.UUID, session: SessionDep, principal: ProfilesRead
) -> list[ProfileVersionOut]:
    """Every version of the profile's settings, newest first (secrets redacted)."""
    return await profile_service.versions(session, principal, profile_id)
