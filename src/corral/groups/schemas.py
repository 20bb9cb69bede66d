from __future__ import annotations

import uuid
from datetime import datetime
from enum import StrEnum
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from corral.groups.rules import MAX_RULE_LENGTH
from corral.kit.text import CLEAN_NAME
from corral.kit.types import Integer
from corral.models import DynamicKind, GroupSource, MembershipType

Name = Annotated[str, Field(min_length=1, max_length=256), CLEAN_NAME]  # kit.text
Description = Annotated[str, Field(max_length=2000)]
# A rule longer than the limit is refused by the parser with its position; this bound only stops huge bodies.
RuleText = Annotated[str, Field(max_length=4 * MAX_RULE_LENGTH)]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", str_strip_whitespace=True)


class MemberType(StrEnum):
    user = "user"
    device = "device"
    group = "group"


# ------------------------------------------------------------------------------------------------ groups
class GroupCreate(_Strict):
    display_name: Name
    description: Description = ""
    membership_type: MembershipType = MembershipType.assigned
    dynamic_kind: DynamicKind | None = Field(
        default=None, description="Dynamic groups: what the rule selects"
    )
    rule: RuleText | None = Field(default=None, description="Dynamic groups: the membership rule")

    @model_validator(mode="after")
    def _dynamic_needs_rule(self) -> GroupCreate:
        if self.membership_type is MembershipType.dynamic:
            if self.dynamic_kind is None or self.rule is None:
                raise ValueError("a dynamic group needs dynamic_kind (user or device) and a rule")
        elif self.dynamic_kind is not None or self.rule is not None:
            raise ValueError(
                "an assigned group has no dynamic_kind and no rule; its members are added by hand"
            )
        return self


class GroupUpdate(_Strict):
    display_name: Name | None = None
    description: Description | None = None
    rule: RuleText | None = Field(default=None, description="Dynamic groups only: a new rule (re-evaluated)")


class GroupFilter(BaseModel):
    search: str | None = Field(default=None, max_length=200, description="Name contains")
    membership_type: MembershipType | None = None
    dynamic_kind: DynamicKind | None = None
    source: GroupSource | None = None
    cursor: str | None = Field(default=None, max_length=600)
    limit: int = Field(default=50, ge=1, le=500)


class MemberCounts(BaseModel):
    users: int = 0
    devices: int = 0
    groups: int = 0


class GroupOut(BaseModel):
    id: uuid.UUID
    display_name: str
    description: str
    membership_type: MembershipType
    dynamic_kind: DynamicKind | None
    rule: str | None
    source: GroupSource
    connection_id: uuid.UUID | None
    external_id: str | None
    evaluated_at: datetime | None
    created_at: datetime
    updated_at: datetime
    members: MemberCounts = Field(description="Direct members")


class GroupRef(BaseModel):
    id: uuid.UUID
    display_name: str
    membership_type: MembershipType


class RoleAssignmentRef(BaseModel):
    id: uuid.UUID
    name: str
    usage: Literal["members", "scope"] = Field(
        description="The group's users hold the role, or are its scope"
    )


class GroupDetail(GroupOut):
    managed_by: str | None = Field(description="The identity connection that manages the group, if any")
    parents: list[GroupRef] = Field(description="Assigned groups this group is a direct member of")
    role_assignments: list[RoleAssignmentRef] = Field(description="Role assignments using this group")


class GroupPage(BaseModel):
    items: list[GroupOut]
    next_cursor: str | None
    total: int


# ----------------------------------------------------------------------------------------------- members
class MemberRef(_Strict):
    type: MemberType
    id: uuid.UUID


class MemberOut(BaseModel):
    type: MemberType
    id: uuid.UUID
    name: str
    detail: str | None = Field(description="Sign-in name, serial number or membership type")
    state: str | None = Field(default=None, description="Devices: management state; users: enabled/disabled")


class MemberFilter(BaseModel):
    transitive: bool = Field(default=False, description="Users and devices through nested groups too")
    type: MemberType | None = None
    cursor: str | None = Field(default=None, max_length=1200)
    limit: int = Field(default=50, ge=1, le=500)


class MemberPage(BaseModel):
    items: list[MemberOut]
    next_cursor: str | None
    total: int = Field(description="Members you may see")
    hidden: int = Field(description="Members outside your devices:read scope or without users:read")


# ------------------------------------------------------------------------------------ dynamic membership
class EvaluationOut(BaseModel):
    group_id: uuid.UUID
    added: int
    removed: int
    members: int
    milliseconds: float
    evaluated_at: datetime


class PreviewRequest(_Strict):
    dynamic_kind: DynamicKind
    rule: RuleText
    limit: Integer = Field(default=10, ge=0, le=100)


class PreviewOut(BaseModel):
    count: int = Field(description="Matching users or devices within your read scope")
    members: list[MemberOut]
    rule: str = Field(description="The rule in canonical form")
    attributes: list[str] = Field(description="The properties the rule reads")


class ExplainRequest(_Strict):
    dynamic_kind: DynamicKind
    rule: RuleText
    device_id: uuid.UUID | None = None
    user_id: uuid.UUID | None = None
    lookup: Annotated[str, Field(min_length=1, max_length=320)] | None = Field(
        default=None, description="Instead of an id: a device name or serial number, or a user's sign-in name"
    )

    @model_validator(mode="after")
    def _one_subject(self) -> ExplainRequest:
        given = [v for v in (self.device_id, self.user_id, self.lookup) if v is not None]
        if len(given) != 1:
            raise ValueError("give exactly one of device_id, user_id or lookup")
        if self.dynamic_kind is DynamicKind.device and self.user_id is not None:
            raise ValueError("a device rule is checked against a device: give device_id")
        if self.dynamic_kind is DynamicKind.user and self.device_id is not None:
            raise ValueError("a user rule is checked against a user: give user_id")
        return self


class ExplainOut(BaseModel):
    matches: bool = Field(description="Whether the object matches, as PostgreSQL evaluates membership")
    subject: MemberOut
    explanation: dict[str, Any] = Field(description="Every clause with the value it saw and its outcome")
    lines: list[str] = Field(description="The explanation as indented lines, ✓ or ✗ first")
    note: str | None = None


class GroupMembership(BaseModel):
    """A group a user or device belongs to: directly, or through the nested ``via`` group."""

    group: GroupRef
    direct: bool
    via: list[str] = Field(default_factory=list, description="Names of the nested groups it comes through")


class GroupSaved(GroupDetail):
    evaluation: EvaluationOut | None = Field(
        default=None, description="Dynamic groups: the full evaluation run by this change"
    )
