"""Bulk remote actions over a selection, their progress and cancellation, and clearing a device's queue."""

from __future__ import annotations

import asyncio
import uuid
from typing import Any

import asyncpg
import httpx
from fastapi import FastAPI
from sqlalchemy import event, func, insert, select, update
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from corral.kit.time import utcnow
from corral.models import BulkAction, CommandStatus, Device, DeviceCommand
from corral.push.hub import WAKE_CHANNEL
from tests.conftest import Admin, Factory, audit_rows, count_rows, issue_token
from tests.devices.device import TestDevice
from tests.devices.test_enrollment_and_checkin import enrolled, make_token

BULK = "/api/v1/devices/bulk-actions"


# ------------------------------------------------------------------------------------------- helpers
async def tag(client: httpx.AsyncClient, admin: Admin, name: str) -> str:
    response = await client.post("/api/v1/scope-tags", json={"name": name}, headers=admin.headers)
    assert response.status_code == 201, response.text
    return str(response.json()["id"])


async def role(client: httpx.AsyncClient, admin: Admin, name: str, permissions: list[str]) -> str:
    response = await client.post(
        "/api/v1/roles", json={"name": name, "permissions": permissions}, headers=admin.headers
    )
    assert response.status_code == 201, response.text
    return str(response.json()["id"])


async def assigned(
    client: httpx.AsyncClient,
    factory: Factory,
    sessionmaker: async_sessionmaker[AsyncSession],
    admin: Admin,
    role_id: str,
    tags: list[str] | None = None,
) -> Admin:
    """A new account holding ``role_id`` (over ``tags``, or everywhere), with an API token."""
    person = await factory.admin(None, token=False)
    payload: dict[str, Any] = {
        "name": f"assignment {uuid.uuid4().hex[:6]}",
        "role_id": role_id,
        "member_ids": [str(person.id)],
        "scope_all": tags is None,
        "scope_tag_ids": tags or [],
    }
    response = await client.post("/api/v1/role-assignments", json=payload, headers=admin.headers)
    assert response.status_code == 201, response.text
    person.token = await issue_token(sessionmaker, person.id)
    return person


async def help_desk_role_id(client: httpx.AsyncClient, admin: Admin) -> str:
    roles = (await client.get("/api/v1/roles", headers=admin.headers)).json()
    return str(next(r["id"] for r in roles if r["name"] == "Help desk operator"))


async def bulk(
    client: httpx.AsyncClient, admin: Admin, type_: str, ids: list[Any], **body: Any
) -> httpx.Response:
    return await client.post(
        BULK, json={"type": type_, "device_ids": [str(i) for i in ids], **body}, headers=admin.headers
    )


async def progress(client: httpx.AsyncClient, admin: Admin, bulk_id: str) -> dict[str, Any]:
    response = await client.get(f"{BULK}/{bulk_id}", headers=admin.headers)
    assert response.status_code == 200, response.text
    body: dict[str, Any] = response.json()
    return body


async def report(device: TestDevice, command_id: str, status: str, **extra: Any) -> None:
    result = {"command_id": command_id, "status": status, **extra}
    response = await device.checkin({"command_results": [result]})
    assert response.status_code == 200, response.text


async def command_of(client: httpx.AsyncClient, admin: Admin, device: TestDevice) -> dict[str, Any]:
    history = await client.get(f"/api/v1/devices/{device.device_id}/commands", headers=admin.headers)
    body: dict[str, Any] = history.json()[0]
    return body


async def retire_for_good(client: httpx.AsyncClient, admin: Admin, device: TestDevice) -> None:
    queued = await client.post(
        f"/api/v1/devices/{device.device_id}/actions/retire",
        json={"reason": "Left the company", "confirm": device.name},
        headers=admin.headers,
    )
    assert queued.status_code == 202, queued.text
    command = (await device.checkin({})).json()["commands"][0]
    await report(device, command["id"], "succeeded")


