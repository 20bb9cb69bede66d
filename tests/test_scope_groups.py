"""Role assignments limited to scope groups: the users and devices an administrator may find, open and act
on are the members of the groups (nested ones too) and devices whose primary user is one, filtered in SQL;
everything else is "not found", including in bulk actions; nobody grants beyond their own scope."""

from __future__ import annotations

import re
import uuid
from dataclasses import dataclass
from typing import Any

import httpx
from sqlalchemy import update
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from corral.models import Device
from tests.conftest import Admin, Factory, issue_token, portal_csrf, sign_in
from tests.devices.device import TestDevice
from tests.devices.test_enrollment_and_checkin import enrolled
from tests.groups.helpers import add, create_group, remove


async def role_id(client: httpx.AsyncClient, admin: Admin, name: str) -> str:
    roles = (await client.get("/api/v1/roles", headers=admin.headers)).json()
    return str(next(r["id"] for r in roles if r["name"] == name))


async def custom_role(client: httpx.AsyncClient, admin: Admin, permissions: list[str]) -> str:
    response = await client.post(
        "/api/v1/roles",
        json={"name": f"role {uuid.uuid4().hex[:6]}", "permissions": permissions},
        headers=admin.headers,
    )
    assert response.status_code == 201, response.text
    return str(response.json()["id"])


async def assign(
    client: httpx.AsyncClient, admin: Admin, role: str, member: uuid.UUID, **scope: Any
) -> httpx.Response:
    return await client.post(
        "/api/v1/role-assignments",
        json={
            "name": f"assignment {uuid.uuid4().hex[:6]}",
            "role_id": role,
            "member_ids": [str(member)],
            **scope,
        },
        headers=admin.headers,
    )


async def scoped_admin(
    client: httpx.AsyncClient,
    factory: Factory,
    sessionmaker: async_sessionmaker[AsyncSession],
    admin: Admin,
    role: str,
    **scope: Any,
) -> Admin:
    person = await factory.admin(None, token=False)
    response = await assign(client, admin, role, person.id, **scope)
    assert response.status_code == 201, response.text
    person.token = await issue_token(sessionmaker, person.id)
    return person


async def set_primary_user(
    sessionmaker: async_sessionmaker[AsyncSession], device: TestDevice, user_id: uuid.UUID
) -> None:
    async with sessionmaker() as session:
        await session.execute(
            update(Device).where(Device.id == uuid.UUID(device.device_id)).values(user_id=user_id)
        )
        await session.commit()


@dataclass
class Paris:
    """Paris (assigned): device ``direct``, user ``resident`` (primary user of ``users_phone``) and the nested
    group Paris East holding ``nested``. Outside: ``lyon_device`` and ``outsider``."""

    group: str
    east: str
    direct: TestDevice
    users_phone: TestDevice
    nested: TestDevice
    lyon_device: TestDevice
    resident: uuid.UUID
    outsider: uuid.UUID


async def paris(
    client: httpx.AsyncClient, factory: Factory, sessionmaker: async_sessionmaker[AsyncSession], admin: Admin
) -> Paris:
    group = (await create_group(client, admin, "Paris"))["id"]
    east = (await create_group(client, admin, "Paris East"))["id"]
    assert (await add(client, admin, group, "group", east)).status_code in (200, 201)
    direct, users_phone, nested, lyon_device = [await enrolled(client, admin) for _ in range(4)]
    resident, outsider = await factory.user(), await factory.user()
    await set_primary_user(sessionmaker, users_phone, resident)
    for target, kind, member in (
        (group, "device", direct.device_id),
        (group, "user", resident),
        (east, "device", nested.device_id),
    ):
        assert (await add(client, admin, target, kind, member)).status_code in (200, 201)
    return Paris(group, east, direct, users_phone, nested, lyon_device, resident, outsider)


async def listed_devices(client: httpx.AsyncClient, admin: Admin, **params: Any) -> set[str]:
    response = await client.get("/api/v1/devices", params={"limit": 200, **params}, headers=admin.headers)
    assert response.status_code == 200, response.text
    return {d["id"] for d in response.json()["items"]}


