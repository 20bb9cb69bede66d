"""Apple devices in a real browser: an enrollment token for iPhones and Macs shows the enrollment profile's
URL and QR code; an iPhone enrolled through Apple MDM (the simulator, against the live server) shows its
Apple rows and only the actions it can take, and is locked from its page; a Mac's Lock asks for a PIN and
is refused on the page without one."""

from __future__ import annotations

import re
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
from playwright.async_api import Locator, Page, expect
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from corral.enrollment.service import qr_svg
from tests.apple.support import enrolled_apple, set_up_push_certificate
from tests.conftest import Admin, Factory
from tests.portal.conftest import LiveServer, browser_sign_in, shot


@pytest.fixture
async def http(live_server: LiveServer) -> AsyncIterator[httpx.AsyncClient]:
    """The API's and the simulated devices' connection to the live server (its throwaway CA)."""
    async with httpx.AsyncClient(base_url=live_server.url, verify=False, timeout=30) as client:  # noqa: S501
        yield client


async def enrolled(
    http: httpx.AsyncClient,
    admin: Admin,
    sessionmaker: async_sessionmaker[AsyncSession],
    live_server: LiveServer,
    kind: str,
) -> tuple[Any, str]:
    """An Apple device enrolled through the live server, its inventory reported; the device and its page."""
    device, device_id = await enrolled_apple(
        http, admin, sessionmaker, live_server.settings, kind=kind, seed=f"browser-{kind}"
    )
    handled = await device.connect_loop(http)
    assert "DeviceInformation" in handled, handled
    return device, f"{live_server.url}/portal/devices/{device_id}"


def value_of(region: Locator, term: str) -> Locator:
    """The value (<dd>) of a row of a properties list (<dl>), by its label (<dt>)."""
    label = region.get_by_role("term").filter(has_text=re.compile(f"^{re.escape(term)}$"))
    return label.locator("xpath=following-sibling::dd[1]")


def action_bar(page: Page) -> Any:
    """The action buttons: each is the <summary> of a disclosure."""
    return page.get_by_role("region", name="Actions").locator("summary")


async def test_a_token_for_iphones_and_macs_shows_the_enrollment_profile_url_and_qr_code(
    page: Page, live_server: LiveServer, factory: Factory, http: httpx.AsyncClient
) -> None:
    base = live_server.url
    admin = await factory.admin("Global administrator")
    await set_up_push_certificate(http, admin)
    await browser_sign_in(page, base, admin.email)
    await page.get_by_role("navigation", name="Main").get_by_role("link", name="Enrollment").click()
    await page.get_by_label("Name", exact=True).fill("Sales iPhones and Macs")
    platforms = page.get_by_role("group", name="Platforms")
    for name, wanted in (("Windows", False), ("Linux", False), ("macOS", True), ("iOS", True)):
        await platforms.get_by_label(name, exact=True).set_checked(wanted)
    await page.get_by_role("button", name="Create enrollment token").click()

    created = page.get_by_role("region", name=re.compile("Sales iPhones and Macs.* created"))
    await expect(created).to_be_visible()
    agent_url = (await created.locator("#enrollment-url").inner_text()).strip()
    token = agent_url.split("token=", 1)[1].split("&", 1)[0]
    apple_url = f"{base}/apple/v1/enroll?token={token}"
    await expect(
        created.get_by_role("heading", name="iPhone, iPad and Mac: enrollment profile")
    ).to_be_visible()
    await expect(created.locator("#apple-enrollment-url")).to_have_text(apple_url)
    qr = created.get_by_role("img", name="QR code of the Apple enrollment profile URL")
    await expect(qr).to_be_visible()
    # No QR decoder here: the image is the SVG Corral makes for exactly that URL, and it renders.
    assert await qr.get_attribute("src") == qr_svg(apple_url)
    assert (await qr.get_attribute("src") or "").startswith("data:image/svg+xml")
    assert await qr.evaluate("img => img.complete && img.naturalWidth > 0")
    await shot(page, "apple-token-created")

    # The URL works: it answers the signed profile.
    profile = await http.get(apple_url)
    assert profile.status_code == 200, profile.text
    assert profile.headers["content-type"] == "application/x-apple-aspen-config"