# ------------------------------------------------------------------------------------------- bulk actions
async def test_scoped_help_desk_bulk_locks_and_devices_outside_their_scope_are_just_not_found(
    client: httpx.AsyncClient, factory: Factory, sessionmaker: async_sessionmaker[AsyncSession]
) -> None:
    admin = await factory.admin("Global administrator")
    paris, berlin = await tag(client, admin, "Paris"), await tag(client, admin, "Berlin")
    in_paris = [await enrolled(client, admin, scope_tag_ids=[paris]) for _ in range(3)]
    in_berlin = await enrolled(client, admin, scope_tag_ids=[berlin])
    untagged = await enrolled(client, admin)
    helpdesk = await assigned(
        client, factory, sessionmaker, admin, await help_desk_role_id(client, admin), [paris]
    )
    nowhere = uuid.uuid4()
    selection = [d.device_id for d in (*in_paris, in_berlin, untagged)] + [str(nowhere)]

    response = await bulk(
        client, helpdesk, "lock", selection, params={"message": "Office closed"}, reason="Ticket 4711"
    )
    assert response.status_code == 201, response.text
    body = response.json()
    assert (
        body["type"] == "lock" and body["label"] == "Lock" and body["params"] == {"message": "Office closed"}
    )
    assert (body["requested_count"], body["queued_count"], body["skipped_count"]) == (6, 3, 3)
    # Out of scope and nonexistent are indistinguishable: "not found", no name.
    assert sorted(s["device_id"] for s in body["skipped"]) == sorted(
        [in_berlin.device_id, untagged.device_id, str(nowhere)]
    )
    assert {(s["device_name"], s["reason"]) for s in body["skipped"]} == {(None, "No such device.")}
    assert sorted(i["device_id"] for i in body["items"]) == sorted(d.device_id for d in in_paris)
    assert {i["status"] for i in body["items"]} == {"queued"}
    assert body["counts"]["queued"] == 3 and body["done"] is False and body["hidden_count"] == 0

    async with sessionmaker() as session:
        commands = (await session.scalars(select(DeviceCommand))).all()
        stored = await session.scalar(select(BulkAction))
    assert stored is not None and stored.requested_by_name == helpdesk.email
    assert len(commands) == 3 and {c.bulk_action_id for c in commands} == {stored.id}
    assert {c.reason for c in commands} == {"Ticket 4711"}
    # The devices' own pages show the command.
    delivered = (await in_paris[0].checkin({})).json()["commands"]
    assert [(c["type"], c["params"]) for c in delivered] == [("lock", {"message": "Office closed"})]

    events = await audit_rows(sessionmaker, activity="device.bulk_action.lock")
    assert len(events) == 1 and events[0].actor_name == helpdesk.email
    assert events[0].target_type == "bulk_action" and events[0].target_id == body["id"]
    assert events[0].detail == "Ticket 4711"
    assert len(await audit_rows(sessionmaker, activity="device.action.lock")) == 3

    # The global administrator sees every row; a Berlin-only viewer sees the counts, not the Paris devices.
    everything = await progress(client, admin, body["id"])
    assert len(everything["items"]) == 3 and everything["hidden_count"] == 0
    viewer = await assigned(
        client, factory, sessionmaker, admin, await help_desk_role_id(client, admin), [berlin]
    )
    seen = await progress(client, viewer, body["id"])
    assert seen["items"] == [] and seen["hidden_count"] == 3 and sum(seen["counts"].values()) == 3
    assert {(s["device_name"], s["reason"]) for s in seen["skipped"]} == {(None, "No such device.")}


async def test_devices_that_cannot_take_the_action_are_skipped_with_the_reason(
    client: httpx.AsyncClient, factory: Factory, sessionmaker: async_sessionmaker[AsyncSession]
) -> None:
    admin = await factory.admin("Global administrator")
    laptop = await enrolled(client, admin)
    phone = TestDevice(client, platform="ios")
    assert (await phone.enroll(await make_token(client, admin, platforms=["ios"]))).status_code == 201
    retired = await enrolled(client, admin)
    await retire_for_good(client, admin, retired)

    response = await bulk(client, admin, "shutdown", [laptop.device_id, phone.device_id, retired.device_id])
    assert response.status_code == 201, response.text
    body = response.json()
    assert body["queued_count"] == 1 and [i["device_id"] for i in body["items"]] == [laptop.device_id]
    skipped = {s["device_name"]: s["reason"] for s in body["skipped"]}
    assert skipped == {
        phone.name: "Shut down is not available for ios devices.",
        retired.name: "The device is retired: it takes no more commands.",
    }


async def test_a_selection_where_nothing_can_be_queued_is_still_recorded(
    client: httpx.AsyncClient, factory: Factory
) -> None:
    admin = await factory.admin("Global administrator")
    response = await bulk(client, admin, "sync", [uuid.uuid4(), uuid.uuid4()])
    assert response.status_code == 201, response.text
    body = response.json()
    assert (body["requested_count"], body["queued_count"], body["skipped_count"]) == (2, 0, 2)
    assert body["done"] is True and body["items"] == []


