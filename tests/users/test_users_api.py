"""Users through the API: local users, the list (search, filters, keyset paging, CSV), the detail, edits,
disabling (sessions and the tenant's device policy) and deletion — all audited."""

from __future__ import annotations

import csv
import io
import uuid

import httpx
import pytest
from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from corral.models import EnrollmentToken, User, UserSession
from corral.rbac.roles import GLOBAL_ADMINISTRATOR, HELP_DESK_OPERATOR, SERVICE_ADMINISTRATOR
from corral.users.service import DEPROVISION_REASON, DEPROVISIONING
from tests.conftest import Admin, Factory, audit_rows, count_rows, new_client, sign_in
from tests.users.helpers import commands_of, create_user, device_row, devices_for, set_policy, set_user


@pytest.fixture
async def glob(factory: Factory) -> Admin:
    return await factory.admin(GLOBAL_ADMINISTRATOR.name)


# ------------------------------------------------------------------------------------------- creating
async def test_local_user_is_created_without_a_password_and_audited(
    client: httpx.AsyncClient, glob: Admin, sessionmaker: async_sessionmaker[AsyncSession]
) -> None:
    body = await create_user(
        client,
        glob,
        "Adele.Vance@contoso.example",
        display_name="Adele Vance",
        email="Adele@Contoso.example",
        given_name="Adele",
        surname="Vance",
        department="Retail",
        job_title="Retail manager",
    )
    assert body["user_principal_name"] == "Adele.Vance@contoso.example"
    assert body["email"] == "adele@contoso.example"
    assert body["source"] == "local" and body["enabled"] is True
    assert "password_hash" not in body and "licences" not in body
    async with sessionmaker() as session:
        user = await session.get(User, uuid.UUID(body["id"]))
    assert user is not None and user.password_hash is None
    (event,) = await audit_rows(sessionmaker, activity="user.create", target_id=body["id"])
    props = {p["name"]: p["new"] for p in event.modified_properties}
    assert props["user_principal_name"] == "Adele.Vance@contoso.example"
    assert props["department"] == "Retail" and event.actor_id == glob.id


@pytest.mark.parametrize(
    "second", ["adele@contoso.example", "ADELE@CONTOSO.EXAMPLE", "  Adele@contoso.example "]
)
async def test_duplicate_user_principal_name_is_a_conflict_whatever_the_case(
    client: httpx.AsyncClient, glob: Admin, sessionmaker: async_sessionmaker[AsyncSession], second: str
) -> None:
    await create_user(client, glob, "adele@contoso.example")
    before = await count_rows(sessionmaker, "users")
    response = await client.post(
        "/api/v1/users", json={"user_principal_name": second, "display_name": "Again"}, headers=glob.headers
    )
    assert response.status_code == 409, response.text
    assert "adele@contoso.example" in response.json()["detail"].lower()
    assert await count_rows(sessionmaker, "users") == before


async def test_an_administrators_email_is_taken_as_a_user_principal_name(
    client: httpx.AsyncClient, factory: Factory, glob: Admin
) -> None:
    await factory.admin(HELP_DESK_OPERATOR.name, email="desk@contoso.example")
    response = await client.post(
        "/api/v1/users",
        json={"user_principal_name": "Desk@contoso.example", "display_name": "Desk"},
        headers=glob.headers,
    )
    assert response.status_code == 409


@pytest.mark.parametrize(
    ("payload", "location"),
    [
        ({"user_principal_name": "no-at-sign", "display_name": "X"}, "user_principal_name"),
        ({"user_principal_name": "a b@contoso.example", "display_name": "X"}, "user_principal_name"),
        ({"user_principal_name": "x@contoso.example", "display_name": ""}, "display_name"),
        ({"user_principal_name": "x@contoso.example", "display_name": "X", "email": "nope"}, "email"),
        (
            {"user_principal_name": "x@contoso.example", "display_name": "X", "department": "d" * 129},
            "department",
        ),
        (
            {"user_principal_name": "x@contoso.example", "display_name": "X", "password": "hunter22"},
            "password",
        ),
    ],
    ids=["no-at", "space", "empty-name", "bad-email", "long-department", "password"],
)
async def test_invalid_user_is_refused_with_the_field_named(
    client: httpx.AsyncClient,
    glob: Admin,
    sessionmaker: async_sessionmaker[AsyncSession],
    payload: dict[str, str],
    location: str,
) -> None:
    before = await count_rows(sessionmaker, "users")
    response = await client.post("/api/v1/users", json=payload, headers=glob.headers)
    assert response.status_code == 422, response.text
    assert location in {e["location"] for e in response.json()["errors"]}
    assert await count_rows(sessionmaker, "users") == before


