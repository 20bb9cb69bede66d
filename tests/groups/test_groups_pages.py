"""Admin center pages for groups, without a browser: every form works without script (preview and check
included), errors come back on the form with the rule's problem pointed at, and the device page lists its
groups."""

from __future__ import annotations

import re
import uuid

import httpx
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from tests.conftest import Factory, audit_rows, csrf_of, portal_csrf
from tests.groups.helpers import add, create_group, dynamic_group, insert_devices, stored_device_members


async def test_groups_appear_in_the_navigation_only_for_those_who_may_read_them(
    client: httpx.AsyncClient, factory: Factory
) -> None:
    admin = await factory.admin(token=False)
    await portal_csrf(client, admin.email)
    page = await client.get("/portal/groups")
    assert page.status_code == 200
    assert 'href="/portal/groups"' in page.text and "No groups yet" in page.text
    assert "New dynamic group" in page.text


async def test_dynamic_group_created_from_the_form_after_a_no_script_preview(
    client: httpx.AsyncClient, factory: Factory, sessionmaker: async_sessionmaker[AsyncSession]
) -> None:
    admin = await factory.admin(token=False)
    csrf = await portal_csrf(client, admin.email)
    await insert_devices(
        sessionmaker, [{"name": "win-1", "platform": "windows"}, {"name": "mac-1", "platform": "macos"}]
    )
    form = await client.get("/portal/groups/new?type=dynamic")
    assert form.status_code == 200 and 'name="rule"' in form.text and "data-rule-editor" in form.text
    fields = {
        "csrf_token": csrf,
        "membership_type": "dynamic",
        "dynamic_kind": "device",
        "display_name": "Windows PCs",
        "description": "",
        "rule": 'device.deviceOSType -eq "Windows"',
    }
    preview = await client.post("/portal/groups/new", data={**fields, "action": "preview"})
    assert preview.status_code == 200
    assert re.search(r"<strong>1</strong> device matches now", preview.text), preview.text
    assert "win-1" in preview.text and "mac-1" not in preview.text
    check = await client.post(
        "/portal/groups/new", data={**fields, "action": "explain", "explain_lookup": "mac-1"}
    )
    assert (
        "does not match the rule" in check.text and "device.deviceOSType is <code>MacMDM</code>" in check.text
    )

    created = await client.post("/portal/groups/new", data={**fields, "action": "save"})
    assert created.status_code == 303, created.text
    detail = await client.get(created.headers["location"])
    assert "Its rule selects 1 device(s)." in detail.text
    assert "win-1" in detail.text and "Re-evaluate now" in detail.text


async def test_rule_error_comes_back_on_the_form_with_a_caret(
    client: httpx.AsyncClient, factory: Factory
) -> None:
    admin = await factory.admin(token=False)
    csrf = await portal_csrf(client, admin.email)
    response = await client.post(
        "/portal/groups/new",
        data={
            "csrf_token": csrf,
            "membership_type": "dynamic",
            "dynamic_kind": "device",
            "display_name": "Broken",
            "rule": "device.deviceModel -startsWith",
            "action": "save",
        },
    )
    assert response.status_code == 422
    assert 'aria-invalid="true"' in response.text
    excerpt = re.search(r'<pre class="rule-excerpt">(.*?)</pre>', response.text, re.S)
    assert excerpt is not None
    assert excerpt.group(1) == "device.deviceModel -startsWith\n" + " " * 30 + "^"
    assert "device.deviceModel -startsWith</textarea>" in response.text  # what was typed is kept


