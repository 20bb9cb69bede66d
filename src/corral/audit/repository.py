from __future__ import annotations

from sqlalchemy import Select, select
from sqlalchemy.ext.asyncio import AsyncSession

from corral.audit.schemas import AuditFilter
from corral.errors import BadRequest
from corral.kit.pagination import Page, decode_cursor, encode_cursor
from corral.models import AuditEvent


def _filtered(filters: AuditFilter, hidden: frozenset[str] = frozenset()) -> Select[AuditEvent]:
    stmt = select(AuditEvent)
    if hidden:
        stmt = stmt.where(AuditEvent.category.not_in(hidden))
    if filters.actor:
        stmt = stmt.where(AuditEvent.actor_name.icontains(filters.actor, autoescape=True))
    if filters.activity:
        stmt = stmt.where(AuditEvent.activity == filters.activity)
    if filters.category:
        stmt = stmt.where(AuditEvent.category == filters.category)
    if filters.result:
        stmt = stmt.where(AuditEvent.result == filters.result)
    if filters.target_type:
        stmt = stmt.where(AuditEvent.target_type == filters.target_type)
    if filters.target_id:
        stmt = stmt.where(AuditEvent.target_id == filters.target_id)
    if filters.correlation_id:
        stmt = stmt.where(AuditEvent.correlation_id == filters.correlation_id)
    if filters.since:
        stmt = stmt.where(AuditEvent.occurred_at >= filters.since)
    if filters.until:
        stmt = stmt.where(AuditEvent.occurred_at < filters.until)
    return stmt.order_by(AuditEvent.seq.desc())


async def list_events(
    session: AsyncSession, filters: AuditFilter, hidden: frozenset[str] = frozenset()
) -> Page[AuditEvent]:
    stmt = _filtered(filters, hidden)
    cursor = decode_cursor(filters.cursor)
    if cursor is not None:
        # Exactly one sequence number that fits the BIGINT column; anything else is a forged cursor (a value
        # out of range used to reach the database and fail there as a 500).
        last_seq = cursor[0] if len(cursor) == 1 else None
        if not isinstance(last_seq, int) or isinstance(last_seq, bool) or not 0 < last_seq < 2**63:
            raise BadRequest("The pagination cursor is malformed; start again from the first page.")
        stmt = stmt.where(AuditEvent.seq < last_seq)
    rows = list((await session.scalars(stmt.limit(filters.limit + 1))).all())
    more = len(rows) > filters.limit
    items = rows[: filters.limit]
    return Page(items=items, next_cursor=encode_cursor([items[-1].seq]) if more and items else None)


async def export_events(
    session: AsyncSession, filters: AuditFilter, limit: int, hidden: frozenset[str] = frozenset()
) -> list[AuditEvent]:
    return list((await session.scalars(_filtered(filters, hidden).limit(limit))).all())


async def distinct_activities(session: AsyncSession, hidden: frozenset[str] = frozenset()) -> list[str]:
    stmt = select(AuditEvent.activity).distinct().order_by(AuditEvent.activity)
    if hidden:
        stmt = stmt.where(AuditEvent.category.not_in(hidden))
    return list((await session.scalars(stmt)).all())
