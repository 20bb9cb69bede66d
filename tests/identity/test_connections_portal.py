"""Tenant administration → Identity connections in the admin center."""

from __future__ import annotations

import re

import httpx

from corral.rbac.roles import GLOBAL_ADMINISTRATOR, HELP_DESK_OPERATOR
from tests.conftest import Factory, portal_csrf
from tests.identity.conftest import CLIENT_ID, CLIENT_SECRET, REDIRECT_URI
from tests.peers.idp_server import Idp


async def test_create_edit_and_delete_a_connection_in_the_portal(
    client: httpx.AsyncClient, factory: Factory, idp: Idp
) -> None:
    admin = await factory.admin(GLOBAL_ADMINISTRATOR.name, token=False)
    csrf = await portal_csrf(client, admin.email)
    listing = await client.get("/portal/identity-connections")
    assert listing.status_code == 200
    assert REDIRECT_URI in listing.text
    form = {
        "csrf_token": csrf,
        "name": "Contoso IdP",
        "issuer": idp.issuer,
        "client_id": CLIENT_ID,
        "client_secret": CLIENT_SECRET,
        "scopes": "openid profile email groups",
        "groups_claim": "groups",
        "admin_sign_in": "on",
        "enabled": "on",
    }
    bad = await client.post("/portal/identity-connections", data={**form, "issuer": "http://127.0.0.1:9"})
    assert bad.status_code == 422
    assert "cannot be used" in bad.text
    created = await client.post("/portal/identity-connections", data=form)
    assert created.status_code == 303
    detail_url = created.headers["location"]
    connection_id = detail_url.rsplit("/", 1)[1]
    detail = await client.get(detail_url)
    assert CLIENT_SECRET not in detail.text
    assert "Saved (never shown)" in detail.text
    assert f'href="/portal/identity-connections/{connection_id}/scim"' in detail.text
    assert f'href="/portal/sign-in/oidc/{connection_id}"' in detail.text
    assert re.search(r'id="user_sign_in"[^>]*value="on"\s*>', detail.text)  # unchecked: not sent

    kept = await client.post(detail_url, data={**form, "client_secret": "", "name": "Contoso"})
    assert kept.status_code == 303
    assert "Contoso" in (await client.get("/portal/identity-connections")).text

    gone = await client.post(f"{detail_url}/delete", data={"csrf_token": csrf})
    assert gone.status_code == 303
    assert (await client.get(detail_url)).status_code == 404


async def test_help_desk_sees_no_identity_connections(client: httpx.AsyncClient, factory: Factory) -> None:
    helper = await factory.admin(HELP_DESK_OPERATOR.name, token=False)
    await portal_csrf(client, helper.email)
    assert (await client.get("/portal/identity-connections")).status_code == 403
    assert "/portal/identity-connections" not in (await client.get("/portal")).text
