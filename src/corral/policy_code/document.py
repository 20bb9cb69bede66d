"""The policy document: a tenant's filters, compliance policies and configuration profiles with their
assignments, as written to and read from a file kept in git (``corral policies export`` / ``apply``).

Everything is named, never identified: groups by display name (``group_id`` only where two groups share a
name), filters, scope tags and notification templates by name. A section left out of the document is left
alone; a section present is the whole truth for its kind (objects it does not name are deleted).
"""

from __future__ import annotations

import uuid
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from corral.compliance.schemas import ActionKind, Email
from corral.groups.rules import MAX_RULE_LENGTH
from corral.models import AssignmentMode, AssignmentTarget, FilterMode, Platform

Name = Annotated[str, Field(min_length=1, max_length=256)]
Description = Annotated[str, Field(max_length=2000)]
TagName = Annotated[str, Field(min_length=1, max_length=128)]
MAX_OBJECTS = 1000


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", str_strip_whitespace=True)


class AssignmentDoc(_Strict):
    """One line of an object's assignments: a group (by name) included or excluded, or all devices / all
    users, optionally narrowed by a filter (by name)."""

    target: AssignmentTarget = AssignmentTarget.group
    group: Name | None = Field(default=None, description="The group's display name (target group)")
    group_id: uuid.UUID | None = Field(default=None, description="Where two groups share a display name")
    mode: AssignmentMode = AssignmentMode.include
    filter: Name | None = Field(default=None, description="A filter's name (include assignments only)")
    filter_mode: FilterMode | None = None

    @model_validator(mode="after")
    def _consistent(self) -> AssignmentDoc:
        named = self.group is not None or self.group_id is not None
        if self.group is not None and self.group_id is not None:
            raise ValueError("give the group by name or by group_id, not both")
        if (self.target is AssignmentTarget.group) != named:
            raise ValueError("a group is named exactly when the target is a group")
        if self.mode is AssignmentMode.exclude and self.filter is not None:
            raise ValueError("exclusions take no filter")
        if self.filter is None and self.filter_mode is not None:
            raise ValueError("filter_mode needs a filter")
        return self


class FilterDoc(_Strict):
    name: Name
    platform: Platform
    description: Description = ""
    rule: Annotated[str, Field(min_length=1, max_length=4 * MAX_RULE_LENGTH)]
    scope_tags: list[TagName] = Field(default_factory=list, max_length=50)


class ActionDoc(_Strict):
    action: ActionKind
    delay_hours: int = Field(default=0, ge=0, le=24 * 365, strict=True)
    recipients: list[Email] = Field(default_factory=list, max_length=20)
    template: Name | None = Field(default=None, description="A notification template's name (email_user)")
    message: str = Field(default="", max_length=500)


class CompliancePolicyDoc(_Strict):
    name: Name
    platform: Platform
    description: Description = ""
    settings: dict[str, Any]
    actions: list[ActionDoc] | None = Field(
        default=None, max_length=10, description="Default: mark noncompliant at once"
    )
    scope_tags: list[TagName] = Field(default_factory=list, max_length=50)
    assignments: list[AssignmentDoc] = Field(default_factory=list, max_length=200)


class ProfileDoc(_Strict):
    name: Name
    platform: Platform
    description: Description = ""
    settings: dict[str, Any] = Field(
        description='Secret fields: the secret itself, or {"$secret": true} to keep the stored one'
    )
    scope_tags: list[TagName] = Field(default_factory=list, max_length=50)
    assignments: list[AssignmentDoc] = Field(default_factory=list, max_length=200)


class PolicyDocument(_Strict):
    version: Literal[1] = Field(description="The document format's version")
    filters: list[FilterDoc] | None = Field(default=None, max_length=MAX_OBJECTS)
    compliance_policies: list[CompliancePolicyDoc] | None = Field(default=None, max_length=MAX_OBJECTS)
    configuration_profiles: list[ProfileDoc] | None = Field(default=None, max_length=MAX_OBJECTS)

    @model_validator(mode="after")
    def _unique_names(self) -> PolicyDocument:
        for section in ("filters", "compliance_policies", "configuration_profiles"):
            seen: set[str] = set()
            for index, item in enumerate(getattr(self, section) or []):
                if item.name.lower() in seen:
                    raise ValueError(f"{section}.{index}.name: {item.name!r} appears twice in {section}")
                seen.add(item.name.lower())
        return self


# ------------------------------------------------------------------------------------------------ plan
class FieldChange(BaseModel):
    path: str = Field(description="The field, e.g. settings.os.min_version or assignments")
    old: Any = None
    new: Any = None


ObjectKind = Literal["filter", "compliance_policy", "configuration_profile"]


class ObjectChange(BaseModel):
    kind: ObjectKind
    name: str
    action: Literal["create", "update", "delete"]
    fields: list[FieldChange]


class ApplyResult(BaseModel):
    dry_run: bool
    changes: list[ObjectChange] = Field(description="What the document changes (or, dry, would change)")
    unchanged: int = Field(description="Objects the document names that are already as it says")
