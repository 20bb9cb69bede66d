"""Dynamic membership on real PostgreSQL: full evaluation agrees with the Python evaluator over a varied
fleet; a real enrollment, check-in, ownership change and retire move one device in and out at once; users
follow their attributes; preview and explanation."""

from __future__ import annotations

import random
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest
from fastapi import FastAPI
from sqlalchemy import event, insert, select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from corral.groups import membership
from corral.groups.rule_sql import DEVICE_SCHEMA, USER_SCHEMA, device_attribute_values, user_attribute_values
from corral.groups.rules import matches, parse_rule
from corral.kit import context
from corral.models import Device, EnrollmentToken, User, device_scope_tags
from corral.rbac.roles import SERVICE_ADMINISTRATOR
from tests.conftest import Factory, audit_rows
from tests.devices.device import TestDevice, canonical_hash, inventory
from tests.devices.test_commands import act
from tests.devices.test_enrollment_and_checkin import make_token
from tests.groups.helpers import (
    dynamic_group,
    insert_devices,
    set_user,
    stored_device_members,
    stored_user_members,
)
from tests.test_rbac_api import admin_with_assignment, create_role, create_tag

DEVICE_RULES = [
    'device.deviceOSType -in ["iOS", "iPad"]',
    'device.deviceOSVersion -startsWith "10.0.2"',
    '-not (device.deviceModel -contains "virtual")',
    "device.isRooted -ne true",
    "device.isRooted -eq false",
    'device.deviceManufacturer -match "^(dell|hp)"',
    'device.enrollmentProfileName -eq "Kiosk" -or device.deviceOwnership -eq "Personal"',
    'device.deviceOSType -startsWith "Android" -and device.cpuArchitecture -ne "arm64"',
    'device.displayName -endsWith "_%" -or device.serialNumber -contains "50%"',
    "device.objectId -ne null",
]


async def _population(
    sessionmaker: async_sessionmaker[AsyncSession], size: int = 240
) -> dict[uuid.UUID, dict[str, Any]]:
    """A varied fleet: every platform and ownership, missing values, mixed case, LIKE wildcards in names,
    retired and wiped devices, two enrollment tokens. Returns rule values of the devices that may match."""
    rng = random.Random(20261127)
    tokens = {}
    async with sessionmaker() as session:
        for name in ("Kiosk", "Laptops"):
            token = EnrollmentToken(
                id=uuid.uuid4(),
                name=name,
                token_hash=uuid.uuid4().bytes * 2,
                prefix=name.lower(),
                platforms=["windows"],
                ownership="company",
                expires_at=datetime.now(UTC) + timedelta(days=1),
                created_at=datetime.now(UTC),
            )
            session.add(token)
            tokens[token.id] = name
        await session.commit()
    rows = []
    for i in range(size):
        rows.append(
            {
                "name": rng.choice(["Alice", "BOB", "kiosk", "x_%", "Ünïcode"]) + f"-{i}",
                "serial_number": rng.choice(["SN", "50%", "sn_"]) + str(i),
                "platform": rng.choice(["windows", "ios", "ipados", "macos", "android", "linux"]),
                "os_version": rng.choice(["10.0.22631", "10.0.19045", "17.5.1", None]),
                "ownership": rng.choice(["company", "personal"]),
                "manufacturer": rng.choice(["Dell Inc.", "HP", "dell", "Apple", None]),
                "model": rng.choice(["Latitude", "VirtualBox", "Virtual Machine", None]),
                "jailbroken": rng.choice([True, False, None]),
                "cpu_architecture": rng.choice(["x64", "arm64", None]),
                "management_state": rng.choice(["managed"] * 6 + ["retired", "wiped", "retire_pending"]),
                "enrollment_token_id": rng.choice([None, *tokens]),
            }
        )
    ids = await insert_devices(sessionmaker, rows)
    async with sessionmaker() as session:
        devices = (await session.scalars(select(Device).where(Device.id.in_(ids)))).all()
    return {
        d.id: device_attribute_values(d, enrollment_profile_name=tokens.get(d.enrollment_token_id))  # type: ignore[arg-type]
        for d in devices
        if d.management_state.value not in ("retired", "wiped")
    }


