"""Admin center pages for compliance policies: list, the create and edit flow shaped like Intune's (basics →
settings → actions for noncompliance → scope tags → review + create; assignments follow on the policy's page),
the policy's status report with the devices behind each count, and a device's compliance card. Each page
calls the same service as its /api/v1 twin (corral.compliance.service)."""

from __future__ import annotations

import uuid
from typing import Annotated, Any, cast

from fastapi import Depends, Query, Request
from fastapi.responses import Response
from pydantic import ValidationError
from sqlalchemy import Select, func, select

from corral.auth.dependencies import Require
from corral.compliance import catalog
from corral.compliance.schemas import ActionIn, ActionKind, OverrideIn, PolicyCreate, PolicyUpdate
from corral.compliance.service import compliance_service, validate_actions, validate_settings
from corral.devices import repository as devices_repository
from corral.errors import CorralError
from corral.kit.db import SessionDep
from corral.kit.routing import APIRouter
from corral.models import (
    ComplianceState,
    Device,
    DeviceCompliancePolicy,
    NotificationTemplate,
    Platform,
    ScopeTag,
)
from corral.portal.rendering import first_error, redirect, render
from corral.rbac.permissions import P
from corral.rbac.principal import Principal

router = APIRouter(prefix="/portal", include_in_schema=False)

ComplianceRead = Annotated[Principal, Depends(Require(P.compliance_read))]
ComplianceWrite = Annotated[Principal, Depends(Require(P.compliance_write))]
#: Rows offered for actions after "mark noncompliant".
EXTRA_ACTION_ROWS = 4
ACTION_LABELS = {
    ActionKind.mark_noncompliant: "Mark device noncompliant",
    ActionKind.email_user: "Send e-mail to the user",
    ActionKind.push_message: "Send a notification to the device",
    ActionKind.remote_lock: "Remotely lock the device",
    ActionKind.retire: "Retire the device",
}


# ------------------------------------------------------------------------------------------- list
@router.get("/compliance-policies")
async def compliance_policies(
    request: Request,
    session: SessionDep,
    principal: ComplianceRead,
    search: Annotated[str, Query(max_length=200)] = "",
    platform: Annotated[str, Query(max_length=16)] = "",
    scope_tag: Annotated[str, Query(max_length=128)] = "",
) -> Response:
    chosen = Platform(platform) if platform in {p.value for p in Platform} else None
    tags = (await session.scalars(select(ScopeTag).order_by(ScopeTag.name))).all()
    tag = next((t for t in tags if t.name == scope_tag), None)
    page = await compliance_service.page(
        session, principal, search=search or None, platform=chosen, scope_tag_id=tag.id if tag else None
    )
    # Devices each policy reaches, within the reader's device scope.
    reached = cast(
        "Select[Any]",
        select(DeviceCompliancePolicy.policy_id, func.count()).join(
            Device, Device.id == DeviceCompliancePolicy.device_id
        ),
    )
    scoped = devices_repository.scoped(reached, principal.scope_for(P.devices_read))
    counts = dict((await session.execute(scoped.group_by(DeviceCompliancePolicy.policy_id))).all())
    return render(
        request,
        "compliance/policy_list.html",
        {
            "policies": page.items,
            "search": search,
            "platform": platform,
            "platforms": list(Platform),
            "device_counts": counts,
            "scope_tag": scope_tag,
            "tags": tags,
        },
    )


# ------------------------------------------------------------------------------------------- create, edit
def _form_values(form: Any, platform: Platform) -> dict[str, Any]:
    """The form as it was posted: basics, settings (by catalog id), action rows, scope tags."""
    settings: dict[str, Any] = {}
    raw_settings: dict[str, str] = {}
    for setting in catalog.settings_for(platform):
        raw = str(form.get(f"s.{setting.id}") or "").strip()
        raw_settings[setting.id] = raw
        if not raw:
            continue
        if setting.type == "boolean":
            settings[setting.id] = True
        elif setting.type == "integer":
            try:
                settings[setting.id] = int(raw)
            except ValueError:
                settings[setting.id] = raw  # refused by validation with the setting's name
        elif setting.type == "identifiers":
            settings[setting.id] = [
                line.strip() for line in raw.replace(",", "\n").splitlines() if line.strip()
            ]
        else:
            settings[setting.id] = raw
    kinds, delays = form.getlist("a_action"), form.getlist("a_delay")
    recipients, templates, messages = (
        form.getlist("a_recipients"),
        form.getlist("a_template"),
        form.getlist("a_message"),
    )
    rows = []
    for i, kind in enumerate(kinds):
        rows.append(
            {
                "action": str(kind),
                "delay_hours": str(delays[i] if i < len(delays) else "0").strip() or "0",
                "recipients": str(recipients[i] if i < len(recipients) else "").strip(),
                "template_id": str(templates[i] if i < len(templates) else "").strip(),
                "message": str(messages[i] if i < len(messages) else "").strip(),
            }
        )
    return {
        "name": str(form.get("name") or "").strip(),
        "description": str(form.get("description") or "").strip(),
        "platform": platform.value,
        "settings": settings,
        "raw_settings": raw_settings,
        "actions": rows,
        "scope_tag_ids": [str(t) for t in form.getlist("scope_tag_ids")],
    }


