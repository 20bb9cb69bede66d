"""Admin center pages for tenant administration. Each calls the same service as its /api/v1 twin."""

from __future__ import annotations

import uuid
from datetime import timedelta
from typing import Annotated, Any
from urllib.parse import urlencode

from fastapi import Depends, Form, Query, Request
from fastapi.responses import RedirectResponse, Response
from markupsafe import Markup
from pydantic import ValidationError
from sqlalchemy import func, select

from corral.apple.push_certificate import expiry, push_certificate_service
from corral.audit.endpoints import CSV_HEADER, csv_row
from corral.audit.schemas import AuditFilter
from corral.audit.service import audit_service
from corral.auth.dependencies import Authenticated, Require, SettingsRead, SettingsWrite
from corral.compliance import catalog as compliance_catalog
from corral.devices.overview import DeviceOverview, device_overview
from corral.errors import CorralError, Forbidden, ValidationFailed
from corral.kit.csvexport import to_csv
from corral.kit.db import SessionDep
from corral.kit.deps import SettingsDep
from corral.kit.routing import APIRouter
from corral.kit.time import utcnow
from corral.models import ApiToken, AuditEvent, ComplianceState, Platform, RoleDefinition, UserSession
from corral.portal import charts
from corral.portal.rendering import clear_reveal, read_reveal, redirect, render, set_reveal
from corral.rbac.permissions import DESCRIPTIONS, P
from corral.rbac.principal import Principal
from corral.rbac.roles import role_permissions
from corral.rbac.schemas import RoleAssignmentCreate, RoleCreate, RoleUpdate, ScopeTagCreate
from corral.rbac.service import rbac_service
from corral.tenant.schemas import TenantSettingsUpdate
from corral.tenant.service import tenant_service
from corral.tokens.schemas import ApiTokenCreate
from corral.tokens.service import token_service
from corral.users.schemas import AdminCreate, UserUpdate
from corral.users.service import user_service

router = APIRouter(prefix="/portal", include_in_schema=False)


SignedIn = Annotated[Principal, Depends(Authenticated())]
AdminsRead = Annotated[Principal, Depends(Require(P.roles_read, P.users_read, any_of=True))]
UsersWrite = Annotated[Principal, Depends(Require(P.users_write))]
RolesRead = Annotated[Principal, Depends(Require(P.roles_read))]
RolesWrite = Annotated[Principal, Depends(Require(P.roles_write))]
RolesAssign = Annotated[Principal, Depends(Require(P.roles_assign))]
TagsRead = Annotated[Principal, Depends(Require(P.scope_tags_read))]
TagsWrite = Annotated[Principal, Depends(Require(P.scope_tags_write))]
AuditRead = Annotated[Principal, Depends(Require(P.audit_read))]


def _first_error(exc: ValidationError) -> str:
    error = exc.errors()[0]
    where = ".".join(str(p) for p in error.get("loc", ()))
    return f"{where}: {error.get('msg', 'invalid')}" if where else str(error.get("msg", "invalid"))