async def test_full_evaluation_agrees_with_the_python_evaluator(
    client: httpx.AsyncClient, factory: Factory, sessionmaker: async_sessionmaker[AsyncSession]
) -> None:
    admin = await factory.admin()
    active = await _population(sessionmaker)
    assert 150 < len(active) < 240
    for index, text in enumerate(DEVICE_RULES):
        group = await dynamic_group(client, admin, f"rule {index}", text)
        rule = parse_rule(text, DEVICE_SCHEMA)
        expected = {device_id for device_id, values in active.items() if matches(rule, values)}
        assert await stored_device_members(sessionmaker, group["id"]) == expected, text
        assert group["members"]["devices"] == len(expected)
        assert len(expected) > 0 or text.startswith("device.displayName"), text


async def test_re_evaluation_removes_what_no_longer_matches_and_keeps_the_rest(
    client: httpx.AsyncClient, factory: Factory, sessionmaker: async_sessionmaker[AsyncSession]
) -> None:
    admin = await factory.admin()
    keep, leave, retire = await insert_devices(
        sessionmaker, [{"model": "Latitude 7440"}, {"model": "Latitude 5440"}, {"model": "Latitude 9440"}]
    )
    group = await dynamic_group(client, admin, "Latitudes", 'device.deviceModel -startsWith "latitude"')
    assert await stored_device_members(sessionmaker, group["id"]) == {keep, leave, retire}
    async with sessionmaker() as session:
        (await session.get_one(Device, leave)).model = "XPS 13"
        (await session.get_one(Device, retire)).management_state = "retired"  # type: ignore[assignment]
        await session.commit()
    result = (await client.post(f"/api/v1/groups/{group['id']}/evaluate", headers=admin.headers)).json()
    assert (result["added"], result["removed"], result["members"]) == (0, 2, 1)
    assert await stored_device_members(sessionmaker, group["id"]) == {keep}


# ------------------------------------------------------------------------------- incremental, real devices
@contextmanager
def statements(app: FastAPI) -> Iterator[list[str]]:
    """Every SQL statement the application runs inside the block."""
    seen: list[str] = []

    def record(conn: Any, cursor: Any, statement: str, *args: Any) -> None:
        seen.append(statement)

    engine = app.state.engine.sync_engine
    event.listen(engine, "before_cursor_execute", record)
    try:
        yield seen
    finally:
        event.remove(engine, "before_cursor_execute", record)


async def _enrolled(
    client: httpx.AsyncClient, token: str, **inventory_overrides: Any
) -> tuple[TestDevice, dict]:
    device = TestDevice(client, name="alice-thinkpad")
    response = await device.enroll(token)
    assert response.status_code == 201, response.text
    data = inventory(**inventory_overrides)
    first = await device.checkin({"inventory": data, "inventory_hash": canonical_hash(data)})
    assert first.status_code == 200 and first.json()["inventory"] == "accepted", first.text
    return device, data


async def test_check_in_moves_a_device_into_and_out_of_a_group_in_the_same_transaction(
    app: FastAPI, client: httpx.AsyncClient, factory: Factory, sessionmaker: async_sessionmaker[AsyncSession]
) -> None:
    admin = await factory.admin()
    thinkpads = await dynamic_group(client, admin, "ThinkPads", 'device.deviceModel -startsWith "ThinkPad"')
    arm = await dynamic_group(client, admin, "ARM", 'device.cpuArchitecture -eq "arm64"')
    device, data = await _enrolled(client, await make_token(client, admin))
    device_id = uuid.UUID(device.device_id or "")
    assert await stored_device_members(sessionmaker, thinkpads["id"]) == {device_id}
    assert await stored_device_members(sessionmaker, arm["id"]) == set()

    # New hardware reported: out of ThinkPads, into ARM, in the check-in's own transaction.
    data["hardware"] = {**data["hardware"], "model": "Surface Pro", "cpu_architecture": "arm64"}
    moved = await device.checkin({"inventory": data, "inventory_hash": canonical_hash(data)})
    assert moved.status_code == 200 and moved.json()["inventory"] == "accepted"
    assert await stored_device_members(sessionmaker, thinkpads["id"]) == set()
    assert await stored_device_members(sessionmaker, arm["id"]) == {device_id}
    events = await audit_rows(sessionmaker, activity="group.dynamic_membership", target_id=str(device_id))
    assert events[-1].modified_properties == [
        {"name": "groups_joined", "old": None, "new": ["ARM"]},
        {"name": "groups_left", "old": ["ThinkPads"], "new": None},
    ]

    # The usual check-in (nothing changed) and one where only free storage changed: no group query at all.
    with statements(app) as seen:
        same = await device.checkin({"inventory_hash": canonical_hash(data)})
        data["hardware"]["storage_free_bytes"] -= 2**30
        volatile = await device.checkin({"inventory": data, "inventory_hash": canonical_hash(data)})
    assert same.json()["inventory"] == "unchanged" and volatile.json()["inventory"] == "accepted"
    assert not [s for s in seen if "groups" in s], seen


