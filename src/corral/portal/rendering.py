"""Server-rendered pages: one Jinja2 environment, navigation filtered by permission, flash messages."""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from fastapi import Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from fastapi.templating import Jinja2Templates
from markupsafe import Markup
from pydantic import ValidationError

from corral.config import Settings
from corral.kit.paths import TEMPLATES_DIR
from corral.kit.security import SecretBox, constant_time_equals, hmac_sign
from corral.kit.text import without_bidi_controls
from corral.rbac.permissions import P
from corral.rbac.principal import Principal

templates = Jinja2Templates(directory=str(TEMPLATES_DIR))
FLASH_COOKIE = "corral_flash"


def _datetime(value: datetime | None) -> str:
    return value.strftime("%Y-%m-%d %H:%M UTC") if value else "—"


templates.env.filters["dt"] = _datetime


def _without_bidi_controls(value: Any) -> Any:
    """Every value a page shows loses the characters that reorder the text around them (U+202E…): names are
    cleaned when they are saved (kit.text), but text stored earlier, or reported by a device (inventory),
    still cannot make a page read in another order than it is written."""
    if isinstance(value, Markup):
        return Markup(without_bidi_controls(value))  # noqa: S704 - already markup, characters only removed
    if isinstance(value, str):
        return without_bidi_controls(value)
    return value


templates.env.finalize = _without_bidi_controls  # set before any template is compiled: applies to all


@dataclass(frozen=True)
class NavItem:
    section: str
    label: str
    href: str
    permissions: tuple[P, ...]  # any one of them shows the item
    # Shown only to administrators (people holding some permission), even with no permission listed.
    admins_only: bool = False


NAVIGATION: tuple[NavItem, ...] = (
    NavItem("Home", "Dashboard", "/portal", (), admins_only=True),
    # Self-service: everyone signed in, end users (no role) included.
    NavItem("Home", "My devices", "/portal/my-devices", ()),
    NavItem("Devices", "All devices", "/portal/devices", (P.devices_read,)),
    NavItem("Devices", "Enrollment", "/portal/enrollment", (P.enrollment_read,)),
    NavItem("Devices", "Approvals", "/portal/approvals", (P.remote_approve,)),
    NavItem("Devices", "Compliance policies", "/portal/compliance-policies", (P.compliance_read,)),
    NavItem("Devices", "Configuration profiles", "/portal/configuration-profiles", (P.profiles_read,)),
    NavItem("Devices", "Filters", "/portal/assignment-filters", (P.filters_read,)),
    NavItem("Users", "All users", "/portal/users", (P.users_read,)),
    NavItem("Groups", "All groups", "/portal/groups", (P.groups_read,)),
    NavItem("Tenant administration", "Administrators", "/portal/admins", (P.roles_read, P.users_read)),
    NavItem("Tenant administration", "Roles", "/portal/roles", (P.roles_read,)),
    NavItem("Tenant administration", "Role assignments", "/portal/role-assignments", (P.roles_read,)),
    NavItem("Tenant administration", "Scope tags", "/portal/scope-tags", (P.scope_tags_read,)),
    NavItem("Tenant administration", "API tokens", "/portal/api-tokens", (), admins_only=True),
    NavItem("Tenant administration", "Licences", "/portal/licences", (P.licences_read,)),
    NavItem(
        "Tenant administration", "Identity connections", "/portal/identity-connections", (P.settings_read,)
    ),
    NavItem("Tenant administration", "Audit log", "/portal/audit", (P.audit_read,)),
    NavItem("Tenant administration", "Settings", "/portal/settings", (P.settings_read,)),
)


def navigation(principal: Principal | None) -> list[tuple[str, list[NavItem]]]:
    if principal is None:
        return []
    sections: dict[str, list[NavItem]] = {}
    for item in NAVIGATION:
        if item.admins_only and not principal.is_admin:
            continue
        if not item.permissions or principal.has_any(*item.permissions):
            sections.setdefault(item.section, []).append(item)
    return list(sections.items())


def _settings(request: Request) -> Settings:
    settings: Settings = request.app.state.settings
    return settings


def set_flash(response: Response, request: Request, message: str, kind: str = "success") -> None:
    payload = json.dumps({"m": message[:500], "k": kind}, separators=(",", ":"))
    settings = _settings(request)
    signature = hmac_sign(settings.resolved_secret_key(), "flash", payload)
    response.set_cookie(
        FLASH_COOKIE,
        f"{signature}.{payload}",
        max_age=60,
        httponly=True,
        secure=settings.secure_cookies,
        samesite="lax",
        path="/",
    )


