"""Default-deny, proven from the route table: every route carries exactly one guard, the public ones are an
explicit list, and every other route refuses an anonymous caller without reading its body (Ivanti EPMM
CVE-2023-35078 was one unauthenticated API route too many)."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi import FastAPI
from fastapi.dependencies.models import Dependant
from fastapi.routing import APIRoute, iter_route_contexts
from starlette.routing import Mount, Route
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from corral.auth.dependencies import Authenticated, Public, Require
from corral.config import Settings
from corral.error_handlers import MACHINE_PREFIXES
from corral.kit.routes import RouteInfo, api_routes
from corral.kit.routing import GuardFirstRoute, HeaderGuard, header_guard
from corral.main import create_app
from corral.rbac.permissions import P
from tests.conftest import BASE_URL, make_settings, running_app

GUARD_TYPES: tuple[type, ...] = (Require, Authenticated, Public)
try:  # the device protocol's guard: the caller proves a device key (HTTP message signatures)
    from corral.checkin.auth import DeviceSigned

    GUARD_TYPES = (*GUARD_TYPES, DeviceSigned)
except ImportError:  # pragma: no cover - before the device protocol exists
    pass
# Apple MDM: the device proves its SCEP identity (Mdm-Signature or Client-Cert; tests/apple).
from corral.apple.auth import AppleDeviceSigned  # noqa: E402

GUARD_TYPES = (*GUARD_TYPES, AppleDeviceSigned)
# SCIM: the identity connection's bearer token (tests/scim checks missing, wrong and other tokens).
from corral.scim.auth import ScimBearer  # noqa: E402

GUARD_TYPES = (*GUARD_TYPES, ScimBearer)

PUBLIC_ALLOW_LIST = {
    ("GET", "/healthz"),
    ("GET", "/readyz"),
    ("GET", "/"),
    ("GET", "/portal/sign-in"),
    ("POST", "/portal/sign-in"),
    ("GET", "/portal/sign-in/verify"),
    ("POST", "/portal/sign-in/verify"),
    # Single sign-on: starting it only redirects to the provider; the callback's credential is the
    # provider's authorization code, bound to this browser's encrypted flow cookie (state, nonce, PKCE).
    ("GET", "/portal/sign-in/oidc/{connection_id}"),
    ("GET", "/auth/oidc/callback"),
    # The enrollment token in the body is the credential: checked, counted, logged on the token and audited.
    ("POST", "/device/v1/enroll"),
    # Apple enrollment (docs/apple-mdm.md): the enrollment token in the query is the profile's credential,
    # the one-time challenge inside the profile SCEP's (RFC 8894); both refusals counted, throttled, audited.
    ("GET", "/apple/v1/enroll"),
    ("GET", "/apple/v1/scep"),
    ("POST", "/apple/v1/scep"),
}

UNSAFE = {"POST", "PUT", "PATCH", "DELETE"}

# The route table does not depend on the database: build it once, at collection time, to parametrise.
_TABLE_APP = create_app(
    Settings(
        secret_key="route-table-secret-" + "r" * 40,
        base_url="https://testserver",
        database_url="postgresql://unused/unused",
        data_dir=Path("/nonexistent-corral-data-dir"),
    )
)
ROUTES: list[RouteInfo] = api_routes(_TABLE_APP)


def _guards(dependant: Dependant) -> list[Any]:
    """Every guard instance anywhere in a dependency tree (one entry per occurrence)."""
    found = []
    for sub in dependant.dependencies:
        if isinstance(sub.call, GUARD_TYPES):
            found.append(sub.call)
        found.extend(_guards(sub))
    return found


def _effective_dependants(app: FastAPI) -> dict[tuple[str, frozenset[str]], Dependant]:
    """The dependency trees that actually run (router-level dependencies included)."""
    return {
        (ctx.path_format, frozenset(ctx.methods or ())): ctx.dependant
        for ctx in iter_route_contexts(app.routes)
        if isinstance(ctx.original_route, APIRoute) and ctx.path
    }


EFFECTIVE = _effective_dependants(_TABLE_APP)


def _guard_of(info: RouteInfo) -> Any:
    guards = _guards(info.route.dependant)
    assert len(guards) == 1, f"{sorted(info.methods)} {info.path} has guards {guards}"
    return guards[0]


def _route_id(info: RouteInfo) -> str:
    return f"{'+'.join(sorted(info.methods))} {info.path}"


def _concrete_path(info: RouteInfo) -> str:
    path = info.path
    for name in info.route.param_convertors:
        path = path.replace("{" + name + "}", str(uuid.uuid4()))
    assert "{" not in path, path
    return path


NON_PUBLIC = [
    info for info in ROUTES if not any(isinstance(g, Public) for g in _guards(info.route.dependant))
]
REQUIRE_ROUTES = [
    info for info in ROUTES if any(isinstance(g, Require) for g in _guards(info.route.dependant))
]


def test_route_table_is_not_empty() -> None:
    paths = {info.path for info in ROUTES}
    assert {"/api/v1/me", "/api/v1/users", "/metrics", "/portal/sign-in", "/healthz"} <= paths
    assert len(ROUTES) > 40


@pytest.mark.parametrize("info", ROUTES, ids=_route_id)
def test_route_depends_on_exactly_one_guard(info: RouteInfo) -> None:
    guards = _guards(info.route.dependant)
    assert len(guards) == 1, f"{_route_id(info)} must depend on exactly one guard, found {guards}"


@pytest.mark.parametrize("info", ROUTES, ids=_route_id)
def test_effective_route_runs_the_same_single_guard(info: RouteInfo) -> None:
    """Router-level dependencies (include_router(dependencies=…)) cannot add or hide a guard."""
    effective = EFFECTIVE[(info.path, info.methods)]
    assert [repr(g) for g in _guards(effective)] == [repr(g) for g in _guards(info.route.dependant)]


def test_public_routes_are_exactly_the_allow_list() -> None:
    public = {
        (method, info.path)
        for info in ROUTES
        if any(isinstance(g, Public) for g in _guards(info.route.dependant))
        for method in info.methods
    }
    assert public == PUBLIC_ALLOW_LIST


@pytest.mark.parametrize("info", REQUIRE_ROUTES, ids=_route_id)
def test_require_route_names_only_known_permissions(info: RouteInfo) -> None:
    guard = _guard_of(info)
    assert isinstance(guard, Require)
    assert guard.permissions, _route_id(info)
    for permission in guard.permissions:
        assert isinstance(permission, P), f"{_route_id(info)}: {permission!r} is not a corral permission"
        assert permission.value in P._value2member_map_


def test_every_route_is_a_guard_first_route() -> None:
    """Every router is corral.kit.routing.APIRouter: a route with a body authenticates before reading it."""
    plain = [_route_id(info) for info in ROUTES if not isinstance(info.route, GuardFirstRoute)]
    assert plain == []


BODY_ROUTES = [info for info in ROUTES if info.route.body_field is not None]


@pytest.mark.parametrize("info", BODY_ROUTES, ids=_route_id)
def test_a_route_with_a_body_runs_its_guard_before_reading_it(info: RouteInfo) -> None:
    """The guard FastAPI would solve after parsing the body is the one run before it (kit/routing.py):
    every guard but Public() (nothing to check) and the device signature (which covers the body)."""
    guard = _guard_of(info)
    found = header_guard(info.route.dependant)
    if isinstance(guard, (Public, DeviceSigned)):
        assert found is None and not isinstance(guard, HeaderGuard)
    else:
        assert found is not None and found.call is guard, _route_id(info)


def test_only_openapi_schema_and_static_are_not_api_routes() -> None:
    others = [
        ctx.original_route
        for ctx in iter_route_contexts(_TABLE_APP.routes)
        if not isinstance(ctx.original_route, APIRoute)
    ]
    described = sorted((type(route).__name__, getattr(route, "path", None)) for route in others)
    assert described == [("Mount", "/static"), ("Route", "/api/v1/openapi.json")]
    schema_route = next(r for r in others if isinstance(r, Route))
    assert schema_route.methods is not None and schema_route.methods <= {"GET", "HEAD"}
    assert isinstance(next(r for r in others if isinstance(r, Mount)), Mount)


# ------------------------------------------------------------------------------------------- anonymous sweep
class BodyProbe:
    """Counts the request body bytes the application reads."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app
        self.read = 0

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        async def counted() -> Message:
            message = await receive()
            if message["type"] == "http.request":
                self.read += len(message.get("body", b""))
            return message

        await self.app(scope, counted, send)


