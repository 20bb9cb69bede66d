"""Assignments through the API: nested groups and primary users reach devices, exclusion wins, filters
narrow, explanations name the chain and the filter's values, every kind of change keeps the stored targets
current, and bad or out-of-scope input is refused without changing anything."""

from __future__ import annotations

import uuid

import httpx
from sqlalchemy import update
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from corral.models import Device
from tests.assignments.helpers import group_target, make_policy, put_assignments, targets, version
from tests.conftest import Factory, audit_rows
from tests.devices.test_enrollment_and_checkin import enrolled
from tests.groups.helpers import add, create_group, dynamic_group, insert_devices, remove
from tests.test_scope_groups import role_id, scoped_admin


async def set_owner(
    sessionmaker: async_sessionmaker[AsyncSession], device_id: uuid.UUID, user_id: uuid.UUID
) -> None:
    async with sessionmaker() as session:
        await session.execute(update(Device).where(Device.id == device_id).values(user_id=user_id))
        await session.commit()


async def test_nested_groups_and_primary_users_reach_devices_exclusion_wins_and_the_change_is_audited(
    client: httpx.AsyncClient, factory: Factory, sessionmaker: async_sessionmaker[AsyncSession]
) -> None:
    admin = await factory.admin()
    root = await create_group(client, admin, "All staff")
    sales = await create_group(client, admin, "Sales")
    kiosks = await create_group(client, admin, "Kiosks")
    assert (await add(client, admin, root["id"], "group", sales["id"])).status_code == 201
    laptop, kiosk, phone, other, mac = await insert_devices(
        sessionmaker,
        [{"name": "laptop"}, {"name": "kiosk"}, {"name": "phone"}, {"name": "other"}, {"platform": "macos"}],
    )
    alice = await factory.user("alice@example.com")
    await set_owner(sessionmaker, phone, alice)
    for device in (laptop, kiosk, mac):
        assert (await add(client, admin, sales["id"], "device", device)).status_code == 201
    assert (await add(client, admin, root["id"], "user", alice)).status_code == 201
    assert (await add(client, admin, kiosks["id"], "device", kiosk)).status_code == 201
    policy = await make_policy(sessionmaker, "Windows baseline")
    before = await version(sessionmaker, laptop)

    response = await put_assignments(
        client, admin, policy, [group_target(root["id"]), group_target(kiosks["id"], "exclude")]
    )

    assert response.status_code == 200, response.text
    body = response.json()
    assert body["devices"] == 2
    assert {a["mode"] for a in body["assignments"]} == {"include", "exclude"}
    # laptop through Sales ⊂ All staff, phone through its primary user; the kiosk is excluded, the Mac is
    # of another platform, the other device is in no group.
    assert await targets(sessionmaker, policy) == {laptop, phone}
    assert await version(sessionmaker, laptop) > before
    events = await audit_rows(sessionmaker, activity="compliance_policy.assign")
    assert len(events) == 1
    change = events[0].modified_properties[0]
    assert change["old"] == [] and change["new"] == ["exclude group Kiosks", "include group All staff"]

    listed = (await client.get(f"/api/v1/devices/{phone}/assignments", headers=admin.headers)).json()
    assert [i["object"]["name"] for i in listed["items"]] == ["Windows baseline"]
    assert listed["desired_state_version"] == await version(sessionmaker, phone)

    why = (
        await client.get(f"/api/v1/devices/{laptop}/assignments/{policy}/explain", headers=admin.headers)
    ).json()
    assert why["verdict"] == "included" and why["stored"] is True
    include = next(a for a in why["assignments"] if a["assignment"]["mode"] == "include")
    assert include["via"] == "device"
    assert [step["display_name"] for step in include["chain"]] == ["Sales", "All staff"]
    assert "Sales → All staff" in include["reason"]

    why = (
        await client.get(f"/api/v1/devices/{phone}/assignments/{policy}/explain", headers=admin.headers)
    ).json()
    include = next(a for a in why["assignments"] if a["assignment"]["mode"] == "include")
    assert (why["verdict"], include["via"], include["user"]) == (
        "included",
        "primary_user",
        "alice@example.com",
    )

    why = (
        await client.get(f"/api/v1/devices/{kiosk}/assignments/{policy}/explain", headers=admin.headers)
    ).json()
    assert why["verdict"] == "excluded" and why["stored"] is False
    assert "Excluded by Kiosks (exclusion wins over inclusion)" in why["summary"]

    why = (
        await client.get(f"/api/v1/devices/{mac}/assignments/{policy}/explain", headers=admin.headers)
    ).json()
    assert why["verdict"] == "not_applicable"
    why = (
        await client.get(f"/api/v1/devices/{other}/assignments/{policy}/explain", headers=admin.headers)
    ).json()
    assert why["verdict"] == "not_targeted"
    assert all(a["effect"] == "none" for a in why["assignments"])


