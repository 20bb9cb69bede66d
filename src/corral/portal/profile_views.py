"""Admin center pages for configuration profiles: list, the create flow shaped like Intune's (platform →
basics → settings picked from the catalog, by search and category → scope tags → review + create; assignments
follow), editing, the profile's page with its status report (devices by state and per setting, each count
opening the devices behind it, CSV) and its versions. The editor is generated from the settings catalog:
every constraint the catalog states is an attribute of its control (enforced by the browser) and checked
again by the service (corral.profiles.service), which the /api/v1 twins call too."""

from __future__ import annotations

import base64
import contextlib
import json
import uuid
from typing import Annotated, Any, cast

from fastapi import Depends, Query, Request
from fastapi.responses import Response
from pydantic import ValidationError
from sqlalchemy import Select, func, select
from starlette.datastructures import UploadFile

from corral.auth.dependencies import Require
from corral.devices import repository as devices_repository
from corral.errors import CorralError
from corral.kit.db import SessionDep
from corral.kit.deps import SettingsDep
from corral.kit.routing import APIRouter
from corral.models import ConfigurationProfile, Device, Platform, ScopeTag, device_targets
from corral.portal.rendering import first_error, redirect, render
from corral.profiles import catalog, custom
from corral.profiles.catalog import Setting
from corral.profiles.service import ProfileCreate, ProfileUpdate, profile_service, redact, reveal
from corral.profiles.status import STATES, profile_status, profile_status_devices
from corral.rbac.permissions import P
from corral.rbac.principal import Principal

router = APIRouter(prefix="/portal", include_in_schema=False)

ProfilesRead = Annotated[Principal, Depends(Require(P.profiles_read))]
ProfilesWrite = Annotated[Principal, Depends(Require(P.profiles_write))]
#: Settings edited as rows (a list's entries, OMA-URI rows).
ROW_TYPES = ("list", "oma_uri")
#: Empty rows offered below a list setting's entries.
EXTRA_ROWS = 2
STATE_LABELS = {
    "succeeded": "Succeeded",
    "error": "Error",
    "conflict": "Conflict",
    "not_applicable": "Not applicable",
    "pending": "Pending",
}


def _platform(value: str) -> Platform | None:
    return Platform(value) if value in {p.value for p in Platform} else None


def _settings_for(platform: Platform) -> list[Setting]:
    return [s for s in catalog.load().settings if platform in s.platforms]


# ------------------------------------------------------------------------------------------- list
@router.get("/configuration-profiles")
async def configuration_profiles(
    request: Request,
    session: SessionDep,
    principal: ProfilesRead,
    search: Annotated[str, Query(max_length=200)] = "",
    platform: Annotated[str, Query(max_length=16)] = "",
    scope_tag: Annotated[str, Query(max_length=128)] = "",
) -> Response:
    profiles = await profile_service.page(
        session, principal, search=search or None, platform=_platform(platform)
    )
    if scope_tag:
        profiles = [p for p in profiles if scope_tag in {t.name for t in p.scope_tags}]
    reached = cast(
        "Select[Any]",
        select(device_targets.c.assignable_id, func.count()).join(
            Device, Device.id == device_targets.c.device_id
        ),
    )
    scoped = devices_repository.scoped(reached, principal.scope_for(P.devices_read))
    counts = dict(
        (
            await session.execute(
                scoped.where(device_targets.c.assignable_id.in_([p.id for p in profiles])).group_by(
                    device_targets.c.assignable_id
                )
            )
        ).all()
    )
    tags = (await session.scalars(select(ScopeTag).order_by(ScopeTag.name))).all()
    return render(
        request,
        "profiles/list.html",
        {
            "profiles": profiles,
            "search": search,
            "platform": platform,
            "scope_tag": scope_tag,
            "tags": tags,
            "platforms": list(Platform),
            "device_counts": counts,
        },
    )


# ------------------------------------------------------------------------------------------- the editor
def _raw(setting: Setting, value: Any) -> Any:
    """A stored value as the form shows it: text for scalars, rows of text for lists (secrets never)."""
    if setting.type in ROW_TYPES:
        rows = []
        for entry in value if isinstance(value, list) else []:
            row: dict[str, Any] = {}
            for item in setting.items or []:
                found = entry.get(item.name) if isinstance(entry, dict) else None
                if item.secret:
                    row[item.name] = ""
                    row[f"{item.name}.__stored"] = found is not None
                elif isinstance(found, bool):
                    row[item.name] = "true" if found else "false"
                else:
                    row[item.name] = "" if found is None else str(found)
            rows.append(row)
        return rows
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, dict):
        return json.dumps(value, indent=2, sort_keys=True)
    return "" if value is None else str(value)


