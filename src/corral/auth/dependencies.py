"""The route guard. Every route depends on exactly one of ``Require(permission…)``, ``Authenticated()`` or
``Public()``; a test walks the route table to prove it. Require and Authenticated run before the request body
is read (kit/routing.py)."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Request
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from corral.audit.service import audit_service
from corral.auth.service import auth_service
from corral.errors import Forbidden, NotAuthenticated
from corral.kit import context
from corral.kit.db import SessionDep
from corral.kit.deps import SessionMakerDep, SettingsDep
from corral.kit.routing import HeaderGuard
from corral.kit.security import constant_time_equals
from corral.models import User, UserSession
from corral.rbac.permissions import P
from corral.rbac.principal import Principal

UNSAFE_METHODS = frozenset({"POST", "PUT", "PATCH", "DELETE"})
CSRF_HEADER = "x-csrf-token"
CSRF_FIELD = "csrf_token"


def session_cookie_name(secure: bool) -> str:
    return "__Host-corral_session" if secure else "corral_session"


class PasswordChangeRequired(Forbidden):
    title = "Password change required"


async def resolve_principal(request: Request, session: SessionDep, settings: SettingsDep) -> Principal | None:
    """The caller, from a bearer token or a session cookie; cached on the request."""
    if hasattr(request.state, "principal"):
        cached: Principal | None = request.state.principal
        return cached
    principal: Principal | None = None
    request.state.pending_session = None
    request.state.via_cookie = False
    authorization = request.headers.get("authorization")
    if authorization:
        scheme, _, token = authorization.partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            raise NotAuthenticated("Use 'Authorization: Bearer <API token>'.")
        principal = await auth_service.token_principal(session, token.strip())
        if principal is None:
            raise NotAuthenticated("The API token is invalid, expired or revoked.")
        context.set_actor(
            context.Actor(
                type="token",
                id=principal.user_id,
                name=principal.user_principal_name,
                token_id=principal.token_id,
            )
        )
    else:
        cookie = request.cookies.get(session_cookie_name(settings.secure_cookies))
        if cookie:
            found = await auth_service.session_from_token(
                session, request.app.state.sessionmaker, settings, cookie
            )
            if found is not None:
                user_session, user = found
                request.state.user = user
                request.state.user_session = user_session
                if user_session.pending_mfa:
                    request.state.pending_session = user_session
                else:
                    principal = await auth_service.principal_for(session, user, user_session=user_session)
                    request.state.via_cookie = True
                    context.set_actor(context.Actor(type="user", id=user.id, name=user.user_principal_name))
    request.state.principal = principal
    return principal


async def _check_csrf(
    request: Request, principal: Principal, sessionmaker: async_sessionmaker[AsyncSession]
) -> None:
    if request.method not in UNSAFE_METHODS or not request.state.via_cookie:
        return  # bearer tokens are not ambient credentials
    sent = request.headers.get(CSRF_HEADER)
    if sent is None and request.headers.get("content-type", "").startswith(
        ("application/x-www-form-urlencoded", "multipart/form-data")
    ):
        form = await request.form()
        value = form.get(CSRF_FIELD)
        sent = value if isinstance(value, str) else None
    if not sent or not principal.csrf_token or not constant_time_equals(sent, principal.csrf_token):
        await _refuse(request, sessionmaker, "missing or wrong CSRF token")
        raise Forbidden(
            "The form has expired or did not come from Corral (missing or wrong CSRF token). "
            "Reload the page and try again."
        )


async def _refuse(request: Request, sessionmaker: async_sessionmaker[AsyncSession], detail: str) -> None:
    if request.method in UNSAFE_METHODS:
        await audit_service.record_now(
            sessionmaker,
            activity="access.denied",
            category="authorization",
            operation=request.method.lower(),
            result="failure",
            target_type="route",
            target_name=request.url.path[:320],
            detail=detail,
        )


class Require(HeaderGuard):
    """Allow callers holding every listed permission (or any one, with ``any_of=True``)."""

    openapi_errors = (401, 403)  # not signed in; permission (or CSRF token) missing (kit/openapi.py)

    def __init__(self, *permissions: P, any_of: bool = False) -> None:
        if not permissions:
            raise ValueError("Require needs at least one permission")
        self.permissions = permissions
        self.any_of = any_of

    def __repr__(self) -> str:
        return f"Require({', '.join(self.permissions)}{', any_of=True' if self.any_of else ''})"

    async def __call__(
        self, request: Request, session: SessionDep, settings: SettingsDep, sessionmaker: SessionMakerDep
    ) -> Principal:
        principal = await resolve_principal(request, session, settings)
        if principal is None:
            raise NotAuthenticated("Sign in first.")
        await _check_csrf(request, principal, sessionmaker)
        if principal.must_change_password:
            raise PasswordChangeRequired("Choose a new password before doing anything else.")
        held = [principal.has(p) for p in self.permissions]
        if not (any(held) if self.any_of else all(held)):
            missing = [p.value for p, ok in zip(self.permissions, held, strict=True) if not ok]
            detail = (
                f"This needs the permission {' or '.join(missing) if self.any_of else ', '.join(missing)}."
            )
            await _refuse(request, sessionmaker, detail)
            raise Forbidden(detail)
        return principal


class Authenticated(HeaderGuard):
    """Allow any signed-in person (self-service: own account, own tokens, sign-out)."""

    openapi_errors = (401, 403)  # not signed in; CSRF token missing, or a password change due

    def __init__(self, *, allow_password_change: bool = False) -> None:
        self.allow_password_change = allow_password_change

    def __repr__(self) -> str:
        return "Authenticated()"

    async def __call__(
        self, request: Request, session: SessionDep, settings: SettingsDep, sessionmaker: SessionMakerDep
    ) -> Principal:
        principal = await resolve_principal(request, session, settings)
        if principal is None:
            raise NotAuthenticated("Sign in first.")
        await _check_csrf(request, principal, sessionmaker)
        if principal.must_change_password and not self.allow_password_change:
            raise PasswordChangeRequired("Choose a new password before doing anything else.")
        return principal


class Public:
    """No authentication: the route is meant for anyone (sign-in page, health checks, static files)."""

    def __repr__(self) -> str:
        return "Public()"

    async def __call__(self) -> None:
        return None


def current_user(request: Request) -> User:
    user: User = request.state.user
    return user


def current_user_session(request: Request) -> UserSession:
    user_session: UserSession = request.state.user_session
    return user_session


PUBLIC = Depends(Public())
SignedIn = Annotated[Principal, Depends(Authenticated())]
#: Tenant settings (and the identity, SCIM and Apple connections under them): read, and change.
SettingsRead = Annotated[Principal, Depends(Require(P.settings_read))]
SettingsWrite = Annotated[Principal, Depends(Require(P.settings_write))]
