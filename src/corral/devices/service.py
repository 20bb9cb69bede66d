"""Devices for admins: scoped reads, edits, deletion, and remote actions with their lifecycle."""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

from pydantic import ValidationError
from sqlalchemy import select, text, update
from sqlalchemy.ext.asyncio import AsyncSession

from corral.audit.service import audit_service
from corral.config import Settings
from corral.devices import repository
from corral.devices.commands import REGISTRY, CommandType
from corral.devices.schemas import DeviceDetail, DeviceFilter, DeviceOut, DeviceUpdate
from corral.errors import Conflict, Forbidden, NotFound, ValidationFailed
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
from corral.rbac.principal import EVERYWHERE, Principal, Scope, authorize_object

WAKE_CHANNEL = "corral_device_wake"
ENDED = (ManagementState.retired, ManagementState.wiped)
ENDING = (
    ManagementState.wipe_pending,
    ManagementState.wipe_issued,
    ManagementState.retire_pending,
    ManagementState.retire_issued,
)
MIN_REASON = 5


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
    await session.execute(
        text("SELECT pg_notify(:channel, :payload)"),
        {"channel": WAKE_CHANNEL, "payload": f"{device_id}:{reason}"},
    )


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
        tags = {t.id for t in device.scope_tags}
        try:
            authorize_object(principal, permission, tags, read_permission=P.devices_read)
        except NotFound:
            raise NotFound("No such device.") from None
        return device

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
            if not principal.scope_for(P.devices_update).contains(new_scope):
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
        if command_type is None or command.status not in OPEN_STATUSES:
            return False
        if command_type.destructive and command.status is not CommandStatus.queued:
            return False
        return principal.scope_for(command_type.permission).covers(t.id for t in device.scope_tags)

    def available_actions(self, principal: Principal, device: Device) -> list[CommandType]:
        """The actions this admin may run on this device now: for the portal's action bar."""
        if device.management_state in ENDED:
            return []
        tags = {t.id for t in device.scope_tags}
        ending = device.management_state in ENDING
        return [
            c
            for c in REGISTRY.values()
            if principal.scope_for(c.permission).covers(tags)
            and c.allows(device.platform, device.ownership) is None
            and not (ending and c.destructive)  # a wipe or retire is already under way
        ]

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
        if device.management_state in ENDED:
            raise Conflict(f"The device is {device.management_state.value}: it takes no more commands.")
        refusal = command_type.allows(device.platform, Ownership(device.ownership))
        if refusal:
            raise ValidationFailed(refusal)
        try:
            params = command_type.params.model_validate(request.params).model_dump(exclude_none=True)
        except ValidationError as exc:
            error = exc.errors()[0]
            where = ".".join(str(p) for p in error.get("loc", ()))
            raise ValidationFailed(
                f"params.{where}: {error.get('msg')}" if where else str(error.get("msg"))
            ) from exc
        reason = (request.reason or "").strip() or None
        if command_type.destructive and request.bulk_action_id is None:
            reason = self.confirm_destructive(device, command_type.label, reason, request.confirm)
        elif command_type.destructive and (reason is None or len(reason) < MIN_REASON):
            raise ValidationFailed(f"{command_type.label} needs a reason (at least {MIN_REASON} characters).")
        if command_type.destructive and device.management_state in ENDING:
            raise Conflict(f"A {device.management_state.value.replace('_', ' ')} is already under way.")
        now = utcnow()
        command = DeviceCommand(
            id=uuid.uuid4(),
            device_id=device.id,
            bulk_action_id=request.bulk_action_id,
            type=command_type.name,
            params=params,
            status=CommandStatus.queued,
            reason=reason,
            requested_by_id=principal.user_id,
            requested_by_name=principal.user_principal_name,
            idempotency_key=request.idempotency_key,
            created_at=now,
            expires_at=now + command_type.ttl,
        )
        session.add(command)
        before_state = device.management_state
        if command_type.pending_state is not None:
            device.management_state = command_type.pending_state
        await session.flush()
        changes: list[tuple[str, Any, Any]] = [("type", None, command_type.name), ("params", None, params)]
        if before_state != device.management_state:
            changes.append(("management_state", before_state, device.management_state))
        await audit_service.record(
            session,
            activity=f"device.action.{command_type.name}",
            category="remote_action",
            operation="create",
            target_type="device",
            target_id=device.id,
            target_name=device.name,
            changes=changes,
            detail=reason,
        )
        await wake(session, device.id, "command")
        return command, True

    async def managed_of_user(self, session: AsyncSession, user_id: uuid.UUID) -> list[tuple[uuid.UUID, str]]:
        """The user's devices under management (every one, whatever the caller's scope): for tenant policies
        such as retiring a deprovisioned user's devices."""
        return await repository.managed_of_user(session, user_id)

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
        if command.status not in OPEN_STATUSES:
            raise Conflict(f"The command is already {command.status.value}.")
        if command_type.destructive and command.status is not CommandStatus.queued:
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
            changes=[("command", command.type, None), ("status", "open", "canceled")],
        )
        return command


device_service = DeviceService()