async def test_wipe_in_bulk_needs_a_reason_and_the_device_count_typed_and_refusals_write_nothing(
    client: httpx.AsyncClient, factory: Factory, sessionmaker: async_sessionmaker[AsyncSession]
) -> None:
    admin = await factory.admin("Global administrator")
    devices = [await enrolled(client, admin) for _ in range(2)]
    ids = [d.device_id for d in devices]
    refusals = [
        ({}, "needs a reason"),
        ({"reason": "Stolen laptops"}, "Type the number of selected devices (2)"),
        ({"reason": "Stolen laptops", "confirm": "3"}, "Type the number of selected devices (2)"),
        ({"reason": "Stolen laptops", "confirm": devices[0].name}, "Type the number"),
        ({"reason": "   ", "confirm": "2"}, "needs a reason"),
        ({"reason": "Stolen laptops", "confirm": "2", "params": {"erase": True}}, "params.erase"),
    ]
    for body, message in refusals:
        response = await bulk(client, admin, "wipe", ids, **body)
        assert response.status_code == 422, response.text
        assert message in response.json()["detail"]
    assert await count_rows(sessionmaker, "bulk_actions") == 0
    assert await count_rows(sessionmaker, "device_commands") == 0
    assert not await audit_rows(sessionmaker, activity="device.bulk_action.wipe")

    done = await bulk(client, admin, "wipe", ids, reason="Stolen laptops", confirm=" 2 ")
    assert done.status_code == 201, done.text
    assert done.json()["queued_count"] == 2 and done.json()["destructive"] is True
    for device in devices:
        state = (await client.get(f"/api/v1/devices/{device.device_id}", headers=admin.headers)).json()
        assert state["management_state"] == "wipe_pending"


async def test_bulk_action_needs_the_permission_of_the_chosen_action(
    client: httpx.AsyncClient, factory: Factory, sessionmaker: async_sessionmaker[AsyncSession]
) -> None:
    admin = await factory.admin("Global administrator")
    device = await enrolled(client, admin)
    reader = await factory.admin("Read-only operator")
    refused = await bulk(client, reader, "sync", [device.device_id])
    assert refused.status_code == 403 and "permission" in refused.json()["detail"]
    locker = await assigned(
        client,
        factory,
        sessionmaker,
        admin,
        await role(client, admin, "Lockers", ["devices:read", "remote:lock"]),
    )
    wipe = await bulk(client, locker, "wipe", [device.device_id], reason="Stolen laptop", confirm="1")
    assert wipe.status_code == 403 and "remote:wipe" in wipe.json()["detail"]
    assert await count_rows(sessionmaker, "bulk_actions") == 0
    assert (await bulk(client, locker, "lock", [device.device_id])).status_code == 201

    anonymous = await client.post(BULK, json={"type": "lock", "device_ids": [device.device_id]})
    assert anonymous.status_code == 401
    assert (await client.get(BULK)).status_code == 401


async def test_selections_are_checked(
    client: httpx.AsyncClient, factory: Factory, sessionmaker: async_sessionmaker[AsyncSession]
) -> None:
    admin = await factory.admin("Global administrator")
    device = await enrolled(client, admin)
    other = await enrolled(client, admin)
    too_many = [uuid.uuid4() for _ in range(1001)]
    for body in (
        {"type": "sync", "device_ids": [str(i) for i in too_many]},
        {"type": "sync", "device_ids": []},
        {"type": "sync"},
        {"type": "sync", "device_ids": [device.device_id], "filter": {}},
        {"type": "sync", "device_ids": ["not-a-uuid"]},
        {"type": "explode", "device_ids": [device.device_id]},
        {"type": "rename", "device_ids": [device.device_id], "params": {"name": "same-for-all"}},
        {"type": "lock", "device_ids": [device.device_id], "params": {"colour": "red"}},
        {"type": "lost_mode_on", "device_ids": [device.device_id]},
        {"type": "sync", "device_ids": [device.device_id], "filter": None, "extra": 1},
    ):
        response = await client.post(BULK, json=body, headers=admin.headers)
        assert response.status_code == 422, f"{body}: {response.text}"
        assert response.json()["detail"]
    assert await count_rows(sessionmaker, "bulk_actions") == 0
    assert await count_rows(sessionmaker, "device_commands") == 0

    # A repeated id counts once.
    repeated = await bulk(client, admin, "sync", [device.device_id, other.device_id, device.device_id])
    assert repeated.status_code == 201, repeated.text
    assert (repeated.json()["requested_count"], repeated.json()["queued_count"]) == (2, 2)
    async with sessionmaker() as session:
        assert await session.scalar(select(func.count()).select_from(DeviceCommand)) == 2


