"""Operations: liveness, readiness, metrics, security headers, correlation ids and the client address."""

from __future__ import annotations

import asyncio
import ipaddress
import uuid
from pathlib import Path

import asyncpg
import httpx
import pytest
from sqlalchemy import event
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from corral.kit.db import discard_closed
from corral.kit.middleware import client_address
from corral.kit.migrations import downgrade
from corral.main import NotMigrated
from corral.rbac.roles import GLOBAL_ADMINISTRATOR, HELP_DESK_OPERATOR, SERVICE_ADMINISTRATOR
from tests.conftest import (
    Cluster,
    Factory,
    audit_rows,
    make_settings,
    new_client,
    running_app,
    scratch_database,
    sign_in,
    with_database,
)


# ------------------------------------------------------------------------------------------- health
async def test_healthz_answers_ok(client: httpx.AsyncClient) -> None:
    response = await client.get("/healthz")
    assert response.status_code == 200
    assert response.json() == {"status": "ok"}


async def test_readyz_is_ready_on_a_current_database(client: httpx.AsyncClient) -> None:
    response = await client.get("/readyz")
    assert response.status_code == 200
    assert response.json() == {
        "status": "ready",
        "checks": {"database": "ok", "migrations": "ok"},
        "warnings": {},
    }


async def test_readyz_is_not_ready_when_the_schema_is_behind(tmp_path: Path, db_url: str) -> None:
    await asyncio.to_thread(downgrade, db_url, "base")
    settings = make_settings(tmp_path, db_url)
    async with running_app(settings, db_url, check_migrations=False) as app, new_client(app) as client:
        response = await client.get("/readyz")
    assert response.status_code == 503
    body = response.json()
    assert body["status"] == "not ready"
    assert body["checks"]["database"] == "ok"
    assert body["checks"]["migrations"].startswith("pending")


async def test_readyz_is_not_ready_when_the_database_is_unreachable(tmp_path: Path, cluster: Cluster) -> None:
    missing = with_database(cluster.admin_url, f"missing_{uuid.uuid4().hex[:8]}")
    settings = make_settings(tmp_path, missing)
    async with running_app(settings, missing, check_migrations=False) as app, new_client(app) as client:
        response = await client.get("/readyz")
    assert response.status_code == 503
    assert response.json()["checks"]["database"].startswith("unreachable")


async def test_app_refuses_to_start_on_an_empty_database(tmp_path: Path, cluster: Cluster) -> None:
    async with scratch_database(cluster, template=None) as url:
        with pytest.raises(NotMigrated, match="corral db upgrade"):
            async with running_app(make_settings(tmp_path, url), url):
                pass


async def test_app_refuses_to_start_on_a_database_behind_the_code(tmp_path: Path, db_url: str) -> None:
    await asyncio.to_thread(downgrade, db_url, "base")
    with pytest.raises(NotMigrated):
        async with running_app(make_settings(tmp_path, db_url), db_url):
            pass


# ------------------------------------------------------------------------------------------- metrics
async def test_metrics_refuses_anonymous_callers(client: httpx.AsyncClient) -> None:
    response = await client.get("/metrics")
    assert response.status_code == 401
    assert response.headers["content-type"].startswith("application/problem+json")


@pytest.mark.parametrize("role", [SERVICE_ADMINISTRATOR.name, HELP_DESK_OPERATOR.name])
async def test_metrics_needs_system_metrics(client: httpx.AsyncClient, factory: Factory, role: str) -> None:
    admin = await factory.admin(role)
    response = await client.get("/metrics", headers=admin.headers)
    assert response.status_code == 403
    assert "system:metrics" in response.json()["detail"]


