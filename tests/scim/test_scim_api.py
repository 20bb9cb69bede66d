"""SCIM 2.0 in process: token authentication, Entra ID's habits, filters and their errors, PATCH, groups and
their members, pagination, deprovisioning (sessions end, the tenant's device policy applies), auditing with
the connection as the actor, and no licence data."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest
from sqlalchemy import func, select, update
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from corral.kit.security import token_digest
from corral.models import IdentityConnection, User, UserSession
from corral.rbac.roles import GLOBAL_ADMINISTRATOR, HELP_DESK_OPERATOR
from tests.conftest import Factory, audit_rows
from tests.scim.helpers import ENTERPRISE, ERROR, SCIM_JSON, Connection, make_connection, patch
from tests.users.helpers import commands_of, devices_for, set_policy

USERS = "/scim/v2/Users"
GROUPS = "/scim/v2/Groups"


@pytest.fixture
async def entra(sessionmaker: async_sessionmaker[AsyncSession]) -> Connection:
    return await make_connection(sessionmaker, "Contoso Entra ID")


def entra_user(
    upn: str = "adele.vance@contoso.example",
    external_id: str = "ext-adele",
    email: str = "Adele@contoso.example",
) -> dict[str, Any]:
    """The body Entra ID's provisioning service sends (default attribute mappings)."""
    return {
        "schemas": ["urn:ietf:params:scim:schemas:core:2.0:User", ENTERPRISE],
        "externalId": external_id,
        "userName": upn,
        "active": True,
        "displayName": "Adele Vance",
        "title": "Retail manager",
        "emails": [{"primary": True, "type": "work", "value": email}],
        "name": {"formatted": "Adele Vance", "familyName": "Vance", "givenName": "Adele"},
        "phoneNumbers": [{"type": "work", "value": "+1 555 0100"}],
        "addresses": [{"type": "work", "country": "US"}],
        ENTERPRISE: {"department": "Retail", "employeeNumber": "42", "manager": {"value": "ext-boss"}},
    }


async def create(client: httpx.AsyncClient, conn: Connection, body: dict[str, Any] | None = None) -> Any:
    response = await client.post(USERS, json=body or entra_user(), headers=conn.headers)
    assert response.status_code == 201, response.text
    return response.json()


def assert_error(response: httpx.Response, status: int, scim_type: str | None = None) -> None:
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith(SCIM_JSON)
    body = response.json()
    assert body["schemas"] == [ERROR] and body["status"] == str(status)
    if scim_type is not None:
        assert body["scimType"] == scim_type


# ----------------------------------------------------------------------------------------------- tokens
@pytest.mark.parametrize(
    "authorization", [None, "Bearer", "Bearer cscim_not-a-real-token", "Basic dXNlcjpwYXNz", "cscim_x"]
)
async def test_missing_or_wrong_token_is_401(
    client: httpx.AsyncClient, entra: Connection, authorization: str | None
) -> None:
    headers = {"Authorization": authorization} if authorization else {}
    for path in (USERS, GROUPS, "/scim/v2/ServiceProviderConfig", "/scim/v2/Schemas"):
        response = await client.get(path, headers=headers)
        assert_error(response, 401)
        assert response.headers["www-authenticate"].startswith("Bearer")


async def test_an_api_token_is_not_a_scim_token(client: httpx.AsyncClient, factory: Factory) -> None:
    glob = await factory.admin(GLOBAL_ADMINISTRATOR.name)
    assert_error(await client.get(USERS, headers=glob.headers), 401)


@pytest.mark.parametrize("column", ["enabled", "scim_enabled"])
async def test_disabled_connection_or_scim_turned_off_is_401(
    client: httpx.AsyncClient, entra: Connection, sessionmaker: async_sessionmaker[AsyncSession], column: str
) -> None:
    assert (await client.get(USERS, headers=entra.headers)).status_code == 200
    async with sessionmaker() as session:
        await session.execute(
            update(IdentityConnection).where(IdentityConnection.id == entra.id).values({column: False})
        )
        await session.commit()
    assert_error(await client.get(USERS, headers=entra.headers), 401)


