"""The lifecycle of device commands, in one place for everyone who moves one (docs/commands.md):

- queue: an administrator (their permission and scope over the device checked), a bulk action (the same rules
  for each device, written set-based) or Corral itself (``System``: a compliance step, a tenant policy);
  validated against the device (platform, ownership, lifecycle), audited, the device woken at commit;
- approve or reject: a second administrator, for the types the tenant puts behind approval;
- deliver, and record results: the device's check-in;
- cancel and clear: administrators;
- expire: one rule (``expiry``), applied by the check-in of the device and by the worker alike.

Locks: the device first, then its commands, whoever takes them."""

from __future__ import annotations

import uuid
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from pydantic import ValidationError
from sqlalchemy import update
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm.attributes import set_committed_value

from corral.apple import commands as apple_commands
from corral.audit.service import audit_service
from corral.commands import repository
from corral.commands.registry import REGISTRY, CommandType, Outcome
from corral.commands.repository import NOT_APPROVED_IN_TIME
from corral.commands.schemas import CommandResult, PendingCommand
from corral.devices import repository as devices_repository
from corral.devices.service import MIN_REASON, device_service
from corral.errors import Conflict, CorralError, Forbidden, NotFound, ValidationFailed
from corral.kit import context
from corral.kit.time import utcnow
from corral.models import CommandStatus, Device, DeviceCommand, ManagementChannel, ManagementState
from corral.models.device_command import OPEN_STATUSES, WAITING_STATUSES
from corral.push.service import push_service
from corral.rbac.permissions import P
from corral.rbac.principal import SYSTEM_USER_ID, Principal, not_permitted
from corral.tenant.service import tenant_service

ENDED = (ManagementState.retired, ManagementState.wiped)
ENDING = (
    ManagementState.wipe_pending,
    ManagementState.wipe_issued,
    ManagementState.retire_pending,
    ManagementState.retire_issued,
)
# The states a queued (or approval-waiting) command puts its device in until it is delivered.
PENDING_STATES = frozenset(c.pending_state for c in REGISTRY.values() if c.pending_state is not None)
# Statuses a requester (or anyone with the action's permission) may still cancel a destructive action in.
CANCELABLE_DESTRUCTIVE = (CommandStatus.queued, CommandStatus.pending_approval)
MAX_APPROVALS_LISTED = 500


@dataclass(frozen=True)
class System:
    """Corral itself asking for a command (a compliance step, a tenant policy), not an administrator: no
    permission or scope is checked (the caller's own rules chose the device), a reason is required, and the
    command names ``name`` as its requester. Its idempotency keys share one namespace: prefix them with what
    asks (``compliance:<episode>:<step>``). Audit events carry the context's actor: "system" in the worker,
    whoever caused it in a request."""

    name: str


Requester = Principal | System


@dataclass
class CommandRequest:
    type: str
    params: dict[str, Any]
    reason: str | None = None
    # From an administrator, for a destructive action: the device's name, typed to confirm.
    confirm: str | None = None
    # The same key from the same requester returns the first command instead of queueing another.
    idempotency_key: str | None = None
    # Part of a bulk action: a destructive one was confirmed for the whole selection (the typed device
    # count), so each device needs the reason only.
    bulk_action_id: uuid.UUID | None = None


@dataclass(frozen=True)
class PreparedAction:
    """A command as checked once for any number of devices (``prepare``). A parameter error is kept, not
    raised, so that ``decide`` refuses in the order it always has (a retired device is a conflict before bad
    parameters are)."""

    command_type: CommandType
    params: dict[str, Any]
    params_error: ValidationFailed | None
    reason: str | None
    confirm: str | None
    bulk_action_id: uuid.UUID | None
    needs_approval: bool
    requested_by_id: uuid.UUID
    requested_by_name: str
    # An administrator acting on one device types its name to confirm a destructive action.
    typed_confirmation: bool
    # Corral's own requests need a reason, whatever the action.
    system: bool


@dataclass(frozen=True)
class Issue:
    """What ``decide`` found one device taking a command comes to, for the single path and the bulk path to
    write."""

    device_id: uuid.UUID
    command: dict[str, Any]  # the new DeviceCommand's columns
    state: ManagementState  # the device's management state afterwards
    expired: tuple[uuid.UUID, ...]  # overdue approval requests closed on the way
    events: tuple[dict[str, Any], ...]  # audit events (as for audit_service.record), in order
    wake: bool  # queued: tell the device to fetch it (not while it waits for approval)