async def test_help_desk_can_read_users_but_not_create_them(
    client: httpx.AsyncClient, factory: Factory, glob: Admin
) -> None:
    helpdesk = await factory.admin(HELP_DESK_OPERATOR.name)
    listed = await client.get("/api/v1/users", headers=helpdesk.headers)
    assert listed.status_code == 200
    refused = await client.post(
        "/api/v1/users",
        json={"user_principal_name": "x@contoso.example", "display_name": "X"},
        headers=helpdesk.headers,
    )
    assert refused.status_code == 403 and "users:write" in refused.json()["detail"]


# ------------------------------------------------------------------------------------------- the list
async def test_list_searches_filters_and_pages_by_keyset(
    client: httpx.AsyncClient, glob: Admin, sessionmaker: async_sessionmaker[AsyncSession]
) -> None:
    names = [
        "Alex Wilber",
        "Bianca Pisani",
        "Cameron White",
        "Diego Siciliani",
        "Emily Braun",
        "Grady Archie",
    ]
    ids = {}
    for index, name in enumerate(names):
        first = name.split()[0].lower()
        body = await create_user(
            client,
            glob,
            f"{first}@contoso.example",
            display_name=name,
            email=f"{first}.mail@fabrikam.example",
            department="Sales" if index % 2 else "Retail",
        )
        ids[name] = body["id"]
    await set_user(sessionmaker, uuid.UUID(ids["Emily Braun"]), enabled=False)
    await set_user(sessionmaker, uuid.UUID(ids["Grady Archie"]), source="scim")

    async def page(**params: object) -> dict[str, object]:
        response = await client.get("/api/v1/users", params=params, headers=glob.headers)
        assert response.status_code == 200, response.text
        body: dict[str, object] = response.json()
        return body

    seen: list[str] = []
    cursor = None
    while True:
        body = await page(limit=3, department="sales", **({"cursor": cursor} if cursor else {}))
        assert body["total"] == 3
        seen.extend(u["display_name"] for u in body["items"])  # type: ignore[attr-defined]
        cursor = body["next_cursor"]
        if not cursor:
            break
    assert seen == ["Bianca Pisani", "Diego Siciliani", "Grady Archie"]

    everyone: list[str] = []
    cursor = None
    while True:
        body = await page(limit=2, sort="-display_name", **({"cursor": cursor} if cursor else {}))
        everyone.extend(u["display_name"] for u in body["items"])  # type: ignore[attr-defined]
        cursor = body["next_cursor"]
        if not cursor:
            break
    assert [n for n in everyone if n in names] == sorted(names, reverse=True)

    by_email = await page(search="DIEGO.MAIL@fab")
    assert [u["display_name"] for u in by_email["items"]] == ["Diego Siciliani"]  # type: ignore[attr-defined]
    by_upn = await page(search="cameron@")
    assert [u["id"] for u in by_upn["items"]] == [ids["Cameron White"]]  # type: ignore[attr-defined]
    disabled = await page(enabled="false")
    assert [u["display_name"] for u in disabled["items"]] == ["Emily Braun"]  # type: ignore[attr-defined]
    scim = await page(source="scim")
    assert [u["display_name"] for u in scim["items"]] == ["Grady Archie"]  # type: ignore[attr-defined]


