"""Admin center pages for users and licences. Each calls the same service as its /api/v1 twin."""

from __future__ import annotations

import uuid
from typing import Annotated, Any

from fastapi import Depends, Request
from fastapi.responses import Response
from pydantic import ValidationError
from starlette.datastructures import FormData

from corral.auth.dependencies import Require
from corral.errors import CorralError
from corral.kit.csvexport import csv_response
from corral.kit.db import SessionDep
from corral.kit.deps import SessionMakerDep, SettingsDep
from corral.kit.routing import APIRouter
from corral.licensing.schemas import LicenceCreate, LicenceUpdate
from corral.licensing.service import licence_service
from corral.models import User, UserSource
from corral.portal.rendering import redirect, render, render_error
from corral.rbac.permissions import P
from corral.rbac.principal import Principal
from corral.tenant.service import tenant_service
from corral.users.schemas import PROPERTY_LABELS, UserCreate, UserFilter, UserUpdate
from corral.users.service import user_service

router = APIRouter(prefix="/portal", include_in_schema=False)

UsersRead = Annotated[Principal, Depends(Require(P.users_read))]
UsersWrite = Annotated[Principal, Depends(Require(P.users_write))]
LicencesRead = Annotated[Principal, Depends(Require(P.licences_read))]
LicencesWrite = Annotated[Principal, Depends(Require(P.licences_write))]

FORM_FIELDS = tuple(PROPERTY_LABELS)


def _first_error(exc: ValidationError) -> str:
    error = exc.errors()[0]
    where = ".".join(str(p) for p in error.get("loc", ()))
    label = PROPERTY_LABELS.get(where, where.replace("_", " "))
    return f"{label}: {error.get('msg', 'invalid')}" if where else str(error.get("msg", "invalid"))


def _failure(exc: ValidationError | CorralError) -> tuple[str, int]:
    if isinstance(exc, ValidationError):
        return _first_error(exc), 422
    return exc.detail, exc.status_code


def _form_values(form: FormData) -> dict[str, str]:
    return {name: str(form.get(name) or "").strip() for name in FORM_FIELDS}


# ------------------------------------------------------------------------------------------- user list
def _user_filter(params: dict[str, str]) -> UserFilter:
    clean: dict[str, Any] = {k: v for k, v in params.items() if v and k in UserFilter.model_fields}
    if "enabled" in clean:  # the select sends "yes" / "no"
        clean["enabled"] = {"yes": True, "no": False}.get(clean["enabled"], clean["enabled"])
    return UserFilter.model_validate(clean)


@router.get("/users")
async def users(request: Request, session: SessionDep, principal: UsersRead) -> Response:
    params = {k: v for k, v in request.query_params.items() if k in UserFilter.model_fields}
    filters_in_use = {k: v for k, v in params.items() if v and k != "cursor"}
    ctx: dict[str, Any] = {
        "params": params,
        "filters": filters_in_use,
        "active_filters": sum(1 for k in filters_in_use if k not in {"sort", "limit"}),
        "sources": list(UserSource),
        "departments": await user_service.departments(session, principal),
    }
    try:
        filters = _user_filter(params)
    except ValidationError as exc:
        ctx.update({"users": None, "error": _first_error(exc), "sort": "display_name"})
        return render(request, "users/user_list.html", ctx, status_code=400)
    items, next_cursor, total = await user_service.page(session, principal, filters)
    ctx.update(
        {
            "users": items,
            "next_cursor": next_cursor,
            "total": total,
            "sort": filters.sort,
            "admins": await user_service.admin_ids(session, [u.id for u in items]),
        }
    )
    return render(request, "users/user_list.html", ctx)


@router.get("/users/export.csv")
async def users_csv(request: Request, maker: SessionMakerDep, principal: UsersRead) -> Response:
    try:
        filters = _user_filter(
            {k: v for k, v in request.query_params.items() if k not in {"cursor", "limit"}}
        )
    except ValidationError as exc:
        return render_error(request, 400, "Invalid filter", _first_error(exc))
    return csv_response(user_service.export_csv(maker, principal, filters), "corral-users.csv")


# ------------------------------------------------------------------------------------------- create, edit
@router.get("/users/new")
async def new_user(request: Request, _: UsersWrite) -> Response:
    return render(request, "users/user_form.html", {"user": None, "form": {}})