async def test_help_desk_scoped_to_paris_finds_opens_and_acts_only_on_paris(
    client: httpx.AsyncClient, factory: Factory, sessionmaker: async_sessionmaker[AsyncSession]
) -> None:
    admin = await factory.admin("Global administrator")
    p = await paris(client, factory, sessionmaker, admin)
    helpdesk = await scoped_admin(
        client,
        factory,
        sessionmaker,
        admin,
        await role_id(client, admin, "Help desk operator"),
        scope_group_ids=[p.group],
    )
    inside = {p.direct.device_id, p.users_phone.device_id, p.nested.device_id}
    # Find: the list, search and CSV export are filtered in SQL.
    assert await listed_devices(client, helpdesk) == inside
    assert await listed_devices(client, admin) == inside | {p.lyon_device.device_id}
    assert await listed_devices(client, helpdesk, search=p.lyon_device.name) == set()
    csv = await client.get("/api/v1/devices/export.csv", headers=helpdesk.headers)
    assert csv.status_code == 200 and p.direct.name in csv.text and p.lyon_device.name not in csv.text
    # Open: outside is "not found", like a device that does not exist.
    for device in (p.direct, p.users_phone, p.nested):
        assert (
            await client.get(f"/api/v1/devices/{device.device_id}", headers=helpdesk.headers)
        ).status_code == 200
    outside = await client.get(f"/api/v1/devices/{p.lyon_device.device_id}", headers=helpdesk.headers)
    assert outside.status_code == 404 and outside.json()["detail"] == "No such device."
    # Act: a lock inside is queued; outside 404 and nothing queued.
    lock = {"params": {"message": "Call the help desk"}, "reason": "Ticket 1"}
    inside_lock = await client.post(
        f"/api/v1/devices/{p.nested.device_id}/actions/lock", json=lock, headers=helpdesk.headers
    )
    assert inside_lock.status_code == 202, inside_lock.text
    outside_lock = await client.post(
        f"/api/v1/devices/{p.lyon_device.device_id}/actions/lock", json=lock, headers=helpdesk.headers
    )
    assert outside_lock.status_code == 404
    assert (await p.lyon_device.checkin({})).json()["commands"] == []
    wipe = await client.post(
        f"/api/v1/devices/{p.lyon_device.device_id}/actions/wipe",
        json={"reason": "Stolen laptop", "confirm": p.lyon_device.name},
        headers=helpdesk.headers,
    )
    assert wipe.status_code == 404

    # Bulk: by ids, the outside device is skipped as "not found"; by filter, only Paris is selected.
    by_ids = await client.post(
        "/api/v1/devices/bulk-actions",
        json={"type": "sync", "device_ids": [p.direct.device_id, p.lyon_device.device_id]},
        headers=helpdesk.headers,
    )
    assert by_ids.status_code == 201, by_ids.text
    body = by_ids.json()
    assert [i["device_id"] for i in body["items"]] == [p.direct.device_id]
    assert [(s["device_id"], s["device_name"], s["reason"]) for s in body["skipped"]] == [
        (p.lyon_device.device_id, None, "No such device.")
    ]
    by_filter = await client.post(
        "/api/v1/devices/bulk-actions", json={"type": "sync", "filter": {}}, headers=helpdesk.headers
    )
    assert by_filter.status_code == 201, by_filter.text
    assert {i["device_id"] for i in by_filter.json()["items"]} == inside
    assert (await p.lyon_device.checkin({})).json()["commands"] == []

    # Users: only members of Paris (nested groups included); others are not found.
    users = await client.get("/api/v1/users", params={"limit": 200}, headers=helpdesk.headers)
    assert users.status_code == 200 and {u["id"] for u in users.json()["items"]} == {str(p.resident)}
    assert (await client.get(f"/api/v1/users/{p.resident}", headers=helpdesk.headers)).status_code == 200
    assert (await client.get(f"/api/v1/users/{p.outsider}", headers=helpdesk.headers)).status_code == 404

    # The dashboard counts the users they reach.
    assert (await sign_in(client, helpdesk.email)).status_code == 303
    dashboard = (await client.get("/portal")).text
    tile = re.search(r'tile-label">Users</span>\s*<span class="tile-value">([\d,]+)<', dashboard)
    assert tile is not None and tile.group(1) == "1"

    # Membership changes apply at once: out of the group, out of reach.
    assert (await remove(client, admin, p.east, "device", p.nested.device_id)).status_code in (200, 204)
    gone = await client.get(f"/api/v1/devices/{p.nested.device_id}", headers=helpdesk.headers)
    assert gone.status_code == 404


