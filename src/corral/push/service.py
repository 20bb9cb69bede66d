"""Opening a device's wake-up stream, and waking devices from whichever replica holds their stream."""

from __future__ import annotations

import uuid
from collections.abc import Sequence

from sqlalchemy import bindparam, text
from sqlalchemy.dialects.postgresql import ARRAY, UUID
from sqlalchemy.ext.asyncio import AsyncSession

from corral.apple.push import defer_push as defer_apple_push
from corral.commands import repository as commands_repository
from corral.errors import ServiceUnavailable
from corral.push.hub import WAKE_CHANNEL, PushHub
from corral.push.stream import EventStream

# Apple devices among those woken, with a push token and still enrolled, into the push queue. A device already
# there is due now (if it was waiting for a retry) with its attempts counted afresh. Rows are taken in key
# order so that two transactions waking the same devices cannot deadlock.
_QUEUE_APPLE = text(
    """
    INSERT INTO apple_push_queue (device_id, due_at, reason, enqueued_at, attempts)
    SELECT device_id, now(), :reason, now(), 0 FROM apple_enrollments
    WHERE device_id = ANY(:ids) AND push_token IS NOT NULL AND ended_at IS NULL
    ORDER BY device_id
    ON CONFLICT (device_id) DO UPDATE
    SET due_at = LEAST(apple_push_queue.due_at, now()), attempts = 0, reason = EXCLUDED.reason
    RETURNING 1
    """
).bindparams(bindparam("ids", type_=ARRAY(UUID(as_uuid=True))))


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
        device's check-in finds what it is woken for; nothing if it rolls back).

        Apple devices have no stream: Apple's push service wakes them. Those among ``device_ids`` get a row
        in the push queue (one per device: wakes before the push is sent become one push), and the
        ``apple.push`` job is deferred, all in the same transaction. For agents alone this is one more
        statement that finds nothing (a primary-key lookup in ``apple_enrollments``)."""
        if not device_ids:
            return
        await session.execute(
            text("SELECT pg_notify(:channel, payload) FROM unnest(CAST(:payloads AS text[])) AS payload"),
            {"channel": WAKE_CHANNEL, "payloads": [f"{device_id}:{reason}" for device_id in device_ids]},
        )
        queued = await session.execute(_QUEUE_APPLE, {"ids": list(device_ids), "reason": reason[:32]})
        if queued.first() is not None:
            await defer_apple_push(session)

    async def wake(self, session: AsyncSession, device_id: uuid.UUID, reason: str) -> None:
        await self.wake_many(session, [device_id], reason)


push_service = PushService()
