"""Bad input gets a clear 4xx and changes nothing; odd input never reaches a user as a 500."""

from __future__ import annotations

import collections
import itertools
import json
import uuid
from typing import Any

import httpx
import pytest
from pydantic import BaseModel
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from corral.kit.routes import RouteInfo
from corral.rbac.roles import GLOBAL_ADMINISTRATOR, HELP_DESK_OPERATOR
from tests.conftest import PASSWORD, Admin, Factory, portal_csrf
from tests.test_route_guards import ROUTES

TABLES = (
    "users",
    "role_definitions",
    "role_assignments",
    "role_assignment_members",
    "role_assignment_scope_tags",
    "scope_tags",
    "api_tokens",
    "tenant_settings",
)


async def snapshot(sessionmaker: async_sessionmaker[AsyncSession]) -> dict[str, Any]:
    """Row counts of every table an admin can change, the tenant settings, and the successful audit events."""
    async with sessionmaker() as session:
        state: dict[str, Any] = {}
        for table in TABLES:
            query = text(f"SELECT count(*) FROM {table}")  # noqa: S608 - fixed table names
            state[table] = await session.scalar(query)
        state["changes"] = await session.scalar(
            text("SELECT count(*) FROM audit_events WHERE result = 'success'")
        )
        state["settings"] = (
            await session.execute(text("SELECT organization_name, support_url FROM tenant_settings"))
        ).all()
        state["users_data"] = (
            await session.execute(text("SELECT email, display_name, enabled, password_hash FROM users"))
        ).all()
    return state


def _problem(response: httpx.Response, status: int) -> dict[str, Any]:
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith("application/problem+json")
    body: dict[str, Any] = response.json()
    assert body["status"] == status and body["detail"] and body["correlation_id"]
    return body


@pytest.fixture
async def glob(factory: Factory) -> Admin:
    return await factory.admin(GLOBAL_ADMINISTRATOR.name)


# ------------------------------------------------------------------------------------------- malformed bodies
@pytest.mark.parametrize(
    "body",
    ['{"email": ', "not json at all", "{'email': 'single@quotes.example'}", '{"email": "a@b.c",}', "[1, 2"],
    ids=["truncated", "prose", "single-quotes", "trailing-comma", "unclosed-array"],
)
async def test_malformed_json_body_is_a_validation_error(
    client: httpx.AsyncClient, glob: Admin, sessionmaker: async_sessionmaker[AsyncSession], body: str
) -> None:
    before = await snapshot(sessionmaker)
    response = await client.post(
        "/api/v1/users", content=body, headers={**glob.headers, "Content-Type": "application/json"}
    )
    problem = _problem(response, 422)
    assert problem["errors"] and problem["errors"][0]["type"] == "json_invalid"
    assert await snapshot(sessionmaker) == before


async def test_absurdly_nested_json_is_refused_cleanly(
    client: httpx.AsyncClient, glob: Admin, sessionmaker: async_sessionmaker[AsyncSession]
) -> None:
    before = await snapshot(sessionmaker)
    response = await client.post(
        "/api/v1/roles",
        content="[" * 10_000 + "]" * 10_000,
        headers={**glob.headers, "Content-Type": "application/json"},
    )
    assert 400 <= response.status_code < 500
    assert await snapshot(sessionmaker) == before


