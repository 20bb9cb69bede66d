"""One rule for the characters of names and identifiers (corral.kit.text), whichever way a user, group or
device gets them: the admin API and admin center, SCIM, OpenID Connect, the device protocol. Identifiers
holding a control, format, surrogate or separator character (U+202E RIGHT-TO-LEFT OVERRIDE, U+0017…) are
refused; names lose them. And no page displays a bidirectional override, even one stored earlier."""

from __future__ import annotations

import json
import uuid
from typing import Any

import httpx
import pytest
from sqlalchemy import select, update
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from corral.kit.text import clean_name, identifier_problem, without_bidi_controls
from corral.models import Device, Group, User
from corral.rbac.roles import GLOBAL_ADMINISTRATOR
from tests.conftest import Admin, Factory, audit_rows, count_rows, csrf_of, sign_in
from tests.devices.device import TestDevice
from tests.identity.test_oidc import connect, sso
from tests.peers.idp_server import Idp
from tests.scim.helpers import ERROR, SCIM_JSON, Connection, make_connection, patch

RLO, ETB, ZWSP, LSEP, BOM, NUL = "\u202e", "\u0017", "\u200b", "\u2028", "\ufeff", "\u0000"
UNSAFE = [RLO, ETB, ZWSP, LSEP, BOM, NUL, "\u2066", "\u200e", "\ud800", "\x85", "\U000e0041"]


# ------------------------------------------------------------------------------------------- the rule
@pytest.mark.parametrize("char", UNSAFE, ids=lambda c: f"U+{ord(c):04X}")
def test_the_rule_refuses_identifiers_and_cleans_names(char: str) -> None:
    assert identifier_problem(f"ad{char}ele@contoso.example") is not None
    assert clean_name(f" Ad{char}ele ") in {"Adele", "Ad ele"}


def test_the_rule_keeps_what_names_need() -> None:
    for name in ("Ärzte & Pflege", "日本", "O'Brien-Smith", "José", "e\u0301"):
        assert clean_name(name) == name and identifier_problem(name) is None
    # The zero-width joiners stay in names (Persian, the Indic scripts, emoji need them), not identifiers.
    for name in ("\u0645\u06cc\u200c\u062e\u0648\u0627\u0647\u0645", "👩\u200d💻 Dev"):  # (Persian)
        assert clean_name(name) == name and identifier_problem(name) is not None
    assert clean_name("Chief\nOfficer\tEMEA") == "Chief Officer EMEA"
    assert without_bidi_controls(f"Eve{RLO}txt.exe") == "Evetxt.exe"


# ------------------------------------------------------------------------------------------- admin API
@pytest.fixture
async def glob(factory: Factory) -> Admin:
    return await factory.admin(GLOBAL_ADMINISTRATOR.name)


@pytest.mark.parametrize("char", [RLO, ETB, ZWSP, LSEP, BOM, "\ud800"], ids=lambda c: f"U+{ord(c):04X}")
async def test_local_identifiers_with_unsafe_characters_are_a_422_and_nothing_is_created(
    client: httpx.AsyncClient, glob: Admin, sessionmaker: async_sessionmaker[AsyncSession], char: str
) -> None:
    """(A line separator is also whitespace, which the address pattern refuses first, and so is U+FEFF, a
    blank to JSON Schema's \\s which the pattern also names; a lone surrogate is sent as its JSON escape,
    which the JSON decoder already refuses.)"""
    users = await count_rows(sessionmaker, "users")
    for path, body in (
        ("/api/v1/users", {"user_principal_name": f"eve{char}@contoso.example", "display_name": "Eve"}),
        (
            "/api/v1/users",
            {"user_principal_name": "eve@contoso.example", "display_name": "Eve", "email": f"e{char}@x.io"},
        ),
        ("/api/v1/admins", {"email": f"eve{char}@contoso.example"}),
    ):
        raw = json.dumps(body).encode()  # ensure_ascii: a lone surrogate travels as \\ud800
        response = await client.post(
            path, content=raw, headers={**glob.headers, "Content-Type": "application/json"}
        )
        assert response.status_code == 422, (body, response.text)
        refused_before = char.isspace() or char == BOM or 0xD800 <= ord(char) <= 0xDFFF  # pattern, decoding
        if not refused_before:
            assert "control, format or separator" in response.text
    assert await count_rows(sessionmaker, "users") == users
    created = await client.post(
        "/api/v1/users",
        json={"user_principal_name": "eve@contoso.example", "display_name": "Eve"},
        headers=glob.headers,
    )
    renamed = await client.patch(
        f"/api/v1/users/{created.json()['id']}",
        content=json.dumps({"user_principal_name": f"e{char}ve@contoso.example"}).encode(),
        headers={**glob.headers, "Content-Type": "application/json"},
    )
    assert renamed.status_code == 422, renamed.text


