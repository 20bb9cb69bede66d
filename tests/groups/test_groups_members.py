"""Members of assigned groups: users, devices and nested groups; no cycles, not even from two concurrent
requests; direct and transitive listings; dynamic and provisioned groups refuse manual changes."""

from __future__ import annotations

import asyncio
import itertools
import uuid

import httpx
from sqlalchemy import insert, select, update
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from corral.models import Group, IdentityConnection, device_scope_tags, group_children
from corral.rbac.roles import SERVICE_ADMINISTRATOR
from tests.conftest import Factory, audit_rows, new_client
from tests.groups.helpers import (
    add,
    create_group,
    dynamic_group,
    insert_devices,
    member_ids,
    remove,
)
from tests.test_rbac_api import admin_with_assignment, create_role, create_tag


async def test_users_devices_and_groups_are_added_listed_and_removed_with_audit_events(
    client: httpx.AsyncClient, factory: Factory, sessionmaker: async_sessionmaker[AsyncSession]
) -> None:
    admin = await factory.admin()
    alice = await factory.admin(None, email="alice@example.com", token=False)
    (laptop,) = await insert_devices(sessionmaker, [{"name": "alice-laptop", "serial_number": "SN-A1"}])
    staff = await create_group(client, admin, "Staff")
    berlin = await create_group(client, admin, "Berlin")

    added = await add(client, admin, staff["id"], "user", alice.id)
    assert added.status_code == 201, added.text
    assert added.json() == {
        "type": "user",
        "id": str(alice.id),
        "name": "alice",
        "detail": "alice@example.com",
        "state": "enabled",
    }
    assert (await add(client, admin, staff["id"], "user", alice.id)).status_code == 200  # already there
    assert (await add(client, admin, staff["id"], "device", laptop)).status_code == 201
    assert (await add(client, admin, staff["id"], "group", berlin["id"])).status_code == 201

    page = (await client.get(f"/api/v1/groups/{staff['id']}/members", headers=admin.headers)).json()
    assert [(m["type"], m["name"], m["detail"]) for m in page["items"]] == [
        ("group", "Berlin", "assigned"),
        ("user", "alice", "alice@example.com"),
        ("device", "alice-laptop", "SN-A1"),
    ]
    assert (page["total"], page["hidden"], page["next_cursor"]) == (3, 0, None)
    detail = (await client.get(f"/api/v1/groups/{staff['id']}", headers=admin.headers)).json()
    assert detail["members"] == {"users": 1, "devices": 1, "groups": 1}
    assert (await client.get(f"/api/v1/groups/{berlin['id']}", headers=admin.headers)).json()["parents"] == [
        {"id": staff["id"], "display_name": "Staff", "membership_type": "assigned"}
    ]

    assert (await remove(client, admin, staff["id"], "device", laptop)).status_code == 204
    missing = await remove(client, admin, staff["id"], "device", laptop)
    assert missing.status_code == 404 and "not a direct member" in missing.json()["detail"]
    events = await audit_rows(sessionmaker, target_id=staff["id"])
    assert [e.activity for e in events] == [
        "group.create",
        "group.member_add",
        "group.member_add",
        "group.member_add",
        "group.member_remove",
    ]
    assert events[-1].modified_properties == [
        {"name": "devices", "old": f"alice-laptop ({laptop})", "new": None}
    ]


async def test_unknown_members_are_not_found(client: httpx.AsyncClient, factory: Factory) -> None:
    admin = await factory.admin()
    group = await create_group(client, admin, "G")
    for kind in ("user", "device", "group"):
        response = await add(client, admin, group["id"], kind, uuid.uuid4())
        assert response.status_code == 404, kind
    bad = await client.post(
        f"/api/v1/groups/{group['id']}/members",
        json={"type": "printer", "id": str(uuid.uuid4())},
        headers=admin.headers,
    )
    assert bad.status_code == 422


async def test_a_group_cannot_contain_itself(client: httpx.AsyncClient, factory: Factory) -> None:
    admin = await factory.admin()
    group = await create_group(client, admin, "Loop")
    response = await add(client, admin, group["id"], "group", group["id"])
    assert response.status_code == 409 and "member of itself" in response.json()["detail"]


async def test_direct_cycle_is_refused(client: httpx.AsyncClient, factory: Factory) -> None:
    admin = await factory.admin()
    a = await create_group(client, admin, "A")
    b = await create_group(client, admin, "B")
    assert (await add(client, admin, a["id"], "group", b["id"])).status_code == 201
    refused = await add(client, admin, b["id"], "group", a["id"])
    assert refused.status_code == 409
    assert refused.json()["detail"] == (
        "Adding A to B would make a cycle: B is already a member of A (directly or through nested groups)."
    )


async def test_indirect_cycle_is_refused(client: httpx.AsyncClient, factory: Factory) -> None:
    admin = await factory.admin()
    chain = [await create_group(client, admin, name) for name in ("Top", "Middle", "Low", "Bottom")]
    for parent, child in itertools.pairwise(chain):
        assert (await add(client, admin, parent["id"], "group", child["id"])).status_code == 201
    refused = await add(client, admin, chain[-1]["id"], "group", chain[0]["id"])
    assert refused.status_code == 409 and "would make a cycle" in refused.json()["detail"]
    # A diamond is not a cycle: Top -> Low directly as well as through Middle.
    assert (await add(client, admin, chain[0]["id"], "group", chain[2]["id"])).status_code == 201


