"""Keyset pagination: the cursor carries the sort key of the last row, so page 1000 costs what page 1 does."""

from __future__ import annotations

import base64
import json
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Generic, TypeVar

from sqlalchemy import Row, Select, func, select
from sqlalchemy.ext.asyncio import AsyncSession

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


def count_statement(base: Select[Any]) -> Select[Any]:
    """How many rows ``base`` (a list's filtered query, unsorted and unpaged) matches."""
    return select(func.count()).select_from(base.order_by(None).subquery())


def total_statements(base: Select[Any]) -> list[Select[Any]]:
    """The statements ``count_total`` runs (the benchmark runs them raw)."""
    return [count_statement(base)]


async def count_total(session: AsyncSession, base: Select[Any]) -> Total:
    return Total(int(await session.scalar(count_statement(base)) or 0))
