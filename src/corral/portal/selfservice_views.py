"""Self-service pages for anyone signed in (end users, and administrators for themselves). Each calls the
same service as its /api/v1/me twin."""

from __future__ import annotations

from fastapi import Request
from fastapi.responses import Response

from corral.auth.dependencies import SignedIn
from corral.kit.db import SessionDep
from corral.kit.routing import APIRouter
from corral.portal.rendering import render
from corral.selfservice.service import selfservice_service

router = APIRouter(prefix="/portal", include_in_schema=False)


@router.get("/my-devices")
async def my_devices(request: Request, session: SessionDep, principal: SignedIn) -> Response:
    devices = await selfservice_service.my_devices(session, principal)
    return render(request, "selfservice/my_devices.html", {"devices": devices})
