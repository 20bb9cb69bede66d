"""Command parameters (one model per command type that takes any), the command as the API shows it, and the
two halves of the device protocol's command exchange (docs/device-protocol.md §5)."""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from corral.kit.text import CLEAN_NAME


# ------------------------------------------------------------------------------------------- parameters
class NoParams(BaseModel):
    model_config = ConfigDict(extra="forbid")


PIN = Field(
    default=None,
    pattern=r"^[0-9]{6}$",
    description="Macs managed through Apple MDM: the six-digit PIN that unlocks the Mac afterwards",
)


class LockParams(NoParams):
    message: str | None = Field(default=None, max_length=256, description="Shown on the lock screen")
    phone: str | None = Field(default=None, max_length=64, description="A number to call, on the lock screen")
    pin: str | None = PIN


class WipeParams(NoParams):
    keep_enrollment_data: bool = False
    keep_user_data: bool = False
    pin: str | None = PIN


class RenameParams(NoParams):
    name: Annotated[str, Field(min_length=1, max_length=256), CLEAN_NAME]  # as at enrollment (kit.text)


class NotifyParams(NoParams):
    message: str = Field(min_length=1, max_length=500, description="The text the device shows")
    title: str | None = Field(default=None, max_length=120)


class LostModeParams(NoParams):
    message: str = Field(min_length=1, max_length=256)
    phone: str | None = Field(default=None, max_length=64)
    footnote: str | None = Field(default=None, max_length=256)


# ------------------------------------------------------------------------------------------- admin API
class CommandOut(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    id: uuid.UUID
    device_id: uuid.UUID
    type: str
    params: dict[str, Any]
    status: str
    reason: str | None
    requested_by_name: str | None
    created_at: datetime
    expires_at: datetime
    sent_at: datetime | None
    acknowledged_at: datetime | None
    completed_at: datetime | None
    delivery_count: int
    result: dict[str, Any] | None
    error: str | None
    reviewed_by_name: str | None = Field(
        default=None, description="The second administrator who approved or rejected it, when it needed one"
    )
    reviewed_at: datetime | None = None


class ActionRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    params: dict[str, Any] = Field(default_factory=dict)
    reason: str | None = Field(default=None, max_length=1024, description="Required for wipe and retire")
    confirm: str | None = Field(
        default=None, max_length=256, description="For wipe and retire: the device name, typed to confirm"
    )
    idempotency_key: str | None = Field(
        default=None, max_length=128, description="The same key again returns the first command"
    )


class ActionOut(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    name: str
    label: str
    permission: str
    platforms: list[str]
    company_only: bool
    destructive: bool
    description: str


class PendingApprovalOut(CommandOut):
    device_name: str
    device_serial_number: str
    can_approve: bool = Field(description="False for your own requests: a second administrator must approve")


class ApproveRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    comment: str | None = Field(default=None, max_length=1024, description="Recorded in the audit log")


class RejectRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    reason: str = Field(max_length=900, description="Why (at least 5 characters): shown on the command")


# ------------------------------------------------------------------------------------------- device protocol
class CommandResult(BaseModel):
    """A device's report on a command it was given."""

    model_config = ConfigDict(extra="forbid")

    command_id: uuid.UUID
    status: Literal["acknowledged", "succeeded", "failed", "not_now"]
    result: dict[str, Any] | None = None
    error: str | None = Field(default=None, max_length=1024)


class PendingCommand(BaseModel):
    """A command as the device receives it: ``params`` is what its type's ``build`` made of it."""

    id: uuid.UUID
    type: str
    params: dict[str, Any]
    expires_at: datetime
