"""The assignment editor without script: Preview and Save post the form; bad rows are refused with a message
and change nothing; read-only administrators see the assignments but cannot change them; the "why" page
answers a bad choice with 400."""

from __future__ import annotations

import httpx
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from tests.assignments.helpers import make_policy, targets
from tests.conftest import Factory, audit_rows, csrf_of, sign_in
from tests.groups.helpers import add, create_group, insert_devices


async def test_editor_previews_saves_and_refuses_bad_rows_without_script(
    client: httpx.AsyncClient, factory: Factory, sessionmaker: async_sessionmaker[AsyncSession]
) -> None:
    admin = await factory.admin()
    (laptop,) = await insert_devices(sessionmaker, [{"name": "laptop"}])
    sales = await create_group(client, admin, "Sales")
    assert (await add(client, admin, sales["id"], "device", laptop)).status_code == 201
    profile = await make_policy(sessionmaker, "Firewall on", profile=True)
    url = f"/portal/configuration-profiles/{profile}/assignments"

    await sign_in(client, admin.email)
    page = await client.get(url)
    assert page.status_code == 200 and "Sales" in page.text
    csrf = csrf_of(page.text)
    row = {"row_mode": "include", "row_target": sales["id"], "row_filter": "", "row_filter_mode": "include"}

    preview = await client.post(url, data={"csrf_token": csrf, "action": "preview", **row})
    assert preview.status_code == 200
    assert "would reach <strong>1</strong> device(s)" in preview.text
    assert await targets(sessionmaker, profile) == set()  # a preview saves nothing

    bad = await client.post(
        url, data={"csrf_token": csrf, "action": "save", **row, "row_target": "not-a-group"}
    )
    assert bad.status_code == 422
    assert "Row 1: choose a target" in bad.text
    excluded_with_filter = await client.post(
        url,
        data={
            "csrf_token": csrf,
            "action": "save",
            "row_mode": "exclude",
            "row_target": "all_devices",
            "row_filter": "",
            "row_filter_mode": "include",
        },
    )
    assert excluded_with_filter.status_code == 422
    assert "Row 1: only groups can be excluded" in excluded_with_filter.text
    assert await targets(sessionmaker, profile) == set()

    saved = await client.post(url, data={"csrf_token": csrf, "action": "save", **row})
    assert saved.status_code == 303
    assert await targets(sessionmaker, profile) == {laptop}
    assert len(await audit_rows(sessionmaker, activity="configuration_profile.assign")) == 1


async def test_read_only_sees_assignments_but_cannot_change_them(
    client: httpx.AsyncClient, factory: Factory, sessionmaker: async_sessionmaker[AsyncSession]
) -> None:
    reader = await factory.admin("Read-only operator")
    policy = await make_policy(sessionmaker, "Baseline")
    url = f"/portal/compliance-policies/{policy}/assignments"
    await sign_in(client, reader.email)
    page = await client.get(url)
    assert page.status_code == 200
    assert "You can see these assignments but not change them." in page.text
    assert "Save assignments" not in page.text
    refused = await client.post(
        url,
        data={
            "csrf_token": csrf_of(page.text),
            "action": "save",
            "row_mode": "include",
            "row_target": "all_devices",
        },
    )
    assert refused.status_code == 403
    assert await targets(sessionmaker, policy) == set()


async def test_why_page_refuses_a_bad_choice(
    client: httpx.AsyncClient, factory: Factory, sessionmaker: async_sessionmaker[AsyncSession]
) -> None:
    admin = await factory.admin()
    (device,) = await insert_devices(sessionmaker, [{"name": "d"}])
    await sign_in(client, admin.email)
    assert (await client.get(f"/portal/devices/{device}/why?object_id=nope")).status_code == 400
    missing = await client.get(f"/portal/devices/{device}/why?object_id=00000000-0000-0000-0000-000000000007")
    assert missing.status_code == 404 and "No such object" in missing.text


async def test_filter_pages_create_preview_edit_and_refuse_deleting_one_in_use(
    client: httpx.AsyncClient, factory: Factory, sessionmaker: async_sessionmaker[AsyncSession]
) -> None:
    admin = await factory.admin()
    await insert_devices(sessionmaker, [{"name": "LAP-1"}, {"name": "KIO-2"}])
    await sign_in(client, admin.email)
    page = await client.get("/portal/assignment-filters/new")
    csrf = csrf_of(page.text)
    values = {"csrf_token": csrf, "name": "Laptops", "platform": "windows", "description": ""}

    bad = await client.post(
        "/portal/assignment-filters/new",
        data={**values, "rule": "device.displayName -startsWith", "action": "save"},
    )
    assert bad.status_code == 422
    rule = 'device.displayName -startsWith "LAP"'
    preview = await client.post(
        "/portal/assignment-filters/new", data={**values, "rule": rule, "action": "preview"}
    )
    assert "matches <strong>1</strong> active device(s)" in preview.text and "LAP-1" in preview.text
    created = await client.post(
        "/portal/assignment-filters/new", data={**values, "rule": rule, "action": "save"}
    )
    assert created.status_code == 303
    detail_url = created.headers["location"]
    listed = await client.get("/portal/assignment-filters")
    assert "Laptops" in listed.text and "startsWith" in listed.text

    # In use by a policy: deleting is refused with the policy named, nothing changes.
    policy = await make_policy(sessionmaker, "Laptop baseline")
    filter_id = detail_url.rsplit("/", 1)[1]
    response = await client.put(
        f"/api/v1/compliance-policies/{policy}/assignments",
        json={"assignments": [{"target": "all_devices", "filter_id": filter_id}]},
        headers=admin.headers,
    )
    assert response.status_code == 200, response.text
    refused = await client.post(detail_url, data={**values, "rule": rule, "action": "delete"})
    assert refused.status_code == 409 and "Laptop baseline" in refused.text
    edited = await client.post(
        detail_url, data={**values, "rule": 'device.displayName -startsWith "KIO"', "action": "save"}
    )
    assert edited.status_code == 303
    page = await client.get(detail_url)
    assert "KIO" in page.text and "Laptop baseline" in page.text