def _parse_scalar(kind: str, raw: str) -> Any:
    if kind == "boolean":
        return raw == "true"
    if kind == "integer":
        try:
            return int(raw)
        except ValueError:
            return raw  # refused by validation, naming the setting
    return raw


def _uploaded_profile(upload: Any) -> str:
    """A .mobileconfig file chosen in the form, as the text the setting takes: its XML, or base64 of a binary
    or signed profile (empty when no file was chosen). A file over the limit is read one byte past it, for
    the validation to refuse with the limit."""
    if not isinstance(upload, UploadFile) or not upload.filename:
        return ""
    data = upload.file.read(custom.MAX_MOBILECONFIG_BYTES + 1)
    if data.lstrip()[:1] == b"<":
        with contextlib.suppress(UnicodeDecodeError):
            return data.decode("utf-8")
    return base64.b64encode(data).decode("ascii")


def _form_values(
    form: Any, platform: Platform, stored: dict[str, Any] | None, settings: Any
) -> dict[str, Any]:
    """The form as posted: basics, the settings it configures (empty = not configured), scope tags. A secret
    left empty on a row that had one keeps it (the stored secret of the row it came from)."""
    revealed = reveal(stored or {}, settings) if stored else {}
    values: dict[str, Any] = {}
    raw: dict[str, Any] = {}
    for setting in _settings_for(platform):
        key = f"s.{setting.id}"
        if setting.type not in ROW_TYPES:
            text = str(form.get(key) or "")
            if setting.type == "mobileconfig":
                text = _uploaded_profile(form.get(f"{key}.file")) or text
            text = text if setting.type in ("string", "mobileconfig", "json") else text.strip()
            raw[setting.id] = text
            if text.strip():
                values[setting.id] = _parse_scalar(setting.type, text.strip())
            continue
        rows = []
        entries = []
        for index in range(int(setting.max_items or 0)):
            prefix = f"{key}.{index}."
            if not any(k.startswith(prefix) for k in form):
                continue
            origin_text = str(form.get(f"{prefix}__from") or "")
            origin = int(origin_text) if origin_text.isdigit() else None
            row: dict[str, Any] = {"__from": origin_text}
            entry: dict[str, Any] = {}
            typed = False  # something of the row's own (a kept secret alone is a cleared row)
            before = revealed.get(setting.id) or []
            for item in setting.items or []:
                text = str(form.get(prefix + item.name) or "").strip()
                typed = typed or bool(text)
                if not item.secret:
                    row[item.name] = text
                    if text:
                        entry[item.name] = _parse_scalar(item.type, text)
                    continue
                kept = (
                    before[origin].get(item.name)
                    if origin is not None and origin < len(before) and isinstance(before[origin], dict)
                    else None
                )
                row[item.name] = ""
                row[f"{item.name}.__typed"] = text  # kept through the review and a refusal, not stored
                row[f"{item.name}.__stored"] = kept is not None
                if text or kept is not None:
                    entry[item.name] = text or kept
            rows.append(row)
            if typed:
                entries.append(entry)
        raw[setting.id] = rows
        if entries:
            values[setting.id] = entries
    return {
        "name": str(form.get("name") or "").strip(),
        "description": str(form.get("description") or "").strip(),
        "platform": platform.value,
        "settings": values,
        "raw": raw,
        "scope_tag_ids": [str(v) for v in form.getlist("scope_tag_ids")],
        "search": str(form.get("search") or "").strip()[:200],
        "category": str(form.get("category") or "")[:100],
    }


def _matches(setting: Setting, search: str, category: str) -> bool:
    if category and setting.category != category:
        return False
    if search:
        needle = search.lower()
        return needle in setting.name.lower() or needle in setting.description.lower() or needle in setting.id
    return True


