"""Devices for admins: scoped reads, edits, deletion, and remote actions with their lifecycle."""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from pydantic import ValidationError
from sqlalchemy import insert, select, text, update
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm.attributes import set_committed_value

from corral.audit.service import audit_service
from corral.config import Settings
from corral.devices import approvals, expiry, repository
from corral.devices.commands import REGISTRY, CommandType
from corral.devices.schemas import DeviceDetail, DeviceFilter, DeviceOut, DeviceUpdate
from corral.errors import Conflict, CorralError, Forbidden, NotFound, ValidationFailed
from corral.groups import membership as group_membership
from corral.kit.csvexport import to_csv
from corral.kit.time import utcnow
from corral.models import (
    CommandStatus,
    Device,
    DeviceApp,
    DeviceCertificate,
    DeviceCommand,
    DeviceInventoryChange,
    ManagementState,
    Ownership,
)
from corral.models.device_command import OPEN_STATUSES
from corral.rbac import repository as rbac_repository
from corral.rbac.permissions import P
from corral.rbac.principal import EVERYWHERE, Principal, Scope, authorize_object, not_permitted
from corral.tenant.service import tenant_service

WAKE_CHANNEL = "corral_device_wake"
ENDED = (ManagementState.retired, ManagementState.wiped)
ENDING = (
    ManagementState.wipe_pending,
    ManagementState.wipe_issued,
    ManagementState.retire_pending,
    ManagementState.retire_issued,
)
MIN_REASON = 5
# Statuses a requester (or anyone with the action's permission) may still cancel a destructive action in.
CANCELABLE_DESTRUCTIVE = (CommandStatus.queued, CommandStatus.pending_approval)


def is_stale(device: Device, stale_days: int) -> bool:
    last = device.last_checkin_at or device.enrolled_at
    return last < utcnow() - timedelta(days=stale_days)


def _fields(schema: type[DeviceOut], device: Device, stale_days: int) -> dict[str, Any]:
    values = {name: getattr(device, name) for name in schema.model_fields if hasattr(Device, name)}
    values["stale"] = is_stale(device, stale_days)
    values["scope_tags"] = sorted(t.name for t in device.scope_tags)
    return values


def device_out(device: Device, stale_days: int) -> DeviceOut:
    return DeviceOut.model_validate(_fields(DeviceOut, device, stale_days))


CSV_HEADER = [
    "id",
    "name",
    "serial_number",
    "platform",
    "os_version",
    "model",
    "manufacturer",
    "ownership",
    "management_state",
    "compliance_state",
    "primary_user",
    "enrolled_at",
    "last_checkin_at",
    "stale",
    "scope_tags",
]


def csv_row(out: DeviceOut) -> list[object]:
    return [
        out.id,
        out.name,
        out.serial_number,
        out.platform,
        out.os_version,
        out.model,
        out.manufacturer,
        out.ownership,
        out.management_state,
        out.compliance_state,
        out.primary_user,
        out.enrolled_at.isoformat(),
        out.last_checkin_at.isoformat() if out.last_checkin_at else "",
        out.stale,
        " ".join(out.scope_tags),
    ]


@dataclass
class IssueRequest:
    type: str
    params: dict[str, Any]
    reason: str | None = None
    confirm: str | None = None
    idempotency_key: str | None = None
    # Part of a bulk action: a destructive one was confirmed for the whole selection (the typed device
    # count), so each device needs the reason only.
    bulk_action_id: uuid.UUID | None = None


async def wake(session: AsyncSession, device_id: uuid.UUID, reason: str) -> None:
    """Tell whichever replica holds the device's push connection to wake it (delivered at commit)."""
    await wake_many(session, [device_id], reason)


async def wake_many(session: AsyncSession, device_ids: Sequence[uuid.UUID], reason: str) -> None:
    """``wake`` for any number of devices in one statement (a notification each)."""
    if device_ids:
        await session.execute(
            text("SELECT pg_notify(:channel, payload) FROM unnest(CAST(:payloads AS text[])) AS payload"),
            {"channel": WAKE_CHANNEL, "payloads": [f"{device_id}:{reason}" for device_id in device_ids]},
        )


def validate_params(command_type: CommandType, params: dict[str, Any]) -> dict[str, Any]:
    """The action's parameters, validated (``None`` values left out); the first error as the refusal."""
    try:
        return command_type.params.model_validate(params).model_dump(exclude_none=True)
    except ValidationError as exc:
        error = exc.errors()[0]
        where = ".".join(str(p) for p in error.get("loc", ()))
        raise ValidationFailed(
            f"params.{where}: {error.get('msg')}" if where else str(error.get("msg"))
        ) from exc