async def test_membership_nesting_and_dynamic_rule_changes_keep_targets_current(
    client: httpx.AsyncClient, factory: Factory, sessionmaker: async_sessionmaker[AsyncSession]
) -> None:
    admin = await factory.admin()
    root = await create_group(client, admin, "Root")
    leaf_a = await create_group(client, admin, "Leaf A")
    leaf_b = await create_group(client, admin, "Leaf B")
    lab = await dynamic_group(client, admin, "Lab machines", 'device.displayName -startsWith "lab"')
    assert (await add(client, admin, root["id"], "group", leaf_a["id"])).status_code == 201
    device, lab1 = await insert_devices(sessionmaker, [{"name": "desk-1"}, {"name": "lab-1"}])
    policy = await make_policy(sessionmaker)
    assert (
        await put_assignments(client, admin, policy, [group_target(root["id"]), group_target(lab["id"])])
    ).status_code == 200
    assert await targets(sessionmaker, policy) == set()  # the lab group was evaluated before lab-1 existed

    # A device joins a nested group, moves to a group outside, comes back through nesting.
    assert (await add(client, admin, leaf_a["id"], "device", device)).status_code == 201
    assert await targets(sessionmaker, policy) == {device}
    v1 = await version(sessionmaker, device)
    assert (await remove(client, admin, leaf_a["id"], "device", device)).status_code == 204
    assert (await add(client, admin, leaf_b["id"], "device", device)).status_code == 201
    assert await targets(sessionmaker, policy) == set()
    assert await version(sessionmaker, device) > v1
    assert (await add(client, admin, root["id"], "group", leaf_b["id"])).status_code == 201
    assert await targets(sessionmaker, policy) == {device}

    # A dynamic group's rule: re-evaluated on demand, then changed.
    assert (
        await client.post(f"/api/v1/groups/{lab['id']}/evaluate", headers=admin.headers)
    ).status_code == 200
    assert await targets(sessionmaker, policy) == {device, lab1}
    response = await client.patch(
        f"/api/v1/groups/{lab['id']}",
        json={"rule": 'device.displayName -startsWith "none"'},
        headers=admin.headers,
    )
    assert response.status_code == 200, response.text
    assert await targets(sessionmaker, policy) == {device}

    # Un-nesting takes the device out again.
    assert (await remove(client, admin, root["id"], "group", leaf_b["id"])).status_code == 204
    assert await targets(sessionmaker, policy) == set()


async def test_a_filter_narrows_an_assignment_and_a_new_rule_recomputes_its_objects(
    client: httpx.AsyncClient, factory: Factory, sessionmaker: async_sessionmaker[AsyncSession]
) -> None:
    admin = await factory.admin()
    lab, office = await insert_devices(sessionmaker, [{"name": "lab-7"}, {"name": "office-2"}])
    response = await client.post(
        "/api/v1/assignment-filters",
        json={"name": "Lab", "platform": "windows", "rule": 'device.displayName -startsWith "lab"'},
        headers=admin.headers,
    )
    assert response.status_code == 201, response.text
    lab_filter = response.json()
    policy = await make_policy(sessionmaker)

    response = await put_assignments(
        client,
        admin,
        policy,
        [{"target": "all_devices", "filter_id": lab_filter["id"], "filter_mode": "exclude"}],
    )
    assert response.status_code == 200, response.text
    assert await targets(sessionmaker, policy) == {office}

    why = (
        await client.get(f"/api/v1/devices/{lab}/assignments/{policy}/explain", headers=admin.headers)
    ).json()
    assert why["verdict"] == "not_targeted"
    result = why["assignments"][0]["filter"]
    assert (result["matched"], result["passed"], result["mode"]) == (True, False, "exclude")
    assert result["explanation"]["actual"] == "lab-7"
    assert result["lines"][0].startswith("✓")

    detail = (
        await client.get(f"/api/v1/assignment-filters/{lab_filter['id']}", headers=admin.headers)
    ).json()
    assert [o["id"] for o in detail["used_by"]] == [str(policy)]
    response = await client.patch(
        f"/api/v1/assignment-filters/{lab_filter['id']}",
        json={"rule": 'device.displayName -startsWith "office"'},
        headers=admin.headers,
    )
    assert response.status_code == 200, response.text
    assert await targets(sessionmaker, policy) == {lab}
    event = (await audit_rows(sessionmaker, activity="filter.update"))[0]
    assert "1 object(s) use this filter" in event.detail

    # In use: the filter cannot be deleted; the group neither.
    response = await client.delete(f"/api/v1/assignment-filters/{lab_filter['id']}", headers=admin.headers)
    assert response.status_code == 409 and "remove it from them first" in response.json()["detail"]


async def test_a_group_assigned_to_a_policy_cannot_be_deleted(
    client: httpx.AsyncClient, factory: Factory, sessionmaker: async_sessionmaker[AsyncSession]
) -> None:
    admin = await factory.admin()
    group = await create_group(client, admin, "Finance")
    policy = await make_policy(sessionmaker, "Finance laptops")
    assert (await put_assignments(client, admin, policy, [group_target(group["id"])])).status_code == 200
    response = await client.delete(f"/api/v1/groups/{group['id']}", headers=admin.headers)
    assert response.status_code == 409
    assert "Finance laptops (compliance policy)" in response.json()["detail"]


