"""Every command type Corral can send, one class each: who may send it (its permission), to which devices
(platforms, ownership, ``refusal``), with which parameters, how long it waits, what it does to the device's
management state while it is under way, what the device receives (``build``) and what its result does
(``on_result``). Pure: no database, no FastAPI; the lifecycle service applies what these say.

Anything that queues a command (an administrator, a bulk action, a compliance step, a profile install)
goes through ``corral.commands.service`` with one of these types, so it is checked, audited and delivered the
same way. Another channel (Apple MDM, say) maps the same types onto its own commands in ``build``."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import timedelta
from typing import Any, ClassVar, Protocol

from corral.commands.schemas import (
    LockParams,
    LostModeParams,
    NoParams,
    NotifyParams,
    RenameParams,
    WipeParams,
)
from corral.models import CommandStatus, ManagementState, Ownership, Platform
from corral.rbac.permissions import P

ALL_PLATFORMS = frozenset(Platform)
MOBILE = frozenset({Platform.ios, Platform.ipados, Platform.android})
# A result of these statuses is the device saying it took the command (a wipe may not live to report success).
TAKEN = (CommandStatus.acknowledged, CommandStatus.succeeded)


class Target(Protocol):
    """What a command type may read of its device (a ``Device`` row, loaded)."""

    @property
    def platform(self) -> Platform: ...

    @property
    def ownership(self) -> Ownership: ...

    @property
    def name(self) -> str: ...


@dataclass(frozen=True)
class Outcome:
    """What a result does to the device, for the service to apply (and audit)."""

    # Management ends (retired, wiped): the state is set, the device's certificates are revoked.
    ends_management: ManagementState | None = None
    # The device's new name.
    name: str | None = None


NOTHING = Outcome()


class CommandType:
    """One kind of command. Subclass it, set the class attributes, override the hooks where the default does
    not fit, and list an instance in ``REGISTRY``."""

    name: ClassVar[str]
    label: ClassVar[str]
    permission: ClassVar[P]
    params: ClassVar[type[NoParams]] = NoParams
    platforms: ClassVar[frozenset[Platform]] = ALL_PLATFORMS
    company_only: ClassVar[bool] = False
    # Destructive actions need a reason (and, from an administrator, the device's name typed to confirm).
    destructive: ClassVar[bool] = False
    # Put behind a second administrator's approval when the tenant setting wipe_requires_approval is on.
    approvable: ClassVar[bool] = False
    # Why the command cannot be sent to a selection of devices (bulk actions); None when it can.
    not_in_bulk: ClassVar[str | None] = None
    ttl: ClassVar[timedelta] = timedelta(days=7)
    # Lifecycle of the device for actions that end management: when queued, when the device took it.
    pending_state: ClassVar[ManagementState | None] = None
    issued_state: ClassVar[ManagementState | None] = None
    ended_state: ClassVar[ManagementState | None] = None
    description: ClassVar[str] = ""

    def refusal(self, device: Target) -> str | None:
        """Why this command cannot go to this device, or None."""
        if device.platform not in self.platforms:
            return f"{self.label} is not available for {device.platform.value} devices."
        return self.ownership_refusal(device)

    def ownership_refusal(self, device: Target) -> str | None:
        """Why the device's ownership rules the command out (every channel), or None."""
        if self.company_only and device.ownership is not Ownership.company:
            return f"{self.label} is only for company-owned devices; this one is personal."
        return None

    def build(self, params: dict[str, Any], device: Target) -> dict[str, Any]:
        """What the device receives as the command's ``params`` (device-protocol.md §5): by default the
        validated parameters as queued."""
        return dict(params)

    def on_result(self, status: CommandStatus, params: dict[str, Any], device: Target) -> Outcome:
        """What a result of ``status`` does to the device; by default nothing beyond the command's own row."""
        return NOTHING

    def __repr__(self) -> str:
        return f"<command {self.name}>"


