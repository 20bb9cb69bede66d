"""Compliance in a real browser: the create flow (platform → basics → settings → actions → review + create),
the assignment editor's reach preview, the policy's status report, the device's compliance card and the
dashboard's compliance chart, against a device checking in over HTTPS."""

from __future__ import annotations

import re

import httpx
from playwright.async_api import Page, expect

from tests.conftest import Factory
from tests.devices.device import TestDevice, canonical_hash, inventory
from tests.portal.conftest import LiveServer, browser_sign_in, shot


async def test_create_assign_and_see_a_device_fail_a_compliance_policy(
    page: Page, live_server: LiveServer, factory: Factory
) -> None:
    base = live_server.url
    admin = await factory.admin("Global administrator")
    async with httpx.AsyncClient(base_url=base, verify=False, timeout=10) as http:  # noqa: S501 - test CA
        token = (
            await http.post(
                "/api/v1/enrollment-tokens",
                json={"name": "Fleet", "platforms": ["linux"]},
                headers=admin.headers,
            )
        ).json()["token"]
        device = TestDevice(http, base_url=base, name="build-server-7")
        assert (await device.enroll(token)).status_code == 201
        data = inventory()
        data["security"]["disk_encrypted"] = False
        checked = await device.checkin(
            {"agent_version": "0.1.0", "inventory": data, "inventory_hash": canonical_hash(data)}
        )
        assert checked.status_code == 200

    await browser_sign_in(page, base, admin.email)
    await page.get_by_role("navigation", name="Main").get_by_role("link", name="Compliance policies").click()
    await page.get_by_role("link", name="Create policy").click()
    await page.get_by_label("Linux").check()
    await page.get_by_role("button", name="Next: basics and settings").click()
    await page.get_by_label("Name").fill("Linux servers baseline")
    await page.get_by_label("Require disk encryption").check()
    await page.get_by_label("Minimum OS version").fill("12.5")
    await page.get_by_label("Hours for action 1").fill("0")
    await page.get_by_label("Action 2", exact=True).select_option(label="Send a notification to the device")
    await page.get_by_label("Hours for action 2").fill("4")
    await page.get_by_label("Message of action 2").fill("Encrypt your disk, please")
    await shot(page, "compliance-create-settings")
    await page.get_by_role("button", name="Review + create").click()
    review = page.locator("[data-review]")
    await expect(review).to_contain_text("Require disk encryption: Required")
    await expect(review).to_contain_text("Minimum OS version: 12.5")
    await expect(review).to_contain_text("Send a notification to the device after 4 h")
    await shot(page, "compliance-create-review")
    await review.get_by_role("button", name="Create").click()

    # Created: straight to its assignments, with the live reach preview.
    await expect(page.get_by_role("heading", name="Assignments", level=1)).to_be_visible()
    await page.get_by_label("Target of row 1").select_option(label="All devices")
    await expect(page.locator("#reach-preview")).to_contain_text("would reach 1 device(s)")
    await page.get_by_role("button", name="Save assignments").click()
    await expect(page.get_by_role("status")).to_contain_text("reaches 1 device(s) now")

    # The policy's report: the device is noncompliant (no grace), and the count opens it.
    await page.get_by_role("link", name="Linux servers baseline").first.click()
    noncompliant = page.locator('[data-count="noncompliant"]')
    await expect(noncompliant).to_contain_text("1")
    await shot(page, "compliance-policy-status")
    await noncompliant.click()
    await page.get_by_role("link", name="build-server-7").click()

    # The device's compliance card: expected vs observed, per setting.
    card = page.locator("[data-compliance]")
    await expect(card).to_have_attribute("data-compliance", "noncompliant")
    disk = card.locator('tr[data-setting="disk_encryption.required"]')
    await expect(disk).to_contain_text("Yes")
    await expect(disk).to_contain_text("No")
    await expect(disk).to_contain_text("Not compliant")
    await expect(card.locator('tr[data-setting="os.min_version"]')).to_contain_text("12.7")
    await shot(page, "device-compliance")

    # The dashboard's compliance chart counts it and links to the noncompliant devices.
    await page.goto(f"{base}/portal")
    chart = page.locator('[data-chart="compliance"]')
    link = chart.locator(
        "xpath=.//*[local-name()='a'][@*[local-name()='href']='/portal/devices?compliance_state=noncompliant']"
    )
    await expect(link).to_have_count(1)
    ring = link.locator("xpath=./*[local-name()='path']").first
    box = await ring.bounding_box()
    assert box is not None
    await ring.click(position={"x": box["width"] / 2, "y": 6})  # on the ring, not in the donut's hole
    await expect(page).to_have_url(re.compile(r"compliance_state=noncompliant"))
    await expect(page.locator("table.data tbody tr")).to_have_count(1)
