"""Admin center pages for devices and enrollment. Each calls the same service as its /api/v1 twin."""

from __future__ import annotations

import contextlib
import uuid
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass
from typing import Annotated, Any
from urllib.parse import parse_qsl, urlencode

from fastapi import Depends, Request
from fastapi.responses import Response
from pydantic import ValidationError
from starlette.datastructures import FormData

from corral.assignments.service import assignment_service
from corral.auth.dependencies import Require
from corral.commands.registry import REGISTRY, CommandType
from corral.commands.service import CommandRequest, command_service
from corral.compliance.service import compliance_service
from corral.delivery.service import delivery_service
from corral.devices import access
from corral.devices.bulk import BULK_PERMISSIONS, bulk_service, bulk_types_for, segments
from corral.devices.schemas import BulkActionCreate, DeviceFilter
from corral.devices.service import MIN_REASON, device_service, is_stale
from corral.enrollment.schemas import EnrollmentTokenCreate
from corral.enrollment.service import apple_enrollment_url, enrollment_service, qr_svg, token_status
from corral.errors import CorralError, NotFound, ValidationFailed
from corral.groups.schemas import MemberType
from corral.groups.service import group_service
from corral.kit.csvexport import csv_response
from corral.kit.db import SessionDep
from corral.kit.deps import SessionMakerDep, SettingsDep
from corral.kit.routing import APIRouter
from corral.kit.time import utcnow
from corral.models import (
    CommandStatus,
    ComplianceState,
    Device,
    ManagementChannel,
    ManagementState,
    Ownership,
    Platform,
)
from corral.models.device_command import FINAL_STATUSES
from corral.portal.rendering import (
    clear_reveal,
    read_reveal,
    redirect,
    render,
    render_error,
    render_fragment,
    set_reveal,
)
from corral.rbac.permissions import P
from corral.rbac.principal import Principal
from corral.rbac.service import rbac_service
from corral.users.service import user_service

router = APIRouter(prefix="/portal", include_in_schema=False)

DevicesRead = Annotated[Principal, Depends(Require(P.devices_read))]
DevicesDelete = Annotated[Principal, Depends(Require(P.devices_delete))]
EnrollmentRead = Annotated[Principal, Depends(Require(P.enrollment_read))]
EnrollmentManage = Annotated[Principal, Depends(Require(P.enrollment_manage))]

FRAGMENT_HEADER = "x-fragment"
COMMANDS_FRAGMENT = "commands"
EXPIRY_CHOICES = (1, 7, 30, 90, 180, 365)
PAGE_HEADERS = {"Cache-Control": "no-store", "Vary": "X-Fragment"}


def _first_error(exc: ValidationError) -> str:
    error = exc.errors()[0]
    where = ".".join(str(p) for p in error.get("loc", ()))
    return f"{where}: {error.get('msg', 'invalid')}" if where else str(error.get("msg", "invalid"))


# ------------------------------------------------------------------------------------------- device list
def _device_filter(params: dict[str, str]) -> DeviceFilter:
    clean = {k: v for k, v in params.items() if v and k in DeviceFilter.model_fields}
    return DeviceFilter.model_validate(clean)


def _list_params(items: Iterable[tuple[str, str]]) -> dict[str, str]:
    return {k: v for k, v in items if k in DeviceFilter.model_fields}


def _bulk_bar(principal: Principal, params: dict[str, str]) -> dict[str, Any]:
    """The list's bulk action bar: the actions this admin holds, their parameters, nothing selected."""
    types = bulk_types_for(principal)
    return {
        "types": types,
        "fields": {c.name: action_fields(c) for c in types},
        "selected": set(),
        "form": {},
        "error": None,
        "list_query": urlencode(params),
    }


