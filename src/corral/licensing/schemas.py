from __future__ import annotations

import uuid
from datetime import datetime

from pydantic import BaseModel, ConfigDict, Field

from corral.kit.types import Integer

Seats = Field(ge=0, le=10_000_000)


class LicenceOut(BaseModel):
    id: uuid.UUID
    name: str
    sku: str
    description: str
    seats: int
    assigned: int = Field(description="Users holding this licence")
    available: int = Field(description="Seats left to assign")
    created_at: datetime
    updated_at: datetime


class LicenceCreate(BaseModel):
    model_config = ConfigDict(extra="forbid", str_strip_whitespace=True)

    name: str = Field(min_length=1, max_length=128)
    sku: str = Field(
        min_length=1,
        max_length=64,
        pattern=r"^[A-Za-z0-9][A-Za-z0-9._:-]*$",
        description="Stock-keeping unit",
    )
    description: str = Field(default="", max_length=2000)
    seats: Integer = Seats


class LicenceUpdate(BaseModel):
    model_config = ConfigDict(extra="forbid", str_strip_whitespace=True)

    name: str | None = Field(default=None, min_length=1, max_length=128)
    sku: str | None = Field(
        default=None, min_length=1, max_length=64, pattern=r"^[A-Za-z0-9][A-Za-z0-9._:-]*$"
    )
    description: str | None = Field(default=None, max_length=2000)
    seats: Integer | None = Field(
        default=None, ge=0, le=10_000_000, description="Not below the assigned count"
    )


class UserLicenceOut(BaseModel):
    """A licence as one user holds it."""

    licence_id: uuid.UUID
    name: str
    sku: str
    assigned_at: datetime


class LicenceHolderOut(BaseModel):
    """A user holding a licence."""

    user_id: uuid.UUID
    user_principal_name: str
    display_name: str
    enabled: bool
    assigned_at: datetime