def _actions(rows: list[dict[str, Any]]) -> list[ActionIn]:
    out = []
    for index, row in enumerate(rows):
        if not row["action"]:
            continue
        try:
            out.append(
                ActionIn(
                    action=ActionKind(row["action"]),
                    delay_hours=int(row["delay_hours"]),
                    recipients=[r.strip() for r in row["recipients"].split(",") if r.strip()],
                    template_id=uuid.UUID(row["template_id"]) if row["template_id"] else None,
                    message=row["message"],
                )
            )
        except (ValueError, ValidationError) as exc:
            detail = (
                first_error(exc)
                if isinstance(exc, ValidationError)
                else "choose an action and a whole number of hours"
            )
            raise CorralError(f"Action {index + 1}: {detail}") from exc
    return out


async def _form_ctx(
    session: SessionDep,
    values: dict[str, Any],
    *,
    policy: Any = None,
    error: str | None = None,
    review: bool = False,
) -> dict[str, Any]:
    platform = Platform(values["platform"])
    rows = list(values["actions"])
    while len(rows) < 1 + EXTRA_ACTION_ROWS:
        rows.append({"action": "", "delay_hours": "0", "recipients": "", "template_id": "", "message": ""})
    templates = (
        await session.scalars(select(NotificationTemplate).order_by(NotificationTemplate.name))
    ).all()
    tags = (await session.scalars(select(ScopeTag).order_by(ScopeTag.name))).all()
    return {
        "form": values,
        "policy": policy,
        "platform": platform,
        "settings": catalog.settings_for(platform),
        "rows": rows,
        "action_labels": ACTION_LABELS,
        "templates": templates,
        "tags": tags,
        "error": error,
        "review": review,
        "catalog": catalog.BY_ID,
    }


def _blank(platform: Platform) -> dict[str, Any]:
    return {
        "name": "",
        "description": "",
        "platform": platform.value,
        "settings": {},
        "raw_settings": {},
        "actions": [
            {
                "action": "mark_noncompliant",
                "delay_hours": "0",
                "recipients": "",
                "template_id": "",
                "message": "",
            }
        ],
        "scope_tag_ids": [],
    }


@router.get("/compliance-policies/new")
async def new_compliance_policy(
    request: Request,
    session: SessionDep,
    _: ComplianceWrite,
    platform: Annotated[str, Query(max_length=16)] = "",
) -> Response:
    if platform not in {p.value for p in Platform}:
        return render(
            request,
            "choose_platform.html",
            {
                "platforms": list(Platform),
                "kind": "compliance policy",
                "list_title": "Compliance policies",
                "base": "/portal/compliance-policies",
                "intro": "A policy is for one platform: its settings are what devices of that platform "
                "report.",
            },
        )
    return render(
        request, "compliance/policy_form.html", await _form_ctx(session, _blank(Platform(platform)))
    )


@router.post("/compliance-policies/new")
async def create_compliance_policy(
    request: Request, session: SessionDep, principal: ComplianceWrite
) -> Response:
    form = await request.form()
    platform_value = str(form.get("platform") or "")
    if platform_value not in {p.value for p in Platform}:
        return redirect(request, "/portal/compliance-policies/new", "Choose a platform first.", kind="error")
    values = _form_values(form, Platform(platform_value))
    try:
        actions = _actions(values["actions"])
        data = PolicyCreate(
            name=values["name"],
            description=values["description"],
            platform=values["platform"],
            settings=values["settings"],
            actions=actions,
            scope_tag_ids=values["scope_tag_ids"],
        )
        # The review step shows what will be created, checked as the service will check it.
        validate_settings(data.platform, data.settings)
        validate_actions(actions)
        if form.get("step") != "create" or form.get("back"):
            ctx = await _form_ctx(session, values, review=not form.get("back"))
            return render(request, "compliance/policy_form.html", ctx)
        policy = await compliance_service.create(session, principal, data)
    except ValidationError as exc:
        ctx = await _form_ctx(session, values, error=first_error(exc))
        return render(request, "compliance/policy_form.html", ctx, status_code=422)
    except CorralError as exc:
        ctx = await _form_ctx(session, values, error=exc.detail)
        return render(
            request,
            "compliance/policy_form.html",
            ctx,
            status_code=exc.status_code if exc.status_code >= 400 else 422,
        )
    return redirect(
        request,
        f"/portal/compliance-policies/{policy.id}/assignments",
        f"Compliance policy {policy.name} created. Assign it to groups to reach devices.",
    )


def _values_of(policy: Any) -> dict[str, Any]:
    raw = {}
    for setting_id, value in (policy.settings or {}).items():
        raw[setting_id] = (
            "\n".join(value) if isinstance(value, list) else ("on" if value is True else str(value))
        )
    return {
        "name": policy.name,
        "description": policy.description,
        "platform": str(policy.platform),
        "settings": dict(policy.settings or {}),
        "raw_settings": raw,
        "actions": [
            {
                "action": a.get("action", ""),
                "delay_hours": str(a.get("delay_hours", 0)),
                "recipients": ", ".join(a.get("recipients") or []),
                "template_id": a.get("template_id") or "",
                "message": a.get("message") or "",
            }
            for a in policy.actions or []
        ],
        "scope_tag_ids": [str(t.id) for t in policy.scope_tags],
    }


