"""Keyset pagination: the cursor carries the sort key of the last row, so page 1000 costs what page 1 does."""

from __future__ import annotations

import base64
import json
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Generic, TypeVar

from sqlalchemy import ClauseElement, Executable, Row, Select, func, literal_column, select
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.ext.compiler import compiles
from sqlalchemy.sql.compiler import SQLCompiler

from corral.errors import BadRequest

T = TypeVar("T")

DEFAULT_LIMIT = 50
# Beyond this many matches a list's total is the planner's estimate (counting a million rows for a header
# would cost more than the page itself); below, it is counted.
COUNT_EXACTLY_UP_TO = 10_000
MAX_LIMIT = 500


@dataclass
class Page(Generic[T]):
    items: list[T]
    next_cursor: str | None


def encode_cursor(values: list[Any]) -> str:
    return base64.urlsafe_b64encode(json.dumps(values, default=str).encode()).decode().rstrip("=")


def decode_cursor(cursor: str | None) -> list[Any] | None:
    if not cursor:
        return None
    try:
        padded = cursor + "=" * (-len(cursor) % 4)
        values = json.loads(base64.urlsafe_b64decode(padded.encode()))
    except (ValueError, UnicodeDecodeError) as exc:
        raise BadRequest("The pagination cursor is malformed; start again from the first page.") from exc
    if not isinstance(values, list):
        raise BadRequest("The pagination cursor is malformed; start again from the first page.")
    return values


def keyset_page(rows: Sequence[Row[Any]], limit: int) -> tuple[list[Any], str | None]:
    """The page's objects and the cursor after the last one, from up to ``limit + 1`` rows of (object, sort
    key) in sort order (the one beyond the limit says that there is a next page); the objects have ids."""
    items = [row[0] for row in rows[:limit]]
    if len(rows) <= limit or not items:
        return items, None
    last_key: Any = tuple(rows[limit - 1])[1]
    if isinstance(last_key, datetime):
        last_key = last_key.isoformat()
    return items, encode_cursor([last_key, str(items[-1].id)])


def clamp_limit(limit: int | None) -> int:
    if limit is None:
        return DEFAULT_LIMIT
    return max(1, min(MAX_LIMIT, limit))


# ------------------------------------------------------------------------------------------------ totals
@dataclass(frozen=True)
class Total:
    """How many rows a list's filters match."""

    value: int
    exact: bool = True
    threshold: int = COUNT_EXACTLY_UP_TO


class _Estimate(Executable, ClauseElement):
    """How many rows the planner expects a query to return: ``EXPLAIN (FORMAT JSON)`` of it, not run."""

    inherit_cache = False  # compiled per use (a fraction of a millisecond): a cached one needs result columns

    def __init__(self, stmt: Select[Any]) -> None:
        self.stmt = stmt


@compiles(_Estimate, "postgresql")
def _compile_estimate(element: _Estimate, compiler: SQLCompiler, **kw: Any) -> str:
    return "EXPLAIN (FORMAT JSON) " + compiler.process(element.stmt, **kw)


def total_statements(base: Select[Any]) -> tuple[Executable, Select[Any]]:
    """The statements ``count_total`` runs for ``base`` (a list's filtered query, unsorted and unpaged): the
    planner's estimate, then (only when that is within ``COUNT_EXACTLY_UP_TO``) a count that stops after
    ``COUNT_EXACTLY_UP_TO + 1`` rows."""
    rows: Select[Any] = base.with_only_columns(literal_column("1"), maintain_column_froms=True).order_by(None)
    return _Estimate(rows), select(func.count()).select_from(rows.limit(COUNT_EXACTLY_UP_TO + 1).subquery())


def planned_rows(plan: Any) -> int:
    """The row estimate of an ``EXPLAIN (FORMAT JSON)`` answer (text or already parsed)."""
    if isinstance(plan, str):
        plan = json.loads(plan)
    return int(plan[0]["Plan"]["Plan Rows"])


async def count_total(session: AsyncSession, base: Select[Any]) -> Total:
    """How many rows ``base`` matches, never counting more than ``COUNT_EXACTLY_UP_TO`` of them: when the
    planner expects more, its estimate (one planning, nothing read: counting a million rows, or even ten
    thousand scattered ones, for a list's header costs more than the page); else counted, exactly unless the
    estimate was short and the count reached the threshold."""
    threshold = COUNT_EXACTLY_UP_TO
    estimate, count = total_statements(base)
    planned = planned_rows(await session.scalar(estimate))
    if planned > threshold:
        return Total(planned, exact=False, threshold=threshold)
    counted = int(await session.scalar(count) or 0)
    return Total(counted, exact=counted <= threshold, threshold=threshold)


async def page_total(
    session: AsyncSession,
    base: Select[Any],
    cursor: str | None,
    items: Sequence[Any],
    next_cursor: str | None,
) -> Total:
    """A page's total: the page itself when it is the first and the last (nothing to count), else
    ``count_total``."""
    if cursor is None and next_cursor is None:
        return Total(len(items), threshold=COUNT_EXACTLY_UP_TO)
    return await count_total(session, base)
