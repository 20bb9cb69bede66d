"""/api/v1/groups: create, read, list, rename, delete; validation and rule errors with their position;
permissions; an audit event for every change."""

from __future__ import annotations

import uuid

import httpx
import pytest
from sqlalchemy import insert
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from corral.models import RoleAssignment, role_assignment_member_groups, role_assignment_scope_groups
from corral.rbac.roles import HELP_DESK_OPERATOR, READ_ONLY_OPERATOR
from tests.conftest import Factory, audit_rows
from tests.groups.helpers import create_group, dynamic_group, insert_devices
from tests.test_rbac_api import admin_with_assignment, create_role


async def test_assigned_group_is_created_read_renamed_and_deleted_with_an_audit_event_each(
    client: httpx.AsyncClient, factory: Factory, sessionmaker: async_sessionmaker[AsyncSession]
) -> None:
    admin = await factory.admin()
    group = await create_group(client, admin, "Berlin office", description="Everyone in Berlin")
    assert group["membership_type"] == "assigned" and group["source"] == "local"
    assert group["members"] == {"users": 0, "devices": 0, "groups": 0} and group["evaluation"] is None

    detail = await client.get(f"/api/v1/groups/{group['id']}", headers=admin.headers)
    assert detail.status_code == 200
    assert detail.json()["description"] == "Everyone in Berlin" and detail.json()["parents"] == []

    renamed = await client.patch(
        f"/api/v1/groups/{group['id']}", json={"display_name": "Berlin"}, headers=admin.headers
    )
    assert renamed.status_code == 200 and renamed.json()["display_name"] == "Berlin"
    deleted = await client.delete(f"/api/v1/groups/{group['id']}", headers=admin.headers)
    assert deleted.status_code == 204
    assert (await client.get(f"/api/v1/groups/{group['id']}", headers=admin.headers)).status_code == 404

    events = await audit_rows(sessionmaker, target_id=group["id"])
    assert [e.activity for e in events] == ["group.create", "group.update", "group.delete"]
    assert {"name": "display_name", "old": "Berlin office", "new": "Berlin"} in events[1].modified_properties
    assert all(e.actor_id == admin.id for e in events)


async def test_dynamic_group_is_evaluated_on_create(
    client: httpx.AsyncClient, factory: Factory, sessionmaker: async_sessionmaker[AsyncSession]
) -> None:
    admin = await factory.admin()
    await insert_devices(sessionmaker, [{"platform": "ios"}, {"platform": "ios"}, {"platform": "android"}])
    group = await dynamic_group(client, admin, "iPhones", 'device.deviceOSType -eq "iOS"')
    assert group["members"]["devices"] == 2 and group["evaluated_at"] is not None
    assert group["evaluation"]["added"] == 2 and group["evaluation"]["removed"] == 0
    (event,) = await audit_rows(sessionmaker, target_id=group["id"])
    assert event.detail.startswith("Evaluated: 2 added, 0 removed; 2 members")


@pytest.mark.parametrize(
    ("body", "fragment"),
    [
        ({"membership_type": "dynamic", "rule": 'device.displayName -eq "x"'}, "dynamic_kind"),
        (
            {"membership_type": "dynamic", "dynamic_kind": "device"},
            "dynamic_kind (user or device) and a rule",
        ),
        ({"dynamic_kind": "device", "rule": 'device.displayName -eq "x"'}, "an assigned group has no"),
        ({"membership_type": "static"}, "membership_type"),
        ({"display_name": ""}, "display_name"),
        ({"display_name": "x" * 257}, "display_name"),
        ({"colour": "blue"}, "colour"),
    ],
)
async def test_invalid_group_bodies_are_refused_with_422(
    client: httpx.AsyncClient, factory: Factory, body: dict[str, object], fragment: str
) -> None:
    admin = await factory.admin()
    response = await client.post("/api/v1/groups", json={"display_name": "G", **body}, headers=admin.headers)
    assert response.status_code == 422, response.text
    assert fragment in response.text


async def test_invalid_rule_is_refused_with_its_position_line_column_and_excerpt(
    client: httpx.AsyncClient, factory: Factory
) -> None:
    admin = await factory.admin()
    response = await client.post(
        "/api/v1/groups",
        json={
            "display_name": "Typo",
            "membership_type": "dynamic",
            "dynamic_kind": "device",
            "rule": '(device.deviceOSTyp -eq "iOS")',
        },
        headers=admin.headers,
    )
    assert response.status_code == 422
    assert response.headers["content-type"].startswith("application/problem+json")
    body = response.json()
    assert body["detail"] == (
        "The rule can't be used: Unknown property device.deviceOSTyp at column 2; did you mean deviceOSType?"
    )
    (error,) = body["errors"]
    assert error["location"] == "rule" and error["type"] == "rule_error"
    assert (error["offset"], error["line"], error["column"], error["length"]) == (1, 1, 2, 18)
    assert error["excerpt"] == '(device.deviceOSTyp -eq "iOS")\n ^^^^^^^^^^^^^^^^^^'
    assert error["hint"] == "did you mean deviceOSType?"
    listed = await client.get("/api/v1/groups", headers=admin.headers)
    assert listed.json()["total"] == 0


