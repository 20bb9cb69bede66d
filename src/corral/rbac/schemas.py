from __future__ import annotations

import uuid
from datetime import datetime

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from corral.kit.types import Boolean
from corral.rbac.permissions import parse_permissions

Name = Field(min_length=1, max_length=128)


class PermissionOut(BaseModel):
    name: str
    description: str


class RoleOut(BaseModel):
    id: uuid.UUID
    name: str
    description: str
    is_builtin: bool
    permissions: list[str]
    created_at: datetime
    updated_at: datetime


class RoleCreate(BaseModel):
    model_config = ConfigDict(extra="forbid", str_strip_whitespace=True)

    name: str = Name
    description: str = Field(default="", max_length=2000)
    permissions: list[str] = Field(min_length=1, max_length=200)

    @field_validator("permissions")
    @classmethod
    def _known(cls, value: list[str]) -> list[str]:
        return [p.value for p in parse_permissions(value)]


class RoleUpdate(BaseModel):
    model_config = ConfigDict(extra="forbid", str_strip_whitespace=True)

    name: str | None = Field(default=None, min_length=1, max_length=128)
    description: str | None = Field(default=None, max_length=2000)
    permissions: list[str] | None = Field(default=None, min_length=1, max_length=200)

    @field_validator("permissions")
    @classmethod
    def _known(cls, value: list[str] | None) -> list[str] | None:
        return None if value is None else [p.value for p in parse_permissions(value)]


class ScopeTagOut(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    id: uuid.UUID
    name: str
    description: str


class ScopeTagCreate(BaseModel):
    model_config = ConfigDict(extra="forbid", str_strip_whitespace=True)

    name: str = Name
    description: str = Field(default="", max_length=2000)


class MemberOut(BaseModel):
    id: uuid.UUID
    user_principal_name: str
    email: str | None
    display_name: str


class MemberGroupOut(BaseModel):
    id: uuid.UUID
    display_name: str
    source: str


class RoleAssignmentOut(BaseModel):
    id: uuid.UUID
    name: str
    description: str
    role_id: uuid.UUID
    role_name: str
    scope_all: bool
    scope_tags: list[ScopeTagOut]
    members: list[MemberOut]
    member_groups: list[MemberGroupOut] = Field(
        default_factory=list,
        description="Groups whose users (directly or through nested groups) hold the role",
    )
    scope_groups: list[MemberGroupOut] = Field(
        default_factory=list,
        description="When not empty, the users and devices the members may see and act on: members of these "
        "groups (directly or through nested groups), and devices whose primary user is",
    )


class RoleAssignmentCreate(BaseModel):
    model_config = ConfigDict(extra="forbid", str_strip_whitespace=True)

    name: str = Name
    description: str = Field(default="", max_length=2000)
    role_id: uuid.UUID
    member_ids: list[uuid.UUID] = Field(default_factory=list, max_length=1000)
    member_group_ids: list[uuid.UUID] = Field(
        default_factory=list,
        max_length=100,
        description="Groups whose users hold the role (for example groups from an identity provider)",
    )
    scope_all: Boolean = Field(
        default=True, description="True: objects whatever their scope tags; false: those in scope_tag_ids"
    )
    scope_tag_ids: list[uuid.UUID] = Field(default_factory=list, max_length=200)
    scope_group_ids: list[uuid.UUID] = Field(
        default_factory=list,
        max_length=100,
        description="Limit the users and devices the members may see and act on to members of these groups "
        "(and devices whose primary user is one); empty: no limit",
    )

    @model_validator(mode="after")
    def _someone(self) -> RoleAssignmentCreate:
        if not self.member_ids and not self.member_group_ids:
            raise ValueError("an assignment needs member_ids or member_group_ids")
        return self


class RoleAssignmentMembersUpdate(BaseModel):
    model_config = ConfigDict(extra="forbid")

    member_ids: list[uuid.UUID] = Field(min_length=1, max_length=1000)


class ReachOut(BaseModel):
    scope_tags: list[str] | None = Field(description="None: whatever the scope tags")
    scope_groups: list[str] | None = Field(description="None: every user and device")


class EffectivePermission(BaseModel):
    permission: str
    description: str
    scope_all: bool
    scope_tags: list[str]
    reaches: list[ReachOut] = Field(
        default_factory=list, description="Where the permission applies: anywhere one of these reaches"
    )
    granted_by: list[str]


class EffectiveAccess(BaseModel):
    user_id: uuid.UUID
    user_principal_name: str
    email: str | None
    display_name: str
    is_admin: bool
    permissions: list[EffectivePermission]
