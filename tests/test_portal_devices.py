"""The admin center's device and enrollment pages without a browser: CSRF, destructive-action confirmation,
scope, CSV export, the live commands fragment."""

from __future__ import annotations

import csv
import io
import re
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
from fastapi import FastAPI
from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from corral.models import Device, DeviceCommand, ManagementState
from corral.rbac.roles import HELP_DESK_OPERATOR
from tests.conftest import Admin, Factory, csrf_of, new_client, portal_csrf
from tests.devices.device import TestDevice


@pytest.fixture
async def browser(app: FastAPI) -> AsyncIterator[httpx.AsyncClient]:
    """A second client for the portal session (cookies), apart from the API/device client."""
    async with new_client(app) as c:
        yield c


async def enroll(client: httpx.AsyncClient, admin: Admin, name: str = "", **token: Any) -> TestDevice:
    body = {"name": "Laptops", "platforms": ["linux", "windows"], "ownership": "company", **token}
    created = await client.post("/api/v1/enrollment-tokens", json=body, headers=admin.headers)
    assert created.status_code == 201, created.text
    device = TestDevice(client, name=name)
    response = await device.enroll(created.json()["token"])
    assert response.status_code == 201, response.text
    return device


async def commands(sessionmaker: async_sessionmaker[AsyncSession]) -> int:
    async with sessionmaker() as session:
        return int(await session.scalar(select(func.count()).select_from(DeviceCommand)) or 0)


async def test_action_forms_need_the_csrf_token(
    client: httpx.AsyncClient,
    browser: httpx.AsyncClient,
    factory: Factory,
    sessionmaker: async_sessionmaker[AsyncSession],
) -> None:
    admin = await factory.admin("Global administrator")
    helpdesk = await factory.admin("Help desk operator", token=False)
    device = await enroll(client, admin)
    csrf = await portal_csrf(browser, helpdesk.email)
    url = f"/portal/devices/{device.device_id}/actions/lock"

    for forged in ({}, {"csrf_token": "forged"}):
        refused = await browser.post(url, data={"message": "Call IT", **forged})
        assert refused.status_code == 403 and "CSRF" in refused.text
    assert await commands(sessionmaker) == 0

    queued = await browser.post(url, data={"message": "Call IT", "phone": "", "csrf_token": csrf})
    assert queued.status_code == 303
    assert queued.headers["location"] == f"/portal/devices/{device.device_id}"
    page = await browser.get(queued.headers["location"])
    assert "Lock queued; the device will get it at its next check-in or wake-up" in page.text
    async with sessionmaker() as session:
        command = await session.scalar(select(DeviceCommand))
    assert command is not None and command.params == {"message": "Call IT"}


async def test_the_same_form_sent_twice_queues_the_action_once(
    client: httpx.AsyncClient,
    browser: httpx.AsyncClient,
    factory: Factory,
    sessionmaker: async_sessionmaker[AsyncSession],
) -> None:
    admin = await factory.admin("Global administrator")
    device = await enroll(client, admin)
    csrf = await portal_csrf(browser, admin.email)
    page = await browser.get(f"/portal/devices/{device.device_id}")
    key = re.search(r'action="[^"]+/actions/sync".*?name="idempotency_key" value="([^"]+)"', page.text, re.S)
    assert key
    for _ in range(2):
        sent = await browser.post(
            f"/portal/devices/{device.device_id}/actions/sync",
            data={"csrf_token": csrf, "idempotency_key": key.group(1)},
        )
        assert sent.status_code == 303
    assert await commands(sessionmaker) == 1


