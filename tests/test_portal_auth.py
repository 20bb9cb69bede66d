"""Portal sign-in over raw HTTP: session rotation, timeouts, throttling, second factor, CSRF, redirects."""

from __future__ import annotations

import re
from datetime import timedelta

import httpx
import pyotp
import pytest
from fastapi import FastAPI
from sqlalchemy import func, select, update
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from corral.config import Settings
from corral.kit.time import utcnow
from corral.models import AuditEvent, User, UserSession
from tests.conftest import PASSWORD, Factory, csrf_of, new_client, sign_in

COOKIE = "__Host-corral_session"


async def count(sessionmaker: async_sessionmaker[AsyncSession], stmt: object) -> int:
    async with sessionmaker() as session:
        return int(await session.scalar(stmt) or 0)  # type: ignore[call-overload]


async def test_sign_in_sets_a_hardened_session_cookie_and_rotates_it(
    client: httpx.AsyncClient, factory: Factory
) -> None:
    admin = await factory.admin(token=False)
    client.cookies.set(COOKIE, "cs_planted-by-an-attacker", domain="testserver")
    response = await sign_in(client, admin.email)
    assert response.status_code == 303 and response.headers["location"] == "/portal"
    set_cookie = next(h for h in response.headers.get_list("set-cookie") if h.startswith(COOKIE))
    assert "Secure" in set_cookie and "HttpOnly" in set_cookie and "SameSite=lax" in set_cookie
    assert "Path=/" in set_cookie and "Domain" not in set_cookie
    issued = set_cookie.split(";")[0].split("=", 1)[1]
    assert issued != "cs_planted-by-an-attacker"
    first = issued
    await client.post("/portal/sign-out", data={"csrf_token": csrf_of((await client.get("/portal")).text)})
    second = await sign_in(client, admin.email)
    assert second.cookies.get(COOKIE) not in (None, first)


async def test_wrong_password_and_unknown_account_read_the_same_and_are_audited(
    client: httpx.AsyncClient, factory: Factory, sessionmaker: async_sessionmaker[AsyncSession]
) -> None:
    admin = await factory.admin(token=False)
    wrong = await sign_in(client, admin.email, "wrong password entirely")
    unknown = await sign_in(client, "nobody@example.com", "wrong password entirely")
    assert wrong.status_code == unknown.status_code == 401
    message = "The sign-in name or password is incorrect."
    assert message in wrong.text and message in unknown.text
    failures = await count(
        sessionmaker,
        select(func.count())
        .select_from(AuditEvent)
        .where(AuditEvent.activity == "signin", AuditEvent.result == "failure"),
    )
    assert failures == 2


async def test_disabled_account_cannot_sign_in(
    client: httpx.AsyncClient, factory: Factory, sessionmaker: async_sessionmaker[AsyncSession]
) -> None:
    admin = await factory.admin(token=False)
    async with sessionmaker() as session:
        await session.execute(update(User).where(User.id == admin.id).values(enabled=False))
        await session.commit()
    assert (await sign_in(client, admin.email)).status_code == 401


async def test_account_is_throttled_after_repeated_failures(
    client: httpx.AsyncClient, factory: Factory, settings: Settings
) -> None:
    admin = await factory.admin(token=False)
    for _ in range(settings.signin_max_failures_per_account_and_client):
        assert (await sign_in(client, admin.email, "wrong password entirely")).status_code == 401
    locked = await sign_in(client, admin.email)  # even the right password waits
    assert locked.status_code == 429
    assert int(locked.headers["retry-after"]) > 0
    assert "Too many failed sign-in attempts" in locked.text


async def test_client_address_is_throttled_across_accounts(app: FastAPI, factory: Factory) -> None:
    app.state.settings = app.state.settings.model_copy(update={"signin_max_failures_per_client": 3})
    async with new_client(app) as client:
        for i in range(3):
            await sign_in(client, f"guess{i}@example.com", "wrong password entirely")
        admin = await factory.admin(token=False)
        assert (await sign_in(client, admin.email)).status_code == 429