async def test_multi_line_rule_error_names_the_line(client: httpx.AsyncClient, factory: Factory) -> None:
    admin = await factory.admin()
    response = await client.post(
        "/api/v1/groups",
        json={
            "display_name": "Two lines",
            "membership_type": "dynamic",
            "dynamic_kind": "device",
            "rule": 'device.deviceOSType -eq "iOS"\n-and device.deviceModel -startsWith 9',
        },
        headers=admin.headers,
    )
    assert response.status_code == 422
    (error,) = response.json()["errors"]
    assert (error["line"], error["column"]) == (2, 37)
    assert "line 2, column 37" in error["message"]


async def test_device_rule_using_user_properties_is_refused(
    client: httpx.AsyncClient, factory: Factory
) -> None:
    admin = await factory.admin()
    response = await client.post(
        "/api/v1/groups",
        json={
            "display_name": "Mixed",
            "membership_type": "dynamic",
            "dynamic_kind": "device",
            "rule": 'user.department -eq "Sales"',
        },
        headers=admin.headers,
    )
    assert response.status_code == 422 and response.json()["errors"][0]["column"] == 1


async def test_user_rule_on_an_attribute_corral_does_not_record_is_refused(
    client: httpx.AsyncClient, factory: Factory
) -> None:
    admin = await factory.admin()
    response = await client.post(
        "/api/v1/groups",
        json={
            "display_name": "Cities",
            "membership_type": "dynamic",
            "dynamic_kind": "user",
            "rule": 'user.city -eq "Berlin"',
        },
        headers=admin.headers,
    )
    assert response.status_code == 422
    assert "Corral doesn't record it yet" in response.json()["detail"]


async def test_changing_the_rule_re_evaluates_and_audits_old_and_new_rule(
    client: httpx.AsyncClient, factory: Factory, sessionmaker: async_sessionmaker[AsyncSession]
) -> None:
    admin = await factory.admin()
    await insert_devices(
        sessionmaker, [{"platform": "ios"}, {"platform": "android"}, {"platform": "android"}]
    )
    group = await dynamic_group(client, admin, "Phones", 'device.deviceOSType -eq "iOS"')
    changed = await client.patch(
        f"/api/v1/groups/{group['id']}",
        json={"rule": 'device.deviceOSType -eq "Android"'},
        headers=admin.headers,
    )
    assert changed.status_code == 200, changed.text
    body = changed.json()
    assert body["members"]["devices"] == 2
    assert (body["evaluation"]["added"], body["evaluation"]["removed"]) == (2, 1)
    update = (await audit_rows(sessionmaker, target_id=group["id"], activity="group.update"))[0]
    assert {
        "name": "rule",
        "old": 'device.deviceOSType -eq "iOS"',
        "new": 'device.deviceOSType -eq "Android"',
    } in update.modified_properties
    bad = await client.patch(
        f"/api/v1/groups/{group['id']}", json={"rule": "device.deviceOSType -eq"}, headers=admin.headers
    )
    assert bad.status_code == 422 and bad.json()["errors"][0]["column"] == 24


async def test_assigned_group_takes_no_rule(client: httpx.AsyncClient, factory: Factory) -> None:
    admin = await factory.admin()
    group = await create_group(client, admin, "Hand-picked")
    response = await client.patch(
        f"/api/v1/groups/{group['id']}", json={"rule": 'device.displayName -eq "x"'}, headers=admin.headers
    )
    assert response.status_code == 422 and "assigned group has no rule" in response.json()["detail"]


async def test_evaluate_on_demand_reports_changes_and_is_audited(
    client: httpx.AsyncClient, factory: Factory, sessionmaker: async_sessionmaker[AsyncSession]
) -> None:
    admin = await factory.admin()
    group = await dynamic_group(client, admin, "Macs", 'device.deviceOSType -eq "macOS"')
    await insert_devices(sessionmaker, [{"platform": "macos"}] * 3)  # inserted behind Corral's back
    response = await client.post(f"/api/v1/groups/{group['id']}/evaluate", headers=admin.headers)
    assert response.status_code == 200, response.text
    assert (response.json()["added"], response.json()["members"]) == (3, 3)
    again = (await client.post(f"/api/v1/groups/{group['id']}/evaluate", headers=admin.headers)).json()
    assert (again["added"], again["removed"], again["members"]) == (0, 0, 3)
    events = await audit_rows(sessionmaker, target_id=group["id"], activity="group.evaluate")
    assert len(events) == 2 and events[0].detail.startswith("Evaluated: 3 added")
    assigned = await create_group(client, admin, "Plain")
    refused = await client.post(f"/api/v1/groups/{assigned['id']}/evaluate", headers=admin.headers)
    assert refused.status_code == 409 and "no rule" in refused.json()["detail"]


