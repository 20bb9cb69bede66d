"""Sign-in, second factor, sign-out, and the signed-in person's own account page."""

from __future__ import annotations

import secrets
from typing import Annotated
from urllib.parse import quote, urlsplit

import segno
from fastapi import Depends, Form, Request
from fastapi.responses import RedirectResponse, Response
from sqlalchemy.ext.asyncio import AsyncSession

from corral.audit.refusals import RefusalsDep
from corral.auth.dependencies import PUBLIC, Authenticated, resolve_principal, session_cookie_name
from corral.auth.service import auth_service, session_expiry
from corral.config import Settings
from corral.errors import CorralError, NotAuthenticated, TooManyRequests
from corral.identity.service import identity_service
from corral.kit.db import SessionDep
from corral.kit.deps import SessionMakerDep, SettingsDep
from corral.kit.routing import APIRouter
from corral.kit.security import SecretBox, constant_time_equals, hmac_sign
from corral.models import UserSession
from corral.portal.rendering import redirect, render
from corral.rbac.principal import Principal
from corral.tenant.service import tenant_service
from corral.users.service import user_service

router = APIRouter(prefix="/portal", include_in_schema=False)

PRESESSION_COOKIE = "corral_presession"
SignedIn = Annotated[Principal, Depends(Authenticated())]
SignedInMayChangePassword = Annotated[Principal, Depends(Authenticated(allow_password_change=True))]


def _safe_next(target: str | None) -> str:
    """Only same-site, absolute paths: never an open redirect."""
    if not target:
        return "/portal"
    parts = urlsplit(target)
    if (
        parts.scheme
        or parts.netloc
        or not target.startswith("/")
        or target.startswith("//")
        or "\\" in target
    ):
        return "/portal"
    return target


def _presession_token(request: Request, settings: Settings) -> tuple[str, str | None]:
    """(form token, cookie to set) for forms shown before sign-in (login CSRF)."""
    cookie = request.cookies.get(PRESESSION_COOKIE)
    new_cookie = None
    if not cookie or len(cookie) > 100:
        cookie = new_cookie = secrets.token_urlsafe(24)
    return hmac_sign(settings.resolved_secret_key(), "presession-csrf", cookie), new_cookie


def _check_presession(request: Request, settings: Settings, sent: str) -> bool:
    cookie = request.cookies.get(PRESESSION_COOKIE)
    if not cookie or not sent:
        return False
    return constant_time_equals(sent, hmac_sign(settings.resolved_secret_key(), "presession-csrf", cookie))


def _with_presession(response: Response, settings: Settings, new_cookie: str | None) -> Response:
    if new_cookie:
        response.set_cookie(
            PRESESSION_COOKIE,
            new_cookie,
            httponly=True,
            secure=settings.secure_cookies,
            samesite="lax",
            path="/",
        )
    return response


def known_client_cookie_name(secure: bool) -> str:
    return "__Host-corral_known_client" if secure else "corral_known_client"


def _known_client(request: Request, settings: Settings) -> str | None:
    return request.cookies.get(known_client_cookie_name(settings.secure_cookies))


def _set_known_client_cookie(response: Response, settings: Settings, value: str | None) -> None:
    """The browser is a known client of the account it just signed in to (see auth_service); it stays one
    after sign-out. Sent only with same-site requests, never readable by scripts."""
    if value is None:
        return
    response.set_cookie(
        known_client_cookie_name(settings.secure_cookies),
        value,
        max_age=settings.signin_known_client_days * 86400,
        httponly=True,
        secure=settings.secure_cookies,
        samesite="strict",
        path="/",
    )


def _set_session_cookie(
    response: Response, settings: Settings, token: str, user_session: UserSession
) -> None:
    response.set_cookie(
        session_cookie_name(settings.secure_cookies),
        token,
        httponly=True,
        secure=settings.secure_cookies,
        samesite="lax",
        path="/",
        expires=session_expiry(settings, user_session),
    )


async def _sign_in_page(
    session: AsyncSession,
    request: Request,
    settings: Settings,
    *,
    error: str | None = None,
    username: str = "",
    next_url: str = "/portal",
    status_code: int = 200,
    headers: dict[str, str] | None = None,
) -> Response:
    token, new_cookie = _presession_token(request, settings)
    response = render(
        request,
        "auth/sign_in.html",
        {
            "error": error,
            "username": username,
            "next": next_url,
            "form_token": token,
            "sso": await identity_service.sign_in_options(session),
        },
        status_code=status_code,
        headers=headers,
    )
    return _with_presession(response, settings, new_cookie)