async def test_a_filter_selects_the_matching_devices_in_scope(
    client: httpx.AsyncClient, factory: Factory, sessionmaker: async_sessionmaker[AsyncSession]
) -> None:
    admin = await factory.admin("Global administrator")
    laptops = [await enrolled(client, admin) for _ in range(2)]
    phone = TestDevice(client, platform="ios")
    assert (await phone.enroll(await make_token(client, admin, platforms=["ios"]))).status_code == 201
    response = await client.post(
        BULK, json={"type": "sync", "filter": {"platform": "linux"}}, headers=admin.headers
    )
    assert response.status_code == 201, response.text
    assert sorted(i["device_id"] for i in response.json()["items"]) == sorted(d.device_id for d in laptops)
    nothing = await client.post(
        BULK, json={"type": "sync", "filter": {"platform": "android"}}, headers=admin.headers
    )
    assert nothing.status_code == 422 and "No device" in nothing.json()["detail"]
    wipe = await client.post(
        BULK,
        json={"type": "retire", "filter": {"platform": "linux"}, "reason": "Project over", "confirm": "3"},
        headers=admin.headers,
    )
    assert wipe.status_code == 422 and "(2)" in wipe.json()["detail"]
    events = await audit_rows(sessionmaker, activity="device.bulk_action.sync")
    assert any(
        c["name"] == "filter" and c["new"] == {"platform": "linux"} for c in events[0].modified_properties
    )


async def test_devices_visible_but_outside_the_actions_scope_are_skipped_by_name(
    client: httpx.AsyncClient, factory: Factory, sessionmaker: async_sessionmaker[AsyncSession]
) -> None:
    admin = await factory.admin("Global administrator")
    paris, berlin = await tag(client, admin, "Paris"), await tag(client, admin, "Berlin")
    in_paris = await enrolled(client, admin, scope_tag_ids=[paris])
    in_berlin = await enrolled(client, admin, scope_tag_ids=[berlin])
    # Reads everywhere, locks in Paris only.
    person = await factory.admin(None, token=False)
    roles = (await client.get("/api/v1/roles", headers=admin.headers)).json()
    read_only = next(r["id"] for r in roles if r["name"] == "Read-only operator")
    lockers = await role(client, admin, "Lockers", ["devices:read", "remote:lock"])
    for role_id, tags in ((read_only, None), (lockers, [paris])):
        payload = {
            "name": f"assignment {uuid.uuid4().hex[:6]}",
            "role_id": role_id,
            "member_ids": [str(person.id)],
            "scope_all": tags is None,
            "scope_tag_ids": tags or [],
        }
        response = await client.post("/api/v1/role-assignments", json=payload, headers=admin.headers)
        assert response.status_code == 201, response.text
    person.token = await issue_token(sessionmaker, person.id)

    response = await bulk(client, person, "lock", [in_paris.device_id, in_berlin.device_id, uuid.uuid4()])
    assert response.status_code == 201, response.text
    body = response.json()
    assert body["queued_count"] == 1 and [i["device_id"] for i in body["items"]] == [in_paris.device_id]
    assert {s["device_name"]: s["reason"] for s in body["skipped"]} == {
        in_berlin.name: "This needs the permission remote:lock over this object's scope.",
        None: "No such device.",
    }


