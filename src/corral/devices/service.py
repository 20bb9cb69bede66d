"""Devices for admins: scoped reads, edits and deletion. Remote actions and their lifecycle are
``corral.commands``, which guards devices through this service (``get``, ``authorize``, ``may``)."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Callable
from datetime import timedelta
from functools import cache
from typing import Any

from sqlalchemy import delete, update
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from corral.assignments import engine as assignment_engine
from corral.assignments import hooks as assignment_hooks
from corral.audit.service import audit_service
from corral.config import Settings
from corral.devices import repository
from corral.devices.schemas import AppleMdmOut, DeviceDetail, DeviceFilter, DeviceOut, DeviceUpdate
from corral.errors import Forbidden, NotFound, ValidationFailed
from corral.kit.csvexport import csv_lines
from corral.kit.pagination import Total
from corral.kit.time import utcnow
from corral.models import (
    AppleEnrollment,
    Device,
    DeviceApp,
    DeviceCertificate,
    DeviceCompliancePolicy,
    DeviceInventoryChange,
    ManagementChannel,
)
from corral.rbac import repository as rbac_repository
from corral.rbac.permissions import P
from corral.rbac.principal import EVERYWHERE, Principal, Scope, authorize_object

# The shortest reason a destructive step (deleting a record, a wipe, a retire) accepts.
MIN_REASON = 5


def is_stale(device: Device, stale_days: int) -> bool:
    last = device.last_checkin_at or device.enrolled_at
    return last < utcnow() - timedelta(days=stale_days)


@cache
def _columns(schema: type[DeviceOut]) -> tuple[str, ...]:
    """The schema's fields that the device model has (the rest are computed)."""
    return tuple(name for name in schema.model_fields if hasattr(Device, name))


def _fields(schema: type[DeviceOut], device: Device, stale_days: int) -> dict[str, Any]:
    values = {name: getattr(device, name) for name in _columns(schema)}
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
    ) -> tuple[list[Device], str | None, Total]:
        return await repository.page(
            session, filters, principal.scope_for(P.devices_read), settings.stale_device_days
        )

    async def export_csv(
        self,
        maker: async_sessionmaker[AsyncSession],
        settings: Settings,
        principal: Principal,
        filters: DeviceFilter,
    ) -> AsyncIterator[str]:
        """The filtered devices in the caller's scope as CSV (cells that could run as formulas neutralised),
        for the API and the admin center alike, batch by batch, read in a session of its own (the request's
        has ended by the time the body is sent)."""
        scope, stale_days = principal.scope_for(P.devices_read), settings.stale_device_days
        yield csv_lines([CSV_HEADER])
        async with maker() as session:
            async for devices in repository.export(session, filters, scope, stale_days):
                yield csv_lines(csv_row(device_out(d, stale_days)) for d in devices)

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
        if device.management_channel is ManagementChannel.apple_mdm:
            enrollment = await session.get(AppleEnrollment, device.id)
            if enrollment is not None:
                out.apple_mdm = AppleMdmOut.model_validate(enrollment)
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
        inputs = assignment_hooks.device_inputs(device)
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
        await assignment_hooks.device_changed(session, device, unless=inputs)  # e.g. ownership
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
        await assignment_engine.forget_devices(session, [device.id])
        # Its compliance results (derived data without a foreign key, as its targets).
        await session.execute(
            delete(DeviceCompliancePolicy).where(DeviceCompliancePolicy.device_id == device.id)
        )
        await session.delete(device)
        await session.flush()

    # ---------------------------------------------------------------- for remote actions (corral.commands)
    def confirm_destructive(self, device: Device, label: str, reason: str | None, confirm: str | None) -> str:
        """A destructive step needs a reason and the device's name typed as confirmation; returns the
        reason, stripped."""
        reason = (reason or "").strip()
        if len(reason) < MIN_REASON:
            raise ValidationFailed(f"{label} needs a reason (at least {MIN_REASON} characters).")
        if (confirm or "").strip() != device.name:
            raise ValidationFailed(f"Type the device name ({device.name}) to confirm {label.lower()}.")
        return reason

    async def managed_of_user(self, session: AsyncSession, user_id: uuid.UUID) -> list[tuple[uuid.UUID, str]]:
        """The user's devices under management (every one, whatever the caller's scope): for tenant policies
        such as retiring a deprovisioned user's devices."""
        return await repository.managed_of_user(session, user_id)


device_service = DeviceService()