async def test_wipe_without_reason_or_typed_name_is_refused_and_nothing_is_queued(
    client: httpx.AsyncClient,
    browser: httpx.AsyncClient,
    factory: Factory,
    sessionmaker: async_sessionmaker[AsyncSession],
) -> None:
    admin = await factory.admin("Global administrator")
    helpdesk = await factory.admin("Help desk operator", token=False)
    device = await enroll(client, admin)
    csrf = await portal_csrf(browser, helpdesk.email)
    url = f"/portal/devices/{device.device_id}/actions/wipe"

    no_reason = await browser.post(url, data={"csrf_token": csrf, "confirm": device.name})
    assert no_reason.status_code == 422
    assert "Wipe needs a reason" in no_reason.text
    assert re.search(r'<details class="confirm confirm--danger" open>\s*<summary[^>]*>Wipe<', no_reason.text)

    wrong_name = await browser.post(
        url, data={"csrf_token": csrf, "reason": "Stolen laptop, ticket 4711", "confirm": "some device"}
    )
    assert wrong_name.status_code == 422
    assert f"Type the device name ({device.name}) to confirm wipe" in wrong_name.text
    assert "Stolen laptop, ticket 4711" in wrong_name.text  # what was typed is kept

    assert await commands(sessionmaker) == 0
    async with sessionmaker() as session:
        stored = await session.get(Device, device.device_id)
    assert stored is not None and stored.management_state is ManagementState.managed

    done = await browser.post(
        url,
        data={
            "csrf_token": csrf,
            "reason": "Stolen laptop, ticket 4711",
            "confirm": device.name,
            "keep_user_data": "on",
        },
    )
    assert done.status_code == 303
    async with sessionmaker() as session:
        command = await session.scalar(select(DeviceCommand))
        stored = await session.get(Device, device.device_id)
    assert command is not None and command.params == {"keep_enrollment_data": False, "keep_user_data": True}
    assert command.reason == "Stolen laptop, ticket 4711"
    assert stored is not None and stored.management_state is ManagementState.wipe_pending


async def test_deleting_a_record_needs_the_typed_name_and_devices_delete(
    app: FastAPI,
    client: httpx.AsyncClient,
    browser: httpx.AsyncClient,
    factory: Factory,
    sessionmaker: async_sessionmaker[AsyncSession],
) -> None:
    admin = await factory.admin("Global administrator", token=True)
    device = await enroll(client, admin)
    helpdesk = await factory.admin("Help desk operator", token=False)
    csrf = await portal_csrf(browser, helpdesk.email)
    page = await browser.get(f"/portal/devices/{device.device_id}")
    assert page.status_code == 200 and "Delete device record" not in page.text
    denied = await browser.post(
        f"/portal/devices/{device.device_id}/delete",
        data={"csrf_token": csrf, "reason": "Sold to staff", "confirm": device.name},
    )
    assert denied.status_code == 403

    async with new_client(app) as ga:
        ga_csrf = await portal_csrf(ga, admin.email)
        unconfirmed = await ga.post(
            f"/portal/devices/{device.device_id}/delete",
            data={"csrf_token": ga_csrf, "reason": "Sold to staff", "confirm": "nope"},
        )
        assert unconfirmed.status_code == 422 and "Type the device name" in unconfirmed.text
        deleted = await ga.post(
            f"/portal/devices/{device.device_id}/delete",
            data={"csrf_token": ga_csrf, "reason": "Sold to staff", "confirm": device.name},
        )
        assert deleted.status_code == 303 and deleted.headers["location"] == "/portal/devices"
    async with sessionmaker() as session:
        assert await session.get(Device, device.device_id) is None


async def test_device_outside_the_admins_scope_is_a_404_page(
    client: httpx.AsyncClient,
    browser: httpx.AsyncClient,
    factory: Factory,
    sessionmaker: async_sessionmaker[AsyncSession],
) -> None:
    admin = await factory.admin("Global administrator")
    paris = (await client.post("/api/v1/scope-tags", json={"name": "Paris"}, headers=admin.headers)).json()
    in_paris = await enroll(client, admin, scope_tag_ids=[paris["id"]])
    untagged = await enroll(client, admin)
    operator = await factory.admin(None, token=False)
    assignment = await client.post(
        "/api/v1/role-assignments",
        headers=admin.headers,
        json={
            "name": "Paris help desk",
            "role_id": str(HELP_DESK_OPERATOR.id),
            "member_ids": [str(operator.id)],
            "scope_all": False,
            "scope_tag_ids": [paris["id"]],
        },
    )
    assert assignment.status_code == 201, assignment.text
    csrf = await portal_csrf(browser, operator.email)

    listed = await browser.get("/portal/devices")
    assert in_paris.name in listed.text and untagged.name not in listed.text
    hidden = await browser.get(f"/portal/devices/{untagged.device_id}")
    assert hidden.status_code == 404
    assert "text/html" in hidden.headers["content-type"] and "No such device" in hidden.text
    assert untagged.name not in hidden.text
    for path in ("actions/lock", "actions/wipe", "delete"):
        refused = await browser.post(
            f"/portal/devices/{untagged.device_id}/{path}", data={"csrf_token": csrf, "message": "x"}
        )
        assert refused.status_code in {403, 404}, (path, refused.status_code)
        assert untagged.name not in refused.text
    assert (await browser.get(f"/portal/devices/{in_paris.device_id}")).status_code == 200
    assert await commands(sessionmaker) == 0