async def test_metrics_serve_prometheus_text_to_a_global_admin(
    client: httpx.AsyncClient, factory: Factory
) -> None:
    admin = await factory.admin(GLOBAL_ADMINISTRATOR.name)
    user_path = f"/api/v1/users/{admin.id}"
    assert (await client.get(user_path, headers=admin.headers)).status_code == 200
    await client.get(f"/no-such-page-{uuid.uuid4().hex}")
    response = await client.get("/metrics", headers=admin.headers)
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain")
    body = response.text
    assert "# TYPE corral_http_requests_total counter" in body
    assert "corral_http_request_duration_seconds_bucket" in body
    # Labelled by route template (bounded cardinality), never by the concrete path.
    assert 'route="/api/v1/users/{user_id}"' in body
    assert str(admin.id) not in body
    assert "no-such-page" not in body
    assert 'route="unmatched"' in body


# ------------------------------------------------------------------------------------------- headers
@pytest.mark.parametrize("path", ["/healthz", "/api/v1/me", "/portal/sign-in", "/nowhere", "/api/v1/nowhere"])
async def test_security_headers_are_on_every_response(client: httpx.AsyncClient, path: str) -> None:
    response = await client.get(path)
    headers = response.headers
    csp = headers["content-security-policy"]
    assert "frame-ancestors 'none'" in csp
    assert "default-src 'self'" in csp and "object-src 'none'" in csp
    assert "unsafe-inline" not in csp and "unsafe-eval" not in csp
    assert headers["x-content-type-options"] == "nosniff"
    assert headers["referrer-policy"] in {"same-origin", "no-referrer", "strict-origin-when-cross-origin"}
    assert headers["x-frame-options"] == "DENY"
    assert headers["strict-transport-security"].startswith("max-age=")
    assert int(headers["strict-transport-security"].split("=")[1].split(";")[0]) >= 15_552_000
    assert headers["cache-control"] == "no-store"


async def test_no_hsts_over_plain_http_without_a_https_base_url(tmp_path: Path, db_url: str) -> None:
    settings = make_settings(tmp_path, db_url, base_url="http://testserver")
    async with running_app(settings, db_url) as app:
        transport = httpx.ASGITransport(app=app, client=("203.0.113.7", 50000))
        async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as client:
            response = await client.get("/healthz")
    assert "strict-transport-security" not in response.headers
    assert response.headers["x-content-type-options"] == "nosniff"


@pytest.mark.parametrize(("trusted", "expect_hsts"), [(True, True), (False, False)])
async def test_forwarded_proto_is_believed_only_from_a_trusted_proxy(
    tmp_path: Path, db_url: str, trusted: bool, expect_hsts: bool
) -> None:
    settings = make_settings(
        tmp_path, db_url, base_url="http://testserver", trusted_proxies=["203.0.113.0/24"] if trusted else []
    )
    async with running_app(settings, db_url) as app:
        transport = httpx.ASGITransport(app=app, client=("203.0.113.7", 50000))
        async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as client:
            response = await client.get(
                "/healthz", headers={"X-Forwarded-For": "198.51.100.23", "X-Forwarded-Proto": "https"}
            )
    assert ("strict-transport-security" in response.headers) is expect_hsts


# ------------------------------------------------------------------------------------------- correlation id
async def test_valid_request_id_is_echoed_and_used_as_correlation_id(client: httpx.AsyncClient) -> None:
    response = await client.get("/api/v1/me", headers={"X-Request-ID": "trace-abc.123_XYZ"})
    assert response.headers["x-request-id"] == "trace-abc.123_XYZ"
    assert response.json()["correlation_id"] == "trace-abc.123_XYZ"


@pytest.mark.parametrize(
    "sent",
    ["a" * 200, "a" * 65, "has space", "<script>", "line\\nbreak", "ümlaut", ""],
    ids=["200-chars", "65-chars", "space", "markup", "backslash", "non-ascii", "empty"],
)
async def test_invalid_request_id_is_replaced(client: httpx.AsyncClient, sent: str) -> None:
    response = await client.get("/api/v1/me", headers={b"X-Request-ID": sent.encode("utf-8")})
    echoed = response.headers["x-request-id"]
    assert echoed != sent
    assert len(echoed) == 32 and all(c in "0123456789abcdef" for c in echoed)
    assert response.json()["correlation_id"] == echoed