async def _device_list(
    request: Request,
    session: SessionDep,
    settings: SettingsDep,
    principal: Principal,
    params: dict[str, str],
    *,
    bulk: dict[str, Any] | None = None,
    status_code: int = 200,
) -> Response:
    filters_in_use = {k: v for k, v in params.items() if v and k != "cursor"}
    ctx: dict[str, Any] = {
        "params": params,
        "filters": filters_in_use,
        "active_filters": sum(1 for k in filters_in_use if k not in {"sort", "limit"}),
        "platforms": list(Platform),
        "ownerships": list(Ownership),
        "management_states": list(ManagementState),
        "compliance_states": list(ComplianceState),
        "stale_days": settings.stale_device_days,
        "bulk": {**_bulk_bar(principal, params), **(bulk or {})},
        "min_reason": MIN_REASON,
    }
    try:
        filters = _device_filter(params)
    except ValidationError as exc:
        ctx.update({"devices": None, "error": _first_error(exc), "sort": "name"})
        return render(request, "devices/device_list.html", ctx, status_code=400)
    items, next_cursor, total = await device_service.page(session, settings, principal, filters)
    ctx.update(
        {
            "devices": items,
            "next_cursor": next_cursor,
            "total": total,
            "sort": filters.sort,
            "stale": {d.id for d in items if is_stale(d, settings.stale_device_days)},
        }
    )
    return render(request, "devices/device_list.html", ctx, status_code=status_code)


@router.get("/devices")
async def devices(
    request: Request, session: SessionDep, settings: SettingsDep, principal: DevicesRead
) -> Response:
    return await _device_list(
        request, session, settings, principal, _list_params(request.query_params.items())
    )


@router.get("/devices/export.csv")
async def devices_csv(
    request: Request, maker: SessionMakerDep, settings: SettingsDep, principal: DevicesRead
) -> Response:
    try:
        filters = _device_filter(
            {k: v for k, v in request.query_params.items() if k not in {"cursor", "limit"}}
        )
    except ValidationError as exc:
        return render_error(request, 400, "Invalid filter", _first_error(exc))
    return csv_response(device_service.export_csv(maker, settings, principal, filters), "corral-devices.csv")


# ------------------------------------------------------------------------------------------- device detail
@dataclass(frozen=True)
class ActionField:
    """One input of a remote action's form, derived from the action's parameter model."""

    name: str
    label: str
    kind: str  # text, tel or checkbox
    required: bool
    max_length: int | None
    hint: str


FIELD_TEXT: dict[str, tuple[str, str]] = {
    "message": ("Message", "Shown on the device's screen."),
    "phone": ("Phone number", "A number to call, shown with the message."),
    "footnote": ("Footnote", "A smaller line under the message."),
    "name": ("New name", "The device renames itself and reports the new name."),
    "keep_enrollment_data": ("Keep enrollment data", "The device re-enrolls by itself after the reset."),
    "keep_user_data": ("Keep user data", "User files survive the reset (where the platform supports it)."),
    "pin": ("PIN", "Six digits the Mac asks for to unlock: give them to the user."),
}


def action_fields(command: CommandType, *, apple_mac: bool = False) -> list[ActionField]:
    """The action's form fields; the PIN only for a Mac managed through Apple MDM (the only device that
    takes one)."""
    fields = []
    for name, info in command.params.model_fields.items():
        if name == "pin" and not apple_mac:
            continue
        kind = "checkbox" if info.annotation is bool else ("tel" if name == "phone" else "text")
        max_length = next((m.max_length for m in info.metadata if hasattr(m, "max_length")), None)
        label, hint = FIELD_TEXT.get(name, (name.replace("_", " ").capitalize(), info.description or ""))
        fields.append(ActionField(name, label, kind, info.is_required(), max_length, hint))
    return fields


def _apple_mac(device: Device) -> bool:
    return device.management_channel is ManagementChannel.apple_mdm and device.platform is Platform.macos


def _params_from_form(command: CommandType, form: FormData) -> dict[str, Any]:
    params: dict[str, Any] = {}
    for field in action_fields(command, apple_mac=True):  # a PIN sent for another device is refused
        value = form.get(field.name)
        if field.kind == "checkbox":
            params[field.name] = value in {"on", "true", "yes", "1"}
        elif isinstance(value, str) and value.strip():
            params[field.name] = value.strip()
    return params


async def _commands_context(session: SessionDep, principal: Principal, device: Device) -> dict[str, Any]:
    commands = await command_service.history(session, principal, device.id)
    return {
        "device": device,
        "commands": commands,
        "registry": REGISTRY,
        "cancelable": {c.id for c in commands if command_service.can_cancel(principal, device, c)},
        "approvable": {c.id for c in commands if command_service.can_approve(principal, device, c)},
        "in_progress": any(c.status not in FINAL_STATUSES for c in commands),
        "now_ms": int(utcnow().timestamp() * 1000),
    }


