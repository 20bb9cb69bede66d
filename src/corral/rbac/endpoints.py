from __future__ import annotations

import uuid
from typing import Annotated, Any

from fastapi import Depends, Response, status

from corral.auth.dependencies import Require
from corral.kit.db import SessionDep
from corral.kit.routing import APIRouter
from corral.rbac.permissions import DESCRIPTIONS, P
from corral.rbac.principal import Principal
from corral.rbac.schemas import (
    PermissionOut,
    RoleAssignmentCreate,
    RoleAssignmentMembersUpdate,
    RoleAssignmentOut,
    RoleCreate,
    RoleOut,
    RoleUpdate,
    ScopeTagCreate,
    ScopeTagOut,
)
from corral.rbac.service import assignment_out, rbac_service, role_out

router = APIRouter(tags=["roles"])

RolesRead = Annotated[Principal, Depends(Require(P.roles_read))]
RolesWrite = Annotated[Principal, Depends(Require(P.roles_write))]
RolesAssign = Annotated[Principal, Depends(Require(P.roles_assign))]
TagsRead = Annotated[Principal, Depends(Require(P.scope_tags_read))]
TagsWrite = Annotated[Principal, Depends(Require(P.scope_tags_write))]

NOT_FOUND: dict[int | str, dict[str, Any]] = {404: {"description": "Not found"}}


@router.get("/permissions", response_model=list[PermissionOut])
async def list_permissions(_: RolesRead) -> list[PermissionOut]:
    return [PermissionOut(name=p.value, description=DESCRIPTIONS[p]) for p in P]


@router.get("/roles", response_model=list[RoleOut])
async def list_roles(session: SessionDep, _: RolesRead) -> list[RoleOut]:
    return [role_out(r) for r in await rbac_service.list_roles(session)]


@router.post(
    "/roles",
    response_model=RoleOut,
    status_code=status.HTTP_201_CREATED,
    responses={409: {"description": "Name taken"}},
)
async def create_role(data: RoleCreate, session: SessionDep, principal: RolesWrite) -> RoleOut:
    return role_out(await rbac_service.create_role(session, principal, data))


@router.get("/roles/{role_id:uuid}", response_model=RoleOut, responses=NOT_FOUND)
async def get_role(role_id: uuid.UUID, session: SessionDep, _: RolesRead) -> RoleOut:
    return role_out(await rbac_service.get_role(session, role_id))


@router.patch(
    "/roles/{role_id:uuid}",
    response_model=RoleOut,
    responses={**NOT_FOUND, 409: {"description": "Name taken"}},
)
async def update_role(
    role_id: uuid.UUID, data: RoleUpdate, session: SessionDep, principal: RolesWrite
) -> RoleOut:
    return role_out(await rbac_service.update_role(session, principal, role_id, data))


@router.delete(
    "/roles/{role_id:uuid}",
    status_code=status.HTTP_204_NO_CONTENT,
    responses={**NOT_FOUND, 409: {"description": "Still assigned"}},
)
async def delete_role(role_id: uuid.UUID, session: SessionDep, principal: RolesWrite) -> Response:
    await rbac_service.delete_role(session, principal, role_id)
    return Response(status_code=status.HTTP_204_NO_CONTENT)


@router.get("/role-assignments", response_model=list[RoleAssignmentOut])
async def list_assignments(
    session: SessionDep, _: RolesRead, role_id: uuid.UUID | None = None
) -> list[RoleAssignmentOut]:
    return [assignment_out(a) for a in await rbac_service.list_assignments(session, role_id)]


@router.post(
    "/role-assignments",
    response_model=RoleAssignmentOut,
    status_code=status.HTTP_201_CREATED,
    responses={404: {"description": "No such role"}},
)
async def create_assignment(
    data: RoleAssignmentCreate, session: SessionDep, principal: RolesAssign
) -> RoleAssignmentOut:
    return assignment_out(await rbac_service.create_assignment(session, principal, data))


@router.get("/role-assignments/{assignment_id:uuid}", response_model=RoleAssignmentOut, responses=NOT_FOUND)
async def get_assignment(assignment_id: uuid.UUID, session: SessionDep, _: RolesRead) -> RoleAssignmentOut:
    return assignment_out(await rbac_service.get_assignment(session, assignment_id))


@router.put(
    "/role-assignments/{assignment_id:uuid}/members",
    response_model=RoleAssignmentOut,
    responses={**NOT_FOUND, 409: {"description": "It would leave no Global administrator"}},
)
async def set_members(
    assignment_id: uuid.UUID, data: RoleAssignmentMembersUpdate, session: SessionDep, principal: RolesAssign
) -> RoleAssignmentOut:
    return assignment_out(await rbac_service.set_members(session, principal, assignment_id, data.member_ids))


@router.delete(
    "/role-assignments/{assignment_id:uuid}",
    status_code=status.HTTP_204_NO_CONTENT,
    responses={**NOT_FOUND, 409: {"description": "It would leave no Global administrator"}},
)
async def delete_assignment(
    assignment_id: uuid.UUID, session: SessionDep, principal: RolesAssign
) -> Response:
    await rbac_service.delete_assignment(session, principal, assignment_id)
    return Response(status_code=status.HTTP_204_NO_CONTENT)


@router.get("/scope-tags", response_model=list[ScopeTagOut])
async def list_scope_tags(session: SessionDep, _: TagsRead) -> list[ScopeTagOut]:
    return [ScopeTagOut.model_validate(t) for t in await rbac_service.list_scope_tags(session)]


@router.post(
    "/scope-tags",
    response_model=ScopeTagOut,
    status_code=status.HTTP_201_CREATED,
    responses={409: {"description": "Name taken"}},
)
async def create_scope_tag(data: ScopeTagCreate, session: SessionDep, _: TagsWrite) -> ScopeTagOut:
    return ScopeTagOut.model_validate(await rbac_service.create_scope_tag(session, data))


@router.delete(
    "/scope-tags/{tag_id:uuid}",
    status_code=status.HTTP_204_NO_CONTENT,
    responses={**NOT_FOUND, 409: {"description": "Still in use"}},
)
async def delete_scope_tag(tag_id: uuid.UUID, session: SessionDep, _: TagsWrite) -> Response:
    await rbac_service.delete_scope_tag(session, tag_id)
    return Response(status_code=status.HTTP_204_NO_CONTENT)
