"""The APNs sender: the worker's ``apple.push`` job, which wakes Apple devices through Apple's push service.

``push_service.wake_many`` puts each Apple device it is asked to wake into ``apple_push_queue`` (one row per
device, so that wakes before the push is sent become one push) and defers this job in the same transaction.
The job sends what is due with the push certificate in use, then settles each row by APNs' answer:

- sent: the row goes; the enrollment's ``push_state`` is ``ok``.
- unreachable (the token is dead, or not this topic's): the row goes; ``push_state`` is ``unreachable``, with
  APNs' reason, and the change is audited (``device.apple.push_unreachable``).
- certificate (APNs refuses Corral's certificate or topic): the run stops, the rows stay, an error is
  logged.
- retry (APNs busy or unreachable): the row waits ``5 s·2^attempts`` (at most 15 min, ±20 %);
  ``push_state`` is ``retrying``. After ``apple_push_max_attempts`` the row goes: the device's own periodic
  check-in brings what it was woken for.
- failed (APNs calls the request malformed): Corral's bug, logged; the row goes.

Nothing is sent while no push certificate is in use, or it has expired, and to devices enrolled on another
topic than the certificate's: their rows wait. Rows are claimed in a short transaction of their own and
pushed back by a lease while the pushes are in flight, so no row lock is held across the network: a
transaction waking a device being pushed to never waits for APNs. A device woken again meanwhile (its row
made due again) is pushed once more; a row left claimed by a worker that died is due again once the lease
ends, when the periodic sweep (``housekeeping.apple_push_sweep``) defers this job.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
import random
import uuid
from collections import Counter as Tally
from dataclasses import dataclass, field
from typing import Any

from procrastinate import JobContext
from procrastinate.exceptions import AlreadyEnqueued
from prometheus_client import Counter
from sqlalchemy import Row, text
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from corral.apple.apns import ApnsClient, Outcome, PushResult
from corral.apple.push_certificate import push_certificate_service
from corral.audit.service import audit_service
from corral.config import Settings
from corral.kit.time import utcnow
from corral.models import ApplePushCertificate
from corral.worker.app import WORKER_ACTOR, app, defer, resources

log = logging.getLogger("corral.apple.push")

PUSHES = Counter("corral_apple_pushes_total", "APNs pushes to Apple devices, by outcome", ["outcome"])

TASK = "apple.push"
#: The queueing lock of a job deferred to run now (by a wake-up, the sweep, or a run that had more to do):
#: one waiting is enough. A run deferred for the next retry has its own, so it never keeps a wake-up waiting.
NOW_LOCK = "apple.push"
LATER_LOCK = "apple.push.later"
#: Rows claimed and pushed per batch, and batches per run (a larger backlog is left to the next run).
BATCH = 1000
MAX_BATCHES = 20
#: How long a claimed row stays out of reach while its push is in flight (or its worker dead).
LEASE_SECONDS = 300
#: Retries wait 5 s·2^attempts, at most 15 min, give or take 20 %.
RETRY_BASE_SECONDS = 5.0
RETRY_MAX_SECONDS = 900.0
RETRY_JITTER = 0.2
_REASON = 64  # apple_enrollments.push_failed_reason
_ERROR = 256  # apple_push_queue.last_error


@app.task(name=TASK, lock=TASK, queueing_lock=NOW_LOCK, pass_context=True)
async def push(context_: JobContext) -> dict[str, int]:
    """Send the APNs wake-ups that are due (safe to repeat: a push sent twice wakes a device once)."""
    res = resources(context_)
    return (await send_due(res.sessionmaker, res.settings)).counts()


async def defer_push(session: AsyncSession, at: dt.datetime | None = None) -> None:
    """Queue the job in the session's transaction, to run now or at ``at``. One waiting job of each kind is
    enough (the one waiting sends whatever is due when it runs). Never fails the caller's transaction (the
    job is deferred in a savepoint): were it not queued, the sweep queues one within a minute."""
    deferrer = (
        push.configure(queueing_lock=NOW_LOCK)
        if at is None
        else push.configure(queueing_lock=LATER_LOCK, schedule_at=at)
    )
    try:
        await defer(session, deferrer)
    except AlreadyEnqueued:
        pass
    except SQLAlchemyError:
        log.exception("could not queue the %s job (the sweep queues one within a minute)", TASK)


def retry_delay(attempts: int) -> float:
    """Seconds before the next attempt, once ``attempts`` have failed."""
    base = min(RETRY_BASE_SECONDS * 2.0 ** min(attempts, 30), RETRY_MAX_SECONDS)
    return base * random.uniform(1 - RETRY_JITTER, 1 + RETRY_JITTER)


@dataclass
class Summary:
    """What a run did: pushes by outcome, rows dropped after their last attempt, and why nothing was sent."""

    outcomes: Tally[str] = field(default_factory=Tally)
    gave_up: int = 0
    batches: int = 0
    skipped: str | None = None  # "no_certificate", "certificate_expired", "certificate_refused"

    def counts(self) -> dict[str, int]:
        return {**self.outcomes, "gave_up": self.gave_up, "batches": self.batches}


# ----------------------------------------------------------------------------------------------- the client
@dataclass(frozen=True)
class _Cached:
    key: tuple[str, str, str | None, int]
    loop: asyncio.AbstractEventLoop
    client: ApnsClient


class _ClientCache:
    """One APNs client per process (its HTTP/2 connection stays open between runs, as Apple asks), rebuilt
    when the certificate (its serial), the URL, the CA file or the concurrency changes. A client belongs to
    the event loop it was made in."""

    def __init__(self) -> None:
        self._cached: _Cached | None = None

    async def get(self, settings: Settings, certificate: ApplePushCertificate) -> ApnsClient:
        assert certificate.certificate_pem is not None
        ca_file = str(settings.apple_apns_ca_file) if settings.apple_apns_ca_file else None
        key = (
            certificate.serial_number or str(certificate.id),
            settings.apple_apns_url,
            ca_file,
            settings.apple_push_concurrency,
        )
        loop = asyncio.get_running_loop()
        cached = self._cached
        if cached is not None and cached.key == key and cached.loop is loop:
            return cached.client
        self._cached = None
        if cached is not None and cached.loop is loop:
            await cached.client.aclose()
        client = ApnsClient(
            certificate.certificate_pem.encode(),
            push_certificate_service.private_key_pem(settings, certificate),
            base_url=settings.apple_apns_url,
            ca_file=ca_file,
            concurrency=settings.apple_push_concurrency,
        )
        self._cached = _Cached(key, loop, client)
        return client

    async def aclose(self) -> None:
        cached, self._cached = self._cached, None
        if cached is not None and cached.loop is asyncio.get_running_loop():
            await cached.client.aclose()


clients = _ClientCache()


# ----------------------------------------------------------------------------------------------- statements
# Rows of devices that can no longer be pushed to (enrollment ended, or no token): nothing to send.
_DROP_DEAD = text(
    """
    DELETE FROM apple_push_queue q
    WHERE q.due_at <= now() AND NOT EXISTS (
        SELECT 1 FROM apple_enrollments e
        WHERE e.device_id = q.device_id AND e.ended_at IS NULL
          AND e.push_token IS NOT NULL AND e.push_magic IS NOT NULL
    )
    """
)
# The rows due, oldest first, of devices enrolled on the certificate's topic: leased (due_at pushed back) and
# returned with what the push needs. ``was_due`` is put back if the certificate is refused.
_CLAIM = text(
    """
    WITH claimed AS (
        SELECT q.device_id, q.due_at
        FROM apple_push_queue q JOIN apple_enrollments e ON e.device_id = q.device_id
        WHERE q.due_at <= now() AND e.topic = :topic AND e.ended_at IS NULL
          AND e.push_token IS NOT NULL AND e.push_magic IS NOT NULL
        ORDER BY q.due_at
        LIMIT :limit
        FOR UPDATE OF q SKIP LOCKED
    )
    UPDATE apple_push_queue q
    SET due_at = now() + make_interval(secs => :lease)
    FROM claimed, apple_enrollments e
    WHERE q.device_id = claimed.device_id AND e.device_id = q.device_id
    RETURNING q.device_id, q.due_at AS lease, claimed.due_at AS was_due, q.attempts,
              e.push_token, e.push_magic, e.topic
    """
)
# Settling takes the batch's rows in key order first (as wake_many does), so the statements after it cannot
# deadlock with a transaction waking the same devices. A row whose due_at is no longer the lease was woken
# again while its push was in flight: it is left due.
_LOCK = text(
    "SELECT device_id, due_at FROM apple_push_queue WHERE device_id = ANY(CAST(:ids AS uuid[])) "
    "ORDER BY device_id FOR UPDATE"
)
_DELETE = text("DELETE FROM apple_push_queue WHERE device_id = ANY(CAST(:ids AS uuid[]))")
_RESTORE = text(
    """
    UPDATE apple_push_queue q SET due_at = v.due_at
    FROM unnest(CAST(:ids AS uuid[]), CAST(:dues AS timestamptz[])) AS v(device_id, due_at)
    WHERE q.device_id = v.device_id
    """
)
_RETRY = text(
    """
    UPDATE apple_push_queue q
    SET attempts = v.attempts, due_at = now() + make_interval(secs => v.delay), last_error = v.error
    FROM unnest(CAST(:ids AS uuid[]), CAST(:attempts AS int[]), CAST(:delays AS float8[]),
                CAST(:errors AS text[])) AS v(device_id, attempts, delay, error)
    WHERE q.device_id = v.device_id
    """
)
_SENT = text(
    """
    UPDATE apple_enrollments SET push_state = 'ok', push_failed_reason = NULL, last_push_at = now()
    WHERE device_id = ANY(CAST(:ids AS uuid[]))
    """
)
_STATE = text(
    """
    UPDATE apple_enrollments e SET push_state = coalesce(CAST(:state AS varchar), e.push_state),
        push_failed_reason = v.reason
    FROM unnest(CAST(:ids AS uuid[]), CAST(:reasons AS text[])) AS v(device_id, reason)
    WHERE e.device_id = v.device_id
    """
)
_UNREACHABLE_BEFORE = text(
    """
    SELECT d.id, d.name, e.push_state FROM devices d JOIN apple_enrollments e ON e.device_id = d.id
    WHERE d.id = ANY(CAST(:ids AS uuid[]))
    """
)
_NEXT_DUE = text(
    """
    SELECT min(q.due_at) FROM apple_push_queue q JOIN apple_enrollments e ON e.device_id = q.device_id
    WHERE e.topic = :topic AND e.ended_at IS NULL AND e.push_token IS NOT NULL AND e.push_magic IS NOT NULL
    """
)
_ANY_DUE = text("SELECT EXISTS (SELECT 1 FROM apple_push_queue WHERE due_at <= now())")


# ----------------------------------------------------------------------------------------------- the run
def _usable(certificate: ApplePushCertificate | None, now: dt.datetime) -> str | None:
    """Why nothing can be sent with this certificate, or None."""
    if certificate is None or certificate.certificate_pem is None or certificate.topic is None:
        return "no_certificate"
    if certificate.not_after is None or certificate.not_after <= now:
        return "certificate_expired"
    if certificate.not_before is not None and certificate.not_before > now:
        return "certificate_expired"
    return None


async def send_due(sessionmaker: async_sessionmaker[AsyncSession], settings: Settings) -> Summary:
    """Send what is due, batch after batch (at most :data:`MAX_BATCHES`), then defer the next run for what is
    left: now if more is due, at the earliest retry otherwise."""
    summary = Summary()
    async with sessionmaker() as session:
        certificate = await push_certificate_service.current(session)
        await session.execute(_DROP_DEAD)
        await session.commit()
    summary.skipped = _usable(certificate, utcnow())
    if summary.skipped is not None or certificate is None or certificate.topic is None:
        log.warning(
            "apple.push: nothing sent (%s): Apple devices cannot be woken until a valid push certificate is "
            "uploaded",
            summary.skipped,
        )
        return summary
    client = await clients.get(settings, certificate)
    for _ in range(MAX_BATCHES):
        async with sessionmaker() as session:
            claimed = await session.execute(
                _CLAIM, {"topic": certificate.topic, "limit": BATCH, "lease": LEASE_SECONDS}
            )
            rows = list(claimed.all())
            await session.commit()
        if not rows:
            break
        summary.batches += 1
        results = await client.push_many(
            [(row.device_id, bytes(row.push_token), row.topic, row.push_magic) for row in rows]
        )
        async with sessionmaker() as session:
            refused = await _settle(session, settings, rows, results, summary)
            await session.commit()
        if refused:
            summary.skipped = "certificate_refused"
            _log_summary(summary)
            return summary
    async with sessionmaker() as session:
        next_due: dt.datetime | None = await session.scalar(_NEXT_DUE, {"topic": certificate.topic})
        if next_due is not None:
            await defer_push(session, None if next_due <= utcnow() else next_due)
        await session.commit()
    _log_summary(summary)
    return summary


def _log_summary(summary: Summary) -> None:
    if summary.batches:
        log.info("apple.push: %s", ", ".join(f"{k} {v}" for k, v in sorted(summary.counts().items())))


def _failure(result: PushResult, limit: int) -> str:
    text_ = f"{result.status} {result.reason}" if result.status else (result.reason or "transport error")
    return text_[:limit]


async def _settle(
    session: AsyncSession,
    settings: Settings,
    rows: list[Row[Any]],
    results: dict[uuid.UUID, PushResult],
    summary: Summary,
) -> bool:
    """Apply APNs' answers to the batch's rows and enrollments; True if the certificate was refused."""
    ids = [row.device_id for row in rows]
    current = {r.device_id: r.due_at for r in (await session.execute(_LOCK, {"ids": ids})).all()}
    # Still as claimed: not woken again meanwhile (a row woken again is due now), nor gone with its device.
    mine = {row.device_id for row in rows if current.get(row.device_id) == row.lease}
    by_outcome: dict[Outcome, list[Row[Any]]] = {outcome: [] for outcome in Outcome}
    for row in rows:
        by_outcome[results[row.device_id].outcome].append(row)
    for outcome, group in by_outcome.items():
        if group:
            summary.outcomes[outcome.value] += len(group)
            PUSHES.labels(outcome.value).inc(len(group))

    drop: list[uuid.UUID] = []

    sent = [row.device_id for row in by_outcome[Outcome.sent]]
    drop += [i for i in sent if i in mine]
    if sent:
        await session.execute(_SENT, {"ids": sent})

    unreachable = by_outcome[Outcome.unreachable]
    if unreachable:
        drop += [row.device_id for row in unreachable]
        await _unreachable(session, unreachable, results)

    failed = by_outcome[Outcome.failed]
    if failed:
        drop += [row.device_id for row in failed]
        for row in failed:
            log.error(
                "apple.push: APNs calls the push to device %s malformed (%s): dropped; this is a bug in "
                "Corral",
                row.device_id,
                _failure(results[row.device_id], _ERROR),
            )
        await _set_state(session, None, failed, results)

    retry = by_outcome[Outcome.retry]
    if retry:
        again = [row for row in retry if row.device_id in mine]
        last = [row for row in again if row.attempts + 1 >= settings.apple_push_max_attempts]
        later = [row for row in again if row.attempts + 1 < settings.apple_push_max_attempts]
        drop += [row.device_id for row in last]
        summary.gave_up += len(last)
        for row in last:
            log.warning(
                "apple.push: device %s not woken after %d attempts (%s): given up; it gets its commands at "
                "its next check-in",
                row.device_id,
                row.attempts + 1,
                _failure(results[row.device_id], _ERROR),
            )
        if later:
            await session.execute(
                _RETRY,
                {
                    "ids": [row.device_id for row in later],
                    "attempts": [row.attempts + 1 for row in later],
                    "delays": [retry_delay(row.attempts + 1) for row in later],
                    "errors": [_failure(results[row.device_id], _ERROR) for row in later],
                },
            )
        await _set_state(session, "retrying", retry, results)

    refused = by_outcome[Outcome.certificate]
    if refused:
        back = [row for row in refused if row.device_id in mine]
        if back:
            await session.execute(
                _RESTORE, {"ids": [row.device_id for row in back], "dues": [row.was_due for row in back]}
            )
        log.error(
            "apple.push: APNs refuses the push certificate (%s): %d pushes kept, none sent until it is fixed "
            "(renew or upload the certificate: docs/apple-mdm.md)",
            _failure(results[refused[0].device_id], _ERROR),
            len(refused),
        )

    if drop:
        await session.execute(_DELETE, {"ids": drop})
    return bool(refused)


async def _set_state(
    session: AsyncSession, state: str | None, rows: list[Row[Any]], results: dict[uuid.UUID, PushResult]
) -> None:
    await session.execute(
        _STATE,
        {
            "state": state,
            "ids": [row.device_id for row in rows],
            "reasons": [_failure(results[row.device_id], _REASON) for row in rows],
        },
    )


async def _unreachable(
    session: AsyncSession, rows: list[Row[Any]], results: dict[uuid.UUID, PushResult]
) -> None:
    """Dead tokens: the state, and an audit event for each device that just became unreachable."""
    ids = [row.device_id for row in rows]
    before = {r.id: r for r in (await session.execute(_UNREACHABLE_BEFORE, {"ids": ids})).all()}
    await _set_state(session, "unreachable", rows, results)
    events = []
    for row in rows:
        device = before.get(row.device_id)
        if device is None or device.push_state == "unreachable":
            continue
        result = results[row.device_id]
        events.append(
            {
                "activity": "device.apple.push_unreachable",
                "category": "device",
                "operation": "update",
                "target_type": "device",
                "target_id": row.device_id,
                "target_name": device.name,
                "changes": [("push_state", device.push_state, "unreachable")],
                "detail": f"APNs refused the device's push token ({_failure(result, _ERROR)}): Corral cannot "
                "wake it until it sends a new one",
                "actor": WORKER_ACTOR,
            }
        )
    await audit_service.record_many(session, events)


async def sweep(sessionmaker: async_sessionmaker[AsyncSession]) -> bool:
    """Defer the job if pushes are due (one whose job was lost, or whose claim outlived a dead worker)."""
    async with sessionmaker() as session:
        due = bool(await session.scalar(_ANY_DUE))
        if due:
            await defer_push(session)
            await session.commit()
    return due
