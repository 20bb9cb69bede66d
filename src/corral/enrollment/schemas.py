from __future__ import annotations

import uuid
from datetime import datetime

from pydantic import BaseModel, ConfigDict, Field, field_validator

from corral.kit.types import Integer
from corral.models import EnrollmentRefusal, Ownership, Platform


class EnrollmentTokenCreate(BaseModel):
    model_config = ConfigDict(extra="forbid", str_strip_whitespace=True)

    name: str = Field(min_length=1, max_length=128)
    platforms: list[Platform] = Field(min_length=1, max_length=6)
    ownership: Ownership = Ownership.company
    expires_in_days: Integer = Field(default=30, ge=1, le=365)
    max_uses: Integer | None = Field(default=None, ge=1, le=1_000_000, description="None: unlimited")
    user_id: uuid.UUID | None = Field(
        default=None, description="Devices enrolled with it belong to this user"
    )
    scope_tag_ids: list[uuid.UUID] = Field(default_factory=list, max_length=50)

    @field_validator("platforms")
    @classmethod
    def _unique(cls, value: list[Platform]) -> list[Platform]:
        return sorted(set(value))


class EnrollmentTokenOut(BaseModel):
    id: uuid.UUID
    name: str
    prefix: str
    platforms: list[str]
    ownership: str
    expires_at: datetime
    max_uses: int | None
    use_count: int
    user_id: uuid.UUID | None
    scope_tags: list[str]
    created_at: datetime
    revoked_at: datetime | None
    status: str = Field(description="active, expired, used_up or revoked")


class EnrollmentTokenCreated(BaseModel):
    token: str = Field(description="Shown once")
    enrollment_url: str
    qr_svg_data_uri: str
    #: For a token allowing iOS, iPadOS or macOS: the enrollment profile's URL (Apple MDM, no agent), to open
    #: in Safari on the device, and its QR code.
    apple_enrollment_url: str | None = None
    apple_qr_svg_data_uri: str | None = None
    enrollment_token: EnrollmentTokenOut


class EnrollmentTokenUseOut(BaseModel):
    occurred_at: datetime
    ip_address: str | None
    serial_number: str | None
    result: str
    reason: EnrollmentRefusal | None = Field(
        description="Why a refusal happened; readers without licences:read see user_ineligible for a "
        "bound user who is disabled or holds no licence"
    )
    detail: str | None
    device_id: uuid.UUID | None