async def test_enrollment_joins_groups_at_once_by_its_enrollment_profile(
    client: httpx.AsyncClient, factory: Factory, sessionmaker: async_sessionmaker[AsyncSession]
) -> None:
    admin = await factory.admin()
    kiosks = await dynamic_group(client, admin, "Kiosks", 'device.enrollmentProfileName -eq "Kiosk fleet"')
    device = TestDevice(client)
    assert (await device.enroll(await make_token(client, admin, name="Kiosk fleet"))).status_code == 201
    assert await stored_device_members(sessionmaker, kiosks["id"]) == {uuid.UUID(device.device_id or "")}
    other = TestDevice(client)
    assert (await other.enroll(await make_token(client, admin, name="Laptops"))).status_code == 201
    assert len(await stored_device_members(sessionmaker, kiosks["id"])) == 1


async def test_ownership_change_moves_the_device(
    client: httpx.AsyncClient, factory: Factory, sessionmaker: async_sessionmaker[AsyncSession]
) -> None:
    admin = await factory.admin()
    personal = await dynamic_group(client, admin, "BYOD", 'device.deviceOwnership -eq "Personal"')
    device = TestDevice(client)
    assert (await device.enroll(await make_token(client, admin))).status_code == 201
    assert await stored_device_members(sessionmaker, personal["id"]) == set()
    changed = await client.patch(
        f"/api/v1/devices/{device.device_id}", json={"ownership": "personal"}, headers=admin.headers
    )
    assert changed.status_code == 200, changed.text
    assert await stored_device_members(sessionmaker, personal["id"]) == {uuid.UUID(device.device_id or "")}
    groups = (await client.get(f"/api/v1/devices/{device.device_id}/groups", headers=admin.headers)).json()
    assert [g["group"]["display_name"] for g in groups] == ["BYOD"]


async def test_retired_device_leaves_its_dynamic_groups(
    client: httpx.AsyncClient, factory: Factory, sessionmaker: async_sessionmaker[AsyncSession]
) -> None:
    admin = await factory.admin()
    everyone = await dynamic_group(client, admin, "All devices", "device.objectId -ne null")
    device = TestDevice(client)
    assert (await device.enroll(await make_token(client, admin))).status_code == 201
    device_id = uuid.UUID(device.device_id or "")
    assert await stored_device_members(sessionmaker, everyone["id"]) == {device_id}
    retire = await act(client, admin, device, "retire", reason="Left the company", confirm=device.name)
    assert retire.status_code == 202
    # Pending retirement: still managed, still a member.
    command = (await device.checkin({})).json()["commands"][0]
    assert await stored_device_members(sessionmaker, everyone["id"]) == {device_id}
    done = await device.checkin({"command_results": [{"command_id": command["id"], "status": "succeeded"}]})
    assert done.status_code == 200
    assert await stored_device_members(sessionmaker, everyone["id"]) == set()
    evaluated = (await client.post(f"/api/v1/groups/{everyone['id']}/evaluate", headers=admin.headers)).json()
    assert evaluated["members"] == 0


async def test_deleted_device_leaves_every_group(
    client: httpx.AsyncClient, factory: Factory, sessionmaker: async_sessionmaker[AsyncSession]
) -> None:
    admin = await factory.admin()
    everyone = await dynamic_group(client, admin, "All devices", "device.objectId -ne null")
    device = TestDevice(client)
    assert (await device.enroll(await make_token(client, admin))).status_code == 201
    deleted = await client.delete(f"/api/v1/devices/{device.device_id}", headers=admin.headers)
    assert deleted.status_code == 204
    assert await stored_device_members(sessionmaker, everyone["id"]) == set()


