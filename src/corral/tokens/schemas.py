from __future__ import annotations

import uuid
from datetime import datetime

from pydantic import BaseModel, ConfigDict, Field, field_validator

from corral.kit.types import Integer
from corral.rbac.permissions import parse_permissions


class ApiTokenOut(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    id: uuid.UUID
    user_id: uuid.UUID
    name: str
    prefix: str
    permissions: list[str] | None = Field(description="None: all of the owner's permissions")
    created_at: datetime
    expires_at: datetime
    revoked_at: datetime | None
    last_used_at: datetime | None


class ApiTokenOwnedOut(ApiTokenOut):
    owner_user_principal_name: str


class ApiTokenCreate(BaseModel):
    model_config = ConfigDict(extra="forbid", str_strip_whitespace=True)

    name: str = Field(min_length=1, max_length=128)
    expires_in_days: Integer = Field(default=90, ge=1, le=730)
    permissions: list[str] | None = Field(
        default=None, max_length=200, description="Narrow the token to these permissions (of the owner's)."
    )

    @field_validator("permissions")
    @classmethod
    def _known(cls, value: list[str] | None) -> list[str] | None:
        if value is None:
            return None
        if not value:
            raise ValueError("give at least one permission, or leave the list out for all of yours")
        return [p.value for p in parse_permissions(value)]


class ApiTokenCreated(BaseModel):
    token: str = Field(description="Shown once; store it now.")
    api_token: ApiTokenOut
