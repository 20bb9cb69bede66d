"""Batched last check-in times (docs/device-protocol.md §4).

A check-in that changes nothing else (no inventory, no command result, no pending command, same agent
version) does not write the device row. It notes the time and address here instead, and every
``CORRAL_LAST_SEEN_FLUSH_SECONDS`` one statement writes them for every device seen meanwhile (the latest
check-in of each device only), in key order, in a transaction of its own. The time written is the check-in's
own time, never a later one, and an older time never overwrites a newer one (a check-in that did write the row
in its own transaction may have come after). What is pending is written at shutdown; a process that dies loses
at most one interval of last-seen times, nothing else.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import uuid
from datetime import datetime

from prometheus_client import Counter, Gauge
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

log = logging.getLogger("corral.checkin")

PENDING = Gauge("corral_last_seen_pending", "Devices whose last check-in time waits to be written")
WRITTEN = Counter("corral_last_seen_written", "Last check-in times written by the batched flush")
FAILED = Counter("corral_last_seen_flush_failures", "Batched last check-in flushes that failed (retried)")

#: Rows per statement: bounds the statement's size and how long it holds its row locks.
CHUNK = 5000

_FLUSH = text(
    "UPDATE devices AS d SET last_checkin_at = v.at, last_checkin_ip = v.ip, updated_at = now() "
    "FROM unnest(CAST(:ids AS uuid[]), CAST(:ats AS timestamptz[]), CAST(:ips AS varchar[])) "
    "AS v(id, at, ip) "
    "WHERE d.id = v.id AND (d.last_checkin_at IS NULL OR d.last_checkin_at < v.at)"
)


# The day of each check-in written (dashboard chart): the rows of the same batch, one per device and day.
_DAYS = text(
    "INSERT INTO device_checkin_days (day, device_id) "
    "SELECT DISTINCT CAST(timezone('UTC', v.at) AS date), v.id "
    "FROM unnest(CAST(:ids AS uuid[]), CAST(:ats AS timestamptz[])) AS v(id, at) "
    "ON CONFLICT DO NOTHING"
)


class LastSeenBuffer:
    """Last check-in time and address per device, kept in memory until the next flush."""

    def __init__(self, sessionmaker: async_sessionmaker[AsyncSession] | None, interval: float) -> None:
        self.sessionmaker = sessionmaker
        self.interval = interval
        self._pending: dict[uuid.UUID, tuple[datetime, str | None]] = {}
        self._lock = asyncio.Lock()
        self._task: asyncio.Task[None] | None = None

    @property
    def enabled(self) -> bool:
        """False when check-ins write their last-seen time in their own transaction (interval 0)."""
        return self.interval > 0 and self.sessionmaker is not None

    def __len__(self) -> int:
        return len(self._pending)

    def note(self, device_id: uuid.UUID, at: datetime, ip: str | None) -> None:
        current = self._pending.get(device_id)
        if current is None or current[0] <= at:
            self._pending[device_id] = (at, ip)
            PENDING.set(len(self._pending))

    def _restore(self, batch: dict[uuid.UUID, tuple[datetime, str | None]]) -> None:
        for device_id, (at, ip) in batch.items():
            self.note(device_id, at, ip)

    async def flush(self) -> int:
        """Write what is pending; returns the rows updated. On failure everything is kept for the next try."""
        async with self._lock:
            if not self._pending or self.sessionmaker is None:
                return 0
            batch, self._pending = self._pending, {}
            PENDING.set(0)
            ordered = sorted(batch.items())  # one lock order for every replica: no deadlock between flushes
            written = 0
            try:
                async with self.sessionmaker() as session, session.begin():
                    for start in range(0, len(ordered), CHUNK):
                        chunk = ordered[start : start + CHUNK]
                        result = await session.execute(
                            _FLUSH,
                            {
                                "ids": [device_id for device_id, _ in chunk],
                                "ats": [at for _, (at, _ip) in chunk],
                                "ips": [ip for _, (_at, ip) in chunk],
                            },
                        )
                        written += int(result.rowcount or 0)  # type: ignore[attr-defined]
                        await session.execute(
                            _DAYS,
                            {
                                "ids": [device_id for device_id, _ in chunk],
                                "ats": [at for _, (at, _ip) in chunk],
                            },
                        )
            except BaseException:
                self._restore(batch)
                FAILED.inc()
                raise
            WRITTEN.inc(written)
            return written

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(self.interval)
            try:
                await self.flush()
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("last seen: flush failed; %d device(s) kept for the next one", len(self))

    def start(self) -> None:
        if self.enabled and self._task is None:
            self._task = asyncio.create_task(self._run(), name="corral-last-seen")

    async def stop(self) -> None:
        """Stop the periodic flush and write what is pending."""
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        try:
            await self.flush()
        except Exception:
            log.exception("last seen: final flush failed; %d last check-in time(s) lost", len(self))
