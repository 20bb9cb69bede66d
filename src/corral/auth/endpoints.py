from __future__ import annotations

import uuid

from fastapi import APIRouter
from pydantic import BaseModel

from corral.auth.dependencies import SignedIn

router = APIRouter(tags=["me"])


class ScopeOut(BaseModel):
    all: bool
    scope_tag_ids: list[uuid.UUID]


class MeOut(BaseModel):
    user_id: uuid.UUID
    user_principal_name: str
    email: str | None
    display_name: str
    via_token: bool
    permissions: dict[str, ScopeOut]


@router.get("/me", response_model=MeOut)
async def me(principal: SignedIn) -> MeOut:
    """Who the caller is and what they may do, where."""
    return MeOut(
        user_id=principal.user_id,
        user_principal_name=principal.user_principal_name,
        email=principal.email,
        display_name=principal.display_name,
        via_token=principal.token_id is not None,
        permissions={
            p.value: ScopeOut(all=s.all, scope_tag_ids=sorted(s.tag_ids))
            for p, s in sorted(principal.scopes().items())
        },
    )