async def test_sign_in_form_without_its_token_is_refused(client: httpx.AsyncClient, factory: Factory) -> None:
    admin = await factory.admin(token=False)
    response = await client.post("/portal/sign-in", data={"username": admin.email, "password": PASSWORD})
    assert response.status_code == 403
    assert COOKIE not in response.cookies


@pytest.mark.parametrize(
    "target", ["https://evil.example/", "//evil.example/x", "/\\evil.example", "javascript:x"]
)
async def test_next_parameter_cannot_redirect_off_site(
    client: httpx.AsyncClient, factory: Factory, target: str
) -> None:
    admin = await factory.admin(token=False)
    response = await sign_in(client, admin.email, next_url=target)
    assert response.status_code == 303 and response.headers["location"] == "/portal"


async def test_state_change_without_csrf_token_is_refused_and_audited(
    client: httpx.AsyncClient, factory: Factory, sessionmaker: async_sessionmaker[AsyncSession]
) -> None:
    admin = await factory.admin(token=False)
    await sign_in(client, admin.email)
    missing = await client.post("/portal/settings", data={"organization_name": "Evil"})
    wrong = await client.post("/portal/settings", data={"organization_name": "Evil", "csrf_token": "nope"})
    api = await client.patch("/api/v1/settings", json={"organization_name": "Evil"})
    assert missing.status_code == wrong.status_code == api.status_code == 403
    ok = await client.patch(
        "/api/v1/settings",
        json={"organization_name": "Fine"},
        headers={"X-CSRF-Token": csrf_of((await client.get("/portal")).text)},
    )
    assert ok.status_code == 200 and ok.json()["organization_name"] == "Fine"
    denied = await count(
        sessionmaker,
        select(func.count()).select_from(AuditEvent).where(AuditEvent.activity == "access.denied"),
    )
    assert denied == 3


async def test_sign_out_requires_post_and_kills_the_server_session(
    app: FastAPI, client: httpx.AsyncClient, factory: Factory, sessionmaker: async_sessionmaker[AsyncSession]
) -> None:
    admin = await factory.admin(token=False)
    await sign_in(client, admin.email)
    assert (await client.get("/portal/sign-out")).status_code == 405
    cookie = client.cookies.get(COOKIE)
    await client.post("/portal/sign-out", data={"csrf_token": csrf_of((await client.get("/portal")).text)})
    assert await count(sessionmaker, select(func.count()).select_from(UserSession)) == 0
    async with new_client(app) as replay:
        replay.cookies.set(COOKIE, cookie or "", domain="testserver")
        assert (await replay.get("/portal")).status_code == 303


@pytest.mark.parametrize("expired", ["idle", "absolute"])
async def test_expired_session_is_refused_and_deleted(
    client: httpx.AsyncClient,
    factory: Factory,
    sessionmaker: async_sessionmaker[AsyncSession],
    settings: Settings,
    expired: str,
) -> None:
    admin = await factory.admin(token=False)
    await sign_in(client, admin.email)
    async with sessionmaker() as session:
        if expired == "idle":
            values = {"last_seen_at": utcnow() - timedelta(minutes=settings.session_idle_minutes + 1)}
        else:
            values = {"expires_at": utcnow() - timedelta(seconds=1)}
        await session.execute(update(UserSession).values(**values))
        await session.commit()
    response = await client.get("/portal/admins")
    assert response.status_code == 303
    assert response.headers["location"].startswith("/portal/sign-in?next=")
    assert await count(sessionmaker, select(func.count()).select_from(UserSession)) == 0


async def test_disabling_an_account_ends_its_sessions_at_once(
    app: FastAPI, factory: Factory, sessionmaker: async_sessionmaker[AsyncSession]
) -> None:
    boss = await factory.admin("Global administrator")
    victim = await factory.admin("Help desk operator", token=False)
    async with new_client(app) as victim_client:
        await sign_in(victim_client, victim.email)
        assert (await victim_client.get("/portal/audit")).status_code == 200
        async with new_client(app) as api:
            response = await api.patch(
                f"/api/v1/users/{victim.id}", json={"enabled": False}, headers=boss.headers
            )
            assert response.status_code == 200, response.text
        assert (await victim_client.get("/portal/audit")).status_code == 303
    async with sessionmaker() as session:
        event = await session.scalar(select(AuditEvent).where(AuditEvent.activity == "user.update"))
    assert event is not None and "1 session(s) ended" in (event.detail or "")


