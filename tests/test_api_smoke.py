from __future__ import annotations

import httpx

from tests.conftest import Factory


async def test_anonymous_api_request_is_refused_with_problem_details(client: httpx.AsyncClient) -> None:
    response = await client.get("/api/v1/me")
    assert response.status_code == 401
    assert response.headers["content-type"].startswith("application/problem+json")
    assert response.headers["www-authenticate"] == "Bearer"
    assert response.json()["title"] == "Not authenticated"


async def test_global_admin_token_sees_itself(client: httpx.AsyncClient, factory: Factory) -> None:
    admin = await factory.admin("Global administrator")
    response = await client.get("/api/v1/me", headers=admin.headers)
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["email"] == admin.email
    assert body["via_token"] is True
    assert body["permissions"]["licences:write"]["all"] is True