@pytest.mark.parametrize(
    ("method", "path", "payload", "location"),
    [
        ("POST", "/api/v1/admins", {"email": ["a@example.com"]}, "email"),
        ("POST", "/api/v1/admins", {"email": "a@example.com", "role_id": 42}, "role_id"),
        (
            "POST",
            "/api/v1/users",
            {"user_principal_name": ["a@example.com"], "display_name": "A"},
            "user_principal_name",
        ),
        ("POST", "/api/v1/licences", {"name": "E5", "sku": "E5", "seats": "lots"}, "seats"),
        ("PATCH", "/api/v1/settings", {"deprovisioned_user_devices": "wipe"}, "deprovisioned_user_devices"),
        ("POST", "/api/v1/roles", {"name": "R", "permissions": "devices:read"}, "permissions"),
        ("POST", "/api/v1/roles", {"name": {"first": "R"}, "permissions": ["devices:read"]}, "name"),
        ("PATCH", "/api/v1/settings", {"organization_name": 12}, "organization_name"),
        ("PATCH", "/api/v1/settings", {"support_phone": ["0800"]}, "support_phone"),
        ("POST", "/api/v1/scope-tags", {"name": None}, "name"),
        ("POST", "/api/v1/role-assignments", {"name": "A", "role_id": "x", "member_ids": "y"}, "role_id"),
    ],
    ids=lambda v: v if isinstance(v, str) and not v.startswith("/") else None,
)
async def test_wrong_types_are_validation_errors(
    client: httpx.AsyncClient,
    glob: Admin,
    sessionmaker: async_sessionmaker[AsyncSession],
    method: str,
    path: str,
    payload: dict[str, Any],
    location: str,
) -> None:
    before = await snapshot(sessionmaker)
    response = await client.request(method, path, json=payload, headers=glob.headers)
    problem = _problem(response, 422)
    assert location in {e["location"] for e in problem["errors"]}, problem
    assert location in problem["detail"]
    assert await snapshot(sessionmaker) == before


async def test_enabled_must_be_a_boolean(
    client: httpx.AsyncClient, factory: Factory, glob: Admin, sessionmaker: async_sessionmaker[AsyncSession]
) -> None:
    helpdesk = await factory.admin(HELP_DESK_OPERATOR.name)
    before = await snapshot(sessionmaker)
    response = await client.patch(
        f"/api/v1/users/{helpdesk.id}", json={"enabled": "maybe"}, headers=glob.headers
    )
    _problem(response, 422)
    assert await snapshot(sessionmaker) == before


@pytest.mark.parametrize(
    ("method", "path", "payload", "extra"),
    [
        ("POST", "/api/v1/admins", {"email": "x@example.com", "is_admin": True}, "is_admin"),
        (
            "POST",
            "/api/v1/users",
            {"user_principal_name": "x@example.com", "display_name": "X", "password_hash": "$argon2id$..."},
            "password_hash",
        ),
        (
            "POST",
            "/api/v1/roles",
            {"name": "R", "permissions": ["devices:read"], "is_builtin": True},
            "is_builtin",
        ),
        ("PATCH", "/api/v1/settings", {"organization_name": "X", "id": 2}, "id"),
        ("POST", "/api/v1/scope-tags", {"name": "T", "id": str(uuid.uuid4())}, "id"),
    ],
    ids=["user-is_admin", "user-password_hash", "role-is_builtin", "settings-id", "tag-id"],
)
async def test_unknown_fields_are_refused(
    client: httpx.AsyncClient,
    glob: Admin,
    sessionmaker: async_sessionmaker[AsyncSession],
    method: str,
    path: str,
    payload: dict[str, Any],
    extra: str,
) -> None:
    before = await snapshot(sessionmaker)
    response = await client.request(method, path, json=payload, headers=glob.headers)
    problem = _problem(response, 422)
    assert any(e["location"] == extra and e["type"] == "extra_forbidden" for e in problem["errors"]), problem
    assert await snapshot(sessionmaker) == before


async def test_user_update_cannot_smuggle_a_password(
    client: httpx.AsyncClient, factory: Factory, glob: Admin, sessionmaker: async_sessionmaker[AsyncSession]
) -> None:
    helpdesk = await factory.admin(HELP_DESK_OPERATOR.name)
    before = await snapshot(sessionmaker)
    response = await client.patch(
        f"/api/v1/users/{helpdesk.id}",
        json={"display_name": "Ok", "password": "new-password-123456"},
        headers=glob.headers,
    )
    _problem(response, 422)
    assert await snapshot(sessionmaker) == before