async def test_one_time_password_forces_a_change_before_anything_else(
    client: httpx.AsyncClient, factory: Factory
) -> None:
    boss = await factory.admin("Global administrator")
    created = await client.post("/api/v1/admins", json={"email": "new@example.com"}, headers=boss.headers)
    one_time = created.json()["one_time_password"]
    response = await sign_in(client, "new@example.com", one_time)
    assert response.headers["location"] == "/portal/account/password"
    assert (await client.get("/portal/admins")).headers["location"] == "/portal/account/password"
    assert (await client.get("/api/v1/me")).status_code == 403
    page = await client.get("/portal/account/password")
    weak = await client.post(
        "/portal/account/password",
        data={
            "csrf_token": csrf_of(page.text),
            "current_password": one_time,
            "new_password": "short",
            "confirm_password": "short",
        },
    )
    assert weak.status_code == 422 and "at least 12 characters" in weak.text
    done = await client.post(
        "/portal/account/password",
        data={
            "csrf_token": csrf_of(page.text),
            "current_password": one_time,
            "new_password": "a brand new passphrase",
            "confirm_password": "a brand new passphrase",
        },
    )
    assert done.status_code == 303
    assert (await client.get("/api/v1/me")).status_code == 200


async def test_two_step_verification_enrolment_and_sign_in(
    app: FastAPI, client: httpx.AsyncClient, factory: Factory, sessionmaker: async_sessionmaker[AsyncSession]
) -> None:
    admin = await factory.admin(token=False)
    await sign_in(client, admin.email)
    setup = await client.get("/portal/account/two-step")
    secret = re.search(r"\b([A-Z2-7]{32})\b", setup.text)
    sealed = re.search(r'name="sealed" value="([^"]+)"', setup.text)
    assert secret and sealed and "data:image/svg+xml" in setup.text
    totp = pyotp.TOTP(secret.group(1))
    bad = await client.post(
        "/portal/account/two-step",
        data={"csrf_token": csrf_of(setup.text), "sealed": sealed.group(1), "code": "000000"},
    )
    assert bad.status_code == 422
    good = await client.post(
        "/portal/account/two-step",
        data={"csrf_token": csrf_of(setup.text), "sealed": sealed.group(1), "code": totp.now()},
    )
    assert good.status_code == 303
    async with sessionmaker() as session:
        user = await session.get(User, admin.id)
        assert user is not None and user.totp_enabled_at is not None
        assert user.totp_secret_encrypted and secret.group(1) not in user.totp_secret_encrypted

    async with new_client(app) as fresh:
        response = await sign_in(fresh, admin.email)
        assert response.headers["location"].startswith("/portal/sign-in/verify")
        # Password alone grants nothing.
        assert (await fresh.get("/portal/audit")).status_code == 303
        assert (await fresh.get("/api/v1/me")).status_code == 401
        form = await fresh.get(response.headers["location"])
        token = csrf_of(form.text)
        # The code used at enrolment cannot be replayed.
        replay = await fresh.post("/portal/sign-in/verify", data={"csrf_token": token, "code": totp.now()})
        assert replay.status_code == 401
        step = int(utcnow().timestamp()) // 30 + 1
        code = totp.at(step * 30)
        ok = await fresh.post("/portal/sign-in/verify", data={"csrf_token": token, "code": code})
        assert ok.status_code == 303 and ok.headers["location"] == "/portal"
        assert (await fresh.get("/api/v1/me")).status_code == 200
        again = await fresh.post("/portal/sign-in/verify", data={"csrf_token": token, "code": code})
        assert again.headers["location"] == "/portal/sign-in"  # the pending session is gone
