"""Configuration profiles in a real browser: the create flow generated from the settings catalog (platform →
basics → settings found by search and category, constraints enforced by the browser → review + create), a
Wi-Fi secret never shown again, the assignment preview, the profile's status report after a device reports,
and the roles that only read."""

from __future__ import annotations

import httpx
from playwright.async_api import Page, expect

from tests.conftest import Factory
from tests.devices.device import TestDevice, canonical_hash, inventory
from tests.portal.conftest import LiveServer, browser_sign_in, shot


async def test_create_a_profile_from_the_catalog_assign_it_and_read_its_status(
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
        device = TestDevice(http, base_url=base, name="web-7")
        assert (await device.enroll(token)).status_code == 201
        data = inventory()
        assert (
            await device.checkin(
                {"agent_version": "0.1.0", "inventory": data, "inventory_hash": canonical_hash(data)}
            )
        ).status_code == 200

    await browser_sign_in(page, base, admin.email)
    nav = page.get_by_role("navigation", name="Main")
    await nav.get_by_role("link", name="Configuration profiles").click()
    await page.get_by_role("link", name="Create profile").click()
    await page.get_by_label("Linux").check()
    await page.get_by_role("button", name="Next: basics and settings").click()
    await page.get_by_label("Name", exact=True).fill("Linux servers")

    # The catalog is searched as you type: other settings are hidden, their categories too.
    await page.get_by_label("Search settings").fill("banner")
    banner = page.get_by_label("Login banner")
    await expect(banner).to_be_visible()
    await expect(page.get_by_label("Minimum password length")).to_be_hidden()
    await banner.fill("Authorised use only")
    await page.get_by_label("Search settings").fill("")
    await page.get_by_label("Category").select_option("Remote access")
    await expect(banner).to_be_hidden()
    await page.get_by_label("SSH password authentication").select_option(label="No")
    await page.get_by_label("Category").select_option("")
    # The browser enforces the catalog's bounds before the server does.
    length = page.get_by_label("Minimum password length")
    await expect(length).to_have_attribute("min", "4")
    await expect(length).to_have_attribute("max", "64")
    await length.fill("2")
    await page.get_by_role("button", name="Review + create").click()
    assert await length.evaluate("e => !e.validity.valid")
    await length.fill("12")
    await shot(page, "profile-create-settings")
    await page.get_by_role("button", name="Review + create").click()
    review = page.locator("[data-review]")
    await expect(review).to_contain_text("Login banner: Authorised use only")
    await expect(review).to_contain_text("SSH password authentication: No")
    await expect(review).to_contain_text("Minimum password length: 12")
    await shot(page, "profile-create-review")
    await review.get_by_role("button", name="Create").click()

    # Created: straight to its assignments with the live reach preview.
    await expect(page.get_by_role("heading", name="Assignments", level=1)).to_be_visible()
    await page.get_by_label("Target of row 1").select_option(label="All devices")
    await expect(page.locator("#reach-preview")).to_contain_text("would reach 1 device(s)")
    await page.get_by_role("button", name="Save assignments").click()
    await expect(page.get_by_role("status")).to_contain_text("reaches 1 device(s) now")

    # The device fetches its desired state and reports; the profile's report counts it.
    async with httpx.AsyncClient(base_url=base, verify=False, timeout=10) as http:  # noqa: S501 - test CA
        device.client = http
        document = (await device.request("GET", "/device/v1/desired-state")).json()
        (entry,) = document["profiles"]
        report = {
            "version": document["version"],
            "profiles": [
                {
                    "id": entry["id"],
                    "version": entry["version"],
                    "settings": [
                        {"id": "login_banner.text", "state": "succeeded"},
                        {
                            "id": "password.min_length",
                            "state": "error",
                            "message": "pam_pwquality is missing",
                        },
                        {"id": "ssh.password_authentication", "state": "succeeded"},
                    ],
                }
            ],
        }
        stored = await device.request("POST", "/device/v1/desired-state/report", report)
        assert stored.status_code == 200, stored.text

    await page.goto(f"{base}/portal/configuration-profiles")
    await page.get_by_role("link", name="Linux servers").click()
    await expect(page.locator('[data-count="error"]')).to_contain_text("1")
    await expect(page.locator('[data-count="succeeded"]')).to_contain_text("0")
    await shot(page, "profile-status")
    await page.locator('[data-count="error"]').click()
    await expect(page.get_by_role("row", name="web-7")).to_contain_text("pam_pwquality is missing")

    # Editing: a new version; the device's report is then pending again.
    await page.goto(f"{base}/portal/configuration-profiles")
    await page.get_by_role("link", name="Linux servers").click()
    await page.get_by_role("link", name="Edit").click()
    await page.get_by_label("Minimum password length").fill("")
    await page.get_by_role("button", name="Save").click()
    await expect(page.get_by_role("status")).to_contain_text("Linux servers saved")
    await expect(page.locator('[data-count="pending"]')).to_contain_text("1")
    await expect(page.get_by_role("heading", name="Versions")).to_be_visible()
    await expect(page.get_by_text("Linux configuration profile · version 2")).to_be_visible()


async def test_a_wifi_secret_is_kept_never_shown_and_readers_see_no_editor(
    page: Page, live_server: LiveServer, factory: Factory
) -> None:
    base = live_server.url
    admin = await factory.admin("Global administrator")
    await browser_sign_in(page, base, admin.email)
    await page.goto(f"{base}/portal/configuration-profiles/new?platform=windows")
    await page.get_by_label("Name", exact=True).fill("Office Wi-Fi")
    await page.get_by_label("Search settings").fill("wi-fi")
    await page.get_by_label("ssid of entry 1", exact=True).fill("Corp")
    await page.get_by_label("security of entry 1", exact=True).select_option("wpa2_personal")
    await page.get_by_label("password of entry 1", exact=True).fill("correct horse battery")
    await page.get_by_role("button", name="Review + create").click()
    review = page.locator("[data-review]")
    await expect(review).to_contain_text("ssid: Corp, security: wpa2_personal, password: •••")
    await review.get_by_role("button", name="Create").click()
    await expect(page.get_by_role("heading", name="Assignments", level=1)).to_be_visible()

    await page.goto(f"{base}/portal/configuration-profiles")
    await page.get_by_role("link", name="Office Wi-Fi").click()
    assert "correct horse" not in await page.content()
    await page.get_by_role("link", name="Edit").click()
    secret = page.get_by_label("password of entry 1", exact=True)
    await expect(secret).to_have_value("")
    await expect(secret).to_have_attribute("placeholder", "Stored: leave empty to keep")
    assert "correct horse" not in await page.content()
    await page.get_by_label("ssid of entry 2").fill("Guest")
    await page.get_by_label("security of entry 2").select_option("open")
    await page.get_by_role("button", name="Save").click()
    await expect(page.get_by_role("status")).to_contain_text("Office Wi-Fi saved")

    async with httpx.AsyncClient(base_url=base, verify=False, timeout=10) as http:  # noqa: S501 - test CA
        (profile,) = (await http.get("/api/v1/configuration-profiles", headers=admin.headers)).json()
    assert profile["version"] == 2
    first, guest = profile["settings"]["wifi.networks"]
    assert first["password"] == {"$secret": True} and "password" not in guest

    # A help desk operator reads profiles but is offered no editor.
    helpdesk = await factory.admin("Help desk operator")
    await page.context.clear_cookies()
    await browser_sign_in(page, base, helpdesk.email)
    await page.goto(f"{base}/portal/configuration-profiles")
    await expect(page.get_by_role("link", name="Create profile")).to_have_count(0)
    await page.get_by_role("link", name="Office Wi-Fi").click()
    await expect(page.get_by_role("link", name="Edit")).to_have_count(0)
    response = await page.goto(f"{base}/portal/configuration-profiles/new?platform=windows")
    assert response is not None and response.status == 403