async def test_csv_export_neutralises_formulas_and_keeps_the_filters(
    client: httpx.AsyncClient, browser: httpx.AsyncClient, factory: Factory
) -> None:
    admin = await factory.admin("Global administrator")
    await enroll(client, admin, name="=cmd|' /C calc'!A0")
    other = await enroll(client, admin, name="plain-laptop")
    await portal_csrf(browser, admin.email)

    listed = await browser.get("/portal/devices", params={"search": "cmd"})
    assert 'href="/portal/devices/export.csv?search=cmd"' in listed.text
    exported = await browser.get("/portal/devices/export.csv", params={"search": "cmd"})
    assert exported.status_code == 200 and exported.headers["content-type"].startswith("text/csv")
    assert "attachment" in exported.headers["content-disposition"]
    rows = list(csv.reader(io.StringIO(exported.text)))
    assert rows[0][:3] == ["id", "name", "serial_number"]
    assert [r[1] for r in rows[1:]] == ["'=cmd|' /C calc'!A0"]
    everything = await browser.get("/portal/devices/export.csv")
    assert (
        other.name in everything.text and "\r\n=cmd" not in everything.text and ",=cmd" not in everything.text
    )


async def test_device_list_searches_filters_sorts_and_pages(
    client: httpx.AsyncClient, browser: httpx.AsyncClient, factory: Factory
) -> None:
    admin = await factory.admin("Global administrator")
    devices = [await enroll(client, admin, name=f"laptop-{i}") for i in range(3)]
    await portal_csrf(browser, admin.email)
    first = await browser.get("/portal/devices", params={"limit": 2, "sort": "name"})
    assert first.status_code == 200
    assert "laptop-0" in first.text and "laptop-1" in first.text and "laptop-2" not in first.text
    assert "(3)" in first.text
    next_link = re.search(r'href="(/portal/devices\?[^"]*cursor=[^"]+)" rel="next"', first.text)
    assert next_link
    second = await browser.get(next_link.group(1).replace("&amp;", "&"))
    assert "laptop-2" in second.text and "laptop-0" not in second.text and "First page" in second.text
    found = await browser.get("/portal/devices", params={"search": devices[1].serial})
    assert "laptop-1" in found.text and "laptop-0" not in found.text
    none = await browser.get("/portal/devices", params={"platform": "android"})
    assert "No devices match" in none.text
    bad = await browser.get("/portal/devices", params={"platform": "beos"})
    assert bad.status_code == 400 and "could not be applied" in bad.text


async def test_empty_device_list_explains_how_to_enroll(browser: httpx.AsyncClient, factory: Factory) -> None:
    admin = await factory.admin("Global administrator", token=False)
    await portal_csrf(browser, admin.email)
    page = await browser.get("/portal/devices")
    assert "No devices yet" in page.text and 'href="/portal/enrollment"' in page.text


async def test_commands_fragment_is_the_section_alone_and_polls_only_while_open(
    client: httpx.AsyncClient,
    browser: httpx.AsyncClient,
    factory: Factory,
) -> None:
    admin = await factory.admin("Global administrator")
    device = await enroll(client, admin)
    csrf = await portal_csrf(browser, admin.email)
    quiet = await browser.get(f"/portal/devices/{device.device_id}", headers={"X-Fragment": "commands"})
    assert quiet.text.lstrip().startswith('<section class="card" id="device-commands"')
    assert "data-refresh" not in quiet.text and "<html" not in quiet.text
    await browser.post(f"/portal/devices/{device.device_id}/actions/sync", data={"csrf_token": csrf})
    busy = await browser.get(f"/portal/devices/{device.device_id}", headers={"X-Fragment": "commands"})
    assert "data-refresh" in busy.text and "Queued" in busy.text
    assert busy.headers["vary"] == "X-Fragment"
    # The flash of the redirect is left for the full page, not eaten by the fragment.
    full = await browser.get(f"/portal/devices/{device.device_id}")
    assert "Sync queued" in full.text
    assert csrf_of(full.text) == csrf