# ------------------------------------------------------------------------------------------- dashboard
@router.get("")
async def dashboard(
    request: Request, session: SessionDep, settings: SettingsDep, principal: SignedIn
) -> Response:
    if not principal.is_admin:
        # An end user (no role) has nothing to administer: their home is their own devices.
        return RedirectResponse("/portal/my-devices", status_code=303)
    since = utcnow() - timedelta(hours=24)
    counts: dict[str, int] = {}
    if principal.has_any(P.roles_read, P.users_read):
        if principal.has(P.users_read):
            counts["users"] = await user_service.count(session, principal)
        counts["admins"] = len(await user_service.list_admins(session, principal))
        counts["active_sessions"] = int(
            await session.scalar(
                select(func.count())
                .select_from(UserSession)
                .where(
                    UserSession.pending_mfa.is_(False),
                    UserSession.expires_at > utcnow(),
                    UserSession.last_seen_at > utcnow() - timedelta(minutes=settings.session_idle_minutes),
                )
            )
            or 0
        )
    if principal.has(P.roles_read):
        counts["roles"] = int(await session.scalar(select(func.count()).select_from(RoleDefinition)) or 0)
    if principal.has(P.api_tokens_manage):
        counts["api_tokens"] = int(
            await session.scalar(
                select(func.count())
                .select_from(ApiToken)
                .where(ApiToken.revoked_at.is_(None), ApiToken.expires_at > utcnow())
            )
            or 0
        )
    recent: list[AuditEvent] = []
    if principal.has(P.audit_read):
        counts["changes_24h"], counts["failed_signins_24h"] = await audit_service.recent_counts(
            session, principal, since
        )
        recent = (await audit_service.search(session, AuditFilter(limit=8), principal)).items
    tenant = await tenant_service.get(session)
    ctx: dict[str, Any] = {"counts": counts, "recent": recent, "tenant": tenant}
    if principal.has(P.settings_read):
        push = await push_certificate_service.current(session)
        if push is not None and push.not_after is not None:
            push_expiry = expiry(push.not_after, utcnow())
            if push_expiry.state != "valid":
                ctx["push_expiry"] = push_expiry
    headers: dict[str, str] = {}
    if principal.has(P.devices_read):
        nonce = charts.new_nonce()
        overview = await device_overview(session, principal.scope_for(P.devices_read), utcnow().date())
        ctx.update({"overview": overview, "charts": _device_charts(overview, nonce)})
        headers["Content-Security-Policy"] = charts.csp_with_nonce(nonce)
    return render(request, "home/dashboard.html", ctx, headers=headers)


PLATFORM_NAMES = {
    Platform.windows: "Windows",
    Platform.macos: "macOS",
    Platform.linux: "Linux",
    Platform.ios: "iOS",
    Platform.ipados: "iPadOS",
    Platform.android: "Android",
}
COMPLIANCE_NAMES = {
    ComplianceState.compliant: "Compliant",
    ComplianceState.noncompliant: "Not compliant",
    ComplianceState.in_grace_period: "In grace period",
    ComplianceState.error: "Error",
    ComplianceState.not_evaluated: "Not evaluated",
    ComplianceState.unknown: "Unknown",
}


def _device_charts(overview: DeviceOverview, nonce: str) -> dict[str, Markup]:
    """The dashboard's charts; every bar, slice and dot opens the device list behind it."""
    platforms = [
        charts.Point(
            PLATFORM_NAMES[p], overview.by_platform[p], "/portal/devices?" + urlencode({"platform": p})
        )
        for p in Platform
        if overview.by_platform.get(p)
    ]
    compliance = [
        charts.Point(
            COMPLIANCE_NAMES[s],
            overview.by_compliance.get(s, 0),
            "/portal/devices?" + urlencode({"compliance_state": s}),
            charts.STATE_COLOURS[s],
        )
        for s in ComplianceState
    ]
    checkins = [
        charts.Point(
            day.strftime("%a %d"), count, "/portal/devices?" + urlencode({"checked_in_on": day.isoformat()})
        )
        for day, count in overview.checkins
    ]
    failing = [
        charts.Point(
            compliance_catalog.BY_ID[sid].name if sid in compliance_catalog.BY_ID else sid,
            count,
            "/portal/devices?" + urlencode({"failing_setting": sid}),
        )
        for sid, count in overview.failing_settings[:10]
    ]
    grace = [
        charts.Point(
            day.strftime("%a %d"), count, "/portal/devices?" + urlencode({"grace_ends_on": day.isoformat()})
        )
        for day, count in overview.grace_ending
    ]
    out = {
        "platforms": charts.bar_chart(platforms, nonce=nonce, title="Enrolled devices by platform"),
        "compliance": charts.pie_chart(compliance, nonce=nonce, title="Devices by compliance state"),
        "checkins": charts.line_chart(checkins, nonce=nonce, title="Devices that checked in, per day"),
    }
    if any(p.value for p in grace):
        out["grace"] = charts.bar_chart(grace, nonce=nonce, title="Grace periods ending, per day")
    if failing:
        out["failing"] = charts.bar_chart(
            failing, nonce=nonce, title="Noncompliant devices by failing setting", horizontal=True
        )
    return out


