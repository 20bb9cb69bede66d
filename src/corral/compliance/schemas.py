from __future__ import annotations

import uuid
from datetime import datetime
from enum import StrEnum
from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Field

from corral.models import ComplianceState, Platform

Name = Annotated[str, Field(min_length=1, max_length=256)]
Description = Annotated[str, Field(max_length=2000)]
Email = Annotated[str, Field(max_length=320, pattern=r"^[^@\s]{1,64}@[^@\s]{1,255}$")]
MAX_STEPS = 10
MAX_DELAY_HOURS = 24 * 365


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", str_strip_whitespace=True)


class ActionKind(StrEnum):
    mark_noncompliant = "mark_noncompliant"
    email_user = "email_user"
    push_message = "push_message"
    remote_lock = "remote_lock"
    retire = "retire"


class ActionIn(_Strict):
    action: ActionKind
    delay_hours: int = Field(
        default=0, ge=0, le=MAX_DELAY_HOURS, strict=True, description="Hours after the device first fails"
    )
    recipients: list[Email] = Field(
        default_factory=list, max_length=20, description="email_user: extra recipients besides the user"
    )
    template_id: uuid.UUID | None = Field(
        default=None, description="email_user: the template (default one if none)"
    )
    message: str = Field(default="", max_length=500, description="push_message: the text shown on the device")


class PolicyCreate(_Strict):
    name: Name
    description: Description = ""
    platform: Platform
    settings: dict[str, Any] = Field(description="Setting id → required value (see the compliance catalog)")
    actions: list[ActionIn] | None = Field(
        default=None,
        max_length=MAX_STEPS,
        description="Actions for noncompliance in order; default: mark noncompliant at once",
    )
    scope_tag_ids: list[uuid.UUID] = Field(default_factory=list, max_length=50)


class PolicyUpdate(_Strict):
    name: Name | None = None
    description: Description | None = None
    settings: dict[str, Any] | None = None
    actions: list[ActionIn] | None = Field(default=None, max_length=MAX_STEPS)
    scope_tag_ids: list[uuid.UUID] | None = Field(default=None, max_length=50)


class ActionOut(BaseModel):
    action: ActionKind
    delay_hours: int
    recipients: list[str]
    template_id: uuid.UUID | None
    message: str


class PolicyOut(BaseModel):
    id: uuid.UUID
    name: str
    description: str
    platform: Platform
    version: int
    settings: dict[str, Any]
    actions: list[ActionOut]
    scope_tags: list[str]
    created_at: datetime
    updated_at: datetime


class PolicyPage(BaseModel):
    items: list[PolicyOut]
    total: int


class CatalogSetting(BaseModel):
    id: str
    name: str
    description: str
    type: str
    platforms: list[Platform]
    minimum: int | None
    maximum: int | None
    reads: str


# ------------------------------------------------------------------------------------------ device side
class SettingResult(BaseModel):
    setting_id: str
    name: str
    state: ComplianceState
    expected: Any
    observed: Any
    message: str


class StepTaken(BaseModel):
    step: int
    action: str
    ran_at: datetime
    result: str


class PolicyResult(BaseModel):
    policy_id: uuid.UUID
    policy_name: str
    policy_version: int
    state: ComplianceState
    failing_since: datetime | None
    grace_ends_at: datetime | None
    evaluated_at: datetime
    settings: list[SettingResult]
    steps_taken: list[StepTaken]


class OverrideOut(BaseModel):
    until: datetime
    reason: str
    created_by: str
    created_at: datetime


class DeviceCompliance(BaseModel):
    device_id: uuid.UUID
    state: ComplianceState
    reason: str = Field(description="Why the device has this state, in words")
    override: OverrideOut | None
    policies: list[PolicyResult]


class HistoryEntry(BaseModel):
    at: datetime
    old_state: ComplianceState
    new_state: ComplianceState
    reason: str


class OverrideIn(_Strict):
    until: datetime = Field(description="The device counts as compliant until then (at most 90 days ahead)")
    reason: str = Field(min_length=3, max_length=500)


class ComplianceTenantSettings(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    no_policy_compliant: bool = Field(
        description="Devices no compliance policy reaches are compliant (true) or noncompliant (false)"
    )
    compliance_validity_days: int = Field(
        description="A device that has not checked in for this many days is noncompliant"
    )


class ComplianceTenantSettingsUpdate(_Strict):
    no_policy_compliant: bool | None = Field(default=None, strict=True)
    compliance_validity_days: int | None = Field(default=None, ge=1, le=120, strict=True)


# ------------------------------------------------------------------------------------------ reports
class SettingCount(BaseModel):
    setting_id: str
    name: str
    compliant: int
    noncompliant: int
    error: int


class PolicyStatus(BaseModel):
    policy_id: uuid.UUID
    counts: dict[str, int] = Field(description="Devices by state, within your device scope")
    settings: list[SettingCount]


class StatusDevice(BaseModel):
    device_id: uuid.UUID
    device_name: str
    state: ComplianceState
    grace_ends_at: datetime | None
    evaluated_at: datetime


class StatusDevicePage(BaseModel):
    items: list[StatusDevice]
    total: int
