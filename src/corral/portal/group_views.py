"""Admin center pages for groups. Each calls the same service as its /api/v1 twin. The rule editor previews
live through /api/v1/groups/preview (static/app.js); without script, its Preview and Check buttons post the
form and the page comes back with the same answers."""

from __future__ import annotations

import uuid
from typing import Any

from fastapi import Request
from fastapi.responses import Response
from pydantic import ValidationError
from sqlalchemy.ext.asyncio import AsyncSession

from corral.errors import CorralError
from corral.groups.auth import GroupsRead, GroupsWrite
from corral.groups.schemas import (
    ExplainOut,
    ExplainRequest,
    GroupCreate,
    GroupFilter,
    GroupUpdate,
    MemberFilter,
    MemberRef,
    MemberType,
    PreviewOut,
    PreviewRequest,
)
from corral.groups.service import group_service
from corral.kit.db import SessionDep
from corral.kit.routing import APIRouter
from corral.models import DynamicKind, Group, GroupSource, MembershipType
from corral.portal.rendering import redirect, render
from corral.rbac.permissions import P
from corral.rbac.principal import Principal

router = APIRouter(prefix="/portal", include_in_schema=False)

KINDS = frozenset(k.value for k in DynamicKind)
MEMBER_TYPES = frozenset(t.value for t in MemberType)
EXAMPLES = {
    DynamicKind.device: '(device.deviceOSType -eq "Windows") -and (device.deviceOwnership -eq "Company")',
    DynamicKind.user: 'user.department -eq "Sales"',
}


def _first_error(exc: ValidationError) -> str:
    error = exc.errors()[0]
    where = ".".join(str(p) for p in error.get("loc", ()))
    message = str(error.get("msg", "invalid")).removeprefix("Value error, ")
    return f"{where}: {message}" if where else message


def _rule_error(exc: CorralError) -> dict[str, Any] | None:
    """The rule error (position, excerpt) carried by a 422 from the service, if that is what it is."""
    for error in exc.errors or []:
        if error.get("type") == "rule_error":
            return error
    return None


# ------------------------------------------------------------------------------------------- list
@router.get("/groups")
async def groups(request: Request, session: SessionDep, principal: GroupsRead) -> Response:
    params = {k: v for k, v in request.query_params.items() if k in GroupFilter.model_fields and v}
    ctx: dict[str, Any] = {
        "params": params,
        "filters": {k: v for k, v in params.items() if k != "cursor"},
        "membership_types": list(MembershipType),
        "kinds": list(DynamicKind),
        "sources": list(GroupSource),
    }
    try:
        filters = GroupFilter.model_validate(params)
    except ValidationError as exc:
        ctx.update({"groups": None, "error": _first_error(exc)})
        return render(request, "groups/group_list.html", ctx, status_code=400)
    items, next_cursor, total = await group_service.page(session, filters)
    ctx.update({"groups": items, "next_cursor": next_cursor, "total": total})
    return render(request, "groups/group_list.html", ctx)


# ------------------------------------------------------------------------------------------- create, edit
def _form_values(form: Any) -> dict[str, str]:
    return {
        k: str(form.get(k) or "")
        for k in (
            "display_name",
            "description",
            "membership_type",
            "dynamic_kind",
            "rule",
            "action",
            "explain_lookup",
        )
    }


async def _try_rule(
    session: AsyncSession, principal: Principal, values: dict[str, str], kind: DynamicKind | None
) -> dict[str, Any]:
    """The no-script Preview and Check buttons: the same answers the live editor shows."""
    out: dict[str, Any] = {}
    if kind is None or not values.get("rule"):
        return out
    try:
        if values["action"] == "explain" and values["explain_lookup"].strip():
            out["explain"] = await group_service.explain(
                session,
                principal,
                ExplainRequest(dynamic_kind=kind, rule=values["rule"], lookup=values["explain_lookup"]),
            )
        out["preview"] = await group_service.preview(
            session, principal, PreviewRequest(dynamic_kind=kind, rule=values["rule"], limit=10)
        )
    except CorralError as exc:
        out["rule_error"] = _rule_error(exc)
        out["preview_error"] = exc.detail
    except ValidationError as exc:
        out["preview_error"] = _first_error(exc)
    return out


def _form_ctx(
    group: Group | None,
    values: dict[str, str],
    *,
    error: str | None = None,
    rule_error: dict[str, Any] | None = None,
    preview: PreviewOut | None = None,
    explain: ExplainOut | None = None,
    preview_error: str | None = None,
) -> dict[str, Any]:
    kind = values.get("dynamic_kind") or (group.dynamic_kind if group else None) or "device"
    kind = kind if kind in KINDS else "device"
    return {
        "group": group,
        "form": values,
        "kind": kind,
        "example": EXAMPLES[DynamicKind(kind)],
        "kinds": list(DynamicKind),
        "error": error,
        "rule_error": rule_error,
        "preview": preview,
        "explain": explain,
        "preview_error": preview_error,
    }


