"""The wake-up stream of the device protocol: ``GET /device/v1/events`` (docs/device-protocol.md §7)."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Request
from starlette.responses import Response

from corral.checkin.auth import CurrentDevice
from corral.kit.db import SessionDep
from corral.kit.routing import APIRouter
from corral.push.hub import PushHub
from corral.push.service import push_service

router = APIRouter(prefix="/device/v1", include_in_schema=False)


async def get_push_hub(request: Request) -> PushHub:
    hub: PushHub = request.app.state.push_hub
    return hub


PushHubDep = Annotated[PushHub, Depends(get_push_hub)]


@router.get("/events")
async def events(device: CurrentDevice, session: SessionDep, hub: PushHubDep) -> Response:
    """SSE: ``ready``, then ``wake`` whenever the device should check in; ``: ping`` between."""
    return await push_service.stream(session, hub, device.device.id)
