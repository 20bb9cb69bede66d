"""/api/v1: assignments of compliance policies and configuration profiles, assignment filters, reach previews,
a device's targets and why it gets (or misses) an object."""

from __future__ import annotations

import uuid
from typing import Annotated, Any

from fastapi import Depends, Query, Response, status

from corral.assignments.schemas import (
    AssignmentsOut,
    AssignmentsUpdate,
    DeviceTargets,
    Explanation,
    FilterCreate,
    FilterDetail,
    FilterOut,
    FilterPreviewOut,
    FilterPreviewRequest,
    FilterUpdate,
    ReachPreviewOut,
    ReachPreviewRequest,
)
from corral.assignments.service import assignment_service
from corral.auth.dependencies import Require
from corral.kit.db import SessionDep
from corral.kit.routing import APIRouter
from corral.models import AssignableKind, Platform
from corral.rbac.permissions import P
from corral.rbac.principal import Principal

router = APIRouter(tags=["assignments"])

FiltersRead = Annotated[Principal, Depends(Require(P.filters_read))]
FiltersWrite = Annotated[Principal, Depends(Require(P.filters_write))]
DevicesRead = Annotated[Principal, Depends(Require(P.devices_read))]
FiltersAndDevicesRead = Annotated[Principal, Depends(Require(P.filters_read, P.devices_read))]
NOT_FOUND: dict[int | str, dict[str, Any]] = {404: {"description": "Not found"}}
CONFLICT: dict[int | str, dict[str, Any]] = {409: {"description": "Refused: see the problem's detail"}}


# ---------------------------------------------------------------------------------------------- filters
@router.get("/assignment-filters", response_model=list[FilterOut])
async def list_assignment_filters(
    session: SessionDep,
    principal: FiltersRead,
    search: Annotated[str | None, Query(max_length=200)] = None,
    platform: Platform | None = None,
) -> list[FilterOut]:
    """Filters you may see, by name."""
    return await assignment_service.filters(session, principal, search, platform)


@router.post(
    "/assignment-filters",
    response_model=FilterDetail,
    status_code=status.HTTP_201_CREATED,
    responses=CONFLICT,
)
async def create_assignment_filter(
    data: FilterCreate, session: SessionDep, principal: FiltersWrite
) -> FilterDetail:
    """Create a filter: a rule over device properties, in the dynamic-group rule language.

    A rule that does not parse is refused (422) with the position of the mistake."""
    item = await assignment_service.create_filter(session, principal, data)
    return await assignment_service.filter_detail(session, principal, item)


@router.post("/assignment-filters/preview", response_model=FilterPreviewOut)
async def preview_assignment_filter(
    data: FilterPreviewRequest, session: SessionDep, principal: FiltersAndDevicesRead
) -> FilterPreviewOut:
    """The active devices of the platform (in your scope) a rule matches, without saving anything."""
    return await assignment_service.preview_filter(session, principal, data)


@router.get("/assignment-filters/{filter_id:uuid}", response_model=FilterDetail, responses=NOT_FOUND)
async def get_assignment_filter(
    filter_id: uuid.UUID, session: SessionDep, principal: FiltersRead
) -> FilterDetail:
    """A filter, with the objects whose assignments use it."""
    item = await assignment_service.get_filter(session, principal, filter_id)
    return await assignment_service.filter_detail(session, principal, item)


@router.patch(
    "/assignment-filters/{filter_id:uuid}", response_model=FilterDetail, responses={**NOT_FOUND, **CONFLICT}
)
async def update_assignment_filter(
    filter_id: uuid.UUID, data: FilterUpdate, session: SessionDep, principal: FiltersWrite
) -> FilterDetail:
    """Edit a filter; a new rule recomputes the targets of every object whose assignments use it."""
    item = await assignment_service.update_filter(session, principal, filter_id, data)
    return await assignment_service.filter_detail(session, principal, item)


@router.delete(
    "/assignment-filters/{filter_id:uuid}",
    status_code=status.HTTP_204_NO_CONTENT,
    responses={**NOT_FOUND, **CONFLICT},
)
async def delete_assignment_filter(
    filter_id: uuid.UUID, session: SessionDep, principal: FiltersWrite
) -> Response:
    """Delete a filter no assignment uses (409 names the objects that do)."""
    await assignment_service.delete_filter(session, principal, filter_id)
    return Response(status_code=status.HTTP_204_NO_CONTENT)


