"""The device side of management: check-in (inventory, command results, pending commands) and renewal."""

from __future__ import annotations

import hashlib
import json
import uuid
from datetime import datetime, timedelta
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from sqlalchemy import inspect, update
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.ext.asyncio import AsyncSession

from corral.assignments import hooks as assignment_hooks
from corral.assignments.repository import desired_state_version
from corral.audit.service import audit_service
from corral.checkin.auth import AuthenticatedDevice
from corral.checkin.last_seen import LastSeenBuffer
from corral.checkin.schemas import CheckinRequest, CheckinResponse, PendingCommand
from corral.commands.service import command_service
from corral.compliance.service import compliance_service
from corral.config import Settings
from corral.devices import repository as devices_repository
from corral.devices.schemas import Inventory
from corral.errors import ValidationFailed
from corral.kit import context
from corral.kit.time import utcnow
from corral.models import (
    Device,
    DeviceCertificate,
    DeviceInventoryChange,
    ManagementState,
    device_checkin_days,
)
from corral.pki import certs
from corral.pki.service import pki_service

# Fields copied from the inventory onto device columns (filterable in SQL), by inventory path.
COLUMNS: dict[str, str] = {
    "hardware.manufacturer": "manufacturer",
    "hardware.model": "model",
    "hardware.cpu_architecture": "cpu_architecture",
    "hardware.memory_bytes": "memory_bytes",
    "hardware.storage_total_bytes": "storage_total_bytes",
    "hardware.storage_free_bytes": "storage_free_bytes",
    "os.version": "os_version",
    "os.build": "os_build",
    "security.disk_encrypted": "disk_encrypted",
    "security.firewall_enabled": "firewall_enabled",
    "security.screen_lock_enabled": "screen_lock_enabled",
    "security.jailbroken": "jailbroken",
    "security.secure_boot": "secure_boot",
    "network.hostname": "hostname",
    "primary_user": "primary_user",
}
# Readings that change all the time are kept current but not written to the change history.
VOLATILE = frozenset({"hardware.storage_free_bytes"})
MAX_HISTORY_APPS = 50
SPKI = (serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)