async def test_another_connections_token_sees_nothing_of_this_one(
    client: httpx.AsyncClient, entra: Connection, sessionmaker: async_sessionmaker[AsyncSession]
) -> None:
    other = await make_connection(sessionmaker, "Okta")
    adele = await create(client, entra)
    listing = (await client.get(USERS, headers=other.headers)).json()
    assert listing["totalResults"] == 0 and listing["Resources"] == []
    assert_error(await client.get(f"{USERS}/{adele['id']}", headers=other.headers), 404)
    assert_error(
        await client.patch(
            f"{USERS}/{adele['id']}",
            json=patch({"op": "replace", "path": "active", "value": False}),
            headers=other.headers,
        ),
        404,
    )
    assert_error(await client.delete(f"{USERS}/{adele['id']}", headers=other.headers), 404)


async def test_local_users_are_not_visible_through_scim(
    client: httpx.AsyncClient, entra: Connection, factory: Factory
) -> None:
    local = await factory.user("local.person@contoso.example")
    listing = (await client.get(USERS, headers=entra.headers)).json()
    assert listing["totalResults"] == 0
    assert_error(await client.get(f"{USERS}/{local}", headers=entra.headers), 404)


async def test_token_is_issued_once_rotates_and_is_audited(
    client: httpx.AsyncClient, factory: Factory, sessionmaker: async_sessionmaker[AsyncSession]
) -> None:
    conn = await make_connection(sessionmaker, "Entra", token=False)
    glob = await factory.admin(GLOBAL_ADMINISTRATOR.name)
    helpdesk = await factory.admin(HELP_DESK_OPERATOR.name)
    url = f"/api/v1/identity-connections/{conn.id}/scim-token"
    assert (await client.post(url, headers=helpdesk.headers)).status_code == 403
    assert (
        await client.post(f"/api/v1/identity-connections/{uuid.uuid4()}/scim-token", headers=glob.headers)
    ).status_code == 404
    first = await client.post(url, headers=glob.headers)
    assert first.status_code == 201, first.text
    token = first.json()["token"]
    assert token.startswith(first.json()["prefix"]) and first.json()["scim_url"].endswith("/scim/v2")
    async with sessionmaker() as session:
        stored = await session.get(IdentityConnection, conn.id)
        assert stored is not None and stored.scim_enabled
        assert stored.scim_token_hash == token_digest(token)  # only the digest is kept
    bearer = {"Authorization": f"Bearer {token}"}
    assert (await client.get(USERS, headers=bearer)).status_code == 200
    second = (await client.post(url, headers=glob.headers)).json()["token"]
    assert_error(await client.get(USERS, headers=bearer), 401)  # rotated: the old one stops at once
    assert (await client.get(USERS, headers={"Authorization": f"Bearer {second}"})).status_code == 200
    status = (await client.get(f"/api/v1/identity-connections/{conn.id}/scim", headers=glob.headers)).json()
    assert status["scim_enabled"] and "token" not in status and status["last_request_at"]
    assert (await client.delete(url, headers=glob.headers)).status_code == 200
    assert_error(await client.get(USERS, headers={"Authorization": f"Bearer {second}"}), 401)
    events = await audit_rows(sessionmaker, target_id=str(conn.id))
    assert [e.activity for e in events] == [
        "identity_connection.scim_token",
        "identity_connection.scim_token",
        "identity_connection.scim_token_revoke",
    ]
    assert all(token not in str(e.detail) and second not in str(e.detail) for e in events)
    assert events[0].actor_id == glob.id