def pop_flash(request: Request) -> dict[str, str] | None:
    raw = request.cookies.get(FLASH_COOKIE)
    if not raw or "." not in raw:
        return None
    signature, _, payload = raw.partition(".")
    expected = hmac_sign(_settings(request).resolved_secret_key(), "flash", payload)
    if not constant_time_equals(signature, expected):
        return None
    try:
        data = json.loads(payload)
    except ValueError:
        return None
    request.state.flash_consumed = True
    return {"message": str(data.get("m", "")), "kind": str(data.get("k", "success"))}


REVEAL_COOKIE = "corral_reveal"
REVEAL_SECONDS = 120


def set_reveal(response: Response, request: Request, kind: str, payload: dict[str, str]) -> None:
    """Hand a secret shown once (a new token, a one-time password) to the next page in an encrypted,
    short-lived cookie, so the page that shows it is a GET: reloading it does not repeat the POST."""
    settings = _settings(request)
    body = json.dumps({"k": kind, "p": payload, "exp": int(time.time()) + REVEAL_SECONDS})
    response.set_cookie(
        REVEAL_COOKIE,
        SecretBox(settings.resolved_secret_key(), "reveal").encrypt(body.encode()),
        max_age=REVEAL_SECONDS,
        httponly=True,
        secure=settings.secure_cookies,
        samesite="strict",
        path="/portal",
    )


def read_reveal(request: Request, kind: str) -> dict[str, str] | None:
    """The secret handed over by ``set_reveal``; the page showing it must ``clear_reveal`` its response."""
    raw = request.cookies.get(REVEAL_COOKIE)
    if not raw:
        return None
    try:
        data = json.loads(SecretBox(_settings(request).resolved_secret_key(), "reveal").decrypt(raw))
    except ValueError:
        return None
    if data.get("k") != kind or int(data.get("exp", 0)) < time.time():
        return None
    payload: dict[str, str] = data.get("p", {})
    return payload


def clear_reveal(response: Response) -> Response:
    response.delete_cookie(REVEAL_COOKIE, path="/portal")
    return response


def render(
    request: Request,
    template: str,
    context: dict[str, Any] | None = None,
    *,
    status_code: int = 200,
    headers: dict[str, str] | None = None,
) -> HTMLResponse:
    principal: Principal | None = getattr(request.state, "principal", None)
    ctx: dict[str, Any] = {
        "principal": principal,
        "nav": navigation(principal),
        "csrf_token": principal.csrf_token if principal else None,
        "flash": pop_flash(request),
        "current_path": request.url.path,
        "P": P,
    }
    ctx.update(context or {})
    response = templates.TemplateResponse(request, template, ctx, status_code=status_code, headers=headers)
    if getattr(request.state, "flash_consumed", False):
        response.delete_cookie(FLASH_COOKIE, path="/")
    return response


def render_fragment(
    request: Request, template: str, context: dict[str, Any], *, headers: dict[str, str] | None = None
) -> HTMLResponse:
    """A piece of a page (for the page's own script to swap in), from the template the page includes.
    Leaves the flash message for the next full page."""
    principal: Principal | None = getattr(request.state, "principal", None)
    ctx: dict[str, Any] = {
        "principal": principal,
        "csrf_token": principal.csrf_token if principal else None,
        "current_path": request.url.path,
        "P": P,
        **context,
    }
    return templates.TemplateResponse(request, template, ctx, headers=headers)


def render_error(
    request: Request, status: int, title: str, detail: str, headers: dict[str, str] | None = None
) -> HTMLResponse:
    return render(
        request,
        "error.html",
        {"title": title, "detail": detail, "status": status},
        status_code=status,
        headers=headers,
    )


def redirect(
    request: Request, url: str, message: str | None = None, kind: str = "success"
) -> RedirectResponse:
    response = RedirectResponse(url, status_code=303)
    if message:
        set_flash(response, request, message, kind)
    return response


def first_error(exc: ValidationError) -> str:
    """The first problem of a form's validation, for its page: "field: message"."""
    error = exc.errors()[0]
    where = ".".join(str(p) for p in error.get("loc", ()))
    message = str(error.get("msg", "invalid")).removeprefix("Value error, ")
    return f"{where}: {message}" if where else message
