from __future__ import annotations

import uuid
from datetime import datetime

from pydantic import BaseModel, ConfigDict

from corral.models import ComplianceState, ManagementState, Ownership, Platform


class MyDevice(BaseModel):
    """One of the caller's own devices, as its user sees it: no scope tags, no network or key details."""

    model_config = ConfigDict(from_attributes=True)

    id: uuid.UUID
    name: str
    serial_number: str
    platform: Platform
    os_version: str | None
    manufacturer: str | None
    model: str | None
    ownership: Ownership
    management_state: ManagementState
    compliance_state: ComplianceState
    enrolled_at: datetime
    last_checkin_at: datetime | None
