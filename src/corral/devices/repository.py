from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Sequence
from datetime import UTC, datetime, time, timedelta
from typing import Any, cast

from sqlalchemy import (
    ColumnElement,
    Select,
    and_,
    any_,
    bindparam,
    delete,
    exists,
    false,
    func,
    literal_column,
    or_,
    select,
    tuple_,
)
from sqlalchemy.dialects.postgresql import ARRAY, insert
from sqlalchemy.dialects.postgresql import UUID as PG_UUID
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm import joinedload, selectinload, with_expression

from corral.devices.schemas import MAX_BULK_DEVICES, DeviceFilter
from corral.errors import BadRequest
from corral.kit.csvexport import EXPORT_BATCH
from corral.kit.db import EPOCH_SQL
from corral.kit.pagination import Total, decode_cursor, keyset_page, page_total
from corral.models import (
    ComplianceState,
    Device,
    DeviceApp,
    DeviceCertificate,
    DeviceCompliancePolicy,
    DeviceInventoryChange,
    ManagementState,
    User,
    device_checkin_days,
    device_scope_tags,
    group_devices,
    group_users,
)
from corral.rbac.principal import Scope
from corral.users import repository as users_repository

# pg_trgm indexes the three-character runs of a text: a shorter needle cannot use them.
TRIGRAM = 3


def _tagged(tag_ids: frozenset[uuid.UUID]) -> ColumnElement[bool]:
    return exists().where(
        device_scope_tags.c.device_id == Device.id, device_scope_tags.c.scope_tag_id.in_(sorted(tag_ids))
    )


def _in_groups(group_ids: frozenset[uuid.UUID]) -> ColumnElement[bool]:
    """The device, or its primary user, is a direct member of one of the (already expanded) groups."""
    ids = sorted(group_ids)
    return or_(
        exists().where(group_devices.c.device_id == Device.id, group_devices.c.group_id.in_(ids)),
        exists().where(group_users.c.user_id == Device.user_id, group_users.c.group_id.in_(ids)),
    )


def scoped(stmt: Select[Any], scope: Scope) -> Select[Any]:
    """Devices in a scope: all, or those some reach of it reaches (its tags, when it names tags; its scope
    groups, when it has some). Untagged devices: only reaches not limited to tags."""
    if scope.all:
        return stmt
    if scope.empty:
        return stmt.where(false())
    clauses = []
    for reach in sorted(scope.reaches, key=repr):  # a stable statement text
        parts = []
        if reach.tag_ids is not None:
            parts.append(_tagged(reach.tag_ids))
        if reach.group_ids is not None:
            parts.append(_in_groups(reach.group_ids))
        clauses.append(and_(*parts))
    return stmt.where(or_(*clauses))


# The groups a device or its primary user belongs to directly (Device.member_of).
MEMBER_OF: ColumnElement[list[uuid.UUID]] = func.coalesce(
    func.array_cat(
        select(func.array_agg(group_devices.c.group_id))
        .where(group_devices.c.device_id == Device.id)
        .scalar_subquery(),
        select(func.array_agg(group_users.c.group_id))
        .where(group_users.c.user_id == Device.user_id)
        .scalar_subquery(),
    ),
    literal_column("'{}'::uuid[]", ARRAY(PG_UUID(as_uuid=True))),
    type_=ARRAY(PG_UUID(as_uuid=True)),
)


def with_member_of(stmt: Select[Any]) -> Select[Any]:
    """Load ``Device.member_of`` with the devices (refreshing ones already in the session)."""
    return stmt.options(with_expression(Device.member_of, MEMBER_OF)).execution_options(
        populate_existing=True
    )


def _sort_expr(sort: str) -> tuple[ColumnElement[Any], bool]:
    descending = sort.startswith("-")
    key = sort.lstrip("-")
    expr: ColumnElement[Any]
    if key == "name":
        expr = func.lower(Device.name)
    elif key == "last_checkin_at":
        expr = func.coalesce(Device.last_checkin_at, EPOCH_SQL)
    else:
        expr = Device.enrolled_at.expression
    return expr, descending