# ------------------------------------------------------------------------------------------ assignments
@router.post("/assignments/preview", response_model=ReachPreviewOut)
async def preview_assignments(
    data: ReachPreviewRequest, session: SessionDep, principal: DevicesRead
) -> ReachPreviewOut:
    """How many devices (in your scope) these assignments would reach for an object of the platform."""
    return await assignment_service.preview(session, principal, data)


ComplianceRead = Annotated[Principal, Depends(Require(P.compliance_read))]
ComplianceAssign = Annotated[Principal, Depends(Require(P.compliance_assign))]
ProfilesRead = Annotated[Principal, Depends(Require(P.profiles_read))]
ProfilesAssign = Annotated[Principal, Depends(Require(P.profiles_assign))]
POLICY, PROFILE = AssignableKind.compliance_policy, AssignableKind.configuration_profile


@router.get(
    "/compliance-policies/{policy_id:uuid}/assignments", response_model=AssignmentsOut, responses=NOT_FOUND
)
async def get_compliance_policy_assignments(
    policy_id: uuid.UUID, session: SessionDep, principal: ComplianceRead
) -> AssignmentsOut:
    """The compliance policy's assignments and how many devices it reaches now."""
    obj = await assignment_service.get_object(session, principal, policy_id, POLICY)
    return await assignment_service.assignments_out(session, principal, obj)


@router.put(
    "/compliance-policies/{policy_id:uuid}/assignments", response_model=AssignmentsOut, responses=NOT_FOUND
)
async def set_compliance_policy_assignments(
    policy_id: uuid.UUID, data: AssignmentsUpdate, session: SessionDep, principal: ComplianceAssign
) -> AssignmentsOut:
    """Replace the compliance policy's assignments: groups in or out, all devices or users, filters.

    Its targets are recomputed at once; the old and new lists are audited."""
    obj = await assignment_service.get_object(session, principal, policy_id, POLICY, for_update=True)
    return await assignment_service.replace(session, principal, obj, data.assignments)


@router.get(
    "/configuration-profiles/{profile_id:uuid}/assignments",
    response_model=AssignmentsOut,
    responses=NOT_FOUND,
)
async def get_configuration_profile_assignments(
    profile_id: uuid.UUID, session: SessionDep, principal: ProfilesRead
) -> AssignmentsOut:
    """The configuration profile's assignments and how many devices it reaches now."""
    obj = await assignment_service.get_object(session, principal, profile_id, PROFILE)
    return await assignment_service.assignments_out(session, principal, obj)


@router.put(
    "/configuration-profiles/{profile_id:uuid}/assignments",
    response_model=AssignmentsOut,
    responses=NOT_FOUND,
)
async def set_configuration_profile_assignments(
    profile_id: uuid.UUID, data: AssignmentsUpdate, session: SessionDep, principal: ProfilesAssign
) -> AssignmentsOut:
    """Replace the configuration profile's assignments: groups in or out, all devices or users, filters.

    Its targets are recomputed at once; the old and new lists are audited."""
    obj = await assignment_service.get_object(session, principal, profile_id, PROFILE, for_update=True)
    return await assignment_service.replace(session, principal, obj, data.assignments)


# ---------------------------------------------------------------------------------------- device side
@router.get("/devices/{device_id:uuid}/assignments", response_model=DeviceTargets, responses=NOT_FOUND)
async def list_device_targets(
    device_id: uuid.UUID, session: SessionDep, principal: DevicesRead
) -> DeviceTargets:
    """The compliance policies and configuration profiles reaching the device, and its desired-state version.

    Only the objects you may see are listed."""
    return await assignment_service.device_targets(session, principal, device_id)


@router.get(
    "/devices/{device_id:uuid}/assignments/{object_id:uuid}/explain",
    response_model=Explanation,
    responses=NOT_FOUND,
)
async def explain_device_target(
    device_id: uuid.UUID, object_id: uuid.UUID, session: SessionDep, principal: DevicesRead
) -> Explanation:
    """Why the object reaches the device or not: each assignment, its group chain, filter and verdict.

    For each assignment: whether its target reaches the device, through which chain of nested groups or
    which primary user; its filter's result on the device's property values; and the verdict (exclusion
    wins)."""
    return await assignment_service.explain(session, principal, device_id, object_id)