@dataclass(frozen=True)
class PreparedAction:
    """A remote action as checked once for any number of devices (``DeviceService.prepare``). A parameter
    error is kept, not raised, so that ``decide`` refuses in the order it always has (a retired device is a
    conflict before bad parameters are)."""

    command_type: CommandType
    params: dict[str, Any]
    params_error: ValidationFailed | None
    reason: str | None
    confirm: str | None
    bulk_action_id: uuid.UUID | None
    needs_approval: bool


@dataclass(frozen=True)
class Issue:
    """What ``DeviceService.decide`` found one device taking an action comes to, for the single path and the
    bulk path to write."""

    device_id: uuid.UUID
    command: dict[str, Any]  # the new DeviceCommand's columns
    state: ManagementState  # the device's management state afterwards
    expired: tuple[uuid.UUID, ...]  # overdue approval requests closed on the way
    events: tuple[dict[str, Any], ...]  # audit events (as for audit_service.record), in order
    wake: bool  # queued: tell the device to fetch it (not while it waits for approval)


@dataclass(frozen=True)
class Refusal:
    """A device of a selection that does not take the action, and why."""

    device_id: uuid.UUID
    device_name: str | None  # None when the device does not exist for the caller
    error: CorralError


def _held(command_type: CommandType, device: Device) -> bool:
    """A wipe or retire to a device another one holds (pending or issued): refused, unless the request that
    holds it waited for approval past its deadline."""
    return command_type.destructive and device.management_state in ENDING


def _approval_expired(device: Device, command: DeviceCommand, left: ManagementState) -> dict[str, Any]:
    """The audit event of a request not approved in time that held the device (``left``, now managed)."""
    return {
        "activity": "device.action.expire",
        "category": "remote_action",
        "operation": "update",
        "target_type": "device",
        "target_id": device.id,
        "target_name": device.name,
        "changes": [
            ("command", command.type, None),
            ("status", CommandStatus.pending_approval, CommandStatus.expired),
            ("management_state", left, ManagementState.managed),
        ],
        "detail": f"The {REGISTRY[command.type].label.lower()} was not approved in time: not sent.",
    }


def _expire_requests(
    device: Device, overdue: Sequence[DeviceCommand]
) -> tuple[ManagementState, list[dict[str, Any]]]:
    """The device's state once its overdue requests (oldest first) expire, and the audit events for those
    that held it; changes nothing (``decide`` is pure)."""
    state = device.management_state
    events = []
    for command in overdue:
        left = expiry.left_state(command, state)
        if left is not None:
            state = ManagementState.managed
            events.append(_approval_expired(device, command, left))
    return state, events


def reaches(device: Device) -> Callable[[Scope], bool]:
    """Whether a scope reaches the device: by its scope tags and, for reaches limited to scope groups, the
    groups it or its primary user belongs to (``Device.member_of``, loaded by ``repository.get``)."""
    tags = frozenset(t.id for t in device.scope_tags)

    def within(scope: Scope) -> bool:
        if not scope.limits_groups:
            return scope.covers(tags)
        if device.member_of is None:
            raise RuntimeError("device loaded without its groups: use devices.repository.with_member_of")
        return scope.covers_member(tags, device.member_of)

    return within


