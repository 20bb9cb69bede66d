"""Bulk remote actions: one remote action sent to a selection of devices (Intune's "bulk device actions").

Each device takes the action by the rules of a single device's (``CommandService.decide``), all of them at
once (``CommandService.queue_many``: a fixed number of statements, whatever the selection's size); a device
that refuses it (not found, wrong platform, already retired…) is recorded as skipped with the reason and the
others go on. The bulk action's progress is its commands' (counted by ``corral.commands.repository``)."""

from __future__ import annotations

import uuid
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import select, tuple_
from sqlalchemy.ext.asyncio import AsyncSession

from corral.audit.service import audit_service
from corral.commands import repository as commands_repository
from corral.commands.registry import REGISTRY, CommandType
from corral.commands.service import CommandRequest, command_service
from corral.config import Settings
from corral.devices import repository
from corral.devices.schemas import (
    MAX_BULK_DEVICES,
    BulkActionCreate,
    BulkActionDetail,
    BulkActionItem,
    BulkActionOut,
    BulkSkipped,
    DeviceFilter,
)
from corral.devices.service import MIN_REASON
from corral.errors import BadRequest, CorralError, Forbidden, NotFound, ValidationFailed
from corral.kit.pagination import decode_cursor, encode_cursor
from corral.kit.time import utcnow
from corral.models import BulkAction, CommandStatus, Device
from corral.models.device_command import WAITING_STATUSES
from corral.rbac.permissions import P
from corral.rbac.principal import Principal, Scope

BULK_TYPES: tuple[CommandType, ...] = tuple(c for c in REGISTRY.values() if c.not_in_bulk is None)
# The route guard: any one of these; the service then checks the chosen action's own permission.
BULK_PERMISSIONS: tuple[P, ...] = tuple(dict.fromkeys(c.permission for c in BULK_TYPES))
NOT_FOUND_REASON = "No such device."
# Still-queued commands a bulk cancel withdraws (never delivered to the device).
UNDELIVERED = (CommandStatus.queued, CommandStatus.pending_approval)


def bulk_types_for(principal: Principal) -> list[CommandType]:
    """The actions this admin may send in bulk (each needs its own permission somewhere)."""
    return [c for c in BULK_TYPES if principal.has(c.permission)]


def _is_client_error(exc: CorralError) -> bool:
    return 400 <= exc.status_code < 500


def _forget_since(session: AsyncSession, baseline: set[Any]) -> None:
    """Detach what one device's step loaded or created (already flushed: it stays in the transaction). Else
    every later flush walks every earlier device's objects, and a large selection takes quadratic time."""
    for key in [k for k in session.identity_map.keys() if k not in baseline]:  # noqa: SIM118 - not a dict
        obj = session.identity_map.get(key)
        if obj is not None:
            session.expunge(obj)


# ------------------------------------------------------------------------------------------- progress
@dataclass(frozen=True)
class Segment:
    """One part of the progress bar (x and width in percent of the whole)."""

    kind: str  # success, failure, closed, waiting
    label: str
    count: int
    x: float
    width: float


@dataclass
class Progress:
    counts: dict[str, int]
    finished: int
    waiting: int

    @property
    def total(self) -> int:
        return self.finished + self.waiting

    @property
    def done(self) -> bool:
        return self.waiting == 0


def _progress(command_type: CommandType | None, rows: Iterable[tuple[str, bool, int]]) -> Progress:
    """From (effective status, still before its deadline, count) rows."""
    counts = {s.value: 0 for s in CommandStatus}
    waiting = finished = 0
    # A wipe or retire acknowledged has ended management: the device will not report any further.
    ends = command_type is not None and command_type.ended_state is not None
    for status, live, n in rows:
        counts[status] = counts.get(status, 0) + n
        if status in WAITING_STATUSES or (status == CommandStatus.acknowledged and live and not ends):
            waiting += n
        else:
            finished += n
    return Progress(counts, finished, waiting)


def segments(out: BulkActionOut) -> list[Segment]:
    """The stacked progress bar of a bulk action: succeeded, failed, otherwise closed, still waiting."""
    c = out.counts
    total = sum(c.values())
    if not total:
        return []
    succeeded = c.get("succeeded", 0)
    waiting = total - out.finished_count
    if REGISTRY.get(out.type) is not None and REGISTRY[out.type].ended_state is not None:
        succeeded += c.get("acknowledged", 0)  # a wipe or retire taken is its success
    failed = c.get("failed", 0)
    closed = out.finished_count - succeeded - failed
    parts = [
        ("success", "Succeeded", succeeded),
        ("failure", "Failed", failed),
        ("closed", "Expired, canceled or unanswered", closed),
        ("waiting", "Waiting", waiting),
    ]
    out_segments, x = [], 0.0
    for kind, label, n in parts:
        if n <= 0:
            continue
        width = round(100 * n / total, 3)
        out_segments.append(Segment(kind, label, n, round(x, 3), width))
        x += width
    return out_segments