async def test_members_are_added_by_name_and_removed_from_the_detail_page(
    client: httpx.AsyncClient, factory: Factory, sessionmaker: async_sessionmaker[AsyncSession]
) -> None:
    admin = await factory.admin()
    await portal_csrf(client, admin.email)
    (laptop,) = await insert_devices(sessionmaker, [{"name": "bob-laptop", "serial_number": "SN-B7"}])
    group = await create_group(client, admin, "Sales laptops")
    page = await client.get(f"/portal/groups/{group['id']}")
    csrf = csrf_of(page.text)
    added = await client.post(
        f"/portal/groups/{group['id']}/members",
        data={"csrf_token": csrf, "type": "device", "lookup": "sn-b7"},
    )
    assert added.status_code == 303
    assert await stored_device_members(sessionmaker, group["id"]) == {laptop}
    unknown = await client.post(
        f"/portal/groups/{group['id']}/members",
        data={"csrf_token": csrf, "type": "user", "lookup": "nobody@x"},
    )
    assert unknown.status_code == 404 and "No user called" in unknown.text and "nobody@x" in unknown.text
    removed = await client.post(
        f"/portal/groups/{group['id']}/members/remove",
        data={"csrf_token": csrf, "type": "device", "id": str(laptop)},
    )
    assert removed.status_code == 303
    assert await stored_device_members(sessionmaker, group["id"]) == set()
    no_csrf = await client.post(
        f"/portal/groups/{group['id']}/members", data={"type": "device", "lookup": "x"}
    )
    assert no_csrf.status_code == 403
    activities = [e.activity for e in await audit_rows(sessionmaker, target_id=group["id"])]
    assert activities == ["group.create", "group.member_add", "group.member_remove"]


async def test_detail_page_checks_a_device_against_the_saved_rule_and_re_evaluates(
    client: httpx.AsyncClient, factory: Factory, sessionmaker: async_sessionmaker[AsyncSession]
) -> None:
    admin = await factory.admin()
    await portal_csrf(client, admin.email)
    group = await dynamic_group(client, admin, "Rooted", "device.isRooted -eq true")
    await insert_devices(sessionmaker, [{"name": "rooted-1", "jailbroken": True}])
    page = await client.get(f"/portal/groups/{group['id']}")
    csrf = csrf_of(page.text)
    check = await client.post(
        f"/portal/groups/{group['id']}/check", data={"csrf_token": csrf, "explain_lookup": "rooted-1"}
    )
    assert check.status_code == 200 and "matches the rule" in check.text
    evaluated = await client.post(f"/portal/groups/{group['id']}/evaluate", data={"csrf_token": csrf})
    assert evaluated.status_code == 303
    after = await client.get(f"/portal/groups/{group['id']}")
    assert "1 added, 0 removed" in after.text and "rooted-1" in after.text


async def test_device_page_lists_the_devices_groups(
    client: httpx.AsyncClient, factory: Factory, sessionmaker: async_sessionmaker[AsyncSession]
) -> None:
    admin = await factory.admin()
    await portal_csrf(client, admin.email)
    (device,) = await insert_devices(sessionmaker, [{"name": "kiosk-3", "platform": "android"}])
    androids = await dynamic_group(client, admin, "Androids", 'device.deviceOSType -eq "Android"')
    everyone = await create_group(client, admin, "Everything")
    assert (await add(client, admin, everyone["id"], "group", androids["id"])).status_code == 201
    page = await client.get(f"/portal/devices/{device}")
    assert page.status_code == 200
    section = page.text[page.text.index('id="member-of-title"') :]
    assert "Androids" in section and "Direct member" in section and "Through Androids" in section


async def test_deleting_from_the_portal_reports_a_refusal(
    client: httpx.AsyncClient, factory: Factory, sessionmaker: async_sessionmaker[AsyncSession]
) -> None:
    admin = await factory.admin()
    await portal_csrf(client, admin.email)
    group = await create_group(client, admin, "Short-lived")
    csrf = csrf_of((await client.get(f"/portal/groups/{group['id']}")).text)
    gone = await client.post(f"/portal/groups/{group['id']}/delete", data={"csrf_token": csrf})
    assert gone.status_code == 303 and gone.headers["location"] == "/portal/groups"
    missing = await client.get(f"/portal/groups/{uuid.uuid4()}")
    assert missing.status_code == 404