async def _detail_context(
    session: SessionDep, settings: SettingsDep, principal: Principal, device: Device
) -> dict[str, Any]:
    detail = await device_service.detail(session, settings, device)
    actions = command_service.available(principal, device)
    user = None
    if detail.user_id is not None and principal.has(P.users_read):
        # Shown only within the caller's users:read scope (a device may be in scope, its user not).
        with contextlib.suppress(NotFound):
            user = await user_service.get_for(session, principal, detail.user_id)
    ctx = await _commands_context(session, principal, device)
    ctx.update(
        {
            "detail": detail,
            "bound_user": user,
            "actions": actions,
            "fields": {a.name: action_fields(a, apple_mac=_apple_mac(device)) for a in actions},
            "can_delete": device_service.may(principal, P.devices_delete, device),
            "apps": await device_service.apps(session, principal, device.id),
            "history": await device_service.history(session, principal, device.id, limit=100),
            "group_memberships": await group_service.groups_of(session, MemberType.device, device.id)
            if principal.has(P.groups_read)
            else None,
            "member_label": "device",
            "targets": await assignment_service.device_targets(session, principal, device.id),
            "compliance": await compliance_service.device_compliance(session, principal, device.id),
            "configuration": await delivery_service.device_configuration(
                session, settings, principal, device.id
            )
            if principal.has(P.profiles_read)
            else None,
            "can_override": device_service.may(principal, P.compliance_write, device),
            "can_explain": principal.has_any(P.compliance_read, P.profiles_read),
            "min_reason": MIN_REASON,
            "stale_days": settings.stale_device_days,
            # A fresh key per rendered form: a double submit queues the action once.
            "idempotency_key": uuid.uuid4().hex,
            "open_action": None,
            "action_error": None,
            "form": {},
        }
    )
    return ctx


# ------------------------------------------------------------------------------------------- bulk actions
BulkSender = Annotated[Principal, Depends(Require(*BULK_PERMISSIONS, any_of=True))]
BULK_FRAGMENT = "bulk-progress"


def _bulk_params(command_type: CommandType, form: FormData) -> dict[str, Any]:
    """The chosen action's parameters from the bulk bar, whose inputs are named "<action>.<field>"."""
    prefixed = {k.split(".", 1)[1]: v for k, v in form.multi_items() if k.startswith(f"{command_type.name}.")}
    params: dict[str, Any] = {}
    for field in action_fields(command_type):
        value = prefixed.get(field.name)
        if field.kind == "checkbox":
            params[field.name] = value in {"on", "true", "yes", "1"}
        elif isinstance(value, str) and value.strip():
            params[field.name] = value.strip()
    return params


@router.post("/devices/bulk-actions")
async def create_bulk_action(
    request: Request, session: SessionDep, settings: SettingsDep, principal: BulkSender
) -> Response:
    """From the device list's bulk bar; a refusal shows the list again with the selection kept."""
    form = await request.form()
    type_name = str(form.get("type") or "")
    device_ids = [str(v) for v in form.getlist("device_ids")]
    try:
        if not device_ids:
            raise ValidationFailed("Select at least one device first.")
        if not type_name:
            raise ValidationFailed("Choose the action to send to the selected devices.")
        command_type = bulk_service.command_type(type_name)
        data = BulkActionCreate.model_validate(
            {
                "type": type_name,
                "device_ids": device_ids,
                "params": _bulk_params(command_type, form),
                "reason": str(form.get("reason") or "") or None,
                "confirm": str(form.get("confirm") or "")[:16] or None,
            }
        )
        created = await bulk_service.create(session, settings, principal, data)
    except (CorralError, ValidationError) as exc:
        error = _first_error(exc) if isinstance(exc, ValidationError) else exc.detail
        status_code = 422 if isinstance(exc, ValidationError) else exc.status_code
        params = _list_params(parse_qsl(str(form.get("list_query") or "")))
        kept = {k: v for k, v in form.items() if isinstance(v, str) and k not in {"csrf_token", "confirm"}}
        bulk = {"selected": set(device_ids), "form": kept, "error": error}
        return await _device_list(
            request, session, settings, principal, params, bulk=bulk, status_code=status_code
        )
    message = f"{created.label} queued for {created.queued_count} of {created.requested_count} device(s)."
    if created.skipped_count:
        message += f" {created.skipped_count} skipped: the reasons are listed below."
    kind = "success" if created.queued_count else "warning"
    return redirect(request, f"/portal/devices/bulk-actions/{created.id}", message, kind)