def filtered(filters: DeviceFilter, scope: Scope, stale_days: int) -> Select[Any]:
    stmt = scoped(select(Device), scope)
    if filters.search:
        needle = filters.search.strip()
        by_user: ColumnElement[bool]
        if len(needle) >= TRIGRAM:
            # Every arm reads its own trigram index (the matching users' ids read once, as an array), so
            # PostgreSQL ORs the matches as bitmaps instead of reading every device.
            users = select(User.id).where(users_repository.search(needle)).scalar_subquery()
            by_user = Device.user_id == any_(func.array(users, type_=ARRAY(PG_UUID(as_uuid=True))))
        else:
            # Too short for trigrams, and likely to match many: the page walks its sort index and looks up
            # each device's user by key (an array of every matching user would be checked row by row).
            by_user = exists().where(User.id == Device.user_id, users_repository.search(needle))
        stmt = stmt.where(
            or_(
                Device.name.icontains(needle, autoescape=True),
                Device.serial_number.icontains(needle, autoescape=True),
                Device.primary_user.icontains(needle, autoescape=True),
                by_user,
            )
        )
    for column, value in (
        (Device.platform, filters.platform),
        (Device.ownership, filters.ownership),
        (Device.management_state, filters.management_state),
        (Device.compliance_state, filters.compliance_state),
        (Device.user_id, filters.user_id),
    ):
        if value is not None:
            stmt = stmt.where(column == value)
    if filters.checked_in_on is not None:
        stmt = stmt.where(
            exists().where(
                device_checkin_days.c.day == filters.checked_in_on,
                device_checkin_days.c.device_id == Device.id,
            )
        )
    if filters.failing_setting is not None:
        stmt = stmt.where(
            exists().where(
                DeviceCompliancePolicy.device_id == Device.id,
                DeviceCompliancePolicy.settings[filters.failing_setting]["state"].astext
                == ComplianceState.noncompliant.value,
            )
        )
    if filters.grace_ends_on is not None:
        start = datetime.combine(filters.grace_ends_on, time(), tzinfo=UTC)
        stmt = stmt.where(
            Device.compliance_state == ComplianceState.in_grace_period,
            exists().where(
                DeviceCompliancePolicy.device_id == Device.id,
                DeviceCompliancePolicy.state == ComplianceState.in_grace_period,
                DeviceCompliancePolicy.grace_ends_at >= start,
                DeviceCompliancePolicy.grace_ends_at < start + timedelta(days=1),
            ),
        )
    if filters.stale is not None:
        threshold = datetime.now(UTC) - timedelta(days=stale_days)
        last = func.coalesce(Device.last_checkin_at, Device.enrolled_at)
        stmt = stmt.where(last < threshold if filters.stale else last >= threshold)
    return stmt


def page_statements(filters: DeviceFilter, scope: Scope, stale_days: int) -> tuple[Select[Any], Select[Any]]:
    """A page's two statements: the filtered devices (what its total counts) and its rows, the devices after
    the cursor in sort order with their sort key last, one more than the limit (is there a next page?)."""
    base = filtered(filters, scope, stale_days)
    expr, descending = _sort_expr(filters.sort)
    stmt = base
    cursor = decode_cursor(filters.cursor)
    if cursor is not None:
        try:
            value, last_id = cursor
            if filters.sort.lstrip("-") != "name":
                value = datetime.fromisoformat(value)
            last_uuid = uuid.UUID(str(last_id))
        except (ValueError, TypeError) as exc:
            raise BadRequest("The pagination cursor is malformed; start again from the first page.") from exc
        key = tuple_(expr, Device.id)
        stmt = stmt.where(key < tuple_(value, last_uuid) if descending else key > tuple_(value, last_uuid))
    order = (expr.desc(), Device.id.desc()) if descending else (expr.asc(), Device.id.asc())
    # The sort key comes back from the database, so the cursor holds exactly what PostgreSQL compares
    # (its lower() and Python's differ for some non-ASCII names).
    return base, stmt.add_columns(expr).order_by(*order).limit(filters.limit + 1)


async def page(
    session: AsyncSession, filters: DeviceFilter, scope: Scope, stale_days: int
) -> tuple[list[Device], str | None, Total]:
    base, rows_stmt = page_statements(filters, scope, stale_days)
    rows = (await session.execute(rows_stmt.options(selectinload(Device.scope_tags)))).all()
    items, next_cursor = keyset_page(rows, filters.limit)
    return items, next_cursor, await page_total(session, base, filters.cursor, items, next_cursor)


async def export(
    session: AsyncSession, filters: DeviceFilter, scope: Scope, stale_days: int
) -> AsyncIterator[Sequence[Device]]:
    """Every filtered device in sort order, in batches of ``EXPORT_BATCH`` from one server-side cursor."""
    expr, descending = _sort_expr(filters.sort)
    stmt = filtered(filters, scope, stale_days).options(selectinload(Device.scope_tags))
    stmt = stmt.order_by(expr.desc() if descending else expr.asc(), Device.id)
    result = await session.stream_scalars(stmt.execution_options(yield_per=EXPORT_BATCH))
    async for batch in result.partitions():
        yield batch


# Built once (every device page and remote action reads a device this way; building the statement cost more
# CPU than running it).
_GET = with_member_of(
    select(Device).options(joinedload(Device.scope_tags)).where(Device.id == bindparam("device_id"))
)
_GET_FOR_UPDATE = _GET.with_for_update(of=Device)


