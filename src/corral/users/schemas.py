from __future__ import annotations

import uuid
from datetime import datetime
from typing import Annotated, Any, Literal

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, field_validator

from corral.devices.schemas import DeviceOut
from corral.groups.schemas import GroupMembership
from corral.kit.pagination import COUNT_EXACTLY_UP_TO
from corral.kit.text import CLEAN_NAME, IDENTIFIER, clean_name
from corral.kit.types import Boolean
from corral.licensing.schemas import UserLicenceOut
from corral.models import UserSource

# Blanks as every regular-expression dialect reads them: JavaScript's \s lacks U+0085, Unicode's lacks U+FEFF.
EMAIL_PATTERN = r"^[^@\s\x85\ufeff]{1,64}@[^@\s\x85\ufeff]{1,255}$"
# A user principal name is an Internet-style name, alias@domain (the domain need not receive mail).
UPN_PATTERN = EMAIL_PATTERN


PROPERTY_LABELS: dict[str, str] = {
    "user_principal_name": "User principal name",
    "display_name": "Display name",
    "email": "Email address",
    "given_name": "First name",
    "surname": "Last name",
    "department": "Department",
    "job_title": "Job title",
}


def normalise_email(value: str) -> str:
    return value.strip().lower()


def _blank_to_none(value: Any) -> Any:
    """Optional text left empty (as forms send it) means "none"."""
    if isinstance(value, str) and not value.strip():
        return None
    return value


def _name_or_none(value: Any) -> Any:
    """An optional name, cleaned (kit.text); nothing left means "none"."""
    return _blank_to_none(clean_name(value) if isinstance(value, str) else value)


# Names are cleaned of control, format and separator characters; identifiers holding one are refused
# (kit.text: the same rule for SCIM and OpenID Connect).
OptionalText = Annotated[Annotated[str, Field(max_length=128)] | None, BeforeValidator(_name_or_none)]
OptionalEmail = Annotated[
    # (blank means none: the pattern says so too, for the OpenAPI document)
    Annotated[str, Field(max_length=320, pattern=r"^\s*$|" + EMAIL_PATTERN), IDENTIFIER] | None,
    BeforeValidator(_blank_to_none),
]
Upn = Annotated[str, Field(max_length=320, pattern=UPN_PATTERN, description="alias@domain"), IDENTIFIER]
DisplayName = Annotated[str, Field(min_length=1, max_length=256), CLEAN_NAME]


class UserOut(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    id: uuid.UUID
    user_principal_name: str = Field(description="The sign-in name")
    email: str | None
    display_name: str
    given_name: str | None
    surname: str | None
    department: str | None
    job_title: str | None
    source: UserSource = Field(description="local, or provisioned by an identity provider (oidc, scim)")
    connection_id: uuid.UUID | None = Field(description="The identity connection that provisioned the user")
    external_id: str | None
    enabled: bool
    must_change_password: bool
    totp_enabled: bool
    last_sign_in_at: datetime | None
    created_at: datetime
    updated_at: datetime


class AdminOut(UserOut):
    roles: list[str]


class UserDetail(UserOut):
    is_admin: bool = Field(description="Holds at least one role assignment")
    devices: list[DeviceOut] = Field(
        description="Devices enrolled for the user, within your devices:read scope"
    )
    devices_total: int
    groups: list[GroupMembership] = Field(
        description="The groups the user belongs to, directly or through nested groups (with groups:read; "
        "else empty)"
    )


class UserDetailLicensed(UserDetail):
    """The detail as a holder of licences:read sees it."""

    licences: list[UserLicenceOut]


class UserCreate(BaseModel):
    """A local user (an end user): no password, so no local sign-in. Administrators are created with
    ``POST /api/v1/admins``; users from an identity provider sign in there."""

    model_config = ConfigDict(extra="forbid", str_strip_whitespace=True)

    user_principal_name: Upn
    display_name: DisplayName
    email: OptionalEmail = None
    given_name: OptionalText = None
    surname: OptionalText = None
    department: OptionalText = None
    job_title: OptionalText = None

    @field_validator("email")
    @classmethod
    def _lower(cls, value: str | None) -> str | None:
        return normalise_email(value) if value else None


class UserUpdate(BaseModel):
    """Send only what changes; ``null`` clears an optional property. Users provisioned by an identity
    provider can only be enabled or disabled here: their properties belong to the provider."""

    model_config = ConfigDict(extra="forbid", str_strip_whitespace=True)

    user_principal_name: Upn | None = None
    display_name: DisplayName | None = None
    email: OptionalEmail = None
    given_name: OptionalText = None
    surname: OptionalText = None
    department: OptionalText = None
    job_title: OptionalText = None
    enabled: Boolean | None = Field(
        default=None,
        description="false ends all of the user's sessions at once and applies the tenant setting "
        "deprovisioned_user_devices to their devices",
    )

    @field_validator("email")
    @classmethod
    def _lower(cls, value: str | None) -> str | None:
        return normalise_email(value) if value else None


class AdminCreate(BaseModel):
    """A local administrator account: signs in with its email address (its user principal name)."""

    model_config = ConfigDict(extra="forbid", str_strip_whitespace=True)

    email: Annotated[str, Field(max_length=320, pattern=EMAIL_PATTERN), IDENTIFIER]
    display_name: Annotated[str, Field(max_length=256), CLEAN_NAME] = ""
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


class AdminCreated(BaseModel):
    user: UserOut
    one_time_password: str | None = Field(description="Shown once; the user must change it at first sign-in.")


SortKey = Literal[
    "display_name",
    "-display_name",
    "user_principal_name",
    "-user_principal_name",
    "last_sign_in_at",
    "-last_sign_in_at",
    "created_at",
    "-created_at",
]


class UserFilter(BaseModel):
    search: str | None = Field(
        default=None, max_length=200, description="User principal name, display name or email contains"
    )
    source: UserSource | None = None
    enabled: bool | None = None
    department: str | None = Field(default=None, max_length=128, description="Exactly (any case)")
    sort: SortKey = "display_name"
    cursor: str | None = Field(default=None, max_length=400)
    limit: int = Field(default=50, ge=1, le=500)


class UserPage(BaseModel):
    items: list[UserOut]
    next_cursor: str | None
    total: int = Field(description="How many match the filters (an estimate when total_exact is false)")
    total_exact: bool = Field(
        description=f"False when more than {COUNT_EXACTLY_UP_TO:,} matched: the total is then the database "
        "planner's estimate, shown as such; narrow the filters for an exact count"
    )


class PasswordReset(BaseModel):
    one_time_password: str


class PasswordChange(BaseModel):
    model_config = ConfigDict(extra="forbid")

    current_password: str = Field(max_length=1024)
    new_password: str = Field(max_length=1024)