class EndsManagement(CommandType):
    """Wipe and retire: the device is ``pending`` while the command waits, ``issued`` once delivered, and
    management ends when the device takes it."""

    destructive = True
    ttl = timedelta(days=30)

    def on_result(self, status: CommandStatus, params: dict[str, Any], device: Target) -> Outcome:
        return Outcome(ends_management=self.ended_state) if status in TAKEN else NOTHING


class Lock(CommandType):
    name, label, permission = "lock", "Lock", P.remote_lock
    params = LockParams
    ttl = timedelta(days=1)
    description = (
        "Locks the screen now, optionally with a message and a phone number (a Mac managed through Apple MDM "
        "also takes a six-digit PIN that unlocks it)."
    )


class Wipe(EndsManagement):
    name, label, permission = "wipe", "Wipe", P.remote_wipe
    params = WipeParams
    company_only = True
    approvable = True
    pending_state = ManagementState.wipe_pending
    issued_state = ManagementState.wipe_issued
    ended_state = ManagementState.wiped
    description = "Factory-resets the device: all data, corporate and personal, is erased."

    def ownership_refusal(self, device: Target) -> str | None:
        refusal = super().ownership_refusal(device)
        if refusal:
            refusal += " Retire it instead: retire removes corporate data and keeps personal data."
        return refusal


class Retire(EndsManagement):
    name, label, permission = "retire", "Retire", P.remote_retire
    pending_state = ManagementState.retire_pending
    issued_state = ManagementState.retire_issued
    ended_state = ManagementState.retired
    description = "Removes corporate data, profiles and management; personal data stays."


class Sync(CommandType):
    name, label, permission = "sync", "Sync", P.remote_sync
    ttl = timedelta(hours=4)
    description = "Asks the device to check in now."


class Restart(CommandType):
    name, label, permission = "restart", "Restart", P.remote_restart
    platforms = ALL_PLATFORMS - {Platform.android}
    ttl = timedelta(days=1)
    description = "Restarts the device."


class Shutdown(CommandType):
    name, label, permission = "shutdown", "Shut down", P.remote_shutdown
    platforms = frozenset({Platform.windows, Platform.macos, Platform.linux})
    ttl = timedelta(days=1)
    description = "Shuts the device down."


class Locate(CommandType):
    name, label, permission = "locate", "Locate", P.remote_locate
    platforms = MOBILE | {Platform.windows}
    ttl = timedelta(hours=4)
    description = "Asks the device for its location."


class LostModeOn(CommandType):
    name, label, permission = "lost_mode_on", "Turn on lost mode", P.remote_lost_mode
    params = LostModeParams
    platforms = MOBILE
    company_only = True
    description = "Locks the device in lost mode with a message."


class LostModeOff(CommandType):
    name, label, permission = "lost_mode_off", "Turn off lost mode", P.remote_lost_mode
    platforms = MOBILE
    company_only = True
    description = "Ends lost mode."


class PasscodeReset(CommandType):
    name, label, permission = "passcode_reset", "Reset passcode", P.remote_passcode_reset
    platforms = MOBILE | {Platform.windows}
    description = "Removes or resets the device passcode."


class Notify(CommandType):
    name, label, permission = "notify", "Send notification", P.remote_sync
    params = NotifyParams
    ttl = timedelta(days=3)
    description = "Shows a message to the device's user (compliance reminders use it too)."


class Rename(CommandType):
    name, label, permission = "rename", "Rename", P.remote_rename
    params = RenameParams
    not_in_bulk = "each device needs its own name"
    description = "Changes the device name."

    def on_result(self, status: CommandStatus, params: dict[str, Any], device: Target) -> Outcome:
        if status is CommandStatus.succeeded:
            return Outcome(name=str(params.get("name", device.name)))
        return NOTHING


REGISTRY: dict[str, CommandType] = {
    command.name: command
    for command in (
        Lock(),
        Wipe(),
        Retire(),
        Sync(),
        Restart(),
        Shutdown(),
        Locate(),
        LostModeOn(),
        LostModeOff(),
        PasscodeReset(),
        Rename(),
        Notify(),
    )
}
