"""Request body limits (corral/body_limits.py, kit/body_limit.py) and authentication before the body
(kit/routing.py). Every route family refuses a body over its limit with 413, whether its length is declared
or it is chunked, reads no more than the limit, and changes nothing; authenticated routes refuse an anonymous
or unauthorised caller before reading the body at all. (tests/test_body_memory.py measures the memory of a
real server; tests/test_route_guards.py checks every route of the table.)"""

from __future__ import annotations

import json
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi import FastAPI
from sqlalchemy import event, select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.types import Receive, Scope, Send

from corral.body_limits import ROUTE_LIMITS, body_limits
from corral.config import Settings
from corral.kit.body_limit import BodyLimitMiddleware, BodyLimits, BodyTooLarge, Limit
from corral.kit.routes import api_routes
from corral.models import Device, EnrollmentToken
from tests.conftest import BASE_URL, Factory, count_rows, make_settings, portal_csrf
from tests.devices.device import TestDevice
from tests.devices.test_enrollment_and_checkin import enrolled, make_token
from tests.scim.helpers import make_connection

KiB = 1024
MiB = 1024 * KiB
PIECE = 64 * KiB
MODES = ["chunked", "declared"]


class Body:
    """A request body of ``size`` bytes: ``prefix`` (a valid request), then whitespace. Sent chunked, it
    counts how much of it the server pulled."""

    def __init__(self, prefix: bytes, size: int) -> None:
        assert len(prefix) < size
        self.prefix, self.size, self.pulled = prefix, size, 0

    def declared(self) -> bytes:
        return self.prefix + b" " * (self.size - len(self.prefix))

    async def chunked(self) -> AsyncIterator[bytes]:
        sent = 0
        while sent < self.size:
            piece = self.prefix if sent == 0 else b" " * min(PIECE, self.size - sent)
            self.pulled += len(piece)
            sent += len(piece)
            yield piece

    def content(self, mode: str) -> Any:
        return self.chunked() if mode == "chunked" else self.declared()


def assert_problem_413(response: httpx.Response, limit: int) -> None:
    assert response.status_code == 413, response.text
    assert response.headers["content-type"].startswith("application/problem+json")
    assert response.headers["connection"] == "close"
    problem = response.json()
    assert problem["status"] == 413 and problem["title"] == "Payload too large"
    assert f"({limit} bytes)" in problem["detail"]
    assert response.headers["x-request-id"]  # rendered inside the request context, like every error


def assert_read_at_most(body: Body, mode: str, limit: int) -> None:
    """A chunked body was read no further than the piece that crossed the limit."""
    if mode == "chunked":
        assert 0 < body.pulled <= limit + PIECE, body.pulled


# ------------------------------------------------------------------------------------- the middleware alone
def _toy(limits: BodyLimits, app: Any) -> BodyLimitMiddleware:
    async def render(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, BodyTooLarge)
        return JSONResponse({"refused": exc.detail}, status_code=exc.status_code)

    return BodyLimitMiddleware(app, limits=limits, render=render)


class Reader:
    """An ASGI app that reads the whole body (as far as it is allowed to) and answers how much it saw."""

    def __init__(self, *, swallow: bool = False, answer_first: bool = False) -> None:
        self.seen = 0
        self.calls = 0
        self.swallow, self.answer_first = swallow, answer_first

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        self.calls += 1
        if not self.answer_first:
            try:
                while True:
                    message = await receive()
                    self.seen += len(message.get("body", b""))
                    if not message.get("more_body"):
                        break
            except BodyTooLarge:
                if not self.swallow:
                    raise
        await JSONResponse({"seen": self.seen})(scope, receive, send)


TOY_LIMITS = BodyLimits(
    default=Limit(4 * KiB, "Forms"),
    prefixes=[("/api/v1", Limit(8 * KiB, "Admin API requests"))],
    routes=[("POST", "/api/v1/things/{thing_id}/upload", Limit(64 * KiB, "Uploads"))],
)


def toy_client(app: Any) -> httpx.AsyncClient:
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url=BASE_URL)


@pytest.mark.parametrize("mode", MODES)
async def test_a_body_over_the_limit_is_refused_and_never_reaches_the_application(mode: str) -> None:
    reader = Reader()
    body = Body(b"x", 1 * MiB)
    async with toy_client(_toy(TOY_LIMITS, reader)) as client:
        response = await client.post("/api/v1/things", content=body.content(mode))
    assert response.status_code == 413
    assert response.json() == {"refused": "Admin API requests carry at most 8 KiB (8192 bytes) of body."}
    assert response.headers["connection"] == "close"
    if mode == "declared":  # refused from the header alone: the application never ran
        assert reader.calls == 0
    else:
        assert reader.seen <= 8 * KiB
        assert_read_at_most(body, mode, 8 * KiB)


