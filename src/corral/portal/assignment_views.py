"""Admin center pages for assignments: the assignment editor of a compliance policy or configuration profile
(with the "would reach N devices" preview, live through /api/v1/assignments/preview in static/app.js, and a
Preview button without script), and "why does this device get (or not get) this object?" for a device.

Each page calls the same service as its /api/v1 twin (corral.assignments.service)."""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from typing import Annotated, Any

from fastapi import Depends, Query, Request
from fastapi.responses import Response
from pydantic import ValidationError

from corral.assignments.kinds import KINDS, Kind
from corral.assignments.resolver import APPLIES_TO
from corral.assignments.schemas import (
    AssignmentIn,
    FilterCreate,
    FilterPreviewRequest,
    FilterUpdate,
    ReachPreviewRequest,
)
from corral.assignments.service import assignment_service
from corral.auth.dependencies import Require
from corral.devices.service import device_service
from corral.errors import CorralError
from corral.groups.schemas import GroupFilter
from corral.groups.service import group_service
from corral.kit.db import SessionDep
from corral.kit.routing import APIRouter
from corral.models import AssignableKind, AssignmentMode, AssignmentTarget, FilterMode, Platform
from corral.portal.rendering import redirect, render
from corral.rbac.permissions import P
from corral.rbac.principal import Principal

router = APIRouter(prefix="/portal", include_in_schema=False)

DevicesRead = Annotated[Principal, Depends(Require(P.devices_read))]
ComplianceRead = Annotated[Principal, Depends(Require(P.compliance_read))]
ComplianceAssign = Annotated[Principal, Depends(Require(P.compliance_assign))]
ProfilesRead = Annotated[Principal, Depends(Require(P.profiles_read))]
ProfilesAssign = Annotated[Principal, Depends(Require(P.profiles_assign))]
POLICY, PROFILE = AssignableKind.compliance_policy, AssignableKind.configuration_profile

#: Empty rows offered under the existing assignments (more after saving).
BLANK_ROWS = 3


# ------------------------------------------------------------------------------------------- editor
@dataclass
class Row:
    """One line of the editor: include/exclude, a target (all_devices, all_users or a group id), a filter."""

    mode: str = "include"
    target: str = ""
    filter_id: str = ""
    filter_mode: str = "include"


def _rows_from_assignments(assignments: list[Any]) -> list[Row]:
    rows = []
    for a in assignments:
        target = str(a.group.id) if a.group else a.target.value
        rows.append(
            Row(
                mode=a.mode.value,
                target=target,
                filter_id=str(a.filter.id) if a.filter else "",
                filter_mode=a.filter_mode.value if a.filter_mode else "include",
            )
        )
    return rows


def _rows_from_form(form: Any) -> list[Row]:
    modes, targets = form.getlist("row_mode"), form.getlist("row_target")
    filters, filter_modes = form.getlist("row_filter"), form.getlist("row_filter_mode")
    rows = []
    for i, target in enumerate(targets):
        rows.append(
            Row(
                mode=str(modes[i]) if i < len(modes) else "include",
                target=str(target or "").strip(),
                filter_id=str(filters[i] or "").strip() if i < len(filters) else "",
                filter_mode=str(filter_modes[i]) if i < len(filter_modes) else "include",
            )
        )
    return rows


class RowError(ValueError):
    def __init__(self, row: int, message: str) -> None:
        super().__init__(f"Row {row}: {message}")


def _assignments(rows: list[Row]) -> list[AssignmentIn]:
    """The rows that name a target, as the API's assignments (a clear message for the first bad row)."""
    out = []
    for number, row in enumerate(rows, start=1):
        if not row.target:
            continue
        try:
            if row.target in (AssignmentTarget.all_devices.value, AssignmentTarget.all_users.value):
                target, group_id = AssignmentTarget(row.target), None
            else:
                target, group_id = AssignmentTarget.group, uuid.UUID(row.target)
            filter_id = uuid.UUID(row.filter_id) if row.filter_id else None
            out.append(
                AssignmentIn(
                    target=target,
                    group_id=group_id,
                    mode=AssignmentMode(row.mode),
                    filter_id=filter_id,
                    filter_mode=FilterMode(row.filter_mode) if filter_id else None,
                )
            )
        except ValidationError as exc:
            message = str(exc.errors()[0].get("msg", "invalid")).removeprefix("Value error, ")
            raise RowError(number, message) from exc
        except ValueError as exc:
            raise RowError(number, "choose a target, a mode and a filter from the lists") from exc
    return out


