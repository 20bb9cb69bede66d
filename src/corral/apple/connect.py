"""Apple's command protocol, ``PUT /apple/v1/connect`` (docs/apple-mdm.md): the device reports on the command
it was given (Acknowledged, Error, CommandFormatError, NotNow) or that it is Idle, and gets the next command
in the answer, one per response, until an empty answer ends the session.

A Corral command (commands/registry.py) becomes one or more Apple commands when it is first due
(apple/commands.steps); they go out one at a time, in order, and the Corral command's state follows them:
sent with its first step, succeeded when every step is acknowledged, failed at the first error (the rest
canceled), not now when the device says so (sent again later, with backoff: the device does not keep it).
Corral's own queries (the inventory set after enrollment) are steps without a Corral command.

Locks: the device row first, then its commands, the order every command path takes (commands/service.py).
"""

from __future__ import annotations

import random
import uuid
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import and_, delete, or_, select, update
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.ext.asyncio import AsyncSession

from corral.apple import commands as apple_commands
from corral.apple import inventory, plist
from corral.apple import profiles as apple_profiles
from corral.apple.auth import AppleCaller
from corral.apple.checkin import unlock_box
from corral.apple.identities import PROFILE_SIGNER, identities
from corral.assignments import hooks as assignment_hooks
from corral.commands.schemas import CommandResult
from corral.commands.service import command_service
from corral.compliance.service import compliance_service
from corral.config import Settings
from corral.delivery.service import delivery_service, document_content
from corral.errors import BadRequest, NotAuthenticated
from corral.kit import cms, context
from corral.kit.time import utcnow
from corral.models import (
    AppleCommand,
    AppleEnrollment,
    ConfigurationProfile,
    Device,
    DeviceCommand,
    DeviceProfileDelivery,
    DeviceSettingState,
)
from corral.tenant.service import tenant_service

STATUSES = frozenset({"Idle", "Acknowledged", "Error", "CommandFormatError", "NotNow"})
OPEN = ("queued", "sent", "not_now")
#: Corral's own queries that were never answered are dropped after this long (the next sync asks again).
INTERNAL_TTL = timedelta(days=1)
NOT_NOW_FIRST = 30  # seconds
NOT_NOW_MAX = 30 * 60


def not_now_delay(count: int) -> timedelta:
    """After the n-th NotNow: 30 s, 1 min, 2 min… up to 30 min, ±20 % (devices that said NotNow together
    should not all come back together)."""
    seconds = min(NOT_NOW_FIRST * 2 ** max(count - 1, 0), NOT_NOW_MAX)
    return timedelta(seconds=seconds * random.uniform(0.8, 1.2))


def command_plist(command: AppleCommand, params: dict[str, Any]) -> bytes:
    return plist.dump(
        {"CommandUUID": str(command.id).upper(), "Command": {"RequestType": command.request_type, **params}}
    )


