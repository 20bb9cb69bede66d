"""Refused requests in the audit log, aggregated (docs/operations.md, security notes).

The audit log is append-only, so a caller who can be refused as often as they like must not be able to
write a row each time. Every refusal is counted in ``corral_refusals_total{endpoint,reason}``; in the audit
log, the first refusal of a kind — the same reason, from the same client address (its /64 for IPv6) when the
caller is unknown, or for the same device or enrollment token when the server knows who it is — is written
at once, and the ones that follow only as one summary row with their count, written when the window ends
(``CORRAL_AUDIT_REFUSAL_WINDOW_SECONDS``) and at shutdown. So each kind costs at most one row per window
however often it repeats. At most ``CORRAL_AUDIT_REFUSAL_MAX_KEYS`` kinds are tracked at once: refusals of
further kinds are aggregated by activity and reason alone, so memory and rows stay bounded as addresses vary.

Rows carry only what the server knows or chose: a reason code and its fixed text, the client address as the
middleware computed it, and a device or token the server found. Nothing the request said (key ids, tokens,
serial numbers, headers, exception messages, user agents, request ids) reaches them. Aggregation is per
process: with several replicas, each writes its own rows.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Annotated, Any

from fastapi import Depends, Request
from prometheus_client import Counter, Gauge
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from corral.audit.service import event_values
from corral.kit import context
from corral.kit.rate_limit import client_key
from corral.kit.time import utcnow
from corral.models import AuditEvent

log = logging.getLogger("corral.audit")

REFUSALS = Counter(
    "corral_refusals_total",
    "Requests refused before the caller was authenticated, by route template and reason code",
    ["endpoint", "reason"],
)
TRACKED = Gauge("corral_refusal_audit_tracked", "Kinds of refusal being aggregated for the audit log")
AUDIT_ROWS = Counter(
    "corral_refusal_audit_rows_total", "Audit rows written for refusals: first of a kind or summary", ["row"]
)


@dataclass(frozen=True)
class Summary:
    """What a summary row reports: refusals not yet written, between two times, from where."""

    count: int
    first_at: datetime
    last_at: datetime
    #: The client address, or the /64 of IPv6 addresses, they all came from; None when they varied more.
    source: str | None
    several_sources: bool = False
    #: Refusals of kinds beyond the tracking limit, from any address.
    overflow: bool = False


@dataclass(frozen=True, kw_only=True)
class Refusal:
    """A refused request as the audit log shows it. Every text is the server's own."""

    activity: str
    category: str
    operation: str
    #: The route template (a metric label, so bounded).
    endpoint: str
    #: A code from a fixed vocabulary, and the server's words for it.
    reason: str
    text: str
    #: The client address as the request-context middleware computed it.
    source: str | None
    actor: context.Actor
    target_type: str | None = None
    target_id: uuid.UUID | None = None
    target_name: str | None = None
    #: Whom the server identified ("device:<id>", "enrollment_token:<id>"); None: an unknown caller, who is
    #: aggregated by client address.
    subject: str | None = None

    def key(self) -> tuple[str, str, str]:
        return (self.activity, self.reason, self.subject or f"client:{client_key(self.source)}")

    def overflow_key(self) -> tuple[str, str, str]:
        return (self.activity, self.reason, "overflow")

    def detail(self, summary: Summary | None, max_keys: int) -> str:
        if summary is None:
            return f"{self.endpoint}: {self.text}"
        if summary.overflow:
            origin = f"from clients beyond the {max_keys} tracked"
        elif summary.source:
            origin = f"from {summary.source}"
        else:
            origin = "from several addresses" if summary.several_sources else "from an unknown address"
        plural = "refusal" if summary.count == 1 else "refusals"
        return (
            f"{summary.count} further {plural} ({self.endpoint}: {self.text}) {origin} between "
            f"{summary.first_at:%Y-%m-%d %H:%M:%S} and {summary.last_at:%Y-%m-%d %H:%M:%S} UTC"
        )

    def audit_row(self, summary: Summary | None, max_keys: int) -> dict[str, Any]:
        changes: list[tuple[str, Any, Any]] = []
        if summary is not None:
            changes = [
                ("refusals", None, summary.count),
                ("first_at", None, summary.first_at.isoformat()),
                ("last_at", None, summary.last_at.isoformat()),
            ]
        values = event_values(
            activity=self.activity,
            category=self.category,
            operation=self.operation,
            result="failure",
            target_type=self.target_type,
            target_id=self.target_id,
            target_name=self.target_name,
            changes=changes,
            detail=self.detail(summary, max_keys),
            actor=self.actor,
        )
        # Only what the server knows: not the request's user agent or (possibly client-chosen) request id.
        values.update(
            ip_address=(summary.source if summary is not None else self.source),
            user_agent=None,
            correlation_id=None,
        )
        return values

    def extra_rows(self, summary: Summary | None, detail: str) -> Sequence[Any]:
        """Rows of other tables written with the audit row (e.g. the enrollment token's log)."""
        return ()