@router.get("/devices/bulk-actions")
async def bulk_actions(request: Request, session: SessionDep, principal: DevicesRead) -> Response:
    cursor = request.query_params.get("cursor") or None
    items, next_cursor = await bulk_service.page(session, cursor[:400] if cursor else None, 50)
    return render(
        request,
        "devices/bulk_list.html",
        {
            "items": items,
            "bars": {b.id: segments(b) for b in items},
            "next_cursor": next_cursor,
            "cursor": cursor,
            "can_send": bool(bulk_types_for(principal)),
        },
        headers=PAGE_HEADERS,
    )


@router.get("/devices/bulk-actions/{bulk_action_id:uuid}")
async def bulk_action_detail(
    request: Request, bulk_action_id: uuid.UUID, session: SessionDep, principal: DevicesRead
) -> Response:
    detail = await bulk_service.show(session, principal, bulk_action_id)
    ctx: dict[str, Any] = {
        "bulk": detail,
        "bar": segments(detail),
        "can_cancel": bulk_service.can_cancel(principal, detail),
        "now_ms": int(utcnow().timestamp() * 1000),
    }
    if request.headers.get(FRAGMENT_HEADER) == BULK_FRAGMENT:
        return render_fragment(request, "devices/bulk_progress.html", ctx, headers=PAGE_HEADERS)
    return render(request, "devices/bulk_detail.html", ctx, headers=PAGE_HEADERS)


@router.post("/devices/bulk-actions/{bulk_action_id:uuid}/cancel")
async def cancel_bulk_action(
    request: Request, bulk_action_id: uuid.UUID, session: SessionDep, principal: DevicesRead
) -> Response:
    """Needs the permission of the action itself (checked by the service), as the API does."""
    back = f"/portal/devices/bulk-actions/{bulk_action_id}"
    try:
        canceled, kept = await bulk_service.cancel(session, principal, bulk_action_id)
    except CorralError as exc:
        if exc.status_code == 404:
            raise
        return redirect(request, back, exc.detail, "error")
    message = f"{canceled} queued command(s) canceled."
    if kept:
        message += f" {kept} could not be: outside your scope, or delivered meanwhile."
    return redirect(request, back, message, "success" if canceled or not kept else "warning")


@router.get("/devices/{device_id:uuid}")
async def device_detail(
    request: Request, device_id: uuid.UUID, session: SessionDep, settings: SettingsDep, principal: DevicesRead
) -> Response:
    device = await device_service.get(session, principal, device_id)
    if request.headers.get(FRAGMENT_HEADER) == COMMANDS_FRAGMENT:
        ctx = await _commands_context(session, principal, device)
        return render_fragment(request, "devices/_commands.html", ctx, headers=PAGE_HEADERS)
    ctx = await _detail_context(session, settings, principal, device)
    return render(request, "devices/device_detail.html", ctx, headers=PAGE_HEADERS)


@router.get("/devices/{device_id:uuid}/who-can")
async def who_can(
    request: Request,
    device_id: uuid.UUID,
    session: SessionDep,
    principal: Annotated[Principal, Depends(Require(P.roles_read))],
    action: str = "wipe",
) -> Response:
    """Who can run a remote action on this device (wipe by default), and through which assignments."""
    device = await device_service.get(session, principal, device_id)
    found = await access.who_can(session, device, action)
    return render(
        request,
        "devices/who_can.html",
        {"device": device, "found": found, "actions": list(REGISTRY.values())},
    )