# ------------------------------------------------------------------------------------------- identifiers
UNKNOWN = str(uuid.uuid4())


@pytest.mark.parametrize(
    ("method", "path", "payload"),
    [
        ("GET", f"/api/v1/users/{UNKNOWN}", None),
        ("PATCH", f"/api/v1/users/{UNKNOWN}", {"display_name": "X"}),
        ("POST", f"/api/v1/users/{UNKNOWN}/password-reset", None),
        ("GET", f"/api/v1/users/{UNKNOWN}/effective-permissions", None),
        ("GET", f"/api/v1/roles/{UNKNOWN}", None),
        ("PATCH", f"/api/v1/roles/{UNKNOWN}", {"description": "X"}),
        ("DELETE", f"/api/v1/roles/{UNKNOWN}", None),
        ("GET", f"/api/v1/role-assignments/{UNKNOWN}", None),
        ("PUT", f"/api/v1/role-assignments/{UNKNOWN}/members", {"member_ids": [UNKNOWN]}),
        ("DELETE", f"/api/v1/role-assignments/{UNKNOWN}", None),
        ("DELETE", f"/api/v1/scope-tags/{UNKNOWN}", None),
        ("DELETE", f"/api/v1/api-tokens/{UNKNOWN}", None),
    ],
    ids=lambda v: v.replace(UNKNOWN, "{id}") if isinstance(v, str) else None,
)
async def test_unknown_id_is_not_found(
    client: httpx.AsyncClient,
    glob: Admin,
    sessionmaker: async_sessionmaker[AsyncSession],
    method: str,
    path: str,
    payload: dict[str, Any] | None,
) -> None:
    before = await snapshot(sessionmaker)
    response = await client.request(method, path, json=payload, headers=glob.headers)
    _problem(response, 404)
    assert await snapshot(sessionmaker) == before


async def test_unknown_role_in_a_body_is_a_422_naming_role_id(
    client: httpx.AsyncClient, glob: Admin, sessionmaker: async_sessionmaker[AsyncSession]
) -> None:
    """An id in the body is input, not the address: a role that does not exist is a 422 naming the field."""
    before = await snapshot(sessionmaker)
    response = await client.post(
        "/api/v1/role-assignments",
        json={"name": "A", "role_id": UNKNOWN, "member_ids": [UNKNOWN]},
        headers=glob.headers,
    )
    problem = _problem(response, 422)
    assert [e["location"] for e in problem["errors"]] == ["role_id"], problem
    assert await snapshot(sessionmaker) == before


@pytest.mark.parametrize(
    "path",
    [
        "/api/v1/users/not-a-uuid",
        "/api/v1/users/1",
        "/api/v1/roles/' OR '1'='1",
        "/api/v1/roles/%00",
        f"/api/v1/role-assignments/{UNKNOWN}x",
        "/api/v1/users/" + "a" * 5000,
    ],
    ids=["word", "integer", "sql", "nul", "uuid-plus", "huge"],
)
async def test_non_uuid_path_parameter_names_nothing(
    client: httpx.AsyncClient, glob: Admin, path: str
) -> None:
    """Id parameters take UUIDs only (`{user_id:uuid}`), so a malformed id matches no route: 404, the same
    answer as an unknown id (and a literal segment such as `export.csv` is never taken for an id)."""
    response = await client.get(path, headers=glob.headers)
    problem = _problem(response, 404)
    assert problem["detail"] == "There is nothing at this address."


async def test_assignment_with_unknown_members_or_tags_is_refused(
    client: httpx.AsyncClient, glob: Admin, sessionmaker: async_sessionmaker[AsyncSession]
) -> None:
    before = await snapshot(sessionmaker)
    for payload in (
        {"name": "A", "role_id": str(HELP_DESK_OPERATOR.id), "member_ids": [str(glob.id), UNKNOWN]},
        {
            "name": "A",
            "role_id": str(HELP_DESK_OPERATOR.id),
            "member_ids": [str(glob.id)],
            "scope_all": False,
            "scope_tag_ids": [UNKNOWN],
        },
    ):
        response = await client.post("/api/v1/role-assignments", json=payload, headers=glob.headers)
        _problem(response, 422)
    assert await snapshot(sessionmaker) == before