# ------------------------------------------------------------------------------------------------ users
async def test_entra_user_is_provisioned_with_its_properties_and_audited(
    client: httpx.AsyncClient, entra: Connection, sessionmaker: async_sessionmaker[AsyncSession]
) -> None:
    created = await create(client, entra)
    assert created["userName"] == "adele.vance@contoso.example"
    assert created["emails"] == [{"value": "Adele@contoso.example", "type": "work"}]
    assert created[ENTERPRISE] == {"department": "Retail"}
    assert created["name"] == {"givenName": "Adele", "familyName": "Vance"}
    assert "phoneNumbers" not in created and "addresses" not in created  # not stored: ignored
    async with sessionmaker() as session:
        user = await session.get(User, uuid.UUID(created["id"]))
    assert user is not None
    assert (user.source, user.connection_id, user.external_id) == ("scim", entra.id, "ext-adele")
    assert (user.user_principal_name, user.display_name, user.email) == (
        "adele.vance@contoso.example",
        "Adele Vance",
        "Adele@contoso.example",
    )
    assert (user.given_name, user.surname, user.job_title, user.department) == (
        "Adele",
        "Vance",
        "Retail manager",
        "Retail",
    )
    (event,) = await audit_rows(sessionmaker, activity="user.create", target_id=created["id"])
    assert (event.actor_type, event.actor_id, event.actor_name) == (
        "scim",
        entra.id,
        "SCIM: Contoso Entra ID",
    )


async def test_entra_filters_find_users_by_user_name_and_external_id(
    client: httpx.AsyncClient, entra: Connection
) -> None:
    adele = await create(client, entra)
    await create(client, entra, entra_user("alex.wilber@contoso.example", "ext-alex", "alex@contoso.example"))
    for query in (
        'userName eq "Adele.Vance@contoso.example"',  # userName is not case-exact
        'externalId eq "ext-adele"',
        'emails.value co "adele@"',
        'emails[type eq "work" and value sw "adele"]',
        'userName sw "adele" and active eq true',
        'displayName eq "nobody" or externalId eq "ext-adele"',
        f'id eq "{adele["id"]}"',
        'not (externalId eq "ext-alex")',
    ):
        response = await client.get(USERS, params={"filter": query}, headers=entra.headers)
        assert response.status_code == 200, (query, response.text)
        assert response.headers["content-type"].startswith(SCIM_JSON)
        body = response.json()
        assert [r["id"] for r in body["Resources"]] == [adele["id"]], query
    # externalId is case-exact; a value that matches nothing finds nothing
    for query in ('externalId eq "EXT-ADELE"', 'userName eq "100% _x"', "title pr and active eq false"):
        body = (await client.get(USERS, params={"filter": query}, headers=entra.headers)).json()
        assert body["totalResults"] == 0, query


@pytest.mark.parametrize(
    "query",
    [
        "userName eq",
        'userName eq "unterminated',
        'userName xx "a"',
        'nosuchattribute eq "a"',
        '(userName eq "a"',
        'userName eq "a" and',
        'active eq "maybe"',
        'userName eq "a"; DROP TABLE users',
        'emails[value eq "a"',
    ],
)
async def test_malformed_or_unsupported_filter_is_invalid_filter(
    client: httpx.AsyncClient, entra: Connection, query: str
) -> None:
    assert_error(
        await client.get(USERS, params={"filter": query}, headers=entra.headers), 400, "invalidFilter"
    )


async def test_pagination_with_start_index_and_count(client: httpx.AsyncClient, entra: Connection) -> None:
    ids = [
        (await create(client, entra, entra_user(f"u{i}@contoso.example", f"e{i}")))["id"] for i in range(3)
    ]
    first = (await client.get(USERS, params={"startIndex": 1, "count": 2}, headers=entra.headers)).json()
    second = (await client.get(USERS, params={"startIndex": 3, "count": 2}, headers=entra.headers)).json()
    assert (first["totalResults"], first["itemsPerPage"], first["startIndex"]) == (3, 2, 1)
    assert [r["id"] for r in first["Resources"] + second["Resources"]] == ids
    counted = (await client.get(USERS, params={"count": 0}, headers=entra.headers)).json()
    assert counted["totalResults"] == 3 and counted["Resources"] == []


async def test_user_name_taken_is_a_uniqueness_error(
    client: httpx.AsyncClient, entra: Connection, factory: Factory
) -> None:
    await create(client, entra)
    again = await client.post(
        USERS, json=entra_user("ADELE.VANCE@contoso.example", "other"), headers=entra.headers
    )
    assert_error(again, 409, "uniqueness")
    same_external = await client.post(
        USERS, json=entra_user("x@contoso.example", "ext-adele"), headers=entra.headers
    )
    assert_error(same_external, 409, "uniqueness")
    await factory.user("local@contoso.example")
    assert_error(
        await client.post(USERS, json=entra_user("local@contoso.example", "l"), headers=entra.headers),
        409,
        "uniqueness",
    )


