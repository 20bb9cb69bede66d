"""Scope groups in the admin center, in Chromium: an assignment limited to a group made through the form,
and the "who can wipe this device?" page that follows from it."""

from __future__ import annotations

import httpx
from playwright.async_api import Page, expect

from tests.conftest import Factory
from tests.devices.test_enrollment_and_checkin import enrolled
from tests.groups.helpers import add, create_group
from tests.portal.conftest import LiveServer, browser_sign_in, shot


async def test_an_assignment_limited_to_a_group_and_who_can_wipe(
    page: Page, live_server: LiveServer, factory: Factory, client: httpx.AsyncClient
) -> None:
    admin = await factory.admin("Global administrator")
    paris = (await create_group(client, admin, "Paris"))["id"]
    await create_group(client, admin, "Lyon")
    device = await enrolled(client, admin)
    assert (await add(client, admin, paris, "device", device.device_id)).status_code in (200, 201)
    desk = await factory.admin(None, token=False, email="desk@example.com")

    await browser_sign_in(page, live_server.url, admin.email)
    await page.goto(f"{live_server.url}/portal/role-assignments/new")
    await page.get_by_label("Name", exact=True).fill("Paris desk")
    await page.get_by_label("Role").select_option(label="Help desk operator (built-in)")
    await page.get_by_role("checkbox", name="desk@example.com").check()
    await page.get_by_role("radio", name="Only members of these scope groups").check()
    scope_groups = page.get_by_role("group", name="Scope groups")
    await scope_groups.get_by_role("checkbox", name="Paris").check()
    await shot(page, "role-assignment-scope-groups")
    await page.get_by_role("button", name="Create assignment").click()
    await expect(page.get_by_text("Role assignment Paris desk created.")).to_be_visible()
    row = page.get_by_role("row", name="Paris desk")
    await expect(row).to_contain_text("Users and devices in: Paris")

    await page.goto(f"{live_server.url}/portal/devices/{device.device_id}")
    await page.get_by_role("link", name="Who can wipe it?").click()
    await expect(page.get_by_role("heading", level=1)).to_have_text("Who can wipe this device?")
    holders = page.get_by_role("table")
    await expect(holders).to_contain_text(desk.email)
    await expect(holders).to_contain_text("Help desk operator (Paris desk)")
    await shot(page, "who-can-wipe")
    await page.get_by_label("Action", exact=True).select_option(label="Lock")
    await page.get_by_role("button", name="Show").click()
    await expect(page.get_by_role("heading", level=1)).to_have_text("Who can lock this device?")
