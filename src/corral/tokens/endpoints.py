from __future__ import annotations

import uuid
from typing import Annotated

from fastapi import Depends, status

from corral.auth.dependencies import Authenticated, Require
from corral.errors import Forbidden
from corral.kit.db import SessionDep
from corral.kit.routing import APIRouter
from corral.rbac.permissions import P
from corral.rbac.principal import Principal
from corral.tokens.schemas import ApiTokenCreate, ApiTokenCreated, ApiTokenOut, ApiTokenOwnedOut
from corral.tokens.service import token_service
from corral.users.service import user_service

router = APIRouter(prefix="/api-tokens", tags=["api tokens"])

SignedIn = Annotated[Principal, Depends(Authenticated())]
ManageTokens = Annotated[Principal, Depends(Require(P.api_tokens_manage))]


@router.get("", response_model=list[ApiTokenOut])
async def list_own_tokens(session: SessionDep, principal: SignedIn) -> list[ApiTokenOut]:
    """Your own API tokens (self-service; only administrators can create them)."""
    return [ApiTokenOut.model_validate(t) for t in await token_service.list_own(session, principal.user_id)]


@router.get("/all", response_model=list[ApiTokenOwnedOut])
async def list_all_tokens(session: SessionDep, _: ManageTokens) -> list[ApiTokenOwnedOut]:
    return [
        ApiTokenOwnedOut(**ApiTokenOut.model_validate(t).model_dump(), owner_user_principal_name=upn)
        for t, upn in await token_service.list_all(session)
    ]


@router.post("", response_model=ApiTokenCreated, status_code=status.HTTP_201_CREATED)
async def create_token(data: ApiTokenCreate, session: SessionDep, principal: SignedIn) -> ApiTokenCreated:
    """Create an API token acting as you: administrators only (a token carries its owner's permissions)."""
    if principal.token_id is not None:
        raise Forbidden("An API token cannot create API tokens; sign in to the admin center instead.")
    if not principal.is_admin:
        raise Forbidden("Only administrators (accounts holding a role) can create API tokens.")
    owner = await user_service.get(session, principal.user_id)
    api_token, token = await token_service.create(
        session, owner, data, owner_permissions=principal.permissions
    )
    return ApiTokenCreated(token=token, api_token=ApiTokenOut.model_validate(api_token))


@router.delete(
    "/{token_id:uuid}",
    response_model=ApiTokenOut,
    responses={404: {"description": "Not found"}, 409: {"description": "Already revoked"}},
)
async def revoke_token(token_id: uuid.UUID, session: SessionDep, principal: SignedIn) -> ApiTokenOut:
    """Revoke one of your tokens, or anyone's with api_tokens:manage."""
    api_token = await token_service.revoke(
        session, principal, token_id, may_manage_others=principal.has(P.api_tokens_manage)
    )
    return ApiTokenOut.model_validate(api_token)
