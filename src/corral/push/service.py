"""Opening a device's wake-up stream, and waking devices from whichever replica holds their stream."""

from __future__ import annotations

import uuid
from collections.abc import Sequence

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncSession

from corral.commands import repository as commands_repository
from corral.errors import ServiceUnavailable
from corral.push.hub import WAKE_CHANNEL, PushHub
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
            pending = await commands_repository.has_open(session, device_id)
        except BaseException:
            hub.unsubscribe(queue)
            raise
        return EventStream(hub, queue, pending=pending)

    async def wake_many(self, session: AsyncSession, device_ids: Sequence[uuid.UUID], reason: str) -> None:
        """Tell whichever replica holds each device's wake-up stream to wake it: one notification each, in one
        statement, delivered by PostgreSQL when the session's transaction commits (never before, so the
        device's check-in finds what it is woken for; nothing if it rolls back)."""
        if device_ids:
            await session.execute(
                text("SELECT pg_notify(:channel, payload) FROM unnest(CAST(:payloads AS text[])) AS payload"),
                {"channel": WAKE_CHANNEL, "payloads": [f"{device_id}:{reason}" for device_id in device_ids]},
            )

    async def wake(self, session: AsyncSession, device_id: uuid.UUID, reason: str) -> None:
        await self.wake_many(session, [device_id], reason)


push_service = PushService()
