"""Browser tests: a real Corral server over HTTPS (certificate from Corral's own CA code) on loopback,
driven by Playwright through Debian's Chromium."""

from __future__ import annotations

import asyncio
import os
import shutil
import socket
import threading
import time
from collections.abc import AsyncIterator, Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest
import uvicorn
from playwright.async_api import Browser, BrowserContext, Page, async_playwright

from corral.main import create_app
from corral.pki import certs
from tests.conftest import PASSWORD, make_settings

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


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class LiveServer:
    def __init__(self, url: str, server: uvicorn.Server, thread: threading.Thread) -> None:
        self.url = url
        self._server = server
        self._thread = thread

    def stop(self) -> None:
        self._server.should_exit = True
        self._thread.join(timeout=10)


@pytest.fixture
def live_server(tmp_path: Path, db_url: str) -> Iterator[LiveServer]:
    now = datetime.now(UTC)
    ca_cert, ca_key = certs.build_ca("Corral test CA", now)
    cert, key = certs.issue_server_certificate(ca_cert, ca_key, ["127.0.0.1", "localhost"], now)
    (tmp_path / "server.crt").write_bytes(certs.cert_pem(cert) + certs.cert_pem(ca_cert))
    (tmp_path / "server.key").write_bytes(certs.key_pem(key))
    port = _free_port()
    url = f"https://127.0.0.1:{port}"
    settings = make_settings(tmp_path, db_url, base_url=url, tls=True)
    config = uvicorn.Config(
        create_app(settings, database_url=db_url),
        host="127.0.0.1",
        port=port,
        log_config=None,
        ssl_certfile=str(tmp_path / "server.crt"),
        ssl_keyfile=str(tmp_path / "server.key"),
        lifespan="on",
    )
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 20
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            raise RuntimeError("the live server did not start")
        time.sleep(0.05)
    live = LiveServer(url, server, thread)
    yield live
    live.stop()


@pytest.fixture(scope="session")
def chromium_path() -> str:
    path = shutil.which(CHROMIUM) or (CHROMIUM if os.path.exists(CHROMIUM) else None)
    if path is None:
        pytest.fail(f"Chromium not found at {CHROMIUM}: install Debian's chromium package (./run test does)")
    return path


@pytest.fixture
async def browser(chromium_path: str) -> AsyncIterator[Browser]:
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
