"""Licences: CRUD with seats as a hard limit, assignment to users, and enrollment refused for a user who
holds none."""

from __future__ import annotations

import asyncio
import uuid

import httpx
import pytest
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from corral.models import Device, EnrollmentRefusal, EnrollmentTokenUse
from corral.rbac.roles import GLOBAL_ADMINISTRATOR
from tests.conftest import Admin, Factory, audit_rows, count_rows
from tests.devices.device import TestDevice
from tests.users.helpers import create_licence, create_user, set_user


@pytest.fixture
async def glob(factory: Factory) -> Admin:
    return await factory.admin(GLOBAL_ADMINISTRATOR.name)


async def assign(client: httpx.AsyncClient, admin: Admin, user_id: str, licence_id: str) -> httpx.Response:
    return await client.post(f"/api/v1/users/{user_id}/licences/{licence_id}", headers=admin.headers)


# ------------------------------------------------------------------------------------------- licences
async def test_licence_create_read_update_delete_is_audited(
    client: httpx.AsyncClient, glob: Admin, sessionmaker: async_sessionmaker[AsyncSession]
) -> None:
    created = await create_licence(client, glob, "Corral E3", "CORRAL-E3", seats=10)
    assert created["assigned"] == 0 and created["available"] == 10
    listed = (await client.get("/api/v1/licences", headers=glob.headers)).json()
    assert [lic["sku"] for lic in listed] == ["CORRAL-E3"]
    updated = await client.patch(
        f"/api/v1/licences/{created['id']}", json={"seats": 25, "name": "Corral E5"}, headers=glob.headers
    )
    assert updated.status_code == 200 and updated.json()["seats"] == 25
    assert (await client.get(f"/api/v1/licences/{created['id']}", headers=glob.headers)).json()[
        "name"
    ] == "Corral E5"
    assert (await client.delete(f"/api/v1/licences/{created['id']}", headers=glob.headers)).status_code == 204
    assert (await client.get(f"/api/v1/licences/{created['id']}", headers=glob.headers)).status_code == 404
    events = await audit_rows(sessionmaker, target_id=created["id"])
    assert [e.activity for e in events] == ["licence.create", "licence.update", "licence.delete"]
    assert {p["name"]: (p["old"], p["new"]) for p in events[1].modified_properties} == {
        "name": ("Corral E3", "Corral E5"),
        "seats": (10, 25),
    }


@pytest.mark.parametrize(
    "second",
    [{"name": "corral e3", "sku": "OTHER"}, {"name": "Other", "sku": "corral-e3"}],
    ids=["name", "sku"],
)
async def test_duplicate_licence_name_or_sku_is_a_conflict(
    client: httpx.AsyncClient,
    glob: Admin,
    sessionmaker: async_sessionmaker[AsyncSession],
    second: dict[str, str],
) -> None:
    await create_licence(client, glob, "Corral E3", "CORRAL-E3")
    response = await client.post("/api/v1/licences", json={**second, "seats": 1}, headers=glob.headers)
    assert response.status_code == 409, response.text
    assert await count_rows(sessionmaker, "licences") == 1


@pytest.mark.parametrize(
    "payload",
    [
        {"name": "X", "sku": "X", "seats": -1},
        {"name": "", "sku": "X", "seats": 1},
        {"name": "X", "sku": "has space", "seats": 1},
        {"name": "X", "sku": "X"},
        {"name": "X", "sku": "X", "seats": 1, "assigned": 0},
    ],
    ids=["negative-seats", "empty-name", "bad-sku", "no-seats", "extra-field"],
)
async def test_invalid_licence_is_refused(
    client: httpx.AsyncClient, glob: Admin, payload: dict[str, object]
) -> None:
    response = await client.post("/api/v1/licences", json=payload, headers=glob.headers)
    assert response.status_code == 422, response.text


# ------------------------------------------------------------------------------------------- seats
async def test_assignments_stop_at_the_seat_count_and_seats_cannot_go_below_them(
    client: httpx.AsyncClient, glob: Admin, sessionmaker: async_sessionmaker[AsyncSession]
) -> None:
    licence = await create_licence(client, glob, seats=2)
    users = [await create_user(client, glob, f"u{i}@contoso.example") for i in range(3)]
    first = await assign(client, glob, users[0]["id"], licence["id"])
    assert first.status_code == 201 and first.json()["sku"] == licence["sku"]
    again = await assign(client, glob, users[0]["id"], licence["id"])
    assert again.status_code == 200  # already held: nothing changes
    assert (await assign(client, glob, users[1]["id"], licence["id"])).status_code == 201
    full = await assign(client, glob, users[2]["id"], licence["id"])
    assert full.status_code == 409 and "seat" in full.json()["detail"]

    shrink = await client.patch(f"/api/v1/licences/{licence['id']}", json={"seats": 1}, headers=glob.headers)
    assert shrink.status_code == 409 and "2 user(s)" in shrink.json()["detail"]
    in_use = await client.delete(f"/api/v1/licences/{licence['id']}", headers=glob.headers)
    assert in_use.status_code == 409
    current = (await client.get(f"/api/v1/licences/{licence['id']}", headers=glob.headers)).json()
    assert (current["seats"], current["assigned"], current["available"]) == (2, 2, 0)

    removed = await client.delete(
        f"/api/v1/users/{users[0]['id']}/licences/{licence['id']}", headers=glob.headers
    )
    assert removed.status_code == 204
    gone = await client.delete(
        f"/api/v1/users/{users[0]['id']}/licences/{licence['id']}", headers=glob.headers
    )
    assert gone.status_code == 404
    assert (await assign(client, glob, users[2]["id"], licence["id"])).status_code == 201
    holders = (await client.get(f"/api/v1/licences/{licence['id']}/users", headers=glob.headers)).json()
    assert sorted(h["user_principal_name"] for h in holders) == ["u1@contoso.example", "u2@contoso.example"]
    held = (await client.get(f"/api/v1/users/{users[2]['id']}/licences", headers=glob.headers)).json()
    assert [h["licence_id"] for h in held] == [licence["id"]]

    events = await audit_rows(sessionmaker, category="licence", target_id=users[0]["id"])
    assert [e.activity for e in events] == ["licence.assign", "licence.unassign"]
    assert events[0].actor_id == glob.id