async def _editor_ctx(
    session: SessionDep, principal: Principal, kind: Kind, object_id: uuid.UUID, rows: list[Row] | None
) -> dict[str, Any]:
    obj = await assignment_service.get_object(session, principal, object_id, kind.kind)
    current = await assignment_service.assignments_out(session, principal, obj)
    if rows is None:
        rows = _rows_from_assignments(current.assignments)
    rows = rows + [Row() for _ in range(BLANK_ROWS)]
    if principal.has(P.groups_read):
        groups = [
            (g.id, g.display_name) for g in (await group_service.page(session, GroupFilter(limit=500)))[0]
        ]
    else:  # no group names beyond those the object names already
        groups = [(a.group.id, a.group.display_name) for a in current.assignments if a.group]
    filters = [
        f
        for f in await assignment_service.filters(session, principal, None, None)
        if Platform(f.platform) in APPLIES_TO[Platform(obj.platform)]
    ]
    return {
        "obj": obj,
        "kind": kind,
        "current": current,
        "rows": rows,
        "groups": groups,
        "filters": filters,
        "can_assign": principal.has(kind.assign),
        "error": None,
        "reach": None,
    }


async def _editor(
    request: Request, session: SessionDep, principal: Principal, kind: Kind, object_id: uuid.UUID
) -> Response:
    ctx = await _editor_ctx(session, principal, kind, object_id, None)
    return render(request, "assignments/editor.html", ctx)


async def _save(
    request: Request, session: SessionDep, principal: Principal, kind: Kind, object_id: uuid.UUID
) -> Response:
    form = await request.form()
    rows = _rows_from_form(form)
    ctx = await _editor_ctx(session, principal, kind, object_id, rows)
    ctx["rows"] = rows + [Row() for _ in range(BLANK_ROWS)]
    try:
        assignments = _assignments(rows)
        if form.get("action") == "preview":
            preview = await assignment_service.preview(
                session, principal, ReachPreviewRequest(platform=ctx["obj"].platform, assignments=assignments)
            )
            ctx["reach"] = preview.devices
            return render(request, "assignments/editor.html", ctx)
        obj = await assignment_service.get_object(session, principal, object_id, kind.kind, for_update=True)
        saved = await assignment_service.replace(session, principal, obj, assignments)
    except RowError as exc:
        ctx["error"] = str(exc)
        return render(request, "assignments/editor.html", ctx, status_code=422)
    except CorralError as exc:
        ctx["error"] = exc.detail
        return render(request, "assignments/editor.html", ctx, status_code=exc.status_code)
    return redirect(
        request,
        f"/portal/{kind.path}/{object_id}/assignments",
        f"Assignments of {obj.name} saved: it reaches {saved.devices} device(s) now.",
    )


@router.get("/compliance-policies/{policy_id:uuid}/assignments")
async def compliance_policy_assignments(
    request: Request, policy_id: uuid.UUID, session: SessionDep, principal: ComplianceRead
) -> Response:
    return await _editor(request, session, principal, KINDS[POLICY], policy_id)


@router.post("/compliance-policies/{policy_id:uuid}/assignments")
async def save_compliance_policy_assignments(
    request: Request, policy_id: uuid.UUID, session: SessionDep, principal: ComplianceAssign
) -> Response:
    return await _save(request, session, principal, KINDS[POLICY], policy_id)


@router.get("/configuration-profiles/{profile_id:uuid}/assignments")
async def configuration_profile_assignments(
    request: Request, profile_id: uuid.UUID, session: SessionDep, principal: ProfilesRead
) -> Response:
    return await _editor(request, session, principal, KINDS[PROFILE], profile_id)


@router.post("/configuration-profiles/{profile_id:uuid}/assignments")
async def save_configuration_profile_assignments(
    request: Request, profile_id: uuid.UUID, session: SessionDep, principal: ProfilesAssign
) -> Response:
    return await _save(request, session, principal, KINDS[PROFILE], profile_id)


# ------------------------------------------------------------------------------------------- why
@router.get("/devices/{device_id:uuid}/why")
async def why(
    request: Request,
    device_id: uuid.UUID,
    session: SessionDep,
    principal: DevicesRead,
    object_id: Annotated[str, Query(max_length=64)] = "",
) -> Response:
    """Why does this device get (or not get) a compliance policy or configuration profile?"""
    device = await device_service.get(session, principal, device_id)
    objects = await assignment_service.visible_objects(session, principal)
    ctx: dict[str, Any] = {"device": device, "objects": objects, "explanation": None, "error": None}
    ctx["object_id"] = object_id
    if object_id:
        try:
            chosen = uuid.UUID(object_id)
        except ValueError:
            ctx["error"] = "Choose a policy or profile from the list."
            return render(request, "assignments/why.html", ctx, status_code=400)
        try:
            ctx["explanation"] = await assignment_service.explain(session, principal, device.id, chosen)
        except CorralError as exc:
            ctx["error"] = exc.detail
            return render(request, "assignments/why.html", ctx, status_code=exc.status_code)
    return render(request, "assignments/why.html", ctx)


# ------------------------------------------------------------------------------------------- filters
FiltersRead = Annotated[Principal, Depends(Require(P.filters_read))]
FiltersWrite = Annotated[Principal, Depends(Require(P.filters_write))]
FILTER_EXAMPLE = '(device.deviceOwnership -eq "Company") -and (device.displayName -startsWith "LAP")'


@router.get("/assignment-filters")
async def assignment_filters(
    request: Request,
    session: SessionDep,
    principal: FiltersRead,
    search: Annotated[str, Query(max_length=200)] = "",
) -> Response:
    items = await assignment_service.filters(session, principal, search or None, None)
    return render(request, "assignments/filter_list.html", {"filters": items, "search": search})