async def get(session: AsyncSession, device_id: uuid.UUID, *, for_update: bool = False) -> Device | None:
    """The device with its scope tags and groups, in one round trip (the scope check needs both)."""
    stmt = _GET_FOR_UPDATE if for_update else _GET
    result = await session.execute(stmt, {"device_id": device_id})
    device: Device | None = result.unique().scalar_one_or_none()
    return device


async def lock_many(
    session: AsyncSession, device_ids: Sequence[uuid.UUID], scopes: Sequence[Scope]
) -> list[Device]:
    """Those of the devices inside every one of ``scopes``, with their scope tags, locked in id order (the
    order every multi-device writer takes them in, so two of them cannot deadlock; check-in locks one)."""
    if not device_ids:
        return []
    stmt = select(Device)
    for scope in scopes:
        stmt = scoped(stmt, scope)
    stmt = (
        with_member_of(stmt)
        .options(selectinload(Device.scope_tags))
        .where(Device.id.in_(device_ids))
        .order_by(Device.id)
        .with_for_update(of=Device)
    )
    return list((await session.scalars(stmt)).all())


async def names(session: AsyncSession, scope: Scope, device_ids: Sequence[uuid.UUID]) -> dict[uuid.UUID, str]:
    """Names of those devices the scope can read (the others do not exist for the caller)."""
    out: dict[uuid.UUID, str] = {}
    for start in range(0, len(device_ids), MAX_BULK_DEVICES):
        chunk = device_ids[start : start + MAX_BULK_DEVICES]
        stmt = scoped(cast("Select[Any]", select(Device.id, Device.name)), scope).where(Device.id.in_(chunk))
        out.update({row[0]: row[1] for row in (await session.execute(stmt)).all()})
    return out


async def current_certificate(session: AsyncSession, device_id: uuid.UUID) -> DeviceCertificate | None:
    stmt = (
        select(DeviceCertificate)
        .where(DeviceCertificate.device_id == device_id, DeviceCertificate.revoked_at.is_(None))
        .order_by(DeviceCertificate.not_after.desc())
        .limit(1)
    )
    result: DeviceCertificate | None = await session.scalar(stmt)
    return result


async def certificates(session: AsyncSession, device_id: uuid.UUID) -> list[DeviceCertificate]:
    stmt = (
        select(DeviceCertificate)
        .where(DeviceCertificate.device_id == device_id)
        .order_by(DeviceCertificate.created_at.desc())
    )
    return list((await session.scalars(stmt)).all())


async def history(
    session: AsyncSession, device_id: uuid.UUID, limit: int = 200
) -> list[DeviceInventoryChange]:
    stmt = (
        select(DeviceInventoryChange)
        .where(DeviceInventoryChange.device_id == device_id)
        .order_by(DeviceInventoryChange.seq.desc())
        .limit(limit)
    )
    return list((await session.scalars(stmt)).all())


async def apps(session: AsyncSession, device_id: uuid.UUID) -> list[DeviceApp]:
    stmt = select(DeviceApp).where(DeviceApp.device_id == device_id).order_by(func.lower(DeviceApp.name))
    return list((await session.scalars(stmt)).all())


async def replace_apps(
    session: AsyncSession, device_id: uuid.UUID, rows: dict[str, tuple[str, str | None]], removed: set[str]
) -> None:
    """Upsert the given apps (identifier → (name, version)) and delete the removed identifiers."""
    if removed:
        await session.execute(
            delete(DeviceApp).where(DeviceApp.device_id == device_id, DeviceApp.identifier.in_(removed))
        )
    if rows:
        values = [
            {"device_id": device_id, "identifier": ident, "name": name, "version": version}
            for ident, (name, version) in rows.items()
        ]
        for start in range(0, len(values), 1000):
            stmt = insert(DeviceApp).values(values[start : start + 1000])
            await session.execute(
                stmt.on_conflict_do_update(
                    index_elements=[DeviceApp.device_id, DeviceApp.identifier],
                    set_={"name": stmt.excluded.name, "version": stmt.excluded.version},
                )
            )


async def managed_of_user(session: AsyncSession, user_id: uuid.UUID) -> list[tuple[uuid.UUID, str]]:
    """(id, name) of the user's devices still under management, whatever anyone's scope."""
    stmt = (
        select(Device.id, Device.name)
        .where(Device.user_id == user_id, Device.management_state == ManagementState.managed)
        .order_by(Device.id)
    )
    return [(row[0], row[1]) for row in (await session.execute(stmt)).all()]


async def lock_unless_busy(session: AsyncSession, device_ids: Sequence[uuid.UUID]) -> list[Device]:
    """Those of the devices no other transaction holds, locked in id order; the others are skipped, not
    waited for (background work that a later run, or the device's own check-in, can do instead)."""
    stmt = (
        select(Device)
        .where(Device.id.in_(sorted(device_ids)))
        .order_by(Device.id)
        .with_for_update(skip_locked=True)
    )
    return list((await session.scalars(stmt)).all())
