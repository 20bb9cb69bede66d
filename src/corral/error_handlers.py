"""Render every error: Problem Details (RFC 9457) for machine clients, a page or a redirect for the
portal. Nothing unexpected reaches a user as a bare 500: it is logged with its correlation id and
answered politely."""

from __future__ import annotations

import logging
from typing import Any
from urllib.parse import quote

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, RedirectResponse, Response
from sqlalchemy.exc import DBAPIError, InterfaceError
from starlette.exceptions import HTTPException as StarletteHTTPException

from corral.auth.dependencies import PasswordChangeRequired
from corral.errors import CorralError, NotAuthenticated
from corral.kit import context
from corral.kit.routes import MethodTable
from corral.scim.errors import scim_error_response

log = logging.getLogger("corral.errors")

MACHINE_PREFIXES = ("/api/", "/apple/", "/device/", "/mam/", "/scim/", "/metrics", "/healthz", "/readyz")
SCIM_PREFIX = "/scim/"


def is_scim(request: Request) -> bool:
    """SCIM clients get SCIM error bodies (RFC 7644 §3.12), not Problem Details."""
    return request.url.path.startswith(SCIM_PREFIX)


def wants_problem(request: Request) -> bool:
    return request.url.path.startswith(MACHINE_PREFIXES) or "application/json" in request.headers.get(
        "accept", ""
    )


def problem(
    status: int,
    title: str,
    detail: str,
    *,
    errors: list[dict[str, Any]] | None = None,
    headers: dict[str, str] | None = None,
) -> JSONResponse:
    body: dict[str, Any] = {
        "type": "about:blank",
        "title": title,
        "status": status,
        "detail": detail,
        "correlation_id": context.current().correlation_id,
    }
    if errors:
        body["errors"] = errors
    return JSONResponse(body, status_code=status, media_type="application/problem+json", headers=headers)


def portal_error(
    request: Request, status: int, title: str, detail: str, headers: dict[str, str] | None = None
) -> Response:
    from corral.portal.rendering import render_error

    return render_error(request, status, title, detail, headers=headers)


async def corral_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, CorralError)
    if is_scim(request):
        headers = dict(exc.headers)
        if isinstance(exc, NotAuthenticated):
            headers.setdefault("WWW-Authenticate", 'Bearer realm="SCIM"')
        scim_type = getattr(exc, "scim_type", None)
        status = exc.status_code
        if scim_type is None and status == 409:
            scim_type = "uniqueness"
        if status == 422:  # a domain rule refused the value (e.g. a cycle of nested groups)
            status, scim_type = 400, scim_type or "invalidValue"
        return scim_error_response(status, exc.detail, scim_type, headers)
    if wants_problem(request):
        headers = dict(exc.headers)
        if isinstance(exc, NotAuthenticated):
            headers.setdefault("WWW-Authenticate", "Bearer")
        return problem(exc.status_code, exc.title, exc.detail, errors=exc.errors, headers=headers)
    if isinstance(exc, NotAuthenticated) and request.method == "GET":
        target = request.url.path + (f"?{request.url.query}" if request.url.query else "")
        return RedirectResponse(f"/portal/sign-in?next={quote(target, safe='')}", status_code=303)
    if isinstance(exc, PasswordChangeRequired):
        return RedirectResponse("/portal/account/password", status_code=303)
    return portal_error(request, exc.status_code, exc.title, exc.detail, headers=exc.headers)


def _location(error: Any) -> str:
    return ".".join(str(part) for part in error.get("loc", ()) if part != "body") or "request"


async def validation_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, RequestValidationError)
    errors = [
        {"location": _location(e), "message": e.get("msg", "invalid"), "type": e.get("type", "")}
        for e in exc.errors()
    ]
    summary = "; ".join(f"{e['location']}: {e['message']}" for e in errors[:5])
    if is_scim(request):
        return scim_error_response(400, summary or "The request is not valid.", "invalidValue")
    if wants_problem(request):
        return problem(422, "Validation failed", summary or "The request is not valid.", errors=errors)
    return portal_error(request, 400, "That request was not valid", summary)