@router.get("/groups/new")
async def new_group(request: Request, _: GroupsWrite) -> Response:
    membership_type = "dynamic" if request.query_params.get("type") == "dynamic" else "assigned"
    kind = "user" if request.query_params.get("kind") == "user" else "device"
    values = {"membership_type": membership_type, "dynamic_kind": kind, "rule": ""}
    return render(request, "groups/group_form.html", _form_ctx(None, values))


@router.post("/groups/new")
async def create_group(request: Request, session: SessionDep, principal: GroupsWrite) -> Response:
    values = _form_values(await request.form())
    dynamic = values["membership_type"] == "dynamic"
    kind = DynamicKind(values["dynamic_kind"]) if values["dynamic_kind"] in KINDS else None
    if values["action"] in ("preview", "explain"):
        tried = await _try_rule(session, principal, values, kind)
        return render(request, "groups/group_form.html", _form_ctx(None, values, **tried))
    try:
        data = GroupCreate(
            display_name=values["display_name"],
            description=values["description"],
            membership_type=MembershipType.dynamic if dynamic else MembershipType.assigned,
            dynamic_kind=kind if dynamic else None,
            rule=values["rule"] if dynamic else None,
        )
        saved = await group_service.create(session, data)
    except ValidationError as exc:
        ctx = _form_ctx(None, values, error=_first_error(exc))
        return render(request, "groups/group_form.html", ctx, status_code=422)
    except CorralError as exc:
        ctx = _form_ctx(None, values, error=exc.detail, rule_error=_rule_error(exc))
        return render(request, "groups/group_form.html", ctx, status_code=exc.status_code)
    message = f"Group {saved.group.display_name} created."
    if saved.evaluation is not None:
        message += f" Its rule selects {saved.evaluation.members} {saved.group.dynamic_kind}(s)."
    return redirect(request, f"/portal/groups/{saved.group.id}", message)


@router.get("/groups/{group_id:uuid}/edit")
async def edit_group(request: Request, group_id: uuid.UUID, session: SessionDep, _: GroupsWrite) -> Response:
    group = await group_service.get(session, group_id)
    values = {
        "display_name": group.display_name,
        "description": group.description,
        "membership_type": group.membership_type.value,
        "dynamic_kind": group.dynamic_kind.value if group.dynamic_kind else "",
        "rule": group.rule or "",
    }
    return render(request, "groups/group_form.html", _form_ctx(group, values))


@router.post("/groups/{group_id:uuid}/edit")
async def update_group(
    request: Request, group_id: uuid.UUID, session: SessionDep, principal: GroupsWrite
) -> Response:
    group = await group_service.get(session, group_id)
    values = _form_values(await request.form())
    values["membership_type"] = group.membership_type.value
    values["dynamic_kind"] = group.dynamic_kind.value if group.dynamic_kind else ""
    dynamic = group.membership_type is MembershipType.dynamic
    if values["action"] in ("preview", "explain"):
        tried = await _try_rule(session, principal, values, group.dynamic_kind)
        return render(request, "groups/group_form.html", _form_ctx(group, values, **tried))
    try:
        data = GroupUpdate(
            display_name=values["display_name"],
            description=values["description"],
            rule=values["rule"] if dynamic else None,
        )
        saved = await group_service.update(session, principal, group_id, data)
    except ValidationError as exc:
        ctx = _form_ctx(group, values, error=_first_error(exc))
        return render(request, "groups/group_form.html", ctx, status_code=422)
    except CorralError as exc:
        if exc.status_code == 404:
            raise
        ctx = _form_ctx(group, values, error=exc.detail, rule_error=_rule_error(exc))
        return render(request, "groups/group_form.html", ctx, status_code=exc.status_code)
    message = f"Group {saved.group.display_name} saved."
    if saved.evaluation is not None:
        e = saved.evaluation
        message += f" New rule: {e.added} added, {e.removed} removed, {e.members} member(s) now."
    return redirect(request, f"/portal/groups/{group_id}", message)


# ------------------------------------------------------------------------------------------- detail
async def _detail_ctx(
    session: AsyncSession, principal: Principal, group: Group, request: Request
) -> dict[str, Any]:
    params = request.query_params
    transitive = params.get("view") == "all"
    member_type = params.get("type") if params.get("type") in MEMBER_TYPES else None
    filters = MemberFilter(
        transitive=transitive,
        type=MemberType(member_type) if member_type else None,
        cursor=params.get("cursor") or None,
        limit=50,
    )
    detail = await group_service.detail(session, group)
    editable = (
        principal.has(P.groups_write)
        and group.membership_type is MembershipType.assigned
        and group.source is GroupSource.local
    )
    return {
        "group": group,
        "detail": detail,
        "members": await group_service.members(session, principal, group.id, filters),
        "view": "all" if transitive else "direct",
        "member_type": member_type,
        "cursor": filters.cursor,
        "editable_members": editable,
        "can_write": principal.has(P.groups_write),
        "last_evaluation": await group_service.last_evaluation(session, group)
        if group.membership_type is MembershipType.dynamic
        else None,
        "canonical": _canonical(group),
        "member_types": list(MemberType),
        "add_error": None,
        "add_form": {},
        "explain": None,
        "explain_error": None,
        "explain_lookup": "",
    }


