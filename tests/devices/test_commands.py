"""Remote actions: permissions, platform and ownership rules, the command lifecycle, wipe and retire."""

from __future__ import annotations

import uuid
from typing import Any

import httpx
import pytest
from sqlalchemy import func, select, update
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from corral.models import AuditEvent, DeviceCertificate, DeviceCommand, ScopeTag
from corral.rbac.roles import HELP_DESK_OPERATOR
from tests.conftest import Admin, Factory
from tests.devices.device import TestDevice
from tests.devices.test_enrollment_and_checkin import enrolled, make_token


async def act(
    client: httpx.AsyncClient, admin: Admin, device: TestDevice, action: str, **body: Any
) -> httpx.Response:
    return await client.post(
        f"/api/v1/devices/{device.device_id}/actions/{action}", json=body, headers=admin.headers
    )


async def test_help_desk_locks_a_device_and_the_lifecycle_is_recorded(
    client: httpx.AsyncClient, factory: Factory, sessionmaker: async_sessionmaker[AsyncSession]
) -> None:
    admin = await factory.admin("Global administrator")
    helpdesk = await factory.admin("Help desk operator")
    device = await enrolled(client, admin)
    queued = await act(
        client, helpdesk, device, "lock", params={"message": "Call IT", "phone": "+1 555 0100"}
    )
    assert queued.status_code == 202, queued.text
    command = queued.json()
    assert command["status"] == "queued" and command["requested_by_name"] == helpdesk.email

    delivered = (await device.checkin({})).json()["commands"]
    assert [(c["id"], c["type"], c["params"]) for c in delivered] == [
        (command["id"], "lock", {"message": "Call IT", "phone": "+1 555 0100"})
    ]
    # At least once: not acknowledged yet, so it comes again.
    assert [c["id"] for c in (await device.checkin({})).json()["commands"]] == [command["id"]]
    ack = await device.checkin({"command_results": [{"command_id": command["id"], "status": "acknowledged"}]})
    assert ack.json()["commands"] == []
    done = await device.checkin(
        {
            "command_results": [
                {
                    "command_id": command["id"],
                    "status": "succeeded",
                    "result": {"locked_at": "2026-11-26T22:31:02Z"},
                }
            ]
        }
    )
    assert done.status_code == 200 and done.json()["commands"] == []
    # A repeated result changes nothing.
    again = await device.checkin({"command_results": [{"command_id": command["id"], "status": "failed"}]})
    assert again.status_code == 200

    history = (
        await client.get(f"/api/v1/devices/{device.device_id}/commands", headers=helpdesk.headers)
    ).json()
    assert history[0]["status"] == "succeeded" and history[0]["result"] == {
        "locked_at": "2026-11-26T22:31:02Z"
    }
    assert history[0]["sent_at"] and history[0]["acknowledged_at"] and history[0]["completed_at"]
    assert history[0]["delivery_count"] == 2
    async with sessionmaker() as session:
        audited = await session.scalar(
            select(func.count())
            .select_from(AuditEvent)
            .where(AuditEvent.activity == "device.action.lock", AuditEvent.actor_name == helpdesk.email)
        )
    assert audited == 1


async def test_read_only_operator_cannot_act(client: httpx.AsyncClient, factory: Factory) -> None:
    admin = await factory.admin("Global administrator")
    reader = await factory.admin("Read-only operator")
    device = await enrolled(client, admin)
    assert (
        await client.get(f"/api/v1/devices/{device.device_id}", headers=reader.headers)
    ).status_code == 200
    for action in ("lock", "wipe", "retire", "sync"):
        assert (await act(client, reader, device, action)).status_code == 403


async def test_idempotency_key_returns_the_first_command(client: httpx.AsyncClient, factory: Factory) -> None:
    admin = await factory.admin("Global administrator")
    device = await enrolled(client, admin)
    first = await act(client, admin, device, "sync", idempotency_key="click-1")
    second = await act(client, admin, device, "sync", idempotency_key="click-1")
    assert first.status_code == 202 and second.status_code == 200
    assert first.json()["id"] == second.json()["id"]