# ------------------------------------------------------------------------------------------- administrators
@router.get("/admins")
async def admins(request: Request, session: SessionDep, principal: AdminsRead) -> Response:
    rows = await user_service.list_admins_with_roles(session, principal)
    roles = await rbac_service.list_roles(session) if principal.has(P.roles_assign) else []
    return render(request, "admins/admin_list.html", {"rows": rows, "roles": roles})


@router.post("/admins")
async def create_admin(
    request: Request,
    session: SessionDep,
    principal: UsersWrite,
    email: Annotated[str, Form(max_length=400)] = "",
    display_name: Annotated[str, Form(max_length=400)] = "",
    role_id: Annotated[str, Form(max_length=64)] = "",
) -> Response:
    rows = await user_service.list_admins_with_roles(session, principal)
    roles = await rbac_service.list_roles(session) if principal.has(P.roles_assign) else []
    form = {"email": email, "display_name": display_name, "role_id": role_id}
    try:
        data = AdminCreate(
            email=email, display_name=display_name, role_id=uuid.UUID(role_id) if role_id else None
        )
        if data.role_id is not None and not principal.has(P.roles_assign):
            raise Forbidden("Giving a role needs the permission roles:assign.")
        created = await user_service.create_admin(session, data, principal=principal)
    except ValueError as exc:
        message = _first_error(exc) if isinstance(exc, ValidationError) else "Choose a role from the list."
        return render(
            request,
            "admins/admin_list.html",
            {"rows": rows, "roles": roles, "form": form, "error": message},
            status_code=422,
        )
    except CorralError as exc:
        return render(
            request,
            "admins/admin_list.html",
            {"rows": rows, "roles": roles, "form": form, "error": exc.detail},
            status_code=exc.status_code,
        )
    response = redirect(request, f"/portal/admins/{created.user.id}/credentials")
    secret = {"user_id": str(created.user.id), "password": created.one_time_password or "", "reset": ""}
    set_reveal(response, request, "password", secret)
    return response


@router.get("/admins/{user_id:uuid}/credentials")
async def admin_credentials(
    request: Request, user_id: uuid.UUID, session: SessionDep, principal: UsersWrite
) -> Response:
    """Shows a new account's (or a reset's) one-time password once, right after the POST that made it. The
    account just made is shown to its maker (it may lie outside their scope: it is in no group yet);
    otherwise the page is the user's, within the caller's scope like any other."""
    revealed = read_reveal(request, "password")
    if revealed is not None and revealed.get("user_id") != str(user_id):
        revealed = None
    if revealed is not None:
        user = await user_service.get(session, user_id)
    else:
        user = await user_service.get_for(session, principal, user_id, P.users_write)
    response = render(
        request,
        "admins/admin_created.html",
        {
            "user": user,
            "one_time_password": revealed["password"] if revealed else None,
            "reset": bool(revealed and revealed.get("reset")),
        },
    )
    return clear_reveal(response)


@router.get("/admins/{user_id:uuid}")
async def admin_detail(
    request: Request, user_id: uuid.UUID, session: SessionDep, principal: AdminsRead
) -> Response:
    user = await user_service.get_admin_view(session, principal, user_id)
    access = await rbac_service.effective_access(session, user) if principal.has(P.roles_read) else None
    assignments = (
        [a for a in await rbac_service.list_assignments(session) if any(m.id == user.id for m in a.members)]
        if principal.has(P.roles_read)
        else []
    )
    device_policy = (await tenant_service.get(session)).deprovisioned_user_devices
    return render(
        request,
        "admins/admin_detail.html",
        {"user": user, "access": access, "assignments": assignments, "device_policy": device_policy},
    )


@router.post("/admins/{user_id:uuid}/enabled")
async def set_admin_enabled(
    request: Request,
    user_id: uuid.UUID,
    session: SessionDep,
    principal: UsersWrite,
    enabled: Annotated[str, Form(max_length=8)] = "",
) -> Response:
    want = enabled == "true"
    try:
        user, outcome = await user_service.update_with_outcome(
            session, user_id, UserUpdate(enabled=want), principal
        )
    except CorralError as exc:
        return redirect(request, f"/portal/admins/{user_id}", exc.detail, "error")
    verb = f"disabled ({outcome.summary()})" if outcome else ("enabled" if want else "disabled")
    return redirect(request, f"/portal/admins/{user_id}", f"{user.user_principal_name} is {verb}.")


