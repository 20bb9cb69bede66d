"""Users in a real browser: a Global administrator finds a user in the list, opens them, sees their device
and licence, and disables them (their device is retired, per the tenant setting); a help desk operator sees
the same user without any licence data."""

from __future__ import annotations

import re

import httpx
from playwright.async_api import Page, expect
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from tests.conftest import Factory
from tests.portal.conftest import LiveServer, browser_sign_in, shot
from tests.users.helpers import commands_of, devices_for, set_policy


async def test_users_list_to_detail_to_disable(
    page: Page, live_server: LiveServer, factory: Factory, sessionmaker: async_sessionmaker[AsyncSession]
) -> None:
    base = live_server.url
    admin = await factory.admin("Global administrator")
    helpdesk = await factory.admin("Help desk operator", token=False)
    await set_policy(sessionmaker, "retire")
    people = [
        ("adele.vance@contoso.example", "Adele Vance", "Retail", "Retail manager"),
        ("alex.wilber@contoso.example", "Alex Wilber", "Marketing", "Marketing assistant"),
        ("megan.bowen@contoso.example", "Megan Bowen", "Marketing", "Marketing manager"),
        ("nestor.wilke@contoso.example", "Nestor Wilke", "Operations", "Director"),
    ]
    ids = {}
    for upn, name, department, title in people:
        ids[upn] = await factory.user(
            upn,
            display_name=name,
            department=department,
            job_title=title,
            email=upn,
            licence=upn.startswith("megan"),
        )
    megan = ids["megan.bowen@contoso.example"]
    (laptop,) = await devices_for(sessionmaker, megan, "managed")
    async with httpx.AsyncClient(base_url=base, verify=False, timeout=10) as http:  # noqa: S501 - test CA
        licence = await http.post(
            "/api/v1/licences",
            json={"name": "Corral E3", "sku": "CORRAL-E3", "seats": 25},
            headers={"Authorization": f"Bearer {admin.token}"},
        )
        assert licence.status_code == 201, licence.text

    await browser_sign_in(page, base, admin.email)
    nav = page.get_by_role("navigation", name="Main")
    await nav.get_by_role("link", name="All users").click()
    await expect(page.get_by_role("heading", level=1)).to_have_text("All users")
    await shot(page, "users-list")

    await page.get_by_label("Department").select_option("Marketing")
    await page.get_by_role("button", name="Search").click()
    rows = page.get_by_role("row", name=re.compile("Marketing"))
    await expect(rows).to_have_count(2)
    await shot(page, "users-list-filtered")

    await page.get_by_label("Name, sign-in name or email").fill("megan")
    await page.get_by_role("button", name="Search").click()
    row = page.get_by_role("row", name=re.compile("Megan Bowen"))
    await expect(row).to_have_count(1)
    await row.get_by_role("link", name="Megan Bowen").click()
    await expect(page.get_by_role("heading", level=1)).to_have_text("Megan Bowen")
    devices = page.get_by_role("region", name=re.compile("Devices"))
    await expect(devices.get_by_role("row")).to_have_count(2)  # header and the laptop
    licences = page.get_by_role("region", name="Licences")
    await expect(licences).to_contain_text("T-")
    await expect(licences.get_by_label("Licence to assign")).to_contain_text("Corral E3")
    await shot(page, "user-detail")

    await page.get_by_text("Disable user", exact=True).first.click()
    panel = page.locator("details.confirm[open] .confirm-panel")
    await expect(panel).to_contain_text("signed out everywhere")
    await expect(panel).to_contain_text("retire")
    await shot(page, "user-disable-confirm")
    await panel.get_by_role("button", name="Disable user").click()
    await expect(page.get_by_role("status")).to_contain_text("megan.bowen@contoso.example is disabled")
    await expect(page.get_by_role("status")).to_contain_text("retire queued for 1 device(s)")
    await expect(page.get_by_role("button", name="Enable user")).to_be_visible()
    await expect(devices).to_contain_text("Retire pending")
    await shot(page, "user-disabled")
    (command,) = await commands_of(sessionmaker, laptop)
    assert command.type == "retire" and command.reason == "User deprovisioned"

    for name, path in [
        ("user-new", "/portal/users/new"),
        ("user-edit", f"/portal/users/{ids['adele.vance@contoso.example']}/edit"),
        ("licences", "/portal/licences"),
        ("licence-detail", f"/portal/licences/{licence.json()['id']}"),
        ("settings-deprovisioning", "/portal/settings"),
    ]:
        response = await page.goto(f"{base}{path}")
        assert response is not None and response.status == 200, path
        await expect(page.get_by_role("heading", level=1)).to_be_visible()
        await shot(page, name)

    # The help desk sees the same user, without a licence section or a Licences entry in the navigation.
    await page.get_by_role("button", name="Sign out").click()
    await browser_sign_in(page, base, helpdesk.email)
    await expect(nav.get_by_role("link", name="Licences")).to_have_count(0)
    await page.goto(f"{base}/portal/users/{megan}")
    await expect(page.get_by_role("heading", level=1)).to_have_text("Megan Bowen")
    await expect(page.get_by_role("region", name="Licences")).to_have_count(0)
    await expect(page.get_by_text("Disable user")).to_have_count(0)
    await shot(page, "user-detail-helpdesk")
