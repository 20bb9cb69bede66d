"""Signing in by user principal name (any case), or by a local account's own email address when no one else
has it; failures count against the account whichever name was typed."""

from __future__ import annotations

import uuid

import httpx
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from corral.config import Settings
from corral.rbac.roles import GLOBAL_ADMINISTRATOR
from tests.conftest import Factory, audit_rows, sign_in
from tests.users.helpers import set_user


async def test_sign_in_name_is_case_insensitive(client: httpx.AsyncClient, factory: Factory) -> None:
    admin = await factory.admin(GLOBAL_ADMINISTRATOR.name, email="mixed.case@example.com", token=False)
    response = await sign_in(client, "  Mixed.CASE@Example.com ", admin.password)
    assert response.status_code == 303, response.text


async def test_local_account_signs_in_with_its_upn_or_its_own_email(
    client: httpx.AsyncClient, factory: Factory, sessionmaker: async_sessionmaker[AsyncSession]
) -> None:
    admin = await factory.admin(GLOBAL_ADMINISTRATOR.name, email="jo@mail.example", token=False)
    await set_user(sessionmaker, admin.id, user_principal_name="jo.doe@corp.example")
    for name in ("jo.doe@corp.example", "JO@mail.example"):
        client.cookies.clear()
        assert (await sign_in(client, name)).status_code == 303, name
    events = await audit_rows(sessionmaker, activity="signin", result="success")
    assert {e.actor_name for e in events} == {"jo.doe@corp.example"}  # the account's name, not what was typed


async def test_an_email_address_two_users_share_signs_nobody_in(
    client: httpx.AsyncClient, factory: Factory, sessionmaker: async_sessionmaker[AsyncSession]
) -> None:
    first = await factory.admin(GLOBAL_ADMINISTRATOR.name, email="shared@mail.example", token=False)
    await set_user(sessionmaker, first.id, user_principal_name="first@corp.example")
    second = await factory.admin(None, email="second@corp.example", token=False)
    await set_user(sessionmaker, second.id, email="shared@mail.example")
    assert (await sign_in(client, "shared@mail.example")).status_code == 401
    assert (await sign_in(client, "first@corp.example")).status_code == 303


async def test_an_identity_provider_accounts_email_is_not_a_sign_in_name(
    client: httpx.AsyncClient, factory: Factory, sessionmaker: async_sessionmaker[AsyncSession]
) -> None:
    person = await factory.admin(None, email="sso@mail.example", token=False)
    await set_user(sessionmaker, person.id, user_principal_name="sso@corp.example", source="oidc")
    assert (await sign_in(client, "sso@mail.example")).status_code == 401


async def test_failures_count_against_the_account_whichever_name_is_typed(
    client: httpx.AsyncClient,
    factory: Factory,
    settings: Settings,
    sessionmaker: async_sessionmaker[AsyncSession],
) -> None:
    admin = await factory.admin(GLOBAL_ADMINISTRATOR.name, email="target@mail.example", token=False)
    await set_user(sessionmaker, admin.id, user_principal_name="target@corp.example")
    names = ["target@corp.example", "target@mail.example"]
    for attempt in range(settings.signin_max_failures_per_account_and_client):
        response = await sign_in(client, names[attempt % 2], "wrong password " + uuid.uuid4().hex)
        assert response.status_code == 401
    for name in names:
        assert (await sign_in(client, name)).status_code == 429, name