async def test_scope_groups_and_scope_tags_of_one_assignment_both_apply(
    client: httpx.AsyncClient, factory: Factory, sessionmaker: async_sessionmaker[AsyncSession]
) -> None:
    admin = await factory.admin("Global administrator")
    tag = (await client.post("/api/v1/scope-tags", json={"name": "Kiosks"}, headers=admin.headers)).json()[
        "id"
    ]
    group = (await create_group(client, admin, "Paris"))["id"]
    tagged_in = await enrolled(client, admin, scope_tag_ids=[tag])
    untagged_in = await enrolled(client, admin)
    tagged_out = await enrolled(client, admin, scope_tag_ids=[tag])
    for device in (tagged_in, untagged_in):
        assert (await add(client, admin, group, "device", device.device_id)).status_code in (200, 201)
    viewer = await scoped_admin(
        client,
        factory,
        sessionmaker,
        admin,
        await role_id(client, admin, "Read-only operator"),
        scope_all=False,
        scope_tag_ids=[tag],
        scope_group_ids=[group],
    )
    assert await listed_devices(client, viewer) == {tagged_in.device_id}
    assert (
        await client.get(f"/api/v1/devices/{tagged_out.device_id}", headers=viewer.headers)
    ).status_code == 404
    me = (await client.get("/api/v1/me", headers=viewer.headers)).json()
    assert me["permissions"]["devices:read"]["reaches"] == [
        {"scope_tag_ids": [tag], "scope_group_ids": [group]}
    ]


async def test_nobody_grants_beyond_their_scope_groups_nor_widens_them(
    client: httpx.AsyncClient, factory: Factory, sessionmaker: async_sessionmaker[AsyncSession]
) -> None:
    admin = await factory.admin("Global administrator")
    p = await paris(client, factory, sessionmaker, admin)
    lyon = (await create_group(client, admin, "Lyon"))["id"]
    delegator_role = await custom_role(
        client,
        admin,
        ["roles:read", "roles:assign", "devices:read", "remote:lock", "groups:read", "groups:write"],
    )
    delegator = await scoped_admin(
        client, factory, sessionmaker, admin, delegator_role, scope_group_ids=[p.group]
    )
    lock_role = await custom_role(client, admin, ["devices:read", "remote:lock"])
    someone = (await factory.admin(None, token=False)).id
    everywhere = await assign(client, delegator, lock_role, someone)
    assert everywhere.status_code == 403 and "remote:lock" in everywhere.json()["detail"]
    assert (await assign(client, delegator, lock_role, someone, scope_group_ids=[lyon])).status_code == 403
    assert (
        await assign(client, delegator, lock_role, someone, scope_group_ids=[p.group, lyon])
    ).status_code == 403
    narrower = await assign(client, delegator, lock_role, someone, scope_group_ids=[p.east])
    assert narrower.status_code == 201, narrower.text
    assert [g["display_name"] for g in narrower.json()["scope_groups"]] == ["Paris East"]
    unknown = await assign(client, admin, lock_role, someone, scope_group_ids=[str(uuid.uuid4())])
    assert unknown.status_code == 422 and "scope groups" in unknown.json()["detail"]

    # Widening their own scope group (nesting a group in it, or in one nested in it) is refused.
    for target in (p.group, p.east):
        nesting = await add(client, delegator, target, "group", lyon)
        assert nesting.status_code == 403 and "widen your own scope" in nesting.json()["detail"]
    # A device outside their reach can't be added to a group either (it is not found for them).
    pulled = await add(client, delegator, p.group, "device", p.lyon_device.device_id)
    assert pulled.status_code == 404
    assert (
        await client.get(f"/api/v1/devices/{p.lyon_device.device_id}", headers=delegator.headers)
    ).status_code == 404
    # The unscoped administrator can.
    assert (await add(client, admin, p.group, "group", lyon)).status_code in (200, 201)