@pytest.mark.parametrize(
    "params",
    [
        {"cursor": "not-a-cursor"},
        {"cursor": "WyJhIl0"},
        {"sort": "-last_sign_in_at", "cursor": "WyJhIiwgImIiXQ"},
    ],
    ids=["garbage", "one-value", "text-for-a-time"],
)
async def test_malformed_cursor_is_a_bad_request(
    client: httpx.AsyncClient, glob: Admin, params: dict[str, str]
) -> None:
    response = await client.get("/api/v1/users", params=params, headers=glob.headers)
    assert response.status_code == 400, response.text


async def test_unknown_filter_values_are_validation_errors(client: httpx.AsyncClient, glob: Admin) -> None:
    for params in ({"source": "ldap"}, {"sort": "password_hash"}, {"limit": 0}, {"enabled": "perhaps"}):
        response = await client.get("/api/v1/users", params=params, headers=glob.headers)
        assert response.status_code == 422, (params, response.text)


async def test_csv_export_follows_the_filters_and_cannot_carry_formulas(
    client: httpx.AsyncClient, glob: Admin
) -> None:
    await create_user(client, glob, "formula@contoso.example", display_name='=HYPERLINK("http://x")')
    await create_user(client, glob, "plain@contoso.example", display_name="Plain", department="Ops")
    response = await client.get(
        "/api/v1/users/export.csv", params={"department": "ops"}, headers=glob.headers
    )
    assert response.status_code == 200 and response.headers["content-type"].startswith("text/csv")
    rows = list(csv.DictReader(io.StringIO(response.text)))
    assert [r["user_principal_name"] for r in rows] == ["plain@contoso.example"]
    everyone = list(
        csv.DictReader(io.StringIO((await client.get("/api/v1/users/export.csv", headers=glob.headers)).text))
    )
    formula = next(r for r in everyone if r["user_principal_name"] == "formula@contoso.example")
    assert formula["display_name"].startswith("'=")


# ------------------------------------------------------------------------------------------- detail
async def test_detail_lists_the_users_devices_within_the_callers_scope_and_their_groups(
    client: httpx.AsyncClient, factory: Factory, glob: Admin, sessionmaker: async_sessionmaker[AsyncSession]
) -> None:
    user = await create_user(client, glob, "megan@contoso.example", display_name="Megan Bowen")
    user_id = uuid.UUID(user["id"])
    mine = await devices_for(sessionmaker, user_id, "managed", "retired")
    await devices_for(sessionmaker, None, "managed")  # someone else's
    group = await client.post(
        "/api/v1/groups",
        json={"display_name": "Marketing", "membership_type": "assigned"},
        headers=glob.headers,
    )
    assert group.status_code == 201, group.text
    added = await client.post(
        f"/api/v1/groups/{group.json()['id']}/members",
        json={"type": "user", "id": user["id"]},
        headers=glob.headers,
    )
    assert added.status_code in (200, 201), added.text

    detail = (await client.get(f"/api/v1/users/{user_id}", headers=glob.headers)).json()
    assert sorted(d["id"] for d in detail["devices"]) == sorted(str(d) for d in mine)
    assert detail["devices_total"] == 2
    assert [(g["group"]["display_name"], g["direct"]) for g in detail["groups"]] == [("Marketing", True)]
    assert detail["is_admin"] is False and detail["licences"] == []

    # A Paris-scoped help desk operator sees none of these (untagged) devices.
    tag = await client.post("/api/v1/scope-tags", json={"name": "Paris"}, headers=glob.headers)
    scoped = await factory.admin(None)
    assignment = await client.post(
        "/api/v1/role-assignments",
        json={
            "name": "Paris desk",
            "role_id": str(HELP_DESK_OPERATOR.id),
            "member_ids": [str(scoped.id)],
            "scope_all": False,
            "scope_tag_ids": [tag.json()["id"]],
        },
        headers=glob.headers,
    )
    assert assignment.status_code == 201, assignment.text
    from tests.conftest import issue_token

    token = await issue_token(sessionmaker, scoped.id)
    limited = (
        await client.get(f"/api/v1/users/{user_id}", headers={"Authorization": f"Bearer {token}"})
    ).json()
    assert limited["devices"] == [] and limited["devices_total"] == 0
    assert "licences" not in limited