@dataclass(frozen=True)
class Refusal:
    """A device of a selection that does not take the command, and why."""

    device_id: uuid.UUID
    device_name: str | None  # None when the device does not exist for the caller
    error: CorralError


@dataclass
class ExpiryBatch:
    """What one call of ``expire_overdue`` did; ``after`` is where the next batch starts."""

    considered: int = 0
    expired: int = 0
    devices_managed_again: int = 0
    after: tuple[datetime, uuid.UUID] | None = None
    skipped_busy: int = 0


def validate_params(command_type: CommandType, params: dict[str, Any]) -> dict[str, Any]:
    """The command's parameters, validated (``None`` values left out); the first error as the refusal."""
    try:
        return command_type.params.model_validate(params).model_dump(exclude_none=True)
    except ValidationError as exc:
        error = exc.errors()[0]
        where = ".".join(str(p) for p in error.get("loc", ()))
        raise ValidationFailed(
            f"params.{where}: {error.get('msg')}" if where else str(error.get("msg"))
        ) from exc


# ------------------------------------------------------------------------------------------- expiry: the rule
def expiry(
    command: DeviceCommand, device: Device, state: ManagementState
) -> tuple[ManagementState, dict[str, Any] | None]:
    """The one expiry rule. When ``command`` (still waiting: open, or waiting for approval) passes its
    deadline with its device in ``state``: the state the device is in afterwards, and the audit event when
    that changed. A command that put the device in a pending state (retire or wipe pending) and never left
    it there gives the device back, managed, as cancelling it would; a device the command reached (issued)
    stays as it is, since it may have taken the command. Changes nothing itself."""
    command_type = REGISTRY[command.type]
    pending = command_type.pending_state
    if pending is None or state != pending:
        return state, None
    label = command_type.label.lower()
    detail = (
        f"The {label} was not approved in time: not sent."
        if command.status is CommandStatus.pending_approval
        else f"The {label} expired before the device received it."
    )
    event = {
        "activity": "device.action.expire",
        "category": "remote_action",
        "operation": "update",
        "target_type": "device",
        "target_id": device.id,
        "target_name": device.name,
        "changes": [
            ("command", command.type, None),
            ("status", command.status, CommandStatus.expired),
            ("management_state", pending, ManagementState.managed),
        ],
        "detail": detail,
        # Corral's rule, whoever happened to find the command overdue (the worker, a check-in, an admin).
        "actor": context.SYSTEM,
    }
    return ManagementState.managed, event


def _close_expired(command: DeviceCommand, now: datetime) -> None:
    """A waiting command past its deadline, closed (as ``repository.close_expired`` does in SQL)."""
    if command.status is CommandStatus.pending_approval:
        command.error = NOT_APPROVED_IN_TIME
    command.status = CommandStatus.expired
    command.completed_at = now


def _expiring(
    device: Device, overdue: Sequence[DeviceCommand]
) -> tuple[ManagementState, list[dict[str, Any]]]:
    """The device's state once its overdue commands (oldest first) expire, and the audit events; pure."""
    state = device.management_state
    events = []
    for command in overdue:
        state, event = expiry(command, device, state)
        if event is not None:
            events.append(event)
    return state, events


def channel_refusal(command_type: CommandType, device: Device, params: dict[str, Any] | None) -> str | None:
    """Why the command cannot go to the device on its management channel (``params`` None: whether the type
    ever can): the type's own rules for agents, Apple's for Apple MDM devices (apple/commands.py)."""
    if device.management_channel is ManagementChannel.apple_mdm:
        return apple_commands.refusal(command_type, params, device)
    return command_type.refusal(device)


def _requested_by(requester: Requester) -> tuple[uuid.UUID, str]:
    """The id and name a command records as its requester (Corral's own: the system user's id)."""
    if isinstance(requester, System):
        return SYSTEM_USER_ID, requester.name
    return requester.user_id, requester.user_principal_name


def _held(command_type: CommandType, device: Device) -> bool:
    """A wipe or retire to a device another one holds (pending or issued): refused, unless the request that
    holds it waited for approval past its deadline."""
    return command_type.destructive and device.management_state in ENDING