async def _form_ctx(
    session: SessionDep,
    values: dict[str, Any],
    *,
    profile: ConfigurationProfile | None = None,
    error: str | None = None,
    review: bool = False,
) -> dict[str, Any]:
    platform = Platform(values["platform"])
    settings = _settings_for(platform)
    categories: dict[str, list[Setting]] = {}
    for setting in settings:
        categories.setdefault(setting.category, []).append(setting)
    rows: dict[str, list[dict[str, Any]]] = {}
    for setting in settings:
        if setting.type in ROW_TYPES:
            given = list(values["raw"].get(setting.id) or [])
            for index, row in enumerate(given):
                row.setdefault("__from", str(index))
            target = min(int(setting.max_items or 0), len(given) + EXTRA_ROWS)
            given += [{"__from": ""} for _ in range(target - len(given))]
            rows[setting.id] = given
    tags = (await session.scalars(select(ScopeTag).order_by(ScopeTag.name))).all()
    return {
        "form": values,
        "profile": profile,
        "platform": platform,
        "categories": categories,
        "shown": {s.id for s in settings if _matches(s, values["search"], values["category"])},
        "rows": rows,
        "tags": tags,
        "error": error,
        "review": review,
        "catalog": catalog.load().by_id,
        "shown_value": _shown_value,
    }


def _shown_value(setting: Setting, value: Any) -> str:
    """A value for the review and the profile's page (secrets as •••)."""
    if setting.type == "mobileconfig" and isinstance(value, str):
        with contextlib.suppress(custom.PayloadError):  # base64 (binary, signed): read as its stored XML
            value = custom.mobileconfig(value)
        kinds = custom.mobileconfig_summary(value)
        return f"a profile with {len(kinds)} payload(s)" + (f": {', '.join(kinds)}" if kinds else "")
    if setting.type == "json":
        return json.dumps(value, sort_keys=True) if not isinstance(value, str) else value
    if setting.type in ROW_TYPES:
        parts = []
        for entry in value if isinstance(value, list) else []:
            fields = []
            for item in setting.items or []:
                if isinstance(entry, dict) and entry.get(item.name) is not None:
                    shown = "•••" if item.secret else entry[item.name]
                    fields.append(f"{item.name}: {shown}")
            parts.append(", ".join(str(f) for f in fields))
        return "; ".join(parts)
    if isinstance(value, bool):
        return "Yes" if value else "No"
    return str(value)


def _blank(platform: Platform) -> dict[str, Any]:
    return {
        "name": "",
        "description": "",
        "platform": platform.value,
        "settings": {},
        "raw": {},
        "scope_tag_ids": [],
        "search": "",
        "category": "",
    }


def _values_of(profile: ConfigurationProfile) -> dict[str, Any]:
    by_id = catalog.load().by_id
    stored = profile.settings or {}
    return {
        "name": profile.name,
        "description": profile.description,
        "platform": str(profile.platform),
        "settings": redact(stored),
        "raw": {sid: _raw(by_id[sid], value) for sid, value in stored.items() if sid in by_id},
        "scope_tag_ids": [str(t.id) for t in profile.scope_tags],
        "search": "",
        "category": "",
    }


def _problem(exc: Exception) -> tuple[str, int]:
    if isinstance(exc, ValidationError):
        return first_error(exc), 422
    assert isinstance(exc, CorralError)
    return exc.detail, exc.status_code if exc.status_code >= 400 else 422


@router.get("/configuration-profiles/new")
async def new_configuration_profile(
    request: Request,
    session: SessionDep,
    _: ProfilesWrite,
    platform: Annotated[str, Query(max_length=16)] = "",
) -> Response:
    chosen = _platform(platform)
    if chosen is None:
        return render(
            request,
            "choose_platform.html",
            {
                "platforms": list(Platform),
                "kind": "configuration profile",
                "list_title": "Configuration profiles",
                "base": "/portal/configuration-profiles",
                "intro": "A profile is for one platform: the settings catalog offers what that platform "
                "can apply.",
            },
        )
    return render(request, "profiles/form.html", await _form_ctx(session, _blank(chosen)))


@router.post("/configuration-profiles/new")
async def create_configuration_profile(
    request: Request, session: SessionDep, settings: SettingsDep, principal: ProfilesWrite
) -> Response:
    form = await request.form()
    platform = _platform(str(form.get("platform") or ""))
    if platform is None:
        return redirect(
            request, "/portal/configuration-profiles/new", "Choose a platform first.", kind="error"
        )
    values = _form_values(form, platform, None, settings)
    if form.get("find") or form.get(
        "back"
    ):  # search the catalog, or back from the review: keep what was typed
        return render(request, "profiles/form.html", await _form_ctx(session, values))
    try:
        data = ProfileCreate(
            name=values["name"],
            description=values["description"],
            platform=platform,
            settings=values["settings"],
            scope_tag_ids=values["scope_tag_ids"],
        )
        # The review shows what will be created, checked as the service will check it.
        profile_service.validate(platform, data.settings, settings)
        if form.get("step") != "create":
            return render(request, "profiles/form.html", await _form_ctx(session, values, review=True))
        profile = await profile_service.create(session, principal, data, settings)
    except (ValidationError, CorralError) as exc:
        detail, status = _problem(exc)
        ctx = await _form_ctx(session, values, error=detail)
        return render(request, "profiles/form.html", ctx, status_code=status)
    return redirect(
        request,
        f"/portal/configuration-profiles/{profile.id}/assignments",
        f"Configuration profile {profile.name} created. Assign it to groups to reach devices.",
    )


