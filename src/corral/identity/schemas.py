from __future__ import annotations

import uuid
from datetime import datetime

from pydantic import BaseModel, ConfigDict, Field

from corral.kit.types import Boolean

Scopes = Field(
    default="openid profile email groups", min_length=6, max_length=256, pattern=r"^[\x21-\x7e ]+$"
)
Claim = Field(default="groups", min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_.:/-]+$")
Issuer = Field(min_length=8, max_length=512, pattern=r"^https?://[^\s]+$")


class IdentityConnectionOut(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    id: uuid.UUID
    name: str
    enabled: bool
    issuer: str | None
    client_id: str | None
    client_secret_set: bool = Field(description="The secret itself is never returned")
    scopes: str
    groups_claim: str
    admin_sign_in: bool
    user_sign_in: bool
    redirect_uri: str = Field(description="Register this redirect URI at the identity provider")
    created_at: datetime
    updated_at: datetime


class IdentityConnectionCreate(BaseModel):
    model_config = ConfigDict(extra="forbid", str_strip_whitespace=True)

    name: str = Field(min_length=1, max_length=128)
    issuer: str = Issuer
    client_id: str = Field(min_length=1, max_length=256)
    client_secret: str = Field(min_length=1, max_length=1024)
    scopes: str = Scopes
    groups_claim: str = Claim
    admin_sign_in: Boolean = True
    user_sign_in: Boolean = True
    enabled: Boolean = True


class IdentityConnectionUpdate(BaseModel):
    model_config = ConfigDict(extra="forbid", str_strip_whitespace=True)

    name: str | None = Field(default=None, min_length=1, max_length=128)
    issuer: str | None = Field(default=None, min_length=8, max_length=512, pattern=r"^https?://[^\s]+$")
    client_id: str | None = Field(default=None, min_length=1, max_length=256)
    client_secret: str | None = Field(default=None, min_length=1, max_length=1024, description="Omit to keep")
    scopes: str | None = Field(default=None, min_length=6, max_length=256, pattern=r"^[\x21-\x7e ]+$")
    groups_claim: str | None = Field(
        default=None, min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_.:/-]+$"
    )
    admin_sign_in: Boolean | None = None
    user_sign_in: Boolean | None = None
    enabled: Boolean | None = None
