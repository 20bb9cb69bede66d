"""API tokens: shown once, stored as digests, expiring, revocable, never more powerful than their owner."""

from __future__ import annotations

import hashlib
import uuid

import httpx
import pytest
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from corral.rbac.roles import GLOBAL_ADMINISTRATOR, HELP_DESK_OPERATOR, SERVICE_ADMINISTRATOR
from tests.conftest import Factory, audit_rows, bearer, issue_token, portal_csrf


async def _token_id(sessionmaker: async_sessionmaker[AsyncSession], token: str) -> uuid.UUID:
    async with sessionmaker() as session:
        found = await session.scalar(
            text("SELECT id FROM api_tokens WHERE token_hash = :h"),
            {"h": hashlib.sha256(token.encode()).digest()},
        )
    assert found is not None
    return uuid.UUID(str(found))


async def test_token_from_factory_authenticates(client: httpx.AsyncClient, factory: Factory) -> None:
    admin = await factory.admin(HELP_DESK_OPERATOR.name)
    response = await client.get("/api/v1/me", headers=admin.headers)
    assert response.status_code == 200
    assert response.json()["user_id"] == str(admin.id)
    assert response.json()["via_token"] is True


async def test_revoked_token_is_refused(
    client: httpx.AsyncClient, factory: Factory, sessionmaker: async_sessionmaker[AsyncSession]
) -> None:
    admin = await factory.admin(GLOBAL_ADMINISTRATOR.name)
    spare = await issue_token(sessionmaker, admin.id, name="spare")
    spare_id = await _token_id(sessionmaker, spare)
    revoked = await client.delete(f"/api/v1/api-tokens/{spare_id}", headers=admin.headers)
    assert revoked.status_code == 200, revoked.text
    assert revoked.json()["revoked_at"] is not None
    response = await client.get("/api/v1/me", headers=bearer(spare))
    assert response.status_code == 401
    assert response.headers["www-authenticate"] == "Bearer"
    again = await client.delete(f"/api/v1/api-tokens/{spare_id}", headers=admin.headers)
    assert again.status_code == 409


async def test_token_can_revoke_itself(
    client: httpx.AsyncClient, factory: Factory, sessionmaker: async_sessionmaker[AsyncSession]
) -> None:
    admin = await factory.admin(HELP_DESK_OPERATOR.name)
    assert admin.token
    own_id = await _token_id(sessionmaker, admin.token)
    assert (await client.delete(f"/api/v1/api-tokens/{own_id}", headers=admin.headers)).status_code == 200
    assert (await client.get("/api/v1/me", headers=admin.headers)).status_code == 401


async def test_someone_elses_token_cannot_be_revoked_without_api_tokens_manage(
    client: httpx.AsyncClient, factory: Factory, sessionmaker: async_sessionmaker[AsyncSession]
) -> None:
    owner = await factory.admin(GLOBAL_ADMINISTRATOR.name)
    other = await factory.admin(HELP_DESK_OPERATOR.name)
    assert owner.token
    token_id = await _token_id(sessionmaker, owner.token)
    response = await client.delete(f"/api/v1/api-tokens/{token_id}", headers=other.headers)
    assert response.status_code == 404  # not even its existence is disclosed
    assert (await client.get("/api/v1/me", headers=owner.headers)).status_code == 200


async def test_token_manager_can_revoke_anyones_token(
    client: httpx.AsyncClient, factory: Factory, sessionmaker: async_sessionmaker[AsyncSession]
) -> None:
    manager = await factory.admin(SERVICE_ADMINISTRATOR.name)
    other = await factory.admin(HELP_DESK_OPERATOR.name)
    assert other.token
    token_id = await _token_id(sessionmaker, other.token)
    assert (await client.delete(f"/api/v1/api-tokens/{token_id}", headers=manager.headers)).status_code == 200
    assert (await client.get("/api/v1/me", headers=other.headers)).status_code == 401


