"""The organisation's settings (one row, created on first read)."""

from __future__ import annotations

from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.ext.asyncio import AsyncSession

from corral.audit.service import audit_service, diff
from corral.models import TenantSettings
from corral.tenant.schemas import TenantSettingsUpdate

FIELDS = (
    "organization_name",
    "support_email",
    "support_phone",
    "support_url",
    "deprovisioned_user_devices",
    "wipe_requires_approval",
)


class TenantService:
    async def get(self, session: AsyncSession) -> TenantSettings:
        row = await session.get(TenantSettings, 1)
        if row is None:
            await session.execute(insert(TenantSettings).values(id=1).on_conflict_do_nothing())
            row = await session.get(TenantSettings, 1)
        assert row is not None
        return row

    async def update(self, session: AsyncSession, data: TenantSettingsUpdate) -> TenantSettings:
        row = await self.get(session)
        before = {f: getattr(row, f) for f in FIELDS}
        for field, value in data.model_dump(exclude_none=True).items():
            setattr(row, field, value)
        changes = diff(before, {f: getattr(row, f) for f in FIELDS})
        if changes:
            await session.flush()
            await session.refresh(row)
            await audit_service.record(
                session,
                activity="settings.update",
                category="settings",
                operation="update",
                target_type="tenant_settings",
                target_id=1,
                target_name="Tenant settings",
                changes=changes,
            )
        return row


tenant_service = TenantService()
