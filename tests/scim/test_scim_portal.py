"""The admin center's SCIM page of an identity connection: the tenant URL, a token shown once, turning off."""

from __future__ import annotations

import re

import httpx
from fastapi import FastAPI
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from corral.rbac.roles import GLOBAL_ADMINISTRATOR
from tests.conftest import Factory, audit_rows, csrf_of, new_client, sign_in
from tests.scim.helpers import make_connection


async def test_scim_page_issues_a_token_shown_once_and_turns_off(
    app: FastAPI, factory: Factory, sessionmaker: async_sessionmaker[AsyncSession]
) -> None:
    conn = await make_connection(sessionmaker, "Contoso Entra ID", token=False)
    glob = await factory.admin(GLOBAL_ADMINISTRATOR.name, token=False)
    page_url = f"/portal/identity-connections/{conn.id}/scim"
    async with new_client(app) as browser:
        assert (await sign_in(browser, glob.email)).status_code == 303
        page = await browser.get(page_url)
        assert page.status_code == 200, page.text
        assert "https://testserver/scim/v2" in page.text and "Generate token" in page.text
        issued = await browser.post(f"{page_url}/token", data={"csrf_token": csrf_of(page.text)})
        assert issued.status_code == 303 and issued.headers["location"] == page_url
        shown = await browser.get(page_url)
        match = re.search(r'id="scim-token"[^>]*>(cscim_[^<]+)<', shown.text)
        assert match, shown.text
        token = match.group(1)
        assert "cscim_" not in (await browser.get(page_url)).text.replace(token[:12], "")  # once only
        scim = await browser.get("/scim/v2/Users", headers={"Authorization": f"Bearer {token}"})
        assert scim.status_code == 200
        off = await browser.post(f"{page_url}/off", data={"csrf_token": csrf_of(shown.text)})
        assert off.status_code == 303
        again = await browser.get("/scim/v2/Users", headers={"Authorization": f"Bearer {token}"})
        assert again.status_code == 401
    activities = [e.activity for e in await audit_rows(sessionmaker, target_id=str(conn.id))]
    assert activities == ["identity_connection.scim_token", "identity_connection.scim_token_revoke"]


async def test_scim_page_of_an_unknown_connection_is_not_found(
    client: httpx.AsyncClient, factory: Factory
) -> None:
    glob = await factory.admin(GLOBAL_ADMINISTRATOR.name)
    response = await client.get(
        "/portal/identity-connections/00000000-0000-4000-8000-000000000000/scim", headers=glob.headers
    )
    assert response.status_code == 404
