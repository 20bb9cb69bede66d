"""/api/v1/groups: assigned and dynamic groups, their members, rule preview and explanation."""

from __future__ import annotations

import uuid
from typing import Annotated, Any

from fastapi import Depends, Query, Response, status
from sqlalchemy.ext.asyncio import AsyncSession

from corral.auth.dependencies import Require
from corral.groups.auth import GroupsRead, GroupsWrite
from corral.groups.membership import Evaluation
from corral.groups.schemas import (
    EvaluationOut,
    ExplainOut,
    ExplainRequest,
    GroupCreate,
    GroupDetail,
    GroupFilter,
    GroupMembership,
    GroupPage,
    GroupSaved,
    GroupUpdate,
    MemberFilter,
    MemberOut,
    MemberPage,
    MemberRef,
    PreviewOut,
    PreviewRequest,
)
from corral.groups.service import group_service
from corral.kit.db import SessionDep
from corral.kit.routing import APIRouter
from corral.models import Group
from corral.rbac.permissions import P
from corral.rbac.principal import Principal

router = APIRouter(tags=["groups"])

GroupsAndUsersRead = Annotated[Principal, Depends(Require(P.groups_read, P.users_read))]
NOT_FOUND: dict[int | str, dict[str, Any]] = {404: {"description": "Not found"}}
CONFLICT: dict[int | str, dict[str, Any]] = {409: {"description": "Refused: see the problem's detail"}}
RULE_ERROR: dict[int | str, dict[str, Any]] = {
    422: {"description": "Invalid rule: errors[0] has message, offset, line, column, length and excerpt"}
}


def _evaluation_out(group: Group, evaluation: Evaluation | None) -> EvaluationOut | None:
    if evaluation is None or group.evaluated_at is None:
        return None
    return EvaluationOut(
        group_id=group.id,
        added=evaluation.added,
        removed=evaluation.removed,
        members=evaluation.members,
        milliseconds=round(evaluation.milliseconds, 1),
        evaluated_at=group.evaluated_at,
    )


async def _saved(session: AsyncSession, group: Group, evaluation: Evaluation | None) -> GroupSaved:
    detail = await group_service.detail(session, group)
    return GroupSaved(**detail.model_dump(), evaluation=_evaluation_out(group, evaluation))


@router.get("/groups", response_model=GroupPage)
async def list_groups(
    session: SessionDep, _: GroupsRead, filters: Annotated[GroupFilter, Query()]
) -> GroupPage:
    """Groups: search by name, filter by membership type, kind and source; keyset pagination."""
    items, next_cursor, total = await group_service.page(session, filters)
    return GroupPage(items=items, next_cursor=next_cursor, total=total)


@router.post("/groups", response_model=GroupSaved, status_code=status.HTTP_201_CREATED, responses=RULE_ERROR)
async def create_group(data: GroupCreate, session: SessionDep, _: GroupsWrite) -> GroupSaved:
    """Create an assigned group, or a dynamic one (its members are computed at once)."""
    saved = await group_service.create(session, data)
    return await _saved(session, saved.group, saved.evaluation)


@router.post("/groups/preview", response_model=PreviewOut, responses=RULE_ERROR)
async def preview_rule(data: PreviewRequest, session: SessionDep, principal: GroupsRead) -> PreviewOut:
    """Which members would this rule have? Count and first members, within your read scope; nothing saved."""
    return await group_service.preview(session, principal, data)


@router.post("/groups/preview/explain", response_model=ExplainOut, responses={**RULE_ERROR, **NOT_FOUND})
async def explain_rule(data: ExplainRequest, session: SessionDep, principal: GroupsRead) -> ExplainOut:
    """Does this device (or user) match the rule, and why? Every clause with the value it saw."""
    return await group_service.explain(session, principal, data)


@router.get("/groups/{group_id:uuid}", response_model=GroupDetail, responses=NOT_FOUND)
async def get_group(group_id: uuid.UUID, session: SessionDep, _: GroupsRead) -> GroupDetail:
    """A group with its direct member counts, the groups it is nested in and the role assignments using it."""
    return await group_service.detail(session, await group_service.get(session, group_id))


