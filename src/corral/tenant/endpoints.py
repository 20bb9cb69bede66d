from __future__ import annotations

from typing import Annotated

from fastapi import Depends

from corral.auth.dependencies import Require
from corral.kit.db import SessionDep
from corral.kit.routing import APIRouter
from corral.rbac.permissions import P
from corral.rbac.principal import Principal
from corral.tenant.schemas import TenantSettingsOut, TenantSettingsUpdate
from corral.tenant.service import tenant_service

router = APIRouter(prefix="/settings", tags=["settings"])


@router.get("", response_model=TenantSettingsOut)
async def get_settings(
    session: SessionDep, _: Annotated[Principal, Depends(Require(P.settings_read))]
) -> TenantSettingsOut:
    return TenantSettingsOut.model_validate(await tenant_service.get(session))


@router.patch("", response_model=TenantSettingsOut)
async def update_settings(
    data: TenantSettingsUpdate,
    session: SessionDep,
    _: Annotated[Principal, Depends(Require(P.settings_write))],
) -> TenantSettingsOut:
    return TenantSettingsOut.model_validate(await tenant_service.update(session, data))