@router.post("/users/new")
async def create_user(request: Request, session: SessionDep, principal: UsersWrite) -> Response:
    form = await request.form()
    values = _form_values(form)
    try:
        user = await user_service.create_user(session, principal, UserCreate.model_validate(values))
    except (ValidationError, CorralError) as exc:
        error, status = _failure(exc)
        return render(
            request,
            "users/user_form.html",
            {"user": None, "form": values, "error": error},
            status_code=status,
        )
    return redirect(request, f"/portal/users/{user.id}", f"User {user.user_principal_name} created.")


@router.get("/users/{user_id:uuid}/edit")
async def edit_user(
    request: Request, user_id: uuid.UUID, session: SessionDep, principal: UsersWrite
) -> Response:
    user = await user_service.get_for(session, principal, user_id, P.users_write)
    values = {name: getattr(user, name) or "" for name in FORM_FIELDS}
    return render(request, "users/user_form.html", {"user": user, "form": values})


@router.post("/users/{user_id:uuid}/edit")
async def update_user(
    request: Request, user_id: uuid.UUID, session: SessionDep, principal: UsersWrite
) -> Response:
    user = await user_service.get_for(session, principal, user_id, P.users_write)
    form = await request.form()
    values = _form_values(form)
    try:
        # Every field is on the form: an emptied optional one clears the property, an emptied required one
        # is refused.
        data = UserUpdate.model_validate(values)
        await user_service.update(session, user_id, data, principal)
    except (ValidationError, CorralError) as exc:
        error, status = _failure(exc)
        return render(
            request,
            "users/user_form.html",
            {"user": user, "form": values, "error": error},
            status_code=status,
        )
    return redirect(request, f"/portal/users/{user_id}", "User saved.")


# ------------------------------------------------------------------------------------------- detail
@router.get("/users/{user_id:uuid}")
async def user_detail(
    request: Request, user_id: uuid.UUID, session: SessionDep, settings: SettingsDep, principal: UsersRead
) -> Response:
    user = await user_service.get_for(session, principal, user_id)
    detail = await user_service.detail(session, settings, principal, user)
    ctx: dict[str, Any] = {
        "user": user,
        "detail": detail,
        "device_policy": (await tenant_service.get(session)).deprovisioned_user_devices,
        "can_delete": user.source != UserSource.scim and not detail.is_admin,
        "stale_days": settings.stale_device_days,
    }
    if principal.has(P.licences_read):
        held = {lic.licence_id for lic in getattr(detail, "licences", [])}
        ctx["assignable"] = [
            lic for lic in await licence_service.list_all(session) if lic.id not in held and lic.available > 0
        ]
    return render(request, "users/user_detail.html", ctx)


def _back(user_id: uuid.UUID) -> str:
    return f"/portal/users/{user_id}"


@router.post("/users/{user_id:uuid}/enabled")
async def set_user_enabled(
    request: Request, user_id: uuid.UUID, session: SessionDep, principal: UsersWrite
) -> Response:
    form = await request.form()
    want = form.get("enabled") == "true"
    try:
        user, outcome = await user_service.update_with_outcome(
            session, user_id, UserUpdate(enabled=want), principal
        )
    except CorralError as exc:
        if exc.status_code == 404:
            raise
        return redirect(request, _back(user_id), exc.detail, "error")
    if outcome is not None:
        return redirect(
            request, _back(user_id), f"{user.user_principal_name} is disabled: {outcome.summary()}."
        )
    return redirect(
        request, _back(user_id), f"{user.user_principal_name} is {'enabled' if want else 'disabled'}."
    )


@router.post("/users/{user_id:uuid}/delete")
async def delete_user(
    request: Request, user_id: uuid.UUID, session: SessionDep, principal: UsersWrite
) -> Response:
    user = await user_service.get_for(session, principal, user_id, P.users_write)
    name = user.user_principal_name
    try:
        outcome = await user_service.delete(session, principal, user_id)
    except CorralError as exc:
        if exc.status_code == 404:
            raise
        return redirect(request, _back(user_id), exc.detail, "error")
    return redirect(request, "/portal/users", f"{name} was deleted: {outcome.summary()}.")