async def test_a_bulk_wipe_expires_requests_not_approved_in_time_and_skips_devices_still_held(
    client: httpx.AsyncClient, factory: Factory, sessionmaker: async_sessionmaker[AsyncSession]
) -> None:
    admin = await factory.admin("Global administrator")
    late, waiting, fresh = [await enrolled(client, admin) for _ in range(3)]
    turned_on = await client.patch(
        "/api/v1/settings", json={"wipe_requires_approval": True}, headers=admin.headers
    )
    assert turned_on.status_code == 200, turned_on.text
    requested = {}
    for device in (late, waiting):
        response = await client.post(
            f"/api/v1/devices/{device.device_id}/actions/wipe",
            json={"reason": "Stolen from the car", "confirm": device.name},
            headers=admin.headers,
        )
        assert response.status_code == 202 and response.json()["status"] == "pending_approval"
        requested[device.device_id] = uuid.UUID(response.json()["id"])
    async with sessionmaker() as session:
        await session.execute(
            update(DeviceCommand)
            .where(DeviceCommand.id == requested[late.device_id])
            .values(expires_at=func.now() - func.make_interval(0, 0, 0, 0, 1))
        )
        await session.commit()

    ids = [late.device_id, waiting.device_id, fresh.device_id]
    response = await bulk(client, admin, "wipe", ids, reason="Office burgled", confirm="3")
    assert response.status_code == 201, response.text
    body = response.json()
    assert body["queued_count"] == 2 and body["counts"]["pending_approval"] == 2
    assert body["skipped"] == [
        {
            "device_id": waiting.device_id,
            "device_name": waiting.name,
            "reason": "A wipe pending is already under way.",
        }
    ]
    async with sessionmaker() as session:
        old = await session.get(DeviceCommand, requested[late.device_id])
        assert old is not None and old.status is CommandStatus.expired and old.completed_at is not None
        assert old.error and "Not approved in time" in old.error
        still = await session.get(DeviceCommand, requested[waiting.device_id])
        assert still is not None and still.status is CommandStatus.pending_approval
    for device in (late, fresh):
        info = (await client.get(f"/api/v1/devices/{device.device_id}", headers=admin.headers)).json()
        assert info["management_state"] == "wipe_pending"
    # The expiry is recorded before the new request, each with what it did to the device.
    events = [
        e
        for e in await audit_rows(sessionmaker, target_id=late.device_id)
        if e.activity in ("device.action.expire", "device.action.wipe")
    ]
    assert [e.activity for e in events] == [
        "device.action.wipe",
        "device.action.expire",
        "device.action.wipe",
    ]
    assert {"name": "management_state", "old": "wipe_pending", "new": "managed"} in events[
        1
    ].modified_properties
    assert {"name": "management_state", "old": "managed", "new": "wipe_pending"} in events[
        2
    ].modified_properties
    assert (
        events[2].detail
        and "Office burgled" in events[2].detail
        and "second administrator" in events[2].detail
    )


async def test_a_bulk_action_wakes_the_devices_it_queued_for_and_not_those_waiting_for_approval(
    client: httpx.AsyncClient, factory: Factory, db_url: str
) -> None:
    heard: list[str] = []
    listener = await asyncpg.connect(db_url.replace("postgresql+asyncpg://", "postgresql://"))
    await listener.add_listener(WAKE_CHANNEL, lambda *args: heard.append(str(args[3])))
    try:
        admin = await factory.admin("Global administrator")
        devices = [await enrolled(client, admin) for _ in range(3)]
        assert (await bulk(client, admin, "sync", [d.device_id for d in devices])).status_code == 201
        expected = {f"{d.device_id}:command" for d in devices}
        for _ in range(100):
            if expected <= set(heard):
                break
            await asyncio.sleep(0.05)
        assert sorted(heard) == sorted(expected)
        heard.clear()
        turned_on = await client.patch(
            "/api/v1/settings", json={"wipe_requires_approval": True}, headers=admin.headers
        )
        assert turned_on.status_code == 200, turned_on.text
        wipe = await bulk(client, admin, "wipe", [d.device_id for d in devices], reason="Stolen", confirm="3")
        assert wipe.status_code == 201 and wipe.json()["counts"]["pending_approval"] == 3
        await asyncio.sleep(0.3)
        assert heard == []
    finally:
        await listener.close()


