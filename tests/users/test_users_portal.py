"""The Users and Licences pages over raw HTTP: forms with inline errors that change nothing, disable and
delete with what they did, licences from the user's page, and the tenant's device policy on Settings."""

from __future__ import annotations

import re
import uuid

import httpx
import pytest
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from corral.rbac.roles import GLOBAL_ADMINISTRATOR, HELP_DESK_OPERATOR
from tests.conftest import Admin, Factory, audit_rows, count_rows, csrf_of, sign_in
from tests.users.helpers import commands_of, create_licence, devices_for, set_policy


@pytest.fixture
async def glob(client: httpx.AsyncClient, factory: Factory) -> Admin:
    admin = await factory.admin(GLOBAL_ADMINISTRATOR.name)
    assert (await sign_in(client, admin.email)).status_code == 303
    return admin


async def csrf(client: httpx.AsyncClient, path: str = "/portal/users") -> str:
    return csrf_of((await client.get(path)).text)


def flash_of(response: httpx.Response) -> str:
    return response.headers.get("set-cookie", "")


async def test_new_user_form_creates_a_user_and_refuses_bad_input_inline(
    client: httpx.AsyncClient, glob: Admin, sessionmaker: async_sessionmaker[AsyncSession]
) -> None:
    token = await csrf(client, "/portal/users/new")
    form = {
        "csrf_token": token,
        "user_principal_name": "isaiah@contoso.example",
        "display_name": "Isaiah Langer",
        "department": "Sales",
        "email": "",
    }
    created = await client.post("/portal/users/new", data=form)
    assert created.status_code == 303, created.text
    assert re.fullmatch(r"/portal/users/[0-9a-f-]{36}", created.headers["location"])
    page = await client.get(created.headers["location"])
    assert "Isaiah Langer" in page.text and "Sales" in page.text

    before = await count_rows(sessionmaker, "users")
    duplicate = await client.post(
        "/portal/users/new", data={**form, "user_principal_name": "ISAIAH@contoso.example"}
    )
    assert duplicate.status_code == 409 and 'role="alert"' in duplicate.text
    assert 'value="ISAIAH@contoso.example"' in duplicate.text  # what was typed is kept
    invalid = await client.post("/portal/users/new", data={**form, "user_principal_name": "isaiah"})
    assert invalid.status_code == 422 and "User principal name:" in invalid.text
    assert await count_rows(sessionmaker, "users") == before


async def test_edit_form_saves_and_an_emptied_optional_field_clears(
    client: httpx.AsyncClient, factory: Factory, glob: Admin
) -> None:
    user_id = await factory.user(
        "nestor@contoso.example", display_name="Nestor", department="IT", job_title="Tech"
    )
    form = await client.get(f"/portal/users/{user_id}/edit")
    assert form.status_code == 200 and 'value="IT"' in form.text
    saved = await client.post(
        f"/portal/users/{user_id}/edit",
        data={
            "csrf_token": csrf_of(form.text),
            "user_principal_name": "nestor@contoso.example",
            "display_name": "Nestor Wilke",
            "department": "",
            "job_title": "Director",
        },
    )
    assert saved.status_code == 303, saved.text
    detail = (await client.get(f"/api/v1/users/{user_id}", headers=glob.headers)).json()
    assert (detail["display_name"], detail["department"], detail["job_title"]) == (
        "Nestor Wilke",
        None,
        "Director",
    )
    emptied = await client.post(
        f"/portal/users/{user_id}/edit",
        data={
            "csrf_token": csrf_of(form.text),
            "user_principal_name": "nestor@contoso.example",
            "display_name": "",
        },
    )
    assert emptied.status_code == 422 and "Display name:" in emptied.text


async def test_disable_from_the_detail_page_says_what_it_did(
    client: httpx.AsyncClient, factory: Factory, glob: Admin, sessionmaker: async_sessionmaker[AsyncSession]
) -> None:
    await set_policy(sessionmaker, "retire")
    user_id = await factory.user("lynne@contoso.example", display_name="Lynne Robbins")
    (device_id,) = await devices_for(sessionmaker, user_id, "managed")
    page = await client.get(f"/portal/users/{user_id}")
    assert "Disable user" in page.text and "retire" in page.text  # the confirmation says what will happen
    response = await client.post(
        f"/portal/users/{user_id}/enabled", data={"csrf_token": csrf_of(page.text), "enabled": "false"}
    )
    assert response.status_code == 303
    after = await client.get(response.headers["location"])
    assert "lynne@contoso.example is disabled" in after.text and "retire queued for 1 device(s)" in after.text
    assert "Enable user" in after.text
    (command,) = await commands_of(sessionmaker, device_id)
    assert command.type == "retire"
    enabled = await client.post(
        f"/portal/users/{user_id}/enabled", data={"csrf_token": csrf_of(after.text), "enabled": "true"}
    )
    assert enabled.status_code == 303
    assert "is enabled" in (await client.get(enabled.headers["location"])).text


