"""Bulk actions in the admin center: selecting devices on the list, the bulk bar, the progress page that
follows the devices by itself, the bulk action list, and "Clear queue" on a device's command history. A real
browser for the journey; plain HTTP for CSRF, refusals and the live fragment."""

from __future__ import annotations

import re
import uuid
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
from fastapi import FastAPI
from playwright.async_api import Page, expect
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from tests.conftest import Admin, Factory, audit_rows, count_rows, new_client, portal_csrf
from tests.devices.device import TestDevice
from tests.portal.conftest import LiveServer, browser_sign_in, shot


async def enroll_many(http: httpx.AsyncClient, admin: Admin, names: list[str], base: str) -> list[TestDevice]:
    token = await http.post(
        "/api/v1/enrollment-tokens",
        json={"name": "Laptops", "platforms": ["linux"], "ownership": "company"},
        headers=admin.headers,
    )
    assert token.status_code == 201, token.text
    devices = []
    for name in names:
        device = TestDevice(http, base_url=base, name=name)
        assert (await device.enroll(token.json()["token"])).status_code == 201
        devices.append(device)
    return devices


async def finish(device: TestDevice, status: str, **extra: Any) -> None:
    delivered = (await device.checkin({})).json()["commands"]
    assert len(delivered) == 1, delivered
    result = {"command_id": delivered[0]["id"], "status": status, **extra}
    done = await device.checkin({"command_results": [result]})
    assert done.status_code == 200, done.text


