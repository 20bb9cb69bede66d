from __future__ import annotations

import uuid
from datetime import datetime
from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Field, model_validator

from corral.assignments.resolver import Verdict, Via
from corral.groups.rules import MAX_RULE_LENGTH
from corral.models import AssignableKind, AssignmentMode, AssignmentTarget, FilterMode, Platform

Name = Annotated[str, Field(min_length=1, max_length=256)]
Description = Annotated[str, Field(max_length=2000)]
RuleText = Annotated[str, Field(min_length=1, max_length=4 * MAX_RULE_LENGTH)]
MAX_ASSIGNMENTS = 200


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", str_strip_whitespace=True)


# ---------------------------------------------------------------------------------------------- filters
class FilterCreate(_Strict):
    name: Name
    description: Description = ""
    platform: Platform = Field(description="The platform of the objects the filter can narrow")
    rule: RuleText = Field(description="A rule over device properties, in the dynamic-group rule language")
    scope_tag_ids: list[uuid.UUID] = Field(default_factory=list, max_length=50)


class FilterUpdate(_Strict):
    name: Name | None = None
    description: Description | None = None
    rule: RuleText | None = None
    scope_tag_ids: list[uuid.UUID] | None = Field(default=None, max_length=50)


class ObjectRef(BaseModel):
    id: uuid.UUID
    kind: AssignableKind
    name: str
    platform: Platform


class FilterOut(BaseModel):
    id: uuid.UUID
    name: str
    description: str
    platform: Platform
    rule: str
    scope_tags: list[str]
    created_at: datetime
    updated_at: datetime


class FilterDetail(FilterOut):
    used_by: list[ObjectRef] = Field(
        description="Objects whose assignments use this filter (that you may see)"
    )


class FilterPreviewRequest(_Strict):
    platform: Platform
    rule: RuleText
    limit: int = Field(default=10, ge=0, le=100)


class DeviceRef(BaseModel):
    id: uuid.UUID
    name: str
    serial_number: str
    platform: Platform


class FilterPreviewOut(BaseModel):
    count: int = Field(description="Active devices of the platform the rule matches, within your scope")
    devices: list[DeviceRef]
    rule: str = Field(description="The rule in canonical form")


# ------------------------------------------------------------------------------------------ assignments
class AssignmentIn(_Strict):
    target: AssignmentTarget
    group_id: uuid.UUID | None = Field(default=None, description="For target=group")
    mode: AssignmentMode = AssignmentMode.include
    filter_id: uuid.UUID | None = Field(default=None, description="Include assignments only")
    filter_mode: FilterMode | None = Field(default=None, description="With a filter (default include)")

    @model_validator(mode="after")
    def _consistent(self) -> AssignmentIn:
        if (self.target is AssignmentTarget.group) != (self.group_id is not None):
            raise ValueError("group_id is given exactly when the target is a group")
        if self.mode is AssignmentMode.exclude:
            if self.target is not AssignmentTarget.group:
                raise ValueError("only groups can be excluded")
            if self.filter_id is not None:
                raise ValueError("exclusions take no filter")
        if self.filter_id is None and self.filter_mode is not None:
            raise ValueError("filter_mode needs a filter_id")
        if self.filter_id is not None and self.filter_mode is None:
            self.filter_mode = FilterMode.include
        return self


class AssignmentsUpdate(_Strict):
    assignments: list[AssignmentIn] = Field(max_length=MAX_ASSIGNMENTS)


class GroupRef(BaseModel):
    id: uuid.UUID
    display_name: str


class FilterRef(BaseModel):
    id: uuid.UUID
    name: str


class AssignmentOut(BaseModel):
    id: uuid.UUID
    target: AssignmentTarget
    group: GroupRef | None
    mode: AssignmentMode
    filter: FilterRef | None
    filter_mode: FilterMode | None


class AssignmentsOut(BaseModel):
    object: ObjectRef
    assignments: list[AssignmentOut]
    devices: int = Field(description="Devices the object reaches now, within your scope")


class ReachPreviewRequest(_Strict):
    platform: Platform
    assignments: list[AssignmentIn] = Field(max_length=MAX_ASSIGNMENTS)


class ReachPreviewOut(BaseModel):
    devices: int = Field(description="Devices these assignments would reach, within your scope")


# ------------------------------------------------------------------------------------------ explanation
class ChainStep(BaseModel):
    id: uuid.UUID
    display_name: str


class FilterResult(BaseModel):
    filter: FilterRef
    mode: FilterMode
    rule: str
    matched: bool = Field(description="Whether the device matches the rule")
    passed: bool = Field(description="Whether the filter lets the assignment reach the device")
    explanation: dict[str, Any] = Field(description="Every clause with the value it read and its outcome")
    lines: list[str]


class AssignmentExplanation(BaseModel):
    assignment: AssignmentOut
    reaches: bool = Field(description="Whether the target reaches the device (before its filter)")
    via: Via | None
    user: str | None = Field(description="The primary user it reaches the device through, if so")
    chain: list[ChainStep] = Field(description="From the group the device (or user) is in up to the target")
    filter: FilterResult | None
    effect: str = Field(description="includes, excludes or none")
    reason: str


class Explanation(BaseModel):
    device: DeviceRef
    object: ObjectRef
    verdict: Verdict
    summary: str
    assignments: list[AssignmentExplanation]
    stored: bool = Field(description="Whether the device is among the object's stored targets now")


class DeviceTargetOut(BaseModel):
    object: ObjectRef
    version: int


class DeviceTargets(BaseModel):
    items: list[DeviceTargetOut] = Field(description="Objects that reach the device (that you may see)")
    desired_state_version: int