async def test_bad_assignments_are_refused_with_a_clear_message_and_change_nothing(
    client: httpx.AsyncClient, factory: Factory, sessionmaker: async_sessionmaker[AsyncSession]
) -> None:
    admin = await factory.admin()
    group = await create_group(client, admin, "Engineering")
    (device,) = await insert_devices(sessionmaker, [{}])
    assert (await add(client, admin, group["id"], "device", device)).status_code == 201
    policy = await make_policy(sessionmaker)
    profile = await make_policy(sessionmaker, profile=True)
    ios_filter = (
        await client.post(
            "/api/v1/assignment-filters",
            json={"name": "Phones", "platform": "ios", "rule": 'device.deviceModel -contains "iPhone"'},
            headers=admin.headers,
        )
    ).json()
    assert (await put_assignments(client, admin, policy, [group_target(group["id"])])).status_code == 200
    cases = [
        ([group_target(uuid.uuid4())], 422, "no such group"),
        ([{"target": "all_devices", "mode": "exclude"}], 422, "only groups can be excluded"),
        (
            [group_target(group["id"], "exclude", filter_id=ios_filter["id"])],
            422,
            "exclusions take no filter",
        ),
        ([group_target(group["id"]), group_target(group["id"], "exclude")], 422, "already in the list"),
        ([{"target": "all_devices", "filter_id": ios_filter["id"]}], 422, "is for ios devices"),
        ([{"target": "all_devices", "filter_id": str(uuid.uuid4())}], 422, "no such filter"),
        ([{"target": "group"}], 422, "group_id is given exactly when"),
    ]
    for items, status, message in cases:
        response = await put_assignments(client, admin, policy, items)
        assert response.status_code == status, (items, response.text)
        assert message in response.text, (items, response.text)
    # A profile's id under the compliance policies' path, and a missing object: not found.
    assert (await put_assignments(client, admin, profile, [])).status_code == 404
    assert (await put_assignments(client, admin, uuid.uuid4(), [])).status_code == 404
    assert await targets(sessionmaker, policy) == {device}
    assert len(await audit_rows(sessionmaker, activity="compliance_policy.assign")) == 1

    response = await client.post(
        "/api/v1/assignment-filters",
        json={"name": "Broken", "platform": "windows", "rule": 'device.displayName -startsWit "x"'},
        headers=admin.headers,
    )
    assert response.status_code == 422
    error = response.json()["errors"][0]
    assert error["location"] == "rule" and error["offset"] == 19


async def test_scoped_and_read_only_admins_cannot_assign_beyond_what_they_hold(
    client: httpx.AsyncClient, factory: Factory, sessionmaker: async_sessionmaker[AsyncSession]
) -> None:
    admin = await factory.admin()
    paris = await create_group(client, admin, "Paris")
    lyon = await create_group(client, admin, "Lyon")
    policy = await make_policy(sessionmaker)
    manager = await scoped_admin(
        client,
        factory,
        sessionmaker,
        admin,
        await role_id(client, admin, "Policy and profile manager"),
        scope_group_ids=[paris["id"]],
    )
    assert (await put_assignments(client, manager, policy, [group_target(paris["id"])])).status_code == 200
    for items in ([group_target(lyon["id"])], [{"target": "all_devices"}]):
        response = await put_assignments(client, manager, policy, items)
        assert response.status_code == 403, response.text
        assert "outside the scope groups" in response.json()["detail"]
    reader = await factory.admin("Read-only operator")
    assert (await put_assignments(client, reader, policy, [])).status_code == 403
    response = await client.get(f"/api/v1/compliance-policies/{policy}/assignments", headers=reader.headers)
    assert response.status_code == 200
    assert [a["group"]["display_name"] for a in response.json()["assignments"]] == ["Paris"]


async def test_check_in_inventory_moves_a_device_through_a_filter(
    client: httpx.AsyncClient, factory: Factory, sessionmaker: async_sessionmaker[AsyncSession]
) -> None:
    admin = await factory.admin()
    device = await enrolled(client, admin)
    assert device.device_id is not None
    old_os = (
        await client.post(
            "/api/v1/assignment-filters",
            json={
                "name": "Debian 11",
                "platform": "linux",
                "rule": 'device.deviceOSVersion -startsWith "11"',
            },
            headers=admin.headers,
        )
    ).json()
    policy = await make_policy(sessionmaker, platform="linux")
    response = await put_assignments(
        client, admin, policy, [{"target": "all_devices", "filter_id": old_os["id"]}]
    )
    assert response.status_code == 200
    assert await targets(sessionmaker, policy) == set()
    from tests.devices.device import inventory

    inv = inventory(os={"platform": "linux", "name": "Debian", "version": "11.9", "build": "5.10"})
    assert (await device.checkin({"inventory": inv})).status_code == 200
    assert await targets(sessionmaker, policy) == {uuid.UUID(device.device_id)}
    inv = inventory()
    assert (await device.checkin({"inventory": inv})).status_code == 200
    assert await targets(sessionmaker, policy) == set()
