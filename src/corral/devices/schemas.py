from __future__ import annotations

import re
import uuid
from datetime import date, datetime
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from corral.kit.pagination import COUNT_EXACTLY_UP_TO
from corral.models import ComplianceState, ManagementChannel, ManagementState, Ownership, Platform

Text = Annotated[str, Field(max_length=512)]
Count = Annotated[int, Field(ge=0, le=2**62)]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


# ------------------------------------------------------------------------------- inventory (device side)
class Hardware(_Strict):
    manufacturer: Text | None = None
    model: Text | None = None
    serial_number: Text | None = None
    cpu_architecture: Annotated[str, Field(max_length=32)] | None = None
    memory_bytes: Count | None = None
    storage_total_bytes: Count | None = None
    storage_free_bytes: Count | None = None


class OperatingSystem(_Strict):
    platform: Platform | None = None
    name: Text | None = None
    version: Annotated[str, Field(max_length=64)] | None = None
    build: Annotated[str, Field(max_length=128)] | None = None


class Security(_Strict):
    disk_encrypted: bool | None = None
    firewall_enabled: bool | None = None
    screen_lock_enabled: bool | None = None
    passcode_set: bool | None = None
    jailbroken: bool | None = None
    secure_boot: bool | None = None
    #: macOS System Integrity Protection (reported through Apple MDM).
    system_integrity_protection: bool | None = None
    # What the device's password policy asks (minimum length) and after how many idle minutes it locks.
    passcode_min_length: Annotated[int, Field(ge=0, le=256, strict=True)] | None = None
    screen_lock_timeout_minutes: Annotated[int, Field(ge=0, le=100_000, strict=True)] | None = None


class NetworkInterface(_Strict):
    name: Text
    mac: Annotated[str, Field(max_length=64)] | None = None
    ipv4: list[Annotated[str, Field(max_length=64)]] = Field(default_factory=list, max_length=64)
    ipv6: list[Annotated[str, Field(max_length=64)]] = Field(default_factory=list, max_length=64)


class Network(_Strict):
    hostname: Text | None = None
    interfaces: list[NetworkInterface] = Field(default_factory=list, max_length=64)


class App(_Strict):
    name: Text
    version: Annotated[str, Field(max_length=128)] | None = None
    identifier: Text | None = None


class Inventory(_Strict):
    hardware: Hardware = Field(default_factory=Hardware)
    os: OperatingSystem = Field(default_factory=OperatingSystem)
    security: Security = Field(default_factory=Security)
    network: Network = Field(default_factory=Network)
    apps: list[App] = Field(default_factory=list, max_length=5000)
    primary_user: Text | None = None