async def _refused(
    request: Request,
    session: SessionDep,
    settings: SettingsDep,
    principal: Principal,
    device_id: uuid.UUID,
    action: str,
    error: CorralError,
    form: FormData,
) -> Response:
    """The detail page again, with the action's panel open, what was typed kept and the reason shown."""
    device = await device_service.get(session, principal, device_id)
    ctx = await _detail_context(session, settings, principal, device)
    ctx.update(
        {
            "open_action": action,
            "action_error": error.detail,
            "form": {k: v for k, v in form.items() if isinstance(v, str) and k != "csrf_token"},
        }
    )
    return render(request, "devices/device_detail.html", ctx, status_code=error.status_code)


def _action_view(command_type: CommandType) -> Callable[..., Awaitable[Response]]:
    guard = Annotated[Principal, Depends(Require(command_type.permission))]

    async def run_action(
        request: Request,
        device_id: uuid.UUID,
        session: SessionDep,
        settings: SettingsDep,
        principal: guard,
    ) -> Response:
        form = await request.form()
        try:
            command, created = await command_service.queue(
                session,
                principal,
                device_id,
                CommandRequest(
                    type=command_type.name,
                    params=_params_from_form(command_type, form),
                    reason=str(form.get("reason") or "") or None,
                    confirm=str(form.get("confirm") or "") or None,
                    idempotency_key=str(form.get("idempotency_key") or "")[:128] or None,
                ),
            )
        except CorralError as exc:
            if exc.status_code == 404:
                raise
            return await _refused(
                request, session, settings, principal, device_id, command_type.name, exc, form
            )
        message = (
            f"{command_type.label} queued; the device will get it at its next check-in or wake-up."
            if created
            else f"{command_type.label} was already queued (this form was sent twice)."
        )
        if created and command.status is CommandStatus.pending_approval:
            message = (
                f"{command_type.label} requested. It waits for a second administrator's approval "
                "(Approvals page) before it is sent to the device."
            )
        return redirect(request, f"/portal/devices/{command.device_id}", message)

    # The guard differs per action; with postponed annotations the name ``guard`` would not resolve.
    run_action.__annotations__["principal"] = guard
    run_action.__name__ = f"portal_device_action_{command_type.name}"
    return run_action


for _command in REGISTRY.values():
    router.add_api_route(
        f"/devices/{{device_id:uuid}}/actions/{_command.name}",
        _action_view(_command),
        methods=["POST"],
        name=f"portal_device_action_{_command.name}",
    )


@router.post("/devices/{device_id:uuid}/commands/{command_id:uuid}/cancel")
async def cancel_command(
    request: Request, device_id: uuid.UUID, command_id: uuid.UUID, session: SessionDep, principal: DevicesRead
) -> Response:
    """Needs the permission of the action itself (checked by the service), as the API does."""
    back = f"/portal/devices/{device_id}"
    try:
        command = await command_service.cancel(session, principal, device_id, command_id)
    except CorralError as exc:
        if exc.status_code == 404:
            raise
        return redirect(request, back, exc.detail, "error")
    label = REGISTRY[command.type].label if command.type in REGISTRY else command.type
    return redirect(request, back, f"{label} canceled.")


@router.post("/devices/{device_id:uuid}/commands/clear")
async def clear_command_queue(
    request: Request, device_id: uuid.UUID, session: SessionDep, principal: DevicesRead
) -> Response:
    """Cancel every open command this admin may cancel, as the API does."""
    back = f"/portal/devices/{device_id}"
    try:
        canceled, kept = await command_service.clear(session, principal, device_id)
    except CorralError as exc:
        if exc.status_code == 404:
            raise
        return redirect(request, back, exc.detail, "error")
    message = f"Queue cleared: {canceled} action(s) canceled."
    if kept:
        message += f" {kept} kept (already delivered, or not yours to cancel)."
    return redirect(request, back, message)


@router.post("/devices/{device_id:uuid}/delete")
async def delete_device(
    request: Request,
    device_id: uuid.UUID,
    session: SessionDep,
    settings: SettingsDep,
    principal: DevicesDelete,
) -> Response:
    form = await request.form()
    device = await device_service.get(session, principal, device_id, P.devices_delete)
    name = device.name
    try:
        await device_service.delete(
            session,
            principal,
            device_id,
            reason=str(form.get("reason") or ""),
            confirm=str(form.get("confirm") or ""),
        )
    except CorralError as exc:
        if exc.status_code == 404:
            raise
        return await _refused(request, session, settings, principal, device_id, "delete", exc, form)
    return redirect(
        request, "/portal/devices", f"The record of {name} was deleted and its certificates revoked."
    )


