"""The audit trail: every admin state change and every sign-in, append-only."""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from datetime import datetime
from typing import Any

from sqlalchemy import insert
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from corral.audit import repository
from corral.audit.schemas import AuditFilter
from corral.kit import context
from corral.kit.pagination import Page
from corral.models import AuditEvent
from corral.rbac.permissions import P
from corral.rbac.principal import Principal

REDACTED = "[redacted]"
_SECRET_NAME = re.compile(r"password|secret|token|private|key|totp|otp|credential", re.IGNORECASE)

Change = tuple[str, Any, Any]

# Categories whose events only holders of a permission may read (audit:read alone is not enough).
RESTRICTED_CATEGORIES: dict[str, P] = {"licence": P.licences_read}


def hidden_categories(principal: Principal | None) -> frozenset[str]:
    """The audit categories this reader may not see."""
    return frozenset(
        category
        for category, permission in RESTRICTED_CATEGORIES.items()
        if principal is None or not principal.has(permission)
    )


def reader(principal: Principal | None) -> repository.Reader:
    """What ``principal`` may read of the log (None: Corral itself, everything). Events about a device or a
    user are theirs only when their audit:read grant reaches that device or user (its scope tags and scope
    groups, as for devices:read and users:read): outside their scope, an event does not exist for them
    either. An unscoped reader's queries carry no condition."""
    if principal is None:
        return repository.EVERYTHING
    return repository.Reader(hidden=hidden_categories(principal), scope=principal.scope_for(P.audit_read))


def _json_safe(value: Any) -> Any:
    if value is None or isinstance(value, bool | int | float | str):
        return value
    if isinstance(value, list | tuple | set | frozenset):
        items = [_json_safe(item) for item in value]
        return sorted(items, key=str) if isinstance(value, set | frozenset) else items
    if isinstance(value, Mapping):
        return {str(k): _json_safe(v) for k, v in value.items()}
    return str(value)


def redact(changes: Sequence[Change]) -> list[dict[str, Any]]:
    out = []
    for name, old, new in changes:
        secret = bool(_SECRET_NAME.search(name))
        out.append(
            {
                "name": name,
                "old": REDACTED if secret and old is not None else _json_safe(old),
                "new": REDACTED if secret and new is not None else _json_safe(new),
            }
        )
    return out


def diff(before: Mapping[str, Any], after: Mapping[str, Any]) -> list[Change]:
    """The properties whose values differ, as (name, old, new)."""
    names = list(dict.fromkeys([*before, *after]))
    return [(n, before.get(n), after.get(n)) for n in names if before.get(n) != after.get(n)]


def event_values(
    *,
    activity: str,
    category: str,
    operation: str,
    result: str = "success",
    target_type: str | None = None,
    target_id: object | None = None,
    target_name: str | None = None,
    changes: Sequence[Change] = (),
    detail: str | None = None,
    actor: context.Actor | None = None,
) -> dict[str, Any]:
    """An event's columns: the actor and correlation id from the request context, the changes redacted."""
    ctx = context.current()
    who = actor or ctx.actor or context.Actor(type="anonymous")
    return {
        "category": category,
        "activity": activity,
        "operation": operation,
        "result": result,
        "actor_type": who.type,
        "actor_id": who.id,
        "actor_name": who.name,
        "actor_token_id": who.token_id,
        "target_type": target_type,
        "target_id": str(target_id) if target_id is not None else None,
        "target_name": target_name,
        "modified_properties": redact(changes),
        "detail": detail[:1024] if detail else None,
        "correlation_id": ctx.correlation_id,
        "ip_address": ctx.client_ip,
        "user_agent": ctx.user_agent[:512] if ctx.user_agent else None,
    }


def build_event(**fields: Any) -> AuditEvent:
    """An event (not yet added to a session); ``fields`` as for :func:`event_values`."""
    return AuditEvent(**event_values(**fields))


class AuditService:
    async def record(self, session: AsyncSession, **fields: Any) -> AuditEvent:
        """Record within the caller's transaction: the event lands exactly when the change does."""
        event = build_event(**fields)
        session.add(event)
        await session.flush()
        return event

    async def record_many(self, session: AsyncSession, events: Sequence[Mapping[str, Any]]) -> None:
        """Record several events within the caller's transaction in one multi-row insert, in the given order
        (each one's fields as for ``record``): an action over many objects writes one event per object
        without a round trip each."""
        if events:
            await session.execute(insert(AuditEvent), [event_values(**fields) for fields in events])

    async def record_now(self, sessionmaker: async_sessionmaker[AsyncSession], **fields: Any) -> None:
        """Record in a transaction of its own: for refusals and failures whose request rolls back."""
        async with sessionmaker() as session:
            session.add(build_event(**fields))
            await session.commit()

    async def search(
        self, session: AsyncSession, filters: AuditFilter, principal: Principal | None = None
    ) -> Page[AuditEvent]:
        """The filtered events; with ``principal``, only those it may read (see ``reader``)."""
        return await repository.list_events(session, filters, reader(principal))

    async def export(
        self,
        session: AsyncSession,
        filters: AuditFilter,
        limit: int = 100_000,
        principal: Principal | None = None,
    ) -> list[AuditEvent]:
        return await repository.export_events(session, filters, limit, reader(principal))

    async def activities(self, session: AsyncSession, principal: Principal | None = None) -> list[str]:
        """The activity names of the events the reader may read (the filter's choices)."""
        return await repository.distinct_activities(session, reader(principal))

    async def recent_counts(
        self, session: AsyncSession, principal: Principal, since: datetime
    ) -> tuple[int, int]:
        """Changes and failed sign-ins since ``since`` among the events ``principal`` may read."""
        return await repository.recent_counts(session, since, reader(principal))


audit_service = AuditService()
