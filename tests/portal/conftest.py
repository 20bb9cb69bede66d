"""Browser tests: a real Corral server over HTTPS (certificate from Corral's own CA code) on loopback,
driven by Playwright through Debian's Chromium."""

from __future__ import annotations

import asyncio
import os
import shutil
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
from playwright.async_api import Browser, BrowserContext, Page, async_playwright

from tests.conftest import PASSWORD
from tests.live import LiveServer, start_live_server, throwaway_ca_tls

CHROMIUM = os.environ.get("CORRAL_TEST_CHROMIUM", "/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-dev-shm-usage",
]
SHOTS = Path(__file__).resolve().parents[2] / "test-results" / "screenshots"

pytestmark = pytest.mark.browser


@pytest.fixture
def live_server(tmp_path: Path, db_url: str) -> Iterator[LiveServer]:
    live = start_live_server(tmp_path, db_url, tls=throwaway_ca_tls(tmp_path))
    yield live
    live.stop()


@pytest.fixture
def sso_live_server(tmp_path: Path, db_url: str) -> Iterator[LiveServer]:
    """The same, allowed to fetch from the test identity provider, which listens on loopback."""
    live = start_live_server(
        tmp_path, db_url, tls=throwaway_ca_tls(tmp_path), oidc_allow_private_issuers=True
    )
    yield live
    live.stop()


@pytest.fixture(scope="session")
def chromium_path() -> str:
    path = shutil.which(CHROMIUM) or (CHROMIUM if os.path.exists(CHROMIUM) else None)
    if path is None:
        pytest.fail(f"Chromium not found at {CHROMIUM}: install Debian's chromium package (./run test does)")
    return path


@pytest.fixture(scope="session")
async def browser(chromium_path: str) -> AsyncIterator[Browser]:
    """One Chromium per worker (launching it takes seconds); every test still gets a fresh context: its own
    cookies, storage and cache, as a new browser profile would."""
    async with async_playwright() as playwright:
        instance = await playwright.chromium.launch(
            executable_path=chromium_path, headless=True, args=CHROMIUM_ARGS
        )
        yield instance
        await instance.close()


@pytest.fixture
async def context(browser: Browser) -> AsyncIterator[BrowserContext]:
    ctx = await browser.new_context(ignore_https_errors=True, viewport={"width": 1366, "height": 860})
    ctx.set_default_timeout(10_000)
    yield ctx
    await ctx.close()


@pytest.fixture
async def page(context: BrowserContext) -> Page:
    return await context.new_page()


async def shot(page: Page, name: str) -> None:
    SHOTS.mkdir(parents=True, exist_ok=True)
    await page.screenshot(path=str(SHOTS / f"{name}.png"), full_page=True)


async def browser_sign_in(page: Page, base: str, email: str, password: str = PASSWORD) -> None:
    await page.goto(f"{base}/portal/sign-in")
    await page.get_by_label("Email").fill(email)
    await page.get_by_label("Password").fill(password)
    await page.get_by_role("button", name="Sign in").click()
    await page.wait_for_load_state("load")


__all__ = ["LiveServer", "asyncio", "browser_sign_in", "shot"]