async def test_a_bulk_action_runs_as_many_statements_for_50_devices_as_for_5(
    app: FastAPI, client: httpx.AsyncClient, factory: Factory, sessionmaker: async_sessionmaker[AsyncSession]
) -> None:
    """Set-based: the statements do not grow with the selection (a device at a time took about seven each:
    1000 devices took half a minute)."""
    admin = await factory.admin("Global administrator")
    assert (await client.get("/api/v1/settings", headers=admin.headers)).status_code == 200  # created once
    # Device rows straight into the table: enrolling 55 devices would only make the test slow.
    async with sessionmaker() as session:
        ids = [uuid.uuid4() for _ in range(55)]
        await session.execute(
            insert(Device),
            [
                {
                    "id": device_id,
                    "name": f"kiosk-{n:02d}",
                    "serial_number": f"SN-KIOSK-{n:02d}",
                    "platform": "windows",
                    "ownership": "company",
                    "enrolled_at": utcnow(),
                }
                for n, device_id in enumerate(ids)
            ],
        )
        await session.commit()
    statements: list[str] = []

    def count(_conn: Any, _cursor: Any, statement: str, *_args: Any) -> None:
        statements.append(statement)

    counts: dict[tuple[str, int], int] = {}
    engine = app.state.engine.sync_engine
    event.listen(engine, "before_cursor_execute", count)
    try:
        for type_, body in (
            ("lock", {"params": {"message": "Closed"}}),
            ("wipe", {"reason": "Office burgled"}),
        ):
            for selection in (ids[:5], ids[5:]):
                statements.clear()
                # One unknown id each time: the skipped are looked up set-based too.
                requested = [*selection, uuid.uuid4()]
                confirm = {"confirm": str(len(requested))} if type_ == "wipe" else {}
                response = await bulk(client, admin, type_, requested, **body, **confirm)
                assert response.status_code == 201, response.text
                assert (response.json()["queued_count"], response.json()["skipped_count"]) == (
                    len(selection),
                    1,
                )
                counts[(type_, len(selection))] = len(statements)
    finally:
        event.remove(engine, "before_cursor_execute", count)
    assert 0 < counts[("lock", 50)] < 50 and counts[("lock", 5)] == counts[("lock", 50)], counts
    assert counts[("wipe", 5)] == counts[("wipe", 50)], counts
    assert len(await audit_rows(sessionmaker, activity="device.action.wipe")) == 55


async def test_progress_follows_what_the_devices_report(client: httpx.AsyncClient, factory: Factory) -> None:
    admin = await factory.admin("Global administrator")
    devices = [await enrolled(client, admin) for _ in range(3)]
    created = (await bulk(client, admin, "lock", [d.device_id for d in devices])).json()
    bulk_id = created["id"]
    commands = {d.device_id: (await command_of(client, admin, d))["id"] for d in devices}

    first, second, third = devices
    await first.checkin({})  # delivered
    state = await progress(client, admin, bulk_id)
    assert (state["counts"]["queued"], state["counts"]["sent"], state["done"]) == (2, 1, False)
    await report(first, commands[first.device_id], "acknowledged")
    await second.checkin({})
    await report(second, commands[second.device_id], "succeeded", result={"locked": True})
    state = await progress(client, admin, bulk_id)
    assert {k: v for k, v in state["counts"].items() if v} == {"acknowledged": 1, "succeeded": 1, "queued": 1}
    assert state["finished_count"] == 1 and state["done"] is False
    await report(first, commands[first.device_id], "succeeded")
    await third.checkin({})
    await report(third, commands[third.device_id], "failed", error="No screen lock configured")
    state = await progress(client, admin, bulk_id)
    assert {k: v for k, v in state["counts"].items() if v} == {"succeeded": 2, "failed": 1}
    assert state["finished_count"] == 3 and state["done"] is True
    rows = {i["device_id"]: i for i in state["items"]}
    assert rows[third.device_id]["status"] == "failed"
    assert rows[third.device_id]["error"] == "No screen lock configured"
    assert (
        rows[first.device_id]["completed_at"]
        and rows[first.device_id]["command_id"] == commands[first.device_id]
    )

    listed = (await client.get(BULK, headers=admin.headers)).json()
    assert [b["id"] for b in listed["items"]] == [bulk_id] and listed["items"][0]["done"] is True
    assert "skipped" not in listed["items"][0]


async def test_bulk_actions_are_listed_newest_first_in_pages(
    client: httpx.AsyncClient, factory: Factory
) -> None:
    admin = await factory.admin("Global administrator")
    device = await enrolled(client, admin)
    made = [(await bulk(client, admin, "sync", [device.device_id])).json()["id"] for _ in range(3)]
    first = (await client.get(BULK, params={"limit": 2}, headers=admin.headers)).json()
    assert [b["id"] for b in first["items"]] == made[::-1][:2] and first["next_cursor"]
    rest = (
        await client.get(BULK, params={"limit": 2, "cursor": first["next_cursor"]}, headers=admin.headers)
    ).json()
    assert [b["id"] for b in rest["items"]] == [made[0]] and rest["next_cursor"] is None
    broken = await client.get(BULK, params={"cursor": "not-a-cursor"}, headers=admin.headers)
    assert broken.status_code == 400
    assert (await client.get(f"{BULK}/{uuid.uuid4()}", headers=admin.headers)).status_code == 404
    assert (await client.get(f"{BULK}/nope", headers=admin.headers)).status_code == 404  # ids are UUIDs