@router.get("/sign-in", dependencies=[PUBLIC])
async def sign_in_form(
    request: Request, settings: SettingsDep, session: SessionDep, next: str | None = None
) -> Response:
    principal = await resolve_principal(request, session, settings)
    if principal is not None:
        return RedirectResponse(_safe_next(next), status_code=303)
    return await _sign_in_page(session, request, settings, next_url=_safe_next(next))


@router.post("/sign-in", dependencies=[PUBLIC])
async def sign_in(
    request: Request,
    session: SessionDep,
    sessionmaker: SessionMakerDep,
    settings: SettingsDep,
    refusals: RefusalsDep,
    username: Annotated[str, Form(max_length=320)] = "",
    password: Annotated[str, Form(max_length=1024)] = "",
    form_token: Annotated[str, Form(max_length=200)] = "",
    next: Annotated[str, Form(max_length=2000)] = "/portal",
) -> Response:
    next_url = _safe_next(next)
    if not _check_presession(request, settings, form_token):
        return await _sign_in_page(
            session,
            request,
            settings,
            username=username,
            next_url=next_url,
            status_code=403,
            error="The sign-in form expired. Please try again.",
        )
    if not username.strip() or not password:
        return await _sign_in_page(
            session,
            request,
            settings,
            username=username,
            next_url=next_url,
            status_code=400,
            error="Enter your sign-in name and password.",
        )
    try:
        result = await auth_service.sign_in(
            session,
            sessionmaker,
            settings,
            username=username,
            password=password,
            refusals=refusals,
            known_client=_known_client(request, settings),
        )
    except TooManyRequests as exc:
        return await _sign_in_page(
            session,
            request,
            settings,
            username=username,
            next_url=next_url,
            status_code=429,
            error=exc.detail,
            headers=exc.headers,
        )
    except NotAuthenticated as exc:
        return await _sign_in_page(
            session,
            request,
            settings,
            username=username,
            next_url=next_url,
            status_code=401,
            error=exc.detail,
        )
    if result.needs_second_factor:
        target = f"/portal/sign-in/verify?next={quote(next_url, safe='')}"
    elif result.user.must_change_password:
        target = "/portal/account/password"
    else:
        target = next_url
    response = RedirectResponse(target, status_code=303)
    _set_session_cookie(response, settings, result.token, result.user_session)
    _set_known_client_cookie(response, settings, result.known_client_cookie)
    response.delete_cookie(PRESESSION_COOKIE, path="/")
    return response


@router.get("/sign-in/verify", dependencies=[PUBLIC])
async def second_factor_form(
    request: Request, session: SessionDep, settings: SettingsDep, next: str | None = None
) -> Response:
    await resolve_principal(request, session, settings)
    if request.state.pending_session is None:
        return RedirectResponse("/portal/sign-in", status_code=303)
    return render(
        request,
        "auth/verify.html",
        {"next": _safe_next(next), "pending_csrf": request.state.pending_session.csrf_token},
    )


@router.post("/sign-in/verify", dependencies=[PUBLIC])
async def second_factor(
    request: Request,
    session: SessionDep,
    sessionmaker: SessionMakerDep,
    settings: SettingsDep,
    refusals: RefusalsDep,
    code: Annotated[str, Form(max_length=16)] = "",
    csrf_token: Annotated[str, Form(max_length=200)] = "",
    next: Annotated[str, Form(max_length=2000)] = "/portal",
) -> Response:
    await resolve_principal(request, session, settings)
    pending: UserSession | None = request.state.pending_session
    if pending is None or not constant_time_equals(csrf_token, pending.csrf_token):
        return RedirectResponse("/portal/sign-in", status_code=303)
    user = request.state.user
    try:
        result = await auth_service.verify_second_factor(
            session,
            sessionmaker,
            settings,
            user_session=pending,
            user=user,
            code=code,
            refusals=refusals,
            known_client=_known_client(request, settings),
        )
    except CorralError as exc:
        return render(
            request,
            "auth/verify.html",
            {"next": _safe_next(next), "pending_csrf": pending.csrf_token, "error": exc.detail},
            status_code=exc.status_code,
            headers=exc.headers,
        )
    target = "/portal/account/password" if user.must_change_password else _safe_next(next)
    response = RedirectResponse(target, status_code=303)
    _set_session_cookie(response, settings, result.token, result.user_session)
    _set_known_client_cookie(response, settings, result.known_client_cookie)
    return response