@router.patch("/groups/{group_id:uuid}", response_model=GroupSaved, responses={**NOT_FOUND, **RULE_ERROR})
async def update_group(
    group_id: uuid.UUID, data: GroupUpdate, session: SessionDep, principal: GroupsWrite
) -> GroupSaved:
    """Rename, describe, or change a dynamic group's rule (its members are computed again)."""
    saved = await group_service.update(session, principal, group_id, data)
    return await _saved(session, saved.group, saved.evaluation)


@router.delete(
    "/groups/{group_id:uuid}", status_code=status.HTTP_204_NO_CONTENT, responses={**NOT_FOUND, **CONFLICT}
)
async def delete_group(group_id: uuid.UUID, session: SessionDep, _: GroupsWrite) -> Response:
    """Delete a group; refused while a role assignment or a policy's assignment uses it."""
    await group_service.delete(session, group_id)
    return Response(status_code=status.HTTP_204_NO_CONTENT)


@router.post(
    "/groups/{group_id:uuid}/evaluate", response_model=EvaluationOut, responses={**NOT_FOUND, **CONFLICT}
)
async def evaluate_group(group_id: uuid.UUID, session: SessionDep, _: GroupsWrite) -> EvaluationOut:
    """Compute a dynamic group's members again from its rule, in full."""
    return await group_service.evaluate(session, group_id)


@router.get("/groups/{group_id:uuid}/members", response_model=MemberPage, responses=NOT_FOUND)
async def list_members(
    group_id: uuid.UUID,
    session: SessionDep,
    principal: GroupsRead,
    filters: Annotated[MemberFilter, Query()],
) -> MemberPage:
    """Members, paged: direct (nested groups, users, devices) or, with transitive=true, through nesting too.

    Devices outside your devices:read scope, and users without users:read, are only counted (hidden)."""
    return await group_service.members(session, principal, group_id, filters)


@router.post(
    "/groups/{group_id:uuid}/members",
    response_model=MemberOut,
    status_code=status.HTTP_201_CREATED,
    responses={**NOT_FOUND, **CONFLICT, 200: {"description": "Already a member"}},
)
async def add_member(
    group_id: uuid.UUID, data: MemberRef, session: SessionDep, principal: GroupsWrite
) -> Response:
    """Add a user, device or nested group to an assigned group (a nesting cycle is refused)."""
    member, added = await group_service.add_member(session, principal, group_id, data)
    return Response(
        member.model_dump_json(),
        status_code=status.HTTP_201_CREATED if added else status.HTTP_200_OK,
        media_type="application/json",
    )


@router.delete(
    "/groups/{group_id:uuid}/members",
    status_code=status.HTTP_204_NO_CONTENT,
    responses={**NOT_FOUND, **CONFLICT},
)
async def remove_member(
    group_id: uuid.UUID, data: MemberRef, session: SessionDep, principal: GroupsWrite
) -> Response:
    """Remove a direct member from an assigned group."""
    await group_service.remove_member(session, principal, group_id, data)
    return Response(status_code=status.HTTP_204_NO_CONTENT)


@router.get("/devices/{device_id:uuid}/groups", response_model=list[GroupMembership], responses=NOT_FOUND)
async def device_groups(
    device_id: uuid.UUID, session: SessionDep, principal: GroupsRead
) -> list[GroupMembership]:
    """The groups a device belongs to, directly or through nested groups."""
    return await group_service.groups_of_device(session, principal, device_id)


@router.get("/users/{user_id:uuid}/groups", response_model=list[GroupMembership], responses=NOT_FOUND)
async def user_groups(
    user_id: uuid.UUID, session: SessionDep, principal: GroupsAndUsersRead
) -> list[GroupMembership]:
    """The groups a user belongs to, directly or through nested groups (404 outside your users:read scope)."""
    return await group_service.groups_of_user(session, principal, user_id)