# ------------------------------------------------------------------------------------------------ users
async def test_user_groups_follow_the_users_attributes(
    client: httpx.AsyncClient, factory: Factory, sessionmaker: async_sessionmaker[AsyncSession]
) -> None:
    admin = await factory.admin()
    alice = await factory.admin(None, email="alice@contoso.com", token=False)
    bob = await factory.admin(None, email="bob@fabrikam.com", token=False)
    await set_user(sessionmaker, alice.id, department="Sales", job_title="Account executive")
    await set_user(sessionmaker, bob.id, department="Engineering", enabled=False)
    sales = await dynamic_group(client, admin, "Sales", 'user.department -eq "sales"', kind="user")
    enabled = await dynamic_group(
        client,
        admin,
        "Contoso",
        'user.userPrincipalName -endsWith "@contoso.com" -and user.accountEnabled -eq true',
        kind="user",
    )
    assert await stored_user_members(sessionmaker, sales["id"]) == {alice.id}
    assert await stored_user_members(sessionmaker, enabled["id"]) == {alice.id}

    # What the users service calls after creating or editing a user.
    context.set_current(context.RequestContext(correlation_id="test", actor=context.SYSTEM))
    async with sessionmaker() as session:
        user = await session.get_one(User, bob.id)
        before = membership.user_rule_inputs(user)
        assert await membership.refresh_user(session, user, unless=before) is None  # nothing changed
        user.department = "Sales"
        change = await membership.refresh_user(session, user, unless=before)
        await session.commit()
    assert change is not None and [g.display_name for g in change.added] == ["Sales"]
    assert await stored_user_members(sessionmaker, sales["id"]) == {alice.id, bob.id}
    groups = (await client.get(f"/api/v1/users/{bob.id}/groups", headers=admin.headers)).json()
    assert [g["group"]["display_name"] for g in groups] == ["Sales"]


async def test_user_rules_agree_with_the_python_evaluator(
    client: httpx.AsyncClient, factory: Factory, sessionmaker: async_sessionmaker[AsyncSession]
) -> None:
    admin = await factory.admin()
    rng = random.Random(7)
    for i in range(30):
        person = await factory.admin(
            None, email=f"p{i}@{rng.choice(['contoso.com', 'Fabrikam.com'])}", token=False
        )
        await set_user(
            sessionmaker,
            person.id,
            department=rng.choice(["Sales", "sales", "R&D", None]),
            job_title=rng.choice(["SDE II", "Manager", None]),
            given_name=rng.choice(["Ada", "Grace", None]),
            enabled=rng.choice([True, False]),
        )
    async with sessionmaker() as session:
        users = {u.id: user_attribute_values(u) for u in (await session.scalars(select(User))).all()}
    for index, text in enumerate(
        [
            'user.department -eq "Sales" -and -not (user.jobTitle -startsWith "SDE")',
            'user.mail -endsWith "@fabrikam.com"',
            "user.givenName -eq null",
            'user.department -in ["R&D", "Marketing"] -or user.accountEnabled -eq false',
            'user.displayName -match "^p1"',
        ]
    ):
        group = await dynamic_group(client, admin, f"users {index}", text, kind="user")
        rule = parse_rule(text, USER_SCHEMA)
        expected = {user_id for user_id, values in users.items() if matches(rule, values)}
        assert await stored_user_members(sessionmaker, group["id"]) == expected, text


# ------------------------------------------------------------------------------------- preview and explain
async def test_preview_counts_and_names_members_without_saving(
    client: httpx.AsyncClient, factory: Factory, sessionmaker: async_sessionmaker[AsyncSession]
) -> None:
    admin = await factory.admin()
    await insert_devices(
        sessionmaker,
        [{"name": f"mac-{i}", "platform": "macos"} for i in range(5)]
        + [{"name": "win", "platform": "windows"}],
    )
    await insert_devices(
        sessionmaker, [{"name": "old-mac", "platform": "macos", "management_state": "wiped"}]
    )
    response = await client.post(
        "/api/v1/groups/preview",
        json={"dynamic_kind": "device", "rule": 'device.deviceostype -EQ "mac"', "limit": 3},
        headers=admin.headers,
    )
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["count"] == 5
    assert [m["name"] for m in body["members"]] == ["mac-0", "mac-1", "mac-2"]
    assert body["rule"] == 'device.deviceOSType -eq "mac"' and body["attributes"] == ["deviceOSType"]
    assert (await client.get("/api/v1/groups", headers=admin.headers)).json()["total"] == 0

    error = await client.post(
        "/api/v1/groups/preview",
        json={"dynamic_kind": "device", "rule": 'device.deviceOSType -eq "Blackberry"'},
        headers=admin.headers,
    )
    assert error.status_code == 422
    assert error.json()["errors"][0]["column"] == 25 and "Blackberry" in error.json()["detail"]