# ------------------------------------------------------------------------------------------- queries
async def _items(session: AsyncSession, bulk_id: uuid.UUID, scope: Scope) -> list[BulkActionItem]:
    return [
        BulkActionItem(
            device_id=row[0],
            device_name=row[1],
            command_id=row[2],
            status=str(row[3]),
            error=row[4],
            sent_at=row[5],
            completed_at=row[6],
        )
        for row in await commands_repository.bulk_items(session, bulk_id, scope)
    ]


def _out(bulk: BulkAction, rows: Iterable[tuple[str, bool, int]]) -> BulkActionOut:
    command_type = REGISTRY.get(bulk.type)
    progress = _progress(command_type, rows)
    return BulkActionOut(
        id=bulk.id,
        type=bulk.type,
        label=command_type.label if command_type else bulk.type,
        destructive=bool(command_type and command_type.destructive),
        params=bulk.params,
        reason=bulk.reason,
        requested_by_name=bulk.requested_by_name,
        created_at=bulk.created_at,
        requested_count=bulk.requested_count,
        queued_count=bulk.queued_count,
        skipped_count=len(bulk.skipped),
        counts=progress.counts,
        finished_count=progress.finished,
        done=progress.done,
    )


# ------------------------------------------------------------------------------------------- the service
class BulkActionService:
    def command_type(self, name: str) -> CommandType:
        command_type = REGISTRY.get(name)
        if command_type is None:
            known = ", ".join(c.name for c in BULK_TYPES)
            raise ValidationFailed(f"There is no remote action named {name!r}. Known: {known}.")
        if command_type.not_in_bulk is not None:
            raise ValidationFailed(
                f"{command_type.label} cannot be sent in bulk: {command_type.not_in_bulk}. "
                "Use the device's page."
            )
        return command_type

    async def _selection(
        self, session: AsyncSession, settings: Settings, principal: Principal, data: BulkActionCreate
    ) -> list[uuid.UUID]:
        if data.device_ids is not None:
            return list(dict.fromkeys(data.device_ids))  # a repeated id counts once
        assert data.filter is not None
        filters = DeviceFilter.model_validate(data.filter.model_dump())
        stmt = repository.filtered(filters, principal.scope_for(P.devices_read), settings.stale_device_days)
        ids = list(
            (
                await session.scalars(
                    stmt.with_only_columns(Device.id).order_by(Device.id).limit(MAX_BULK_DEVICES + 1)
                )
            ).all()
        )
        if not ids:
            raise ValidationFailed("No device in your scope matches the filter: nothing was sent.")
        if len(ids) > MAX_BULK_DEVICES:
            raise ValidationFailed(
                f"The filter matches more than {MAX_BULK_DEVICES} devices: narrow it (nothing was sent)."
            )
        return ids

    async def create(
        self, session: AsyncSession, settings: Settings, principal: Principal, data: BulkActionCreate
    ) -> BulkActionDetail:
        """Check the whole request first (action, permission, parameters, reason and the typed device count
        for wipe and retire): a refusal writes nothing. Then one command per device that takes it, by the
        rules of a single device's action, written set-based (``CommandService.queue_many``)."""
        command_type = self.command_type(data.type)
        if not principal.has(command_type.permission):
            raise Forbidden(f"This needs the permission {command_type.permission.value}.")
        bulk_id = uuid.uuid4()
        action = await command_service.prepare(
            session,
            principal,
            command_type,
            CommandRequest(
                type=command_type.name, params=data.params, reason=data.reason, bulk_action_id=bulk_id
            ),
        )
        if action.params_error is not None:
            raise action.params_error
        reason = action.reason
        if command_type.destructive and (reason is None or len(reason) < MIN_REASON):
            raise ValidationFailed(f"{command_type.label} needs a reason (at least {MIN_REASON} characters).")
        device_ids = await self._selection(session, settings, principal, data)
        if command_type.destructive and (data.confirm or "").strip() != str(len(device_ids)):
            raise ValidationFailed(
                f"Type the number of selected devices ({len(device_ids)}) to confirm "
                f"{command_type.label.lower()} on all of them."
            )
        bulk = BulkAction(
            id=bulk_id,
            type=command_type.name,
            params=action.params,
            reason=reason,
            requested_by_id=principal.user_id,
            requested_by_name=principal.user_principal_name,
            created_at=utcnow(),
            requested_count=len(device_ids),
            queued_count=0,
            skipped=[],
        )
        session.add(bulk)
        await session.flush()
        issues, refusals = await command_service.queue_many(session, principal, action, device_ids)
        bulk.queued_count = len(issues)
        bulk.skipped = [
            {
                "device_id": str(refusal.device_id),
                # Outside the caller's scope and nonexistent look the same: "not found", no name.
                "device_name": refusal.device_name,
                "reason": NOT_FOUND_REASON if refusal.device_name is None else refusal.error.detail,
            }
            for refusal in refusals
        ]
        await session.flush()
        changes: list[tuple[str, Any, Any]] = [
            ("type", None, command_type.name),
            ("params", None, action.params),
            ("requested", None, len(device_ids)),
            ("queued", None, len(issues)),
            ("skipped", None, len(refusals)),
        ]
        if data.filter is not None:
            changes.append(("filter", None, data.filter.model_dump(exclude_none=True, mode="json")))
        await audit_service.record(
            session,
            activity=f"device.bulk_action.{command_type.name}",
            category="remote_action",
            operation="create",
            target_type="bulk_action",
            target_id=bulk.id,
            target_name=f"{command_type.label} on {len(device_ids)} device(s)",
            changes=changes,
            detail=reason,
        )
        return await self.detail(session, principal, bulk)

    async def get(self, session: AsyncSession, bulk_id: uuid.UUID) -> BulkAction:
        bulk = await session.get(BulkAction, bulk_id)
        if bulk is None:
            raise NotFound("No such bulk action.")
        return bulk

    async def detail(self, session: AsyncSession, principal: Principal, bulk: BulkAction) -> BulkActionDetail:
        """The bulk action with its progress; devices outside the caller's read scope are counted, not
        named."""
        scope = principal.scope_for(P.devices_read)
        out = _out(bulk, (await commands_repository.bulk_counts(session, [bulk.id])).get(bulk.id, []))
        items = await _items(session, bulk.id, scope)
        skipped_ids = []
        for entry in bulk.skipped:
            try:
                skipped_ids.append(uuid.UUID(str(entry.get("device_id"))))
            except ValueError:
                continue
        readable = {str(i) for i in await repository.names(session, scope, skipped_ids)}
        skipped = []
        for entry in bulk.skipped:
            device_id = str(entry.get("device_id"))
            visible = device_id in readable
            skipped.append(
                BulkSkipped(
                    device_id=device_id,
                    device_name=entry.get("device_name") if visible else None,
                    reason=str(entry.get("reason")) if visible else NOT_FOUND_REASON,
                )
            )
        total = sum(out.counts.values())
        return BulkActionDetail(
            **out.model_dump(), skipped=skipped, items=items, hidden_count=max(0, total - len(items))
        )

    async def show(self, session: AsyncSession, principal: Principal, bulk_id: uuid.UUID) -> BulkActionDetail:
        return await self.detail(session, principal, await self.get(session, bulk_id))

    async def page(
        self, session: AsyncSession, cursor: str | None, limit: int
    ) -> tuple[list[BulkActionOut], str | None]:
        """Bulk actions, newest first (keyset pagination), each with its counts (one GROUP BY per page)."""
        stmt = select(BulkAction)
        position = decode_cursor(cursor)
        if position is not None:
            try:
                created_at, last_id = datetime.fromisoformat(str(position[0])), uuid.UUID(str(position[1]))
            except (ValueError, TypeError, IndexError) as exc:
                raise BadRequest(
                    "The pagination cursor is malformed; start again from the first page."
                ) from exc
            stmt = stmt.where(tuple_(BulkAction.created_at, BulkAction.id) < tuple_(created_at, last_id))
        stmt = stmt.order_by(BulkAction.created_at.desc(), BulkAction.id.desc()).limit(limit + 1)
        rows = list((await session.scalars(stmt)).all())
        more = len(rows) > limit
        rows = rows[:limit]
        counts = await commands_repository.bulk_counts(session, [b.id for b in rows])
        next_cursor = (
            encode_cursor([rows[-1].created_at.isoformat(), str(rows[-1].id)]) if more and rows else None
        )
        return [_out(b, counts.get(b.id, [])) for b in rows], next_cursor

    def can_cancel(self, principal: Principal, out: BulkActionOut) -> bool:
        """Whether the portal offers "Cancel queued": something undelivered and the action's permission."""
        command_type = REGISTRY.get(out.type)
        return (
            command_type is not None
            and principal.has(command_type.permission)
            and any(out.counts.get(s.value, 0) for s in UNDELIVERED)
        )

    async def cancel(
        self, session: AsyncSession, principal: Principal, bulk_id: uuid.UUID
    ) -> tuple[int, int]:
        """Cancel the bulk action's still-queued commands this admin may cancel, each through
        ``CommandService.cancel`` in a savepoint; returns (canceled, kept)."""
        bulk = await self.get(session, bulk_id)
        command_type = REGISTRY.get(bulk.type)
        if command_type is None or not principal.has(command_type.permission):
            permission = command_type.permission.value if command_type else "of this action"
            raise Forbidden(f"This needs the permission {permission}.")
        undelivered = await commands_repository.bulk_undelivered(session, bulk.id, UNDELIVERED)
        canceled = kept = 0
        baseline = set(session.identity_map.keys())
        for device_id, command_id in undelivered:
            _forget_since(session, baseline)
            try:
                async with session.begin_nested():
                    await command_service.cancel(session, principal, device_id, command_id)
            except CorralError as exc:
                if not _is_client_error(exc):
                    raise
                kept += 1
            else:
                canceled += 1
        if canceled:
            await audit_service.record(
                session,
                activity="device.bulk_action.cancel",
                category="remote_action",
                operation="update",
                target_type="bulk_action",
                target_id=bulk.id,
                target_name=f"{command_type.label} on {bulk.requested_count} device(s)",
                changes=[("canceled", None, canceled), ("kept", None, kept)],
            )
        return canceled, kept


bulk_service = BulkActionService()
