"""Opening a device's wake-up stream."""

from __future__ import annotations

import uuid

from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from corral.devices import repository as devices_repository
from corral.errors import ServiceUnavailable
from corral.push.hub import PushHub
from corral.push.stream import EventStream


class PushService:
    def stream(
        self,
        hub: PushHub,
        sessionmaker: async_sessionmaker[AsyncSession],
        device_id: uuid.UUID,
        heartbeat_seconds: float,
    ) -> EventStream:
        """The stream of an authenticated device. The request's session is done with by the time it starts
        (committed and returned to the pool): a stream only borrows a connection for a moment, to see whether
        commands already wait."""
        if hub.draining:
            raise ServiceUnavailable(
                "The server is shutting down; connect again (another replica answers).",
                headers={"Retry-After": "5"},
            )

        async def has_pending() -> bool:
            async with sessionmaker() as session:
                return await devices_repository.has_open_commands(session, device_id)

        return EventStream(hub, str(device_id), has_pending=has_pending, heartbeat=heartbeat_seconds)


push_service = PushService()