async def test_request_id_is_generated_when_absent(client: httpx.AsyncClient) -> None:
    first = (await client.get("/healthz")).headers["x-request-id"]
    second = (await client.get("/healthz")).headers["x-request-id"]
    assert first != second and len(first) == 32


async def test_audit_event_carries_the_request_id(
    client: httpx.AsyncClient, factory: Factory, sessionmaker: async_sessionmaker[AsyncSession]
) -> None:
    admin = await factory.admin(GLOBAL_ADMINISTRATOR.name)
    response = await client.post(
        "/api/v1/scope-tags", json={"name": "Paris"}, headers={**admin.headers, "X-Request-ID": "change-42"}
    )
    assert response.status_code == 201
    (event,) = await audit_rows(sessionmaker, activity="scope_tag.create")
    assert event.correlation_id == "change-42"


# ------------------------------------------------------------------------------------------- client address
PROXIES = [ipaddress.ip_network("10.0.0.0/8"), ipaddress.ip_network("2001:db8::/32")]


@pytest.mark.parametrize(
    ("peer", "forwarded", "expected"),
    [
        ("198.51.100.7", None, "198.51.100.7"),
        ("198.51.100.7", "192.0.2.1", "198.51.100.7"),  # untrusted peer: header ignored
        ("10.0.0.5", None, "10.0.0.5"),
        ("10.0.0.5", "192.0.2.1", "192.0.2.1"),
        (
            "10.0.0.5",
            "192.0.2.66, 192.0.2.1",
            "192.0.2.1",
        ),  # right-most untrusted hop, not the spoofable left
        ("10.0.0.5", "192.0.2.1, 10.0.0.9", "192.0.2.1"),  # skips trusted hops
        ("10.0.0.5", "10.0.0.8, 10.0.0.9", "10.0.0.8"),  # all proxies: the first
        ("10.0.0.5", "192.0.2.1, not-an-ip", "10.0.0.5"),  # malformed chain: not believed
        ("10.0.0.5", " , ", "10.0.0.5"),
        ("10.0.0.5", "192.0.2.1:8080", "10.0.0.5"),
        ("2001:db8::1", "2001:db8:1::2, 2a00:1450::1", "2a00:1450::1"),
        ("2001:db8::1", "192.0.2.1", "192.0.2.1"),
        (None, "192.0.2.1", None),
        ("not-an-ip", "192.0.2.1", "not-an-ip"),
    ],
)
def test_client_address_trusts_forwarded_for_only_from_proxies(
    peer: str | None, forwarded: str | None, expected: str | None
) -> None:
    assert client_address(peer, forwarded, PROXIES) == expected


def test_client_address_without_trusted_proxies_is_the_peer() -> None:
    assert client_address("10.0.0.5", "192.0.2.1", []) == "10.0.0.5"


@pytest.mark.parametrize(
    ("trusted_proxies", "forwarded", "expected"),
    [
        (["203.0.113.0/24"], "198.51.100.23", "198.51.100.23"),
        (["203.0.113.0/24"], "192.0.2.99, 198.51.100.23", "198.51.100.23"),
        ([], "198.51.100.23", "203.0.113.7"),
        (["192.0.2.0/24"], "198.51.100.23", "203.0.113.7"),
    ],
    ids=["trusted", "trusted-chain", "no-proxies", "other-proxy"],
)
async def test_failed_sign_in_records_the_client_address(
    tmp_path: Path,
    db_url: str,
    factory: Factory,
    sessionmaker: async_sessionmaker[AsyncSession],
    trusted_proxies: list[str],
    forwarded: str,
    expected: str,
) -> None:
    admin = await factory.admin(HELP_DESK_OPERATOR.name, token=False)
    settings = make_settings(tmp_path, db_url, trusted_proxies=trusted_proxies)
    async with (
        running_app(settings, db_url) as app,
        new_client(app, headers={"X-Forwarded-For": forwarded}) as client,
    ):
        assert (await sign_in(client, admin.email, "wrong-password-here")).status_code == 401
    (event,) = await audit_rows(sessionmaker, activity="signin")
    assert event.result == "failure"
    assert event.ip_address == expected


