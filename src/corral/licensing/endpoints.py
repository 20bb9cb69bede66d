from __future__ import annotations

import uuid
from typing import Annotated, Any

from fastapi import Depends, Response, status

from corral.auth.dependencies import Require
from corral.kit.db import SessionDep
from corral.kit.routing import APIRouter
from corral.licensing.schemas import (
    LicenceCreate,
    LicenceHolderOut,
    LicenceOut,
    LicenceUpdate,
    UserLicenceOut,
)
from corral.licensing.service import licence_service
from corral.rbac.permissions import P
from corral.rbac.principal import Principal
from corral.users.service import user_service

router = APIRouter(tags=["licences"])

LicencesRead = Annotated[Principal, Depends(Require(P.licences_read))]
LicencesWrite = Annotated[Principal, Depends(Require(P.licences_write))]
NOT_FOUND: dict[int | str, dict[str, Any]] = {404: {"description": "Not found"}}
CONFLICT: dict[int | str, dict[str, Any]] = {409: {"description": "Name or SKU taken, or seats in use"}}


@router.get("/licences", response_model=list[LicenceOut])
async def list_licences(session: SessionDep, _: LicencesRead) -> list[LicenceOut]:
    return await licence_service.list_all(session)


@router.post("/licences", response_model=LicenceOut, status_code=status.HTTP_201_CREATED, responses=CONFLICT)
async def create_licence(data: LicenceCreate, session: SessionDep, _: LicencesWrite) -> LicenceOut:
    return await licence_service.create(session, data)


@router.get("/licences/{licence_id:uuid}", response_model=LicenceOut, responses=NOT_FOUND)
async def get_licence(licence_id: uuid.UUID, session: SessionDep, _: LicencesRead) -> LicenceOut:
    return await licence_service.get_out(session, licence_id)


@router.patch("/licences/{licence_id:uuid}", response_model=LicenceOut, responses={**NOT_FOUND, **CONFLICT})
async def update_licence(
    licence_id: uuid.UUID, data: LicenceUpdate, session: SessionDep, _: LicencesWrite
) -> LicenceOut:
    """Update a licence; seats cannot go below the number of users holding it (409)."""
    return await licence_service.update(session, licence_id, data)


@router.delete(
    "/licences/{licence_id:uuid}",
    status_code=status.HTTP_204_NO_CONTENT,
    responses={**NOT_FOUND, 409: {"description": "Still held by users"}},
)
async def delete_licence(licence_id: uuid.UUID, session: SessionDep, _: LicencesWrite) -> Response:
    await licence_service.delete(session, licence_id)
    return Response(status_code=status.HTTP_204_NO_CONTENT)


@router.get("/licences/{licence_id:uuid}/users", response_model=list[LicenceHolderOut], responses=NOT_FOUND)
async def licence_holders(
    licence_id: uuid.UUID, session: SessionDep, principal: LicencesRead
) -> list[LicenceHolderOut]:
    """The licence's holders within your users:read scope."""
    return await licence_service.holders(session, principal, licence_id)


@router.get("/users/{user_id:uuid}/licences", response_model=list[UserLicenceOut], responses=NOT_FOUND)
async def user_licences(
    user_id: uuid.UUID, session: SessionDep, principal: LicencesRead
) -> list[UserLicenceOut]:
    user = await user_service.get_for(session, principal, user_id, P.licences_read)
    return await licence_service.of_user(session, user.id)


@router.post(
    "/users/{user_id:uuid}/licences/{licence_id:uuid}",
    response_model=UserLicenceOut,
    status_code=status.HTTP_201_CREATED,
    responses={
        200: {"description": "The user already held it", "model": UserLicenceOut},
        **NOT_FOUND,
        409: {"description": "No seat left"},
    },
)
async def assign_licence(
    user_id: uuid.UUID,
    licence_id: uuid.UUID,
    session: SessionDep,
    principal: LicencesWrite,
    response: Response,
) -> UserLicenceOut:
    """Give a user a licence seat (201; 200 if already held; 409 when no seat is left)."""
    user = await user_service.get_for(session, principal, user_id, P.licences_write)
    held, created = await licence_service.assign(session, principal, user, licence_id)
    if not created:
        response.status_code = status.HTTP_200_OK
    return held


@router.delete(
    "/users/{user_id:uuid}/licences/{licence_id:uuid}",
    status_code=status.HTTP_204_NO_CONTENT,
    responses=NOT_FOUND,
)
async def unassign_licence(
    user_id: uuid.UUID, licence_id: uuid.UUID, session: SessionDep, principal: LicencesWrite
) -> Response:
    user = await user_service.get_for(session, principal, user_id, P.licences_write)
    await licence_service.unassign(session, user, licence_id)
    return Response(status_code=status.HTTP_204_NO_CONTENT)
