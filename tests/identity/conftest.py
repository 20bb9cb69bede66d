"""The real identity provider for the OIDC tests, and a browserless user agent that signs in at it."""

from __future__ import annotations

import re
import uuid
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlsplit

import httpx
import pytest

from corral.config import Settings
from corral.identity import oidc
from tests.conftest import BASE_URL, make_settings
from tests.peers.idp_server import Idp, run_idp

CLIENT_ID, CLIENT_SECRET = "corral", "corral-test-client-secret"
OTHER_ID, OTHER_SECRET = "other-app", "other-app-secret"
REDIRECT_URI = f"{BASE_URL}/auth/oidc/callback"


@pytest.fixture(scope="session")
def idp(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Idp]:
    clients = [
        {"client_id": CLIENT_ID, "client_secret": CLIENT_SECRET, "redirect_uris": [REDIRECT_URI]},
        {"client_id": OTHER_ID, "client_secret": OTHER_SECRET, "redirect_uris": [REDIRECT_URI]},
    ]
    with run_idp(tmp_path_factory.mktemp("idp"), clients) as provider:
        yield provider


@pytest.fixture
def settings(tmp_path: Path, db_url: str) -> Settings:
    """The test provider listens on loopback, which Corral refuses to fetch from unless allowed."""
    return make_settings(tmp_path, db_url, oidc_allow_private_issuers=True)


@pytest.fixture(autouse=True)
def _fresh_provider_caches() -> None:
    oidc.clear_caches()


def account() -> str:
    return f"u{uuid.uuid4().hex[:10]}"


def _form(html: str) -> tuple[str, dict[str, str]]:
    action = re.search(r'<form[^>]*action="([^"]+)"', html)
    assert action, html[:2000]
    fields = dict(re.findall(r'<input[^>]*type="hidden"[^>]*name="([^"]+)"[^>]*value="([^"]*)"', html))
    return action.group(1), fields


async def sign_in_at_provider(auth_url: str, login: str, *, stop_at: str = REDIRECT_URI) -> str:
    """Play the person at the provider's development login and consent forms; returns the URL the provider
    redirects back to (the callback with code, state and iss)."""
    async with httpx.AsyncClient(timeout=10) as browser:
        response = await browser.get(auth_url)
        for _ in range(12):
            if response.status_code in (302, 303):
                location = str(response.url.join(response.headers["location"]))
                if location.startswith(stop_at):
                    return location
                response = await browser.get(location)
                continue
            assert response.status_code == 200, (response.status_code, response.text[:500])
            action, fields = _form(response.text)
            target = str(response.url.join(action))
            if 'name="login"' in response.text:
                data = {"prompt": "login", "login": login, "password": "x", **fields}
            else:
                data = {"prompt": "consent", **fields}
            response = await browser.post(target, data=data)
        raise AssertionError(
            f"the provider never redirected back: {response.status_code} {response.text[:500]}"
        )


def callback_path(url: str) -> str:
    parts = urlsplit(url)
    return f"{parts.path}?{parts.query}"


def session_cookie_set(response: httpx.Response) -> bool:
    return any("corral_session" in v for v in response.headers.get_list("set-cookie"))
