"""End users (people holding no role) signing in with OpenID Connect, against the real provider: a session
where the connection admits end users, their own devices and nothing else."""

from __future__ import annotations

import uuid
from typing import Any

import httpx
from sqlalchemy import update
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from corral.models import Device, ManagementState, User
from corral.rbac.roles import GLOBAL_ADMINISTRATOR, HELP_DESK_OPERATOR
from tests.conftest import Factory, audit_rows, csrf_of
from tests.devices.test_enrollment_and_checkin import enrolled
from tests.identity.conftest import account, session_cookie_set
from tests.identity.test_oidc import _oidc_user, connect, role_for_group, sso
from tests.peers.idp_server import Idp


async def end_user_signed_in(
    client: httpx.AsyncClient, factory: Factory, idp: Idp, **connection: Any
) -> tuple[dict[str, Any], str, httpx.Response]:
    created = await connect(client, factory, idp, **connection)
    login = account()
    idp.set_user(login, email=f"{login}@example.com", name="Erin Enduser", groups=["staff"])
    return created, login, await sso(client, created["id"], login)


async def device_of(
    client: httpx.AsyncClient,
    factory: Factory,
    sessionmaker: async_sessionmaker[AsyncSession],
    user_id: uuid.UUID | None,
    **values: Any,
) -> str:
    """An enrolled device whose primary user is ``user_id`` (as an administrator would arrange it)."""
    admin = await factory.admin(GLOBAL_ADMINISTRATOR.name)
    device = await enrolled(client, admin)
    assert device.device_id is not None
    async with sessionmaker() as session:
        await session.execute(
            update(Device).where(Device.id == uuid.UUID(device.device_id)).values(user_id=user_id, **values)
        )
        await session.commit()
    return device.name


async def test_end_user_signs_in_lands_on_my_devices_and_sees_only_their_own(
    client: httpx.AsyncClient, factory: Factory, idp: Idp, sessionmaker: async_sessionmaker[AsyncSession]
) -> None:
    connection, login, response = await end_user_signed_in(client, factory, idp)
    assert response.status_code == 303, response.text
    assert session_cookie_set(response)
    me = await _oidc_user(sessionmaker, login)
    (signin,) = await audit_rows(sessionmaker, activity="signin", result="success", target_id=str(me.id))
    assert signin.detail == f"oidc {connection['name']} (end user); groups added: staff; removed: -"
    assert (signin.actor_type, signin.actor_id) == ("user", me.id)

    mine = await device_of(client, factory, sessionmaker, me.id)
    gone = await device_of(client, factory, sessionmaker, me.id, management_state=ManagementState.retired)
    theirs = await device_of(client, factory, sessionmaker, await factory.user())
    nobodys = await device_of(client, factory, sessionmaker, None)

    home = await client.get(response.headers["location"])  # /portal, where every sign-in lands
    assert home.status_code == 303 and home.headers["location"] == "/portal/my-devices"
    page = await client.get("/portal/my-devices")
    assert page.status_code == 200, page.text
    assert mine in page.text
    for other in (gone, theirs, nobodys):
        assert other not in page.text
    assert 'Devices <span class="muted">(1)</span>' in page.text
    # The navigation offers self-service only: no administration, no dashboard, no API tokens.
    assert 'href="/portal/my-devices" aria-current="page"' in page.text
    for admin_page in ('href="/portal/devices"', 'href="/portal/users"', 'href="/portal/api-tokens"'):
        assert admin_page not in page.text
    assert 'href="/portal/devices/' not in page.text  # no link to the admin device page


async def test_me_devices_api_lists_the_callers_own_devices(
    client: httpx.AsyncClient, factory: Factory, idp: Idp, sessionmaker: async_sessionmaker[AsyncSession]
) -> None:
    _, login, response = await end_user_signed_in(client, factory, idp)
    assert response.status_code == 303, response.text
    me = await _oidc_user(sessionmaker, login)
    mine = await device_of(client, factory, sessionmaker, me.id)
    await device_of(client, factory, sessionmaker, await factory.user())

    listed = await client.get("/api/v1/me/devices")  # the session cookie
    assert listed.status_code == 200, listed.text
    (device,) = listed.json()
    assert device["name"] == mine
    assert device["platform"] == "linux" and device["ownership"] == "company"
    assert device["management_state"] == "managed" and "compliance_state" in device
    assert "user_id" not in device and "scope_tags" not in device

    # An administrator with a token sees their own devices too (here none), not everyone's.
    admin = await factory.admin(GLOBAL_ADMINISTRATOR.name)
    client.cookies.clear()
    assert (await client.get("/api/v1/me/devices", headers=admin.headers)).json() == []


async def test_end_user_is_forbidden_on_admin_pages_and_apis(
    client: httpx.AsyncClient, factory: Factory, idp: Idp
) -> None:
    _, _, response = await end_user_signed_in(client, factory, idp)
    assert response.status_code == 303, response.text
    assert (await client.get("/api/v1/me")).json()["permissions"] == {}
    for path in (
        "/portal/devices",
        "/portal/users",
        "/portal/audit",
        "/portal/identity-connections",
        "/api/v1/devices",
        "/api/v1/users",
        "/api/v1/audit-events",
    ):
        assert (await client.get(path)).status_code == 403, path