async def test_concurrent_opposite_nestings_cannot_both_succeed(
    app: object, factory: Factory, sessionmaker: async_sessionmaker[AsyncSession]
) -> None:
    """Two requests at once, A into B and B into A (and a longer loop): each alone is fine, together they
    would close a cycle. The advisory lock serialises them; exactly one wins."""
    admin = await factory.admin()
    async with new_client(app) as one, new_client(app) as two:  # type: ignore[arg-type]
        for _ in range(3):
            a = await create_group(one, admin, "A")
            b = await create_group(one, admin, "B")
            c = await create_group(one, admin, "C")
            assert (await add(one, admin, a["id"], "group", b["id"])).status_code == 201
            results = await asyncio.gather(
                add(one, admin, b["id"], "group", c["id"]),
                add(two, admin, c["id"], "group", a["id"]),
            )
            assert sorted(r.status_code for r in results) == [201, 409], [r.text for r in results]
    async with sessionmaker() as session:
        edges = (await session.execute(select(group_children.c.parent_id, group_children.c.child_id))).all()
    graph: dict[uuid.UUID, set[uuid.UUID]] = {}
    for parent, child in edges:
        graph.setdefault(parent, set()).add(child)

    def reaches(start: uuid.UUID, target: uuid.UUID, seen: set[uuid.UUID]) -> bool:
        return any(
            n == target or (n not in seen and reaches(n, target, seen | {n})) for n in graph.get(start, ())
        )

    assert not any(reaches(g, g, set()) for g in graph)


async def test_transitive_members_come_through_nested_groups_without_duplicates(
    client: httpx.AsyncClient, factory: Factory, sessionmaker: async_sessionmaker[AsyncSession]
) -> None:
    admin = await factory.admin()
    users = [await factory.admin(None, token=False) for _ in range(3)]
    devices = await insert_devices(sessionmaker, [{"name": f"d{i}"} for i in range(4)])
    top = await create_group(client, admin, "Top")
    left = await create_group(client, admin, "Left")
    right = await create_group(client, admin, "Right")
    deep = await create_group(client, admin, "Deep")
    for parent, child in ((top, left), (top, right), (left, deep), (right, deep)):
        assert (await add(client, admin, parent["id"], "group", child["id"])).status_code == 201
    await add(client, admin, top["id"], "user", users[0].id)
    await add(client, admin, left["id"], "user", users[1].id)
    await add(client, admin, deep["id"], "user", users[2].id)
    await add(client, admin, deep["id"], "user", users[0].id)  # also directly in Top
    for device in devices[:2]:
        await add(client, admin, right["id"], "device", device)
    for device in devices[1:]:
        await add(client, admin, deep["id"], "device", device)

    direct = await member_ids(client, admin, top["id"])
    assert direct == [left["id"], right["id"], str(users[0].id)]
    transitive = await member_ids(client, admin, top["id"], transitive=True)
    assert sorted(transitive) == sorted([str(u.id) for u in users] + [str(d) for d in devices])
    assert len(transitive) == len(set(transitive)) == 7
    only_devices = await member_ids(client, admin, top["id"], transitive=True, type="device")
    assert only_devices == [str(d) for d in devices]  # by name d0..d3
    page = await client.get(
        f"/api/v1/groups/{top['id']}/members", params={"transitive": "true"}, headers=admin.headers
    )
    assert page.json()["total"] == 7

    groups_of = await client.get(f"/api/v1/devices/{devices[3]}/groups", headers=admin.headers)
    assert groups_of.status_code == 200
    assert [(m["group"]["display_name"], m["direct"], m["via"]) for m in groups_of.json()] == [
        ("Deep", True, []),
        ("Left", False, ["Deep"]),
        ("Right", False, ["Deep"]),
        ("Top", False, ["Deep", "Left"]),
    ]
    of_user = await client.get(f"/api/v1/users/{users[1].id}/groups", headers=admin.headers)
    assert [(m["group"]["display_name"], m["direct"]) for m in of_user.json()] == [
        ("Left", True),
        ("Top", False),
    ]


async def test_devices_outside_the_readers_scope_are_hidden_and_counted(
    client: httpx.AsyncClient, factory: Factory, sessionmaker: async_sessionmaker[AsyncSession]
) -> None:
    admin = await factory.admin()
    berlin = await create_tag(client, admin, "Berlin")
    visible, hidden = await insert_devices(sessionmaker, [{"name": "in-berlin"}, {"name": "in-paris"}])
    async with sessionmaker() as session:
        await session.execute(
            insert(device_scope_tags).values(device_id=visible, scope_tag_id=uuid.UUID(berlin))
        )
        await session.commit()
    group = await create_group(client, admin, "Everything")
    for device in (visible, hidden):
        await add(client, admin, group["id"], "device", device)
    reader = await admin_with_assignment(
        client, factory, sessionmaker, admin, SERVICE_ADMINISTRATOR.id, tags=[berlin]
    )
    page = (await client.get(f"/api/v1/groups/{group['id']}/members", headers=reader.headers)).json()
    assert [m["name"] for m in page["items"]] == ["in-berlin"]
    assert (page["total"], page["hidden"]) == (1, 1)
    # Nor can the scoped admin add (or even name) a device they can't see.
    assert (await add(client, reader, group["id"], "device", hidden)).status_code == 404