async def test_preview_is_scoped_to_the_callers_devices(
    client: httpx.AsyncClient, factory: Factory, sessionmaker: async_sessionmaker[AsyncSession]
) -> None:
    admin = await factory.admin()
    tag = await create_tag(client, admin, "Berlin")
    berlin, _paris = await insert_devices(sessionmaker, [{"name": "berlin-1"}, {"name": "paris-1"}])
    async with sessionmaker() as session:
        await session.execute(insert(device_scope_tags).values(device_id=berlin, scope_tag_id=uuid.UUID(tag)))
        await session.commit()
    scoped = await admin_with_assignment(
        client, factory, sessionmaker, admin, SERVICE_ADMINISTRATOR.id, tags=[tag]
    )
    body = {"dynamic_kind": "device", "rule": "device.objectId -ne null"}
    mine = (await client.post("/api/v1/groups/preview", json=body, headers=scoped.headers)).json()
    assert mine["count"] == 1 and [m["name"] for m in mine["members"]] == ["berlin-1"]
    everything = (await client.post("/api/v1/groups/preview", json=body, headers=admin.headers)).json()
    assert everything["count"] == 2


async def test_previewing_user_rules_needs_users_read(
    client: httpx.AsyncClient, factory: Factory, sessionmaker: async_sessionmaker[AsyncSession]
) -> None:
    admin = await factory.admin()
    role = await create_role(client, admin, "Group reader", ["groups:read", "devices:read"])
    reader = await admin_with_assignment(client, factory, sessionmaker, admin, role["id"])
    users = await client.post(
        "/api/v1/groups/preview",
        json={"dynamic_kind": "user", "rule": 'user.department -eq "Sales"'},
        headers=reader.headers,
    )
    assert users.status_code == 403 and "users:read" in users.json()["detail"]
    devices = await client.post(
        "/api/v1/groups/preview",
        json={"dynamic_kind": "device", "rule": 'device.displayName -eq "x"'},
        headers=reader.headers,
    )
    assert devices.status_code == 200


async def test_explain_says_whether_a_device_matches_and_why(
    client: httpx.AsyncClient, factory: Factory, sessionmaker: async_sessionmaker[AsyncSession]
) -> None:
    admin = await factory.admin()
    (device,) = await insert_devices(
        sessionmaker, [{"name": "ipad-7", "serial_number": "DMPX1", "platform": "ipados", "jailbroken": None}]
    )
    rule = '(device.deviceOSType -eq "iOS" -or device.deviceOSType -eq "iPad") -and device.isRooted -eq false'
    response = await client.post(
        "/api/v1/groups/preview/explain",
        json={"dynamic_kind": "device", "rule": rule, "device_id": str(device)},
        headers=admin.headers,
    )
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["matches"] is False and body["subject"]["name"] == "ipad-7" and body["note"] is None
    tree = body["explanation"]
    assert (tree["operator"], tree["result"]) == ("-and", False)
    either, rooted = tree["children"]
    assert (either["operator"], either["result"]) == ("-or", True)
    assert either["children"][1] == {
        "type": "condition",
        "attribute": "device.deviceOSType",
        "actual": "iPad",
        "operator": "-eq",
        "expected": "iPad",
        "result": True,
        "text": 'device.deviceOSType -eq "iPad"',
    }
    assert (rooted["actual"], rooted["result"]) == (None, False)
    assert body["lines"][0] == "✗ -and: 1 of 2 true"
    by_serial = await client.post(
        "/api/v1/groups/preview/explain",
        json={"dynamic_kind": "device", "rule": "device.isRooted -ne true", "lookup": "dmpx1"},
        headers=admin.headers,
    )
    assert by_serial.json()["matches"] is True and by_serial.json()["subject"]["id"] == str(device)


async def test_explain_notes_that_retired_devices_match_nothing(
    client: httpx.AsyncClient, factory: Factory, sessionmaker: async_sessionmaker[AsyncSession]
) -> None:
    admin = await factory.admin()
    (device,) = await insert_devices(sessionmaker, [{"management_state": "retired"}])
    body = (
        await client.post(
            "/api/v1/groups/preview/explain",
            json={"dynamic_kind": "device", "rule": "device.objectId -ne null", "device_id": str(device)},
            headers=admin.headers,
        )
    ).json()
    assert body["matches"] is False and body["explanation"]["result"] is True
    assert body["note"] == "The device is retired: it belongs to no dynamic group."