@router.post("/admins/{user_id:uuid}/password-reset")
async def reset_admin_password(
    request: Request, user_id: uuid.UUID, session: SessionDep, principal: UsersWrite
) -> Response:
    try:
        one_time = await user_service.reset_password(session, principal, user_id)
    except CorralError as exc:
        return redirect(request, f"/portal/admins/{user_id}", exc.detail, "error")
    response = redirect(request, f"/portal/admins/{user_id}/credentials")
    set_reveal(response, request, "password", {"user_id": str(user_id), "password": one_time, "reset": "1"})
    return response


# ------------------------------------------------------------------------------------------- roles
def _permission_groups() -> list[tuple[str, list[tuple[P, str]]]]:
    groups: dict[str, list[tuple[P, str]]] = {}
    for permission in P:
        groups.setdefault(permission.value.split(":")[0], []).append((permission, DESCRIPTIONS[permission]))
    return list(groups.items())


@router.get("/roles")
async def roles(request: Request, session: SessionDep, _: RolesRead) -> Response:
    items = await rbac_service.list_roles(session)
    return render(request, "roles/role_list.html", {"roles": [(r, len(role_permissions(r))) for r in items]})


@router.get("/roles/new")
async def new_role(request: Request, _: RolesWrite) -> Response:
    return render(
        request, "roles/role_form.html", {"groups": _permission_groups(), "selected": set(), "form": {}}
    )


@router.post("/roles/new")
async def create_role(request: Request, session: SessionDep, principal: RolesWrite) -> Response:
    form = await request.form()
    selected = [str(v) for v in form.getlist("permissions")]
    name, description = str(form.get("name", "")), str(form.get("description", ""))
    try:
        role = await rbac_service.create_role(
            session, principal, RoleCreate(name=name, description=description, permissions=selected)
        )
    except (ValidationError, CorralError) as exc:
        error = _first_error(exc) if isinstance(exc, ValidationError) else exc.detail
        status = 422 if isinstance(exc, ValidationError) else exc.status_code
        return render(
            request,
            "roles/role_form.html",
            {
                "groups": _permission_groups(),
                "selected": set(selected),
                "form": {"name": name, "description": description},
                "error": error,
            },
            status_code=status,
        )
    return redirect(request, f"/portal/roles/{role.id}", f"Role {role.name} created.")


@router.get("/roles/{role_id:uuid}")
async def role_detail(request: Request, role_id: uuid.UUID, session: SessionDep, _: RolesRead) -> Response:
    role = await rbac_service.get_role(session, role_id)
    assignments = await rbac_service.list_assignments(session, role.id)
    held = role_permissions(role)
    return render(
        request,
        "roles/role_detail.html",
        {"role": role, "groups": _permission_groups(), "held": held, "assignments": assignments},
    )


@router.get("/roles/{role_id:uuid}/edit")
async def edit_role(request: Request, role_id: uuid.UUID, session: SessionDep, _: RolesWrite) -> Response:
    role = await rbac_service.get_role(session, role_id)
    if role.is_builtin:
        return redirect(request, f"/portal/roles/{role.id}", "Built-in roles cannot be changed.", "error")
    return render(
        request,
        "roles/role_form.html",
        {
            "groups": _permission_groups(),
            "selected": set(role.permissions),
            "role": role,
            "form": {"name": role.name, "description": role.description},
        },
    )


@router.post("/roles/{role_id:uuid}/edit")
async def update_role(
    request: Request, role_id: uuid.UUID, session: SessionDep, principal: RolesWrite
) -> Response:
    role = await rbac_service.get_role(session, role_id)
    form = await request.form()
    selected = [str(v) for v in form.getlist("permissions")]
    name, description = str(form.get("name", "")), str(form.get("description", ""))
    try:
        await rbac_service.update_role(
            session, principal, role_id, RoleUpdate(name=name, description=description, permissions=selected)
        )
    except (ValidationError, CorralError) as exc:
        error = _first_error(exc) if isinstance(exc, ValidationError) else exc.detail
        status = 422 if isinstance(exc, ValidationError) else exc.status_code
        return render(
            request,
            "roles/role_form.html",
            {
                "groups": _permission_groups(),
                "selected": set(selected),
                "role": role,
                "form": {"name": name, "description": description},
                "error": error,
            },
            status_code=status,
        )
    return redirect(request, f"/portal/roles/{role_id}", "Role saved.")


