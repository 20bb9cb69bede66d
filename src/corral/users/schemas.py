from __future__ import annotations

import uuid
from datetime import datetime

from pydantic import BaseModel, ConfigDict, Field, field_validator

EMAIL_PATTERN = r"^[^@\s]{1,64}@[^@\s]{1,255}$"


def normalise_email(value: str) -> str:
    return value.strip().lower()


class UserOut(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    id: uuid.UUID
    email: str
    display_name: str
    source: str
    enabled: bool
    must_change_password: bool
    totp_enabled: bool
    last_sign_in_at: datetime | None
    created_at: datetime


class AdminOut(UserOut):
    roles: list[str]


class UserCreate(BaseModel):
    model_config = ConfigDict(extra="forbid", str_strip_whitespace=True)

    email: str = Field(max_length=320, pattern=EMAIL_PATTERN)
    display_name: str = Field(default="", max_length=256)
    password: str | None = Field(
        default=None,
        max_length=1024,
        description="Leave out to generate a one-time password that must be changed at first sign-in.",
    )
    role_id: uuid.UUID | None = Field(
        default=None, description="Give the new account this role over everything."
    )

    @field_validator("email")
    @classmethod
    def _lower(cls, value: str) -> str:
        return normalise_email(value)


class UserCreated(BaseModel):
    user: UserOut
    one_time_password: str | None = Field(description="Shown once; the user must change it at first sign-in.")


class UserUpdate(BaseModel):
    model_config = ConfigDict(extra="forbid", str_strip_whitespace=True)

    display_name: str | None = Field(default=None, min_length=1, max_length=256)
    enabled: bool | None = None


class PasswordReset(BaseModel):
    one_time_password: str


class PasswordChange(BaseModel):
    model_config = ConfigDict(extra="forbid")

    current_password: str = Field(max_length=1024)
    new_password: str = Field(max_length=1024)