# ------------------------------------------------------------------------------------------- admin API
class DeviceOut(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    id: uuid.UUID
    name: str
    serial_number: str
    platform: Platform
    os_version: str | None
    model: str | None
    manufacturer: str | None
    ownership: Ownership
    management_state: ManagementState
    #: How Corral reaches it: its agent, or Apple's MDM protocol (iPhone, iPad, Mac without an agent).
    management_channel: ManagementChannel = ManagementChannel.agent
    compliance_state: ComplianceState
    user_id: uuid.UUID | None
    primary_user: str | None
    enrolled_at: datetime
    last_checkin_at: datetime | None
    stale: bool = False
    scope_tags: list[str] = Field(default_factory=list)


class AppleMdmOut(BaseModel):
    """An Apple device's MDM enrollment as admins see it: never its push token, push magic or UnlockToken."""

    model_config = ConfigDict(from_attributes=True)

    udid: str
    topic: str
    push_state: str = Field(description="pending (no push token yet), ok, retrying or unreachable")
    push_failed_reason: str | None
    last_push_at: datetime | None
    authenticated_at: datetime
    first_token_update_at: datetime | None
    last_token_update_at: datetime | None
    ended_at: datetime | None
    lost_mode_enabled: bool | None
    awaiting_configuration: bool
    facts: dict[str, Any] = Field(description="Profiles and certificates the device reported")


class DeviceDetail(DeviceOut):
    os_build: str | None
    agent_version: str | None
    last_checkin_ip: str | None
    cpu_architecture: str | None
    memory_bytes: int | None
    storage_total_bytes: int | None
    storage_free_bytes: int | None
    hostname: str | None
    disk_encrypted: bool | None
    firewall_enabled: bool | None
    screen_lock_enabled: bool | None
    jailbroken: bool | None
    secure_boot: bool | None
    #: Apple devices: supervised, as the device reported it (None until it has, and for agent devices).
    supervised: bool | None = None
    inventory: dict[str, Any]
    inventory_updated_at: datetime | None
    certificate_fingerprint: str | None = None
    certificate_expires_at: datetime | None = None
    #: Apple devices managed through Apple MDM: their enrollment; None for agent devices.
    apple_mdm: AppleMdmOut | None = None


SortKey = Literal["name", "-name", "last_checkin_at", "-last_checkin_at", "enrolled_at", "-enrolled_at"]


ISO_DAY = re.compile(r"\d{4}-\d{2}-\d{2}")


class DeviceFilter(BaseModel):
    search: str | None = Field(
        default=None, max_length=200, description="Name, serial number or user contains"
    )
    platform: Platform | None = None
    ownership: Ownership | None = None
    management_state: ManagementState | None = None
    compliance_state: ComplianceState | None = None
    stale: bool | None = Field(default=None, description="No check-in for the stale threshold (days)")
    user_id: uuid.UUID | None = Field(default=None, description="Devices enrolled for this user")
    checked_in_on: date | None = Field(default=None, description="Devices that checked in on this day (UTC)")
    failing_setting: str | None = Field(
        default=None,
        max_length=64,
        pattern=r"^[a-z][a-z0-9_]*\.[a-z][a-z0-9_]*$",
        description="Devices that fail this compliance setting (a compliance catalog id)",
    )
    grace_ends_on: date | None = Field(
        default=None, description="Devices in a grace period that ends on this day (UTC)"
    )
    sort: SortKey = "name"

    @field_validator("checked_in_on", "grace_ends_on", mode="before")
    @classmethod
    def _iso_day(cls, value: Any) -> Any:
        # Pydantic would read a number as seconds since 1970; a day is written YYYY-MM-DD.
        if value is not None and not isinstance(value, date) and not ISO_DAY.fullmatch(str(value)):
            raise ValueError("a day is written YYYY-MM-DD")
        return value

    cursor: str | None = Field(default=None, max_length=400)
    limit: int = Field(default=50, ge=1, le=500)


class DevicePage(BaseModel):
    items: list[DeviceOut]
    next_cursor: str | None
    total: int = Field(description="How many match the filters (an estimate when total_exact is false)")
    total_exact: bool = Field(
        description=f"False when more than {COUNT_EXACTLY_UP_TO:,} matched: the total is then the database "
        "planner's estimate, shown as such; narrow the filters for an exact count"
    )


class DeviceUpdate(BaseModel):
    model_config = ConfigDict(extra="forbid", str_strip_whitespace=True)

    ownership: Ownership | None = None
    scope_tag_ids: list[uuid.UUID] | None = Field(default=None, max_length=50)


class InventoryChangeOut(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    changed_at: datetime
    field: str
    old_value: Any
    new_value: Any


class DeviceAppOut(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    name: str
    version: str | None
    identifier: str


# ------------------------------------------------------------------------------------------- bulk actions
MAX_BULK_DEVICES = 1000


class BulkDeviceFilter(BaseModel):
    """The device list's filter, as a selection: every matching device in your scope (at most 1000)."""

    model_config = ConfigDict(extra="forbid")

    search: str | None = Field(default=None, max_length=200)
    platform: Platform | None = None
    ownership: Ownership | None = None
    management_state: ManagementState | None = None
    compliance_state: ComplianceState | None = None
    stale: bool | None = None


class BulkActionCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")

    type: str = Field(max_length=32, description="A remote action's name, e.g. lock, sync, wipe")
    device_ids: list[uuid.UUID] | None = Field(
        default=None,
        min_length=1,
        max_length=MAX_BULK_DEVICES,
        description="The selected devices (repeated ids count once); or give filter instead",
    )
    filter: BulkDeviceFilter | None = Field(
        default=None, description="Select every device in your scope matching this filter (at most 1000)"
    )
    params: dict[str, Any] = Field(default_factory=dict, description="The action's parameters")
    reason: str | None = Field(default=None, max_length=1024, description="Required for wipe and retire")
    confirm: str | None = Field(
        default=None,
        max_length=16,
        description="For wipe and retire: the number of devices, typed to confirm",
    )

    @model_validator(mode="after")
    def _one_selection(self) -> BulkActionCreate:
        if (self.device_ids is None) == (self.filter is None):
            raise ValueError("Select the devices either by device_ids or by filter (one of the two).")
        return self


class BulkSkipped(BaseModel):
    device_id: str
    device_name: str | None = Field(description="Only for devices you can see")
    reason: str


class BulkActionOut(BaseModel):
    id: uuid.UUID
    type: str
    label: str
    destructive: bool
    params: dict[str, Any]
    reason: str | None
    requested_by_name: str | None
    created_at: datetime
    requested_count: int = Field(description="Devices selected")
    queued_count: int = Field(description="Devices that took the action (a command each)")
    skipped_count: int = Field(description="Devices that could not take it")
    counts: dict[str, int] = Field(description="The commands by state (queued, sent, succeeded…)")
    finished_count: int = Field(description="Commands with nothing more to wait for")
    done: bool = Field(description="No command is waiting for a device or an approval any more")


class BulkActionItem(BaseModel):
    device_id: uuid.UUID
    device_name: str
    command_id: uuid.UUID
    status: str
    error: str | None
    sent_at: datetime | None
    completed_at: datetime | None


class BulkActionDetail(BulkActionOut):
    skipped: list[BulkSkipped]
    items: list[BulkActionItem] = Field(description="One row per device you can see, by device name")
    hidden_count: int = Field(description="Commands on devices outside your scope: counted, not listed")


class BulkActionPage(BaseModel):
    items: list[BulkActionOut]
    next_cursor: str | None


class CancelCounts(BaseModel):
    canceled: int = Field(description="Commands canceled")
    kept: int = Field(description="Open commands left alone: already delivered, or not yours to cancel")


class HolderOut(BaseModel):
    user_id: uuid.UUID
    user_principal_name: str
    display_name: str
    via: list[str] = Field(
        description="The role assignments that give it over this device: role (assignment)"
    )


class WhoCanOut(BaseModel):
    device_id: uuid.UUID
    device_name: str
    action: str
    label: str
    permission: str
    holders: list[HolderOut] = Field(
        description="Enabled administrators holding the permission and devices:read over this device"
    )
    approval_required: bool = Field(
        description="Whether the tenant makes this action wait for a second admin"
    )
    approvers: list[HolderOut] = Field(
        default_factory=list, description="Who could approve it (remote:approve over the device), if required"
    )
