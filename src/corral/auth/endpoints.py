from __future__ import annotations

import uuid

from pydantic import BaseModel, Field

from corral.auth.dependencies import SignedIn
from corral.kit.routing import APIRouter
from corral.rbac.principal import Scope

router = APIRouter(tags=["me"])


class ReachIds(BaseModel):
    scope_tag_ids: list[uuid.UUID] | None = Field(description="None: whatever the scope tags")
    scope_group_ids: list[uuid.UUID] | None = Field(
        description="None: every user and device; else members of these groups (nested ones included)"
    )


class ScopeOut(BaseModel):
    all: bool
    scope_tag_ids: list[uuid.UUID]
    reaches: list[ReachIds] = Field(description="Where the permission applies: anywhere one of these reaches")


def scope_out(scope: Scope) -> ScopeOut:
    reaches = [
        ReachIds(
            scope_tag_ids=None if r.tag_ids is None else sorted(r.tag_ids),
            scope_group_ids=None if r.group_ids is None else sorted(r.group_ids),
        )
        for r in scope.reaches
    ]
    reaches.sort(key=lambda r: (str(r.scope_tag_ids), str(r.scope_group_ids)))
    return ScopeOut(all=scope.all, scope_tag_ids=sorted(scope.tag_ids), reaches=reaches)


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
        permissions={p.value: scope_out(s) for p, s in sorted(principal.scopes().items())},
    )