class CommandService:
    # ------------------------------------------------------------------------------- for the portal and API
    def command_type(self, name: str) -> CommandType:
        command_type = REGISTRY.get(name)
        if command_type is None:
            raise NotFound(f"There is no remote action named {name!r}.")
        return command_type

    def can_cancel(self, principal: Principal, device: Device, command: DeviceCommand) -> bool:
        """Whether ``cancel`` would accept this command from this admin now: for the portal's buttons."""
        command_type = REGISTRY.get(command.type)
        if command_type is None or command.status not in WAITING_STATUSES:
            return False
        if command_type.destructive and command.status not in CANCELABLE_DESTRUCTIVE:
            return False
        return device_service.may(principal, command_type.permission, device)

    def can_approve(self, principal: Principal, device: Device, command: DeviceCommand) -> bool:
        """Whether ``approve`` and ``reject`` would accept this command from this admin now: for the portal's
        buttons (a second administrator with remote:approve over the device, before the deadline)."""
        return (
            command.status is CommandStatus.pending_approval
            and command.expires_at > utcnow()
            and command.requested_by_id != principal.user_id
            and device_service.may(principal, P.remote_approve, device)
            and device_service.may(principal, P.devices_read, device)
        )

    def available(self, principal: Principal, device: Device) -> list[CommandType]:
        """The commands this admin may send this device now: for the portal's action bar."""
        if device.management_state in ENDED:
            return []
        ending = device.management_state in ENDING
        return [
            c
            for c in REGISTRY.values()
            if device_service.may(principal, c.permission, device)
            and channel_refusal(c, device, None) is None
            and not (ending and c.destructive)  # a wipe or retire is already under way
        ]

    async def needs_approval(self, session: AsyncSession, command_type: CommandType) -> bool:
        """Whether such a command waits, undelivered, for a second administrator (tenant setting)."""
        return command_type.approvable and (await tenant_service.get(session)).wipe_requires_approval

    async def history(
        self, session: AsyncSession, principal: Principal, device_id: uuid.UUID, limit: int = 200
    ) -> list[DeviceCommand]:
        """The device's commands, newest first (404 outside the caller's read scope)."""
        await device_service.get(session, principal, device_id)
        return await repository.history(session, device_id, limit)

    # ------------------------------------------------------------------------------- queue
    async def prepare(
        self,
        session: AsyncSession,
        requester: Requester,
        command_type: CommandType,
        request: CommandRequest,
    ) -> PreparedAction:
        """Check what does not depend on the device once, however many devices the command goes to."""
        try:
            params, params_error = validate_params(command_type, request.params), None
        except ValidationFailed as exc:
            params, params_error = {}, exc
        system = isinstance(requester, System)
        requested_by_id, requested_by_name = _requested_by(requester)
        return PreparedAction(
            command_type=command_type,
            params=params,
            params_error=params_error,
            reason=(request.reason or "").strip() or None,
            confirm=request.confirm,
            bulk_action_id=request.bulk_action_id,
            needs_approval=await self.needs_approval(session, command_type),
            requested_by_id=requested_by_id,
            requested_by_name=requested_by_name,
            typed_confirmation=not system and request.bulk_action_id is None,
            system=system,
        )

    def decide(
        self,
        action: PreparedAction,
        device: Device,
        overdue: Sequence[DeviceCommand],
        now: datetime,
        *,
        idempotency_key: str | None = None,
    ) -> Issue:
        """The rules for one device taking a command, for ``queue`` and ``queue_many`` alike; no database:
        raises the refusal, or says what to write. ``overdue``: the device's requests waiting for approval
        past their deadline (see ``overdue_approvals``), which no longer hold it."""
        command_type = action.command_type
        if device.management_state in ENDED:
            raise Conflict(f"The device is {device.management_state.value}: it takes no more commands.")
        refusal = channel_refusal(
            command_type, device, action.params if action.params_error is None else None
        )
        if refusal:
            raise ValidationFailed(refusal)
        if action.params_error is not None:
            raise action.params_error
        reason = action.reason
        if command_type.destructive and action.typed_confirmation:
            reason = device_service.confirm_destructive(device, command_type.label, reason, action.confirm)
        elif (command_type.destructive or action.system) and (reason is None or len(reason) < MIN_REASON):
            raise ValidationFailed(f"{command_type.label} needs a reason (at least {MIN_REASON} characters).")
        state = device.management_state
        expired: list[uuid.UUID] = []
        events: list[dict[str, Any]] = []
        if _held(command_type, device):
            # A request that waited for approval past its deadline no longer holds the device.
            expired = [command.id for command in overdue]
            state, events = _expiring(device, overdue)
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
            "requested_by_id": action.requested_by_id,
            "requested_by_name": action.requested_by_name,
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
        if action.system:
            changes.append(("requested_by", None, action.requested_by_name))
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
        for command in await repository.overdue_approvals(session, held, now):
            out.setdefault(command.device_id, []).append(command)
        return out

    async def _device(
        self, session: AsyncSession, requester: Requester, device_id: uuid.UUID, permission: P
    ) -> Device:
        """The device, locked: for an administrator, as ``DeviceService.get`` guards it (404 outside their
        read scope, 403 without ``permission`` over it); for Corral, any device."""
        if isinstance(requester, Principal):
            return await device_service.get(session, requester, device_id, permission, for_update=True)
        device = await devices_repository.get(session, device_id, for_update=True)
        if device is None:
            raise NotFound("No such device.")
        return device

    async def queue(
        self, session: AsyncSession, requester: Requester, device_id: uuid.UUID, request: CommandRequest
    ) -> tuple[DeviceCommand, bool]:
        """Queue a command for one device; returns it and whether it is new (a known idempotency key of the
        same requester returns the earlier one, whatever became of it: each key queues at most once)."""
        command_type = self.command_type(request.type)
        device = await self._device(session, requester, device_id, command_type.permission)
        if request.idempotency_key:
            requested_by_id, _name = _requested_by(requester)
            earlier = await repository.by_idempotency_key(session, requested_by_id, request.idempotency_key)
            if earlier is not None:
                if earlier.device_id != device.id or earlier.type != command_type.name:
                    raise Conflict("This idempotency key was already used for another action.")
                return earlier, False
        action = await self.prepare(session, requester, command_type, request)
        now = utcnow()
        overdue = await self.overdue_approvals(session, action, [device], now)
        issue = self.decide(
            action, device, overdue.get(device.id, ()), now, idempotency_key=request.idempotency_key
        )
        await repository.close_expired(session, issue.expired, now)
        command = DeviceCommand(**issue.command)
        session.add(command)
        device.management_state = issue.state
        await session.flush()
        await audit_service.record_many(session, issue.events)
        if issue.wake:
            await push_service.wake(session, device.id, "command")
        return command, True

    async def queue_many(
        self,
        session: AsyncSession,
        principal: Principal,
        action: PreparedAction,
        device_ids: Iterable[uuid.UUID],
    ) -> tuple[list[Issue], list[Refusal]]:
        """``queue`` for a selection (a bulk action), by the same rules (``decide``), in a number of
        statements that does not grow with the devices: those the caller may act on are locked in id order,
        the others refused as ``DeviceService.get`` would ("No such device." outside the read scope, else
        "needs the permission"); every command, state change, audit event and wake-up is written
        set-based."""
        command_type = action.command_type
        ordered = sorted(set(device_ids))
        read_scope = principal.scope_for(P.devices_read)
        scopes = (read_scope, principal.scope_for(command_type.permission))
        devices = {d.id: d for d in await devices_repository.lock_many(session, ordered, scopes)}
        missing = [device_id for device_id in ordered if device_id not in devices]
        visible = await devices_repository.names(session, read_scope, missing) if missing else {}
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
                device_service.authorize(principal, device, command_type.permission)  # as scoped in SQL
                issues.append(self.decide(action, device, overdue.get(device_id, ()), now))
            except CorralError as exc:
                if not 400 <= exc.status_code < 500:
                    raise
                refusals.append(Refusal(device_id, None if isinstance(exc, NotFound) else device.name, exc))
        if issues:
            await repository.close_expired(session, [c for issue in issues for c in issue.expired], now)
            await repository.insert_many(session, [issue.command for issue in issues])
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
            await push_service.wake_many(
                session, [issue.device_id for issue in issues if issue.wake], "command"
            )
        return issues, refusals

    # ------------------------------------------------------------------------------- cancel and clear
    async def cancel(
        self, session: AsyncSession, principal: Principal, device_id: uuid.UUID, command_id: uuid.UUID
    ) -> DeviceCommand:
        # The device first: outside the caller's read scope it does not exist, whatever the command id.
        await device_service.get(session, principal, device_id)
        command = await repository.get(session, device_id, command_id)
        if command is None:
            raise NotFound("No such command.")
        command_type = REGISTRY[command.type]
        # Lock the device before the command, in the order check-in takes them (its device update, then the
        # device's commands): the other order can deadlock with a check-in.
        device = await device_service.get(
            session, principal, device_id, command_type.permission, for_update=True
        )
        await session.refresh(command, with_for_update=True)
        previous = command.status
        if command.status not in WAITING_STATUSES:
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

    async def clear(
        self, session: AsyncSession, principal: Principal, device_id: uuid.UUID
    ) -> tuple[int, int]:
        """Cancel every waiting command of the device that ``cancel`` would accept from this admin (a wipe or
        retire only until delivered; each action needs its own permission); returns (canceled, kept). One
        audit event for the whole clear."""
        # Device first, then its commands: the order check-in and cancel take the locks in.
        device = await device_service.get(session, principal, device_id, for_update=True)
        if not any(device_service.may(principal, c.permission, device) for c in REGISTRY.values()):
            raise Forbidden("Clearing the queue needs a remote action permission over this device.")
        commands = await repository.waiting(session, device.id, WAITING_STATUSES)
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

    # ------------------------------------------------------------------------------- approval
    async def pending_approvals(
        self, session: AsyncSession, principal: Principal
    ) -> list[tuple[DeviceCommand, Device]]:
        """Requests waiting for a second administrator, oldest first, on devices the caller may read and
        approve in (their own requests included: they cannot approve those)."""
        scopes = (principal.scope_for(P.devices_read), principal.scope_for(P.remote_approve))
        return await repository.pending_approvals(session, scopes, utcnow(), MAX_APPROVALS_LISTED)

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
        device = await device_service.get(session, principal, device_id, P.remote_approve, for_update=True)
        command = await repository.get(session, device.id, command_id, for_update=True)
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
        await push_service.wake(session, device.id, "command")
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

    # ------------------------------------------------------------------------------- the device's side
    async def deliver(self, session: AsyncSession, device: Device, now: datetime) -> list[PendingCommand]:
        """At check-in (the device row locked by its update): the device's open commands, oldest first, as
        their types build them; those past their deadline expire instead (``expiry``). At least once:
        unacknowledged ones go again. A command waiting for approval is never delivered."""
        out = []
        for command in await self.open_commands(session, device, now):
            command_type = REGISTRY[command.type]
            self.mark_sent(device, command, now)
            out.append(
                PendingCommand(
                    id=command.id,
                    type=command.type,
                    params=command_type.build(command.params, device),
                    expires_at=command.expires_at,
                )
            )
        return out

    async def open_commands(
        self, session: AsyncSession, device: Device, now: datetime
    ) -> list[DeviceCommand]:
        """The device's commands to deliver now, oldest first, locked (the device row locked first); those
        past their deadline expire instead. Every channel delivers from here."""
        if device.management_state in ENDED:
            return []
        await session.flush()  # results applied in this check-in must count before choosing what to send
        # Only a device held by a pending command can have a request waiting for approval: the other
        # check-ins read the open commands alone, through their partial index.
        statuses = WAITING_STATUSES if device.management_state in PENDING_STATES else OPEN_STATUSES
        commands = await repository.waiting(session, device.id, statuses)
        overdue = [command for command in commands if command.expires_at <= now]
        if overdue:
            await self._expire(session, device, overdue, now)
        return [command for command in commands if command.status in OPEN_STATUSES]

    def mark_sent(self, device: Device, command: DeviceCommand, now: datetime) -> None:
        """The command went to the device (again: delivery is at least once)."""
        if command.status is not CommandStatus.sent:
            command.status = CommandStatus.sent
        command.sent_at = command.sent_at or now
        command.delivery_count += 1
        issued_state = REGISTRY[command.type].issued_state
        if issued_state is not None:
            device.management_state = issued_state

    async def record_results(
        self, session: AsyncSession, device: Device, results: Sequence[CommandResult], now: datetime
    ) -> None:
        """The device's reports on its commands (device-protocol.md §5), each applied as its type says
        (``on_result``). A result for a command that is not the device's refuses them all; a late or
        repeated one for a finished command changes nothing."""
        if not results:
            return
        ids = {r.command_id for r in results}
        commands = await repository.of_device(session, device.id, sorted(ids))
        unknown = ids - set(commands)
        if unknown:
            raise ValidationFailed(
                f"Results for unknown commands: {', '.join(sorted(map(str, unknown)))}. Nothing was recorded."
            )
        for result in results:
            command = commands[result.command_id]
            if command.status not in (*OPEN_STATUSES, CommandStatus.acknowledged):
                continue
            status = CommandStatus(result.status)
            command.status = status
            if status is CommandStatus.acknowledged:
                command.acknowledged_at = now
            elif status is not CommandStatus.not_now:
                command.completed_at = now
                command.result = result.result
                command.error = result.error
            command_type = REGISTRY[command.type]
            await self._apply(
                session, device, command_type, command_type.on_result(status, command.params, device)
            )

    async def _apply(
        self, session: AsyncSession, device: Device, command_type: CommandType, outcome: Outcome
    ) -> None:
        if outcome.ends_management is not None:
            await self._end_management(
                session,
                device,
                outcome.ends_management,
                command_type.name,
                f"{command_type.label} taken by the device",
            )
        if outcome.name is not None:
            device.name = outcome.name

    async def device_left(self, session: AsyncSession, device: Device, detail: str) -> int:
        """The device ended management itself (Apple's CheckOut: its user removed the enrollment profile):
        retired, its certificates revoked, every command still open canceled, audited. The device row is
        locked by the caller. Returns the number of commands canceled."""
        commands = await repository.waiting(session, device.id)
        now = utcnow()
        for command in commands:
            command.status = CommandStatus.canceled
            command.completed_at = now
        await session.flush()
        await self._end_management(
            session,
            device,
            ManagementState.retired,
            "checked_out",
            f"{detail}; {len(commands)} open command(s) canceled",
        )
        return len(commands)

    async def _end_management(
        self, session: AsyncSession, device: Device, state: ManagementState, reason: str, detail: str
    ) -> None:
        """Management ends (retired, wiped): the state set, the device's certificates revoked, audited."""
        before = device.management_state
        device.management_state = state
        revoked = await device_service.revoke_certificates(session, device.id, reason)
        await audit_service.record(
            session,
            activity=f"device.{state.value}",
            category="device",
            operation="update",
            target_type="device",
            target_id=device.id,
            target_name=device.name,
            changes=[("management_state", before, device.management_state)],
            detail=f"{detail}; {revoked} certificate(s) revoked",
        )

    # ------------------------------------------------------------------------------- expiry
    async def _expire(
        self, session: AsyncSession, device: Device, overdue: Sequence[DeviceCommand], now: datetime
    ) -> int:
        """Expire the device's overdue commands (oldest first; the device and they locked by the caller) by
        ``expiry``; returns how many gave the device back."""
        events = []
        for command in overdue:
            device.management_state, event = expiry(command, device, device.management_state)
            if event is not None:
                events.append(event)
            _close_expired(command, now)
        await session.flush()
        await audit_service.record_many(session, events)
        return len(events)

    async def expire_overdue(
        self,
        session: AsyncSession,
        now: datetime,
        *,
        limit: int,
        after: tuple[datetime, uuid.UUID] | None = None,
    ) -> ExpiryBatch:
        """The worker's side of expiry: up to ``limit`` waiting commands past their deadline, oldest deadline
        first, from the ``(expires_at, id)`` position ``after``, expire by the same rule as at check-in.
        Devices busy in another transaction (a check-in, a cancel) are skipped, not waited for: that check-in
        expires their commands itself, or a later run does. Flushes but does not commit."""
        batch = ExpiryBatch()
        candidates = await repository.overdue(session, now, limit, after)
        batch.considered = len(candidates)
        if not candidates:
            return batch
        batch.after = (candidates[-1][2], candidates[-1][0])
        device_ids = {device_id for _id, device_id, _deadline in candidates}
        devices = {d.id: d for d in await devices_repository.lock_unless_busy(session, list(device_ids))}
        batch.skipped_busy = sum(1 for _id, device_id, _deadline in candidates if device_id not in devices)
        commands = await repository.lock_overdue(
            session, [command_id for command_id, _device, _deadline in candidates], list(devices), now
        )
        by_device: dict[uuid.UUID, list[DeviceCommand]] = {}
        for command in commands:
            by_device.setdefault(command.device_id, []).append(command)
        for device_id, overdue in by_device.items():
            batch.devices_managed_again += await self._expire(session, devices[device_id], overdue, now)
            batch.expired += len(overdue)
        return batch


command_service = CommandService()
