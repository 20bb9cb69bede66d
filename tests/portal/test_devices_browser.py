"""Devices in a real browser: an enrollment token made in the admin center enrolls a device against the live
server, the device shows up with its inventory, a help desk operator locks it from the action bar and sees the
lock succeed."""

from __future__ import annotations

import re
from urllib.parse import parse_qs, urlparse

import httpx
from playwright.async_api import Page, expect

from tests.conftest import Factory
from tests.devices.device import TestDevice, canonical_hash, inventory
from tests.portal.conftest import LiveServer, browser_sign_in, shot


async def sign_out(page: Page) -> None:
    await page.get_by_role("button", name="Sign out").click()
    await expect(page).to_have_url(re.compile(r"/portal/sign-in"))


async def test_token_enrolls_a_device_that_help_desk_locks_from_the_action_bar(
    page: Page, live_server: LiveServer, factory: Factory
) -> None:
    base = live_server.url
    admin = await factory.admin("Global administrator", token=False)
    helpdesk = await factory.admin("Help desk operator", token=False)
    reader = await factory.admin("Read-only operator", token=False)

    # A Global administrator creates an enrollment token and sees it once, with its URL and QR code.
    await browser_sign_in(page, base, admin.email)
    nav = page.get_by_role("navigation", name="Main")
    await nav.get_by_role("link", name="Enrollment").click()
    await expect(page.get_by_role("heading", level=1)).to_have_text("Enrollment")
    await page.get_by_label("Name").fill("Berlin laptops")
    await page.get_by_label("Maximum uses").fill("10")
    await page.get_by_role("button", name="Create enrollment token").click()
    await expect(page.get_by_role("heading", name=re.compile("Berlin laptops.* created"))).to_be_visible()
    await expect(page.get_by_role("img", name="QR code of the enrollment URL")).to_be_visible()
    url = (await page.locator("#enrollment-url").inner_text()).strip()
    assert url.startswith(f"{base}/device/v1/enroll?token=cet_")
    await expect(page.locator("#enrollment-command")).to_have_text(f"corral-agent enroll '{url}'")
    token = parse_qs(urlparse(url).query)["token"][0]
    token_page = await page.get_by_role("link", name="Token details and uses").get_attribute("href")
    await shot(page, "enrollment-created")
    await page.reload()
    await expect(page.locator("#enrollment-url")).to_have_count(0)  # shown once
    await expect(page.get_by_role("row", name=re.compile("Berlin laptops"))).to_contain_text("0 / 10")
    await shot(page, "enrollment")

    # The device enrolls against the live server with that token and checks in with its inventory.
    async with httpx.AsyncClient(base_url=base, verify=False, timeout=10) as http:  # noqa: S501 - test CA
        device = TestDevice(http, base_url=base, name="alice-thinkpad")
        enrolled = await device.enroll(token)
        assert enrolled.status_code == 201, enrolled.text
        data = inventory()
        data["hardware"]["serial_number"] = device.serial
        first = await device.checkin(
            {"agent_version": "0.1.0", "inventory": data, "inventory_hash": canonical_hash(data)}
        )
        assert first.status_code == 200 and first.json()["inventory"] == "accepted", first.text

        # The token's page logs the use.
        await page.goto(f"{base}{token_page}")
        uses = page.get_by_role("region", name=re.compile("Enrollment attempts"))
        await expect(uses.get_by_role("row", name=re.compile(device.serial))).to_contain_text("Enrolled")
        await shot(page, "enrollment-token")

        # The admin finds it by its serial number and opens it.
        await nav.get_by_role("link", name="All devices").click()
        await page.get_by_label("Name, serial number or user").fill(device.serial)
        await page.get_by_role("button", name="Search").click()
        row = page.get_by_role("row", name=re.compile("alice-thinkpad"))
        await expect(row).to_have_count(1)
        await expect(row).to_contain_text(device.serial)
        await expect(row).to_contain_text("Managed")
        await shot(page, "device-list")
        await row.get_by_role("link", name="alice-thinkpad").click()
        await expect(page.get_by_role("heading", level=1)).to_have_text("alice-thinkpad")
        hardware = page.get_by_role("region", name="Hardware")
        await expect(hardware).to_contain_text("ThinkPad X1")
        await expect(hardware).to_contain_text("16.0 GiB")
        security = page.get_by_role("region", name="Security posture")
        await expect(security).to_contain_text("Disk encryption")
        await expect(security.locator(".badge--success")).to_have_count(5)  # jailbroken: "No" is good
        apps = page.get_by_role("region", name=re.compile("Installed apps"))
        await expect(apps.get_by_role("row", name=re.compile("Firefox"))).to_contain_text("128.3.1esr")
        await expect(page.get_by_role("region", name="Overview")).to_contain_text(device.fingerprint or "")
        await expect(page.get_by_role("button", name="Delete device record")).to_have_count(0)  # a summary
        await expect(page.locator("summary", has_text="Delete device record")).to_have_count(1)
        await shot(page, "device-detail")
        device_url = page.url
        await sign_out(page)

        # A help desk operator locks it from the action bar; they may not delete the record.
        await browser_sign_in(page, base, helpdesk.email)
        await page.goto(device_url)
        await expect(page.locator("summary", has_text="Delete device record")).to_have_count(0)
        await page.locator("summary", has_text=re.compile(r"^Lock$")).click()
        lock_form = page.locator("form[action$='/actions/lock']")
        await lock_form.get_by_label("Message").fill("This laptop was reported lost. Call IT.")
        await lock_form.get_by_label("Phone number").fill("+49 30 1234567")
        await page.locator("summary", has_text=re.compile(r"^Wipe$")).click()  # one panel at a time
        wipe_panel = page.locator("details", has=page.locator("form[action$='/actions/wipe']"))
        await expect(wipe_panel).to_contain_text("all data, corporate and personal, is erased")
        await expect(wipe_panel.get_by_label("Reason")).to_be_focused()
        await expect(lock_form).to_be_hidden()
        await shot(page, "device-actions")
        await page.keyboard.press("Escape")
        await page.locator("summary", has_text=re.compile(r"^Lock$")).click()
        await lock_form.get_by_role("button", name="Lock").click()
        await expect(page.get_by_role("status")).to_contain_text(
            "Lock queued; the device will get it at its next check-in or wake-up"
        )
        commands = page.locator("#device-commands")
        lock_row = commands.get_by_role("row", name=re.compile("^Lock"))
        await expect(lock_row).to_contain_text("Queued")
        await expect(commands).to_have_attribute("data-refresh", re.compile("/portal/devices/"))

        # The device's next check-in receives the lock; it reports success.
        delivered = (await device.checkin({})).json()["commands"]
        assert [(c["type"], c["params"]) for c in delivered] == [
            ("lock", {"message": "This laptop was reported lost. Call IT.", "phone": "+49 30 1234567"})
        ]
        result = {"command_id": delivered[0]["id"], "status": "succeeded", "result": {"locked": True}}
        done = await device.checkin({"command_results": [result]})
        assert done.status_code == 200, done.text

    # The page follows by itself (fragment refresh, CSP-clean script) and after a reload.
    await expect(lock_row).to_contain_text("Succeeded", timeout=15_000)
    await expect(commands).not_to_have_attribute("data-refresh", re.compile(".*"))
    await commands.get_by_role("link", name="Refresh").click()
    await expect(
        page.locator("#device-commands").get_by_role("row", name=re.compile("^Lock"))
    ).to_contain_text("Succeeded")
    await page.evaluate("window.scrollTo(0, 0)")  # the sticky top bar, in a full-page shot
    await shot(page, "device-command-succeeded")
    await sign_out(page)

    # A read-only operator sees the device but no action bar at all.
    await browser_sign_in(page, base, reader.email)
    await page.goto(device_url)
    await expect(page.get_by_role("heading", level=1)).to_have_text("alice-thinkpad")
    await expect(page.locator(".action-bar")).to_have_count(0)
    await expect(page.locator("details.confirm")).to_have_count(0)
