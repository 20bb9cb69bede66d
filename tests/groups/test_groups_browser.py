"""The rule editor in a real browser (Chromium over HTTPS, the page's Content-Security-Policy in force): the
preview follows the rule as it is typed, a mistake is pointed at with a caret, "Check a device" explains a
match, and the saved group lists its members; screenshots in test-results/screenshots/."""

from __future__ import annotations

import re

from playwright.async_api import Page, expect
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from tests.conftest import Factory
from tests.groups.helpers import insert_devices
from tests.portal.conftest import (  # noqa: F401 - pytest fixtures
    SHOTS,
    LiveServer,
    browser,
    browser_sign_in,
    chromium_path,
    context,
    live_server,
    page,
    shot,
)


async def top_shot(page: Page, name: str) -> None:  # noqa: F811
    await page.evaluate("window.scrollTo(0, 0)")  # the sticky top bar belongs at the top of a full-page shot
    await shot(page, name)


async def test_rule_editor_previews_live_points_at_mistakes_and_explains_a_device(
    page: Page,  # noqa: F811
    live_server: LiveServer,  # noqa: F811
    factory: Factory,
    sessionmaker: async_sessionmaker[AsyncSession],
) -> None:
    base = live_server.url
    admin = await factory.admin("Global administrator", token=False)
    await insert_devices(
        sessionmaker,
        [
            {"name": f"berlin-win-{i:02}", "platform": "windows", "os_version": f"10.0.2{i % 3}631"}
            for i in range(14)
        ]
        + [{"name": "berlin-mac-01", "platform": "macos", "os_version": "14.5"}]
        + [
            {
                "name": "paris-win-01",
                "platform": "windows",
                "os_version": "10.0.19045",
                "ownership": "personal",
            }
        ],
    )
    errors: list[str] = []
    page.on(
        "console",
        lambda message: (
            errors.append(message.text)
            if message.type == "error" and "status of 422" not in message.text  # the rule errors themselves
            else None
        ),
    )

    await browser_sign_in(page, base, admin.email)
    nav = page.get_by_role("navigation", name="Main")
    await nav.get_by_role("link", name="All groups").click()
    await expect(page.get_by_role("heading", level=1)).to_have_text("Groups")
    await page.get_by_role("link", name="New dynamic group").click()
    await expect(page.get_by_role("heading", level=1)).to_have_text("New dynamic group")
    # With script, the no-script "Preview members" button steps aside.
    await expect(page.get_by_role("button", name="Preview members")).to_be_hidden()

    await page.get_by_label("Name", exact=True).fill("Corporate Windows 11")
    rule = page.get_by_label("Rule", exact=True)
    preview = page.locator("#rule-preview")
    await rule.fill('device.deviceOSType -eq "Windows"')
    await expect(preview).to_contain_text("15 devices match now")
    await expect(preview).to_contain_text("berlin-win-00")

    # A typo: the error names the property and a caret points at it, as it is typed.
    await rule.fill('device.deviceOSType -eq "Windows" -and device.deviceOwnrship -eq "Company"')
    await expect(preview).to_contain_text(
        "Unknown property device.deviceOwnrship at column 40; did you mean deviceOwnership?"
    )
    await expect(preview.locator("pre.rule-excerpt")).to_contain_text(" " * 39 + "^" * 21)
    await expect(rule).to_have_attribute("aria-invalid", "true")
    await top_shot(page, "group-rule-editor-error")

    await rule.fill(
        'device.deviceOSType -eq "Windows" -and device.deviceOwnership -eq "Company"\n'
        '-and device.deviceOSVersion -startsWith "10.0.2"'
    )
    await expect(preview).to_contain_text("14 devices match now")
    await expect(rule).not_to_have_attribute("aria-invalid", "true")

    # "Does this device match, and why?"
    await page.get_by_label("Device to check").fill("paris-win-01")
    await page.get_by_role("button", name="Check").click()
    explain = page.locator("#rule-explain")
    await expect(explain).to_contain_text("paris-win-01")
    await expect(explain).to_contain_text("does not match the rule")
    await expect(explain).to_contain_text('device.deviceOwnership -eq "Company"')
    await expect(explain).to_contain_text("device.deviceOwnership is Personal")
    await top_shot(page, "group-rule-editor-preview")

    await page.get_by_role("button", name="Create group").click()
    await expect(page.get_by_role("heading", level=1)).to_have_text("Corporate Windows 11")
    await expect(page.get_by_role("status")).to_contain_text("Its rule selects 14 device(s).")
    members = page.get_by_role("region", name=re.compile("Members"))
    await expect(members.get_by_role("row", name=re.compile("berlin-win-00"))).to_be_visible()

    # The saved group's own "Check a device" box, enhanced by the same script.
    await page.get_by_label("Device name, serial number or ID").fill("berlin-mac-01")
    await page.get_by_role("button", name="Check").click()
    await expect(page.locator("#rule-explain")).to_contain_text("does not match the rule")
    await top_shot(page, "group-detail")

    # An assigned group holding the dynamic one and a device added by name.
    await nav.get_by_role("link", name="All groups").click()
    await page.get_by_role("link", name="New assigned group").click()
    await page.get_by_label("Name", exact=True).fill("Berlin office")
    await page.get_by_role("button", name="Create group").click()
    await page.get_by_label("Add").select_option("device")
    await page.get_by_label("Name (sign-in name").fill("berlin-mac-01")
    await page.get_by_role("button", name="Add member").click()
    await expect(page.get_by_role("status")).to_contain_text("berlin-mac-01 added.")
    await page.get_by_label("Add").select_option("group")
    await page.get_by_label("Name (sign-in name").fill("Corporate Windows 11")
    await page.get_by_role("button", name="Add member").click()
    await page.get_by_role("link", name="All, through nested groups").click()
    await expect(page.get_by_role("heading", name=re.compile("Members"))).to_contain_text("(15)")
    await top_shot(page, "group-assigned-all")
    await page.get_by_role("link", name="Direct", exact=True).click()
    await expect(page.get_by_role("heading", name=re.compile("Members"))).to_contain_text("(2)")
    await page.get_by_role("row", name=re.compile("berlin-mac-01")).locator("summary").click()
    await top_shot(page, "group-assigned")

    # The list, and the device's own page naming its groups.
    await nav.get_by_role("link", name="All groups").click()
    row = page.get_by_role("row", name=re.compile("Corporate Windows 11"))
    await expect(row).to_contain_text("Dynamic devices")
    await expect(row).to_contain_text("14")
    await expect(page.get_by_role("row", name=re.compile("Berlin office"))).to_contain_text("Assigned")
    await top_shot(page, "group-list")
    await row.get_by_role("link", name="Corporate Windows 11").click()
    await page.get_by_role("link", name="berlin-win-00").click()
    groups = page.get_by_role("region", name=re.compile("^Groups"))
    await expect(groups.get_by_role("row", name=re.compile("^Corporate Windows 11"))).to_contain_text(
        "Direct member"
    )
    await groups.scroll_into_view_if_needed()
    await page.screenshot(path=str(SHOTS / "device-groups.png"))
    assert not errors, errors