# ------------------------------------------------------------------------------------------- users
@pytest.mark.parametrize(
    ("first", "second"),
    [
        ("alice@example.com", "alice@example.com"),
        ("alice@example.com", "Alice@Example.com"),
        ("Alice@Example.com", "alice@example.com"),
        ("alice@example.com", "  ALICE@EXAMPLE.COM "),
    ],
    ids=["same", "upper-second", "upper-first", "padded"],
)
async def test_duplicate_email_is_a_conflict_whatever_the_case(
    client: httpx.AsyncClient,
    glob: Admin,
    sessionmaker: async_sessionmaker[AsyncSession],
    first: str,
    second: str,
) -> None:
    created = await client.post("/api/v1/admins", json={"email": first}, headers=glob.headers)
    assert created.status_code == 201, created.text
    assert created.json()["user"]["email"] == first.strip().lower()
    before = await snapshot(sessionmaker)
    response = await client.post("/api/v1/admins", json={"email": second}, headers=glob.headers)
    _problem(response, 409)
    assert await snapshot(sessionmaker) == before


async def test_duplicate_email_of_an_admin_created_outside_the_api_is_a_conflict(
    client: httpx.AsyncClient, factory: Factory, glob: Admin
) -> None:
    await factory.admin(HELP_DESK_OPERATOR.name, email="bob@example.com")
    response = await client.post("/api/v1/admins", json={"email": "BOB@example.COM"}, headers=glob.headers)
    _problem(response, 409)


@pytest.mark.parametrize(
    "password",
    ["short", "elevenchars", "aaaaaaaaaaaaaaaa", "abababababababab", " " * 20, "x" * 1025],
    ids=["short", "eleven", "one-char", "two-chars", "spaces", "too-long"],
)
async def test_weak_password_is_refused(
    client: httpx.AsyncClient, glob: Admin, sessionmaker: async_sessionmaker[AsyncSession], password: str
) -> None:
    before = await snapshot(sessionmaker)
    response = await client.post(
        "/api/v1/admins", json={"email": "weak@example.com", "password": password}, headers=glob.headers
    )
    problem = _problem(response, 422)
    assert password.strip() == "" or password not in response.text
    assert "password" in problem["detail"].lower()
    assert await snapshot(sessionmaker) == before


async def test_good_password_is_accepted_and_never_echoed(client: httpx.AsyncClient, glob: Admin) -> None:
    response = await client.post(
        "/api/v1/admins", json={"email": "good@example.com", "password": PASSWORD}, headers=glob.headers
    )
    assert response.status_code == 201
    assert PASSWORD not in response.text
    assert "password_hash" not in response.text


@pytest.mark.parametrize(
    "email",
    [
        "",
        "plainaddress",
        "@example.com",
        "a@",
        "a b@example.com",
        "a@b@example.com",
        "x" * 65 + "@example.com",
    ],
    ids=["empty", "no-at", "no-local", "no-domain", "space", "two-ats", "long-local"],
)
async def test_invalid_email_is_refused(
    client: httpx.AsyncClient, glob: Admin, sessionmaker: async_sessionmaker[AsyncSession], email: str
) -> None:
    before = await snapshot(sessionmaker)
    response = await client.post("/api/v1/admins", json={"email": email}, headers=glob.headers)
    _problem(response, 422)
    assert await snapshot(sessionmaker) == before


