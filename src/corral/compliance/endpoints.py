"""/api/v1 for compliance: policies (CRUD, status reports), the settings catalog, a device's compliance
(results, history, override), the tenant's compliance settings and the e-mail templates of the ladder."""

from __future__ import annotations

import uuid
from typing import Annotated, Any

from fastapi import Depends, Query, Response, status
from fastapi.responses import PlainTextResponse
from pydantic import BaseModel, ConfigDict, Field
from sqlalchemy import func, select

from corral.audit.service import audit_service
from corral.auth.dependencies import Require
from corral.compliance.schemas import (
    CatalogSetting,
    ComplianceTenantSettings,
    ComplianceTenantSettingsUpdate,
    DeviceCompliance,
    HistoryEntry,
    OverrideIn,
    PolicyCreate,
    PolicyOut,
    PolicyPage,
    PolicyStatus,
    PolicyUpdate,
    StatusDevicePage,
)
from corral.compliance.service import compliance_service, policy_out
from corral.errors import Conflict, NotFound
from corral.kit.csvexport import to_csv
from corral.kit.db import SessionDep
from corral.kit.routing import APIRouter
from corral.models import ComplianceState, NotificationTemplate, Platform
from corral.rbac.permissions import P
from corral.rbac.principal import Principal

router = APIRouter(tags=["compliance"])

ComplianceRead = Annotated[Principal, Depends(Require(P.compliance_read))]
ComplianceWrite = Annotated[Principal, Depends(Require(P.compliance_write))]
DevicesRead = Annotated[Principal, Depends(Require(P.devices_read))]
NOT_FOUND: dict[int | str, dict[str, Any]] = {404: {"description": "Not found"}}
CONFLICT: dict[int | str, dict[str, Any]] = {409: {"description": "Refused: see the problem's detail"}}


# ------------------------------------------------------------------------------------------- catalog
@router.get("/compliance-settings-catalog", response_model=list[CatalogSetting])
async def compliance_settings_catalog(
    _: ComplianceRead, platform: Platform | None = None
) -> list[CatalogSetting]:
    """The settings a compliance policy can require, with their types, bounds and platforms."""
    return compliance_service.catalog(platform)


# ------------------------------------------------------------------------------------------- policies
@router.get("/compliance-policies", response_model=PolicyPage)
async def list_compliance_policies(
    session: SessionDep,
    principal: ComplianceRead,
    search: Annotated[str | None, Query(max_length=200)] = None,
    platform: Platform | None = None,
    scope_tag_id: uuid.UUID | None = None,
) -> PolicyPage:
    """Compliance policies you may see (their scope tags), by name."""
    return await compliance_service.page(
        session, principal, search=search, platform=platform, scope_tag_id=scope_tag_id
    )


@router.post(
    "/compliance-policies", response_model=PolicyOut, status_code=status.HTTP_201_CREATED, responses=CONFLICT
)
async def create_compliance_policy(
    data: PolicyCreate, session: SessionDep, principal: ComplianceWrite
) -> PolicyOut:
    """Create a compliance policy: settings from the catalog for its platform, actions for noncompliance.

    Unknown settings, settings another platform reports, values out of bounds and ladders out of order are
    refused (422) naming the field."""
    return policy_out(await compliance_service.create(session, principal, data))


@router.get("/compliance-policies/{policy_id:uuid}", response_model=PolicyOut, responses=NOT_FOUND)
async def get_compliance_policy(
    policy_id: uuid.UUID, session: SessionDep, principal: ComplianceRead
) -> PolicyOut:
    return policy_out(await compliance_service.get(session, principal, policy_id))


@router.patch(
    "/compliance-policies/{policy_id:uuid}", response_model=PolicyOut, responses={**NOT_FOUND, **CONFLICT}
)
async def update_compliance_policy(
    policy_id: uuid.UUID, data: PolicyUpdate, session: SessionDep, principal: ComplianceWrite
) -> PolicyOut:
    """Edit a policy. New settings or actions make a new version: the devices it reaches are evaluated again
    and get a new desired state."""
    return policy_out(await compliance_service.update(session, principal, policy_id, data))


@router.delete(
    "/compliance-policies/{policy_id:uuid}", status_code=status.HTTP_204_NO_CONTENT, responses=NOT_FOUND
)
async def delete_compliance_policy(
    policy_id: uuid.UUID, session: SessionDep, principal: ComplianceWrite
) -> Response:
    """Delete a policy; the devices it reached are evaluated again without it."""
    await compliance_service.delete(session, principal, policy_id)
    return Response(status_code=status.HTTP_204_NO_CONTENT)