@pytest.mark.parametrize("mode", MODES)
async def test_a_body_at_the_limit_passes_whole(mode: str) -> None:
    reader = Reader()
    async with toy_client(_toy(TOY_LIMITS, reader)) as client:
        response = await client.post("/portal/form", content=Body(b"x", 4 * KiB).content(mode))
    assert response.status_code == 200 and response.json() == {"seen": 4 * KiB}
    assert "connection" not in response.headers


async def test_an_application_that_swallows_the_refusal_still_answers_413() -> None:
    async with toy_client(_toy(TOY_LIMITS, Reader(swallow=True))) as client:
        response = await client.post("/portal/form", content=Body(b"x", 64 * KiB).chunked())
    assert response.status_code == 413 and "Forms carry at most 4 KiB" in response.json()["refused"]


async def test_a_route_declares_its_own_limit() -> None:
    async with toy_client(_toy(TOY_LIMITS, Reader())) as client:
        upload = f"/api/v1/things/{uuid.uuid4()}/upload"
        allowed = await client.post(upload, content=Body(b"x", 60 * KiB).chunked())
        assert allowed.status_code == 200 and allowed.json() == {"seen": 60 * KiB}
        assert (await client.post(upload, content=Body(b"x", 65 * KiB).declared())).status_code == 413
        # Only that method and path: the family's limit elsewhere.
        assert (await client.put(upload, content=Body(b"x", 60 * KiB).declared())).status_code == 413
        other = await client.post(f"/api/v1/things/{uuid.uuid4()}", content=Body(b"x", 60 * KiB).declared())
        assert other.status_code == 413


def test_the_limit_of_a_path_is_its_familys() -> None:
    assert TOY_LIMITS.limit_for("POST", "/api/v1").size == 8 * KiB
    assert TOY_LIMITS.limit_for("POST", "/api/v1/users").size == 8 * KiB
    assert TOY_LIMITS.limit_for("POST", "/api/v1x/users").size == 4 * KiB  # a prefix is a whole segment
    assert TOY_LIMITS.limit_for("POST", "/portal/users/new").size == 4 * KiB
    assert TOY_LIMITS.limit_for("POST", "/api/v1/things/a/upload").size == 64 * KiB
    assert TOY_LIMITS.limit_for("POST", "/api/v1/things/a/b/upload").size == 8 * KiB


async def test_an_answer_before_a_chunked_body_was_read_closes_the_connection() -> None:
    """Else the server would go on reading (and discarding) whatever the client still sends."""
    async with toy_client(_toy(TOY_LIMITS, Reader(answer_first=True))) as client:
        chunked = await client.post("/portal/form", content=Body(b"x", 2 * KiB).chunked())
        declared = await client.post("/portal/form", content=Body(b"x", 2 * KiB).declared())
    assert chunked.status_code == 200 and chunked.headers["connection"] == "close"
    assert declared.status_code == 200 and "connection" not in declared.headers  # its length bounds it


# -------------------------------------------------------------------------------------- the route families
def test_the_limits_come_from_the_settings(tmp_path: Path) -> None:
    settings = make_settings(
        tmp_path,
        "postgresql://unused/unused",
        max_body_device_bytes=3 * MiB,
        max_body_api_bytes=2 * MiB,
        max_body_scim_bytes=5 * KiB,
        max_body_form_bytes=7 * KiB,
    )
    limits = body_limits(settings)
    assert limits.limit_for("POST", "/device/v1/checkin").size == 3 * MiB
    assert limits.limit_for("POST", "/api/v1/users").size == 2 * MiB
    assert limits.limit_for("POST", "/scim/v2/Users").size == 5 * KiB
    assert limits.limit_for("POST", "/portal/sign-in").size == 7 * KiB
    assert limits.limit_for("POST", "/auth/oidc/callback").size == 7 * KiB
    defaults = Settings(_env_file=None)  # type: ignore[call-arg]
    assert (defaults.max_body_device_bytes, defaults.max_body_api_bytes) == (2 * MiB, 1 * MiB)
    assert (defaults.max_body_scim_bytes, defaults.max_body_form_bytes) == (1 * MiB, 1 * MiB)
    larger = body_limits(settings, {("POST", "/api/v1/users/{user_id}/photo"): "max_body_device_bytes"})
    assert larger.limit_for("POST", f"/api/v1/users/{uuid.uuid4()}/photo").size == 3 * MiB


def test_every_route_with_a_limit_of_its_own_exists(app: FastAPI) -> None:
    table = {(method, info.path) for info in api_routes(app) for method in info.methods}
    assert set(ROUTE_LIMITS) <= table


