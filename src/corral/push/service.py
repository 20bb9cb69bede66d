"""Opening a device's wake-up stream."""

from __future__ import annotations

import uuid

from sqlalchemy.ext.asyncio import AsyncSession

from corral.devices import repository as devices_repository
from corral.errors import ServiceUnavailable
from corral.push.hub import PushHub
from corral.push.stream import EventStream


class PushService:
    async def stream(self, session: AsyncSession, hub: PushHub, device_id: uuid.UUID) -> EventStream:
        """The stream of an authenticated device, subscribed to this process's hub. ``session`` is the
        request's: it is committed and returned to the pool before the stream starts, so no database
        connection is held while the stream is open."""
        if hub.draining:
            raise ServiceUnavailable(
                "The server is shutting down; connect again (another replica answers).",
                headers={"Retry-After": "5"},
            )
        queue = hub.subscribe(str(device_id))
        try:
            # Subscribed first, then looked: a command committed after this look notifies the queue, and one
            # committed before it is seen here. Nothing queued between a check-in and the connection is
            # missed.
            pending = await devices_repository.has_open_commands(session, device_id)
        except BaseException:
            hub.unsubscribe(queue)
            raise
        return EventStream(hub, queue, pending=pending)


push_service = PushService()
