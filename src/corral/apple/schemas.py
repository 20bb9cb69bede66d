from __future__ import annotations

import datetime as dt

from pydantic import BaseModel, ConfigDict, Field

from corral.apple.push_certificate import MAX_PEM


class PushCertificateOut(BaseModel):
    """The push certificate in use."""

    model_config = ConfigDict(from_attributes=True)

    topic: str
    serial_number: str
    not_before: dt.datetime
    not_after: dt.datetime
    apple_account: str | None
    uploaded_at: dt.datetime
    uploaded_by: str
    #: "valid", "expiring" (30 days or fewer left), "expiring_soon" (7 or fewer), "expired"
    expiry_state: str
    days_left: int


class PushCertificateRequestOut(BaseModel):
    """A certificate request waiting for Apple's certificate: its CSR to get signed."""

    model_config = ConfigDict(from_attributes=True)

    requested_at: dt.datetime
    requested_by: str
    csr_pem: str


class PushCertificateStatus(BaseModel):
    certificate: PushCertificateOut | None
    pending_request: PushCertificateRequestOut | None


class PushCertificateUpload(BaseModel):
    model_config = ConfigDict(extra="forbid")

    certificate_pem: str = Field(min_length=1, max_length=MAX_PEM, description="Apple's certificate, PEM")
    apple_account: str | None = Field(
        default=None, max_length=320, description="The Apple Account it was created with (renewals need it)"
    )