@pytest.mark.parametrize("usage", ["members", "scope"])
async def test_group_used_by_a_role_assignment_cannot_be_deleted(
    client: httpx.AsyncClient,
    factory: Factory,
    sessionmaker: async_sessionmaker[AsyncSession],
    usage: str,
) -> None:
    admin = await factory.admin()
    group = await create_group(client, admin, "Help desk staff")
    table = role_assignment_member_groups if usage == "members" else role_assignment_scope_groups
    async with sessionmaker() as session:
        assignment = RoleAssignment(
            id=uuid.uuid4(), name="Berlin help desk", role_id=HELP_DESK_OPERATOR.id, scope_all=True
        )
        session.add(assignment)
        await session.flush()
        await session.execute(
            insert(table).values(role_assignment_id=assignment.id, group_id=uuid.UUID(group["id"]))
        )
        await session.commit()
    refused = await client.delete(f"/api/v1/groups/{group['id']}", headers=admin.headers)
    assert refused.status_code == 409
    assert "used by 1 role assignment(s): Berlin help desk" in refused.json()["detail"]
    detail = (await client.get(f"/api/v1/groups/{group['id']}", headers=admin.headers)).json()
    assert detail["role_assignments"] == [
        {"id": str(assignment.id), "name": "Berlin help desk", "usage": usage}
    ]
    assert not await audit_rows(sessionmaker, target_id=group["id"], activity="group.delete")


async def test_list_searches_filters_and_pages_with_a_cursor(
    client: httpx.AsyncClient, factory: Factory
) -> None:
    admin = await factory.admin()
    for name in ("beta", "Alpha", "gamma", "alpha 2", "Delta"):
        await create_group(client, admin, name)
    await dynamic_group(client, admin, "Alpha dynamic", 'device.displayName -startsWith "a"')
    names: list[str] = []
    cursor = None
    while True:
        params: dict[str, object] = {"limit": 2, **({"cursor": cursor} if cursor else {})}
        page = (await client.get("/api/v1/groups", params=params, headers=admin.headers)).json()
        assert page["total"] == 6
        names.extend(g["display_name"] for g in page["items"])
        cursor = page["next_cursor"]
        if not cursor:
            break
    assert names == ["Alpha", "alpha 2", "Alpha dynamic", "beta", "Delta", "gamma"]
    found = (await client.get("/api/v1/groups", params={"search": "ALPHA"}, headers=admin.headers)).json()
    assert [g["display_name"] for g in found["items"]] == ["Alpha", "alpha 2", "Alpha dynamic"]
    dynamic = await client.get("/api/v1/groups", params={"membership_type": "dynamic"}, headers=admin.headers)
    assert [g["display_name"] for g in dynamic.json()["items"]] == ["Alpha dynamic"]
    scim = await client.get("/api/v1/groups", params={"source": "scim"}, headers=admin.headers)
    assert scim.json()["total"] == 0
    bad = await client.get("/api/v1/groups", params={"cursor": "not-a-cursor"}, headers=admin.headers)
    assert bad.status_code == 400


async def test_anonymous_callers_get_401(client: httpx.AsyncClient) -> None:
    for method, path in (
        ("GET", "/api/v1/groups"),
        ("POST", "/api/v1/groups"),
        ("POST", "/api/v1/groups/preview"),
        ("GET", f"/api/v1/groups/{uuid.uuid4()}/members"),
    ):
        response = await client.request(method, path, json={} if method == "POST" else None)
        assert response.status_code == 401, (method, path)


async def test_read_only_operator_reads_groups_but_cannot_change_them(
    client: httpx.AsyncClient, factory: Factory, sessionmaker: async_sessionmaker[AsyncSession]
) -> None:
    admin = await factory.admin()
    reader = await factory.admin(READ_ONLY_OPERATOR.name)
    group = await create_group(client, admin, "Finance")
    assert (await client.get(f"/api/v1/groups/{group['id']}", headers=reader.headers)).status_code == 200
    for method, path, body in (
        ("POST", "/api/v1/groups", {"display_name": "Mine"}),
        ("PATCH", f"/api/v1/groups/{group['id']}", {"display_name": "Mine"}),
        ("DELETE", f"/api/v1/groups/{group['id']}", None),
        ("POST", f"/api/v1/groups/{group['id']}/members", {"type": "user", "id": str(reader.id)}),
        ("POST", f"/api/v1/groups/{group['id']}/evaluate", None),
    ):
        response = await client.request(method, path, json=body, headers=reader.headers)
        assert response.status_code == 403, (method, path, response.text)
        assert "groups:write" in response.json()["detail"]
    refusals = await audit_rows(sessionmaker, activity="access.denied")
    assert len(refusals) == 5


async def test_admin_without_groups_read_is_refused(
    client: httpx.AsyncClient, factory: Factory, sessionmaker: async_sessionmaker[AsyncSession]
) -> None:
    admin = await factory.admin()
    role = await create_role(client, admin, "Device reader", ["devices:read"])
    reader = await admin_with_assignment(client, factory, sessionmaker, admin, role["id"])
    response = await client.get("/api/v1/groups", headers=reader.headers)
    assert response.status_code == 403 and "groups:read" in response.json()["detail"]
    preview = await client.post(
        "/api/v1/groups/preview",
        json={"dynamic_kind": "device", "rule": 'device.displayName -eq "x"'},
        headers=reader.headers,
    )
    assert preview.status_code == 403