async def test_an_iphone_shows_its_apple_rows_and_is_locked_from_its_page(
    page: Page,
    live_server: LiveServer,
    factory: Factory,
    sessionmaker: async_sessionmaker[AsyncSession],
    http: httpx.AsyncClient,
) -> None:
    admin = await factory.admin("Global administrator")
    phone, device_url = await enrolled(http, admin, sessionmaker, live_server, "iphone")
    await browser_sign_in(page, live_server.url, admin.email)
    await page.goto(device_url)

    overview = page.get_by_role("region", name="Overview")
    await expect(value_of(overview, "Managed through")).to_have_text(f"Apple MDM UDID {phone.udid}")
    await expect(value_of(overview, "Push")).to_have_text("Reachable")
    await expect(value_of(overview, "Supervised")).to_have_text("No")
    await expect(value_of(overview, "Platform")).to_have_text("iOS")
    await expect(overview.get_by_role("term").filter(has_text="Agent version")).to_have_count(0)
    await expect(value_of(page.get_by_role("region", name="Hardware"), "Manufacturer")).to_have_text("Apple")
    await shot(page, "apple-iphone-device")

    # Only what an unsupervised iPhone takes: no Restart (supervised only), no notification (agents only).
    actions = await action_bar(page).all_inner_texts()
    assert "Lock" in actions, actions
    assert "Restart" not in actions and "Send notification" not in actions, actions
    await action_bar(page).filter(has_text=re.compile(r"^Lock$")).click()
    lock_form = page.locator("form[action$='/actions/lock']")
    await expect(lock_form.get_by_label("Message")).to_be_visible()
    await expect(lock_form.get_by_label("PIN")).to_have_count(0)

    await lock_form.get_by_label("Message").fill("Found? Call IT.")
    await lock_form.get_by_role("button", name="Lock").click()
    await expect(page.get_by_role("status")).to_contain_text("Lock queued")
    lock_row = page.locator("#device-commands").get_by_role("row", name=re.compile("^Lock"))
    await expect(lock_row).to_contain_text("Queued")

    # Woken (no worker here: the test is the push), the iPhone connects, gets DeviceLock and acknowledges.
    assert await phone.connect_loop(http) == ["DeviceLock"]
    assert phone.received[-1]["Command"] == {"RequestType": "DeviceLock", "Message": "Found? Call IT."}
    await page.reload()
    await expect(
        page.locator("#device-commands").get_by_role("row", name=re.compile("^Lock"))
    ).to_contain_text("Succeeded")


async def test_a_macs_lock_asks_for_a_pin_and_is_refused_on_the_page_without_one(
    page: Page,
    live_server: LiveServer,
    factory: Factory,
    sessionmaker: async_sessionmaker[AsyncSession],
    http: httpx.AsyncClient,
) -> None:
    admin = await factory.admin("Global administrator")
    _, device_url = await enrolled(http, admin, sessionmaker, live_server, "mac")
    await browser_sign_in(page, live_server.url, admin.email)
    await page.goto(device_url)
    await expect(page.get_by_role("region", name="Overview")).to_contain_text("Apple MDM")
    actions = await action_bar(page).all_inner_texts()
    assert "Restart" in actions and "Send notification" not in actions, actions
    await action_bar(page).filter(has_text=re.compile(r"^Lock$")).click()
    lock_form = page.locator("form[action$='/actions/lock']")
    await expect(lock_form.get_by_label("PIN")).to_be_visible()
    await expect(lock_form.locator("label", has_text="PIN")).to_have_text("PIN")  # not "(optional)"
    await shot(page, "apple-mac-lock-form")
    await lock_form.get_by_label("Message").fill("Locked by IT")
    async with page.expect_response(lambda r: r.url.endswith("/actions/lock")) as answered:
        await lock_form.get_by_role("button", name="Lock").click()

    # Refused on the device's page (not an error page): the reason, the panel open with what was typed.
    assert (await answered.value).status == 422
    await expect(page.get_by_role("alert")).to_contain_text("needs a six-digit PIN")
    await expect(page.get_by_role("heading", level=1)).to_contain_text("MacBook Pro")
    lock_form = page.locator("form[action$='/actions/lock']")
    await expect(lock_form.get_by_label("Message")).to_have_value("Locked by IT")
    await expect(lock_form.get_by_label("PIN")).to_be_visible()
    commands = page.get_by_role("region", name="Remote actions")
    await expect(commands).to_contain_text("No remote actions have been sent")
    await shot(page, "apple-mac-lock-refused")