async def test_unknown_user_is_a_404(client: httpx.AsyncClient, glob: Admin) -> None:
    for method in ("GET", "PATCH", "DELETE"):
        response = await client.request(
            method,
            f"/api/v1/users/{uuid.uuid4()}",
            json={} if method == "PATCH" else None,
            headers=glob.headers,
        )
        assert response.status_code == 404, (method, response.text)


# ------------------------------------------------------------------------------------------- editing
async def test_edit_changes_properties_clears_with_null_and_audits_old_and_new(
    client: httpx.AsyncClient, glob: Admin, sessionmaker: async_sessionmaker[AsyncSession]
) -> None:
    user = await create_user(
        client, glob, "lee@contoso.example", display_name="Lee", department="IT", job_title="Tech"
    )
    response = await client.patch(
        f"/api/v1/users/{user['id']}",
        json={
            "user_principal_name": "Lee.Gu@contoso.example",
            "department": "Engineering",
            "job_title": None,
        },
        headers=glob.headers,
    )
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["user_principal_name"] == "Lee.Gu@contoso.example"
    assert body["department"] == "Engineering" and body["job_title"] is None and body["display_name"] == "Lee"
    (event,) = await audit_rows(sessionmaker, activity="user.update", target_id=user["id"])
    changes = {p["name"]: (p["old"], p["new"]) for p in event.modified_properties}
    assert changes == {
        "user_principal_name": ("lee@contoso.example", "Lee.Gu@contoso.example"),
        "department": ("IT", "Engineering"),
        "job_title": ("Tech", None),
    }
    other = await create_user(client, glob, "other@contoso.example")
    clash = await client.patch(
        f"/api/v1/users/{other['id']}",
        json={"user_principal_name": "LEE.GU@contoso.example"},
        headers=glob.headers,
    )
    assert clash.status_code == 409


async def test_provisioned_user_can_only_be_enabled_or_disabled(
    client: httpx.AsyncClient, glob: Admin, sessionmaker: async_sessionmaker[AsyncSession]
) -> None:
    user = await create_user(client, glob, "synced@contoso.example", department="IT")
    await set_user(sessionmaker, uuid.UUID(user["id"]), source="scim", external_id="ext-1")
    refused = await client.patch(
        f"/api/v1/users/{user['id']}", json={"department": "HR"}, headers=glob.headers
    )
    assert refused.status_code == 409 and "identity provider" in refused.json()["detail"]
    same = await client.patch(f"/api/v1/users/{user['id']}", json={"department": "IT"}, headers=glob.headers)
    assert same.status_code == 200  # nothing changes: nothing refused
    disabled = await client.patch(
        f"/api/v1/users/{user['id']}", json={"enabled": False}, headers=glob.headers
    )
    assert disabled.status_code == 200 and disabled.json()["enabled"] is False


# ------------------------------------------------------------------------------------------- disabling
async def test_disabling_ends_every_session_of_the_user_at_once_and_is_audited(
    app: object, factory: Factory, glob: Admin, sessionmaker: async_sessionmaker[AsyncSession]
) -> None:
    person = await factory.admin(None, token=False)  # a local account that signs in, holding no role
    clients = [new_client(app) for _ in range(3)]  # type: ignore[arg-type]
    try:
        for c in clients:
            assert (await sign_in(c, person.email)).status_code == 303
        async with sessionmaker() as session:
            stmt = select(func.count()).select_from(UserSession).where(UserSession.user_id == person.id)
            assert await session.scalar(stmt) == 3
        response = await clients[0].patch(
            f"/api/v1/users/{person.id}", json={"enabled": False}, headers=glob.headers
        )
        assert response.status_code == 200, response.text
        async with sessionmaker() as session:
            assert await session.scalar(stmt) == 0
        for c in clients:
            page = await c.get("/portal/account")
            assert page.status_code == 303 and page.headers["location"].startswith("/portal/sign-in")
    finally:
        for c in clients:
            await c.aclose()
    (event,) = await audit_rows(sessionmaker, activity="user.update", target_id=str(person.id))
    assert {p["name"]: p["new"] for p in event.modified_properties} == {"enabled": False}
    assert event.detail and event.detail.startswith("3 session(s) ended")
    assert (await sign_in(new_client(app), person.email)).status_code == 401  # type: ignore[arg-type]