# ------------------------------------------------------------------------------------------- who can?
async def who_can(
    client: httpx.AsyncClient, admin: Admin, device: TestDevice, action: str = "wipe"
) -> httpx.Response:
    return await client.get(f"/api/v1/devices/{device.device_id}/who-can/{action}", headers=admin.headers)


async def test_who_can_wipe_this_device_follows_roles_groups_and_scopes(
    client: httpx.AsyncClient, factory: Factory, sessionmaker: async_sessionmaker[AsyncSession]
) -> None:
    admin = await factory.admin("Global administrator")
    p = await paris(client, factory, sessionmaker, admin)
    help_desk = await role_id(client, admin, "Help desk operator")
    direct = await scoped_admin(client, factory, sessionmaker, admin, help_desk, scope_group_ids=[p.group])
    # Through a member group nested in another: the "Desk staff" group holds the role over Paris.
    staff, staff_inner = (
        (await create_group(client, admin, "Desk staff"))["id"],
        (await create_group(client, admin, "Desk staff Paris"))["id"],
    )
    assert (await add(client, admin, staff, "group", staff_inner)).status_code in (200, 201)
    via_group = await factory.admin(None, token=False)
    assert (await add(client, admin, staff_inner, "user", via_group.id)).status_code in (200, 201)
    through_group = await client.post(
        "/api/v1/role-assignments",
        json={
            "name": "Paris desk",
            "role_id": help_desk,
            "member_group_ids": [staff],
            "scope_group_ids": [p.group],
        },
        headers=admin.headers,
    )
    assert through_group.status_code == 201, through_group.text
    await scoped_admin(
        client, factory, sessionmaker, admin, await role_id(client, admin, "Read-only operator")
    )  # can read, cannot wipe: not listed
    disabled = await scoped_admin(client, factory, sessionmaker, admin, help_desk)
    assert (
        await client.patch(f"/api/v1/users/{disabled.id}", json={"enabled": False}, headers=admin.headers)
    ).status_code == 200

    inside = await who_can(client, admin, p.nested)
    assert inside.status_code == 200, inside.text
    body = inside.json()
    assert (body["action"], body["permission"], body["approval_required"]) == ("wipe", "remote:wipe", False)
    names = {h["user_principal_name"]: h["via"] for h in body["holders"]}
    assert set(names) == {admin.email, direct.email, via_group.email}
    assert names[via_group.email] == ["Help desk operator (Paris desk)"]
    assert names[admin.email][0].startswith("Global administrator (")
    outside = (await who_can(client, admin, p.lyon_device)).json()
    assert {h["user_principal_name"] for h in outside["holders"]} == {admin.email}

    # Leaving the group takes the right away; the answer follows at once.
    assert (await remove(client, admin, staff_inner, "user", via_group.id)).status_code in (200, 204)
    again = (await who_can(client, admin, p.nested)).json()
    assert {h["user_principal_name"] for h in again["holders"]} == {admin.email, direct.email}

    # With approvals on, who could approve is listed too.
    assert (
        await client.patch("/api/v1/settings", json={"wipe_requires_approval": True}, headers=admin.headers)
    ).status_code == 200
    approving = (await who_can(client, admin, p.nested)).json()
    assert approving["approval_required"] is True
    assert {h["user_principal_name"] for h in approving["approvers"]} == {admin.email}
    lock = (await who_can(client, admin, p.nested, "lock")).json()
    assert (
        lock["permission"] == "remote:lock" and lock["approval_required"] is False and lock["approvers"] == []
    )

    # Asking needs roles:read, the device in your read scope, and a real action.
    assert (await who_can(client, direct, p.nested)).status_code == 403  # the help desk has no roles:read
    auditor = await scoped_admin(
        client,
        factory,
        sessionmaker,
        admin,
        await custom_role(client, admin, ["roles:read", "devices:read"]),
        scope_group_ids=[p.group],
    )
    assert (await who_can(client, auditor, p.nested)).status_code == 200
    assert (await who_can(client, auditor, p.lyon_device)).status_code == 404
    unknown = await who_can(client, admin, p.nested, "explode")
    assert unknown.status_code == 404 and "explode" in unknown.json()["detail"]

    # The admin center page answers the same question.
    assert (await sign_in(client, admin.email)).status_code == 303
    page = await client.get(f"/portal/devices/{p.nested.device_id}/who-can?action=wipe")
    assert page.status_code == 200, page.text
    assert via_group.email not in page.text and direct.email in page.text and "Paris desk" not in page.text
    assert "Who could approve it: 1" in page.text
    lock_page = await client.get(f"/portal/devices/{p.nested.device_id}/who-can?action=lock")
    assert lock_page.status_code == 200 and "Who could approve" not in lock_page.text
    detail = await client.get(f"/portal/devices/{p.nested.device_id}")
    assert f"/portal/devices/{p.nested.device_id}/who-can?action=wipe" in detail.text


