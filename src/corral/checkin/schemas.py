from __future__ import annotations

import uuid
from datetime import datetime
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field

from corral.commands.schemas import CommandResult, PendingCommand
from corral.devices.schemas import Inventory
from corral.kit.text import CLEAN_NAME, IDENTIFIER
from corral.models import Platform


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class DeviceFacts(_Strict):
    # kit.text: the serial number identifies the device (refused with a control or format character); the
    # name is only shown (such characters are removed).
    serial_number: Annotated[str, Field(min_length=1, max_length=128), IDENTIFIER]
    name: Annotated[str, Field(max_length=256), CLEAN_NAME] = ""
    platform: Platform
    os_version: str | None = Field(default=None, max_length=64)
    model: str | None = Field(default=None, max_length=256)
    manufacturer: str | None = Field(default=None, max_length=256)


class EnrollRequest(_Strict):
    token: str = Field(min_length=1, max_length=200)
    csr: str = Field(min_length=1, max_length=16_384)
    device: DeviceFacts


class EnrollResponse(BaseModel):
    device_id: uuid.UUID
    certificate: str
    ca_certificates: str
    certificate_fingerprint: str
    checkin_url: str
    events_url: str
    checkin_interval_seconds: int
    server_time: datetime


class CheckinRequest(_Strict):
    agent_version: str | None = Field(default=None, max_length=64)
    inventory_hash: Annotated[str, Field(pattern=r"^[0-9a-f]{64}$")] | None = None
    inventory: Inventory | None = None
    command_results: list[CommandResult] = Field(default_factory=list, max_length=500)


class CheckinResponse(BaseModel):
    server_time: datetime
    checkin_interval_seconds: int
    inventory: Literal["accepted", "unchanged", "needed"]
    commands: list[PendingCommand]
    renew_certificate: bool
    desired_state_version: int = Field(
        description="The device's desired-state version: fetch GET /device/v1/desired-state when it differs "
        "from the one applied"
    )


class RenewRequest(_Strict):
    csr: str = Field(min_length=1, max_length=16_384)


class RenewResponse(BaseModel):
    certificate: str
    ca_certificates: str
    certificate_fingerprint: str


__all__ = [
    "CheckinRequest",
    "CheckinResponse",
    "CommandResult",
    "DeviceFacts",
    "EnrollRequest",
    "EnrollResponse",
    "PendingCommand",
    "RenewRequest",
    "RenewResponse",
]