def allowed_methods(request: Request) -> list[str]:
    """Every method the request's path supports, whichever of the routes sharing its template serves it."""
    table: MethodTable | None = getattr(request.app.state, "method_table", None)
    return table.allowed(request.scope) if table is not None else []


async def http_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, StarletteHTTPException)
    titles = {404: "Not found", 405: "Method not allowed", 400: "Bad request", 413: "Payload too large"}
    title = titles.get(exc.status_code, "Error")
    detail = exc.detail if isinstance(exc.detail, str) else title
    headers = dict(exc.headers or {})
    if exc.status_code == 404:
        detail = "There is nothing at this address."
    if exc.status_code == 405 and (allowed := allowed_methods(request)):
        headers["Allow"] = ", ".join(allowed)
        detail = f"{request.method} is not supported here; this address supports {headers['Allow']}."
    if is_scim(request):
        return scim_error_response(exc.status_code, detail, headers=headers)
    if wants_problem(request):
        return problem(exc.status_code, title, detail, headers=headers)
    return portal_error(request, exc.status_code, title, detail, headers=headers)


# Text PostgreSQL cannot store (a NUL character, an invalid byte sequence) is a payload problem, not a crash.
UNSTORABLE_TEXT_SQLSTATES = frozenset({"22021", "22P05"})


# The database went away or cannot take the connection now: class 08 (connection exceptions), the server
# shutting down or starting (57P01-57P03), too many connections (53300).
UNAVAILABLE_SQLSTATES = frozenset({"57P01", "57P02", "57P03", "53300"})
#: Seconds a client is told to wait after the database connection was lost (the pool reconnects at once).
DATABASE_RETRY_AFTER = 2


def database_unavailable(exc: DBAPIError) -> bool:
    """The request failed because its database connection was lost or refused, not because of what it
    asked: a connection the driver found closed (SQLAlchemy invalidates the pool then), or PostgreSQL's
    own word that it cannot serve the connection."""
    if exc.connection_invalidated or isinstance(exc, InterfaceError):
        return True
    sqlstate = str(getattr(exc.orig, "sqlstate", None) or "")
    return sqlstate.startswith("08") or sqlstate in UNAVAILABLE_SQLSTATES


async def database_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, DBAPIError)
    if database_unavailable(exc):
        # Not a defect to quote: a restart, a failover or a network cut. The client retries (agents do on
        # 503 with Retry-After, docs/device-protocol.md §9); the pool has already dropped the dead connection.
        log.warning("database connection lost on %s %s: %s", request.method, request.url.path, exc.orig)
        detail = (
            "The database connection was lost while handling this request; retry in a moment. "
            f"Correlation id {context.current().correlation_id}."
        )
        headers = {"Retry-After": str(DATABASE_RETRY_AFTER)}
        if is_scim(request):
            return scim_error_response(503, detail, headers=headers)
        if wants_problem(request):
            return problem(503, "Service unavailable", detail, headers=headers)
        return portal_error(request, 503, "Service unavailable", detail, headers=headers)
    if getattr(exc.orig, "sqlstate", None) not in UNSTORABLE_TEXT_SQLSTATES:
        return await unexpected_error(request, exc)
    detail = "Text cannot contain NUL (\\u0000) or other unstorable characters; nothing was changed."
    if is_scim(request):
        return scim_error_response(400, detail, "invalidValue")
    if wants_problem(request):
        return problem(422, "Validation failed", detail)
    return portal_error(request, 400, "That request was not valid", detail)


async def unexpected_error(request: Request, exc: Exception) -> Response:
    log.exception("unhandled error on %s %s", request.method, request.url.path, exc_info=exc)
    detail = (
        "Something went wrong on our side; nothing was changed. Quote the correlation id "
        f"{context.current().correlation_id} when you report it."
    )
    if is_scim(request):
        return scim_error_response(500, detail)
    if wants_problem(request):
        return problem(500, "Internal error", detail)
    return portal_error(request, 500, "Something went wrong", detail)


def install(app: FastAPI) -> None:
    app.add_exception_handler(CorralError, corral_error)
    app.add_exception_handler(RequestValidationError, validation_error)
    app.add_exception_handler(StarletteHTTPException, http_error)
    app.add_exception_handler(DBAPIError, database_error)
    app.add_exception_handler(Exception, unexpected_error)