async def test_explain_for_a_user_and_for_unknown_subjects(
    client: httpx.AsyncClient, factory: Factory, sessionmaker: async_sessionmaker[AsyncSession]
) -> None:
    admin = await factory.admin()
    carol = await factory.admin(None, email="carol@example.com", token=False)
    await set_user(sessionmaker, carol.id, job_title="CFO")
    ok = await client.post(
        "/api/v1/groups/preview/explain",
        json={
            "dynamic_kind": "user",
            "rule": 'user.jobTitle -in ["CEO", "CFO"]',
            "lookup": "CAROL@example.com",
        },
        headers=admin.headers,
    )
    assert ok.status_code == 200 and ok.json()["matches"] is True
    assert ok.json()["lines"] == ['✓ user.jobTitle -in ["CEO", "CFO"]: user.jobTitle is "CFO"']
    for body, status in (
        ({"dynamic_kind": "device", "rule": "device.objectId -ne null", "device_id": str(uuid.uuid4())}, 404),
        ({"dynamic_kind": "device", "rule": "device.objectId -ne null", "lookup": "nothing-here"}, 404),
        ({"dynamic_kind": "user", "rule": "user.objectId -ne null", "user_id": str(uuid.uuid4())}, 404),
        ({"dynamic_kind": "user", "rule": "user.objectId -ne null", "device_id": str(uuid.uuid4())}, 422),
        ({"dynamic_kind": "device", "rule": "device.objectId -ne null"}, 422),
    ):
        response = await client.post("/api/v1/groups/preview/explain", json=body, headers=admin.headers)
        assert response.status_code == status, (body, response.text)


@pytest.mark.parametrize("kind", ["device", "user"])
async def test_incremental_refresh_agrees_with_full_evaluation(
    kind: str, client: httpx.AsyncClient, factory: Factory, sessionmaker: async_sessionmaker[AsyncSession]
) -> None:
    """Every device refreshed one by one gives the memberships a full evaluation gives."""
    admin = await factory.admin()
    if kind == "device":
        await _population(sessionmaker, size=80)
        rules = DEVICE_RULES[:6]
    else:
        for i in range(12):
            person = await factory.admin(None, token=False)
            await set_user(sessionmaker, person.id, department=["Sales", "R&D", None][i % 3])
        rules = ['user.department -eq "Sales"', "user.department -ne null", 'user.mail -contains "user"']
    groups = [await dynamic_group(client, admin, f"g{i}", r, kind=kind) for i, r in enumerate(rules)]
    stored = stored_device_members if kind == "device" else stored_user_members
    full = [await stored(sessionmaker, g["id"]) for g in groups]
    context.set_current(context.RequestContext(correlation_id="test", actor=context.SYSTEM))
    async with sessionmaker() as session:
        from sqlalchemy import text

        await session.execute(
            text("DELETE FROM group_devices" if kind == "device" else "DELETE FROM group_users")
        )
        entity = Device if kind == "device" else User
        for row in (await session.scalars(select(entity))).all():
            if isinstance(row, Device):
                await membership.refresh_device(session, row)
            else:
                await membership.refresh_user(session, row)
        await session.commit()
    assert [await stored(sessionmaker, g["id"]) for g in groups] == full


async def test_a_rule_change_waits_for_a_device_refresh_in_flight_and_leaves_no_stale_membership(
    client: httpx.AsyncClient, factory: Factory, sessionmaker: async_sessionmaker[AsyncSession]
) -> None:
    """A check-in has moved a device into a group under the old rule but not committed yet; the admin's rule
    change must not evaluate around it (the device's membership would then outlive the rule)."""
    import asyncio

    admin = await factory.admin()
    (device_id,) = await insert_devices(sessionmaker, [{"model": "Model B"}])
    group = await dynamic_group(client, admin, "Model A", 'device.deviceModel -eq "Model A"')
    context.set_current(context.RequestContext(correlation_id="test", actor=context.SYSTEM))
    async with sessionmaker() as checkin:
        device = await checkin.get_one(Device, device_id, with_for_update=True)
        before = membership.device_rule_inputs(device)
        device.model = "Model A"
        change = await membership.refresh_device(checkin, device, unless=before)
        assert change is not None and [g.display_name for g in change.added] == ["Model A"]
        rule_change = asyncio.create_task(
            client.patch(
                f"/api/v1/groups/{group['id']}",
                json={"rule": 'device.deviceModel -eq "Model C"'},
                headers=admin.headers,
            )
        )
        await asyncio.sleep(0.5)
        assert not rule_change.done()  # waiting for the check-in's FOR SHARE on the group
        await checkin.commit()
    response = await asyncio.wait_for(rule_change, 10)
    assert response.status_code == 200, response.text
    assert response.json()["evaluation"]["removed"] == 1
    assert await stored_device_members(sessionmaker, group["id"]) == set()