# ------------------------------------------------------------------------------------------- in a browser
async def test_admin_selects_three_devices_syncs_them_and_follows_the_progress(
    page: Page, live_server: LiveServer, factory: Factory
) -> None:
    base = live_server.url
    admin = await factory.admin("Global administrator")
    names = ["berlin-kiosk-01", "berlin-kiosk-02", "berlin-kiosk-03", "berlin-laptop-04"]
    async with httpx.AsyncClient(base_url=base, verify=False, timeout=10) as http:  # noqa: S501 - test CA
        devices = await enroll_many(http, admin, names, base)

        await browser_sign_in(page, base, admin.email)
        await page.goto(f"{base}/portal/devices")
        bar = page.locator(".bulk-bar")
        await expect(bar).to_contain_text("0 selected on this page")
        await expect(bar.get_by_role("button", name="Send to selected devices")).to_be_disabled()

        # Select all, then the wipe shows what will happen and asks for the count.
        await page.get_by_label("Select all devices on this page").check()
        await expect(bar).to_contain_text("4 selected on this page")
        await bar.get_by_label("Action").select_option("wipe")
        danger = bar.locator(".bulk-danger")
        await expect(danger).to_be_visible()
        await expect(danger).to_contain_text("Type the number of selected devices, 4, to confirm")
        await expect(bar.locator("fieldset[data-bulk-for='wipe']")).to_be_visible()
        await expect(bar.locator("fieldset[data-bulk-for='lock']")).to_be_hidden()
        await bar.get_by_label(re.compile("^Reason")).fill("Kiosks replaced, ticket CHG-118")
        await bar.get_by_label(re.compile("Type the number of selected devices")).fill("3")
        await page.evaluate("window.scrollTo(0, 0)")
        await shot(page, "bulk-bar-wipe")
        await bar.get_by_role("button", name="Send to selected devices").click()
        # Refused: the list again, the selection and the reason kept, nothing sent.
        await expect(page.get_by_role("alert")).to_contain_text("Type the number of selected devices (4)")
        await expect(page.locator("input[name='device_ids']:checked")).to_have_count(4)
        await expect(page.locator(".bulk-bar").get_by_label(re.compile("^Reason"))).to_have_value(
            "Kiosks replaced, ticket CHG-118"
        )

        # Three kiosks, synced.
        await page.get_by_label("Select all devices on this page").uncheck()
        await expect(page.locator(".bulk-bar")).to_contain_text("0 selected on this page")
        for name in names[:3]:
            await page.get_by_label(f"Select {name}").check()
        bar = page.locator(".bulk-bar")
        await bar.get_by_label("Action").select_option("sync")
        await expect(bar.locator(".bulk-danger")).to_be_hidden()
        await expect(page.get_by_label("Select all devices on this page")).not_to_be_checked()
        await page.evaluate("window.scrollTo(0, 0)")
        await shot(page, "bulk-device-list-selected")
        await bar.get_by_role("button", name="Send to selected devices").click()

        await expect(page.get_by_role("heading", level=1)).to_have_text("Sync on 3 devices")
        await expect(page.get_by_role("status")).to_contain_text("Sync queued for 3 of 3 device(s).")
        progress = page.locator("#bulk-progress")
        await expect(progress).to_contain_text("0 of 3 finished")
        await expect(progress).to_have_attribute("data-refresh", re.compile("/portal/devices/bulk-actions/"))
        for name in names[:3]:
            await expect(progress.get_by_role("row", name=re.compile(name))).to_contain_text("Queued")
        await shot(page, "bulk-progress-queued")

        # The devices answer; the page follows by itself.
        await finish(devices[0], "succeeded")
        await finish(devices[1], "succeeded")
        await expect(progress).to_contain_text("2 of 3 finished", timeout=15_000)
        await finish(devices[2], "failed", error="Agent busy: try again later")
        progress = page.locator("#bulk-progress")
        await expect(progress).to_contain_text("3 of 3 finished", timeout=15_000)
        await expect(progress).not_to_have_attribute("data-refresh", re.compile(".*"))
        await expect(progress.get_by_role("row", name=re.compile(names[2]))).to_contain_text(
            "Agent busy: try again later"
        )
        await expect(progress.get_by_role("heading", name=re.compile("Progress"))).to_contain_text("Done")
        await page.evaluate("window.scrollTo(0, 0)")
        await shot(page, "bulk-progress-done")

        # The list of bulk actions, reachable from the device list.
        await page.goto(f"{base}/portal/devices")
        await page.get_by_role("link", name="Bulk actions").click()
        await expect(page.get_by_role("heading", level=1)).to_have_text("Bulk actions")
        row = page.get_by_role("row", name=re.compile("^Sync"))
        await expect(row).to_contain_text("3 of 3 finished · 1 failed")
        await expect(row).to_contain_text("Done")
        await shot(page, "bulk-list")

        # A selection that nothing could take: recorded anyway, every device listed with its reason.
        located = await http.post(
            "/api/v1/devices/bulk-actions",
            json={"type": "locate", "device_ids": [devices[0].device_id, str(uuid.uuid4())]},
            headers=admin.headers,
        )
        assert located.status_code == 201, located.text
        await page.goto(f"{base}/portal/devices/bulk-actions/{located.json()['id']}")
        skipped = page.get_by_role("region", name=re.compile("Skipped"))
        await expect(skipped.get_by_role("row", name=re.compile(names[0]))).to_contain_text(
            "Locate is not available for linux devices."
        )
        await expect(skipped).to_contain_text("No such device.")
        await expect(page.locator("#bulk-progress")).to_contain_text("No device took the action.")
        await expect(page.locator("#bulk-progress")).not_to_have_attribute("data-refresh", re.compile(".*"))
        await shot(page, "bulk-all-skipped")

        # Clear queue on the fourth device's command history.
        for action in ("lock", "restart"):
            queued = await http.post(
                f"/api/v1/devices/{devices[3].device_id}/actions/{action}", json={}, headers=admin.headers
            )
            assert queued.status_code == 202, queued.text
        await page.goto(f"{base}/portal/devices/{devices[3].device_id}")
        commands = page.locator("#device-commands")
        await commands.locator("summary", has_text="Clear queue").click()
        await expect(commands.locator("details.confirm[open] .confirm-panel")).to_contain_text(
            "that you may cancel (2)"
        )
        await page.evaluate("window.scrollTo(0, 0)")
        await shot(page, "device-clear-queue")
        await commands.locator("details.confirm[open]").get_by_role("button", name="Clear queue").click()
        await expect(page.get_by_role("status")).to_contain_text("Queue cleared: 2 action(s) canceled.")
        await expect(
            page.locator("#device-commands").get_by_role("row", name=re.compile("^Lock"))
        ).to_contain_text("Canceled")
        await expect(page.locator("#device-commands summary", has_text="Clear queue")).to_have_count(0)