class DeviceService:
    # ---------------------------------------------------------------- reads
    async def page(
        self, session: AsyncSession, settings: Settings, principal: Principal, filters: DeviceFilter
    ) -> tuple[list[Device], str | None, int]:
        return await repository.page(
            session, filters, principal.scope_for(P.devices_read), settings.stale_device_days
        )

    async def export(
        self, session: AsyncSession, settings: Settings, principal: Principal, filters: DeviceFilter
    ) -> list[Device]:
        return await repository.export(
            session, filters, principal.scope_for(P.devices_read), settings.stale_device_days
        )

    async def export_csv(
        self, session: AsyncSession, settings: Settings, principal: Principal, filters: DeviceFilter
    ) -> str:
        """The filtered devices in the caller's scope as CSV (cells that could run as formulas neutralised),
        for the API and the admin center alike."""
        devices = await self.export(session, settings, principal, filters)
        rows = (csv_row(device_out(d, settings.stale_device_days)) for d in devices)
        return to_csv(CSV_HEADER, rows)

    async def get(
        self,
        session: AsyncSession,
        principal: Principal,
        device_id: uuid.UUID,
        permission: P = P.devices_read,
        *,
        for_update: bool = False,
    ) -> Device:
        """Fetch, then 404 outside the caller's read scope and 403 without ``permission`` over it."""
        device = await repository.get(session, device_id, for_update=for_update)
        if device is None:
            raise NotFound("No such device.")
        self.authorize(principal, device, permission)
        return device

    def authorize(self, principal: Principal, device: Device, permission: P) -> None:
        """404 outside the caller's read scope, 403 without ``permission`` over the device (its scope tags
        and groups loaded, as ``repository.get`` does)."""
        try:
            authorize_object(principal, permission, reaches(device), read_permission=P.devices_read)
        except NotFound:
            raise NotFound("No such device.") from None

    def may(self, principal: Principal, permission: P, device: Device) -> bool:
        """Whether the caller holds ``permission`` over the device (for the portal's buttons)."""
        return reaches(device)(principal.scope_for(permission))

    async def detail(self, session: AsyncSession, settings: Settings, device: Device) -> DeviceDetail:
        out = DeviceDetail.model_validate(_fields(DeviceDetail, device, settings.stale_device_days))
        certificate = await repository.current_certificate(session, device.id)
        if certificate is not None:
            out.certificate_fingerprint = certificate.fingerprint_sha256
            out.certificate_expires_at = certificate.not_after
        return out

    async def apps(
        self, session: AsyncSession, principal: Principal, device_id: uuid.UUID
    ) -> list[DeviceApp]:
        await self.get(session, principal, device_id)
        return await repository.apps(session, device_id)

    async def history(
        self, session: AsyncSession, principal: Principal, device_id: uuid.UUID, limit: int = 200
    ) -> list[DeviceInventoryChange]:
        await self.get(session, principal, device_id)
        return await repository.history(session, device_id, limit)

    # ---------------------------------------------------------------- edits
    async def update(
        self, session: AsyncSession, principal: Principal, device_id: uuid.UUID, data: DeviceUpdate
    ) -> Device:
        device = await self.get(session, principal, device_id, P.devices_update, for_update=True)
        rule_inputs = group_membership.device_rule_inputs(device)
        changes: list[tuple[str, Any, Any]] = []
        if data.ownership is not None and data.ownership != device.ownership:
            changes.append(("ownership", device.ownership, data.ownership))
            device.ownership = data.ownership
        if data.scope_tag_ids is not None:
            tags = await rbac_repository.tags_by_ids(session, data.scope_tag_ids)
            if len(tags) != len(set(data.scope_tag_ids)):
                raise ValidationFailed("One or more scope tags do not exist.")
            new_scope = Scope(tag_ids=frozenset(t.id for t in tags)) if tags else EVERYWHERE
            if not principal.scope_for(P.devices_update).ignoring_groups().contains(new_scope):
                raise Forbidden("You can only tag a device into scopes you administer.")
            before = sorted(t.name for t in device.scope_tags)
            device.scope_tags = tags
            after = sorted(t.name for t in tags)
            if before != after:
                changes.append(("scope_tags", before, after))
        if changes:
            await session.flush()
            await audit_service.record(
                session,
                activity="device.update",
                category="device",
                operation="update",
                target_type="device",
                target_id=device.id,
                target_name=device.name,
                changes=changes,
            )
        await group_membership.refresh_device(session, device, unless=rule_inputs)  # e.g. ownership
        return device

    async def revoke_certificates(self, session: AsyncSession, device_id: uuid.UUID, reason: str) -> int:
        result = await session.execute(
            update(DeviceCertificate)
            .where(DeviceCertificate.device_id == device_id, DeviceCertificate.revoked_at.is_(None))
            .values(revoked_at=utcnow(), revocation_reason=reason)
        )
        return int(result.rowcount or 0)  # type: ignore[attr-defined]

    async def delete(
        self,
        session: AsyncSession,
        principal: Principal,
        device_id: uuid.UUID,
        *,
        reason: str | None = None,
        confirm: str | None = None,
    ) -> None:
        """Delete the record and revoke its certificates. With ``confirm`` (the admin center's form), the
        reason and the typed device name are checked as for wipe and retire."""
        device = await self.get(session, principal, device_id, P.devices_delete, for_update=True)
        if confirm is not None:
            reason = self.confirm_destructive(device, "Deleting the record", reason, confirm)
        revoked = await self.revoke_certificates(session, device.id, "deleted")
        await audit_service.record(
            session,
            activity="device.delete",
            category="device",
            operation="delete",
            target_type="device",
            target_id=device.id,
            target_name=device.name,
            detail=f"{revoked} certificate(s) revoked" + (f"; reason: {reason}" if reason else ""),
            changes=[
                ("serial_number", device.serial_number, None),
                ("management_state", device.management_state, None),
            ],
        )
        await session.delete(device)
        await session.flush()

    # ---------------------------------------------------------------- remote actions
    def command_type(self, name: str) -> CommandType:
        command = REGISTRY.get(name)
        if command is None:
            raise NotFound(f"There is no remote action named {name!r}.")
        return command

    def confirm_destructive(self, device: Device, label: str, reason: str | None, confirm: str | None) -> str:
        """A destructive step needs a reason and the device's name typed as confirmation; returns the
        reason, stripped."""
        reason = (reason or "").strip()
        if len(reason) < MIN_REASON:
            raise ValidationFailed(f"{label} needs a reason (at least {MIN_REASON} characters).")
        if (confirm or "").strip() != device.name:
            raise ValidationFailed(f"Type the device name ({device.name}) to confirm {label.lower()}.")
        return reason

    def can_cancel(self, principal: Principal, device: Device, command: DeviceCommand) -> bool:
        """Whether ``cancel`` would accept this command from this admin now: for the portal's buttons."""
        command_type = REGISTRY.get(command.type)
        if command_type is None or command.status not in (*OPEN_STATUSES, CommandStatus.pending_approval):
            return False
        if command_type.destructive and command.status not in CANCELABLE_DESTRUCTIVE:
            return False
        return self.may(principal, command_type.permission, device)

    def can_approve(self, principal: Principal, device: Device, command: DeviceCommand) -> bool:
        """Whether ``approve`` and ``reject`` would accept this command from this admin now: for the portal's
        buttons (a second administrator with remote:approve over the device, before the deadline)."""
        return (
            command.status is CommandStatus.pending_approval
            and command.expires_at > utcnow()
            and command.requested_by_id != principal.user_id
            and self.may(principal, P.remote_approve, device)
            and self.may(principal, P.devices_read, device)
        )

    def available_actions(self, principal: Principal, device: Device) -> list[CommandType]:
        """The actions this admin may run on this device now: for the portal's action bar."""
        if device.management_state in ENDED:
            return []
        ending = device.management_state in ENDING
        return [
            c
            for c in REGISTRY.values()
            if self.may(principal, c.permission, device)
            and c.allows(device.platform, device.ownership) is None
            and not (ending and c.destructive)  # a wipe or retire is already under way
        ]

    async def prepare(
        self, session: AsyncSession, command_type: CommandType, request: IssueRequest
    ) -> PreparedAction:
        """Check what does not depend on the device once, however many devices the action goes to."""
        try:
            params, params_error = validate_params(command_type, request.params), None
        except ValidationFailed as exc:
            params, params_error = {}, exc
        return PreparedAction(
            command_type=command_type,
            params=params,
            params_error=params_error,
            reason=(request.reason or "").strip() or None,
            confirm=request.confirm,
            bulk_action_id=request.bulk_action_id,
            # Multi administrator approval: the wipe waits, undelivered, for a second administrator.
            needs_approval=(
                command_type.name in approvals.APPROVAL_TYPES
                and (await tenant_service.get(session)).wipe_requires_approval
            ),
        )

    def decide(
        self,
        principal: Principal,
        action: PreparedAction,
        device: Device,
        overdue: Sequence[DeviceCommand],
        now: datetime,
        *,
        idempotency_key: str | None = None,
    ) -> Issue:
        """The rules for one device taking a remote action, for ``issue`` and ``issue_many`` alike; no
        database: raises the refusal, or says what to write. ``overdue``: the device's requests waiting for
        approval past their deadline (see ``overdue_approvals``), which no longer hold it."""
        command_type = action.command_type
        if device.management_state in ENDED:
            raise Conflict(f"The device is {device.management_state.value}: it takes no more commands.")
        refusal = command_type.allows(device.platform, Ownership(device.ownership))
        if refusal:
            raise ValidationFailed(refusal)
        if action.params_error is not None:
            raise action.params_error
        reason = action.reason
        if command_type.destructive and action.bulk_action_id is None:
            reason = self.confirm_destructive(device, command_type.label, reason, action.confirm)
        elif command_type.destructive and (reason is None or len(reason) < MIN_REASON):
            raise ValidationFailed(f"{command_type.label} needs a reason (at least {MIN_REASON} characters).")
        state = device.management_state
        expired: list[uuid.UUID] = []
        events: list[dict[str, Any]] = []
        if _held(command_type, device):
            # A request that waited for approval past its deadline no longer holds the device.
            expired = [command.id for command in overdue]
            state, events = _expire_requests(device, overdue)
        if command_type.destructive and state in ENDING:
            raise Conflict(f"A {state.value.replace('_', ' ')} is already under way.")
        status = CommandStatus.pending_approval if action.needs_approval else CommandStatus.queued
        command = {
            "id": uuid.uuid4(),
            "device_id": device.id,
            "bulk_action_id": action.bulk_action_id,
            "type": command_type.name,
            "params": action.params,
            "status": status,
            "reason": reason,
            "requested_by_id": principal.user_id,
            "requested_by_name": principal.user_principal_name,
            "idempotency_key": idempotency_key,
            "created_at": now,
            "expires_at": now + command_type.ttl,
        }
        before_state = state
        if command_type.pending_state is not None:
            state = command_type.pending_state
        changes: list[tuple[str, Any, Any]] = [
            ("type", None, command_type.name),
            ("params", None, action.params),
        ]
        if before_state != state:
            changes.append(("management_state", before_state, state))
        detail = reason
        if action.needs_approval:
            changes.append(("status", None, CommandStatus.pending_approval))
            detail = "; ".join(
                filter(None, [reason, "needs a second administrator's approval before it is sent"])
            )
        events.append(
            {
                "activity": f"device.action.{command_type.name}",
                "category": "remote_action",
                "operation": "create",
                "target_type": "device",
                "target_id": device.id,
                "target_name": device.name,
                "changes": changes,
                "detail": detail,
            }
        )
        return Issue(
            device_id=device.id,
            command=command,
            state=state,
            expired=tuple(expired),
            events=tuple(events),
            wake=not action.needs_approval,  # nothing to fetch until it is approved
        )

    async def overdue_approvals(
        self, session: AsyncSession, action: PreparedAction, devices: Iterable[Device], now: datetime
    ) -> dict[uuid.UUID, list[DeviceCommand]]:
        """For ``decide``: the devices' requests waiting for approval past their deadline, where a wipe or
        retire finds the device held by one; locked, after the devices (one statement for any number)."""
        held = [device.id for device in devices if _held(action.command_type, device)]
        out: dict[uuid.UUID, list[DeviceCommand]] = {}
        for command in await approvals.overdue(session, held, now):
            out.setdefault(command.device_id, []).append(command)
        return out

    async def _close_expired(self, session: AsyncSession, ids: Sequence[uuid.UUID], now: datetime) -> None:
        """Close approval requests found overdue (locked), as expiry does: one statement for any number."""
        if ids:
            await session.execute(
                update(DeviceCommand)
                .where(DeviceCommand.id.in_(ids))
                .values(
                    status=CommandStatus.expired, completed_at=now, error=approvals.APPROVAL_ERROR_EXPIRED
                )
            )

    async def issue(
        self, session: AsyncSession, principal: Principal, device_id: uuid.UUID, request: IssueRequest
    ) -> tuple[DeviceCommand, bool]:
        """Queue a command; returns it and whether it is new (a known idempotency key returns the earlier
        one)."""
        command_type = self.command_type(request.type)
        device = await self.get(session, principal, device_id, command_type.permission, for_update=True)
        if request.idempotency_key:
            earlier = await session.scalar(
                select(DeviceCommand).where(
                    DeviceCommand.requested_by_id == principal.user_id,
                    DeviceCommand.idempotency_key == request.idempotency_key,
                )
            )
            if earlier is not None:
                if earlier.device_id != device.id or earlier.type != command_type.name:
                    raise Conflict("This idempotency key was already used for another action.")
                return earlier, False
        action = await self.prepare(session, command_type, request)
        now = utcnow()
        overdue = await self.overdue_approvals(session, action, [device], now)
        issue = self.decide(
            principal,
            action,
            device,
            overdue.get(device.id, ()),
            now,
            idempotency_key=request.idempotency_key,
        )
        await self._close_expired(session, issue.expired, now)
        command = DeviceCommand(**issue.command)
        session.add(command)
        device.management_state = issue.state
        await session.flush()
        await audit_service.record_many(session, issue.events)
        if issue.wake:
            await wake(session, device.id, "command")
        return command, True

    async def managed_of_user(self, session: AsyncSession, user_id: uuid.UUID) -> list[tuple[uuid.UUID, str]]:
        """The user's devices under management (every one, whatever the caller's scope): for tenant policies
        such as retiring a deprovisioned user's devices."""
        return await repository.managed_of_user(session, user_id)

    async def issue_many(
        self,
        session: AsyncSession,
        principal: Principal,
        action: PreparedAction,
        device_ids: Iterable[uuid.UUID],
    ) -> tuple[list[Issue], list[Refusal]]:
        """``issue`` for a selection (a bulk action), by the same rules (``decide``), in a number of
        statements that does not grow with the devices: those the caller may act on are locked in id order,
        the others refused as ``get`` would ("No such device." outside the read scope, else "needs the
        permission"); every command, state change, audit event and wake-up is written set-based."""
        command_type = action.command_type
        ordered = sorted(set(device_ids))
        read_scope = principal.scope_for(P.devices_read)
        scopes = (read_scope, principal.scope_for(command_type.permission))
        devices = {d.id: d for d in await repository.lock_many(session, ordered, scopes)}
        missing = [device_id for device_id in ordered if device_id not in devices]
        visible = await repository.names(session, read_scope, missing) if missing else {}
        now = utcnow()
        overdue = await self.overdue_approvals(session, action, devices.values(), now)
        issues: list[Issue] = []
        refusals: list[Refusal] = []
        for device_id in ordered:
            device = devices.get(device_id)
            if device is None:
                name = visible.get(device_id)
                error = (
                    NotFound("No such device.") if name is None else not_permitted(command_type.permission)
                )
                refusals.append(Refusal(device_id, name, error))
                continue
            try:
                self.authorize(principal, device, command_type.permission)  # as scoped in SQL: get's guard
                issues.append(self.decide(principal, action, device, overdue.get(device_id, ()), now))
            except CorralError as exc:
                if not 400 <= exc.status_code < 500:
                    raise
                refusals.append(Refusal(device_id, None if isinstance(exc, NotFound) else device.name, exc))
        if issues:
            await self._close_expired(session, [c for issue in issues for c in issue.expired], now)
            await session.execute(insert(DeviceCommand), [issue.command for issue in issues])
            moves: dict[ManagementState, list[uuid.UUID]] = {}
            for issue in issues:
                if issue.state != devices[issue.device_id].management_state:
                    moves.setdefault(issue.state, []).append(issue.device_id)
            for state, ids in moves.items():
                await session.execute(
                    update(Device)
                    .where(Device.id.in_(ids))
                    .values(management_state=state)
                    .execution_options(synchronize_session=False)
                )
                for moved in ids:  # the loaded rows say what the database now holds
                    set_committed_value(devices[moved], "management_state", state)
            await audit_service.record_many(session, [event for issue in issues for event in issue.events])
            await wake_many(session, [issue.device_id for issue in issues if issue.wake], "command")
        return issues, refusals

    async def commands(
        self, session: AsyncSession, principal: Principal, device_id: uuid.UUID, limit: int = 200
    ) -> list[DeviceCommand]:
        await self.get(session, principal, device_id)
        stmt = (
            select(DeviceCommand)
            .where(DeviceCommand.device_id == device_id)
            .order_by(DeviceCommand.created_at.desc())
            .limit(limit)
        )
        return list((await session.scalars(stmt)).all())

    async def cancel(
        self, session: AsyncSession, principal: Principal, device_id: uuid.UUID, command_id: uuid.UUID
    ) -> DeviceCommand:
        # The device first: outside the caller's read scope it does not exist, whatever the command id.
        await self.get(session, principal, device_id)
        command = await session.scalar(
            select(DeviceCommand).where(DeviceCommand.id == command_id, DeviceCommand.device_id == device_id)
        )
        if command is None:
            raise NotFound("No such command.")
        command_type = REGISTRY[command.type]
        # Lock the device before the command, in the order check-in takes them (its device update, then the
        # device's commands): the other order can deadlock with a check-in.
        device = await self.get(session, principal, device_id, command_type.permission, for_update=True)
        await session.refresh(command, with_for_update=True)
        previous = command.status
        if command.status not in (*OPEN_STATUSES, CommandStatus.pending_approval):
            raise Conflict(f"The command is already {command.status.value}.")
        if command_type.destructive and command.status not in CANCELABLE_DESTRUCTIVE:
            raise Conflict(
                f"The {command_type.label.lower()} was already delivered to the device: too late to cancel."
            )
        command.status = CommandStatus.canceled
        command.completed_at = utcnow()
        if command_type.pending_state is not None and device.management_state == command_type.pending_state:
            device.management_state = ManagementState.managed
        await session.flush()
        await audit_service.record(
            session,
            activity="device.action.cancel",
            category="remote_action",
            operation="update",
            target_type="device",
            target_id=device.id,
            target_name=device.name,
            changes=[
                ("command", command.type, None),
                ("status", previous if previous is CommandStatus.pending_approval else "open", "canceled"),
            ],
        )
        return command

    # ---------------------------------------------------------------- multi administrator approval
    async def pending_approvals(
        self, session: AsyncSession, principal: Principal
    ) -> list[tuple[DeviceCommand, Device]]:
        """Requests waiting for a second administrator, oldest first, on devices the caller may read and
        approve in (their own requests included: they cannot approve those)."""
        scopes = (principal.scope_for(P.devices_read), principal.scope_for(P.remote_approve))
        return await approvals.pending(session, scopes, utcnow())

    async def expire_approvals(self, session: AsyncSession, device: Device, now: datetime) -> int:
        """Close the device's requests not approved by their deadline (``expires_at``, the command type's
        lifetime from the request) by the rule that closes overdue queued commands; the device, locked by the
        caller, is managed again. Returns how many expired."""
        overdue = await approvals.overdue(session, [device.id], now)
        if overdue:
            device.management_state, events = _expire_requests(device, overdue)
            await self._close_expired(session, [command.id for command in overdue], now)
            await session.flush()
            await audit_service.record_many(session, events)
        return len(overdue)

    async def _under_review(
        self,
        session: AsyncSession,
        principal: Principal,
        device_id: uuid.UUID,
        command_id: uuid.UUID,
        verb: str,
    ) -> tuple[Device, DeviceCommand, CommandType]:
        """The device and the command waiting for approval, both locked (device first, as check-in and
        cancel take them, so a second approval waits and then sees the first one's outcome)."""
        device = await self.get(session, principal, device_id, P.remote_approve, for_update=True)
        command = await session.scalar(
            select(DeviceCommand)
            .where(DeviceCommand.id == command_id, DeviceCommand.device_id == device.id)
            .with_for_update()
        )
        if command is None:
            raise NotFound("No such command.")
        command_type = REGISTRY[command.type]
        label = command_type.label.lower()
        if command.status is not CommandStatus.pending_approval:
            raise Conflict(
                f"The {label} is not waiting for approval (it is {command.status.value.replace('_', ' ')})."
            )
        if command.requested_by_id is not None and command.requested_by_id == principal.user_id:
            # API tokens act as their owner: the same person cannot approve through a token either.
            raise Forbidden(
                f"You requested this {label}: a second administrator must approve or reject it. "
                "Cancel it instead if it is no longer needed."
            )
        if command.expires_at <= utcnow():
            raise Conflict(
                f"This {label} request expired at {command.expires_at:%Y-%m-%d %H:%M} UTC without approval "
                f"and can no longer be {verb}; nothing was sent to the device."
            )
        return device, command, command_type

    async def approve(
        self,
        session: AsyncSession,
        principal: Principal,
        device_id: uuid.UUID,
        command_id: uuid.UUID,
        comment: str | None = None,
    ) -> DeviceCommand:
        """A second administrator approves a request: it is queued (its lifetime starting now) and the
        device is woken to fetch it."""
        device, command, command_type = await self._under_review(
            session, principal, device_id, command_id, "approved"
        )
        if device.management_state in ENDED:
            raise Conflict(f"The device is {device.management_state.value}: it takes no more commands.")
        now = utcnow()
        command.status = CommandStatus.queued
        command.reviewed_by_id = principal.user_id
        command.reviewed_by_name = principal.user_principal_name
        command.reviewed_at = now
        command.expires_at = now + command_type.ttl
        before_state = device.management_state
        if command_type.pending_state is not None:
            device.management_state = command_type.pending_state
        await session.flush()
        changes: list[tuple[str, Any, Any]] = [
            ("command", None, command.type),
            ("status", CommandStatus.pending_approval, CommandStatus.queued),
        ]
        if before_state != device.management_state:
            changes.append(("management_state", before_state, device.management_state))
        comment = (comment or "").strip() or None
        await audit_service.record(
            session,
            activity="device.action.approve",
            category="remote_action",
            operation="update",
            target_type="device",
            target_id=device.id,
            target_name=device.name,
            changes=changes,
            detail="; ".join(
                filter(
                    None,
                    [
                        f"requested by {command.requested_by_name or 'unknown'}",
                        f"reason: {command.reason}" if command.reason else None,
                        f"comment: {comment}" if comment else None,
                    ],
                )
            ),
        )
        await wake(session, device.id, "command")
        return command

    async def reject(
        self,
        session: AsyncSession,
        principal: Principal,
        device_id: uuid.UUID,
        command_id: uuid.UUID,
        reason: str | None,
    ) -> DeviceCommand:
        """A second administrator rejects a request: it is canceled, never sent, and the device is managed
        again."""
        reason = (reason or "").strip()
        if len(reason) < MIN_REASON:
            raise ValidationFailed(f"Rejecting needs a reason (at least {MIN_REASON} characters).")
        device, command, command_type = await self._under_review(
            session, principal, device_id, command_id, "rejected"
        )
        now = utcnow()
        command.status = CommandStatus.canceled
        command.completed_at = now
        command.reviewed_by_id = principal.user_id
        command.reviewed_by_name = principal.user_principal_name
        command.reviewed_at = now
        command.error = f"Rejected by {principal.user_principal_name}: {reason}"[:1024]
        before_state = device.management_state
        if command_type.pending_state is not None and device.management_state == command_type.pending_state:
            device.management_state = ManagementState.managed
        await session.flush()
        changes: list[tuple[str, Any, Any]] = [
            ("command", command.type, None),
            ("status", CommandStatus.pending_approval, CommandStatus.canceled),
        ]
        if before_state != device.management_state:
            changes.append(("management_state", before_state, device.management_state))
        await audit_service.record(
            session,
            activity="device.action.reject",
            category="remote_action",
            operation="update",
            target_type="device",
            target_id=device.id,
            target_name=device.name,
            changes=changes,
            detail=f"requested by {command.requested_by_name or 'unknown'}; rejected: {reason}",
        )
        return command

    # ---------------------------------------------------------------- clear the queue
    async def clear_queue(
        self, session: AsyncSession, principal: Principal, device_id: uuid.UUID
    ) -> tuple[int, int]:
        """Cancel every open command of the device that ``cancel`` would accept from this admin (a wipe or
        retire only until delivered; each action needs its own permission); returns (canceled, kept). One
        audit event for the whole clear."""
        # Device first, then its commands: the order check-in and cancel take the locks in.
        device = await self.get(session, principal, device_id, for_update=True)
        if not any(self.may(principal, c.permission, device) for c in REGISTRY.values()):
            raise Forbidden("Clearing the queue needs a remote action permission over this device.")
        commands = (
            await session.scalars(
                select(DeviceCommand)
                .where(
                    DeviceCommand.device_id == device.id,
                    DeviceCommand.status.in_((*OPEN_STATUSES, CommandStatus.pending_approval)),
                )
                .order_by(DeviceCommand.created_at)
                .with_for_update()
            )
        ).all()
        now = utcnow()
        before_state = device.management_state
        canceled: list[DeviceCommand] = []
        for command in commands:
            if not self.can_cancel(principal, device, command):
                continue
            command.status = CommandStatus.canceled
            command.completed_at = now
            pending_state = REGISTRY[command.type].pending_state
            if pending_state is not None and device.management_state == pending_state:
                device.management_state = ManagementState.managed
            canceled.append(command)
        kept = len(commands) - len(canceled)
        if canceled:
            await session.flush()
            changes: list[tuple[str, Any, Any]] = [
                ("canceled", None, [f"{c.type} {c.id}" for c in canceled]),
                ("kept", None, kept),
            ]
            if before_state != device.management_state:
                changes.append(("management_state", before_state, device.management_state))
            await audit_service.record(
                session,
                activity="device.commands.clear",
                category="remote_action",
                operation="update",
                target_type="device",
                target_id=device.id,
                target_name=device.name,
                changes=changes,
                detail=f"{len(canceled)} command(s) canceled, {kept} kept",
            )
        return len(canceled), kept


device_service = DeviceService()