def canonical_hash(inventory: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(inventory, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


def flatten(inventory: dict[str, Any]) -> dict[str, Any]:
    """Scalar fields by dotted path; apps and network interfaces are compared separately."""
    flat: dict[str, Any] = {}
    for key, value in inventory.items():
        if key == "apps":
            continue
        if isinstance(value, dict):
            for sub, sub_value in value.items():
                if sub != "interfaces":
                    flat[f"{key}.{sub}"] = sub_value
            if "interfaces" in value:
                flat[f"{key}.interfaces"] = value["interfaces"]
        else:
            flat[key] = value
    return flat


def _app_key(app: dict[str, Any]) -> str:
    return str(app.get("identifier") or app["name"])


class CheckinService:
    def interval(self, settings: Settings, device: Device, now: datetime) -> int:
        if now - device.enrolled_at < timedelta(minutes=settings.checkin_new_period_minutes):
            return settings.checkin_interval_new_seconds
        return settings.checkin_interval_seconds

    # ---------------------------------------------------------------- inventory
    async def ingest_inventory(
        self, session: AsyncSession, device: Device, inventory: Inventory, raw: dict[str, Any], now: datetime
    ) -> str:
        """``raw`` is the inventory as sent: its canonical hash is the one the device computes."""
        data = inventory.model_dump(mode="json")
        new_hash = canonical_hash(raw)
        if new_hash == device.inventory_hash:
            return "unchanged"
        if "inventory" in inspect(device).unloaded:  # authentication does not load the document
            await session.refresh(device, ["inventory"])
        old_flat, new_flat = flatten(device.inventory or {}), flatten(data)
        history: list[DeviceInventoryChange] = []
        for path in sorted(set(old_flat) | set(new_flat)):
            old, new = old_flat.get(path), new_flat.get(path)
            if old != new and path not in VOLATILE and device.inventory_hash is not None:
                history.append(
                    DeviceInventoryChange(
                        device_id=device.id, changed_at=now, field=path, old_value=old, new_value=new
                    )
                )
        old_apps = {_app_key(a): a for a in (device.inventory or {}).get("apps", [])}
        new_apps = {_app_key(a): a for a in data["apps"]}
        added = sorted(set(new_apps) - set(old_apps))
        removed = sorted(set(old_apps) - set(new_apps))
        changed = sorted(k for k in set(new_apps) & set(old_apps) if new_apps[k] != old_apps[k])
        if device.inventory_hash is not None:
            for field, keys, source in (
                ("apps.added", added, new_apps),
                ("apps.removed", removed, old_apps),
                ("apps.updated", changed, new_apps),
            ):
                if keys:
                    shown = [
                        f"{source[k]['name']} {source[k].get('version') or ''}".strip()
                        for k in keys[:MAX_HISTORY_APPS]
                    ]
                    more = len(keys) - len(shown)
                    history.append(
                        DeviceInventoryChange(
                            device_id=device.id,
                            changed_at=now,
                            field=field,
                            old_value=None,
                            new_value=shown + ([f"… and {more} more"] if more > 0 else []),
                        )
                    )
        session.add_all(history)
        await devices_repository.replace_apps(
            session,
            device.id,
            {k: (new_apps[k]["name"], new_apps[k].get("version")) for k in [*added, *changed]},
            set(removed),
        )
        for path, column in COLUMNS.items():
            if path in new_flat and new_flat[path] is not None:
                setattr(device, column, new_flat[path])
        device.inventory = data
        device.inventory_hash = new_hash
        device.inventory_updated_at = now
        return "accepted"

    # ---------------------------------------------------------------- check-in
    async def checkin(
        self,
        session: AsyncSession,
        settings: Settings,
        auth: AuthenticatedDevice,
        request: CheckinRequest,
        raw_inventory: dict[str, Any] | None = None,
        last_seen: LastSeenBuffer | None = None,
    ) -> CheckinResponse:
        now = utcnow()
        device = auth.device
        client_ip = context.current().client_ip
        pending: list[PendingCommand] = []
        steady = last_seen is not None and last_seen.enabled and self.is_steady(device, auth, request)
        agent_before = device.agent_version
        if steady:
            # Nothing changes but the last-seen time, written later with others (last_seen.py); no row is
            # locked and nothing is written in this transaction but the signature's nonce.
            assert last_seen is not None
            last_seen.note(device.id, now, client_ip)
        else:
            inputs = assignment_hooks.device_inputs(device)  # before this check-in changes it
            # The device row first (the UPDATE locks it), then its commands: the order admin actions take
            # them (corral.commands), so a check-in and a command or a cancellation cannot deadlock.
            first_today = device.last_checkin_at is None or device.last_checkin_at.date() != now.date()
            device.last_checkin_at = now
            device.last_checkin_ip = client_ip
            if request.agent_version:
                device.agent_version = request.agent_version
            await session.flush()
            if first_today:
                await session.execute(
                    pg_insert(device_checkin_days)
                    .values(day=now.date(), device_id=device.id)
                    .on_conflict_do_nothing()
                )
            await command_service.record_results(session, device, request.command_results, now)
        if request.inventory is not None:
            raw = raw_inventory if raw_inventory is not None else request.inventory.model_dump(mode="json")
            inventory_state = await self.ingest_inventory(session, device, request.inventory, raw, now)
        elif request.inventory_hash is not None and request.inventory_hash == device.inventory_hash:
            inventory_state = "unchanged"
        else:
            inventory_state = "needed"
        if not steady:
            # Dynamic groups and assignment targets follow new inventory, a rename, a retire or wipe: in this
            # transaction. When nothing a rule or filter can read changed, this returns without a query.
            await assignment_hooks.device_changed(session, device, unless=inputs)
            if inventory_state == "accepted" or device.agent_version != agent_before:
                # What compliance reads may have changed: evaluate the device now (docs/policies.md).
                await compliance_service.evaluate(session, [device.id], now, reason="check-in")
            pending = await command_service.deliver(session, device, now)
        certificate = auth.certificate
        lifetime = certificate.not_after - certificate.not_before
        renew = certificate.not_after - now < lifetime / 3
        return CheckinResponse(
            server_time=now,
            checkin_interval_seconds=self.interval(settings, device, now),
            inventory=inventory_state,
            commands=pending,
            renew_certificate=renew,
            # As authenticated for a steady check-in; read again after one that may have moved it (new
            # inventory through a filter or a dynamic group).
            desired_state_version=auth.desired_state_version
            if steady
            else await desired_state_version(session, device.id),
        )

    def is_steady(self, device: Device, auth: AuthenticatedDevice, request: CheckinRequest) -> bool:
        """A check-in that changes nothing: no result, no inventory, the same agent version, no command
        waiting (seen by authentication through the partial index of open commands), a device in plain
        ``managed`` state (pending wipes and retirements have their own bookkeeping in delivery) that has
        checked in before (the first check-in is written at once)."""
        return (
            not request.command_results
            and request.inventory is None
            and (not request.agent_version or request.agent_version == device.agent_version)
            and not auth.pending_commands
            and device.management_state is ManagementState.managed
            and device.last_checkin_at is not None
        )

    # ---------------------------------------------------------------- renewal
    async def renew(
        self, session: AsyncSession, settings: Settings, auth: AuthenticatedDevice, csr_pem: str
    ) -> tuple[str, str, str]:
        try:
            csr = certs.load_csr(csr_pem)
        except certs.CsrRefused as exc:
            raise ValidationFailed(f"CSR refused: {exc}") from exc
        current = x509.load_pem_x509_certificate(auth.certificate.certificate_pem.encode()).public_key()
        if csr.public_key().public_bytes(*SPKI) == current.public_bytes(*SPKI):
            raise ValidationFailed("CSR refused: renewal needs a new key pair.")
        cert, ca = await pki_service.issue_device_certificate(session, settings, auth.device.id, csr)
        fingerprint = certs.fingerprint(cert)
        now = utcnow()
        session.add(
            DeviceCertificate(
                id=uuid.uuid4(),
                device_id=auth.device.id,
                fingerprint_sha256=fingerprint,
                serial_number=format(cert.serial_number, "x"),
                certificate_pem=certs.cert_pem(cert).decode(),
                issuer_fingerprint_sha256=ca.fingerprint_sha256,
                not_before=cert.not_valid_before_utc,
                not_after=cert.not_valid_after_utc,
                created_at=now,
            )
        )
        await session.execute(
            update(DeviceCertificate)
            .where(DeviceCertificate.id == auth.certificate.id)
            .values(revocation_reason="superseded")
        )
        await audit_service.record(
            session,
            activity="device.certificate_renew",
            category="device",
            operation="update",
            target_type="device",
            target_id=auth.device.id,
            target_name=auth.device.name,
            changes=[("certificate_fingerprint", auth.certificate.fingerprint_sha256, fingerprint)],
        )
        return certs.cert_pem(cert).decode(), ca.certificate_pem, fingerprint


checkin_service = CheckinService()