async def test_enrollment_token_is_shown_once_with_url_qr_and_command(
    browser: httpx.AsyncClient, factory: Factory
) -> None:
    admin = await factory.admin("Global administrator", token=False)
    csrf = await portal_csrf(browser, admin.email)
    refused = await browser.post(
        "/portal/enrollment", data={"csrf_token": csrf, "name": "No platforms", "ownership": "company"}
    )
    assert refused.status_code == 422 and "platforms" in refused.text
    assert 'value="No platforms"' in refused.text
    created = await browser.post(
        "/portal/enrollment",
        data={
            "csrf_token": csrf,
            "name": "Berlin laptops",
            "platforms": ["linux", "macos"],
            "ownership": "personal",
            "expires_in_days": "7",
            "max_uses": "5",
        },
    )
    assert created.status_code == 303 and created.headers["location"] == "/portal/enrollment"
    shown = await browser.get("/portal/enrollment")
    url = re.search(r'id="enrollment-url"[^>]*>([^<]+)<', shown.text)
    assert url and "/device/v1/enroll?token=cet_" in url.group(1)
    assert "corral-agent enroll 'https://testserver/device/v1/enroll?token=cet_" in shown.text
    assert 'src="data:image/svg+xml' in shown.text
    token = re.search(r'id="enrollment-token"[^>]*>([^<]+)<', shown.text)
    assert token and token.group(1).startswith("cet_") and token.group(1) in url.group(1)
    again = await browser.get("/portal/enrollment")
    assert token.group(1) not in again.text and "enrollment-url" not in again.text
    assert "Berlin laptops" in again.text and "0 / 5" in again.text


async def test_an_open_action_is_canceled_from_the_command_history(
    client: httpx.AsyncClient,
    browser: httpx.AsyncClient,
    factory: Factory,
    sessionmaker: async_sessionmaker[AsyncSession],
) -> None:
    admin = await factory.admin("Global administrator")
    device = await enroll(client, admin)
    csrf = await portal_csrf(browser, admin.email)
    await browser.post(
        f"/portal/devices/{device.device_id}/actions/retire",
        data={"csrf_token": csrf, "reason": "Leaver, ticket 17", "confirm": device.name},
    )
    async with sessionmaker() as session:
        command = await session.scalar(select(DeviceCommand))
    assert command is not None
    page = await browser.get(f"/portal/devices/{device.device_id}")
    cancel_url = f"/portal/devices/{device.device_id}/commands/{command.id}/cancel"
    assert f'action="{cancel_url}"' in page.text
    canceled = await browser.post(cancel_url, data={"csrf_token": csrf})
    assert canceled.status_code == 303
    assert "Retire canceled." in (await browser.get(canceled.headers["location"])).text
    again = await browser.post(cancel_url, data={"csrf_token": csrf})
    assert again.status_code == 303
    assert "already canceled" in (await browser.get(again.headers["location"])).text
    async with sessionmaker() as session:
        stored = await session.get(DeviceCommand, command.id)
        device_row = await session.get(Device, device.device_id)
    assert stored is not None and stored.status == "canceled"
    assert device_row is not None and device_row.management_state is ManagementState.managed


async def test_a_company_phone_offers_lost_mode_with_its_fields_and_a_personal_one_no_wipe(
    client: httpx.AsyncClient, browser: httpx.AsyncClient, factory: Factory
) -> None:
    admin = await factory.admin("Global administrator")
    body = {"name": "Phones", "platforms": ["ios"], "ownership": "company"}
    token = (await client.post("/api/v1/enrollment-tokens", json=body, headers=admin.headers)).json()["token"]
    phone = TestDevice(client, platform="ios")
    assert (await phone.enroll(token)).status_code == 201
    personal = await enroll(client, admin, ownership="personal")
    await portal_csrf(browser, admin.email)

    page = (await browser.get(f"/portal/devices/{phone.device_id}")).text
    lost_mode = page[
        page.index('action="/portal/devices/' + str(phone.device_id) + '/actions/lost_mode_on"') :
    ]
    lost_mode = lost_mode[: lost_mode.index("</form>")]
    for label in ("Message", "Phone number", "Footnote"):
        assert f">{label}" in lost_mode
    assert 'name="message"' in lost_mode and "required" in lost_mode
    for action in ("locate", "passcode_reset", "lost_mode_off", "wipe", "retire"):
        assert f'/actions/{action}"' in page, action
    assert "/actions/shutdown" not in page  # not for iOS

    byod = (await browser.get(f"/portal/devices/{personal.device_id}")).text
    assert "/actions/retire" in byod and "/actions/wipe" not in byod
