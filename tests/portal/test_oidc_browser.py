"""Single sign-on in a real browser: the sign-in page's "Sign in with <connection>" button, the provider's own
login and consent pages (npm oidc-provider), and back into the admin center with the role the person's
group at the provider gives them."""

from __future__ import annotations

from pathlib import Path

import httpx
from playwright.async_api import Page, expect
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from corral.rbac.roles import HELP_DESK_OPERATOR
from tests.conftest import Factory
from tests.identity.test_oidc import role_for_group
from tests.peers.idp_server import run_idp
from tests.portal.conftest import LiveServer, shot


async def test_sign_in_through_the_identity_provider(
    page: Page,
    sso_live_server: LiveServer,
    factory: Factory,
    sessionmaker: async_sessionmaker[AsyncSession],
    tmp_path: Path,
) -> None:
    base = sso_live_server.url
    client = {
        "client_id": "corral-browser",
        "client_secret": "corral-browser-secret",
        "redirect_uris": [f"{base}/auth/oidc/callback"],
    }
    admin = await factory.admin("Global administrator")
    with run_idp(tmp_path / "idp", [client]) as idp:
        idp.set_user(
            "adele", email="adele.vance@contoso.example", name="Adele Vance", groups=["corral-helpdesk"]
        )
        async with httpx.AsyncClient(base_url=base, verify=False, timeout=10) as http:  # noqa: S501 - test CA
            created = await http.post(
                "/api/v1/identity-connections",
                json={
                    "name": "Contoso ID",
                    "issuer": idp.issuer,
                    "client_id": client["client_id"],
                    "client_secret": client["client_secret"],
                },
                headers={"Authorization": f"Bearer {admin.token}"},
            )
            assert created.status_code == 201, created.text
        await role_for_group(sessionmaker, created.json()["id"], "corral-helpdesk", HELP_DESK_OPERATOR.id)

        await page.goto(f"{base}/portal/sign-in")
        await shot(page, "oidc-sign-in-page")
        await page.get_by_role("link", name="Sign in with Contoso ID").click()
        await page.locator("input[name=login]").fill("adele")
        await page.locator("input[name=password]").fill("anything")
        await shot(page, "oidc-provider-login")
        await page.locator("button[type=submit]").click()
        await expect(page.get_by_role("button", name="Continue")).to_be_visible()
        await shot(page, "oidc-provider-consent")
        await page.get_by_role("button", name="Continue").click()
        await page.wait_for_url(f"{base}/portal")
        await expect(page.get_by_role("heading", level=1)).to_be_visible()
        await expect(page.get_by_text("adele.vance@contoso.example").first).to_be_visible()
        await shot(page, "oidc-signed-in")