async def test_wipe_of_a_company_device_needs_reason_and_confirmation_then_ends_management(
    client: httpx.AsyncClient, factory: Factory, sessionmaker: async_sessionmaker[AsyncSession]
) -> None:
    admin = await factory.admin("Global administrator")
    device = await enrolled(client, admin)
    assert (await act(client, admin, device, "wipe")).status_code == 422
    assert (
        await act(client, admin, device, "wipe", reason="Stolen from car", confirm="wrong")
    ).status_code == 422
    queued = await act(
        client,
        admin,
        device,
        "wipe",
        reason="Stolen from car",
        confirm=device.name,
        params={"keep_enrollment_data": False},
    )
    assert queued.status_code == 202, queued.text
    state = (await client.get(f"/api/v1/devices/{device.device_id}", headers=admin.headers)).json()
    assert state["management_state"] == "wipe_pending"
    assert (
        await act(client, admin, device, "wipe", reason="Again please", confirm=device.name)
    ).status_code == 409

    delivered = (await device.checkin({})).json()["commands"]
    assert delivered[0]["type"] == "wipe"
    state = (await client.get(f"/api/v1/devices/{device.device_id}", headers=admin.headers)).json()
    assert state["management_state"] == "wipe_issued"
    ack = await device.checkin(
        {"command_results": [{"command_id": delivered[0]["id"], "status": "acknowledged"}]}
    )
    assert ack.status_code == 200
    state = (await client.get(f"/api/v1/devices/{device.device_id}", headers=admin.headers)).json()
    assert state["management_state"] == "wiped"
    # The wiped device's identity is dead.
    refused = await device.checkin({})
    assert refused.status_code == 401
    async with sessionmaker() as session:
        certs = (await session.scalars(select(DeviceCertificate))).all()
    assert certs and all(c.revoked_at is not None and c.revocation_reason == "wipe" for c in certs)
    assert (await act(client, admin, device, "lock")).status_code == 409


async def test_personal_device_cannot_be_wiped_but_can_be_retired(
    client: httpx.AsyncClient, factory: Factory
) -> None:
    admin = await factory.admin("Global administrator")
    device = await enrolled(client, admin, ownership="personal")
    wipe = await act(client, admin, device, "wipe", reason="Left the company", confirm=device.name)
    assert wipe.status_code == 422 and "Retire it instead" in wipe.json()["detail"]
    retire = await act(client, admin, device, "retire", reason="Left the company", confirm=device.name)
    assert retire.status_code == 202
    command = (await device.checkin({})).json()["commands"][0]
    done = await device.checkin({"command_results": [{"command_id": command["id"], "status": "succeeded"}]})
    assert done.status_code == 200
    state = (await client.get(f"/api/v1/devices/{device.device_id}", headers=admin.headers)).json()
    assert state["management_state"] == "retired"
    assert (await device.checkin({})).status_code == 401


@pytest.mark.parametrize(
    ("platform", "action", "params"),
    [
        ("linux", "locate", {}),
        ("linux", "lost_mode_on", {"message": "Please return"}),
        ("ios", "shutdown", {}),
    ],
)
async def test_actions_a_platform_cannot_take_are_refused(
    client: httpx.AsyncClient, factory: Factory, platform: str, action: str, params: dict[str, Any]
) -> None:
    admin = await factory.admin("Global administrator")
    token = await make_token(client, admin, platforms=[platform])
    device = TestDevice(client, platform=platform)
    assert (await device.enroll(token)).status_code == 201
    response = await act(client, admin, device, action, params=params)
    assert response.status_code == 422 and "not available" in response.json()["detail"]


async def test_bad_parameters_are_refused(client: httpx.AsyncClient, factory: Factory) -> None:
    admin = await factory.admin("Global administrator")
    device = await enrolled(client, admin)
    assert (await act(client, admin, device, "rename", params={})).status_code == 422
    assert (await act(client, admin, device, "lock", params={"colour": "red"})).status_code == 422
    assert (await act(client, admin, device, "lock", params={"message": "x" * 300})).status_code == 422
    missing = await client.post(
        f"/api/v1/devices/{uuid.uuid4()}/actions/lock", json={}, headers=admin.headers
    )
    assert missing.status_code == 404