# ------------------------------------------------------------------------------------------- settings
@pytest.mark.parametrize(
    "url",
    [
        "javascript:alert(1)",
        "ftp://files.example.com",
        "http://",
        "https://exa mple.com",
        "//evil.example",
        "example.com",
        "data:text/html,<script>alert(1)</script>",
        "https://" + "a" * 600 + ".example",
    ],
    ids=["javascript", "ftp", "no-host", "space", "scheme-relative", "bare-host", "data", "too-long"],
)
async def test_invalid_support_url_is_refused(
    client: httpx.AsyncClient, glob: Admin, sessionmaker: async_sessionmaker[AsyncSession], url: str
) -> None:
    assert (await client.get("/api/v1/settings", headers=glob.headers)).status_code == 200
    before = await snapshot(sessionmaker)
    response = await client.patch(
        "/api/v1/settings", json={"organization_name": "Changed", "support_url": url}, headers=glob.headers
    )
    problem = _problem(response, 422)
    assert "support_url" in {e["location"] for e in problem["errors"]}
    assert await snapshot(sessionmaker) == before
    assert (await client.get("/api/v1/settings", headers=glob.headers)).json()[
        "organization_name"
    ] != "Changed"


@pytest.mark.parametrize(
    "payload",
    [{"organization_name": ""}, {"organization_name": "   "}, {"support_email": "not-an-email"}],
    ids=["empty-name", "blank-name", "bad-email"],
)
async def test_invalid_settings_values_are_refused(
    client: httpx.AsyncClient,
    glob: Admin,
    sessionmaker: async_sessionmaker[AsyncSession],
    payload: dict[str, str],
) -> None:
    assert (await client.get("/api/v1/settings", headers=glob.headers)).status_code == 200
    before = await snapshot(sessionmaker)
    _problem(await client.patch("/api/v1/settings", json=payload, headers=glob.headers), 422)
    assert await snapshot(sessionmaker) == before


# ------------------------------------------------------------------------------------------- roles and names
@pytest.mark.parametrize(
    "payload",
    [
        {"name": "", "permissions": ["devices:read"]},
        {"name": "   ", "permissions": ["devices:read"]},
        {"name": "n" * 129, "permissions": ["devices:read"]},
        {"name": "R", "permissions": []},
        {"name": "R", "permissions": ["devices:read"] * 201},
        {"name": "R", "description": "d" * 2001, "permissions": ["devices:read"]},
        {"name": "R"},
    ],
    ids=[
        "empty-name",
        "blank-name",
        "long-name",
        "no-permissions",
        "many-permissions",
        "long-description",
        "missing",
    ],
)
async def test_invalid_role_is_refused(
    client: httpx.AsyncClient,
    glob: Admin,
    sessionmaker: async_sessionmaker[AsyncSession],
    payload: dict[str, Any],
) -> None:
    before = await snapshot(sessionmaker)
    _problem(await client.post("/api/v1/roles", json=payload, headers=glob.headers), 422)
    assert await snapshot(sessionmaker) == before


@pytest.mark.parametrize(
    "name",
    [
        "Ärzte & Pflege",
        "日本のヘルプデスク",
        "Help desk 🛟",
        "<script>alert(1)</script>",
        "Robert'); DROP TABLE users;--",
    ],
    ids=["umlaut", "japanese", "emoji", "html", "sql"],
)
async def test_unusual_but_valid_names_round_trip(client: httpx.AsyncClient, glob: Admin, name: str) -> None:
    created = await client.post("/api/v1/scope-tags", json={"name": name}, headers=glob.headers)
    assert created.status_code == 201, created.text
    assert created.json()["name"] == name
    listed = (await client.get("/api/v1/scope-tags", headers=glob.headers)).json()
    assert [t["name"] for t in listed] == [name]