@router.post("/roles/{role_id:uuid}/delete")
async def delete_role(
    request: Request, role_id: uuid.UUID, session: SessionDep, principal: RolesWrite
) -> Response:
    try:
        await rbac_service.delete_role(session, principal, role_id)
    except CorralError as exc:
        return redirect(request, f"/portal/roles/{role_id}", exc.detail, "error")
    return redirect(request, "/portal/roles", "Role deleted.")


# ------------------------------------------------------------------------------------------- role assignments
async def _assignment_form_context(session: SessionDep) -> dict[str, object]:
    return {
        "roles": await rbac_service.list_roles(session),
        "users": await user_service.list_all(session),
        "tags": await rbac_service.list_scope_tags(session),
        "groups": await rbac_service.list_groups(session),
    }


@router.get("/role-assignments")
async def role_assignments(request: Request, session: SessionDep, _: RolesRead) -> Response:
    return render(
        request, "roles/assignment_list.html", {"assignments": await rbac_service.list_assignments(session)}
    )


@router.get("/role-assignments/new")
async def new_assignment(
    request: Request, session: SessionDep, _: RolesAssign, role_id: uuid.UUID | None = None
) -> Response:
    ctx = await _assignment_form_context(session)
    ctx["form"] = {
        "role_id": str(role_id) if role_id else "",
        "scope_all": True,
        "member_ids": set(),
        "member_group_ids": set(),
        "scope_tag_ids": set(),
        "scope_group_ids": set(),
    }
    return render(request, "roles/assignment_form.html", ctx)


@router.post("/role-assignments/new")
async def create_assignment(request: Request, session: SessionDep, principal: RolesAssign) -> Response:
    form = await request.form()
    member_ids = [str(v) for v in form.getlist("member_ids")]
    member_group_ids = [str(v) for v in form.getlist("member_group_ids")]
    tag_ids = [str(v) for v in form.getlist("scope_tag_ids")]
    scope_group_ids = (
        [str(v) for v in form.getlist("scope_group_ids")] if form.get("groups") == "some" else []
    )
    values = {
        "name": str(form.get("name", "")),
        "description": str(form.get("description", "")),
        "role_id": str(form.get("role_id", "")),
        "scope_all": form.get("scope") != "tags",
        "member_ids": set(member_ids),
        "member_group_ids": set(member_group_ids),
        "scope_tag_ids": set(tag_ids),
        "scope_groups_some": form.get("groups") == "some",
        "scope_group_ids": set(scope_group_ids),
    }
    try:
        if values["scope_groups_some"] and not scope_group_ids:
            raise ValidationFailed(
                "Choose at least one scope group, or let the assignment reach every user and device."
            )
        data = RoleAssignmentCreate.model_validate(
            {
                "name": values["name"],
                "description": values["description"],
                "role_id": values["role_id"],
                "member_ids": member_ids,
                "member_group_ids": member_group_ids,
                "scope_all": values["scope_all"],
                "scope_tag_ids": tag_ids,
                "scope_group_ids": scope_group_ids,
            }
        )
        assignment = await rbac_service.create_assignment(session, principal, data)
    except (ValidationError, CorralError) as exc:
        error = _first_error(exc) if isinstance(exc, ValidationError) else exc.detail
        status = 422 if isinstance(exc, ValidationError) else exc.status_code
        ctx = await _assignment_form_context(session)
        ctx.update({"form": values, "error": error})
        return render(request, "roles/assignment_form.html", ctx, status_code=status)
    return redirect(request, "/portal/role-assignments", f"Role assignment {assignment.name} created.")