async def test_expired_token_is_refused(
    client: httpx.AsyncClient, factory: Factory, sessionmaker: async_sessionmaker[AsyncSession]
) -> None:
    admin = await factory.admin(GLOBAL_ADMINISTRATOR.name)
    assert (await client.get("/api/v1/me", headers=admin.headers)).status_code == 200
    async with sessionmaker() as session:
        await session.execute(
            text("UPDATE api_tokens SET expires_at = now() - interval '1 second' WHERE user_id = :u"),
            {"u": admin.id},
        )
        await session.commit()
    response = await client.get("/api/v1/me", headers=admin.headers)
    assert response.status_code == 401
    assert "expired" in response.json()["detail"]


@pytest.mark.parametrize(
    "authorization",
    [
        "Bearer",
        "Bearer ",
        "Bearer    ",
        "Basic YWRtaW46cGFzc3dvcmQ=",
        "Token corral_pat_abc",
        "corral_pat_abc",
        "Bearer corral_pat_not-a-real-token",
        "Bearer " + "x" * 5000,
        "Bearer \u00e9t\u00e9",
    ],
    ids=["bare", "empty", "blank", "basic", "token-scheme", "no-scheme", "unknown", "huge", "latin1"],
)
async def test_malformed_or_unknown_authorization_is_refused(
    client: httpx.AsyncClient, authorization: str
) -> None:
    response = await client.get("/api/v1/me", headers={b"Authorization": authorization.encode("latin-1")})
    assert response.status_code == 401
    assert response.headers["content-type"].startswith("application/problem+json")


async def test_bearer_token_cannot_create_tokens(
    client: httpx.AsyncClient, factory: Factory, sessionmaker: async_sessionmaker[AsyncSession]
) -> None:
    admin = await factory.admin(GLOBAL_ADMINISTRATOR.name)
    response = await client.post("/api/v1/api-tokens", json={"name": "child"}, headers=admin.headers)
    assert response.status_code == 403
    async with sessionmaker() as session:
        count = await session.scalar(
            text("SELECT count(*) FROM api_tokens WHERE user_id = :u"), {"u": admin.id}
        )
    assert count == 1


async def test_portal_session_creates_a_token_shown_once_and_stored_as_a_digest(
    client: httpx.AsyncClient, factory: Factory, sessionmaker: async_sessionmaker[AsyncSession]
) -> None:
    admin = await factory.admin(GLOBAL_ADMINISTRATOR.name)
    csrf = await portal_csrf(client, admin.email)
    created = await client.post(
        "/api/v1/api-tokens", json={"name": "ci", "expires_in_days": 7}, headers={"X-CSRF-Token": csrf}
    )
    assert created.status_code == 201, created.text
    token = created.json()["token"]
    token_id = created.json()["api_token"]["id"]
    assert token.startswith("corral_pat_") and len(token) > 40
    assert token.startswith(created.json()["api_token"]["prefix"])

    async with sessionmaker() as session:
        row = (
            await session.execute(
                text(
                    "SELECT token_hash, prefix, row_to_json(t)::text AS everything "
                    "FROM api_tokens t WHERE id = :i"
                ),
                {"i": token_id},
            )
        ).one()
    assert bytes(row.token_hash) == hashlib.sha256(token.encode()).digest()
    assert bytes(row.token_hash) != token.encode()
    secret_part = token[len(row.prefix) :]
    assert len(secret_part) > 30 and secret_part not in row.everything

    client.cookies.clear()
    for path in (
        "/api/v1/api-tokens",
        "/api/v1/api-tokens/all",
        "/api/v1/audit-events?limit=500",
        "/api/v1/audit-events/export.csv",
        "/api/v1/me",
        f"/api/v1/users/{admin.id}",
    ):
        response = await client.get(path, headers=bearer(token))
        assert response.status_code == 200, f"{path}: {response.text}"
        assert secret_part not in response.text, f"{path} discloses the token"
    for event in await audit_rows(sessionmaker):
        assert secret_part not in str(event.modified_properties) + str(event.detail) + str(event.target_name)


async def test_portal_session_without_csrf_header_cannot_create_a_token(
    client: httpx.AsyncClient, factory: Factory, sessionmaker: async_sessionmaker[AsyncSession]
) -> None:
    admin = await factory.admin(GLOBAL_ADMINISTRATOR.name, token=False)
    await portal_csrf(client, admin.email)
    for headers in ({}, {"X-CSRF-Token": "forged"}):
        response = await client.post("/api/v1/api-tokens", json={"name": "ci"}, headers=headers)
        assert response.status_code == 403, response.text
    async with sessionmaker() as session:
        assert await session.scalar(text("SELECT count(*) FROM api_tokens")) == 0