@pytest.fixture(scope="module")
async def anonymous(
    module_db_url: str, tmp_path_factory: pytest.TempPathFactory
) -> AsyncIterator[tuple[httpx.AsyncClient, BodyProbe]]:
    """One application for the whole sweep: anonymous requests change nothing, so they share a database."""
    settings = make_settings(tmp_path_factory.mktemp("guards"), module_db_url)
    async with running_app(settings, module_db_url) as application:
        probe = BodyProbe(application)
        client = httpx.AsyncClient(
            transport=httpx.ASGITransport(app=probe, client=("203.0.113.7", 50000)), base_url=BASE_URL
        )
        async with client:
            yield client, probe


ANONYMOUS_CASES = [(method, info) for info in NON_PUBLIC for method in sorted(info.methods)]


@pytest.mark.parametrize(
    ("method", "info"), ANONYMOUS_CASES, ids=[f"{m} {i.path}" for m, i in ANONYMOUS_CASES]
)
async def test_anonymous_caller_is_refused_without_its_body_being_read(
    anonymous: tuple[httpx.AsyncClient, BodyProbe], method: str, info: RouteInfo
) -> None:
    client, probe = anonymous
    path = _concrete_path(info)
    # Not even JSON: parsed before the guard ran, it would be a 422.
    body = {"content": b'{"not json', "headers": {"Content-Type": "application/json"}}
    kwargs: dict[str, Any] = body if method in UNSAFE else {}
    probe.read = 0
    response = await client.request(method, path, **kwargs)
    assert probe.read == 0, f"{method} {path} read {probe.read} bytes of an anonymous body"
    assert response.status_code < 500, response.text
    assert not 200 <= response.status_code < 300, f"{method} {path} answered {response.status_code}"
    if path.startswith("/scim/"):  # SCIM clients get SCIM error bodies
        assert response.status_code == 401, response.text
        assert response.headers["content-type"].startswith("application/scim+json")
        assert response.json()["status"] == "401"
    elif path.startswith(MACHINE_PREFIXES):  # /api/, /metrics, /device/, …: machine clients
        assert response.status_code == 401, response.text
        assert response.headers["content-type"].startswith("application/problem+json")
        if path.startswith(("/api/", "/metrics")):
            assert response.headers["www-authenticate"] == "Bearer"
        assert response.json()["status"] == 401
    elif method == "GET":
        assert response.status_code == 303, response.text
        assert response.headers["location"].startswith("/portal/sign-in?next=")
    else:
        assert response.status_code in {401, 403}, response.text


async def test_anonymous_caller_with_a_cookie_that_means_nothing_is_refused(
    anonymous: tuple[httpx.AsyncClient, BodyProbe],
) -> None:
    client, _ = anonymous
    response = await client.get(
        "/api/v1/users", headers={"Cookie": "__Host-corral_session=cs_forged; corral_session=cs_forged"}
    )
    assert response.status_code == 401
