from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import ColumnElement, Select, String, and_, cast, func, or_, select
from sqlalchemy.ext.asyncio import AsyncSession

from corral.audit.schemas import AuditFilter
from corral.devices import repository as devices_repository
from corral.errors import BadRequest
from corral.kit.pagination import Page, decode_cursor, encode_cursor
from corral.models import AuditEvent, Device, User
from corral.rbac.principal import EVERYWHERE, Scope
from corral.users import repository as users_repository


@dataclass(frozen=True)
class Reader:
    """Who reads the log: the categories hidden from them, and the scope that decides which devices and
    users they may read events about."""

    hidden: frozenset[str] = frozenset()
    scope: Scope = EVERYWHERE


EVERYTHING = Reader()


def _about(target_type: str, everyone: Select[Any], ids: Select[Any]) -> ColumnElement[bool] | None:
    """Events about another kind of object, or about one of ``ids`` (the objects' ids as text, as
    ``target_id`` holds them); None when ``ids`` is every one (``everyone`` unfiltered), so an unscoped
    reader's query is unchanged. PostgreSQL runs the id list once per query and probes it as a hash (no
    lookup per event); an event about an object that no longer exists, or that names none, is not in it."""
    if ids is everyone:
        return None
    return or_(AuditEvent.target_type.is_distinct_from(target_type), AuditEvent.target_id.in_(ids))


def _visible(reader: Reader) -> list[ColumnElement[bool]]:
    conditions: list[ColumnElement[bool]] = []
    if reader.hidden:
        conditions.append(AuditEvent.category.not_in(reader.hidden))
    devices, users = select(cast(Device.id, String)), select(cast(User.id, String))
    for condition in (
        _about("device", devices, devices_repository.scoped(devices, reader.scope)),
        _about("user", users, users_repository.scoped(users, reader.scope)),
    ):
        if condition is not None:
            conditions.append(condition)
    return conditions


def _filtered(filters: AuditFilter, reader: Reader) -> Select[AuditEvent]:
    stmt = select(AuditEvent).where(*_visible(reader))
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


def page_statement(filters: AuditFilter, reader: Reader = EVERYTHING) -> Select[AuditEvent]:
    """A page's statement: the events after the cursor, newest first, one more than the limit."""
    stmt = _filtered(filters, reader)
    cursor = decode_cursor(filters.cursor)
    if cursor is not None:
        # Exactly one sequence number that fits the BIGINT column; anything else is a forged cursor (a value
        # out of range used to reach the database and fail there as a 500).
        last_seq = cursor[0] if len(cursor) == 1 else None
        if not isinstance(last_seq, int) or isinstance(last_seq, bool) or not 0 < last_seq < 2**63:
            raise BadRequest("The pagination cursor is malformed; start again from the first page.")
        stmt = stmt.where(AuditEvent.seq < last_seq)
    return stmt.limit(filters.limit + 1)


async def list_events(
    session: AsyncSession, filters: AuditFilter, reader: Reader = EVERYTHING
) -> Page[AuditEvent]:
    rows = list((await session.scalars(page_statement(filters, reader))).all())
    more = len(rows) > filters.limit
    items = rows[: filters.limit]
    return Page(items=items, next_cursor=encode_cursor([items[-1].seq]) if more and items else None)


async def export_events(
    session: AsyncSession, filters: AuditFilter, limit: int, reader: Reader = EVERYTHING
) -> list[AuditEvent]:
    return list((await session.scalars(_filtered(filters, reader).limit(limit))).all())


async def distinct_activities(session: AsyncSession, reader: Reader = EVERYTHING) -> list[str]:
    stmt = select(AuditEvent.activity).where(*_visible(reader)).distinct().order_by(AuditEvent.activity)
    return list((await session.scalars(stmt)).all())


async def recent_counts(
    session: AsyncSession, since: datetime, reader: Reader = EVERYTHING
) -> tuple[int, int]:
    """Since ``since``: changes (events other than sign-ins and sign-outs) and failed sign-ins (one scan)."""
    changes = func.count().filter(AuditEvent.category != "authentication")
    failed = func.count().filter(and_(AuditEvent.activity == "signin", AuditEvent.result == "failure"))
    stmt = select(changes, failed).where(AuditEvent.occurred_at >= since, *_visible(reader))
    row = (await session.execute(stmt)).one()
    return int(row[0] or 0), int(row[1] or 0)