@router.post("/role-assignments/{assignment_id:uuid}/delete")
async def delete_assignment(
    request: Request, assignment_id: uuid.UUID, session: SessionDep, principal: RolesAssign
) -> Response:
    try:
        await rbac_service.delete_assignment(session, principal, assignment_id)
    except CorralError as exc:
        return redirect(request, "/portal/role-assignments", exc.detail, "error")
    return redirect(request, "/portal/role-assignments", "Role assignment removed.")


# ------------------------------------------------------------------------------------------- scope tags
@router.get("/scope-tags")
async def scope_tags(request: Request, session: SessionDep, _: TagsRead) -> Response:
    return render(request, "roles/scope_tag_list.html", {"tags": await rbac_service.list_scope_tags(session)})


@router.post("/scope-tags")
async def create_scope_tag(
    request: Request,
    session: SessionDep,
    _: TagsWrite,
    name: Annotated[str, Form(max_length=400)] = "",
    description: Annotated[str, Form(max_length=4000)] = "",
) -> Response:
    try:
        tag = await rbac_service.create_scope_tag(session, ScopeTagCreate(name=name, description=description))
    except (ValidationError, CorralError) as exc:
        error = _first_error(exc) if isinstance(exc, ValidationError) else exc.detail
        status = 422 if isinstance(exc, ValidationError) else exc.status_code
        return render(
            request,
            "roles/scope_tag_list.html",
            {
                "tags": await rbac_service.list_scope_tags(session),
                "error": error,
                "form": {"name": name, "description": description},
            },
            status_code=status,
        )
    return redirect(request, "/portal/scope-tags", f"Scope tag {tag.name} created.")


@router.post("/scope-tags/{tag_id:uuid}/delete")
async def delete_scope_tag(
    request: Request, tag_id: uuid.UUID, session: SessionDep, _: TagsWrite
) -> Response:
    try:
        await rbac_service.delete_scope_tag(session, tag_id)
    except CorralError as exc:
        return redirect(request, "/portal/scope-tags", exc.detail, "error")
    return redirect(request, "/portal/scope-tags", "Scope tag deleted.")


# ------------------------------------------------------------------------------------------- API tokens
async def _token_context(session: SessionDep, principal: Principal) -> dict[str, object]:
    return {
        "own": await token_service.list_own(session, principal.user_id),
        "others": await token_service.list_all(session) if principal.has(P.api_tokens_manage) else None,
        "my_permissions": [(p, DESCRIPTIONS[p]) for p in sorted(principal.permissions)],
        "now": utcnow(),
    }


@router.get("/api-tokens")
async def api_tokens(request: Request, session: SessionDep, principal: SignedIn) -> Response:
    ctx = await _token_context(session, principal)
    revealed = read_reveal(request, "token")
    if revealed:
        ctx.update({"new_token": revealed["token"], "new_token_name": revealed["name"]})
    response = render(request, "tokens/token_list.html", ctx)
    return clear_reveal(response)


@router.post("/api-tokens")
async def create_api_token(request: Request, session: SessionDep, principal: SignedIn) -> Response:
    form = await request.form()
    name = str(form.get("name", ""))
    narrowed = form.get("narrow") == "yes"
    selected = [str(v) for v in form.getlist("permissions")]
    try:
        if not principal.is_admin:
            raise Forbidden("Only administrators (accounts holding a role) can create API tokens.")
        data = ApiTokenCreate(
            name=name,
            expires_in_days=int(str(form.get("expires_in_days", "90")) or 90),
            permissions=selected if narrowed else None,
        )
        owner = await user_service.get(session, principal.user_id)
        api_token, token = await token_service.create(
            session, owner, data, owner_permissions=principal.permissions
        )
    except (ValidationError, CorralError, ValueError) as exc:
        if isinstance(exc, ValidationError):
            error, status = _first_error(exc), 422
        elif isinstance(exc, CorralError):
            error, status = exc.detail, exc.status_code
        else:
            error, status = "Expiry must be a number of days.", 422
        ctx = await _token_context(session, principal)
        ctx.update(
            {
                "error": error,
                "form": {
                    "name": name,
                    "expires_in_days": form.get("expires_in_days"),
                    "narrow": narrowed,
                    "permissions": selected,
                },
            }
        )
        return render(request, "tokens/token_list.html", ctx, status_code=status)
    response = redirect(request, "/portal/api-tokens")
    set_reveal(response, request, "token", {"token": token, "name": api_token.name})
    return response