@router.get("/compliance-policies/{policy_id:uuid}/edit")
async def edit_compliance_policy(
    request: Request, policy_id: uuid.UUID, session: SessionDep, principal: ComplianceWrite
) -> Response:
    policy = await compliance_service.get(session, principal, policy_id, P.compliance_write)
    return render(
        request, "compliance/policy_form.html", await _form_ctx(session, _values_of(policy), policy=policy)
    )


@router.post("/compliance-policies/{policy_id:uuid}/edit")
async def update_compliance_policy(
    request: Request, policy_id: uuid.UUID, session: SessionDep, principal: ComplianceWrite
) -> Response:
    policy = await compliance_service.get(session, principal, policy_id, P.compliance_write)
    values = _form_values(await request.form(), Platform(policy.platform))
    try:
        data = PolicyUpdate(
            name=values["name"],
            description=values["description"],
            settings=values["settings"],
            actions=_actions(values["actions"]),
            scope_tag_ids=values["scope_tag_ids"],
        )
        await compliance_service.update(session, principal, policy_id, data)
    except ValidationError as exc:
        ctx = await _form_ctx(session, values, policy=policy, error=first_error(exc))
        return render(request, "compliance/policy_form.html", ctx, status_code=422)
    except CorralError as exc:
        ctx = await _form_ctx(session, values, policy=policy, error=exc.detail)
        return render(
            request,
            "compliance/policy_form.html",
            ctx,
            status_code=exc.status_code if exc.status_code >= 400 else 422,
        )
    return redirect(
        request, f"/portal/compliance-policies/{policy_id}", f"Compliance policy {values['name']} saved."
    )


@router.post("/compliance-policies/{policy_id:uuid}/delete")
async def delete_compliance_policy(
    request: Request, policy_id: uuid.UUID, session: SessionDep, principal: ComplianceWrite
) -> Response:
    policy = await compliance_service.get(session, principal, policy_id, P.compliance_write)
    name = policy.name
    await compliance_service.delete(session, principal, policy_id)
    return redirect(request, "/portal/compliance-policies", f"Compliance policy {name} deleted.")


# ------------------------------------------------------------------------------------------- detail, report
@router.get("/compliance-policies/{policy_id:uuid}")
async def compliance_policy(
    request: Request, policy_id: uuid.UUID, session: SessionDep, principal: ComplianceRead
) -> Response:
    policy = await compliance_service.get(session, principal, policy_id)
    status = await compliance_service.status(session, principal, policy_id)
    templates = {str(t.id): t.name for t in (await session.scalars(select(NotificationTemplate))).all()}
    return render(
        request,
        "compliance/policy_detail.html",
        {
            "policy": policy,
            "status": status,
            "catalog": catalog.BY_ID,
            "action_labels": ACTION_LABELS,
            "templates": templates,
            "can_write": principal.has(P.compliance_write),
            "can_assign": principal.has(P.compliance_assign),
        },
    )


@router.get("/compliance-policies/{policy_id:uuid}/devices")
async def compliance_policy_devices(
    request: Request,
    policy_id: uuid.UUID,
    session: SessionDep,
    principal: ComplianceRead,
    state: Annotated[str, Query(max_length=32)] = "",
    setting_id: Annotated[str, Query(max_length=64)] = "",
) -> Response:
    policy = await compliance_service.get(session, principal, policy_id)
    chosen = ComplianceState(state) if state in {s.value for s in ComplianceState} else None
    page = await compliance_service.status_devices(session, principal, policy_id, chosen, setting_id or None)
    return render(
        request,
        "compliance/policy_devices.html",
        {
            "policy": policy,
            "page": page,
            "state": chosen,
            "setting": catalog.BY_ID.get(setting_id),
            "setting_id": setting_id,
        },
    )


# ------------------------------------------------------------------------------------------- device
@router.post("/devices/{device_id:uuid}/compliance/override")
async def override_device_compliance(
    request: Request, device_id: uuid.UUID, session: SessionDep, principal: ComplianceWrite
) -> Response:
    form = await request.form()
    back = f"/portal/devices/{device_id}"
    if form.get("action") == "clear":
        try:
            await compliance_service.clear_override(session, principal, device_id)
        except CorralError as exc:
            return redirect(request, back, exc.detail, kind="error")
        return redirect(request, back, "The compliance override was removed.")
    try:
        data = OverrideIn.model_validate(
            {"until": form.get("until") or "", "reason": form.get("reason") or ""}
        )
        await compliance_service.set_override(session, principal, device_id, data)
    except ValidationError as exc:
        return redirect(request, back, f"Not marked compliant: {first_error(exc)}", kind="error")
    except CorralError as exc:
        return redirect(request, back, f"Not marked compliant: {exc.detail}", kind="error")
    return redirect(request, back, "The device counts as compliant until the time you set.")