async def test_end_user_cannot_create_api_tokens(
    client: httpx.AsyncClient, factory: Factory, idp: Idp
) -> None:
    _, _, response = await end_user_signed_in(client, factory, idp)
    assert response.status_code == 303, response.text
    page = await client.get("/portal/api-tokens")
    assert page.status_code == 200
    assert 'action="/portal/api-tokens"' not in page.text  # no form to create one
    assert "Only administrators" in page.text
    csrf = csrf_of(page.text)
    posted = await client.post("/portal/api-tokens", data={"csrf_token": csrf, "name": "mine"})
    assert posted.status_code == 403
    assert "Only administrators" in posted.text
    api = await client.post("/api/v1/api-tokens", json={"name": "mine"}, headers={"X-CSRF-Token": csrf})
    assert api.status_code == 403
    assert "Only administrators" in api.json()["detail"]
    assert (await client.get("/api/v1/api-tokens")).json() == []


async def test_end_user_account_page_offers_no_password_or_two_step(
    client: httpx.AsyncClient, factory: Factory, idp: Idp
) -> None:
    _, login, response = await end_user_signed_in(client, factory, idp)
    assert response.status_code == 303, response.text
    page = await client.get("/portal/account")
    assert page.status_code == 200
    assert f"{login}@example.com" in page.text
    assert "identity provider" in page.text
    assert "/portal/account/password" not in page.text and "/portal/account/two-step" not in page.text


async def test_end_user_is_refused_where_the_connection_admits_administrators_only(
    client: httpx.AsyncClient, factory: Factory, idp: Idp, sessionmaker: async_sessionmaker[AsyncSession]
) -> None:
    connection, login, response = await end_user_signed_in(client, factory, idp, user_sign_in=False)
    assert response.status_code == 403
    assert f"{connection['name']} is not enabled for end-user sign-in" in response.text
    assert not session_cookie_set(response)
    assert (await client.get("/api/v1/me/devices")).status_code == 401
    me = await _oidc_user(sessionmaker, login)
    (refusal,) = await audit_rows(sessionmaker, activity="signin", target_id=str(me.id))
    assert refusal.result == "failure"
    assert "not enabled for end-user sign-in" in refusal.detail


async def test_administrator_is_refused_where_the_connection_admits_end_users_only(
    client: httpx.AsyncClient, factory: Factory, idp: Idp, sessionmaker: async_sessionmaker[AsyncSession]
) -> None:
    """A session carries every permission its user holds: an end-user connection does not sign admins in."""
    connection = await connect(client, factory, idp, admin_sign_in=False)
    team, login = f"ops-{uuid.uuid4().hex[:6]}", account()
    await role_for_group(sessionmaker, connection["id"], team, HELP_DESK_OPERATOR.id)
    idp.set_user(login, email=f"{login}@example.com", name="Helper", groups=[team])
    response = await sso(client, connection["id"], login)
    assert response.status_code == 403
    assert f"{connection['name']} is not enabled for administrator sign-in" in response.text
    assert not session_cookie_set(response)


async def test_disabled_end_user_is_refused(
    client: httpx.AsyncClient, factory: Factory, idp: Idp, sessionmaker: async_sessionmaker[AsyncSession]
) -> None:
    connection, login, response = await end_user_signed_in(client, factory, idp)
    assert response.status_code == 303, response.text
    async with sessionmaker() as session:
        await session.execute(
            update(User).where(User.user_principal_name == f"{login}@example.com").values(enabled=False)
        )
        await session.commit()
    client.cookies.clear()
    again = await sso(client, connection["id"], login)
    assert again.status_code == 403
    assert "disabled" in again.text
    assert not session_cookie_set(again)


async def test_an_end_users_session_stays_self_service_when_they_are_given_a_role(
    client: httpx.AsyncClient, factory: Factory, idp: Idp, sessionmaker: async_sessionmaker[AsyncSession]
) -> None:
    _connection, login, response = await end_user_signed_in(client, factory, idp, admin_sign_in=False)
    assert response.status_code == 303, response.text
    me = await _oidc_user(sessionmaker, login)
    admin = await factory.admin(GLOBAL_ADMINISTRATOR.name)
    roles = (await client.get("/api/v1/roles", headers=admin.headers)).json()
    help_desk = next(r["id"] for r in roles if r["name"] == HELP_DESK_OPERATOR.name)
    given = await client.post(
        "/api/v1/role-assignments",
        json={"name": "Erin's desk", "role_id": help_desk, "member_ids": [str(me.id)]},
        headers=admin.headers,
    )
    assert given.status_code == 201, given.text
    # The session was opened for an end user on a connection that admits no administrator: it carries no
    # permission, whatever the person holds now; a new sign-in where administrators may would.
    assert (await client.get("/api/v1/devices")).status_code == 403
    assert (await client.get("/portal/devices")).status_code == 403
    assert (await client.get("/portal/my-devices")).status_code == 200
    permissions = (await client.get("/api/v1/me")).json()["permissions"]
    assert permissions == {}