async def test_dynamic_group_refuses_manual_members(client: httpx.AsyncClient, factory: Factory) -> None:
    admin = await factory.admin()
    group = await dynamic_group(client, admin, "Androids", 'device.deviceOSType -eq "Android"')
    other = await create_group(client, admin, "Other")
    for kind, member in (("user", admin.id), ("group", other["id"])):
        response = await add(client, admin, group["id"], kind, member)
        assert response.status_code == 409
        assert "dynamic group" in response.json()["detail"] and "Change the rule" in response.json()["detail"]
    # A dynamic group may itself be nested in an assigned one.
    assert (await add(client, admin, other["id"], "group", group["id"])).status_code == 201


async def _provisioned(
    sessionmaker: async_sessionmaker[AsyncSession], group_id: str, connection: bool
) -> None:
    async with sessionmaker() as session:
        connection_id = None
        if connection:
            connection_id = uuid.uuid4()
            session.add(IdentityConnection(id=connection_id, name="Contoso Entra ID", scim_enabled=True))
            await session.flush()
        await session.execute(
            update(Group)
            .where(Group.id == uuid.UUID(group_id))
            .values(source="scim", connection_id=connection_id, external_id="ext-1")
        )
        await session.commit()


async def test_groups_provisioned_by_scim_are_read_only_for_member_changes(
    client: httpx.AsyncClient, factory: Factory, sessionmaker: async_sessionmaker[AsyncSession]
) -> None:
    admin = await factory.admin()
    group = await create_group(client, admin, "Engineering")
    assert (await add(client, admin, group["id"], "user", admin.id)).status_code == 201
    await _provisioned(sessionmaker, group["id"], connection=True)
    for response in (
        await add(client, admin, group["id"], "user", (await factory.admin(None, token=False)).id),
        await remove(client, admin, group["id"], "user", admin.id),
        await client.delete(f"/api/v1/groups/{group['id']}", headers=admin.headers),
    ):
        assert response.status_code == 409
        assert "managed by Contoso Entra ID" in response.json()["detail"]
    detail = (await client.get(f"/api/v1/groups/{group['id']}", headers=admin.headers)).json()
    assert detail["managed_by"] == "Contoso Entra ID" and detail["source"] == "scim"


async def test_orphaned_provisioned_group_can_be_deleted_but_not_edited(
    client: httpx.AsyncClient, factory: Factory, sessionmaker: async_sessionmaker[AsyncSession]
) -> None:
    admin = await factory.admin()
    group = await create_group(client, admin, "Old sync")
    await _provisioned(sessionmaker, group["id"], connection=False)
    refused = await add(client, admin, group["id"], "user", admin.id)
    assert refused.status_code == 409 and "managed by an identity provider (SCIM)" in refused.json()["detail"]
    assert (await client.delete(f"/api/v1/groups/{group['id']}", headers=admin.headers)).status_code == 204


async def test_deleting_a_nested_group_removes_it_from_its_parents(
    client: httpx.AsyncClient, factory: Factory
) -> None:
    admin = await factory.admin()
    parent = await create_group(client, admin, "Parent")
    child = await create_group(client, admin, "Child")
    await add(client, admin, parent["id"], "group", child["id"])
    assert (await client.delete(f"/api/v1/groups/{child['id']}", headers=admin.headers)).status_code == 204
    detail = (await client.get(f"/api/v1/groups/{parent['id']}", headers=admin.headers)).json()
    assert detail["members"]["groups"] == 0


async def test_users_are_counted_but_not_shown_to_a_reader_without_users_read(
    client: httpx.AsyncClient, factory: Factory, sessionmaker: async_sessionmaker[AsyncSession]
) -> None:
    admin = await factory.admin()
    person = await factory.admin(None, token=False)
    (device,) = await insert_devices(sessionmaker, [{"name": "shared-ipad"}])
    group = await create_group(client, admin, "Front desk")
    await add(client, admin, group["id"], "user", person.id)
    await add(client, admin, group["id"], "device", device)
    role = await create_role(client, admin, "Device and group reader", ["groups:read", "devices:read"])
    reader = await admin_with_assignment(client, factory, sessionmaker, admin, role["id"])
    page = (await client.get(f"/api/v1/groups/{group['id']}/members", headers=reader.headers)).json()
    assert [m["type"] for m in page["items"]] == ["device"]
    assert (page["total"], page["hidden"]) == (1, 1)
    users_only = await client.get(
        f"/api/v1/groups/{group['id']}/members", params={"type": "user"}, headers=reader.headers
    )
    assert users_only.json()["items"] == [] and users_only.json()["hidden"] == 1