@router.post("/users/{user_id:uuid}/licences")
async def assign_licence(
    request: Request, user_id: uuid.UUID, session: SessionDep, principal: LicencesWrite
) -> Response:
    user: User = await user_service.get_for(session, principal, user_id, P.licences_write)
    form = await request.form()
    try:
        licence_id = uuid.UUID(str(form.get("licence_id") or ""))
    except ValueError:
        return redirect(request, _back(user_id), "Choose a licence from the list.", "error")
    try:
        held, created = await licence_service.assign(session, principal, user, licence_id)
    except CorralError as exc:
        return redirect(request, _back(user_id), exc.detail, "error")
    message = (
        f"{held.name} assigned." if created else f"{user.user_principal_name} already holds {held.name}."
    )
    return redirect(request, _back(user_id), message)


@router.post("/users/{user_id:uuid}/licences/{licence_id:uuid}/remove")
async def unassign_licence(
    request: Request, user_id: uuid.UUID, licence_id: uuid.UUID, session: SessionDep, principal: LicencesWrite
) -> Response:
    user = await user_service.get_for(session, principal, user_id, P.licences_write)
    try:
        await licence_service.unassign(session, user, licence_id)
    except CorralError as exc:
        return redirect(request, _back(user_id), exc.detail, "error")
    return redirect(request, _back(user_id), "Licence removed.")


# ------------------------------------------------------------------------------------------- licences
async def _licence_list(
    request: Request,
    session: SessionDep,
    *,
    form: dict[str, str] | None = None,
    error: str | None = None,
    status_code: int = 200,
) -> Response:
    ctx = {"licences": await licence_service.list_all(session), "form": form or {}, "error": error}
    return render(request, "licences/licence_list.html", ctx, status_code=status_code)


@router.get("/licences")
async def licences(request: Request, session: SessionDep, _: LicencesRead) -> Response:
    return await _licence_list(request, session)


@router.post("/licences")
async def create_licence(request: Request, session: SessionDep, _: LicencesWrite) -> Response:
    form = await request.form()
    values = {k: str(form.get(k) or "").strip() for k in ("name", "sku", "seats", "description")}
    try:
        created = await licence_service.create(session, LicenceCreate.model_validate(values))
    except (ValidationError, CorralError) as exc:
        error, status = _failure(exc)
        return await _licence_list(request, session, form=values, error=error, status_code=status)
    return redirect(request, f"/portal/licences/{created.id}", f"Licence {created.name} created.")


async def _licence_detail(
    request: Request,
    session: SessionDep,
    principal: Principal,
    licence_id: uuid.UUID,
    *,
    form: dict[str, str] | None = None,
    error: str | None = None,
    status_code: int = 200,
) -> Response:
    licence = await licence_service.get_out(session, licence_id)
    values = form or {
        "name": licence.name,
        "sku": licence.sku,
        "seats": str(licence.seats),
        "description": licence.description,
    }
    ctx = {
        "licence": licence,
        "holders": await licence_service.holders(session, principal, licence_id),
        "form": values,
        "error": error,
    }
    return render(request, "licences/licence_detail.html", ctx, status_code=status_code)


@router.get("/licences/{licence_id:uuid}")
async def licence_detail(
    request: Request, licence_id: uuid.UUID, session: SessionDep, principal: LicencesRead
) -> Response:
    return await _licence_detail(request, session, principal, licence_id)


@router.post("/licences/{licence_id:uuid}/edit")
async def update_licence(
    request: Request, licence_id: uuid.UUID, session: SessionDep, principal: LicencesWrite
) -> Response:
    form = await request.form()
    values = {k: str(form.get(k) or "").strip() for k in ("name", "sku", "seats", "description")}
    await licence_service.get(session, licence_id)  # 404 as a page of its own
    try:
        await licence_service.update(session, licence_id, LicenceUpdate.model_validate(values))
    except (ValidationError, CorralError) as exc:
        error, status = _failure(exc)
        return await _licence_detail(
            request, session, principal, licence_id, form=values, error=error, status_code=status
        )
    return redirect(request, f"/portal/licences/{licence_id}", "Licence saved.")


@router.post("/licences/{licence_id:uuid}/delete")
async def delete_licence(
    request: Request, licence_id: uuid.UUID, session: SessionDep, _: LicencesWrite
) -> Response:
    try:
        await licence_service.delete(session, licence_id)
    except CorralError as exc:
        if exc.status_code == 404:
            raise
        return redirect(request, f"/portal/licences/{licence_id}", exc.detail, "error")
    return redirect(request, "/portal/licences", "Licence deleted.")
