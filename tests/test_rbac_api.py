"""Role-based access through the API: the role-by-route matrix, custom roles, and nobody granting more than
they hold (Fleet CVE-2022-24841: a team admin added themselves to other teams)."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from corral.auth.dependencies import Require
from corral.kit.routes import RouteInfo
from corral.rbac.permissions import P
from corral.rbac.roles import (
    APPLICATION_MANAGER,
    BUILTIN_ROLES,
    GLOBAL_ADMINISTRATOR,
    HELP_DESK_OPERATOR,
    READ_ONLY_OPERATOR,
    SERVICE_ADMINISTRATOR,
    BuiltinRole,
)
from tests.conftest import (
    PASSWORD,
    Admin,
    Factory,
    audit_rows,
    count_rows,
    issue_token,
    make_settings,
    new_client,
    running_app,
)
from tests.test_route_guards import ROUTES, _concrete_path, _guard_of, _guards

ALL_WRITE_TABLES = ("users", "role_definitions", "role_assignments", "scope_tags", "api_tokens")


# ------------------------------------------------------------------------------------------- helpers
async def create_tag(client: httpx.AsyncClient, admin: Admin, name: str) -> str:
    response = await client.post("/api/v1/scope-tags", json={"name": name}, headers=admin.headers)
    assert response.status_code == 201, response.text
    return str(response.json()["id"])


async def create_role(
    client: httpx.AsyncClient, admin: Admin, name: str, permissions: list[str]
) -> dict[str, Any]:
    response = await client.post(
        "/api/v1/roles", json={"name": name, "permissions": permissions}, headers=admin.headers
    )
    assert response.status_code == 201, response.text
    body: dict[str, Any] = response.json()
    return body


async def assign(
    client: httpx.AsyncClient,
    admin: Admin,
    role_id: uuid.UUID | str,
    members: list[uuid.UUID],
    *,
    tags: list[str] | None = None,
    name: str | None = None,
) -> httpx.Response:
    payload: dict[str, Any] = {
        "name": name or f"assignment {uuid.uuid4().hex[:6]}",
        "role_id": str(role_id),
        "member_ids": [str(m) for m in members],
        "scope_all": tags is None,
    }
    if tags is not None:
        payload["scope_tag_ids"] = tags
    return await client.post("/api/v1/role-assignments", json=payload, headers=admin.headers)


async def assignments_of(client: httpx.AsyncClient, admin: Admin, user_id: uuid.UUID) -> list[dict[str, Any]]:
    response = await client.get("/api/v1/role-assignments", headers=admin.headers)
    assert response.status_code == 200, response.text
    return [a for a in response.json() if any(m["id"] == str(user_id) for m in a["members"])]


async def admin_with_assignment(
    client: httpx.AsyncClient,
    factory: Factory,
    sessionmaker: async_sessionmaker[AsyncSession],
    granter: Admin,
    role_id: uuid.UUID | str,
    *,
    tags: list[str] | None = None,
) -> Admin:
    """A new account holding ``role_id`` (scoped to ``tags`` if given), assigned by ``granter``."""
    person = await factory.admin(None, token=False)
    response = await assign(client, granter, role_id, [person.id], tags=tags)
    assert response.status_code == 201, response.text
    person.token = await issue_token(sessionmaker, person.id)
    return person


# ------------------------------------------------------------------------------------------- the matrix
MATRIX_ROUTES = [
    info
    for info in ROUTES
    if info.path.startswith(("/api/v1/", "/metrics"))
    and any(isinstance(g, Require) for g in _guards(info.route.dependant))
]
MATRIX = [
    (role, method, info)
    for info in MATRIX_ROUTES
    for method in sorted(info.methods)
    for role in BUILTIN_ROLES
]


def _allowed(role: BuiltinRole, info: RouteInfo) -> bool:
    guard = _guard_of(info)
    held = [p in role.permissions for p in guard.permissions]
    return any(held) if guard.any_of else all(held)


@pytest.fixture(scope="module")
async def matrix_env(
    module_db_url: str, tmp_path_factory: pytest.TempPathFactory
) -> AsyncIterator[tuple[httpx.AsyncClient, dict[str, Admin]]]:
    """One admin per built-in role in a shared database. Matrix calls use random ids and empty bodies, so an
    allowed call ends in 404/422 (or changes nothing) and the shared state stays as arranged."""
    from sqlalchemy.ext.asyncio import async_sessionmaker as _maker

    from corral.kit.db import create_engine

    engine = create_engine(module_db_url, pool_size=2, max_overflow=0)
    factory = Factory(_maker(engine, expire_on_commit=False))
    admins = {role.name: await factory.admin(role.name) for role in BUILTIN_ROLES}
    await engine.dispose()
    settings = make_settings(tmp_path_factory.mktemp("matrix"), module_db_url)
    async with running_app(settings, module_db_url) as application, new_client(application) as client:
        yield client, admins


@pytest.mark.parametrize(
    ("role", "method", "info"),
    MATRIX,
    ids=[f"{role.name}: {method} {info.path}" for role, method, info in MATRIX],
)
async def test_role_route_matrix(
    matrix_env: tuple[httpx.AsyncClient, dict[str, Admin]], role: BuiltinRole, method: str, info: RouteInfo
) -> None:
    client, admins = matrix_env
    kwargs: dict[str, Any] = {"json": {}} if method in {"POST", "PUT", "PATCH"} else {}
    response = await client.request(method, _concrete_path(info), headers=admins[role.name].headers, **kwargs)
    assert response.status_code < 500, response.text
    if _allowed(role, info):
        assert response.status_code not in {401, 403}, response.text
    else:
        assert response.status_code == 403, response.text
        assert response.headers["content-type"].startswith("application/problem+json")
        assert "permission" in response.json()["detail"]


# ------------------------------------------------------------------------------------------- named cases
async def test_helpdesk_cannot_list_roles(client: httpx.AsyncClient, factory: Factory) -> None:
    helpdesk = await factory.admin(HELP_DESK_OPERATOR.name)
    response = await client.get("/api/v1/roles", headers=helpdesk.headers)
    assert response.status_code == 403
    assert "roles:read" in response.json()["detail"]


async def test_helpdesk_cannot_read_tenant_settings(client: httpx.AsyncClient, factory: Factory) -> None:
    helpdesk = await factory.admin(HELP_DESK_OPERATOR.name)
    response = await client.get("/api/v1/settings", headers=helpdesk.headers)
    assert response.status_code == 403
    assert "settings:read" in response.json()["detail"]


async def test_helpdesk_cannot_change_tenant_settings(client: httpx.AsyncClient, factory: Factory) -> None:
    helpdesk = await factory.admin(HELP_DESK_OPERATOR.name)
    glob = await factory.admin(GLOBAL_ADMINISTRATOR.name)
    response = await client.patch(
        "/api/v1/settings", json={"organization_name": "Hijacked"}, headers=helpdesk.headers
    )
    assert response.status_code == 403
    current = await client.get("/api/v1/settings", headers=glob.headers)
    assert current.json()["organization_name"] != "Hijacked"


async def test_helpdesk_cannot_create_roles(
    client: httpx.AsyncClient, factory: Factory, sessionmaker: async_sessionmaker[AsyncSession]
) -> None:
    helpdesk = await factory.admin(HELP_DESK_OPERATOR.name)
    before = await count_rows(sessionmaker, "role_definitions")
    response = await client.post(
        "/api/v1/roles", json={"name": "Mine", "permissions": ["devices:read"]}, headers=helpdesk.headers
    )
    assert response.status_code == 403
    assert await count_rows(sessionmaker, "role_definitions") == before


async def test_helpdesk_can_read_audit_events(client: httpx.AsyncClient, factory: Factory) -> None:
    helpdesk = await factory.admin(HELP_DESK_OPERATOR.name)
    response = await client.get("/api/v1/audit-events", headers=helpdesk.headers)
    assert response.status_code == 200, response.text
    assert "items" in response.json()


async def test_refused_change_is_audited_as_access_denied(
    client: httpx.AsyncClient, factory: Factory, sessionmaker: async_sessionmaker[AsyncSession]
) -> None:
    helpdesk = await factory.admin(HELP_DESK_OPERATOR.name)
    response = await client.post("/api/v1/scope-tags", json={"name": "Paris"}, headers=helpdesk.headers)
    assert response.status_code == 403
    (event,) = await audit_rows(sessionmaker, activity="access.denied")
    assert event.result == "failure"
    assert event.actor_id == helpdesk.id
    assert event.target_name == "/api/v1/scope-tags"
    assert "scope_tags:write" in (event.detail or "")


async def test_read_only_operator_cannot_change_anything(
    client: httpx.AsyncClient, factory: Factory, sessionmaker: async_sessionmaker[AsyncSession]
) -> None:
    reader = await factory.admin(READ_ONLY_OPERATOR.name)
    victim = await factory.admin(HELP_DESK_OPERATOR.name)
    tag_id = uuid.uuid4()
    before = {t: await count_rows(sessionmaker, t) for t in ALL_WRITE_TABLES}
    attempts = [
        ("POST", "/api/v1/admins", {"email": "new@example.com", "password": PASSWORD}),
        ("POST", "/api/v1/roles", {"name": "Mine", "permissions": ["devices:read"]}),
        (
            "POST",
            "/api/v1/role-assignments",
            {
                "name": "Mine",
                "role_id": str(HELP_DESK_OPERATOR.id),
                "member_ids": [str(reader.id)],
            },
        ),
        ("POST", "/api/v1/scope-tags", {"name": "Paris"}),
        ("POST", f"/api/v1/users/{victim.id}/password-reset", None),
        ("POST", "/api/v1/api-tokens", {"name": "more"}),
        ("PATCH", f"/api/v1/users/{victim.id}", {"enabled": False}),
        ("PATCH", "/api/v1/settings", {"organization_name": "Nope"}),
        ("DELETE", f"/api/v1/scope-tags/{tag_id}", None),
    ]
    for method, path, body in attempts:
        response = await client.request(method, path, json=body, headers=reader.headers)
        assert response.status_code == 403, f"{method} {path}: {response.status_code} {response.text}"
    assert {t: await count_rows(sessionmaker, t) for t in ALL_WRITE_TABLES} == before


async def test_read_only_operator_cannot_read_tenant_settings(
    client: httpx.AsyncClient, factory: Factory
) -> None:
    reader = await factory.admin(READ_ONLY_OPERATOR.name)
    response = await client.get("/api/v1/settings", headers=reader.headers)
    assert response.status_code == 403


async def test_global_administrator_can_do_everything(client: httpx.AsyncClient, factory: Factory) -> None:
    glob = await factory.admin(GLOBAL_ADMINISTRATOR.name)
    h = glob.headers
    tag = await create_tag(client, glob, "Paris")
    role = await create_role(client, glob, "Wipers", ["devices:read", "remote:wipe"])
    created = await client.post(
        "/api/v1/admins", json={"email": "wiper@example.com", "role_id": role["id"]}, headers=h
    )
    assert created.status_code == 201, created.text
    user_id = created.json()["user"]["id"]
    scoped = await assign(client, glob, role["id"], [uuid.UUID(user_id)], tags=[tag])
    assert scoped.status_code == 201, scoped.text
    for method, path, body, expected in [
        ("GET", "/api/v1/roles", None, 200),
        ("GET", "/api/v1/permissions", None, 200),
        ("PATCH", f"/api/v1/roles/{role['id']}", {"description": "wipes"}, 200),
        ("GET", "/api/v1/role-assignments", None, 200),
        ("PUT", f"/api/v1/role-assignments/{scoped.json()['id']}/members", {"member_ids": [user_id]}, 200),
        ("GET", "/api/v1/scope-tags", None, 200),
        ("GET", "/api/v1/users", None, 200),
        ("GET", f"/api/v1/users/{user_id}", None, 200),
        ("PATCH", f"/api/v1/users/{user_id}", {"display_name": "Wiper"}, 200),
        ("POST", f"/api/v1/users/{user_id}/password-reset", None, 200),
        ("GET", f"/api/v1/users/{user_id}/effective-permissions", None, 200),
        ("GET", "/api/v1/admins", None, 200),
        ("GET", "/api/v1/settings", None, 200),
        ("PATCH", "/api/v1/settings", {"organization_name": "Contoso"}, 200),
        ("GET", "/api/v1/audit-events", None, 200),
        ("GET", "/api/v1/audit-events/export.csv", None, 200),
        ("GET", "/api/v1/api-tokens/all", None, 200),
        ("GET", "/metrics", None, 200),
        ("DELETE", f"/api/v1/role-assignments/{scoped.json()['id']}", None, 204),
    ]:
        response = await client.request(method, path, json=body, headers=h)
        assert response.status_code == expected, f"{method} {path}: {response.status_code} {response.text}"


@pytest.mark.parametrize("role", BUILTIN_ROLES, ids=lambda r: r.name)
async def test_builtin_role_cannot_be_edited(
    client: httpx.AsyncClient, factory: Factory, role: BuiltinRole
) -> None:
    glob = await factory.admin(GLOBAL_ADMINISTRATOR.name)
    response = await client.patch(
        f"/api/v1/roles/{role.id}", json={"permissions": ["devices:read"]}, headers=glob.headers
    )
    assert response.status_code == 403
    after = await client.get(f"/api/v1/roles/{role.id}", headers=glob.headers)
    assert sorted(after.json()["permissions"]) == sorted(p.value for p in role.permissions)


@pytest.mark.parametrize("role", BUILTIN_ROLES, ids=lambda r: r.name)
async def test_builtin_role_cannot_be_deleted(
    client: httpx.AsyncClient, factory: Factory, role: BuiltinRole
) -> None:
    glob = await factory.admin(GLOBAL_ADMINISTRATOR.name)
    response = await client.delete(f"/api/v1/roles/{role.id}", headers=glob.headers)
    assert response.status_code == 403
    assert (await client.get(f"/api/v1/roles/{role.id}", headers=glob.headers)).status_code == 200


async def test_custom_role_create_update_delete_is_audited_with_old_and_new_values(
    client: httpx.AsyncClient, factory: Factory, sessionmaker: async_sessionmaker[AsyncSession]
) -> None:
    glob = await factory.admin(GLOBAL_ADMINISTRATOR.name)
    role = await create_role(client, glob, "Lockers", ["remote:lock", "devices:read"])
    assert role["is_builtin"] is False
    assert role["permissions"] == ["devices:read", "remote:lock"]

    updated = await client.patch(
        f"/api/v1/roles/{role['id']}",
        json={"name": "Lock and sync", "permissions": ["devices:read", "remote:lock", "remote:sync"]},
        headers=glob.headers,
    )
    assert updated.status_code == 200, updated.text
    assert updated.json()["permissions"] == ["devices:read", "remote:lock", "remote:sync"]
    deleted = await client.delete(f"/api/v1/roles/{role['id']}", headers=glob.headers)
    assert deleted.status_code == 204
    assert (await client.get(f"/api/v1/roles/{role['id']}", headers=glob.headers)).status_code == 404

    events = await audit_rows(sessionmaker, target_id=role["id"])
    assert [e.activity for e in events] == ["role.create", "role.update", "role.delete"]
    for event in events:
        assert event.actor_id == glob.id and event.actor_type == "token" and event.result == "success"
    create, update, delete = (
        {p["name"]: (p["old"], p["new"]) for p in e.modified_properties} for e in events
    )
    assert create["name"] == (None, "Lockers")
    assert create["permissions"] == (None, ["devices:read", "remote:lock"])
    assert update["name"] == ("Lockers", "Lock and sync")
    assert update["permissions"] == (
        ["devices:read", "remote:lock"],
        ["devices:read", "remote:lock", "remote:sync"],
    )
    assert "description" not in update  # unchanged properties are not listed
    assert delete["permissions"] == (["devices:read", "remote:lock", "remote:sync"], None)
    assert events[-1].target_name == "Lock and sync"


async def test_role_with_unknown_permission_is_refused_with_a_clear_message(
    client: httpx.AsyncClient, factory: Factory, sessionmaker: async_sessionmaker[AsyncSession]
) -> None:
    glob = await factory.admin(GLOBAL_ADMINISTRATOR.name)
    before = await count_rows(sessionmaker, "role_definitions")
    response = await client.post(
        "/api/v1/roles",
        json={"name": "Odd", "permissions": ["devices:read", "devices:explode"]},
        headers=glob.headers,
    )
    assert response.status_code == 422
    assert response.headers["content-type"].startswith("application/problem+json")
    body = response.json()
    assert "unknown permission(s): devices:explode" in body["detail"]
    assert any(e["location"] == "permissions" for e in body["errors"])
    assert await count_rows(sessionmaker, "role_definitions") == before


async def test_role_update_with_unknown_permission_is_refused(
    client: httpx.AsyncClient, factory: Factory
) -> None:
    glob = await factory.admin(GLOBAL_ADMINISTRATOR.name)
    role = await create_role(client, glob, "Readers", ["devices:read"])
    response = await client.patch(
        f"/api/v1/roles/{role['id']}", json={"permissions": ["root:everything"]}, headers=glob.headers
    )
    assert response.status_code == 422
    assert "root:everything" in response.json()["detail"]


@pytest.mark.parametrize("second_name", ["Lockers", "LOCKERS", "global administrator"])
async def test_duplicate_role_name_is_a_conflict(
    client: httpx.AsyncClient, factory: Factory, second_name: str
) -> None:
    glob = await factory.admin(GLOBAL_ADMINISTRATOR.name)
    await create_role(client, glob, "Lockers", ["remote:lock"])
    response = await client.post(
        "/api/v1/roles", json={"name": second_name, "permissions": ["remote:lock"]}, headers=glob.headers
    )
    assert response.status_code == 409, response.text


async def test_renaming_a_role_onto_another_name_is_a_conflict(
    client: httpx.AsyncClient, factory: Factory
) -> None:
    glob = await factory.admin(GLOBAL_ADMINISTRATOR.name)
    await create_role(client, glob, "Lockers", ["remote:lock"])
    other = await create_role(client, glob, "Syncers", ["remote:sync"])
    response = await client.patch(
        f"/api/v1/roles/{other['id']}", json={"name": "lockers"}, headers=glob.headers
    )
    assert response.status_code == 409


async def test_role_still_assigned_cannot_be_deleted(client: httpx.AsyncClient, factory: Factory) -> None:
    glob = await factory.admin(GLOBAL_ADMINISTRATOR.name)
    role = await create_role(client, glob, "Lockers", ["remote:lock"])
    assert (await assign(client, glob, role["id"], [glob.id])).status_code == 201
    response = await client.delete(f"/api/v1/roles/{role['id']}", headers=glob.headers)
    assert response.status_code == 409


# ------------------------------------------------------------------------------------------- self-escalation
async def test_service_admin_cannot_assign_global_administrator(
    client: httpx.AsyncClient, factory: Factory, sessionmaker: async_sessionmaker[AsyncSession]
) -> None:
    service = await factory.admin(SERVICE_ADMINISTRATOR.name)
    before = await count_rows(sessionmaker, "role_assignments")
    response = await assign(client, service, GLOBAL_ADMINISTRATOR.id, [service.id])
    assert response.status_code == 403
    assert "licences:write" in response.json()["detail"]
    assert await count_rows(sessionmaker, "role_assignments") == before
    me = await client.get("/api/v1/me", headers=service.headers)
    assert "licences:write" not in me.json()["permissions"]


async def test_service_admin_cannot_join_an_existing_global_admin_assignment(
    client: httpx.AsyncClient, factory: Factory
) -> None:
    glob = await factory.admin(GLOBAL_ADMINISTRATOR.name)
    service = await factory.admin(SERVICE_ADMINISTRATOR.name)
    (ga_assignment,) = await assignments_of(client, glob, glob.id)
    response = await client.put(
        f"/api/v1/role-assignments/{ga_assignment['id']}/members",
        json={"member_ids": [str(glob.id), str(service.id)]},
        headers=service.headers,
    )
    assert response.status_code == 403
    (after,) = await assignments_of(client, glob, glob.id)
    assert [m["id"] for m in after["members"]] == [str(glob.id)]


async def test_service_admin_cannot_create_a_user_with_global_administrator_role(
    client: httpx.AsyncClient, factory: Factory, sessionmaker: async_sessionmaker[AsyncSession]
) -> None:
    service = await factory.admin(SERVICE_ADMINISTRATOR.name)
    before = await count_rows(sessionmaker, "users")
    response = await client.post(
        "/api/v1/admins",
        json={"email": "sock-puppet@example.com", "role_id": str(GLOBAL_ADMINISTRATOR.id)},
        headers=service.headers,
    )
    assert response.status_code == 403
    assert await count_rows(sessionmaker, "users") == before


async def test_service_admin_cannot_create_a_role_holding_licences_write(
    client: httpx.AsyncClient, factory: Factory, sessionmaker: async_sessionmaker[AsyncSession]
) -> None:
    service = await factory.admin(SERVICE_ADMINISTRATOR.name)
    before = await count_rows(sessionmaker, "role_definitions")
    response = await client.post(
        "/api/v1/roles",
        json={"name": "Licensing", "permissions": ["licences:write", "devices:read"]},
        headers=service.headers,
    )
    assert response.status_code == 403
    assert "licences:write" in response.json()["detail"]
    assert await count_rows(sessionmaker, "role_definitions") == before


async def test_service_admin_cannot_add_licences_write_to_an_existing_role(
    client: httpx.AsyncClient, factory: Factory
) -> None:
    glob = await factory.admin(GLOBAL_ADMINISTRATOR.name)
    service = await factory.admin(SERVICE_ADMINISTRATOR.name)
    role = await create_role(client, glob, "Readers", ["devices:read"])
    response = await client.patch(
        f"/api/v1/roles/{role['id']}",
        json={"permissions": ["devices:read", "licences:write"]},
        headers=service.headers,
    )
    assert response.status_code == 403
    after = await client.get(f"/api/v1/roles/{role['id']}", headers=glob.headers)
    assert after.json()["permissions"] == ["devices:read"]


async def test_service_admin_cannot_reset_a_global_admins_password(
    client: httpx.AsyncClient, factory: Factory, sessionmaker: async_sessionmaker[AsyncSession]
) -> None:
    glob = await factory.admin(GLOBAL_ADMINISTRATOR.name)
    service = await factory.admin(SERVICE_ADMINISTRATOR.name)
    response = await client.post(f"/api/v1/users/{glob.id}/password-reset", headers=service.headers)
    assert response.status_code == 403
    assert "one_time_password" not in response.text
    assert await audit_rows(sessionmaker, activity="user.password_reset") == []
    assert (await client.get("/api/v1/me", headers=glob.headers)).status_code == 200


async def test_service_admin_cannot_disable_a_global_admin(
    client: httpx.AsyncClient, factory: Factory
) -> None:
    glob = await factory.admin(GLOBAL_ADMINISTRATOR.name)
    await factory.admin(GLOBAL_ADMINISTRATOR.name)  # not the last one: the refusal is about rights
    service = await factory.admin(SERVICE_ADMINISTRATOR.name)
    response = await client.patch(
        f"/api/v1/users/{glob.id}", json={"enabled": False}, headers=service.headers
    )
    assert response.status_code == 403
    assert (await client.get("/api/v1/me", headers=glob.headers)).status_code == 200


async def test_service_admin_cannot_re_enable_a_disabled_global_admin(
    client: httpx.AsyncClient, factory: Factory
) -> None:
    """Re-enabling revives the account's API tokens: a lesser admin holding a leaked token of a disabled
    Global administrator must not be able to bring it back to life."""
    first = await factory.admin(GLOBAL_ADMINISTRATOR.name)
    disabled = await factory.admin(GLOBAL_ADMINISTRATOR.name)
    service = await factory.admin(SERVICE_ADMINISTRATOR.name)
    off = await client.patch(f"/api/v1/users/{disabled.id}", json={"enabled": False}, headers=first.headers)
    assert off.status_code == 200
    response = await client.patch(
        f"/api/v1/users/{disabled.id}", json={"enabled": True}, headers=service.headers
    )
    assert response.status_code == 403
    assert (await client.get("/api/v1/me", headers=disabled.headers)).status_code == 401
    again = await client.patch(f"/api/v1/users/{disabled.id}", json={"enabled": True}, headers=first.headers)
    assert again.status_code == 200
    assert (await client.get("/api/v1/me", headers=disabled.headers)).status_code == 200


async def test_service_admin_can_re_enable_a_helpdesk_operator(
    client: httpx.AsyncClient, factory: Factory
) -> None:
    service = await factory.admin(SERVICE_ADMINISTRATOR.name)
    helpdesk = await factory.admin(HELP_DESK_OPERATOR.name)
    for enabled in (False, True):
        response = await client.patch(
            f"/api/v1/users/{helpdesk.id}", json={"enabled": enabled}, headers=service.headers
        )
        assert response.status_code == 200, response.text
        assert response.json()["enabled"] is enabled


async def test_service_admin_can_reset_a_helpdesk_operators_password(
    client: httpx.AsyncClient, factory: Factory
) -> None:
    service = await factory.admin(SERVICE_ADMINISTRATOR.name)
    helpdesk = await factory.admin(HELP_DESK_OPERATOR.name)
    response = await client.post(f"/api/v1/users/{helpdesk.id}/password-reset", headers=service.headers)
    assert response.status_code == 200, response.text
    assert len(response.json()["one_time_password"]) >= 12


async def test_scoped_admin_cannot_grant_beyond_their_own_scope(
    client: httpx.AsyncClient, factory: Factory, sessionmaker: async_sessionmaker[AsyncSession]
) -> None:
    glob = await factory.admin(GLOBAL_ADMINISTRATOR.name)
    paris = await create_tag(client, glob, "Paris")
    berlin = await create_tag(client, glob, "Berlin")
    scoped = await admin_with_assignment(
        client, factory, sessionmaker, glob, SERVICE_ADMINISTRATOR.id, tags=[paris]
    )
    recruit = await factory.admin(None, token=False)
    before = await count_rows(sessionmaker, "role_assignments")

    for tags in ([berlin], [paris, berlin], None):
        response = await assign(client, scoped, HELP_DESK_OPERATOR.id, [recruit.id], tags=tags)
        assert response.status_code == 403, f"scope {tags}: {response.text}"
    assert await count_rows(sessionmaker, "role_assignments") == before

    within = await assign(client, scoped, HELP_DESK_OPERATOR.id, [recruit.id], tags=[paris])
    assert within.status_code == 201, within.text
    assert [t["name"] for t in within.json()["scope_tags"]] == ["Paris"]


async def test_scoped_admin_cannot_delete_an_assignment_wider_than_their_scope(
    client: httpx.AsyncClient, factory: Factory, sessionmaker: async_sessionmaker[AsyncSession]
) -> None:
    glob = await factory.admin(GLOBAL_ADMINISTRATOR.name)
    paris = await create_tag(client, glob, "Paris")
    scoped = await admin_with_assignment(
        client, factory, sessionmaker, glob, SERVICE_ADMINISTRATOR.id, tags=[paris]
    )
    helpdesk = await factory.admin(HELP_DESK_OPERATOR.name)
    (everywhere,) = await assignments_of(client, glob, helpdesk.id)
    response = await client.delete(f"/api/v1/role-assignments/{everywhere['id']}", headers=scoped.headers)
    assert response.status_code == 403
    assert len(await assignments_of(client, glob, helpdesk.id)) == 1


# ------------------------------------------------------------------------------------ last Global admin
async def test_last_global_admins_only_assignment_cannot_be_deleted(
    client: httpx.AsyncClient, factory: Factory
) -> None:
    glob = await factory.admin(GLOBAL_ADMINISTRATOR.name)
    (only,) = await assignments_of(client, glob, glob.id)
    response = await client.delete(f"/api/v1/role-assignments/{only['id']}", headers=glob.headers)
    assert response.status_code == 409
    assert "last Global administrator" in response.json()["detail"]
    assert len(await assignments_of(client, glob, glob.id)) == 1


async def test_last_global_admin_cannot_be_removed_from_the_members(
    client: httpx.AsyncClient, factory: Factory
) -> None:
    glob = await factory.admin(GLOBAL_ADMINISTRATOR.name)
    other = await factory.admin(None, token=False)
    (only,) = await assignments_of(client, glob, glob.id)
    response = await client.put(
        f"/api/v1/role-assignments/{only['id']}/members",
        json={"member_ids": [str(other.id)]},
        headers=glob.headers,
    )
    assert response.status_code == 409


async def test_last_global_admin_cannot_be_disabled(
    client: httpx.AsyncClient, factory: Factory, sessionmaker: async_sessionmaker[AsyncSession]
) -> None:
    glob = await factory.admin(GLOBAL_ADMINISTRATOR.name)
    everything = await create_role(client, glob, "Everything", [p.value for p in P])
    peer = await admin_with_assignment(client, factory, sessionmaker, glob, everything["id"])
    response = await client.patch(f"/api/v1/users/{glob.id}", json={"enabled": False}, headers=peer.headers)
    assert response.status_code == 409
    assert "last Global administrator" in response.json()["detail"]
    assert (await client.get("/api/v1/me", headers=glob.headers)).status_code == 200


async def test_global_admin_cannot_disable_themselves(client: httpx.AsyncClient, factory: Factory) -> None:
    glob = await factory.admin(GLOBAL_ADMINISTRATOR.name)
    await factory.admin(GLOBAL_ADMINISTRATOR.name)
    response = await client.patch(f"/api/v1/users/{glob.id}", json={"enabled": False}, headers=glob.headers)
    assert response.status_code == 409


async def test_scoped_global_administrator_does_not_count_as_another_global_admin(
    client: httpx.AsyncClient, factory: Factory, sessionmaker: async_sessionmaker[AsyncSession]
) -> None:
    glob = await factory.admin(GLOBAL_ADMINISTRATOR.name)
    paris = await create_tag(client, glob, "Paris")
    await admin_with_assignment(client, factory, sessionmaker, glob, GLOBAL_ADMINISTRATOR.id, tags=[paris])
    (only,) = [a for a in await assignments_of(client, glob, glob.id) if a["scope_all"]]
    response = await client.delete(f"/api/v1/role-assignments/{only['id']}", headers=glob.headers)
    assert response.status_code == 409


async def test_one_of_two_global_admins_can_be_removed(client: httpx.AsyncClient, factory: Factory) -> None:
    first = await factory.admin(GLOBAL_ADMINISTRATOR.name)
    second = await factory.admin(GLOBAL_ADMINISTRATOR.name)
    (theirs,) = await assignments_of(client, first, second.id)
    response = await client.delete(f"/api/v1/role-assignments/{theirs['id']}", headers=first.headers)
    assert response.status_code == 204, response.text
    assert (await client.get("/api/v1/roles", headers=second.headers)).status_code == 403
    # Now the first is the last one.
    (mine,) = await assignments_of(client, first, first.id)
    assert (
        await client.delete(f"/api/v1/role-assignments/{mine['id']}", headers=first.headers)
    ).status_code == 409


async def test_one_of_two_global_admins_can_be_disabled(client: httpx.AsyncClient, factory: Factory) -> None:
    first = await factory.admin(GLOBAL_ADMINISTRATOR.name)
    second = await factory.admin(GLOBAL_ADMINISTRATOR.name)
    response = await client.patch(
        f"/api/v1/users/{second.id}", json={"enabled": False}, headers=first.headers
    )
    assert response.status_code == 200, response.text
    assert response.json()["enabled"] is False
    assert (await client.get("/api/v1/me", headers=second.headers)).status_code == 401


# ------------------------------------------------------------------------------------------- effective access
async def test_effective_permissions_say_what_an_admin_can_do_and_where(
    client: httpx.AsyncClient, factory: Factory, sessionmaker: async_sessionmaker[AsyncSession]
) -> None:
    glob = await factory.admin(GLOBAL_ADMINISTRATOR.name)
    paris = await create_tag(client, glob, "Paris")
    person = await factory.admin(None, token=False)
    assert (
        await assign(client, glob, HELP_DESK_OPERATOR.id, [person.id], tags=[paris], name="Paris desk")
    ).status_code == 201
    assert (
        await assign(client, glob, READ_ONLY_OPERATOR.id, [person.id], name="Everyone reads")
    ).status_code == 201

    response = await client.get(f"/api/v1/users/{person.id}/effective-permissions", headers=glob.headers)
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["user_id"] == str(person.id) and body["is_admin"] is True
    rows = {row["permission"]: row for row in body["permissions"]}
    assert set(rows) == {p.value for p in HELP_DESK_OPERATOR.permissions | READ_ONLY_OPERATOR.permissions}

    wipe = rows["remote:wipe"]
    assert wipe["scope_all"] is False
    assert wipe["scope_tags"] == ["Paris"]
    assert wipe["granted_by"] == ["Help desk operator (Paris desk)"]

    devices = rows["devices:read"]
    assert devices["scope_all"] is True
    assert devices["granted_by"] == ["Help desk operator (Paris desk)", "Read-only operator (Everyone reads)"]

    assert rows["roles:read"]["granted_by"] == ["Read-only operator (Everyone reads)"]
    assert "settings:write" not in rows


async def test_effective_permissions_of_a_non_admin_are_empty(
    client: httpx.AsyncClient, factory: Factory
) -> None:
    glob = await factory.admin(GLOBAL_ADMINISTRATOR.name)
    person = await factory.admin(None, token=False)
    body = (await client.get(f"/api/v1/users/{person.id}/effective-permissions", headers=glob.headers)).json()
    assert body["is_admin"] is False and body["permissions"] == []


async def test_effective_permissions_of_unknown_user_is_not_found(
    client: httpx.AsyncClient, factory: Factory
) -> None:
    glob = await factory.admin(GLOBAL_ADMINISTRATOR.name)
    response = await client.get(f"/api/v1/users/{uuid.uuid4()}/effective-permissions", headers=glob.headers)
    assert response.status_code == 404


# ------------------------------------------------------------------------------------------- scope tags
async def test_scope_tag_used_by_an_assignment_cannot_be_deleted(
    client: httpx.AsyncClient, factory: Factory
) -> None:
    glob = await factory.admin(GLOBAL_ADMINISTRATOR.name)
    paris = await create_tag(client, glob, "Paris")
    person = await factory.admin(None, token=False)
    assert (await assign(client, glob, HELP_DESK_OPERATOR.id, [person.id], tags=[paris])).status_code == 201
    response = await client.delete(f"/api/v1/scope-tags/{paris}", headers=glob.headers)
    assert response.status_code == 409
    assert "in use" in response.json()["detail"]
    tags = (await client.get("/api/v1/scope-tags", headers=glob.headers)).json()
    assert [t["name"] for t in tags] == ["Paris"]
    (assignment,) = await assignments_of(client, glob, person.id)
    assert [t["id"] for t in assignment["scope_tags"]] == [paris]


async def test_unused_scope_tag_can_be_deleted(client: httpx.AsyncClient, factory: Factory) -> None:
    glob = await factory.admin(GLOBAL_ADMINISTRATOR.name)
    paris = await create_tag(client, glob, "Paris")
    assert (await client.delete(f"/api/v1/scope-tags/{paris}", headers=glob.headers)).status_code == 204
    assert (await client.get("/api/v1/scope-tags", headers=glob.headers)).json() == []


async def test_duplicate_scope_tag_name_is_a_conflict(client: httpx.AsyncClient, factory: Factory) -> None:
    glob = await factory.admin(GLOBAL_ADMINISTRATOR.name)
    await create_tag(client, glob, "Paris")
    response = await client.post("/api/v1/scope-tags", json={"name": "PARIS"}, headers=glob.headers)
    assert response.status_code == 409


async def test_scoped_assignment_needs_at_least_one_tag(client: httpx.AsyncClient, factory: Factory) -> None:
    glob = await factory.admin(GLOBAL_ADMINISTRATOR.name)
    response = await assign(client, glob, HELP_DESK_OPERATOR.id, [glob.id], tags=[])
    assert response.status_code == 422


# ------------------------------------------------------------------------------------------- users and roles
async def test_creating_a_user_with_a_role_needs_roles_assign(
    client: httpx.AsyncClient, factory: Factory, sessionmaker: async_sessionmaker[AsyncSession]
) -> None:
    glob = await factory.admin(GLOBAL_ADMINISTRATOR.name)
    creators = await create_role(client, glob, "User creators", ["users:read", "users:write"])
    creator = await admin_with_assignment(client, factory, sessionmaker, glob, creators["id"])
    before = await count_rows(sessionmaker, "users")

    refused = await client.post(
        "/api/v1/admins",
        json={"email": "desk@example.com", "role_id": str(HELP_DESK_OPERATOR.id)},
        headers=creator.headers,
    )
    assert refused.status_code == 403
    assert "roles:assign" in refused.json()["detail"]
    assert await count_rows(sessionmaker, "users") == before

    plain = await client.post("/api/v1/admins", json={"email": "desk@example.com"}, headers=creator.headers)
    assert plain.status_code == 201, plain.text
    assert plain.json()["one_time_password"]
    assert plain.json()["user"]["must_change_password"] is True


async def test_creating_a_user_with_a_role_beyond_the_creators_rights_is_refused(
    client: httpx.AsyncClient, factory: Factory, sessionmaker: async_sessionmaker[AsyncSession]
) -> None:
    glob = await factory.admin(GLOBAL_ADMINISTRATOR.name)
    desk_hiring = await create_role(
        client, glob, "Desk hiring", ["users:read", "users:write", "roles:assign", "devices:read"]
    )
    hirer = await admin_with_assignment(client, factory, sessionmaker, glob, desk_hiring["id"])
    response = await client.post(
        "/api/v1/admins",
        json={"email": "desk@example.com", "role_id": str(HELP_DESK_OPERATOR.id)},
        headers=hirer.headers,
    )
    assert response.status_code == 403
    assert (await client.get("/api/v1/users?search=desk@", headers=glob.headers)).json()["items"] == []


async def test_application_manager_cannot_read_audit_or_roles(
    client: httpx.AsyncClient, factory: Factory
) -> None:
    apps = await factory.admin(APPLICATION_MANAGER.name)
    assert (await client.get("/api/v1/audit-events", headers=apps.headers)).status_code == 403
    assert (await client.get("/api/v1/roles", headers=apps.headers)).status_code == 403


async def test_account_without_any_role_is_refused_everywhere_but_self_service(
    client: httpx.AsyncClient, factory: Factory, sessionmaker: async_sessionmaker[AsyncSession]
) -> None:
    glob = await factory.admin(GLOBAL_ADMINISTRATOR.name)
    role = await create_role(client, glob, "Temp", ["devices:read"])
    person = await admin_with_assignment(client, factory, sessionmaker, glob, role["id"])
    (assignment,) = await assignments_of(client, glob, person.id)
    assert (
        await client.delete(f"/api/v1/role-assignments/{assignment['id']}", headers=glob.headers)
    ).status_code == 204
    me = await client.get("/api/v1/me", headers=person.headers)
    assert me.status_code == 200 and me.json()["permissions"] == {}
    assert (await client.get("/api/v1/users", headers=person.headers)).status_code == 403


def test_builtin_role_definitions_hold_what_the_matrix_assumes() -> None:
    assert P.audit_read in HELP_DESK_OPERATOR.permissions
    assert P.roles_read not in HELP_DESK_OPERATOR.permissions
    assert P.audit_read in READ_ONLY_OPERATOR.permissions
    assert P.settings_read not in READ_ONLY_OPERATOR.permissions
    assert not {p for p in READ_ONLY_OPERATOR.permissions if not p.value.endswith(":read")}
    assert P.audit_read not in APPLICATION_MANAGER.permissions
    assert SERVICE_ADMINISTRATOR.permissions.isdisjoint(
        {P.licences_write, P.settings_write, P.system_metrics}
    )
    assert frozenset(P) == GLOBAL_ADMINISTRATOR.permissions


async def test_service_admin_cannot_edit_or_delete_a_role_holding_rights_they_lack(
    client: httpx.AsyncClient, factory: Factory
) -> None:
    boss = await factory.admin("Global administrator")
    service = await factory.admin("Service administrator")
    role = await client.post(
        "/api/v1/roles",
        headers=boss.headers,
        json={"name": "Licence clerk", "permissions": ["licences:write", "users:read"]},
    )
    assert role.status_code == 201
    role_id = role.json()["id"]
    renamed = await client.patch(f"/api/v1/roles/{role_id}", headers=service.headers, json={"name": "Nobody"})
    trimmed = await client.patch(
        f"/api/v1/roles/{role_id}", headers=service.headers, json={"permissions": ["users:read"]}
    )
    deleted = await client.delete(f"/api/v1/roles/{role_id}", headers=service.headers)
    assert renamed.status_code == trimmed.status_code == deleted.status_code == 403
    assert (await client.get(f"/api/v1/roles/{role_id}", headers=boss.headers)).json()[
        "name"
    ] == "Licence clerk"


async def test_a_role_named_in_a_body_that_does_not_exist_is_a_422_naming_the_field(
    client: httpx.AsyncClient, factory: Factory, sessionmaker: async_sessionmaker[AsyncSession]
) -> None:
    """The address exists, the body is wrong: 422 naming role_id (not the 404 of a missing address)."""
    admin = await factory.admin("Global administrator")
    users, assignments = (
        await count_rows(sessionmaker, "users"),
        await count_rows(sessionmaker, "role_assignments"),
    )
    missing = str(uuid.uuid4())
    for path, body in (
        ("/api/v1/admins", {"email": "new-admin@example.com", "role_id": missing}),
        ("/api/v1/role-assignments", {"name": "Nowhere", "role_id": missing, "member_ids": [str(admin.id)]}),
    ):
        response = await client.post(path, json=body, headers=admin.headers)
        assert response.status_code == 422, (path, response.text)
        assert [e["location"] for e in response.json()["errors"]] == ["role_id"], response.text
    assert await count_rows(sessionmaker, "users") == users
    assert await count_rows(sessionmaker, "role_assignments") == assignments