@router.get("/compliance-policies/{policy_id:uuid}/status", response_model=PolicyStatus, responses=NOT_FOUND)
async def compliance_policy_status(
    policy_id: uuid.UUID, session: SessionDep, principal: ComplianceRead
) -> PolicyStatus:
    """Devices by state under this policy and per setting, within your device scope."""
    return await compliance_service.status(session, principal, policy_id)


@router.get(
    "/compliance-policies/{policy_id:uuid}/devices", response_model=StatusDevicePage, responses=NOT_FOUND
)
async def compliance_policy_devices(
    policy_id: uuid.UUID,
    session: SessionDep,
    principal: ComplianceRead,
    state: ComplianceState | None = None,
    setting_id: Annotated[str | None, Query(max_length=64)] = None,
) -> StatusDevicePage:
    """The devices behind a count of the status report (by state, optionally for one setting)."""
    return await compliance_service.status_devices(session, principal, policy_id, state, setting_id)


@router.get(
    "/compliance-policies/{policy_id:uuid}/devices.csv",
    response_class=PlainTextResponse,
    responses={**NOT_FOUND, 200: {"content": {"text/csv": {}}}},
)
async def compliance_policy_devices_csv(
    policy_id: uuid.UUID,
    session: SessionDep,
    principal: ComplianceRead,
    state: ComplianceState | None = None,
    setting_id: Annotated[str | None, Query(max_length=64)] = None,
) -> Response:
    """The same as CSV."""
    page = await compliance_service.status_devices(
        session, principal, policy_id, state, setting_id, limit=100_000
    )
    rows = [
        [
            str(d.device_id),
            d.device_name,
            str(d.state),
            d.grace_ends_at.isoformat() if d.grace_ends_at else "",
            d.evaluated_at.isoformat(),
        ]
        for d in page.items
    ]
    header = ["device_id", "device_name", "state", "grace_ends_at", "evaluated_at"]
    return Response(
        to_csv(header, rows),
        media_type="text/csv",
        headers={"Content-Disposition": f'attachment; filename="compliance-{policy_id}.csv"'},
    )


# ------------------------------------------------------------------------------------------- devices
@router.get("/devices/{device_id:uuid}/compliance", response_model=DeviceCompliance, responses=NOT_FOUND)
async def device_compliance(
    device_id: uuid.UUID, session: SessionDep, principal: DevicesRead
) -> DeviceCompliance:
    """The device's compliance: per policy and setting, expected vs observed, grace end, steps taken."""
    return await compliance_service.device_compliance(session, principal, device_id)


@router.get(
    "/devices/{device_id:uuid}/compliance/history", response_model=list[HistoryEntry], responses=NOT_FOUND
)
async def device_compliance_history(
    device_id: uuid.UUID, session: SessionDep, principal: DevicesRead
) -> list[HistoryEntry]:
    """The device's changes of compliance state, newest first."""
    return await compliance_service.history(session, principal, device_id)


@router.put(
    "/devices/{device_id:uuid}/compliance/override", response_model=DeviceCompliance, responses=NOT_FOUND
)
async def set_device_compliance_override(
    device_id: uuid.UUID, data: OverrideIn, session: SessionDep, principal: ComplianceWrite
) -> DeviceCompliance:
    """Mark the device compliant until a time (at most 90 days), with a reason; audited."""
    return await compliance_service.set_override(session, principal, device_id, data)


@router.delete(
    "/devices/{device_id:uuid}/compliance/override",
    status_code=status.HTTP_204_NO_CONTENT,
    responses=NOT_FOUND,
)
async def clear_device_compliance_override(
    device_id: uuid.UUID, session: SessionDep, principal: ComplianceWrite
) -> Response:
    await compliance_service.clear_override(session, principal, device_id)
    return Response(status_code=status.HTTP_204_NO_CONTENT)


# ------------------------------------------------------------------------------------------- tenant
@router.get("/tenant/compliance-settings", response_model=ComplianceTenantSettings)
async def get_compliance_settings(session: SessionDep, _: ComplianceRead) -> ComplianceTenantSettings:
    return await compliance_service.tenant_settings(session)


@router.patch("/tenant/compliance-settings", response_model=ComplianceTenantSettings)
async def update_compliance_settings(
    data: ComplianceTenantSettingsUpdate, session: SessionDep, _: ComplianceWrite
) -> ComplianceTenantSettings:
    """Devices with no policy compliant or not; the validity period (days without check-in)."""
    return await compliance_service.update_tenant_settings(session, data)


# ------------------------------------------------------------------------------------------- templates
class TemplateIn(BaseModel):
    model_config = ConfigDict(extra="forbid", str_strip_whitespace=True)

    name: str = Field(min_length=1, max_length=256)
    subject: str = Field(min_length=1, max_length=256)
    body: str = Field(min_length=1, max_length=20_000)


