"""/api/v1/policy-document: policy as code (the `corral policies export / apply` commands call these)."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import Depends

from corral.auth.dependencies import Require
from corral.kit.db import SessionDep
from corral.kit.deps import SettingsDep
from corral.kit.routing import APIRouter
from corral.policy_code.document import ApplyResult, PolicyDocument
from corral.policy_code.service import policy_code_service
from corral.rbac.permissions import P
from corral.rbac.principal import Principal

router = APIRouter(tags=["policy as code"])

#: Reading any of the kinds is enough to call these; each section needs its own permissions (read to take
#: part, write and assign to change), checked by the services that make the changes.
PoliciesRead = Annotated[
    Principal, Depends(Require(P.filters_read, P.compliance_read, P.profiles_read, any_of=True))
]
REFUSED: dict[int | str, dict[str, Any]] = {
    403: {"description": "A section or a change needs a permission or scope the caller lacks"},
    404: {"description": "An object the document changes is gone"},
    409: {"description": "Refused: see the problem's detail (e.g. a name taken outside your scope)"},
}


@router.get("/policy-document", response_model=PolicyDocument, response_model_exclude_defaults=True)
async def export_policy_document(
    session: SessionDep, settings: SettingsDep, principal: PoliciesRead
) -> PolicyDocument:
    """The tenant's filters, compliance policies and configuration profiles with their assignments, as one
    document in a stable order: groups, filters, scope tags and templates by name, secrets as placeholders
    that keep them. Sections you may not read are left out (applying the document then leaves them alone)."""
    return await policy_code_service.export(session, principal, settings)


@router.post("/policy-document/apply", response_model=ApplyResult, responses=REFUSED)
async def apply_policy_document(
    document: PolicyDocument,
    session: SessionDep,
    settings: SettingsDep,
    principal: PoliciesRead,
    dry_run: bool = False,
) -> ApplyResult:
    """Make the tenant what the document says, in one transaction: objects are matched by name within their
    kind; a section present is the whole truth for its kind (objects it does not name are deleted), a section
    left out is left alone. With ``dry_run`` the changes are listed and nothing is kept. Any refusal names the
    object and field and changes nothing."""
    return await policy_code_service.apply(session, principal, document, settings, dry_run=dry_run)