@router.get("/configuration-profiles/{profile_id:uuid}/edit")
async def edit_configuration_profile(
    request: Request, profile_id: uuid.UUID, session: SessionDep, principal: ProfilesWrite
) -> Response:
    profile = await profile_service.get(session, principal, profile_id, P.profiles_write)
    return render(
        request, "profiles/form.html", await _form_ctx(session, _values_of(profile), profile=profile)
    )


@router.post("/configuration-profiles/{profile_id:uuid}/edit")
async def update_configuration_profile(
    request: Request,
    profile_id: uuid.UUID,
    session: SessionDep,
    settings: SettingsDep,
    principal: ProfilesWrite,
) -> Response:
    profile = await profile_service.get(session, principal, profile_id, P.profiles_write)
    form = await request.form()
    values = _form_values(form, Platform(profile.platform), profile.settings, settings)
    if form.get("find"):
        return render(request, "profiles/form.html", await _form_ctx(session, values, profile=profile))
    try:
        data = ProfileUpdate(
            name=values["name"],
            description=values["description"],
            settings=values["settings"],
            scope_tag_ids=values["scope_tag_ids"],
        )
        await profile_service.update(session, principal, profile_id, data, settings)
    except (ValidationError, CorralError) as exc:
        detail, status = _problem(exc)
        ctx = await _form_ctx(session, values, profile=profile, error=detail)
        return render(request, "profiles/form.html", ctx, status_code=status)
    return redirect(
        request,
        f"/portal/configuration-profiles/{profile_id}",
        f"Configuration profile {values['name']} saved.",
    )


@router.post("/configuration-profiles/{profile_id:uuid}/delete")
async def delete_configuration_profile(
    request: Request, profile_id: uuid.UUID, session: SessionDep, principal: ProfilesWrite
) -> Response:
    profile = await profile_service.get(session, principal, profile_id, P.profiles_write)
    name = profile.name
    await profile_service.delete(session, principal, profile_id)
    return redirect(request, "/portal/configuration-profiles", f"Configuration profile {name} deleted.")


# ------------------------------------------------------------------------------------------- page, report
@router.get("/configuration-profiles/{profile_id:uuid}")
async def configuration_profile(
    request: Request, profile_id: uuid.UUID, session: SessionDep, principal: ProfilesRead
) -> Response:
    profile = await profile_service.get(session, principal, profile_id)
    status = await profile_status(session, principal, profile)
    versions = await profile_service.versions(session, principal, profile_id)
    return render(
        request,
        "profiles/detail.html",
        {
            "profile": profile,
            "settings": redact(profile.settings or {}),
            "status": status,
            "states": STATES,
            "state_labels": STATE_LABELS,
            "versions": versions[:20],
            "catalog": catalog.load().by_id,
            "shown_value": _shown_value,
            "can_write": principal.has(P.profiles_write),
        },
    )


@router.get("/configuration-profiles/{profile_id:uuid}/devices")
async def configuration_profile_devices(
    request: Request,
    profile_id: uuid.UUID,
    session: SessionDep,
    principal: ProfilesRead,
    state: Annotated[str, Query(max_length=32)] = "",
    setting_id: Annotated[str, Query(max_length=64)] = "",
) -> Response:
    profile = await profile_service.get(session, principal, profile_id)
    chosen = state if state in STATES else None
    setting = catalog.load().by_id.get(setting_id) if setting_id in (profile.settings or {}) else None
    page = await profile_status_devices(
        session,
        principal,
        profile,
        chosen,
        setting.id if setting else None,
    )
    return render(
        request,
        "profiles/devices.html",
        {
            "profile": profile,
            "page": page,
            "state": chosen,
            "state_labels": STATE_LABELS,
            "setting": setting,
        },
    )