# ------------------------------------------------------------------------------------------- enrollment
async def _enrollment_context(session: SessionDep, principal: Principal) -> dict[str, Any]:
    tokens = await enrollment_service.list_tokens(session, principal)
    return {
        "tokens": tokens,
        "statuses": {t.id: token_status(t) for t in tokens},
        "tags": await rbac_service.list_scope_tags(session) if principal.has(P.enrollment_manage) else [],
        "platforms": list(Platform),
        "ownerships": list(Ownership),
        "expiry_choices": EXPIRY_CHOICES,
    }


@router.get("/enrollment")
async def enrollment(request: Request, session: SessionDep, principal: EnrollmentRead) -> Response:
    ctx = await _enrollment_context(session, principal)
    revealed = read_reveal(request, "enrollment")
    if revealed:
        ctx["created"] = {**revealed, "qr": qr_svg(revealed["url"])}
        if revealed.get("apple_url"):
            ctx["created"]["apple_qr"] = qr_svg(revealed["apple_url"])
    response = render(request, "enrollment/token_list.html", ctx, headers={"Cache-Control": "no-store"})
    return clear_reveal(response)


@router.post("/enrollment")
async def create_enrollment_token(
    request: Request, session: SessionDep, settings: SettingsDep, principal: EnrollmentManage
) -> Response:
    form = await request.form()
    values: dict[str, Any] = {
        "name": str(form.get("name", "")),
        "platforms": [str(v) for v in form.getlist("platforms")],
        "ownership": str(form.get("ownership", "company")),
        "expires_in_days": str(form.get("expires_in_days", "30")),
        "max_uses": str(form.get("max_uses", "")).strip(),
        "scope_tag_ids": [str(v) for v in form.getlist("scope_tag_ids")],
    }
    try:
        data = EnrollmentTokenCreate(
            name=values["name"],
            platforms=values["platforms"],
            ownership=values["ownership"],
            expires_in_days=values["expires_in_days"] or 30,
            max_uses=values["max_uses"] or None,
            scope_tag_ids=values["scope_tag_ids"],
        )
        token, secret, url = await enrollment_service.create_token(session, settings, principal, data)
    except (ValidationError, CorralError) as exc:
        error = _first_error(exc) if isinstance(exc, ValidationError) else exc.detail
        status = 422 if isinstance(exc, ValidationError) else exc.status_code
        ctx = await _enrollment_context(session, principal)
        ctx.update({"error": error, "form": values})
        return render(request, "enrollment/token_list.html", ctx, status_code=status)
    response = redirect(request, "/portal/enrollment")
    set_reveal(
        response,
        request,
        "enrollment",
        {
            "token": secret,
            "url": url,
            "apple_url": apple_enrollment_url(settings, token, secret) or "",
            "name": token.name,
            "id": str(token.id),
        },
    )
    return response


@router.get("/enrollment/{token_id:uuid}")
async def enrollment_token_detail(
    request: Request, token_id: uuid.UUID, session: SessionDep, principal: EnrollmentRead
) -> Response:
    token = await enrollment_service.get_token(session, principal, token_id)
    uses = await enrollment_service.uses(session, principal, token_id)
    return render(
        request,
        "enrollment/token_detail.html",
        {"token": token, "status": token_status(token), "uses": uses},
    )


@router.post("/enrollment/{token_id:uuid}/revoke")
async def revoke_enrollment_token(
    request: Request, token_id: uuid.UUID, session: SessionDep, principal: EnrollmentManage
) -> Response:
    form = await request.form()
    target = f"/portal/enrollment/{token_id}" if form.get("back") == "detail" else "/portal/enrollment"
    try:
        token = await enrollment_service.revoke_token(session, principal, token_id)
    except CorralError as exc:
        if exc.status_code == 404:
            raise
        return redirect(request, target, exc.detail, "error")
    return redirect(request, target, f"Enrollment token {token.name} revoked: it enrolls no more devices.")