@pytest.mark.parametrize(("trusted", "expected"), [(True, "198.51.100.23"), (False, "203.0.113.7")])
async def test_user_creation_records_the_client_address(
    tmp_path: Path,
    db_url: str,
    factory: Factory,
    sessionmaker: async_sessionmaker[AsyncSession],
    trusted: bool,
    expected: str,
) -> None:
    admin = await factory.admin(GLOBAL_ADMINISTRATOR.name)
    settings = make_settings(tmp_path, db_url, trusted_proxies=["203.0.113.0/24"] if trusted else [])
    async with running_app(settings, db_url) as app, new_client(app) as client:
        response = await client.post(
            "/api/v1/admins",
            json={"email": "forwarded@example.com"},
            headers={**admin.headers, "X-Forwarded-For": "198.51.100.23"},
        )
    assert response.status_code == 201, response.text
    (event,) = await audit_rows(sessionmaker, activity="user.create", target_name="forwarded@example.com")
    assert event.ip_address == expected


async def test_requests_after_the_database_closed_every_connection_succeed(
    tmp_path: Path, db_url: str
) -> None:
    """A restart or failover closes the pool's connections: the next requests take new ones (no pre-ping
    round trip, no 500)."""
    settings = make_settings(tmp_path, db_url, db_pool_size=3, db_max_overflow=0)
    async with running_app(settings, db_url) as app, new_client(app) as client:
        pool = app.state.engine.sync_engine.pool
        # Fill the pool: three connections checked out at once, then back in it.
        held = [await app.state.engine.connect() for _ in range(3)]
        for connection in held:
            await connection.close()
        assert pool.checkedin() == 3
        admin = await asyncpg.connect(db_url.replace("postgresql+asyncpg://", "postgresql://"))
        try:
            terminated = await admin.fetchval(
                "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity "
                "WHERE datname = current_database() AND application_name = 'corral'"
            )
        finally:
            await admin.close()
        assert terminated >= 3
        await asyncio.sleep(0.2)  # the closes reach the event loop
        for _ in range(4):
            response = await client.get("/readyz")
            assert response.status_code == 200, response.text


async def test_a_connection_lost_unnoticed_answers_503_with_retry_after_and_the_next_request_succeeds(
    tmp_path: Path, db_url: str, factory: Factory
) -> None:
    """A connection lost without a word (a network cut: asyncpg has not seen it close, so the checkout check
    passes) fails the one request that finds it: with a 503 and Retry-After, not a 500. The pool then
    drops its connections and the next request succeeds."""
    admin = await factory.admin(GLOBAL_ADMINISTRATOR.name)
    settings = make_settings(tmp_path, db_url, db_pool_size=1, db_max_overflow=0)
    async with running_app(settings, db_url) as app, new_client(app) as client:
        assert (await client.get("/api/v1/devices", headers=admin.headers)).status_code == 200
        pool = app.state.engine.sync_engine.pool
        # Stand for an unnoticed loss: with no checkout check, the request finds the dead connection.
        event.remove(pool, "checkout", discard_closed)
        try:
            conn = await asyncpg.connect(db_url.replace("postgresql+asyncpg://", "postgresql://"))
            try:
                await conn.fetchval(
                    "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity "
                    "WHERE datname = current_database() AND application_name = 'corral'"
                )
            finally:
                await conn.close()
            await asyncio.sleep(0.2)
            response = await client.get("/api/v1/devices", headers=admin.headers)
            assert response.status_code == 503, response.text
            assert response.headers["retry-after"].isdigit()
            assert "database" in response.json()["detail"]
            assert (await client.get("/api/v1/devices", headers=admin.headers)).status_code == 200
        finally:
            event.listen(pool, "checkout", discard_closed)