async def test_bulk_cancel_withdraws_what_was_not_delivered_yet(
    client: httpx.AsyncClient, factory: Factory, sessionmaker: async_sessionmaker[AsyncSession]
) -> None:
    admin = await factory.admin("Global administrator")
    paris = await tag(client, admin, "Paris")
    in_paris = [await enrolled(client, admin, scope_tag_ids=[paris]) for _ in range(3)]
    elsewhere = await enrolled(client, admin)
    devices = [*in_paris, elsewhere]
    created = (
        await bulk(
            client, admin, "retire", [d.device_id for d in devices], reason="Office closing", confirm="4"
        )
    ).json()
    assert created["queued_count"] == 4
    await in_paris[0].checkin({})  # delivered: too late to cancel a retire

    reader = await factory.admin("Read-only operator")
    refused = await client.post(f"{BULK}/{created['id']}/cancel", headers=reader.headers)
    assert refused.status_code == 403
    helpdesk = await assigned(
        client, factory, sessionmaker, admin, await help_desk_role_id(client, admin), [paris]
    )
    response = await client.post(f"{BULK}/{created['id']}/cancel", headers=helpdesk.headers)
    assert response.status_code == 200, response.text
    assert response.json() == {"canceled": 2, "kept": 1}  # the one outside their scope stays
    state = await progress(client, admin, created["id"])
    assert {k: v for k, v in state["counts"].items() if v} == {"sent": 1, "canceled": 2, "queued": 1}
    for device in in_paris[1:]:
        info = (await client.get(f"/api/v1/devices/{device.device_id}", headers=admin.headers)).json()
        assert info["management_state"] == "managed"
    again = await client.post(f"{BULK}/{created['id']}/cancel", headers=admin.headers)
    assert again.json() == {"canceled": 1, "kept": 0}
    events = await audit_rows(sessionmaker, activity="device.bulk_action.cancel")
    assert [e.actor_name for e in events] == [helpdesk.email, admin.email]
    assert len(await audit_rows(sessionmaker, activity="device.action.cancel")) == 3
    missing = await client.post(f"{BULK}/{uuid.uuid4()}/cancel", headers=admin.headers)
    assert missing.status_code == 404


# ------------------------------------------------------------------------------------------- clear the queue
async def test_clear_queue_cancels_what_it_may_and_keeps_a_delivered_wipe(
    client: httpx.AsyncClient, factory: Factory, sessionmaker: async_sessionmaker[AsyncSession]
) -> None:
    admin = await factory.admin("Global administrator")
    device = await enrolled(client, admin)
    url = f"/api/v1/devices/{device.device_id}"
    wipe = await client.post(
        f"{url}/actions/wipe", json={"reason": "Stolen laptop", "confirm": device.name}, headers=admin.headers
    )
    assert wipe.status_code == 202
    await device.checkin({})  # the wipe is delivered: too late to cancel
    for action in ("lock", "sync"):
        assert (
            await client.post(f"{url}/actions/{action}", json={}, headers=admin.headers)
        ).status_code == 202

    cleared = await client.post(f"{url}/commands/clear", headers=admin.headers)
    assert cleared.status_code == 200, cleared.text
    assert cleared.json() == {"canceled": 2, "kept": 1}
    history = (await client.get(f"{url}/commands", headers=admin.headers)).json()
    assert {c["type"]: c["status"] for c in history} == {
        "wipe": "sent",
        "lock": "canceled",
        "sync": "canceled",
    }
    events = await audit_rows(sessionmaker, activity="device.commands.clear")
    assert len(events) == 1 and events[0].target_id == device.device_id
    assert events[0].detail == "2 command(s) canceled, 1 kept"
    # Nothing left to clear: nothing changes, nothing is audited.
    assert (await client.post(f"{url}/commands/clear", headers=admin.headers)).json() == {
        "canceled": 0,
        "kept": 1,
    }
    assert len(await audit_rows(sessionmaker, activity="device.commands.clear")) == 1