async def test_delete_from_the_detail_page(
    client: httpx.AsyncClient, factory: Factory, glob: Admin, sessionmaker: async_sessionmaker[AsyncSession]
) -> None:
    user_id = await factory.user("joni@contoso.example")
    page = await client.get(f"/portal/users/{user_id}")
    response = await client.post(f"/portal/users/{user_id}/delete", data={"csrf_token": csrf_of(page.text)})
    assert response.status_code == 303 and response.headers["location"] == "/portal/users"
    assert "joni@contoso.example was deleted" in (await client.get("/portal/users")).text
    assert (await client.get(f"/portal/users/{user_id}")).status_code == 404
    assert len(await audit_rows(sessionmaker, activity="user.delete")) == 1


async def test_an_administrator_offers_no_delete_and_refuses_it(
    client: httpx.AsyncClient, factory: Factory, glob: Admin
) -> None:
    helpdesk = await factory.admin(HELP_DESK_OPERATOR.name)
    page = await client.get(f"/portal/users/{helpdesk.id}")
    assert "Delete user" not in page.text and "Administrator" in page.text
    refused = await client.post(
        f"/portal/users/{helpdesk.id}/delete", data={"csrf_token": csrf_of(page.text)}
    )
    assert refused.status_code == 303
    assert "role assignments" in (await client.get(refused.headers["location"])).text


async def test_licences_are_given_and_taken_from_the_users_page(
    client: httpx.AsyncClient, factory: Factory, glob: Admin, sessionmaker: async_sessionmaker[AsyncSession]
) -> None:
    licence = await create_licence(client, glob, "Corral E3", "CORRAL-E3", seats=1)
    user_id = await factory.user("pradeep@contoso.example")
    other_id = await factory.user("patti@contoso.example")
    page = await client.get(f"/portal/users/{user_id}")
    assert "No licence: devices cannot enroll for this user." in page.text
    assert "Corral E3 (1 of 1 free)" in page.text
    given = await client.post(
        f"/portal/users/{user_id}/licences",
        data={"csrf_token": csrf_of(page.text), "licence_id": licence["id"]},
    )
    assert given.status_code == 303
    page = await client.get(f"/portal/users/{user_id}")
    assert "Corral E3 assigned." in page.text and "CORRAL-E3" in page.text
    full = await client.post(
        f"/portal/users/{other_id}/licences",
        data={"csrf_token": csrf_of(page.text), "licence_id": licence["id"]},
    )
    assert "seat" in (await client.get(full.headers["location"])).text
    bogus = await client.post(
        f"/portal/users/{other_id}/licences", data={"csrf_token": csrf_of(page.text), "licence_id": "nope"}
    )
    assert "Choose a licence" in (await client.get(bogus.headers["location"])).text
    removed = await client.post(
        f"/portal/users/{user_id}/licences/{licence['id']}/remove", data={"csrf_token": csrf_of(page.text)}
    )
    assert removed.status_code == 303
    assert "Licence removed." in (await client.get(removed.headers["location"])).text
    assert await count_rows(sessionmaker, "user_licences") == 0


