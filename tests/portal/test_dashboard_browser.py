"""The device-first dashboard in a real browser: charts drawn (styles allowed by the page's nonce, nothing
refused by the CSP), and a bar opens the device list behind it."""

from __future__ import annotations

import re

import httpx
from playwright.async_api import ConsoleMessage, Page, expect

from tests.conftest import Factory
from tests.devices.device import TestDevice
from tests.portal.conftest import LiveServer, browser_sign_in, shot


async def test_dashboard_charts_render_and_open_the_devices_behind_them(
    page: Page, live_server: LiveServer, factory: Factory
) -> None:
    base = live_server.url
    admin = await factory.admin("Global administrator")
    async with httpx.AsyncClient(base_url=base, verify=False, timeout=10) as http:  # noqa: S501 - test CA
        made = await http.post(
            "/api/v1/enrollment-tokens",
            json={"name": "Fleet", "platforms": ["linux", "windows", "macos"]},
            headers=admin.headers,
        )
        token = made.json()["token"]
        for i, platform in enumerate(["linux", "linux", "linux", "windows", "macos"]):
            device = TestDevice(http, base_url=base, platform=platform, name=f"{platform}-{i}")
            assert (await device.enroll(token)).status_code == 201
            assert (await device.checkin()).status_code == 200

    refused: list[str] = []

    def on_console(message: ConsoleMessage) -> None:
        if "Content Security Policy" in message.text:
            refused.append(message.text)

    page.on("console", on_console)
    await browser_sign_in(page, base, admin.email)
    await expect(page.get_by_role("heading", name=re.compile("Devices · 5 enrolled"))).to_be_visible()
    platforms = page.locator('[data-chart="platforms"] svg')
    await expect(platforms).to_be_visible()
    # pygal's stylesheet applied (allowed by the nonce): the plot background is transparent, the bars filled.
    fill = await page.locator('[data-chart="platforms"] svg .bar rect').first.evaluate(
        "e => getComputedStyle(e).fill"
    )
    assert fill not in ("", "rgb(0, 0, 0)"), fill
    await expect(page.locator('[data-chart="compliance"] svg')).to_be_visible()
    await expect(page.locator('[data-chart="checkins"] svg')).to_be_visible()
    await shot(page, "dashboard-charts")
    assert refused == []

    linux_bar = page.locator('[data-chart="platforms"]').locator(
        "xpath=.//*[local-name()='a'][@*[local-name()='href']='/portal/devices?platform=linux']/*[local-name()='rect']"
    )
    await linux_bar.click()
    await expect(page).to_have_url(re.compile(r"/portal/devices\?platform=linux$"))
    rows = page.locator("table.data tbody tr")
    await expect(rows).to_have_count(3)
    await expect(rows.first).to_contain_text("linux-")