async def test_local_names_lose_unsafe_characters(
    client: httpx.AsyncClient, glob: Admin, sessionmaker: async_sessionmaker[AsyncSession]
) -> None:
    body = {
        "user_principal_name": "eve@contoso.example",
        "display_name": f"Eve {RLO}exe.txt{ETB}",
        "given_name": f"E{ZWSP}ve",
        "job_title": f"Chief{LSEP}Officer",
        "department": RLO,
    }
    created = await client.post("/api/v1/users", json=body, headers=glob.headers)
    assert created.status_code == 201, created.text
    user = created.json()
    assert (user["display_name"], user["given_name"], user["job_title"], user["department"]) == (
        "Eve exe.txt",
        "Eve",
        "Chief Officer",
        None,
    )
    only_unsafe = await client.patch(
        f"/api/v1/users/{user['id']}", json={"display_name": f"{RLO}{BOM}"}, headers=glob.headers
    )
    assert only_unsafe.status_code == 422  # nothing left: a display name is required
    group = await client.post(
        "/api/v1/groups", json={"display_name": f"Help{RLO} desk"}, headers=glob.headers
    )
    assert group.status_code == 201 and group.json()["display_name"] == "Help desk"
    async with sessionmaker() as session:
        stored = await session.get(User, uuid.UUID(user["id"]))
    assert stored is not None and stored.display_name == "Eve exe.txt"


async def test_the_admin_center_form_follows_the_same_rule(
    client: httpx.AsyncClient, factory: Factory, sessionmaker: async_sessionmaker[AsyncSession]
) -> None:
    admin = await factory.admin(GLOBAL_ADMINISTRATOR.name, token=False)
    assert (await sign_in(client, admin.email)).status_code == 303
    page = await client.get("/portal/users/new")
    form = {
        "csrf_token": csrf_of(page.text),
        "user_principal_name": f"eve{RLO}@contoso.example",
        "display_name": "Eve",
    }
    refused = await client.post("/portal/users/new", data=form)
    assert refused.status_code == 422 and "control, format or separator" in refused.text
    async with sessionmaker() as session:
        assert await session.scalar(select(User).where(User.display_name == "Eve")) is None


# ------------------------------------------------------------------------------------------- SCIM
@pytest.fixture
async def entra(sessionmaker: async_sessionmaker[AsyncSession]) -> Connection:
    return await make_connection(sessionmaker, "Contoso Entra ID")


def scim_user(**changes: Any) -> dict[str, Any]:
    body: dict[str, Any] = {
        "schemas": ["urn:ietf:params:scim:schemas:core:2.0:User"],
        "userName": "adele@contoso.example",
        "externalId": "ext-adele",
        "displayName": "Adele Vance",
        "emails": [{"primary": True, "value": "adele@contoso.example"}],
        "name": {"givenName": "Adele", "familyName": "Vance"},
    }
    body.update(changes)
    return body


def assert_invalid_value(response: httpx.Response, attribute: str) -> None:
    assert response.status_code == 400, response.text
    assert response.headers["content-type"].startswith(SCIM_JSON)
    body = response.json()
    assert body["schemas"] == [ERROR] and body["status"] == "400" and body["scimType"] == "invalidValue"
    assert attribute in body["detail"] and "control, format or separator" in body["detail"]


@pytest.mark.parametrize("char", [RLO, ETB, ZWSP, "\u2029"], ids=lambda c: f"U+{ord(c):04X}")
async def test_scim_identifiers_with_unsafe_characters_are_400_invalid_value(
    client: httpx.AsyncClient, entra: Connection, sessionmaker: async_sessionmaker[AsyncSession], char: str
) -> None:
    for attribute, body in (
        ("userName", scim_user(userName=f"adele{char}@contoso.example")),
        ("externalId", scim_user(externalId=f"e{char}xt")),
        ("emails.value", scim_user(emails=[{"primary": True, "value": f"a{char}@contoso.example"}])),
    ):
        assert_invalid_value(await client.post("/scim/v2/Users", json=body, headers=entra.headers), attribute)
    assert await count_rows(sessionmaker, "users") == 0
    created = await client.post("/scim/v2/Users", json=scim_user(), headers=entra.headers)
    assert created.status_code == 201, created.text
    url = f"/scim/v2/Users/{created.json()['id']}"
    replaced = await client.patch(
        url,
        json=patch({"op": "replace", "path": "userName", "value": f"x{char}@y.example"}),
        headers=entra.headers,
    )
    assert_invalid_value(replaced, "userName")
    group = {
        "schemas": ["urn:ietf:params:scim:schemas:core:2.0:Group"],
        "displayName": "G",
        "externalId": f"g{char}1",
    }
    assert_invalid_value(
        await client.post("/scim/v2/Groups", json=group, headers=entra.headers), "externalId"
    )
    async with sessionmaker() as session:
        user = await session.scalar(select(User))
    assert user is not None and user.user_principal_name == "adele@contoso.example"