async def test_clear_queue_needs_each_actions_permission_and_the_device_in_scope(
    client: httpx.AsyncClient, factory: Factory, sessionmaker: async_sessionmaker[AsyncSession]
) -> None:
    admin = await factory.admin("Global administrator")
    paris = await tag(client, admin, "Paris")
    device = await enrolled(client, admin, scope_tag_ids=[paris])
    url = f"/api/v1/devices/{device.device_id}"
    wipe = await client.post(
        f"{url}/actions/wipe", json={"reason": "Stolen laptop", "confirm": device.name}, headers=admin.headers
    )
    assert wipe.status_code == 202
    for action in ("lock", "sync"):
        assert (
            await client.post(f"{url}/actions/{action}", json={}, headers=admin.headers)
        ).status_code == 202

    reader = await factory.admin("Read-only operator")
    refused = await client.post(f"{url}/commands/clear", headers=reader.headers)
    assert refused.status_code == 403
    berlin_desk = await assigned(
        client,
        factory,
        sessionmaker,
        admin,
        await help_desk_role_id(client, admin),
        [await tag(client, admin, "Berlin")],
    )
    assert (await client.post(f"{url}/commands/clear", headers=berlin_desk.headers)).status_code == 404
    missing = await client.post(f"/api/v1/devices/{uuid.uuid4()}/commands/clear", headers=admin.headers)
    assert missing.status_code == 404

    locker = await assigned(
        client,
        factory,
        sessionmaker,
        admin,
        await role(client, admin, "Lockers", ["devices:read", "remote:lock"]),
        [paris],
    )
    cleared = await client.post(f"{url}/commands/clear", headers=locker.headers)
    assert cleared.json() == {"canceled": 1, "kept": 2}
    history = (await client.get(f"{url}/commands", headers=admin.headers)).json()
    assert {c["type"]: c["status"] for c in history} == {
        "wipe": "queued",
        "lock": "canceled",
        "sync": "queued",
    }

    # A queued wipe is cancelable: clearing it makes the device managed again.
    assert (await client.post(f"{url}/commands/clear", headers=admin.headers)).json() == {
        "canceled": 2,
        "kept": 0,
    }
    info = (await client.get(url, headers=admin.headers)).json()
    assert info["management_state"] == "managed"
    events = await audit_rows(sessionmaker, activity="device.commands.clear")
    assert [e.actor_name for e in events] == [locker.email, admin.email]
    changes = {c["name"]: c for c in events[1].modified_properties}
    assert (
        changes["management_state"]["old"] == "wipe_pending"
        and changes["management_state"]["new"] == "managed"
    )


async def test_a_bulk_wipe_under_approval_waits_and_can_be_withdrawn(
    client: httpx.AsyncClient, factory: Factory, sessionmaker: async_sessionmaker[AsyncSession]
) -> None:
    admin = await factory.admin("Global administrator")
    turned_on = await client.patch(
        "/api/v1/settings", json={"wipe_requires_approval": True}, headers=admin.headers
    )
    assert turned_on.status_code == 200, turned_on.text
    devices = [await enrolled(client, admin) for _ in range(2)]
    created = await bulk(
        client, admin, "wipe", [d.device_id for d in devices], reason="Stolen laptops", confirm="2"
    )
    assert created.status_code == 201, created.text
    body = created.json()
    assert body["counts"]["pending_approval"] == 2 and body["done"] is False
    assert (await devices[0].checkin({})).json()["commands"] == []  # not delivered before approval
    withdrawn = await client.post(f"{BULK}/{body['id']}/cancel", headers=admin.headers)
    assert withdrawn.json() == {"canceled": 2, "kept": 0}
    state = await progress(client, admin, body["id"])
    assert state["counts"]["canceled"] == 2 and state["done"] is True


async def test_commands_past_their_deadline_count_as_expired_so_the_bulk_action_ends(
    client: httpx.AsyncClient, factory: Factory, sessionmaker: async_sessionmaker[AsyncSession]
) -> None:
    admin = await factory.admin("Global administrator")
    devices = [await enrolled(client, admin) for _ in range(2)]
    body = (await bulk(client, admin, "sync", [d.device_id for d in devices])).json()
    async with sessionmaker() as session:
        await session.execute(
            update(DeviceCommand)
            .where(DeviceCommand.device_id == uuid.UUID(devices[0].device_id))
            .values(expires_at=func.now() - func.make_interval(0, 0, 0, 0, 1))
        )
        await session.commit()
    state = await progress(client, admin, body["id"])
    assert {k: v for k, v in state["counts"].items() if v} == {"expired": 1, "queued": 1}
    assert state["done"] is False
    await devices[1].checkin({})
    await report(devices[1], (await command_of(client, admin, devices[1]))["id"], "succeeded")
    state = await progress(client, admin, body["id"])
    assert {k: v for k, v in state["counts"].items() if v} == {"expired": 1, "succeeded": 1}
    assert state["done"] is True and state["finished_count"] == 2