@router.post("/sign-out")
async def sign_out(
    request: Request, session: SessionDep, settings: SettingsDep, _: SignedInMayChangePassword
) -> Response:
    await auth_service.sign_out(session, request.state.user_session, request.state.user)
    response = RedirectResponse("/portal/sign-in?signed_out=1", status_code=303)
    response.delete_cookie(
        session_cookie_name(settings.secure_cookies), path="/", secure=settings.secure_cookies, httponly=True
    )
    return response


# ------------------------------------------------------------------------------------------- own account
@router.get("/account")
async def account(request: Request, principal: SignedIn) -> Response:
    return render(request, "auth/account.html", {"user": request.state.user})


@router.get("/account/password")
async def password_form(request: Request, principal: SignedInMayChangePassword) -> Response:
    return render(request, "auth/password.html", {"forced": request.state.user.must_change_password})


@router.post("/account/password")
async def change_password(
    request: Request,
    session: SessionDep,
    settings: SettingsDep,
    principal: SignedInMayChangePassword,
    current_password: Annotated[str, Form(max_length=1024)] = "",
    new_password: Annotated[str, Form(max_length=1024)] = "",
    confirm_password: Annotated[str, Form(max_length=1024)] = "",
) -> Response:
    user = request.state.user
    forced = user.must_change_password
    if new_password != confirm_password:
        return render(
            request,
            "auth/password.html",
            {"forced": forced, "error": "The two new passwords differ."},
            status_code=400,
        )
    try:
        await user_service.change_own_password(
            session, user, current_password, new_password, keep_session_id=principal.session_id
        )
    except CorralError as exc:
        return render(
            request,
            "auth/password.html",
            {"forced": forced, "error": exc.detail},
            status_code=exc.status_code,
        )
    response = redirect(request, "/portal" if forced else "/portal/account", "Your password was changed.")
    # The change forgot every known client of the account; this browser, signed in and knowing the current
    # password, stays one.
    _set_known_client_cookie(response, settings, auth_service.known_client_cookie(settings, user))
    return response


def _totp_setup_context(request: Request, settings: Settings, secret: str, issuer: str) -> dict[str, object]:
    uri = auth_service.totp_uri(secret, request.state.user, issuer)
    qr = segno.make(uri, error="m")
    sealed = SecretBox(settings.resolved_secret_key(), "totp-setup").encrypt(secret.encode())
    return {"secret": secret, "qr_svg": qr.svg_data_uri(scale=5, border=2), "sealed": sealed}


@router.get("/account/two-step")
async def totp_setup(request: Request, session: SessionDep, settings: SettingsDep, _: SignedIn) -> Response:
    if request.state.user.totp_enabled:
        return redirect(request, "/portal/account")
    tenant = await tenant_service.get(session)
    secret = auth_service.new_totp_secret()
    return render(
        request,
        "auth/two_step.html",
        _totp_setup_context(request, settings, secret, tenant.organization_name),
    )


@router.post("/account/two-step")
async def totp_enable(
    request: Request,
    session: SessionDep,
    settings: SettingsDep,
    _: SignedIn,
    sealed: Annotated[str, Form(max_length=1000)] = "",
    code: Annotated[str, Form(max_length=16)] = "",
) -> Response:
    user = request.state.user
    try:
        secret = SecretBox(settings.resolved_secret_key(), "totp-setup").decrypt(sealed).decode()
    except ValueError:
        return redirect(
            request, "/portal/account/two-step", "The set-up expired; scan the new code.", "error"
        )
    try:
        await user_service.enable_totp(session, settings, user, secret, code)
    except CorralError as exc:
        tenant = await tenant_service.get(session)
        ctx = _totp_setup_context(request, settings, secret, tenant.organization_name)
        ctx["error"] = exc.detail
        return render(request, "auth/two_step.html", ctx, status_code=exc.status_code)
    return redirect(request, "/portal/account", "Two-step verification is on.")


@router.post("/account/two-step/disable")
async def totp_disable(
    request: Request,
    session: SessionDep,
    _: SignedIn,
    password: Annotated[str, Form(max_length=1024)] = "",
) -> Response:
    try:
        await user_service.disable_totp(session, request.state.user, password)
    except CorralError as exc:
        return redirect(request, "/portal/account", exc.detail, "error")
    return redirect(request, "/portal/account", "Two-step verification is off.")