class AppleConnect:
    async def handle(self, session: AsyncSession, settings: Settings, caller: AppleCaller) -> bytes:
        """The answer's body: the next command's plist, or empty (nothing left)."""
        device, enrollment = caller.device, caller.enrollment
        if device is None or enrollment is None:
            raise NotAuthenticated("This identity has not authenticated yet: send Authenticate first.")
        message = caller.message
        status = message.get("Status")
        if status not in STATUSES:
            raise BadRequest("Status must be Idle, Acknowledged, Error, CommandFormatError or NotNow.")
        now = utcnow()
        await session.execute(select(Device.id).where(Device.id == device.id).with_for_update(key_share=True))
        skip = None
        changed = False
        if status != "Idle":
            command = await self._reported(session, device, message)
            if command.status in OPEN:
                changed = await self._report(session, device, enrollment, command, status, message, now)
            if status == "NotNow":
                skip = command.id
        device.last_checkin_at = now
        device.last_checkin_ip = context.current().client_ip
        if changed:
            await assignment_hooks.device_changed(session, device)
            await compliance_service.evaluate(session, [device.id], now, reason="check-in")
        await self._reconcile(session, settings, device, enrollment, caller.desired_state_version, now)
        return await self._next(session, settings, device, enrollment, now, skip)

    # ---------------------------------------------------------------------------- configuration profiles
    async def _reconcile(
        self,
        session: AsyncSession,
        settings: Settings,
        device: Device,
        enrollment: AppleEnrollment,
        version: int,
        now: datetime,
    ) -> None:
        """Queue InstallProfile for each profile that reaches the device at a version it does not have, and
        RemoveProfile for each it has that no longer reaches it; only when its desired state (``version``,
        read with the authentication) moved since the last time."""
        if version == enrollment.reconciled_version:
            return
        # Right after a ProfileList answer, what the device says it has counts too: a profile Corral
        # installed that is gone from the device is installed again.
        after_profile_list = enrollment.reconciled_version == -1
        content = await document_content(session, settings, device.id, delivery_service.contents)
        desired = {uuid.UUID(p["id"]): int(p["version"]) for p in content.body["profiles"]}
        delivered = {
            row.profile_id: row.version
            for row in (
                await session.scalars(
                    select(DeviceProfileDelivery).where(DeviceProfileDelivery.device_id == device.id)
                )
            ).all()
        }
        reported = {
            profile_id
            for item in (enrollment.facts or {}).get("profiles", [])
            if (profile_id := apple_profiles.profile_id_of(str(item.get("identifier") or ""))) is not None
        }
        waiting = (
            await session.execute(
                select(AppleCommand.request_type, AppleCommand.params).where(
                    AppleCommand.device_id == device.id,
                    AppleCommand.device_command_id.is_(None),
                    AppleCommand.status.in_(OPEN),
                    AppleCommand.request_type.in_(("InstallProfile", "RemoveProfile")),
                )
            )
        ).all()
        installing = {str(params.get("profile_id")) for kind, params in waiting if kind == "InstallProfile"}
        removing = {str(params.get("Identifier")) for kind, params in waiting if kind == "RemoveProfile"}
        for profile_id, profile_version in desired.items():
            missing = after_profile_list and profile_id not in reported
            if (delivered.get(profile_id) != profile_version or missing) and str(
                profile_id
            ) not in installing:
                session.add(_internal(device.id, "InstallProfile", {"profile_id": str(profile_id)}, now))
        for profile_id in (set(delivered) | reported) - set(desired):
            name = apple_profiles.identifier(profile_id)
            if name not in removing:
                session.add(_internal(device.id, "RemoveProfile", {"Identifier": name}, now))
        enrollment.reconciled_version = version
        await session.flush()

    async def _install(
        self, session: AsyncSession, settings: Settings, device: Device, step: AppleCommand
    ) -> dict[str, Any] | None:
        """InstallProfile's parameters, built as it leaves from the profile as it is now (None: it no longer
        reaches the device). The version and the settings' states to record are kept with the step."""
        content = await document_content(session, settings, device.id, delivery_service.contents)
        wanted = str(step.params.get("profile_id"))
        entry = next((p for p in content.body["profiles"] if p["id"] == wanted), None)
        if entry is None:
            return None
        conflicts = frozenset(c["setting_id"] for c in content.body["conflicts"] if wanted in c["profiles"])
        values = {s["id"]: s["value"] for s in entry["settings"]}
        generated = apple_profiles.generate(wanted, values, device.platform, conflicts)
        tenant = await tenant_service.get(session)
        body = apple_profiles.configuration(
            wanted, entry["name"], tenant.organization_name, generated.payloads
        )
        signer = await identities.get(session, settings, PROFILE_SIGNER)
        step.params = {
            "profile_id": wanted,
            "version": entry["version"],
            "states": {k: list(v) for k, v in generated.states.items()},
        }
        return {"Payload": cms.sign(body, signer.certificate, signer.key, certificates=[signer.issuer])}

    async def _profile_done(
        self, session: AsyncSession, device: Device, step: AppleCommand, failure: str | None, now: datetime
    ) -> None:
        """An install or removal of a Corral profile answered: what the status pages read."""
        if step.request_type == "RemoveProfile":
            profile_id = apple_profiles.profile_id_of(str(step.params.get("Identifier") or ""))
            if profile_id is not None:
                for model in (DeviceProfileDelivery, DeviceSettingState):
                    await session.execute(
                        delete(model).where(model.device_id == device.id, model.profile_id == profile_id)
                    )
            return
        profile_id = uuid.UUID(str(step.params["profile_id"]))
        if await session.get(ConfigurationProfile, profile_id) is None:
            return  # deleted meanwhile
        version = int(step.params["version"])
        values = {"device_id": device.id, "profile_id": profile_id, "version": version, "delivered_at": now}
        stmt = pg_insert(DeviceProfileDelivery).values(values)
        await session.execute(
            stmt.on_conflict_do_update(
                index_elements=[DeviceProfileDelivery.device_id, DeviceProfileDelivery.profile_id],
                set_={"version": version, "delivered_at": now},
            )
        )
        await session.execute(
            delete(DeviceSettingState).where(
                DeviceSettingState.device_id == device.id, DeviceSettingState.profile_id == profile_id
            )
        )
        rows = []
        for setting_id, (state, message) in dict(step.params.get("states") or {}).items():
            if failure is not None and state == "succeeded":
                state, message = "error", failure
            rows.append(
                {
                    "device_id": device.id,
                    "profile_id": profile_id,
                    "setting_id": setting_id,
                    "profile_version": version,
                    "state": state,
                    "message": message[:1024],
                    "reported_at": now,
                }
            )
        if rows:
            await session.execute(pg_insert(DeviceSettingState), rows)

    async def _reported(self, session: AsyncSession, device: Device, message: dict[str, Any]) -> AppleCommand:
        try:
            command_id = uuid.UUID(str(message.get("CommandUUID")))
        except ValueError as exc:
            raise BadRequest("CommandUUID is missing or not a UUID.") from exc
        command = await session.scalar(
            select(AppleCommand)
            .where(AppleCommand.id == command_id, AppleCommand.device_id == device.id)
            .with_for_update()
        )
        if command is None:
            raise BadRequest("Unknown command: CommandUUID is not a command sent to this device.")
        return command

    async def _report(
        self,
        session: AsyncSession,
        device: Device,
        enrollment: AppleEnrollment,
        command: AppleCommand,
        status: str,
        message: dict[str, Any],
        now: datetime,
    ) -> bool:
        """Apply the device's report on ``command``; whether the device's inventory changed."""
        changed = False
        failure: str | None = None
        if status == "Acknowledged":
            if command.request_type in inventory.INVENTORY_REQUESTS:
                changed = await inventory.ingest(
                    session, device, enrollment, command.request_type, message, now
                )
            if command.request_type == "Settings":
                failure = apple_commands.settings_failed(message)
            if command.request_type in ("EnableLostMode", "DisableLostMode"):
                enrollment.lost_mode_enabled = command.request_type == "EnableLostMode"
            command.result = apple_commands.result_of(command.request_type, message)
            command.status = "error" if failure else "acknowledged"
            command.completed_at = now
        elif status in ("Error", "CommandFormatError"):
            command.error_chain = apple_commands.error_chain(message.get("ErrorChain"))
            command.status = "error" if status == "Error" else "format_error"
            command.completed_at = now
            failure = apple_commands.error_text(message.get("ErrorChain")) or (
                "the device could not read the command"
                if status == "CommandFormatError"
                else "the device failed"
            )
        else:  # NotNow: the device keeps nothing; sent again once it is likely to take it
            command.not_now_count += 1
            command.status = "not_now"
            command.not_before = now + not_now_delay(command.not_now_count)
        if command.device_command_id is not None:
            await self._roll_up(session, device, enrollment, command, status, failure, now)
        elif command.request_type in ("InstallProfile", "RemoveProfile") and status != "NotNow":
            await self._profile_done(session, device, command, failure, now)
        if command.request_type == "ProfileList" and status == "Acknowledged":
            enrollment.reconciled_version = -1  # compare again with what the device says it has
        return changed

    async def _roll_up(
        self,
        session: AsyncSession,
        device: Device,
        enrollment: AppleEnrollment,
        command: AppleCommand,
        status: str,
        failure: str | None,
        now: datetime,
    ) -> None:
        """The Corral command follows its steps."""
        assert command.device_command_id is not None
        result: CommandResult | None = None
        if failure is not None:
            await session.execute(
                update(AppleCommand)
                .where(
                    AppleCommand.device_command_id == command.device_command_id, AppleCommand.status.in_(OPEN)
                )
                .values(status="canceled", completed_at=now)
            )
            result = CommandResult(
                command_id=command.device_command_id, status="failed", error=failure[:1024]
            )
        elif status == "NotNow":
            result = CommandResult(command_id=command.device_command_id, status="not_now")
        else:
            steps = (
                await session.scalars(
                    select(AppleCommand)
                    .where(AppleCommand.device_command_id == command.device_command_id)
                    .order_by(AppleCommand.step)
                )
            ).all()
            if all(step.status == "acknowledged" for step in steps):
                merged: dict[str, Any] = {}
                for step in steps:
                    merged.update(step.result or {})
                result = CommandResult(
                    command_id=command.device_command_id, status="succeeded", result=merged
                )
        if result is not None:
            await command_service.record_results(session, device, [result], now)
            if device.management_state.value in ("retired", "wiped"):
                enrollment.ended_at = now

    async def _next(
        self,
        session: AsyncSession,
        settings: Settings,
        device: Device,
        enrollment: AppleEnrollment,
        now: datetime,
        skip: uuid.UUID | None,
    ) -> bytes:
        open_commands = await command_service.open_commands(session, device, now)
        open_ids = [c.id for c in open_commands]
        # Steps of Corral commands no longer open (canceled, expired, failed) and stale queries of Corral's
        # own are not sent.
        await session.execute(
            update(AppleCommand)
            .where(
                AppleCommand.device_id == device.id,
                AppleCommand.status.in_(OPEN),
                or_(
                    and_(
                        AppleCommand.device_command_id.is_not(None),
                        AppleCommand.device_command_id.not_in(open_ids),
                    ),
                    and_(
                        AppleCommand.device_command_id.is_(None), AppleCommand.created_at < now - INTERNAL_TTL
                    ),
                ),
            )
            .values(status="canceled", completed_at=now)
            .execution_options(synchronize_session=False)
        )
        while True:
            step = await self._due_step(session, device, now, skip)
            if step is not None:
                sent = await self._send(session, settings, device, enrollment, step, open_commands, now)
                if sent is not None:
                    return sent
                continue
            expanded = await self._expand(session, device, enrollment, open_commands, now)
            if not expanded:
                return b""

    async def _due_step(
        self, session: AsyncSession, device: Device, now: datetime, skip: uuid.UUID | None
    ) -> AppleCommand | None:
        due = or_(
            AppleCommand.status.in_(("queued", "sent")),
            and_(AppleCommand.status == "not_now", AppleCommand.not_before <= now),
        )
        stmt = (
            select(AppleCommand)
            .where(AppleCommand.device_id == device.id, AppleCommand.status.in_(OPEN), due)
            .order_by(AppleCommand.created_at, AppleCommand.step)
            .limit(1)
            .with_for_update()
        )
        if skip is not None:
            stmt = stmt.where(AppleCommand.id != skip)
        step: AppleCommand | None = await session.scalar(stmt)
        return step

    async def _expand(
        self,
        session: AsyncSession,
        device: Device,
        enrollment: AppleEnrollment,
        open_commands: list[DeviceCommand],
        now: datetime,
    ) -> bool:
        """Turn the oldest open Corral command that has no steps yet into its steps; whether one was."""
        if not open_commands:
            return False
        expanded = set(
            (
                await session.scalars(
                    select(AppleCommand.device_command_id).where(
                        AppleCommand.device_command_id.in_([c.id for c in open_commands])
                    )
                )
            ).all()
        )
        for command in open_commands:
            if command.id in expanded:
                continue
            if command.type == "passcode_reset" and enrollment.unlock_token_encrypted is None:
                result = CommandResult(
                    command_id=command.id,
                    status="failed",
                    error="The device sent no UnlockToken: its passcode cannot be cleared remotely.",
                )
                await command_service.record_results(session, device, [result], now)
                continue
            for index, (request_type, params) in enumerate(
                apple_commands.steps(
                    command.type, command.params, device.platform, enrollment.profile_identifier
                )
            ):
                session.add(
                    AppleCommand(
                        id=uuid.uuid4(),
                        device_id=device.id,
                        device_command_id=command.id,
                        step=index,
                        request_type=request_type,
                        params=params,
                        created_at=now,
                    )
                )
            await session.flush()
            return True
        return False

    async def _send(
        self,
        session: AsyncSession,
        settings: Settings,
        device: Device,
        enrollment: AppleEnrollment,
        step: AppleCommand,
        open_commands: list[DeviceCommand],
        now: datetime,
    ) -> bytes | None:
        """The step's plist, as it leaves (None: it no longer applies and was canceled)."""
        params = dict(step.params)
        if step.request_type == "InstallProfile" and step.device_command_id is None:
            rendered = await self._install(session, settings, device, step)
            if rendered is None:
                step.status, step.completed_at = "canceled", now
                return None
            params = rendered
        if step.request_type == "ClearPasscode" and enrollment.unlock_token_encrypted is not None:
            params["UnlockToken"] = unlock_box(settings).decrypt(enrollment.unlock_token_encrypted)
        step.status = "sent"
        step.sent_at = step.sent_at or now
        step.delivery_count += 1
        if step.device_command_id is not None:
            command = next((c for c in open_commands if c.id == step.device_command_id), None)
            if command is not None:
                command_service.mark_sent(device, command, now)
        return command_plist(step, params)


def _internal(device_id: uuid.UUID, request_type: str, params: dict[str, Any], now: datetime) -> AppleCommand:
    """A command of Corral's own (inventory, profiles): no Corral command behind it."""
    return AppleCommand(
        id=uuid.uuid4(), device_id=device_id, request_type=request_type, params=params, created_at=now
    )


apple_connect = AppleConnect()