@pytest.mark.parametrize("mode", MODES)
async def test_device_enrollment_over_the_limit_changes_nothing(
    client: httpx.AsyncClient,
    factory: Factory,
    sessionmaker: async_sessionmaker[AsyncSession],
    settings: Settings,
    mode: str,
) -> None:
    admin = await factory.admin("Global administrator")
    token = await make_token(client, admin)
    limit = settings.max_body_device_bytes
    body = Body(json.dumps(TestDevice(client).enroll_body(token)).encode(), limit + 1)
    response = await client.post(
        "/device/v1/enroll", content=body.content(mode), headers={"Content-Type": "application/json"}
    )
    assert_problem_413(response, limit)
    assert "Device requests carry at most 2 MiB" in response.json()["detail"]
    assert_read_at_most(body, mode, limit)
    assert await count_rows(sessionmaker, "devices") == 0
    async with sessionmaker() as session:
        assert (await session.scalars(select(EnrollmentToken.use_count))).all() == [0]
    # The same enrollment within the limit succeeds.
    ok = await client.post(
        "/device/v1/enroll", content=body.prefix, headers={"Content-Type": "application/json"}
    )
    assert ok.status_code == 201, ok.text


@pytest.mark.parametrize("mode", MODES)
async def test_device_check_in_over_the_limit_changes_nothing(
    client: httpx.AsyncClient,
    factory: Factory,
    sessionmaker: async_sessionmaker[AsyncSession],
    settings: Settings,
    mode: str,
) -> None:
    device = await enrolled(client, await factory.admin("Global administrator"))
    limit = settings.max_body_device_bytes
    body = Body(b'{"agent_version": "9.9.9"}', limit + 1)
    headers = device.signed_headers("POST", "/device/v1/checkin", body.declared())
    response = await client.post("/device/v1/checkin", content=body.content(mode), headers=headers)
    assert_problem_413(response, limit)
    assert_read_at_most(body, mode, limit)
    async with sessionmaker() as session:
        stored = await session.get(Device, uuid.UUID(str(device.device_id)))
        assert stored is not None and stored.last_checkin_at is None


@pytest.mark.parametrize("mode", MODES)
async def test_admin_api_over_the_limit_changes_nothing(
    client: httpx.AsyncClient,
    factory: Factory,
    sessionmaker: async_sessionmaker[AsyncSession],
    settings: Settings,
    mode: str,
) -> None:
    admin = await factory.admin("Global administrator")
    users = await count_rows(sessionmaker, "users")
    limit = settings.max_body_api_bytes
    body = Body(b'{"user_principal_name": "big@example.com", "display_name": "Big"}', limit + 1)
    headers = {"Content-Type": "application/json", **admin.headers}
    response = await client.post("/api/v1/users", content=body.content(mode), headers=headers)
    assert_problem_413(response, limit)
    assert "Admin API requests carry at most 1 MiB" in response.json()["detail"]
    assert_read_at_most(body, mode, limit)
    assert await count_rows(sessionmaker, "users") == users
    ok = await client.post("/api/v1/users", content=body.prefix, headers=headers)
    assert ok.status_code == 201, ok.text


async def test_anonymous_admin_api_is_refused_before_its_body_is_read(
    client: httpx.AsyncClient, settings: Settings
) -> None:
    """Without credentials: 401 before one byte of the body is read, however large (a chunked body of
    64 MiB, or one within the limit that is not even JSON); with a declared length over the limit, 413 from
    the header alone."""
    huge = Body(b"{", 64 * MiB)
    response = await client.post(
        "/api/v1/users", content=huge.chunked(), headers={"Content-Type": "application/json"}
    )
    assert response.status_code == 401, response.text
    assert huge.pulled == 0
    assert response.headers["connection"] == "close"  # the rest of the body is not drained
    for content in (Body(b"{not json", 512 * KiB).chunked(), Body(b"{not json", 512 * KiB).declared()):
        broken = await client.post(
            "/api/v1/users", content=content, headers={"Content-Type": "application/json"}
        )
        assert broken.status_code == 401, broken.text  # not 422: the body was never parsed
    declared = Body(b"{", settings.max_body_api_bytes + 1).declared()
    too_large = await client.post(
        "/api/v1/users", content=declared, headers={"Content-Type": "application/json"}
    )
    assert too_large.status_code == 413


async def test_a_caller_without_the_permission_is_refused_before_the_body_is_parsed(
    client: httpx.AsyncClient, factory: Factory
) -> None:
    helpdesk = await factory.admin("Help desk operator")  # may read users, not create them
    body = Body(b"{not json", 256 * KiB)
    response = await client.post(
        "/api/v1/users",
        content=body.chunked(),
        headers={"Content-Type": "application/json", **helpdesk.headers},
    )
    assert response.status_code == 403, response.text  # not 422
    assert body.pulled == 0