@router.post("/api-tokens/{token_id:uuid}/revoke")
async def revoke_api_token(
    request: Request, token_id: uuid.UUID, session: SessionDep, principal: SignedIn
) -> Response:
    try:
        await token_service.revoke(
            session, principal, token_id, may_manage_others=principal.has(P.api_tokens_manage)
        )
    except CorralError as exc:
        return redirect(request, "/portal/api-tokens", exc.detail, "error")
    return redirect(request, "/portal/api-tokens", "Token revoked.")


# ------------------------------------------------------------------------------------------- audit log
def _audit_filter(params: dict[str, str]) -> AuditFilter:
    clean = {k: v for k, v in params.items() if v and k in AuditFilter.model_fields}
    return AuditFilter.model_validate(clean)


@router.get("/audit")
async def audit(request: Request, session: SessionDep, principal: AuditRead) -> Response:
    params = dict(request.query_params)
    try:
        filters = _audit_filter(params)
    except ValidationError as exc:
        return render(
            request,
            "audit/audit_list.html",
            {
                "page": None,
                "params": params,
                "error": _first_error(exc),
                "activities": await audit_service.activities(session, principal),
            },
            status_code=400,
        )
    page = await audit_service.search(session, filters, principal)
    next_params = {k: v for k, v in params.items() if k != "cursor" and v}
    return render(
        request,
        "audit/audit_list.html",
        {
            "page": page,
            "params": params,
            "next_params": next_params,
            "activities": await audit_service.activities(session, principal),
        },
    )


@router.get("/audit/export.csv")
async def audit_csv(
    request: Request,
    session: SessionDep,
    principal: AuditRead,
    cursor: Annotated[str | None, Query(max_length=200)] = None,
) -> Response:
    try:
        filters = _audit_filter(
            {k: v for k, v in request.query_params.items() if k not in {"cursor", "limit"}}
        )
    except ValidationError as exc:
        return render(
            request,
            "error.html",
            {"title": "Invalid filter", "detail": _first_error(exc), "status": 400},
            status_code=400,
        )
    events = await audit_service.export(session, filters, principal=principal)
    return Response(
        to_csv(CSV_HEADER, (csv_row(e) for e in events)),
        media_type="text/csv; charset=utf-8",
        headers={"Content-Disposition": 'attachment; filename="corral-audit.csv"'},
    )


# ------------------------------------------------------------------------------------------- settings
@router.get("/settings")
async def settings_page(request: Request, session: SessionDep, _: SettingsRead) -> Response:
    return render(request, "tenant/settings.html", {"tenant": await tenant_service.get(session)})


@router.post("/settings")
async def save_settings(
    request: Request,
    session: SessionDep,
    _: SettingsWrite,
    organization_name: Annotated[str, Form(max_length=400)] = "",
    support_email: Annotated[str, Form(max_length=400)] = "",
    support_phone: Annotated[str, Form(max_length=200)] = "",
    support_url: Annotated[str, Form(max_length=1000)] = "",
    deprovisioned_user_devices: Annotated[str, Form(max_length=16)] = "",
) -> Response:
    try:
        data = TenantSettingsUpdate.model_validate(
            {
                "organization_name": organization_name,
                "support_email": support_email,
                "support_phone": support_phone,
                "support_url": support_url,
                "deprovisioned_user_devices": deprovisioned_user_devices or None,
            }
        )
        await tenant_service.update(session, data)
    except ValidationError as exc:
        tenant = await tenant_service.get(session)
        form = {
            "organization_name": organization_name,
            "support_email": support_email,
            "support_phone": support_phone,
            "support_url": support_url,
            "deprovisioned_user_devices": deprovisioned_user_devices or tenant.deprovisioned_user_devices,
        }
        return render(
            request,
            "tenant/settings.html",
            {"tenant": tenant, "form": form, "error": _first_error(exc)},
            status_code=422,
        )
    return redirect(request, "/portal/settings", "Settings saved.")