async def test_rename_takes_effect_when_the_device_reports_success(
    client: httpx.AsyncClient, factory: Factory
) -> None:
    admin = await factory.admin("Global administrator")
    device = await enrolled(client, admin)
    await act(client, admin, device, "rename", params={"name": "reception-kiosk"})
    command = (await device.checkin({})).json()["commands"][0]
    await device.checkin({"command_results": [{"command_id": command["id"], "status": "succeeded"}]})
    assert (await client.get(f"/api/v1/devices/{device.device_id}", headers=admin.headers)).json()[
        "name"
    ] == ("reception-kiosk")


async def test_queued_command_can_be_canceled_and_expired_ones_close_themselves(
    client: httpx.AsyncClient, factory: Factory, sessionmaker: async_sessionmaker[AsyncSession]
) -> None:
    admin = await factory.admin("Global administrator")
    device = await enrolled(client, admin)
    wipe = (await act(client, admin, device, "wipe", reason="Lost at airport", confirm=device.name)).json()
    canceled = await client.post(
        f"/api/v1/devices/{device.device_id}/commands/{wipe['id']}/cancel", headers=admin.headers
    )
    assert canceled.status_code == 200 and canceled.json()["status"] == "canceled"
    state = (await client.get(f"/api/v1/devices/{device.device_id}", headers=admin.headers)).json()
    assert state["management_state"] == "managed"
    lock = (await act(client, admin, device, "lock")).json()
    async with sessionmaker() as session:
        await session.execute(
            update(DeviceCommand)
            .where(DeviceCommand.id == uuid.UUID(lock["id"]))
            .values(expires_at=func.now() - func.make_interval(0, 0, 0, 0, 1))
        )
        await session.commit()
    assert (await device.checkin({})).json()["commands"] == []
    history = (await client.get(f"/api/v1/devices/{device.device_id}/commands", headers=admin.headers)).json()
    assert {c["type"]: c["status"] for c in history} == {"wipe": "canceled", "lock": "expired"}


async def test_scoped_help_desk_cannot_find_or_act_on_devices_outside_their_scope(
    client: httpx.AsyncClient, factory: Factory, sessionmaker: async_sessionmaker[AsyncSession]
) -> None:
    admin = await factory.admin("Global administrator")
    paris = (await client.post("/api/v1/scope-tags", json={"name": "Paris"}, headers=admin.headers)).json()
    berlin = (await client.post("/api/v1/scope-tags", json={"name": "Berlin"}, headers=admin.headers)).json()
    in_paris = await enrolled(client, admin, scope_tag_ids=[paris["id"]])
    in_berlin = await enrolled(client, admin, scope_tag_ids=[berlin["id"]])
    untagged = await enrolled(client, admin)
    operator = await factory.admin(None, token=False)
    assignment = await client.post(
        "/api/v1/role-assignments",
        headers=admin.headers,
        json={
            "name": "Paris help desk",
            "role_id": str(HELP_DESK_OPERATOR.id),
            "member_ids": [str(operator.id)],
            "scope_all": False,
            "scope_tag_ids": [paris["id"]],
        },
    )
    assert assignment.status_code == 201, assignment.text
    from corral.rbac.roles import HELP_DESK_OPERATOR as role
    from corral.tokens.schemas import ApiTokenCreate
    from corral.tokens.service import token_service
    from corral.users.service import user_service

    async with sessionmaker() as session:
        owner = await user_service.get(session, operator.id)
        _t, secret = await token_service.create(
            session, owner, ApiTokenCreate(name="t"), owner_permissions=role.permissions
        )
        await session.commit()
    headers = {"Authorization": f"Bearer {secret}"}
    listed = (await client.get("/api/v1/devices", headers=headers)).json()
    assert [d["id"] for d in listed["items"]] == [in_paris.device_id] and listed["total"] == 1
    for other in (in_berlin, untagged):
        assert (await client.get(f"/api/v1/devices/{other.device_id}", headers=headers)).status_code == 404
        locked = await client.post(
            f"/api/v1/devices/{other.device_id}/actions/lock", json={}, headers=headers
        )
        assert locked.status_code == 404
    assert (
        await client.post(f"/api/v1/devices/{in_paris.device_id}/actions/lock", json={}, headers=headers)
    ).status_code == 202
    async with sessionmaker() as session:
        assert await session.scalar(select(func.count()).select_from(ScopeTag)) == 2