def _canonical(group: Group) -> str | None:
    if group.rule is None or group.dynamic_kind is None:
        return None
    from corral.groups.membership import parsed
    from corral.groups.rules import RuleError

    try:
        return parsed(group.dynamic_kind, group.rule).canonical
    except RuleError:
        return None


@router.get("/groups/{group_id:uuid}")
async def group_detail(
    request: Request, group_id: uuid.UUID, session: SessionDep, principal: GroupsRead
) -> Response:
    group = await group_service.get(session, group_id)
    ctx = await _detail_ctx(session, principal, group, request)
    return render(request, "groups/group_detail.html", ctx, headers={"Cache-Control": "no-store"})


@router.post("/groups/{group_id:uuid}/check")
async def check_member(
    request: Request, group_id: uuid.UUID, session: SessionDep, principal: GroupsRead
) -> Response:
    """ "Does this device (or user) match, and why?" for the group's saved rule (no-script form)."""
    group = await group_service.get(session, group_id)
    form = await request.form()
    lookup = str(form.get("explain_lookup") or "").strip()
    ctx = await _detail_ctx(session, principal, group, request)
    ctx["explain_lookup"] = lookup
    if group.rule is None or group.dynamic_kind is None:
        return redirect(request, f"/portal/groups/{group_id}")
    try:
        ctx["explain"] = await group_service.explain(
            session,
            principal,
            ExplainRequest(dynamic_kind=group.dynamic_kind, rule=group.rule, lookup=lookup),
        )
    except ValidationError as exc:
        ctx["explain_error"] = _first_error(exc)
    except CorralError as exc:
        ctx["explain_error"] = exc.detail
    return render(request, "groups/group_detail.html", ctx)


@router.post("/groups/{group_id:uuid}/evaluate")
async def evaluate_group(
    request: Request, group_id: uuid.UUID, session: SessionDep, _: GroupsWrite
) -> Response:
    try:
        result = await group_service.evaluate(session, group_id)
    except CorralError as exc:
        if exc.status_code == 404:
            raise
        return redirect(request, f"/portal/groups/{group_id}", exc.detail, "error")
    return redirect(
        request,
        f"/portal/groups/{group_id}",
        f"Evaluated in {result.milliseconds:.0f} ms: {result.added} added, {result.removed} removed, "
        f"{result.members} member(s).",
    )


@router.post("/groups/{group_id:uuid}/delete")
async def delete_group(
    request: Request, group_id: uuid.UUID, session: SessionDep, _: GroupsWrite
) -> Response:
    try:
        group = await group_service.delete(session, group_id)
    except CorralError as exc:
        if exc.status_code == 404:
            raise
        return redirect(request, f"/portal/groups/{group_id}", exc.detail, "error")
    return redirect(request, "/portal/groups", f"Group {group.display_name} deleted.")


@router.post("/groups/{group_id:uuid}/members")
async def add_member(
    request: Request, group_id: uuid.UUID, session: SessionDep, principal: GroupsWrite
) -> Response:
    form = await request.form()
    kind = str(form.get("type") or "")
    lookup = str(form.get("lookup") or "").strip()
    try:
        if kind not in MEMBER_TYPES or not lookup:
            raise ValueError("Choose the kind of member and name it.")
        ref = await group_service.resolve_member(session, principal, MemberType(kind), lookup)
        member, added = await group_service.add_member(session, principal, group_id, ref)
    except (CorralError, ValueError) as exc:
        group = await group_service.get(session, group_id)
        ctx = await _detail_ctx(session, principal, group, request)
        ctx.update(
            {
                "add_error": exc.detail if isinstance(exc, CorralError) else str(exc),
                "add_form": {"type": kind, "lookup": lookup},
            }
        )
        status = exc.status_code if isinstance(exc, CorralError) else 422
        return render(request, "groups/group_detail.html", ctx, status_code=status)
    message = f"{member.name} added." if added else f"{member.name} was already a member."
    return redirect(request, f"/portal/groups/{group_id}", message)


@router.post("/groups/{group_id:uuid}/members/remove")
async def remove_member(
    request: Request, group_id: uuid.UUID, session: SessionDep, principal: GroupsWrite
) -> Response:
    form = await request.form()
    try:
        ref = MemberRef.model_validate({"type": form.get("type"), "id": form.get("id")})
        member = await group_service.remove_member(session, principal, group_id, ref)
    except ValidationError:
        return redirect(request, f"/portal/groups/{group_id}", "That member reference is not valid.", "error")
    except CorralError as exc:
        return redirect(request, f"/portal/groups/{group_id}", exc.detail, "error")
    return redirect(request, f"/portal/groups/{group_id}", f"{member.name} removed from the group.")