async def test_entra_patch_habits(
    client: httpx.AsyncClient, entra: Connection, sessionmaker: async_sessionmaker[AsyncSession]
) -> None:
    adele = await create(client, entra)
    body = patch(
        {"op": "Replace", "path": "displayName", "value": "Adele V."},
        {"op": "Replace", "path": 'emails[type eq "work"].value', "value": "adele.v@contoso.example"},
        {"op": "Add", "path": f"{ENTERPRISE}:department", "value": "Sales"},
        {"op": "Replace", "path": "name.givenName", "value": "Adèle"},
        {"op": "Add", "path": 'phoneNumbers[type eq "mobile"].value', "value": "+1 555 0199"},  # ignored
        {"op": "Replace", "path": f"{ENTERPRISE}:manager", "value": "ext-boss"},  # ignored
        {"op": "Remove", "path": "title"},
        {"op": "Replace", "value": {"externalId": "ext-adele-2", "name.familyName": "Vance-Smith"}},
    )
    response = await client.patch(f"{USERS}/{adele['id']}", json=body, headers=entra.headers)
    assert response.status_code == 200, response.text
    got = response.json()
    assert got["displayName"] == "Adele V." and got["emails"][0]["value"] == "adele.v@contoso.example"
    assert got[ENTERPRISE] == {"department": "Sales"} and "title" not in got
    assert (
        got["name"] == {"givenName": "Adèle", "familyName": "Vance-Smith"}
        and got["externalId"] == "ext-adele-2"
    )
    events = await audit_rows(sessionmaker, activity="user.update", target_id=adele["id"])
    assert len(events) == 1 and events[0].actor_type == "scim"


async def test_patch_with_an_invalid_operation_changes_nothing(
    client: httpx.AsyncClient, entra: Connection
) -> None:
    adele = await create(client, entra)
    url = f"{USERS}/{adele['id']}"
    cases: list[tuple[dict[str, Any], str]] = [
        (
            patch(
                {"op": "replace", "path": "displayName", "value": "X"},
                {"op": "replace", "path": "noSuchAttribute", "value": 1},
            ),
            "invalidPath",
        ),
        (
            patch(
                {"op": "replace", "path": "displayName", "value": "X"},
                {"op": "replace", "path": "active", "value": "perhaps"},
            ),
            "invalidValue",
        ),
        (patch({"op": "frobnicate", "path": "displayName", "value": "X"}), "invalidValue"),
        (patch({"op": "replace", "path": "id", "value": str(uuid.uuid4())}), "mutability"),
        (patch({"op": "replace", "path": "displayName", "value": 7}), "invalidValue"),
        (patch({"op": "replace", "path": "userName", "value": "x" * 400}), "invalidValue"),
        (patch({"op": "remove"}), "noTarget"),
        ({"Operations": [{"op": "replace", "path": "displayName", "value": "X"}]}, "invalidSyntax"),
    ]
    for body, scim_type in cases:
        assert_error(await client.patch(url, json=body, headers=entra.headers), 400, scim_type)
    assert_error(await client.patch(url, content=b"{not json", headers=entra.headers), 400, "invalidSyntax")
    assert (await client.get(url, headers=entra.headers)).json()["displayName"] == "Adele Vance"


