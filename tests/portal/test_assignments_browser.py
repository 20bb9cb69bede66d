"""Assignments in a real browser: the editor's live "would reach N devices" preview as rows change, saving,
the device page listing what reaches it, and the "why?" page naming the group chain and the filter's
values."""

from __future__ import annotations

import re

import httpx
from playwright.async_api import Page, expect
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from tests.assignments.helpers import make_policy, targets
from tests.conftest import Factory
from tests.groups.helpers import add, create_group, insert_devices
from tests.portal.conftest import LiveServer, browser_sign_in, shot


async def test_assignment_editor_previews_reach_saves_and_the_device_explains_why(
    page: Page, live_server: LiveServer, factory: Factory, sessionmaker: async_sessionmaker[AsyncSession]
) -> None:
    base = live_server.url
    admin = await factory.admin("Global administrator")
    laptop, kiosk, lab = await insert_devices(
        sessionmaker, [{"name": "laptop-1"}, {"name": "kiosk-2"}, {"name": "lab-3"}]
    )
    async with httpx.AsyncClient(base_url=base, verify=False, timeout=10) as api:  # noqa: S501 - test CA
        staff = await create_group(api, admin, "All staff")
        sales = await create_group(api, admin, "Sales")
        kiosks = await create_group(api, admin, "Kiosks")
        assert (await add(api, admin, staff["id"], "group", sales["id"])).status_code == 201
        for device in (laptop, kiosk, lab):
            assert (await add(api, admin, sales["id"], "device", device)).status_code == 201
        assert (await add(api, admin, kiosks["id"], "device", kiosk)).status_code == 201
        made = await api.post(
            "/api/v1/assignment-filters",
            json={
                "name": "Not the lab",
                "platform": "windows",
                "rule": 'device.displayName -startsWith "lab"',
            },
            headers=admin.headers,
        )
        assert made.status_code == 201, made.text
    policy = await make_policy(sessionmaker, "Windows baseline")

    await browser_sign_in(page, base, admin.email)
    await page.goto(f"{base}/portal/compliance-policies/{policy}/assignments")
    await expect(page.get_by_role("heading", name="Assignments", level=1)).to_be_visible()
    preview = page.locator("#reach-preview")
    await expect(preview).to_contain_text("would reach 0 device(s)")
    await expect(page.get_by_role("button", name="Preview reach")).to_be_hidden()  # the script previews live

    await page.get_by_label("Target of row 1").select_option(label="All staff")
    await expect(preview).to_contain_text("would reach 3 device(s)")
    await page.get_by_label("Filter of row 1").select_option(label="Not the lab")
    await page.get_by_label("Filter mode of row 1").select_option(label="All but matching devices")
    await expect(preview).to_contain_text("would reach 2 device(s)")
    await page.get_by_label("Include or exclude, row 2").select_option(label="Exclude")
    await page.get_by_label("Target of row 2").select_option(label="Kiosks")
    await expect(preview).to_contain_text("would reach 1 device(s)")
    await shot(page, "assignment-editor")
    await page.get_by_role("button", name="Save assignments").click()
    await expect(page.locator(".flash, [role=status]").first).to_contain_text("reaches 1 device(s) now")
    assert await targets(sessionmaker, policy) == {laptop}

    # The device page lists the policy; "Why?" names the chain of groups and the filter's reading.
    await page.goto(f"{base}/portal/devices/{laptop}")
    card = page.locator("section", has=page.get_by_role("heading", name=re.compile("Policies and profiles")))
    await expect(card.get_by_role("row", name=re.compile("Windows baseline"))).to_be_visible()
    await card.get_by_role("link", name="Why?").click()
    verdict = page.locator("[data-verdict]")
    await expect(verdict).to_have_attribute("data-verdict", "included")
    include = page.locator("tr[data-effect=includes]")
    await expect(include.locator("[data-chain]")).to_have_text(re.compile(r"Sales\s*→\s*All staff"))
    await expect(include).to_contain_text("Not the lab")
    await expect(include).to_contain_text("laptop-1")  # the property value the filter read
    await shot(page, "why-included")

    # For the kiosk: excluded, and the page says exclusion wins.
    await page.goto(f"{base}/portal/devices/{kiosk}/why")
    await page.get_by_label("Policy or profile").select_option(label="Windows baseline (Windows)")
    await page.get_by_role("button", name="Explain").click()
    await expect(page.locator("[data-verdict]")).to_have_attribute("data-verdict", "excluded")
    await expect(page.locator("[data-verdict]")).to_contain_text("exclusion wins")
    await shot(page, "why-excluded")