class TemplateUpdate(BaseModel):
    model_config = ConfigDict(extra="forbid", str_strip_whitespace=True)

    name: str | None = Field(default=None, min_length=1, max_length=256)
    subject: str | None = Field(default=None, min_length=1, max_length=256)
    body: str | None = Field(default=None, min_length=1, max_length=20_000)


class TemplateOut(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    id: uuid.UUID
    name: str
    subject: str
    body: str


def _check_template(subject: str, body: str) -> None:
    from jinja2 import TemplateSyntaxError

    from corral.compliance.ladder import _templates
    from corral.errors import ValidationFailed

    for field, text in (("subject", subject), ("body", body)):
        try:
            _templates.parse(text)
        except TemplateSyntaxError as exc:
            raise ValidationFailed(f"{field}: line {exc.lineno}: {exc.message}") from exc


@router.get("/notification-templates", response_model=list[TemplateOut])
async def list_notification_templates(session: SessionDep, _: ComplianceRead) -> list[TemplateOut]:
    """E-mail templates for the compliance ladder (placeholders: device, user, policy, failing, grace_ends_at,
    organization, support)."""
    rows = (
        await session.scalars(select(NotificationTemplate).order_by(func.lower(NotificationTemplate.name)))
    ).all()
    return [TemplateOut.model_validate(r) for r in rows]


@router.post(
    "/notification-templates",
    response_model=TemplateOut,
    status_code=status.HTTP_201_CREATED,
    responses=CONFLICT,
)
async def create_notification_template(
    data: TemplateIn, session: SessionDep, _: ComplianceWrite
) -> TemplateOut:
    _check_template(data.subject, data.body)
    if await session.scalar(
        select(NotificationTemplate.id).where(func.lower(NotificationTemplate.name) == data.name.lower())
    ):
        raise Conflict(f"A template named {data.name!r} already exists.")
    item = NotificationTemplate(id=uuid.uuid4(), name=data.name, subject=data.subject, body=data.body)
    session.add(item)
    await session.flush()
    await audit_service.record(
        session,
        activity="notification_template.create",
        category="policy",
        operation="create",
        target_type="notification_template",
        target_id=item.id,
        target_name=item.name,
        changes=[("subject", None, item.subject), ("body", None, item.body)],
    )
    return TemplateOut.model_validate(item)


@router.patch(
    "/notification-templates/{template_id:uuid}",
    response_model=TemplateOut,
    responses={**NOT_FOUND, **CONFLICT},
)
async def update_notification_template(
    template_id: uuid.UUID, data: TemplateUpdate, session: SessionDep, _: ComplianceWrite
) -> TemplateOut:
    item = await session.get(NotificationTemplate, template_id, with_for_update=True)
    if item is None:
        raise NotFound("No such notification template.")
    _check_template(data.subject or item.subject, data.body or item.body)
    if data.name is not None and data.name.lower() != item.name.lower():
        taken = await session.scalar(
            select(NotificationTemplate.id).where(
                func.lower(NotificationTemplate.name) == data.name.lower(), NotificationTemplate.id != item.id
            )
        )
        if taken:
            raise Conflict(f"A template named {data.name!r} already exists.")
    changes = []
    for field in ("name", "subject", "body"):
        value = getattr(data, field)
        if value is not None and value != getattr(item, field):
            changes.append((field, getattr(item, field), value))
            setattr(item, field, value)
    if changes:
        await session.flush()
        await audit_service.record(
            session,
            activity="notification_template.update",
            category="policy",
            operation="update",
            target_type="notification_template",
            target_id=item.id,
            target_name=item.name,
            changes=changes,
        )
    return TemplateOut.model_validate(item)


@router.delete(
    "/notification-templates/{template_id:uuid}",
    status_code=status.HTTP_204_NO_CONTENT,
    responses={**NOT_FOUND, **CONFLICT},
)
async def delete_notification_template(
    template_id: uuid.UUID, session: SessionDep, _: ComplianceWrite
) -> Response:
    from corral.models import CompliancePolicy

    item = await session.get(NotificationTemplate, template_id)
    if item is None:
        raise NotFound("No such notification template.")
    users = [
        p.name
        for p in (await session.scalars(select(CompliancePolicy))).all()
        if any(a.get("template_id") == str(template_id) for a in p.actions or [])
    ]
    if users:
        raise Conflict(f"The template is used by {', '.join(sorted(users))}: change their actions first.")
    await session.delete(item)
    await audit_service.record(
        session,
        activity="notification_template.delete",
        category="policy",
        operation="delete",
        target_type="notification_template",
        target_id=template_id,
        target_name=item.name,
    )
    return Response(status_code=status.HTTP_204_NO_CONTENT)