# ------------------------------------------------------------------------------------------- plain HTTP
@pytest.fixture
async def portal(app: FastAPI) -> AsyncIterator[httpx.AsyncClient]:
    """A second client for the portal session (cookies), apart from the API/device client."""
    async with new_client(app) as c:
        yield c


async def test_bulk_form_needs_csrf_and_a_refusal_changes_nothing(
    client: httpx.AsyncClient,
    portal: httpx.AsyncClient,
    factory: Factory,
    sessionmaker: async_sessionmaker[AsyncSession],
) -> None:
    admin = await factory.admin("Global administrator")
    devices = await enroll_many(client, admin, ["a-laptop", "b-laptop"], "https://testserver")
    ids = [d.device_id for d in devices]
    csrf = await portal_csrf(portal, admin.email)
    url = "/portal/devices/bulk-actions"
    form = {"type": "lock", "device_ids": ids, "lock.message": "Call IT"}
    refused = await portal.post(url, data=form)
    assert refused.status_code == 403 and "CSRF" in refused.text
    for body, status, message in [
        ({"type": "lock"}, 422, "Select at least one device first."),
        ({"device_ids": ids}, 422, "Choose the action"),
        ({"type": "wipe", "device_ids": ids, "reason": "Stolen laptops", "confirm": "1"}, 422, "(2)"),
        ({"type": "rename", "device_ids": ids}, 422, "cannot be sent in bulk"),
        ({"type": "lock", "device_ids": ["nope"]}, 422, "device_ids.0"),
    ]:
        response = await portal.post(url, data={**body, "csrf_token": csrf, "list_query": "sort=-name"})
        assert response.status_code == status, response.text
        assert message in response.text
        assert 'name="device_ids"' in response.text  # the list again, with its bulk bar
    assert await count_rows(sessionmaker, "bulk_actions") == 0

    created = await portal.post(url, data={**form, "csrf_token": csrf})
    assert created.status_code == 303, created.text
    page_url = created.headers["location"]
    page = await portal.get(page_url)
    assert page.status_code == 200 and "Lock queued for 2 of 2 device(s)." in page.text
    assert 'data-refresh="/portal/devices/bulk-actions/' in page.text
    fragment = await portal.get(page_url, headers={"X-Fragment": "bulk-progress"})
    assert fragment.status_code == 200 and fragment.text.lstrip().startswith(
        '<section class="card" id="bulk-progress"'
    )
    assert "<html" not in fragment.text and "0 of 2 finished" in fragment.text
    events = await audit_rows(sessionmaker, activity="device.bulk_action.lock")
    assert len(events) == 1 and events[0].actor_name == admin.email

    canceled = await portal.post(f"{page_url}/cancel", data={"csrf_token": csrf})
    assert canceled.status_code == 303
    assert "2 queued command(s) canceled." in (await portal.get(page_url)).text
    assert (await portal.get(f"/portal/devices/bulk-actions/{uuid.uuid4()}")).status_code == 404


async def test_read_only_operator_sees_no_bulk_bar_and_cannot_post_one(
    client: httpx.AsyncClient, portal: httpx.AsyncClient, factory: Factory
) -> None:
    admin = await factory.admin("Global administrator")
    reader = await factory.admin("Read-only operator", token=False)
    devices = await enroll_many(client, admin, ["c-laptop"], "https://testserver")
    csrf = await portal_csrf(portal, reader.email)
    listed = await portal.get("/portal/devices")
    assert listed.status_code == 200 and "c-laptop" in listed.text
    assert "data-bulk-form" not in listed.text and 'name="device_ids"' not in listed.text
    refused = await portal.post(
        "/portal/devices/bulk-actions",
        data={"type": "sync", "device_ids": [devices[0].device_id], "csrf_token": csrf},
    )
    assert refused.status_code == 403
    assert (await portal.get("/portal/devices/bulk-actions")).status_code == 200
    cleared = await portal.post(
        f"/portal/devices/{devices[0].device_id}/commands/clear", data={"csrf_token": csrf}
    )
    assert cleared.status_code == 303
    page = await portal.get(cleared.headers["location"])
    assert "Clearing the queue needs a remote action permission" in page.text
