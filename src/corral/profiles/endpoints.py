"""/api/v1 for configuration profiles and the settings catalog."""

from __future__ import annotations

import uuid
from typing import Annotated, Any

from fastapi import Depends, Query, Response, status
from fastapi.responses import PlainTextResponse
from pydantic import BaseModel

from corral.auth.dependencies import Require
from corral.kit.csvexport import to_csv
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
from corral.profiles.status import (
    DeviceState,
    ProfileStatus,
    ProfileStatusDevicePage,
    profile_status,
    profile_status_devices,
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


@router.get(
    "/configuration-profiles/{profile_id:uuid}/status", response_model=ProfileStatus, responses=NOT_FOUND
)
async def configuration_profile_status(
    profile_id: uuid.UUID, session: SessionDep, principal: ProfilesRead
) -> ProfileStatus:
    """Devices the profile reaches by state at its current version (succeeded, error, conflict, not
    applicable, pending) and per setting, within your device scope."""
    profile = await profile_service.get(session, principal, profile_id)
    return await profile_status(session, principal, profile)


@router.get(
    "/configuration-profiles/{profile_id:uuid}/devices",
    response_model=ProfileStatusDevicePage,
    responses=NOT_FOUND,
)
async def configuration_profile_devices(
    profile_id: uuid.UUID,
    session: SessionDep,
    principal: ProfilesRead,
    state: DeviceState | None = None,
    setting_id: Annotated[str | None, Query(max_length=64)] = None,
) -> ProfileStatusDevicePage:
    """The devices behind a count of the status report (by state, optionally for one setting; first 500)."""
    profile = await profile_service.get(session, principal, profile_id)
    return await profile_status_devices(session, principal, profile, state, setting_id)


@router.get(
    "/configuration-profiles/{profile_id:uuid}/devices.csv",
    response_class=PlainTextResponse,
    responses={**NOT_FOUND, 200: {"content": {"text/csv": {}}}},
)
async def configuration_profile_devices_csv(
    profile_id: uuid.UUID,
    session: SessionDep,
    principal: ProfilesRead,
    state: DeviceState | None = None,
    setting_id: Annotated[str | None, Query(max_length=64)] = None,
) -> Response:
    """The same as CSV (up to 100,000 devices)."""
    profile = await profile_service.get(session, principal, profile_id)
    page = await profile_status_devices(session, principal, profile, state, setting_id, limit=100_000)
    rows = [
        [
            str(d.device_id),
            d.device_name,
            d.serial_number,
            d.state,
            d.message,
            d.reported_at.isoformat() if d.reported_at else "",
        ]
        for d in page.items
    ]
    header = ["device_id", "device_name", "serial_number", "state", "message", "reported_at"]
    return Response(
        to_csv(header, rows),
        media_type="text/csv",
        headers={"Content-Disposition": f'attachment; filename="profile-{profile_id}.csv"'},
    )