@dataclass
class _Kind:
    first: Refusal
    overflow: bool
    #: Refusals since the last row, the first and last of them, and where they came from.
    count: int = 0
    first_at: datetime | None = None
    last_at: datetime | None = None
    source: str | None = None
    several_sources: bool = False
    #: Whether a refusal of this kind came since the previous flush (otherwise the flush forgets the kind).
    touched: bool = True

    def add(self, source: str | None, at: datetime) -> None:
        if self.count == 0:
            self.first_at, self.source, self.several_sources = at, source, False
        elif source != self.source:
            self.several_sources = True
        self.count += 1
        self.last_at = at
        self.touched = True

    def summary(self) -> Summary:
        assert self.first_at is not None and self.last_at is not None
        source = self.source
        if self.several_sources:
            # Keyed by client: the addresses share a /64. Otherwise (a device, a token): they may be anywhere.
            shared = client_key(self.source) if self.first.subject is None and not self.overflow else None
            source = shared if shared != "unknown" else None
        return Summary(self.count, self.first_at, self.last_at, source, self.several_sources, self.overflow)


class RefusalLog:
    """The per-process aggregation of refusals for the audit log (module docstring)."""

    def __init__(self, sessionmaker: async_sessionmaker[AsyncSession], window: float, max_keys: int) -> None:
        self.sessionmaker = sessionmaker
        self.window = window
        self.max_keys = max_keys
        self._kinds: dict[tuple[str, str, str], _Kind] = {}
        self._tracked = 0  # kinds counted against max_keys (the overflow buckets are not)
        self._lock = asyncio.Lock()
        self._task: asyncio.Task[None] | None = None

    def __len__(self) -> int:
        return len(self._kinds)

    async def record(self, refusal: Refusal) -> None:
        """Count a refusal; write it at once when it is the first of its kind, otherwise leave it to the next
        summary. Never raises: a refusal must not turn into a server error."""
        REFUSALS.labels(refusal.endpoint, refusal.reason).inc()
        key = refusal.key()
        kind = self._kinds.get(key)
        if kind is None and self._tracked >= self.max_keys:
            key = refusal.overflow_key()
            kind = self._kinds.get(key)
        if kind is not None:
            kind.add(refusal.source, utcnow())
            return
        overflow = key[2] == "overflow"
        self._kinds[key] = _Kind(refusal, overflow)
        if not overflow:
            self._tracked += 1
        TRACKED.set(len(self._kinds))
        try:
            await self._write([(refusal, None)])
            AUDIT_ROWS.labels("first").inc()
        except Exception:
            log.exception("refusal audit: writing %s/%s failed", refusal.activity, refusal.reason)

    async def _write(self, rows: list[tuple[Refusal, Summary | None]]) -> None:
        """In one transaction. Companion rows that no longer fit (their enrollment token was deleted since)
        are left out rather than holding back the audit rows."""
        async with self.sessionmaker() as session:
            for refusal, summary in rows:
                values = refusal.audit_row(summary, self.max_keys)
                session.add(AuditEvent(**values))
                extra = refusal.extra_rows(summary, values["detail"])
                if extra:
                    try:
                        async with session.begin_nested():
                            session.add_all(extra)
                    except IntegrityError:
                        log.warning("refusal audit: left out a %s row that no longer fits", refusal.activity)
            await session.commit()

    async def flush(self) -> int:
        """Write a summary for every kind refused since its last row; forget kinds idle for a whole window.
        Returns the summaries written. On failure the counts are kept for the next flush."""
        async with self._lock:
            pending = [
                (key, kind, kind.count, kind.summary()) for key, kind in self._kinds.items() if kind.count
            ]
            if pending:
                await self._write([(kind.first, summary) for _key, kind, _n, summary in pending])
                AUDIT_ROWS.labels("summary").inc(len(pending))
            for _key, kind, written, summary in pending:
                kind.count -= written  # refusals that arrived while writing stay for the next one
                if kind.count:
                    kind.first_at = summary.last_at
            for key, kind in list(self._kinds.items()):
                if kind.touched:
                    kind.touched = False
                elif not kind.count:
                    del self._kinds[key]
                    if not kind.overflow:
                        self._tracked -= 1
            TRACKED.set(len(self._kinds))
            return len(pending)

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(self.window)
            try:
                await self.flush()
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("refusal audit: flush failed; counts kept for the next one")

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.create_task(self._run(), name="corral-refusal-audit")

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
            log.exception(
                "refusal audit: final flush failed; %d kind(s) of refusal not summarised", len(self)
            )


async def get_refusals(request: Request) -> RefusalLog:
    """This process's refusal log (created in main.py's lifespan)."""
    refusals: RefusalLog = request.app.state.refusals
    return refusals


RefusalsDep = Annotated[RefusalLog, Depends(get_refusals)]