# ------------------------------------------------------------------------------------------- admin center
async def test_the_assignment_form_takes_member_groups_and_scope_groups(
    client: httpx.AsyncClient, factory: Factory, sessionmaker: async_sessionmaker[AsyncSession]
) -> None:
    admin = await factory.admin("Global administrator")
    staff = (await create_group(client, admin, "Desk staff"))["id"]
    paris_group = (await create_group(client, admin, "Paris"))["id"]
    help_desk = await role_id(client, admin, "Help desk operator")
    csrf = await portal_csrf(client, admin.email)
    form = await client.get("/portal/role-assignments/new")
    assert (
        form.status_code == 200
        and 'name="member_group_ids"' in form.text
        and 'name="scope_group_ids"' in form.text
    )

    base = {"csrf_token": csrf, "name": "Paris desk", "role_id": help_desk, "scope": "all"}
    # "Only members of these groups" with none ticked: refused, nothing created.
    refused = await client.post(
        "/portal/role-assignments/new", data={**base, "member_group_ids": staff, "groups": "some"}
    )
    assert refused.status_code == 422 and "at least one scope group" in refused.text
    listed = (await client.get("/api/v1/role-assignments", headers=admin.headers)).json()
    assert all(a["name"] != "Paris desk" for a in listed)

    created = await client.post(
        "/portal/role-assignments/new",
        data={**base, "member_group_ids": staff, "groups": "some", "scope_group_ids": paris_group},
    )
    assert created.status_code == 303, created.text
    stored = next(
        a
        for a in (await client.get("/api/v1/role-assignments", headers=admin.headers)).json()
        if a["name"] == "Paris desk"
    )
    assert [g["id"] for g in stored["member_groups"]] == [staff] and stored["members"] == []
    assert [g["id"] for g in stored["scope_groups"]] == [paris_group] and stored["scope_all"] is True
    page = await client.get("/portal/role-assignments")
    assert "Desk staff (group)" in page.text and "Users and devices in:" in page.text


async def test_a_global_administrator_limited_to_groups_does_not_count_as_the_last_unscoped_one(
    client: httpx.AsyncClient, factory: Factory, sessionmaker: async_sessionmaker[AsyncSession]
) -> None:
    admin = await factory.admin("Global administrator")
    group = (await create_group(client, admin, "Paris"))["id"]
    global_role = await role_id(client, admin, "Global administrator")
    await scoped_admin(client, factory, sessionmaker, admin, global_role, scope_group_ids=[group])
    own = next(
        a
        for a in (await client.get("/api/v1/role-assignments", headers=admin.headers)).json()
        if [m["id"] for m in a["members"]] == [str(admin.id)]
    )
    refused = await client.delete(f"/api/v1/role-assignments/{own['id']}", headers=admin.headers)
    assert refused.status_code == 409 and "last Global administrator" in refused.json()["detail"]
