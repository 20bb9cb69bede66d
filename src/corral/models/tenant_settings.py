from __future__ import annotations

from sqlalchemy import CheckConstraint, String, false, text
from sqlalchemy.orm import Mapped, mapped_column

from corral.kit.db import Model, TimestampMixin


class TenantSettings(TimestampMixin, Model):
    """The organisation's own settings: one row."""

    __tablename__ = "tenant_settings"
    __table_args__ = (CheckConstraint("id = 1", name="single_row"),)

    id: Mapped[int] = mapped_column(primary_key=True, default=1)
    organization_name: Mapped[str] = mapped_column(String(128), default="Corral")
    support_email: Mapped[str] = mapped_column(String(320), default="")
    support_phone: Mapped[str] = mapped_column(String(64), default="")
    support_url: Mapped[str] = mapped_column(String(512), default="")
    # A wipe queued by one administrator waits until a second one (with remote:approve) approves it.
    wipe_requires_approval: Mapped[bool] = mapped_column(default=False, server_default=false())
    # What happens to a user's devices when the user is deactivated or deleted (SCIM or portal):
    # "keep" (managed as before, no primary user when deleted) or "retire" (a retire is queued for each).
    deprovisioned_user_devices: Mapped[str] = mapped_column(
        String(16), default="keep", server_default=text("'keep'")
    )
    # Compliance: a device no compliance policy reaches is compliant (true) or noncompliant (false), and a
    # device that has not checked in for this many days is noncompliant whatever its policies say.
    no_policy_compliant: Mapped[bool] = mapped_column(default=True, server_default=text("true"))
    compliance_validity_days: Mapped[int] = mapped_column(default=30, server_default=text("30"))
