from __future__ import annotations

import uuid
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Query, status

from corral.auth.dependencies import Require
from corral.errors import Forbidden
from corral.kit.db import SessionDep
from corral.models import User
from corral.rbac.permissions import P
from corral.rbac.principal import Principal
from corral.rbac.schemas import EffectiveAccess
from corral.rbac.service import rbac_service
from corral.users.schemas import AdminOut, PasswordReset, UserCreate, UserCreated, UserOut, UserUpdate
from corral.users.service import user_service

router = APIRouter(tags=["users"])

UsersRead = Annotated[Principal, Depends(Require(P.users_read))]
UsersWrite = Annotated[Principal, Depends(Require(P.users_write))]
RolesRead = Annotated[Principal, Depends(Require(P.roles_read))]
NOT_FOUND: dict[int | str, dict[str, Any]] = {404: {"description": "Not found"}}


def user_out(user: User) -> UserOut:
    return UserOut.model_validate(user)


@router.get("/users", response_model=list[UserOut])
async def list_users(
    session: SessionDep, _: UsersRead, search: Annotated[str | None, Query(max_length=200)] = None
) -> list[UserOut]:
    return [user_out(u) for u in await user_service.list_all(session, search)]


@router.post(
    "/users",
    response_model=UserCreated,
    status_code=status.HTTP_201_CREATED,
    responses={409: {"description": "Email taken"}},
)
async def create_user(data: UserCreate, session: SessionDep, principal: UsersWrite) -> UserCreated:
    if data.role_id is not None and not principal.has(P.roles_assign):
        raise Forbidden(
            "Giving a role on creation is a role assignment: it needs the permission roles:assign."
        )
    created = await user_service.create_local(session, data, principal=principal)
    return UserCreated(user=user_out(created.user), one_time_password=created.one_time_password)


@router.get("/users/{user_id}", response_model=UserOut, responses=NOT_FOUND)
async def get_user(user_id: uuid.UUID, session: SessionDep, _: UsersRead) -> UserOut:
    return user_out(await user_service.get(session, user_id))


@router.patch("/users/{user_id}", response_model=UserOut, responses=NOT_FOUND)
async def update_user(
    user_id: uuid.UUID, data: UserUpdate, session: SessionDep, principal: UsersWrite
) -> UserOut:
    return user_out(await user_service.update(session, user_id, data, principal))


@router.post("/users/{user_id}/password-reset", response_model=PasswordReset, responses=NOT_FOUND)
async def reset_password(user_id: uuid.UUID, session: SessionDep, principal: UsersWrite) -> PasswordReset:
    return PasswordReset(one_time_password=await user_service.reset_password(session, principal, user_id))


@router.get("/admins", response_model=list[AdminOut])
async def list_admins(session: SessionDep, _: RolesRead) -> list[AdminOut]:
    return [
        AdminOut(**UserOut.model_validate(user).model_dump(), roles=roles)
        for user, roles in await user_service.list_admins_with_roles(session)
    ]


@router.get("/users/{user_id}/effective-permissions", response_model=EffectiveAccess, responses=NOT_FOUND)
async def effective_permissions(user_id: uuid.UUID, session: SessionDep, _: RolesRead) -> EffectiveAccess:
    """What can this admin do, and where?"""
    return await rbac_service.effective_access(session, await user_service.get(session, user_id))
