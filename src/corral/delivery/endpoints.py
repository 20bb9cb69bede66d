"""/api/v1 for delivery: a device's configuration, applied versus intended."""

from __future__ import annotations

import uuid
from typing import Annotated, Any

from fastapi import Depends

from corral.auth.dependencies import Require
from corral.delivery.service import delivery_service
from corral.kit.db import SessionDep
from corral.kit.deps import SettingsDep
from corral.kit.routing import APIRouter
from corral.rbac.permissions import P
from corral.rbac.principal import Principal

router = APIRouter(tags=["delivery"])
DevicesRead = Annotated[Principal, Depends(Require(P.devices_read))]
NOT_FOUND: dict[int | str, dict[str, Any]] = {404: {"description": "Not found"}}


@router.get("/devices/{device_id:uuid}/configuration", responses=NOT_FOUND)
async def device_configuration(
    device_id: uuid.UUID, session: SessionDep, settings: SettingsDep, principal: DevicesRead
) -> dict[str, Any]:
    """Per configuration profile reaching the device: the intended and the applied version, and per setting
    the intended value (secrets redacted) with the state the device reported (succeeded, error, not
    applicable, pending) or *conflict* naming the other profile."""
    return await delivery_service.device_configuration(session, settings, principal, device_id)