async def test_disabling_with_the_retire_policy_queues_a_retire_for_each_managed_device(
    client: httpx.AsyncClient, glob: Admin, sessionmaker: async_sessionmaker[AsyncSession]
) -> None:
    await set_policy(sessionmaker, "retire")
    user = await create_user(client, glob, "leaver@contoso.example")
    managed_a, managed_b, retired, wiping = await devices_for(
        sessionmaker, uuid.UUID(user["id"]), "managed", "managed", "retired", "wipe_pending"
    )
    response = await client.patch(
        f"/api/v1/users/{user['id']}", json={"enabled": False}, headers=glob.headers
    )
    assert response.status_code == 200, response.text

    for device_id in (managed_a, managed_b):
        (command,) = await commands_of(sessionmaker, device_id)
        assert command.type == "retire" and command.status == "queued"
        assert command.reason == DEPROVISION_REASON
        assert command.requested_by_name == DEPROVISIONING.name
        device = await device_row(sessionmaker, device_id)
        assert device is not None and device.management_state == "retire_pending"
    assert await commands_of(sessionmaker, retired) == [] and await commands_of(sessionmaker, wiping) == []
    retires = await audit_rows(sessionmaker, activity="device.action.retire")
    assert sorted(e.target_id for e in retires) == sorted(str(d) for d in (managed_a, managed_b))
    assert {e.actor_id for e in retires} == {glob.id}  # the admin who disabled the user, on the record
    assert {e.detail for e in retires} == {DEPROVISION_REASON}
    (update,) = await audit_rows(sessionmaker, activity="user.update", target_id=user["id"])
    assert "retire queued for 2 device(s)" in (update.detail or "")


async def test_the_retire_policy_applies_whatever_the_disabling_admins_device_rights(
    client: httpx.AsyncClient, factory: Factory, glob: Admin, sessionmaker: async_sessionmaker[AsyncSession]
) -> None:
    """The tenant setting decides, not the rights of whoever disabled the user (a user-only administrator,
    or later the identity provider): Corral asks for the retire itself."""
    await set_policy(sessionmaker, "retire")
    role = await client.post(
        "/api/v1/roles",
        json={"name": "User admins", "permissions": ["users:read", "users:write"]},
        headers=glob.headers,
    )
    person = await factory.admin(None, token=False)
    await client.post(
        "/api/v1/role-assignments",
        json={"name": "User admins", "role_id": role.json()["id"], "member_ids": [str(person.id)]},
        headers=glob.headers,
    )
    from tests.conftest import issue_token

    token = await issue_token(sessionmaker, person.id)
    user = await create_user(client, glob, "gone@contoso.example")
    (device_id,) = await devices_for(sessionmaker, uuid.UUID(user["id"]), "managed")
    response = await client.patch(
        f"/api/v1/users/{user['id']}", json={"enabled": False}, headers={"Authorization": f"Bearer {token}"}
    )
    assert response.status_code == 200, response.text
    (command,) = await commands_of(sessionmaker, device_id)
    assert command.type == "retire"


async def test_disabling_with_the_keep_policy_sends_nothing_to_the_devices(
    client: httpx.AsyncClient, glob: Admin, sessionmaker: async_sessionmaker[AsyncSession]
) -> None:
    user = await create_user(client, glob, "stays@contoso.example")
    (device_id,) = await devices_for(sessionmaker, uuid.UUID(user["id"]), "managed")
    response = await client.patch(
        f"/api/v1/users/{user['id']}", json={"enabled": False}, headers=glob.headers
    )
    assert response.status_code == 200
    assert await commands_of(sessionmaker, device_id) == []
    device = await device_row(sessionmaker, device_id)
    assert device is not None and device.management_state == "managed"
    (update,) = await audit_rows(sessionmaker, activity="user.update", target_id=user["id"])
    assert "devices kept" in (update.detail or "")


