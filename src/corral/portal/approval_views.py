"""Admin center pages for multi administrator approval of wipes: the Approvals page, the approve and reject
forms (there and on the device page) and the tenant setting. Each calls the same service as its API twin."""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Annotated, Any

from fastapi import Depends, Request
from fastapi.responses import Response

from corral.auth.dependencies import Require, SettingsWrite
from corral.commands.registry import REGISTRY
from corral.commands.service import command_service
from corral.devices.service import MIN_REASON
from corral.errors import CorralError
from corral.kit.db import SessionDep
from corral.kit.routing import APIRouter
from corral.kit.time import utcnow
from corral.portal.rendering import redirect, render
from corral.rbac.permissions import P
from corral.rbac.principal import Principal
from corral.tenant.schemas import TenantSettingsUpdate
from corral.tenant.service import tenant_service

router = APIRouter(prefix="/portal", include_in_schema=False)

RemoteApprove = Annotated[Principal, Depends(Require(P.remote_approve))]
APPROVALS = "/portal/approvals"


def age(since: datetime, now: datetime) -> str:
    """How long ago, in the largest whole unit: "just now", "5 minutes", "3 hours", "2 days"."""
    seconds = max(0, int((now - since).total_seconds()))
    for unit, size in (("day", 86_400), ("hour", 3_600), ("minute", 60)):
        if seconds >= size:
            count = seconds // size
            return f"{count} {unit}{'' if count == 1 else 's'} ago"
    return "just now"


def _back(form: Any, device_id: uuid.UUID) -> str:
    """Where the form came from: the device page or the Approvals page (never a URL taken from the form)."""
    return f"/portal/devices/{device_id}" if form.get("back") == "device" else APPROVALS


@router.get("/approvals")
async def approvals_page(request: Request, session: SessionDep, principal: RemoteApprove) -> Response:
    now = utcnow()
    rows = [
        {
            "command": command,
            "device": device,
            "label": REGISTRY[command.type].label if command.type in REGISTRY else command.type,
            "age": age(command.created_at, now),
            "can_approve": command_service.can_approve(principal, device, command),
            "mine": command.requested_by_id == principal.user_id,
        }
        for command, device in await command_service.pending_approvals(session, principal)
    ]
    tenant = await tenant_service.get(session)
    return render(
        request,
        "devices/approvals.html",
        {
            "rows": rows,
            "registry": REGISTRY,
            "min_reason": MIN_REASON,
            "required": tenant.wipe_requires_approval,
        },
        headers={"Cache-Control": "no-store"},
    )


@router.post("/devices/{device_id:uuid}/commands/{command_id:uuid}/approve")
async def approve_command(
    request: Request,
    device_id: uuid.UUID,
    command_id: uuid.UUID,
    session: SessionDep,
    principal: RemoteApprove,
) -> Response:
    form = await request.form()
    back = _back(form, device_id)
    try:
        command = await command_service.approve(
            session, principal, device_id, command_id, str(form.get("comment") or "")[:1024] or None
        )
    except CorralError as exc:
        if exc.status_code == 404:
            raise
        return redirect(request, back, exc.detail, "error")
    label = REGISTRY[command.type].label if command.type in REGISTRY else command.type
    return redirect(request, back, f"{label} approved: the device gets it at its next check-in or wake-up.")


@router.post("/devices/{device_id:uuid}/commands/{command_id:uuid}/reject")
async def reject_command(
    request: Request,
    device_id: uuid.UUID,
    command_id: uuid.UUID,
    session: SessionDep,
    principal: RemoteApprove,
) -> Response:
    form = await request.form()
    back = _back(form, device_id)
    try:
        command = await command_service.reject(
            session, principal, device_id, command_id, str(form.get("reason") or "")[:900]
        )
    except CorralError as exc:
        if exc.status_code == 404:
            raise
        return redirect(request, back, exc.detail, "error")
    label = REGISTRY[command.type].label if command.type in REGISTRY else command.type
    return redirect(request, back, f"{label} rejected: nothing was sent to the device.")


@router.post("/settings/wipe-approval")
async def save_wipe_approval(request: Request, session: SessionDep, _: SettingsWrite) -> Response:
    form = await request.form()
    required = form.get("wipe_requires_approval") == "on"
    await tenant_service.update(session, TenantSettingsUpdate(wipe_requires_approval=required))
    message = (
        "Wipes now need a second administrator's approval."
        if required
        else "Wipes no longer need a second administrator's approval. Requests already waiting still do."
    )
    return redirect(request, "/portal/settings", message)