async def test_narrowed_token_has_only_the_narrowed_permissions(
    client: httpx.AsyncClient, factory: Factory, sessionmaker: async_sessionmaker[AsyncSession]
) -> None:
    admin = await factory.admin(GLOBAL_ADMINISTRATOR.name)
    narrowed = await issue_token(sessionmaker, admin.id, permissions=["audit:read", "users:read"])
    me = await client.get("/api/v1/me", headers=bearer(narrowed))
    assert set(me.json()["permissions"]) == {"audit:read", "users:read"}
    assert (await client.get("/api/v1/audit-events", headers=bearer(narrowed))).status_code == 200
    assert (await client.get("/api/v1/users", headers=bearer(narrowed))).status_code == 200
    assert (await client.get("/api/v1/roles", headers=bearer(narrowed))).status_code == 403
    assert (await client.get("/api/v1/settings", headers=bearer(narrowed))).status_code == 403
    refused = await client.post("/api/v1/admins", json={"email": "x@example.com"}, headers=bearer(narrowed))
    assert refused.status_code == 403
    # The owner's own (unnarrowed) token still holds everything.
    assert (await client.get("/api/v1/roles", headers=admin.headers)).status_code == 200


async def test_narrowed_token_created_through_the_portal_session(
    client: httpx.AsyncClient, factory: Factory
) -> None:
    admin = await factory.admin(SERVICE_ADMINISTRATOR.name, token=False)
    csrf = await portal_csrf(client, admin.email)
    created = await client.post(
        "/api/v1/api-tokens",
        json={"name": "reader", "permissions": ["devices:read"]},
        headers={"X-CSRF-Token": csrf},
    )
    assert created.status_code == 201, created.text
    assert created.json()["api_token"]["permissions"] == ["devices:read"]
    token = created.json()["token"]
    client.cookies.clear()
    me = await client.get("/api/v1/me", headers=bearer(token))
    assert list(me.json()["permissions"]) == ["devices:read"]
    assert (await client.get("/api/v1/users", headers=bearer(token))).status_code == 403


async def test_token_cannot_hold_permissions_its_owner_lacks(
    client: httpx.AsyncClient, factory: Factory, sessionmaker: async_sessionmaker[AsyncSession]
) -> None:
    admin = await factory.admin(HELP_DESK_OPERATOR.name, token=False)
    csrf = await portal_csrf(client, admin.email)
    response = await client.post(
        "/api/v1/api-tokens",
        json={"name": "greedy", "permissions": ["audit:read", "settings:write"]},
        headers={"X-CSRF-Token": csrf},
    )
    assert response.status_code == 422
    assert "settings:write" in response.json()["detail"]
    async with sessionmaker() as session:
        assert await session.scalar(text("SELECT count(*) FROM api_tokens")) == 0


async def test_token_with_unknown_or_empty_permissions_is_refused(
    client: httpx.AsyncClient, factory: Factory
) -> None:
    admin = await factory.admin(GLOBAL_ADMINISTRATOR.name, token=False)
    csrf = await portal_csrf(client, admin.email)
    for permissions in (["devices:explode"], []):
        response = await client.post(
            "/api/v1/api-tokens",
            json={"name": "odd", "permissions": permissions},
            headers={"X-CSRF-Token": csrf},
        )
        assert response.status_code == 422, response.text


async def test_removing_the_owners_role_removes_the_tokens_power_at_once(
    client: httpx.AsyncClient, factory: Factory
) -> None:
    glob = await factory.admin(GLOBAL_ADMINISTRATOR.name)
    helpdesk = await factory.admin(HELP_DESK_OPERATOR.name)
    assert (await client.get("/api/v1/audit-events", headers=helpdesk.headers)).status_code == 200
    assignments = (await client.get("/api/v1/role-assignments", headers=glob.headers)).json()
    (theirs,) = [a for a in assignments if any(m["id"] == str(helpdesk.id) for m in a["members"])]
    deleted = await client.delete(f"/api/v1/role-assignments/{theirs['id']}", headers=glob.headers)
    assert deleted.status_code == 204
    assert (await client.get("/api/v1/audit-events", headers=helpdesk.headers)).status_code == 403
    assert (await client.get("/api/v1/me", headers=helpdesk.headers)).json()["permissions"] == {}