async def test_licence_pages_create_edit_and_refuse_fewer_seats_than_assigned(
    client: httpx.AsyncClient, factory: Factory, glob: Admin
) -> None:
    page = await client.get("/portal/licences")
    assert page.status_code == 200 and "No licences yet" in page.text
    created = await client.post(
        "/portal/licences",
        data={"csrf_token": csrf_of(page.text), "name": "Corral E5", "sku": "CORRAL-E5", "seats": "2"},
    )
    assert created.status_code == 303, created.text
    licence_url = created.headers["location"]
    licence_id = licence_url.rsplit("/", 1)[1]
    user_id = await factory.user("holder@contoso.example")
    await client.post(f"/api/v1/users/{user_id}/licences/{licence_id}", headers=glob.headers)
    detail = await client.get(licence_url)
    assert "holder@contoso.example" in detail.text and "1 of 2 seats assigned" in detail.text
    shrink = await client.post(
        f"{licence_url}/edit",
        data={"csrf_token": csrf_of(detail.text), "name": "Corral E5", "sku": "CORRAL-E5", "seats": "0"},
    )
    assert shrink.status_code == 409 and 'value="0"' in shrink.text
    bad = await client.post(
        "/portal/licences",
        data={"csrf_token": csrf_of(detail.text), "name": "X", "sku": "X", "seats": "many"},
    )
    assert bad.status_code == 422 and "seats" in bad.text.lower()
    assert (
        await client.post(f"{licence_url}/delete", data={"csrf_token": csrf_of(detail.text)})
    ).status_code == 303
    assert (await client.get(licence_url)).status_code == 200  # still held: not deleted


async def test_user_list_page_searches_pages_and_exports(
    client: httpx.AsyncClient, factory: Factory, glob: Admin
) -> None:
    for i in range(3):
        await factory.user(f"page{i}@contoso.example", display_name=f"Page {i}", department="Ops")
    first = await client.get("/portal/users", params={"department": "Ops", "limit": 2})
    assert first.status_code == 200 and "Page 0" in first.text and "Page 2" not in first.text
    next_link = re.search(r'href="(/portal/users\?[^"]*cursor=[^"]+)" rel="next"', first.text)
    assert next_link
    second = await client.get(next_link.group(1).replace("&amp;", "&"))
    assert "Page 2" in second.text and "Page 0" not in second.text
    export = await client.get("/portal/users/export.csv", params={"department": "Ops"})
    assert export.status_code == 200 and export.text.count("@contoso.example") == 3
    invalid = await client.get("/portal/users", params={"source": "ldap"})
    assert invalid.status_code == 400 and 'role="alert"' in invalid.text


async def test_help_desk_sees_users_but_no_way_to_change_them(
    client: httpx.AsyncClient, factory: Factory, sessionmaker: async_sessionmaker[AsyncSession]
) -> None:
    helpdesk = await factory.admin(HELP_DESK_OPERATOR.name, token=False)
    user_id = await factory.user("seen@contoso.example")
    assert (await sign_in(client, helpdesk.email)).status_code == 303
    listing = await client.get("/portal/users")
    assert listing.status_code == 200 and "New user" not in listing.text
    detail = await client.get(f"/portal/users/{user_id}")
    assert detail.status_code == 200 and "Disable user" not in detail.text and "Edit" not in detail.text
    token = csrf_of(detail.text)
    for path in (f"/portal/users/{user_id}/enabled", f"/portal/users/{user_id}/delete", "/portal/users/new"):
        assert (await client.post(path, data={"csrf_token": token, "enabled": "false"})).status_code == 403, (
            path
        )
    assert (await client.get("/portal/users/new")).status_code == 403


async def test_settings_page_sets_the_deprovisioned_devices_policy_and_audits_it(
    client: httpx.AsyncClient, glob: Admin, sessionmaker: async_sessionmaker[AsyncSession]
) -> None:
    page = await client.get("/portal/settings")
    assert 'name="deprovisioned_user_devices" value="keep" checked' in page.text
    saved = await client.post(
        "/portal/settings",
        data={
            "csrf_token": csrf_of(page.text),
            "organization_name": "Contoso",
            "deprovisioned_user_devices": "retire",
        },
    )
    assert saved.status_code == 303
    assert 'value="retire" checked' in (await client.get("/portal/settings")).text
    api = (await client.get("/api/v1/settings", headers=glob.headers)).json()
    assert api["deprovisioned_user_devices"] == "retire"
    (event,) = await audit_rows(sessionmaker, activity="settings.update")
    changes = {p["name"]: (p["old"], p["new"]) for p in event.modified_properties}
    assert changes["deprovisioned_user_devices"] == ("keep", "retire")
    refused = await client.patch(
        "/api/v1/settings", json={"deprovisioned_user_devices": "wipe"}, headers=glob.headers
    )
    assert refused.status_code == 422


async def test_unknown_user_and_licence_pages_are_404(client: httpx.AsyncClient, glob: Admin) -> None:
    for path in (
        f"/portal/users/{uuid.uuid4()}",
        f"/portal/licences/{uuid.uuid4()}",
        f"/portal/users/{uuid.uuid4()}/edit",
    ):
        assert (await client.get(path)).status_code == 404, path