async def test_two_assignments_racing_for_the_last_seat_give_it_once(
    client: httpx.AsyncClient, glob: Admin, sessionmaker: async_sessionmaker[AsyncSession]
) -> None:
    licence = await create_licence(client, glob, seats=1)
    users = [await create_user(client, glob, f"racer{i}@contoso.example") for i in range(4)]
    responses = await asyncio.gather(*(assign(client, glob, u["id"], licence["id"]) for u in users))
    assert sorted(r.status_code for r in responses) == [201, 409, 409, 409]
    assert await count_rows(sessionmaker, "user_licences") == 1


async def test_assigning_to_an_unknown_user_or_licence_is_a_404(
    client: httpx.AsyncClient, glob: Admin
) -> None:
    licence = await create_licence(client, glob)
    user = await create_user(client, glob, "known@contoso.example")
    assert (await assign(client, glob, str(uuid.uuid4()), licence["id"])).status_code == 404
    assert (await assign(client, glob, user["id"], str(uuid.uuid4()))).status_code == 404


async def test_deleting_a_user_frees_their_seat(client: httpx.AsyncClient, glob: Admin) -> None:
    licence = await create_licence(client, glob, seats=1)
    user = await create_user(client, glob, "leaving@contoso.example")
    assert (await assign(client, glob, user["id"], licence["id"])).status_code == 201
    assert (await client.delete(f"/api/v1/users/{user['id']}", headers=glob.headers)).status_code == 204
    after = (await client.get(f"/api/v1/licences/{licence['id']}", headers=glob.headers)).json()
    assert after["assigned"] == 0 and after["available"] == 1


# ------------------------------------------------------------------------------------------- enrollment
async def bound_token(client: httpx.AsyncClient, admin: Admin, user_id: str) -> str:
    response = await client.post(
        "/api/v1/enrollment-tokens",
        json={"name": "Bound", "platforms": ["linux"], "ownership": "company", "user_id": user_id},
        headers=admin.headers,
    )
    assert response.status_code == 201, response.text
    return str(response.json()["token"])


async def test_a_user_without_a_licence_cannot_enroll_devices_and_the_refusal_is_recorded(
    client: httpx.AsyncClient, glob: Admin, sessionmaker: async_sessionmaker[AsyncSession]
) -> None:
    user = await create_user(client, glob, "Unlicensed@contoso.example")
    token = await bound_token(client, glob, user["id"])
    device = TestDevice(client)
    response = await device.enroll(token)
    assert response.status_code == 403, response.text
    assert response.headers["content-type"].startswith("application/problem+json")
    assert response.json()["detail"] == "Unlicensed@contoso.example holds no Corral licence."
    async with sessionmaker() as session:
        (use,) = (await session.scalars(select(EnrollmentTokenUse))).all()
        assert await session.scalar(select(Device)) is None
    assert use.result == "refused" and use.serial_number == device.serial
    assert use.detail == "Unlicensed@contoso.example holds no Corral licence."
    assert use.reason == EnrollmentRefusal.user_unlicensed
    # The audit log is read by audit:read holders without licences:read: it gets the generic reason.
    (event,) = await audit_rows(sessionmaker, activity="device.enroll", result="failure")
    assert event.target_type == "enrollment_token" and event.target_id is not None  # what the server knows
    assert "licen" not in (event.detail or "") and "may not enroll devices" in (event.detail or "")

    licence = await create_licence(client, glob)
    assert (await assign(client, glob, user["id"], licence["id"])).status_code == 201
    enrolled = await device.enroll(token)
    assert enrolled.status_code == 201, enrolled.text
    async with sessionmaker() as session:
        row = await session.get(Device, uuid.UUID(enrolled.json()["device_id"]))
    assert row is not None and str(row.user_id) == user["id"]


async def test_a_disabled_user_cannot_enroll_devices(
    client: httpx.AsyncClient, factory: Factory, glob: Admin, sessionmaker: async_sessionmaker[AsyncSession]
) -> None:
    user_id = await factory.user("off@contoso.example", licence=True)
    token = await bound_token(client, glob, str(user_id))
    await set_user(sessionmaker, user_id, enabled=False)
    response = await TestDevice(client).enroll(token)
    assert response.status_code == 403 and "disabled" in response.json()["detail"]


async def test_tokens_bound_to_nobody_need_no_licence(client: httpx.AsyncClient, glob: Admin) -> None:
    response = await client.post(
        "/api/v1/enrollment-tokens", json={"name": "Kiosks", "platforms": ["linux"]}, headers=glob.headers
    )
    assert (await TestDevice(client).enroll(response.json()["token"])).status_code == 201
