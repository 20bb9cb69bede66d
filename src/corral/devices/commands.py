"""Remote actions: one entry per command type in a registry (who may send it, to which platforms and
ownerships, with which parameters, and what its outcome does to the device). Pure: no database, no FastAPI."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import timedelta
from typing import Annotated

from pydantic import BaseModel, ConfigDict, Field

from corral.kit.text import CLEAN_NAME
from corral.models import ManagementState, Ownership, Platform
from corral.rbac.permissions import P

ALL_PLATFORMS = frozenset(Platform)
MOBILE = frozenset({Platform.ios, Platform.ipados, Platform.android})


class NoParams(BaseModel):
    model_config = ConfigDict(extra="forbid")


class LockParams(NoParams):
    message: str | None = Field(default=None, max_length=256, description="Shown on the lock screen")
    phone: str | None = Field(default=None, max_length=64, description="A number to call, on the lock screen")


class WipeParams(NoParams):
    keep_enrollment_data: bool = False
    keep_user_data: bool = False


class RenameParams(NoParams):
    name: Annotated[str, Field(min_length=1, max_length=256), CLEAN_NAME]  # as at enrollment (kit.text)


class LostModeParams(NoParams):
    message: str = Field(min_length=1, max_length=256)
    phone: str | None = Field(default=None, max_length=64)
    footnote: str | None = Field(default=None, max_length=256)


@dataclass(frozen=True)
class CommandType:
    name: str
    label: str
    permission: P
    params: type[NoParams]
    platforms: frozenset[Platform] = ALL_PLATFORMS
    company_only: bool = False
    # Destructive actions need a reason and the device's name typed as confirmation.
    destructive: bool = False
    ttl: timedelta = timedelta(days=7)
    # Lifecycle of the device for actions that end management: when queued, when the device took it.
    pending_state: ManagementState | None = None
    issued_state: ManagementState | None = None
    ended_state: ManagementState | None = None
    description: str = ""

    def allows(self, platform: Platform, ownership: Ownership) -> str | None:
        """Why this command cannot go to such a device, or None."""
        if platform not in self.platforms:
            return f"{self.label} is not available for {platform.value} devices."
        if self.company_only and ownership is not Ownership.company:
            hint = (
                " Retire it instead: retire removes corporate data and keeps personal data."
                if (self.name == "wipe")
                else ""
            )
            return f"{self.label} is only for company-owned devices; this one is personal.{hint}"
        return None


REGISTRY: dict[str, CommandType] = {
    command.name: command
    for command in (
        CommandType(
            "lock",
            "Lock",
            P.remote_lock,
            LockParams,
            ttl=timedelta(days=1),
            description="Locks the screen now, optionally with a message and a phone number.",
        ),
        CommandType(
            "wipe",
            "Wipe",
            P.remote_wipe,
            WipeParams,
            company_only=True,
            destructive=True,
            pending_state=ManagementState.wipe_pending,
            issued_state=ManagementState.wipe_issued,
            ended_state=ManagementState.wiped,
            ttl=timedelta(days=30),
            description="Factory-resets the device: all data, corporate and personal, is erased.",
        ),
        CommandType(
            "retire",
            "Retire",
            P.remote_retire,
            NoParams,
            destructive=True,
            pending_state=ManagementState.retire_pending,
            issued_state=ManagementState.retire_issued,
            ended_state=ManagementState.retired,
            ttl=timedelta(days=30),
            description="Removes corporate data, profiles and management; personal data stays.",
        ),
        CommandType(
            "sync",
            "Sync",
            P.remote_sync,
            NoParams,
            ttl=timedelta(hours=4),
            description="Asks the device to check in now.",
        ),
        CommandType(
            "restart",
            "Restart",
            P.remote_restart,
            NoParams,
            platforms=ALL_PLATFORMS - {Platform.android},
            ttl=timedelta(days=1),
            description="Restarts the device.",
        ),
        CommandType(
            "shutdown",
            "Shut down",
            P.remote_shutdown,
            NoParams,
            platforms=frozenset({Platform.windows, Platform.macos, Platform.linux}),
            ttl=timedelta(days=1),
            description="Shuts the device down.",
        ),
        CommandType(
            "locate",
            "Locate",
            P.remote_locate,
            NoParams,
            platforms=MOBILE | {Platform.windows},
            ttl=timedelta(hours=4),
            description="Asks the device for its location.",
        ),
        CommandType(
            "lost_mode_on",
            "Turn on lost mode",
            P.remote_lost_mode,
            LostModeParams,
            platforms=MOBILE,
            company_only=True,
            description="Locks the device in lost mode with a message.",
        ),
        CommandType(
            "lost_mode_off",
            "Turn off lost mode",
            P.remote_lost_mode,
            NoParams,
            platforms=MOBILE,
            company_only=True,
            description="Ends lost mode.",
        ),
        CommandType(
            "passcode_reset",
            "Reset passcode",
            P.remote_passcode_reset,
            NoParams,
            platforms=MOBILE | {Platform.windows},
            description="Removes or resets the device passcode.",
        ),
        CommandType(
            "rename", "Rename", P.remote_rename, RenameParams, description="Changes the device name."
        ),
    )
}