def _filter_form(values: dict[str, str], *, editing: Any = None, **extra: Any) -> dict[str, Any]:
    return {
        "form": values,
        "editing": editing,
        "platforms": list(Platform),
        "example": FILTER_EXAMPLE,
        "error": None,
        "preview": None,
        **extra,
    }


def _filter_values(form: Any) -> dict[str, str]:
    return {k: str(form.get(k) or "") for k in ("name", "description", "platform", "rule", "action")}


async def _filter_preview(
    session: SessionDep, principal: Principal, values: dict[str, str]
) -> dict[str, Any]:
    if not principal.has(P.devices_read):
        return {"error": "Previewing the devices a rule matches needs the permission devices:read."}
    try:
        data = FilterPreviewRequest(platform=Platform(values["platform"]), rule=values["rule"], limit=10)
        return {"preview": await assignment_service.preview_filter(session, principal, data)}
    except (ValueError, ValidationError):
        return {"error": "Choose a platform and write a rule to preview it."}
    except CorralError as exc:
        return {"error": exc.detail}


@router.get("/assignment-filters/new")
async def new_assignment_filter(request: Request, _: FiltersWrite) -> Response:
    values = {"name": "", "description": "", "platform": "windows", "rule": ""}
    return render(request, "assignments/filter_form.html", _filter_form(values))


@router.post("/assignment-filters/new")
async def create_assignment_filter(
    request: Request, session: SessionDep, principal: FiltersWrite
) -> Response:
    values = _filter_values(await request.form())
    if values["action"] == "preview":
        ctx = _filter_form(values, **(await _filter_preview(session, principal, values)))
        return render(request, "assignments/filter_form.html", ctx)
    try:
        data = FilterCreate(
            name=values["name"],
            description=values["description"],
            platform=values["platform"],
            rule=values["rule"],
        )
        item = await assignment_service.create_filter(session, principal, data)
    except ValidationError as exc:
        error = exc.errors()[0]
        where = ".".join(str(p) for p in error.get("loc", ()))
        ctx = _filter_form(values, error=f"{where}: {error.get('msg', 'invalid')}")
        return render(request, "assignments/filter_form.html", ctx, status_code=422)
    except CorralError as exc:
        ctx = _filter_form(values, error=exc.detail)
        return render(request, "assignments/filter_form.html", ctx, status_code=exc.status_code)
    return redirect(request, f"/portal/assignment-filters/{item.id}", f"Filter {item.name} created.")


@router.get("/assignment-filters/{filter_id:uuid}")
async def assignment_filter(
    request: Request, filter_id: uuid.UUID, session: SessionDep, principal: FiltersRead
) -> Response:
    item = await assignment_service.get_filter(session, principal, filter_id)
    detail = await assignment_service.filter_detail(session, principal, item)
    values = {
        "name": detail.name,
        "description": detail.description,
        "platform": detail.platform,
        "rule": detail.rule,
    }
    ctx = _filter_form(values, editing=detail, can_write=principal.has(P.filters_write))
    return render(request, "assignments/filter_form.html", ctx)


@router.post("/assignment-filters/{filter_id:uuid}")
async def update_assignment_filter(
    request: Request, filter_id: uuid.UUID, session: SessionDep, principal: FiltersWrite
) -> Response:
    item = await assignment_service.get_filter(session, principal, filter_id)
    detail = await assignment_service.filter_detail(session, principal, item)
    values = _filter_values(await request.form())
    values["platform"] = detail.platform  # a filter keeps its platform
    if values["action"] == "delete":
        try:
            await assignment_service.delete_filter(session, principal, filter_id)
        except CorralError as exc:
            ctx = _filter_form(values, editing=detail, can_write=True, error=exc.detail)
            return render(request, "assignments/filter_form.html", ctx, status_code=exc.status_code)
        return redirect(request, "/portal/assignment-filters", f"Filter {detail.name} deleted.")
    if values["action"] == "preview":
        extra = await _filter_preview(session, principal, values)
        ctx = _filter_form(values, editing=detail, can_write=True, **extra)
        return render(request, "assignments/filter_form.html", ctx)
    try:
        data = FilterUpdate(name=values["name"], description=values["description"], rule=values["rule"])
        await assignment_service.update_filter(session, principal, filter_id, data)
    except ValidationError as exc:
        error = exc.errors()[0]
        where = ".".join(str(p) for p in error.get("loc", ()))
        ctx = _filter_form(
            values, editing=detail, can_write=True, error=f"{where}: {error.get('msg', 'invalid')}"
        )
        return render(request, "assignments/filter_form.html", ctx, status_code=422)
    except CorralError as exc:
        ctx = _filter_form(values, editing=detail, can_write=True, error=exc.detail)
        return render(request, "assignments/filter_form.html", ctx, status_code=exc.status_code)
    return redirect(request, f"/portal/assignment-filters/{filter_id}", f"Filter {values['name']} saved.")
