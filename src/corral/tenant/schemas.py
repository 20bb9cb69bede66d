from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

DeprovisionedUserDevices = Literal["keep", "retire"]


class TenantSettingsOut(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    organization_name: str
    support_email: str
    support_phone: str
    support_url: str
    deprovisioned_user_devices: DeprovisionedUserDevices = Field(
        description="What happens to a user's managed devices when the user is disabled or deleted: "
        "'keep' (managed as before) or 'retire' (a retire is queued for each)"
    )
    wipe_requires_approval: bool = Field(
        description="A wipe, single or in a bulk action, waits until a second administrator approves it"
    )


class TenantSettingsUpdate(BaseModel):
    model_config = ConfigDict(extra="forbid", str_strip_whitespace=True)

    organization_name: str | None = Field(default=None, min_length=1, max_length=128)
    support_email: str | None = Field(
        default=None, max_length=320, pattern=r"^$|^[^@\s]{1,64}@[^@\s]{1,255}$"
    )
    support_phone: str | None = Field(default=None, max_length=64)
    support_url: str | None = Field(default=None, max_length=512, pattern=r"^$|^https?://\S+$")
    deprovisioned_user_devices: DeprovisionedUserDevices | None = None
    wipe_requires_approval: bool | None = Field(
        default=None, strict=True, description="Wipes need a second administrator's approval"
    )