@pytest.mark.parametrize(
    ("method", "path", "payload"),
    [
        ("POST", "/api/v1/scope-tags", {"name": "Paris\u0000"}),
        ("POST", "/api/v1/roles", {"name": "Lock\u0000ers", "permissions": ["remote:lock"]}),
        ("PATCH", "/api/v1/settings", {"organization_name": "Con\u0000toso"}),
        ("POST", "/api/v1/admins", {"email": "nul\u0000@example.com"}),
    ],
    ids=["tag", "role", "settings", "user-email"],
)
async def test_text_with_nul_characters_is_refused_without_change(
    client: httpx.AsyncClient,
    glob: Admin,
    sessionmaker: async_sessionmaker[AsyncSession],
    method: str,
    path: str,
    payload: dict[str, Any],
) -> None:
    assert (await client.get("/api/v1/settings", headers=glob.headers)).status_code == 200
    before = await snapshot(sessionmaker)
    response = await client.request(method, path, json=payload, headers=glob.headers)
    assert response.status_code == 422, response.text
    assert response.headers["content-type"].startswith("application/problem+json")
    assert await snapshot(sessionmaker) == before


async def test_query_parameter_with_nul_character_is_refused(client: httpx.AsyncClient, glob: Admin) -> None:
    for params in ({"search": "a\u0000b"}, {}):
        response = await client.get("/api/v1/users", params=params, headers=glob.headers)
        assert response.status_code == (422 if params else 200), response.text
    response = await client.get("/api/v1/audit-events", params={"actor": "\u0000"}, headers=glob.headers)
    assert response.status_code == 422


# ------------------------------------------------------------------------------------------- fuzz
_counter = itertools.count()

ODD_VALUES: list[Any] = [
    None,
    "",
    "x" * 100_000,
    "\u0000",
    "e\u0301\u202e\u200b\ufeff名前🙂",
    "\ud800",
    -1,
    2**64,
    1e308,
    True,
    [],
    [[["deep", [None]]]],
    {"$ne": 1},
]
ODD_BODIES: list[Any] = [None, [], "", "text", 0, 3.14, True, [[[[[]]]]], {"": None}, [{"a": 1}] * 50]


