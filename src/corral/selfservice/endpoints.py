from __future__ import annotations

from corral.auth.dependencies import SignedIn
from corral.kit.db import SessionDep
from corral.kit.routing import APIRouter
from corral.selfservice.schemas import MyDevice
from corral.selfservice.service import selfservice_service

router = APIRouter(prefix="/me", tags=["me"])


@router.get("/devices", response_model=list[MyDevice])
async def my_devices(session: SessionDep, principal: SignedIn) -> list[MyDevice]:
    """Your own devices: those whose primary user you are, retired and wiped ones left out.

    Self-service: anyone signed in, end users (no role) included."""
    return await selfservice_service.my_devices(session, principal)