async def test_narrowed_token_loses_what_the_owner_loses(
    client: httpx.AsyncClient, factory: Factory, sessionmaker: async_sessionmaker[AsyncSession]
) -> None:
    glob = await factory.admin(GLOBAL_ADMINISTRATOR.name)
    helpdesk = await factory.admin(HELP_DESK_OPERATOR.name, token=False)
    narrowed = await issue_token(sessionmaker, helpdesk.id, permissions=["audit:read"])
    assert (await client.get("/api/v1/audit-events", headers=bearer(narrowed))).status_code == 200
    assignments = (await client.get("/api/v1/role-assignments", headers=glob.headers)).json()
    (theirs,) = [a for a in assignments if any(m["id"] == str(helpdesk.id) for m in a["members"])]
    assert (
        await client.delete(f"/api/v1/role-assignments/{theirs['id']}", headers=glob.headers)
    ).status_code == 204
    assert (await client.get("/api/v1/audit-events", headers=bearer(narrowed))).status_code == 403


async def test_disabled_owners_token_is_refused(client: httpx.AsyncClient, factory: Factory) -> None:
    glob = await factory.admin(GLOBAL_ADMINISTRATOR.name)
    helpdesk = await factory.admin(HELP_DESK_OPERATOR.name)
    disabled = await client.patch(
        f"/api/v1/users/{helpdesk.id}", json={"enabled": False}, headers=glob.headers
    )
    assert disabled.status_code == 200, disabled.text
    assert (await client.get("/api/v1/me", headers=helpdesk.headers)).status_code == 401
    enabled = await client.patch(f"/api/v1/users/{helpdesk.id}", json={"enabled": True}, headers=glob.headers)
    assert enabled.status_code == 200
    assert (await client.get("/api/v1/me", headers=helpdesk.headers)).status_code == 200


async def test_token_creation_and_revocation_are_audited(
    client: httpx.AsyncClient, factory: Factory, sessionmaker: async_sessionmaker[AsyncSession]
) -> None:
    admin = await factory.admin(GLOBAL_ADMINISTRATOR.name, token=False)
    csrf = await portal_csrf(client, admin.email)
    created = await client.post(
        "/api/v1/api-tokens",
        json={"name": "deploy", "permissions": ["audit:read"]},
        headers={"X-CSRF-Token": csrf},
    )
    assert created.status_code == 201, created.text
    token_id = created.json()["api_token"]["id"]
    revoked = await client.delete(f"/api/v1/api-tokens/{token_id}", headers={"X-CSRF-Token": csrf})
    assert revoked.status_code == 200, revoked.text

    create_event, revoke_event = await audit_rows(sessionmaker, target_id=token_id)
    assert create_event.activity == "api_token.create"
    assert create_event.actor_type == "user" and create_event.actor_id == admin.id
    assert create_event.actor_name == admin.email
    assert create_event.target_name == f"{admin.email}: deploy"
    created_props = {p["name"]: p for p in create_event.modified_properties}
    assert created_props["name"]["new"] == "deploy"
    assert created_props["permissions"]["new"] == ["audit:read"]
    assert revoke_event.activity == "api_token.revoke"
    assert revoke_event.actor_id == admin.id and revoke_event.result == "success"
    assert revoke_event.modified_properties[0]["name"] == "revoked_at"
    assert revoke_event.ip_address == "203.0.113.7"


async def test_token_listing_shows_metadata_but_no_secret(
    client: httpx.AsyncClient, factory: Factory
) -> None:
    admin = await factory.admin(GLOBAL_ADMINISTRATOR.name)
    assert admin.token
    (listed,) = (await client.get("/api/v1/api-tokens", headers=admin.headers)).json()
    assert set(listed) == {
        "id",
        "user_id",
        "name",
        "prefix",
        "permissions",
        "created_at",
        "expires_at",
        "revoked_at",
        "last_used_at",
    }
    assert listed["last_used_at"] is not None
    assert len(listed["prefix"]) < len(admin.token) - 30