async def test_the_guard_before_the_body_costs_no_extra_database_work(
    app: FastAPI, client: httpx.AsyncClient, factory: Factory
) -> None:
    """The guard runs before the body is read and again with the other dependencies: the token is looked
    up once, and the guard and the handler share the request's one session (one connection, one
    transaction)."""
    admin = await factory.admin("Global administrator")
    checkouts: list[object] = []
    token_lookups: list[str] = []
    engine = app.state.engine.sync_engine

    def on_checkout(*_: Any) -> None:
        checkouts.append(object())

    def on_execute(_conn: Any, _cursor: Any, statement: str, *_: Any) -> None:
        if "FROM api_tokens" in statement and "token_hash" in statement:
            token_lookups.append(statement)

    event.listen(engine.pool, "checkout", on_checkout)
    event.listen(engine, "before_cursor_execute", on_execute)
    try:
        response = await client.post(
            "/api/v1/users",
            json={"user_principal_name": "once@example.com", "display_name": "Once"},
            headers=admin.headers,
        )
    finally:
        event.remove(engine.pool, "checkout", on_checkout)
        event.remove(engine, "before_cursor_execute", on_execute)
    assert response.status_code == 201, response.text
    assert len(token_lookups) == 1, token_lookups
    assert len(checkouts) == 1
    created = await client.get(f"/api/v1/users/{response.json()['id']}", headers=admin.headers)
    assert created.status_code == 200  # committed


@pytest.mark.parametrize("mode", MODES)
async def test_scim_over_the_limit_changes_nothing(
    client: httpx.AsyncClient,
    sessionmaker: async_sessionmaker[AsyncSession],
    settings: Settings,
    mode: str,
) -> None:
    connection = await make_connection(sessionmaker)
    users = await count_rows(sessionmaker, "users")
    limit = settings.max_body_scim_bytes
    user = {"schemas": ["urn:ietf:params:scim:schemas:core:2.0:User"], "userName": "big@example.com"}
    body = Body(json.dumps(user).encode(), limit + 1)
    response = await client.post("/scim/v2/Users", content=body.content(mode), headers=connection.headers)
    assert response.status_code == 413, response.text
    assert response.headers["content-type"].startswith("application/scim+json")
    assert response.headers["connection"] == "close"
    error = response.json()
    assert error["status"] == "413" and "SCIM requests carry at most 1 MiB" in error["detail"]
    assert_read_at_most(body, mode, limit)
    assert await count_rows(sessionmaker, "users") == users
    ok = await client.post("/scim/v2/Users", content=body.prefix, headers=connection.headers)
    assert ok.status_code == 201, ok.text


@pytest.mark.parametrize("mode", MODES)
async def test_portal_form_over_the_limit_changes_nothing(
    client: httpx.AsyncClient,
    factory: Factory,
    sessionmaker: async_sessionmaker[AsyncSession],
    settings: Settings,
    mode: str,
) -> None:
    admin = await factory.admin("Global administrator")
    csrf = await portal_csrf(client, admin.email)
    tags = await count_rows(sessionmaker, "scope_tags")
    limit = settings.max_body_form_bytes
    body = Body(f"csrf_token={csrf}&name=Big&description=".encode(), limit + 1)
    form = {"Content-Type": "application/x-www-form-urlencoded"}
    response = await client.post("/portal/scope-tags", content=body.content(mode), headers=form)
    assert response.status_code == 413, response.text
    assert response.headers["content-type"].startswith("text/html")
    assert response.headers["connection"] == "close"
    assert "Payload too large" in response.text and "at most 1 MiB" in response.text
    assert_read_at_most(body, mode, limit)
    assert await count_rows(sessionmaker, "scope_tags") == tags
    ok = await client.post("/portal/scope-tags", content=body.prefix, headers=form)
    assert ok.status_code == 303, ok.text


@pytest.mark.parametrize("mode", MODES)
async def test_public_sign_in_form_over_the_limit_is_refused(
    client: httpx.AsyncClient, settings: Settings, mode: str
) -> None:
    limit = settings.max_body_form_bytes
    body = Body(b"username=a%40example.com&password=", limit + 1)
    response = await client.post(
        "/portal/sign-in",
        content=body.content(mode),
        headers={"Content-Type": "application/x-www-form-urlencoded"},
    )
    assert response.status_code == 413 and response.headers["content-type"].startswith("text/html")
    assert_read_at_most(body, mode, limit)