async def test_nobody_disables_themselves_or_the_last_global_administrator(
    client: httpx.AsyncClient, glob: Admin
) -> None:
    response = await client.patch(f"/api/v1/users/{glob.id}", json={"enabled": False}, headers=glob.headers)
    assert response.status_code == 409


async def test_service_admin_cannot_rename_a_global_admins_sign_in_name(
    client: httpx.AsyncClient, factory: Factory, glob: Admin
) -> None:
    service = await factory.admin(SERVICE_ADMINISTRATOR.name)
    response = await client.patch(
        f"/api/v1/users/{glob.id}",
        json={"user_principal_name": "taken-over@evil.example"},
        headers=service.headers,
    )
    assert response.status_code == 403
    me = (await client.get("/api/v1/me", headers=glob.headers)).json()
    assert me["user_principal_name"] == glob.email


# ------------------------------------------------------------------------------------------- deleting
async def test_deleting_a_user_keeps_their_devices_without_a_user_and_revokes_bound_tokens(
    client: httpx.AsyncClient, glob: Admin, sessionmaker: async_sessionmaker[AsyncSession]
) -> None:
    user = await create_user(client, glob, "temp@contoso.example")
    (device_id,) = await devices_for(sessionmaker, uuid.UUID(user["id"]), "managed")
    token = await client.post(
        "/api/v1/enrollment-tokens",
        json={"name": "Temp's laptop", "platforms": ["linux"], "user_id": user["id"]},
        headers=glob.headers,
    )
    assert token.status_code == 201, token.text
    response = await client.delete(f"/api/v1/users/{user['id']}", headers=glob.headers)
    assert response.status_code == 204, response.text
    assert (await client.get(f"/api/v1/users/{user['id']}", headers=glob.headers)).status_code == 404
    device = await device_row(sessionmaker, device_id)
    assert device is not None and device.user_id is None and device.management_state == "managed"
    async with sessionmaker() as session:
        row = await session.get(EnrollmentToken, uuid.UUID(token.json()["enrollment_token"]["id"]))
    assert row is not None and row.revoked_at is not None
    (event,) = await audit_rows(sessionmaker, activity="user.delete", target_id=user["id"])
    assert event.target_name == "temp@contoso.example"
    assert {p["name"]: p["old"] for p in event.modified_properties}[
        "user_principal_name"
    ] == "temp@contoso.example"
    assert "Temp's laptop" in (event.detail or "")


async def test_deleting_with_the_retire_policy_retires_the_devices_first(
    client: httpx.AsyncClient, glob: Admin, sessionmaker: async_sessionmaker[AsyncSession]
) -> None:
    await set_policy(sessionmaker, "retire")
    user = await create_user(client, glob, "bye@contoso.example")
    (device_id,) = await devices_for(sessionmaker, uuid.UUID(user["id"]), "managed")
    assert (await client.delete(f"/api/v1/users/{user['id']}", headers=glob.headers)).status_code == 204
    (command,) = await commands_of(sessionmaker, device_id)
    assert command.type == "retire" and command.reason == DEPROVISION_REASON


async def test_administrators_yourself_and_scim_users_cannot_be_deleted(
    client: httpx.AsyncClient, factory: Factory, glob: Admin, sessionmaker: async_sessionmaker[AsyncSession]
) -> None:
    helpdesk = await factory.admin(HELP_DESK_OPERATOR.name)
    scim = await create_user(client, glob, "scim@contoso.example")
    await set_user(sessionmaker, uuid.UUID(scim["id"]), source="scim")
    before = await count_rows(sessionmaker, "users")
    for target, words in ((helpdesk.id, "role assignments"), (glob.id, "your own"), (scim["id"], "SCIM")):
        response = await client.delete(f"/api/v1/users/{target}", headers=glob.headers)
        assert response.status_code == 409, response.text
        assert words in response.json()["detail"]
    assert await count_rows(sessionmaker, "users") == before
    assert await audit_rows(sessionmaker, activity="user.delete") == []