async def test_entra_deprovisioning_disables_with_a_string_then_deletes(
    client: httpx.AsyncClient, entra: Connection, sessionmaker: async_sessionmaker[AsyncSession]
) -> None:
    adele = await create(client, entra)
    user_id = uuid.UUID(adele["id"])
    now = datetime.now(UTC)
    async with sessionmaker() as session:
        for _ in range(3):
            session.add(
                UserSession(
                    id=uuid.uuid4(),
                    token_hash=token_digest(uuid.uuid4().hex),
                    user_id=user_id,
                    csrf_token="x",
                    created_at=now,
                    last_seen_at=now,
                    expires_at=now + timedelta(hours=1),
                )
            )
        await session.commit()
    await set_policy(sessionmaker, "retire")
    (device,) = await devices_for(sessionmaker, user_id, "managed")
    response = await client.patch(
        f"{USERS}/{adele['id']}",
        json=patch({"op": "Replace", "path": "active", "value": "False"}),
        headers=entra.headers,
    )
    assert response.status_code == 200, response.text
    assert response.json()["active"] is False
    async with sessionmaker() as session:
        stmt = select(func.count()).select_from(UserSession).where(UserSession.user_id == user_id)
        assert await session.scalar(stmt) == 0
    assert [c.type for c in await commands_of(sessionmaker, device)] == ["retire"]
    (event,) = await audit_rows(sessionmaker, activity="user.update", target_id=adele["id"])
    assert {p["name"]: p["new"] for p in event.modified_properties} == {"enabled": False}
    assert event.detail and event.detail.startswith("3 session(s) ended; retire queued for 1 device(s)")
    assert (event.actor_type, event.actor_name) == ("scim", "SCIM: Contoso Entra ID")
    # Entra's no-path form, and enabling again
    again = await client.patch(
        f"{USERS}/{adele['id']}",
        json=patch({"op": "replace", "value": {"active": "True"}}),
        headers=entra.headers,
    )
    assert again.json()["active"] is True
    deleted = await client.delete(f"{USERS}/{adele['id']}", headers=entra.headers)
    assert deleted.status_code == 204
    assert_error(await client.get(f"{USERS}/{adele['id']}", headers=entra.headers), 404)
    (gone,) = await audit_rows(sessionmaker, activity="user.delete", target_id=adele["id"])
    assert gone.actor_type == "scim"


async def test_put_replaces_the_user_and_can_deactivate(client: httpx.AsyncClient, entra: Connection) -> None:
    adele = await create(client, entra)
    body = {**entra_user(), "active": False, "title": None, "displayName": "A. Vance"}
    response = await client.put(f"{USERS}/{adele['id']}", json=body, headers=entra.headers)
    assert response.status_code == 200, response.text
    assert response.json()["active"] is False and "title" not in response.json()


async def test_licence_data_never_reaches_scim(
    client: httpx.AsyncClient, entra: Connection, sessionmaker: async_sessionmaker[AsyncSession]
) -> None:
    from corral.licensing.schemas import LicenceCreate
    from corral.licensing.service import licence_service
    from corral.rbac.principal import system_principal

    adele = await create(client, entra)
    async with sessionmaker() as session:
        made = await licence_service.create(
            session, LicenceCreate(name="Corral E3", sku="CORRAL-E3", seats=5)
        )
        user = await session.get(User, uuid.UUID(adele["id"]))
        assert user is not None
        await licence_service.assign(session, system_principal("tests", frozenset()), user, made.id)
        await session.commit()
    texts = [
        (await client.get(f"{USERS}/{adele['id']}", headers=entra.headers)).text,
        (await client.get(USERS, headers=entra.headers)).text,
        (await client.get("/scim/v2/Schemas", headers=entra.headers)).text,
    ]
    for text in texts:
        assert "licen" not in text.lower() and "CORRAL-E3" not in text and "sku" not in text.lower()


