from __future__ import annotations

import uuid
from typing import Annotated, Any

from fastapi import Depends, Query, Response, status

from corral.auth.dependencies import Require
from corral.errors import Forbidden
from corral.kit.csvexport import csv_response
from corral.kit.db import SessionDep
from corral.kit.deps import SessionMakerDep, SettingsDep
from corral.kit.routing import APIRouter
from corral.rbac.permissions import P
from corral.rbac.principal import Principal
from corral.rbac.schemas import EffectiveAccess
from corral.rbac.service import rbac_service
from corral.users.schemas import (
    AdminCreate,
    AdminCreated,
    AdminOut,
    PasswordReset,
    UserCreate,
    UserDetail,
    UserDetailLicensed,
    UserFilter,
    UserOut,
    UserPage,
    UserUpdate,
)
from corral.users.service import user_out, user_service

router = APIRouter(tags=["users"])

UsersRead = Annotated[Principal, Depends(Require(P.users_read))]
UsersWrite = Annotated[Principal, Depends(Require(P.users_write))]
RolesRead = Annotated[Principal, Depends(Require(P.roles_read))]
NOT_FOUND: dict[int | str, dict[str, Any]] = {404: {"description": "Not found"}}


@router.get("/users", response_model=UserPage)
async def list_users(
    session: SessionDep, principal: UsersRead, filters: Annotated[UserFilter, Query()]
) -> UserPage:
    """List users (end users and administrators): search, filters, keyset paging.

    Pass ``next_cursor`` back as ``cursor`` for the next page."""
    items, next_cursor, total = await user_service.page(session, principal, filters)
    return UserPage(
        items=[user_out(u) for u in items],
        next_cursor=next_cursor,
        total=total.value,
        total_exact=total.exact,
    )


@router.get(
    "/users/export.csv",
    response_class=Response,
    responses={200: {"content": {"text/csv": {}}, "description": "The filtered users as CSV"}},
)
async def export_users(
    maker: SessionMakerDep, principal: UsersRead, filters: Annotated[UserFilter, Query()]
) -> Response:
    """Export the filtered users as CSV (a licences column only with licences:read).

    Paging parameters are ignored: every match is exported."""
    return csv_response(user_service.export_csv(maker, principal, filters), "corral-users.csv")


@router.post(
    "/users",
    response_model=UserOut,
    status_code=status.HTTP_201_CREATED,
    responses={409: {"description": "User principal name taken"}},
)
async def create_user(data: UserCreate, session: SessionDep, principal: UsersWrite) -> UserOut:
    """Create a local user (no password; administrators: POST /api/v1/admins)."""
    return user_out(await user_service.create_user(session, principal, data))


@router.get("/users/{user_id:uuid}", response_model=UserDetailLicensed | UserDetail, responses=NOT_FOUND)
async def get_user(
    user_id: uuid.UUID, session: SessionDep, settings: SettingsDep, principal: UsersRead
) -> UserDetail:
    """Get a user with their devices, groups and (with licences:read only) licences.

    Devices are those in your devices:read scope; groups need groups:read."""
    user = await user_service.get_for(session, principal, user_id)
    return await user_service.detail(session, settings, principal, user)


@router.patch(
    "/users/{user_id:uuid}",
    response_model=UserOut,
    responses={
        **NOT_FOUND,
        409: {"description": "Name taken; yourself or the last Global administrator; or provisioned"},
    },
)
async def update_user(
    user_id: uuid.UUID, data: UserUpdate, session: SessionDep, principal: UsersWrite
) -> UserOut:
    """Update a user; enabled=false ends their sessions and applies the tenant device policy."""
    return user_out(await user_service.update(session, user_id, data, principal))


@router.delete(
    "/users/{user_id:uuid}",
    status_code=status.HTTP_204_NO_CONTENT,
    responses={**NOT_FOUND, 409: {"description": "An administrator, yourself, or provisioned by SCIM"}},
)
async def delete_user(user_id: uuid.UUID, session: SessionDep, principal: UsersWrite) -> Response:
    """Delete a local or OIDC user (not an administrator, not a SCIM user).

    Their devices stay (without a user) or are retired, per the tenant setting
    ``deprovisioned_user_devices``; enrollment tokens bound to them are revoked."""
    await user_service.delete(session, principal, user_id)
    return Response(status_code=status.HTTP_204_NO_CONTENT)


@router.post(
    "/users/{user_id:uuid}/password-reset",
    response_model=PasswordReset,
    responses={
        **NOT_FOUND,
        409: {"description": "Your own account, or one that signs in through its identity provider"},
    },
)
async def reset_password(user_id: uuid.UUID, session: SessionDep, principal: UsersWrite) -> PasswordReset:
    return PasswordReset(one_time_password=await user_service.reset_password(session, principal, user_id))


@router.get("/admins", response_model=list[AdminOut])
async def list_admins(session: SessionDep, principal: RolesRead) -> list[AdminOut]:
    """Administrators (users holding a role assignment) within your users:read or roles:read scope."""
    return [
        AdminOut(**user_out(user).model_dump(), roles=roles)
        for user, roles in await user_service.list_admins_with_roles(session, principal)
    ]


@router.post(
    "/admins",
    response_model=AdminCreated,
    status_code=status.HTTP_201_CREATED,
    responses={409: {"description": "Email address taken as a sign-in name"}},
)
async def create_admin(data: AdminCreate, session: SessionDep, principal: UsersWrite) -> AdminCreated:
    """Create a local administrator account (email = sign-in name), optionally with a role.

    The password is one-time unless given; giving a role needs roles:assign."""
    if data.role_id is not None and not principal.has(P.roles_assign):
        raise Forbidden(
            "Giving a role on creation is a role assignment: it needs the permission roles:assign."
        )
    created = await user_service.create_admin(session, data, principal=principal)
    return AdminCreated(user=user_out(created.user), one_time_password=created.one_time_password)


@router.get(
    "/users/{user_id:uuid}/effective-permissions", response_model=EffectiveAccess, responses=NOT_FOUND
)
async def effective_permissions(
    user_id: uuid.UUID, session: SessionDep, principal: RolesRead
) -> EffectiveAccess:
    """What can this admin do, and where? 404 for a user outside your users:read and roles:read scope."""
    user = await user_service.get_admin_view(session, principal, user_id)
    return await rbac_service.effective_access(session, user)