def _base_bodies(ids: dict[str, str]) -> dict[tuple[str, str], dict[str, Any]]:
    n = next(_counter)
    return {
        ("POST", "/api/v1/users"): {"user_principal_name": f"fuzz{n}@example.com", "display_name": "Fuzz"},
        ("POST", "/api/v1/admins"): {
            "email": f"fuzz{n}@example.com",
            "display_name": "Fuzz",
            "password": PASSWORD,
        },
        ("POST", "/api/v1/licences"): {"name": f"Fuzz {n}", "sku": f"FUZZ-{n}", "seats": 1},
        ("PATCH", "/api/v1/licences/{licence_id}"): {"seats": 2},
        ("POST", "/api/v1/users/{user_id}/licences/{licence_id}"): {},
        ("PATCH", "/api/v1/users/{user_id}"): {"display_name": "Fuzz"},
        ("POST", "/api/v1/users/{user_id}/password-reset"): {},
        ("POST", "/api/v1/roles"): {"name": f"Fuzz {n}", "permissions": ["devices:read"]},
        ("PATCH", "/api/v1/roles/{role_id}"): {"description": "fuzz"},
        ("POST", "/api/v1/role-assignments"): {
            "name": f"Fuzz {n}",
            "role_id": ids["role_id"],
            "member_ids": [ids["user_id"]],
        },
        ("PUT", "/api/v1/role-assignments/{assignment_id}/members"): {"member_ids": [ids["user_id"]]},
        ("POST", "/api/v1/scope-tags"): {"name": f"Fuzz {n}"},
        ("POST", "/api/v1/api-tokens"): {"name": f"fuzz {n}"},
        ("POST", "/api/v1/identity-connections/{connection_id}/scim-token"): {},
        ("PATCH", "/api/v1/settings"): {"organization_name": "Fuzz"},
        # No provider listens on port 9: these reach discovery and its 422, never a server error.
        ("POST", "/api/v1/identity-connections"): {
            "name": f"Fuzz {n}",
            "issuer": "http://127.0.0.1:9",
            "client_id": "fuzz",
            "client_secret": "fuzz",
        },
        ("PATCH", "/api/v1/identity-connections/{connection_id}"): {"name": f"Fuzz {n}"},
        # Device routes: no device is arranged here (tests/devices enrolls real ones), so these reach
        # validation and the 404, not the command logic.
        ("PATCH", "/api/v1/devices/{device_id}"): {"ownership": "company"},
        ("POST", "/api/v1/devices/{device_id}/commands/{command_id}/cancel"): {},
        ("POST", "/api/v1/devices/{device_id}/commands/clear"): {},
        ("POST", "/api/v1/devices/{device_id}/commands/{command_id}/approve"): {"comment": "fuzz"},
        ("POST", "/api/v1/devices/{device_id}/commands/{command_id}/reject"): {"reason": "fuzz reason"},
        ("POST", "/api/v1/devices/bulk-actions"): {"type": "sync", "device_ids": [UNKNOWN]},
        ("POST", "/api/v1/devices/bulk-actions/{bulk_action_id}/cancel"): {},
        ("POST", "/api/v1/enrollment-tokens"): {"name": f"Fuzz {n}", "platforms": ["linux"]},
        ("POST", "/api/v1/enrollment-tokens/{token_id}/revoke"): {},
        # Groups: the group routes reach validation and the 404 (no group arranged); create and the rule
        # preview run for real.
        ("POST", "/api/v1/groups"): {"display_name": f"Fuzz {n}"},
        ("POST", "/api/v1/groups/preview"): {"dynamic_kind": "device", "rule": 'device.displayName -eq "x"'},
        ("POST", "/api/v1/groups/preview/explain"): {
            "dynamic_kind": "user",
            "rule": 'user.displayName -eq "x"',
            "user_id": ids["user_id"],
        },
        ("PATCH", "/api/v1/groups/{group_id}"): {"display_name": "Fuzz"},
        ("POST", "/api/v1/groups/{group_id}/evaluate"): {},
        ("POST", "/api/v1/groups/{group_id}/members"): {"type": "user", "id": ids["user_id"]},
        # Assignments: filters are created and previewed for real; object routes reach validation and the
        # 404 (no policy arranged here: tests/assignments assigns real ones).
        ("POST", "/api/v1/assignment-filters"): {
            "name": f"Fuzz {n}",
            "platform": "windows",
            "rule": 'device.displayName -eq "x"',
        },
        ("POST", "/api/v1/assignment-filters/preview"): {
            "platform": "windows",
            "rule": 'device.displayName -eq "x"',
        },
        ("PATCH", "/api/v1/assignment-filters/{filter_id}"): {"description": "fuzz"},
        ("POST", "/api/v1/assignments/preview"): {
            "platform": "windows",
            "assignments": [{"target": "all_devices"}],
        },
        ("PUT", "/api/v1/compliance-policies/{policy_id}/assignments"): {"assignments": []},
        ("PUT", "/api/v1/configuration-profiles/{profile_id}/assignments"): {"assignments": []},
        # Compliance: policies and templates are created for real; the rest reach validation and the 404.
        ("POST", "/api/v1/compliance-policies"): {
            "name": f"Fuzz {n}",
            "platform": "linux",
            "settings": {"firewall.required": True},
        },
        ("PATCH", "/api/v1/compliance-policies/{policy_id}"): {"description": "fuzz"},
        ("PUT", "/api/v1/devices/{device_id}/compliance/override"): {
            "until": "2099-01-01T00:00:00Z",
            "reason": "fuzz reason",
        },
        ("PATCH", "/api/v1/tenant/compliance-settings"): {"compliance_validity_days": 30},
        ("POST", "/api/v1/notification-templates"): {"name": f"Fuzz {n}", "subject": "s", "body": "b"},
        ("PATCH", "/api/v1/notification-templates/{template_id}"): {"subject": "fuzz"},
        ("POST", "/api/v1/configuration-profiles"): {
            "name": f"Fuzz {n}",
            "platform": "linux",
            "settings": {"login_banner.text": "fuzz"},
        },
        ("PATCH", "/api/v1/configuration-profiles/{profile_id}"): {"description": "fuzz"},
        # Policy as code: a document that creates a profile (dry run or not, odd values must stay 4xx).
        ("POST", "/api/v1/policy-document/apply"): {
            "version": 1,
            "configuration_profiles": [
                {
                    "name": f"Fuzz {n}",
                    "platform": "linux",
                    "settings": {"login_banner.text": "fuzz", "custom.json": {"fuzz": [n]}},
                    "assignments": [{"target": "all_devices"}],
                }
            ],
        },
        # Apple MDM push certificate: a request is made for real; odd certificates must stay 4xx.
        ("POST", "/api/v1/apple/push-certificate/request"): {},
        ("PUT", "/api/v1/apple/push-certificate"): {
            "certificate_pem": "-----BEGIN CERTIFICATE-----\nfuzz\n-----END CERTIFICATE-----",
            "apple_account": "fuzz@example.com",
        },
        **{
            ("POST", info.path): {"reason": "fuzz", "idempotency_key": f"fuzz-{n}"}
            for info in ROUTES
            if info.path.startswith("/api/v1/devices/{device_id}/actions/")
        },
    }