# ----------------------------------------------------------------------------------------------- groups
async def test_groups_members_add_remove_replace_nesting_and_filters(
    client: httpx.AsyncClient,
    entra: Connection,
    sessionmaker: async_sessionmaker[AsyncSession],
    factory: Factory,
) -> None:
    adele = await create(client, entra)
    alex = await create(client, entra, entra_user("alex@contoso.example", "ext-alex"))
    made = await client.post(
        GROUPS,
        json={
            "schemas": ["urn:ietf:params:scim:schemas:core:2.0:Group"],
            "displayName": "Retail",
            "externalId": "g-retail",
            "members": [{"value": adele["id"]}],
        },
        headers=entra.headers,
    )
    assert made.status_code == 201, made.text
    retail = made.json()
    assert [m["value"] for m in retail["members"]] == [adele["id"]]
    inner = (await client.post(GROUPS, json={"displayName": "Retail EU"}, headers=entra.headers)).json()
    url = f"{GROUPS}/{retail['id']}"

    async def member_ids() -> set[str]:
        return {m["value"] for m in (await client.get(url, headers=entra.headers)).json().get("members", [])}

    add = patch({"op": "Add", "path": "members", "value": [{"value": alex["id"]}, {"value": inner["id"]}]})
    assert (await client.patch(url, json=add, headers=entra.headers)).status_code == 200
    assert await member_ids() == {adele["id"], alex["id"], inner["id"]}
    found = await client.get(
        GROUPS, params={"filter": f'members.value eq "{alex["id"]}"'}, headers=entra.headers
    )
    assert [g["id"] for g in found.json()["Resources"]] == [retail["id"]]
    by_name = await client.get(
        GROUPS,
        params={"filter": 'displayName eq "retail"', "excludedAttributes": "members"},
        headers=entra.headers,
    )
    assert [g["id"] for g in by_name.json()["Resources"]] == [retail["id"]]
    assert "members" not in by_name.json()["Resources"][0]
    remove = patch({"op": "Remove", "path": f'members[value eq "{alex["id"]}"]'})
    assert (await client.patch(url, json=remove, headers=entra.headers)).status_code == 200
    assert await member_ids() == {adele["id"], inner["id"]}
    remove_list = patch({"op": "remove", "path": "members", "value": [{"value": inner["id"]}]})
    assert (await client.patch(url, json=remove_list, headers=entra.headers)).status_code == 200
    assert await member_ids() == {adele["id"]}
    replace = patch(
        {"op": "replace", "path": "members", "value": [{"value": alex["id"]}]},
        {"op": "replace", "value": {"displayName": "Retail (all)"}},
    )
    replaced = await client.patch(url, json=replace, headers=entra.headers)
    assert replaced.json()["displayName"] == "Retail (all)"
    assert await member_ids() == {alex["id"]}
    # A cycle is refused, and so is a member the connection did not provision (a local administrator).
    nest = patch({"op": "add", "path": "members", "value": [{"value": retail["id"]}]})
    assert (
        await client.patch(
            url,
            json=patch({"op": "add", "path": "members", "value": [{"value": inner["id"]}]}),
            headers=entra.headers,
        )
    ).status_code == 200
    assert_error(await client.patch(f"{GROUPS}/{inner['id']}", json=nest, headers=entra.headers), 400)
    glob = await factory.admin(GLOBAL_ADMINISTRATOR.name)
    smuggle = patch({"op": "add", "path": "members", "value": [{"value": str(glob.id)}]})
    assert_error(await client.patch(url, json=smuggle, headers=entra.headers), 400, "invalidValue")
    assert str(glob.id) not in await member_ids()
    events = await audit_rows(sessionmaker, target_id=retail["id"])
    assert {e.activity for e in events} >= {
        "group.create",
        "group.member_add",
        "group.member_remove",
        "group.update",
    }
    assert all(e.actor_type == "scim" for e in events)
    assert (await client.delete(url, headers=entra.headers)).status_code == 204
    assert_error(await client.get(url, headers=entra.headers), 404)


async def test_discovery_documents_are_scim_json(client: httpx.AsyncClient, entra: Connection) -> None:
    config = await client.get("/scim/v2/ServiceProviderConfig", headers=entra.headers)
    assert config.headers["content-type"].startswith(SCIM_JSON)
    body = config.json()
    assert body["patch"]["supported"] and body["filter"]["supported"]
    assert not body["etag"]["supported"] and not body["bulk"]["supported"] and not body["sort"]["supported"]
    types = (await client.get("/scim/v2/ResourceTypes", headers=entra.headers)).json()
    assert {t["id"] for t in types["Resources"]} == {"User", "Group"}
    schema = await client.get(f"/scim/v2/Schemas/{ENTERPRISE}", headers=entra.headers)
    assert [a["name"] for a in schema.json()["attributes"]] == ["department"]
    assert_error(await client.get("/scim/v2/Schemas/urn:nope", headers=entra.headers), 404)
    assert_error(await client.post("/scim/v2/.search", json={}, headers=entra.headers), 501)