async def test_scim_names_lose_unsafe_characters(
    client: httpx.AsyncClient, entra: Connection, sessionmaker: async_sessionmaker[AsyncSession]
) -> None:
    body = scim_user(
        displayName=f"Adele {RLO}Vance", title=f"Retail{LSEP}manager", name={"givenName": f"A{ETB}dele"}
    )
    created = await client.post("/scim/v2/Users", json=body, headers=entra.headers)
    assert created.status_code == 201, created.text
    group = {"schemas": ["urn:ietf:params:scim:schemas:core:2.0:Group"], "displayName": f"Sales{RLO}"}
    made = await client.post("/scim/v2/Groups", json=group, headers=entra.headers)
    assert made.status_code == 201 and made.json()["displayName"] == "Sales"
    async with sessionmaker() as session:
        user = await session.scalar(select(User))
    assert user is not None
    assert (user.display_name, user.job_title, user.given_name) == ("Adele Vance", "Retail manager", "Adele")


# ------------------------------------------------------------------------------------------- OpenID Connect
async def test_oidc_first_sign_in_with_an_unsafe_account_name_is_refused_with_a_page(
    client: httpx.AsyncClient, factory: Factory, idp: Idp, sessionmaker: async_sessionmaker[AsyncSession]
) -> None:
    connection = await connect(client, factory, idp)
    login = f"u{uuid.uuid4().hex[:10]}"
    idp.set_user(login, email=f"{login}{RLO}@example.com", name="Mallory")
    response = await sso(client, connection["id"], login)
    assert response.status_code == 403
    assert "email claim cannot name a Corral account" in response.text and "U+202E" in response.text
    async with sessionmaker() as session:
        assert await session.scalar(select(User).where(User.display_name == "Mallory")) is None
    (refusal,) = await audit_rows(sessionmaker, activity="signin", result="failure")
    assert "cannot name a Corral account" in (refusal.detail or "")


async def test_oidc_names_lose_unsafe_characters_and_unsafe_group_claims_are_left_out(
    client: httpx.AsyncClient, factory: Factory, idp: Idp, sessionmaker: async_sessionmaker[AsyncSession]
) -> None:
    connection = await connect(client, factory, idp)
    login = f"u{uuid.uuid4().hex[:10]}"
    idp.set_user(
        login, email=f"{login}@example.com", name=f"Eve {RLO}exe.txt", groups=["staff", f"ad{RLO}mins"]
    )
    assert (await sso(client, connection["id"], login)).status_code == 303
    async with sessionmaker() as session:
        user = await session.scalar(select(User).where(User.user_principal_name == f"{login}@example.com"))
        groups = (await session.scalars(select(Group.external_id))).all()
    assert user is not None and user.display_name == "Eve exe.txt"
    assert sorted(groups) == ["staff"]


# ------------------------------------------------------------------------------------------- devices
async def test_device_serials_are_identifiers_and_device_names_are_cleaned(
    client: httpx.AsyncClient, glob: Admin, sessionmaker: async_sessionmaker[AsyncSession]
) -> None:
    token = await client.post(
        "/api/v1/enrollment-tokens", json={"name": "T", "platforms": ["linux"]}, headers=glob.headers
    )
    secret = token.json()["token"]
    refused = await TestDevice(client, serial=f"SN{RLO}1").enroll(secret)
    assert refused.status_code == 422 and "serial_number" in refused.text
    device = TestDevice(client, name=f"kiosk{RLO}-7{ETB}")
    assert (await device.enroll(secret)).status_code == 201
    async with sessionmaker() as session:
        stored = await session.scalar(select(Device))
    assert stored is not None and stored.name == "kiosk-7"


# ------------------------------------------------------------------------------------------- display
async def test_no_page_displays_a_bidirectional_override_even_one_stored_earlier(
    client: httpx.AsyncClient, factory: Factory, sessionmaker: async_sessionmaker[AsyncSession]
) -> None:
    admin = await factory.admin(GLOBAL_ADMINISTRATOR.name, token=False)
    user_id = await factory.user("legacy@contoso.example")
    async with sessionmaker() as session:  # as a name stored before names were cleaned would be
        await session.execute(update(User).where(User.id == user_id).values(display_name=f"Eve {RLO}exe.txt"))
        await session.commit()
    assert (await sign_in(client, admin.email)).status_code == 303
    for path in ("/portal/users", f"/portal/users/{user_id}", "/portal/users?search=Eve"):
        page = await client.get(path)
        assert page.status_code == 200, path
        assert "Eve exe.txt" in page.text and RLO not in page.text, path
