"""Multi administrator approval in a real browser: a Global administrator turns the setting on and wipes a
device, which then waits undelivered; a second Global administrator approves it on the Approvals page and the
device receives the wipe at its next check-in."""

from __future__ import annotations

import re

import httpx
from playwright.async_api import Page, expect

from tests.conftest import Factory
from tests.devices.device import TestDevice
from tests.portal.conftest import LiveServer, browser_sign_in, shot


async def sign_out(page: Page) -> None:
    await page.get_by_role("button", name="Sign out").click()
    await expect(page).to_have_url(re.compile(r"/portal/sign-in"))


async def test_admin_a_wipes_and_admin_b_approves_on_the_approvals_page(
    page: Page, live_server: LiveServer, factory: Factory
) -> None:
    base = live_server.url
    requester = await factory.admin("Global administrator", email="alex@example.com")
    approver = await factory.admin("Global administrator", email="blake@example.com", token=False)

    async with httpx.AsyncClient(base_url=base, verify=False, timeout=10) as http:  # noqa: S501 - test CA
        token = await http.post(
            "/api/v1/enrollment-tokens",
            json={"name": "Laptops", "platforms": ["linux"], "ownership": "company"},
            headers=requester.headers,
        )
        assert token.status_code == 201, token.text
        device = TestDevice(http, base_url=base, name="finance-laptop-07")
        assert (await device.enroll(token.json()["token"])).status_code == 201

        # Admin A turns the tenant setting on.
        await browser_sign_in(page, base, requester.email)
        nav = page.get_by_role("navigation", name="Main")
        await nav.get_by_role("link", name="Settings").click()
        approval = page.get_by_role("region", name="Multi administrator approval")
        checkbox = approval.get_by_label("Wipes need a second administrator\u2019s approval")
        await checkbox.check()
        await approval.get_by_role("button", name="Save").click()
        await expect(page.get_by_role("status")).to_contain_text("Wipes now need a second administrator")
        await expect(checkbox).to_be_checked()
        await shot(page, "approval-setting")

        # A wipes the device: it waits for approval, and the requester cannot approve it.
        await page.goto(f"{base}/portal/devices/{device.device_id}")
        await page.locator("summary", has_text=re.compile(r"^Wipe$")).click()
        wipe_form = page.locator("form[action$='/actions/wipe']")
        await wipe_form.get_by_label("Reason").fill("Reported stolen, ticket INC-2044")
        await wipe_form.get_by_label(re.compile("Type the device name")).fill("finance-laptop-07")
        await wipe_form.get_by_role("button", name="Wipe device").click()
        await expect(page.get_by_role("status")).to_contain_text("waits for a second administrator")
        wipe_row = page.locator("#device-commands").get_by_role("row", name=re.compile("^Wipe"))
        await expect(wipe_row).to_contain_text("Pending approval")
        await expect(wipe_row).to_contain_text("Waiting for approval by a second administrator")
        await expect(wipe_row.locator("summary", has_text="Approve")).to_have_count(0)
        await expect(wipe_row.locator("summary", has_text="Cancel")).to_have_count(1)
        await expect(page.locator(".title-line")).to_contain_text("Wipe pending")
        await page.evaluate("window.scrollTo(0, 0)")
        await shot(page, "approval-requested")
        assert (await device.checkin({})).json()["commands"] == []  # not delivered while it waits
        await sign_out(page)

        # Admin B sees it on the device page, with Approve and Reject, and approves it on the Approvals page.
        await browser_sign_in(page, base, approver.email)
        await page.goto(f"{base}/portal/devices/{device.device_id}")
        wipe_row = page.locator("#device-commands").get_by_role("row", name=re.compile("^Wipe"))
        await expect(wipe_row.locator("summary", has_text="Approve")).to_have_count(1)
        await wipe_row.locator("summary", has_text="Reject").click()
        await expect(wipe_row.get_by_label(re.compile("^Reason"))).to_be_focused()
        await page.evaluate("window.scrollTo(0, 0)")
        await shot(page, "approval-device-reviewer")
        await page.keyboard.press("Escape")
        await nav.get_by_role("link", name="Approvals").click()
        await expect(page.get_by_role("heading", level=1)).to_have_text("Approvals")
        row = page.get_by_role("row", name=re.compile("finance-laptop-07"))
        await expect(row).to_contain_text(requester.email)
        await expect(row).to_contain_text("Reported stolen, ticket INC-2044")
        await expect(row).to_contain_text(re.compile(r"just now|minute"))
        await row.locator("summary", has_text="Approve").click()
        await row.get_by_label("Comment").fill("Confirmed with the user by phone")
        await shot(page, "approval-confirm")
        await row.get_by_role("button", name="Approve wipe").click()
        await expect(page.get_by_role("status")).to_contain_text("Wipe approved")
        await expect(page.get_by_text("Nothing is waiting for approval.")).to_be_visible()
        await shot(page, "approval-approved")

        # The device receives the wipe at its next check-in.
        delivered = (await device.checkin({})).json()["commands"]
        assert [c["type"] for c in delivered] == ["wipe"]
        await page.goto(f"{base}/portal/devices/{device.device_id}")
        wipe_row = page.locator("#device-commands").get_by_role("row", name=re.compile("^Wipe"))
        await expect(wipe_row).to_contain_text("Sent")
        await expect(wipe_row).to_contain_text(f"approved by {approver.email}")
        await page.evaluate("window.scrollTo(0, 0)")
        await shot(page, "approval-device-after")