FUZZ_ROUTES = [
    (method, info)
    for info in ROUTES
    if info.path.startswith("/api/v1/")
    for method in sorted(info.methods & {"POST", "PUT", "PATCH"})
]


def test_every_unsafe_api_route_has_a_fuzz_body() -> None:
    """A new POST/PUT/PATCH route must be added to the fuzz below (and so be tried with odd input)."""
    known = set(_base_bodies({"role_id": UNKNOWN, "user_id": UNKNOWN}))
    assert {(method, info.path) for method, info in FUZZ_ROUTES} == known


def _body_fields(info: RouteInfo) -> list[str]:
    fields: list[str] = []
    for param in info.route.dependant.body_params:
        model = param.field_info.annotation
        if isinstance(model, type) and issubclass(model, BaseModel):
            fields.extend(model.model_fields)
    return [*fields, "unexpected_field"]


@pytest.mark.parametrize(("method", "info"), FUZZ_ROUTES, ids=[f"{m} {i.path}" for m, i in FUZZ_ROUTES])
async def test_odd_payloads_never_cause_a_server_error(
    client: httpx.AsyncClient, factory: Factory, method: str, info: RouteInfo
) -> None:
    glob = await factory.admin(GLOBAL_ADMINISTRATOR.name, token=False)
    target = await factory.admin(HELP_DESK_OPERATOR.name, token=False)
    csrf = await portal_csrf(client, glob.email)  # a session, so that POST /api-tokens is exercised too
    headers = {"X-CSRF-Token": csrf}
    role = await client.post(
        "/api/v1/roles", json={"name": "Fuzz target", "permissions": ["remote:lock"]}, headers=headers
    )
    assignment = await client.post(
        "/api/v1/role-assignments",
        json={"name": "Fuzz target", "role_id": role.json()["id"], "member_ids": [str(target.id)]},
        headers=headers,
    )
    ids = {"user_id": str(target.id), "role_id": role.json()["id"], "assignment_id": assignment.json()["id"]}
    # Identifiers this fuzz does not arrange (routes added later) get a random UUID: the payloads still run.
    path = info.path.format_map(collections.defaultdict(lambda: UNKNOWN, ids))

    payloads: list[Any] = list(ODD_BODIES)
    for field in _body_fields(info):
        for value in ODD_VALUES:
            base = _base_bodies(ids).get((method, info.path), {})  # unknown route: see the test above
            payloads.append({**base, field: value})
    statuses = set()
    for payload in payloads:
        # Encoded here (ASCII escapes) so that lone surrogates travel as the JSON text a client could send.
        response = await client.request(
            method, path, content=json.dumps(payload), headers={**headers, "Content-Type": "application/json"}
        )
        assert response.status_code < 500, f"{method} {path} with {str(payload)[:200]}: {response.text[:500]}"
        statuses.add(response.status_code)
    if info.route.dependant.body_params:
        assert statuses - {200, 201}, "odd payloads were all accepted"
