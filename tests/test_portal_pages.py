"""Portal forms over raw HTTP: secrets shown exactly once, inline errors that change nothing."""

from __future__ import annotations

import re

import httpx
from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from corral.models import ApiToken, User
from corral.rbac.roles import HELP_DESK_OPERATOR
from tests.conftest import Factory, csrf_of, sign_in


async def test_new_admin_one_time_password_is_shown_once_and_reload_shows_nothing(
    client: httpx.AsyncClient, factory: Factory
) -> None:
    admin = await factory.admin(token=False)
    await sign_in(client, admin.email)
    page = await client.get("/portal/admins")
    created = await client.post(
        "/portal/admins",
        data={
            "csrf_token": csrf_of(page.text),
            "email": "new.helper@example.com",
            "display_name": "New Helper",
            "role_id": str(HELP_DESK_OPERATOR.id),
        },
    )
    assert created.status_code == 303
    assert re.fullmatch(r"/portal/admins/[0-9a-f-]{36}/credentials", created.headers["location"])
    assert "new.helper" not in created.text  # nothing secret in the redirect itself
    shown = await client.get(created.headers["location"])
    password = re.search(r'id="one-time-password"[^>]*>([^<]+)<', shown.text)
    assert shown.status_code == 200 and password
    reload = await client.get(created.headers["location"])
    assert password.group(1) not in reload.text
    assert "No one-time password" in reload.text


async def test_new_api_token_is_shown_once(
    client: httpx.AsyncClient, factory: Factory, sessionmaker: async_sessionmaker[AsyncSession]
) -> None:
    admin = await factory.admin(token=False)
    await sign_in(client, admin.email)
    page = await client.get("/portal/api-tokens")
    created = await client.post(
        "/portal/api-tokens", data={"csrf_token": csrf_of(page.text), "name": "ci", "expires_in_days": "30"}
    )
    assert created.status_code == 303
    shown = await client.get("/portal/api-tokens")
    token = re.search(r"corral_pat_[A-Za-z0-9_-]{20,}", shown.text)
    assert token
    assert token.group(0) not in (await client.get("/portal/api-tokens")).text
    me = await client.get("/api/v1/me", headers={"Authorization": f"Bearer {token.group(0)}"})
    assert me.status_code == 200
    async with sessionmaker() as session:
        assert await session.scalar(select(func.count()).select_from(ApiToken)) == 1


async def test_invalid_admin_form_shows_inline_error_and_creates_nothing(
    client: httpx.AsyncClient, factory: Factory, sessionmaker: async_sessionmaker[AsyncSession]
) -> None:
    admin = await factory.admin(token=False)
    await sign_in(client, admin.email)
    page = await client.get("/portal/admins")
    for email, status in [("not-an-email", 422), (admin.email.upper(), 409)]:
        response = await client.post(
            "/portal/admins", data={"csrf_token": csrf_of(page.text), "email": email}
        )
        assert response.status_code == status
        assert 'role="alert"' in response.text and f'value="{email}"' in response.text
    async with sessionmaker() as session:
        assert await session.scalar(select(func.count()).select_from(User)) == 1


async def test_unknown_page_and_unknown_object_render_an_error_page(
    client: httpx.AsyncClient, factory: Factory
) -> None:
    admin = await factory.admin(token=False)
    await sign_in(client, admin.email)
    missing = await client.get("/portal/does-not-exist")
    assert missing.status_code == 404 and "text/html" in missing.headers["content-type"]
    unknown = await client.get("/portal/roles/00000000-0000-0000-0000-000000000000")
    assert unknown.status_code == 404 and "No such role." in unknown.text
    malformed = await client.get("/portal/roles/not-a-uuid")  # ids are UUIDs: this names nothing
    assert malformed.status_code == 404 and "text/html" in malformed.headers["content-type"]
