"""Multi administrator approval of wipes: the tenant setting, a wipe waiting undelivered for a second
administrator, approval and rejection (who may, where, how often), expiry, bulk wipes, the admin center."""

from __future__ import annotations

import asyncio
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg
import httpx
from sqlalchemy import func, select, update
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from corral.models import CommandStatus, DeviceCommand
from corral.push.hub import WAKE_CHANNEL
from corral.rbac.permissions import P
from corral.rbac.roles import BUILTIN_ROLES, SERVICE_ADMINISTRATOR
from tests.conftest import Admin, Factory, audit_rows, bearer, csrf_of, issue_token, portal_csrf
from tests.devices.device import TestDevice
from tests.devices.test_enrollment_and_checkin import enrolled

REASON = "Stolen from the car, ticket INC-4711"


async def require_approval(client: httpx.AsyncClient, admin: Admin, on: bool = True) -> None:
    response = await client.patch(
        "/api/v1/settings", json={"wipe_requires_approval": on}, headers=admin.headers
    )
    assert response.status_code == 200 and response.json()["wipe_requires_approval"] is on, response.text


async def wipe(
    client: httpx.AsyncClient, headers: dict[str, str], device: TestDevice, **body: Any
) -> httpx.Response:
    return await client.post(
        f"/api/v1/devices/{device.device_id}/actions/wipe",
        json={"reason": REASON, "confirm": device.name, **body},
        headers=headers,
    )


async def review(
    client: httpx.AsyncClient,
    headers: dict[str, str],
    device: TestDevice,
    command_id: str,
    verb: str = "approve",
    **body: Any,
) -> httpx.Response:
    return await client.post(
        f"/api/v1/devices/{device.device_id}/commands/{command_id}/{verb}", json=body, headers=headers
    )


async def state(client: httpx.AsyncClient, admin: Admin, device: TestDevice) -> str:
    response = await client.get(f"/api/v1/devices/{device.device_id}", headers=admin.headers)
    return str(response.json()["management_state"])


async def command_row(sessionmaker: async_sessionmaker[AsyncSession], command_id: str) -> DeviceCommand:
    async with sessionmaker() as session:
        row = await session.get(DeviceCommand, uuid.UUID(command_id))
        assert row is not None
        return row


async def pending_wipe(
    client: httpx.AsyncClient, factory: Factory
) -> tuple[Admin, Admin, TestDevice, dict[str, Any]]:
    """Approval on; admin A requested a wipe of a fresh device; B is a second Global administrator."""
    requester = await factory.admin("Global administrator")
    approver = await factory.admin("Global administrator")
    device = await enrolled(client, requester)
    await require_approval(client, requester)
    response = await wipe(client, requester.headers, device)
    assert response.status_code == 202, response.text
    return requester, approver, device, response.json()


# ------------------------------------------------------------------------------------------- the setting
async def test_setting_is_off_by_default_and_a_wipe_is_queued_as_before(
    client: httpx.AsyncClient, factory: Factory
) -> None:
    admin = await factory.admin("Global administrator")
    device = await enrolled(client, admin)
    settings = (await client.get("/api/v1/settings", headers=admin.headers)).json()
    assert settings["wipe_requires_approval"] is False
    response = await wipe(client, admin.headers, device)
    assert response.status_code == 202 and response.json()["status"] == "queued"
    assert [c["type"] for c in (await device.checkin({})).json()["commands"]] == ["wipe"]


async def test_setting_change_needs_settings_write_refuses_bad_input_and_is_audited(
    client: httpx.AsyncClient, factory: Factory, sessionmaker: async_sessionmaker[AsyncSession]
) -> None:
    admin = await factory.admin("Global administrator")
    service = await factory.admin("Service administrator")  # no settings:write
    refused = await client.patch(
        "/api/v1/settings", json={"wipe_requires_approval": True}, headers=service.headers
    )
    assert refused.status_code == 403
    for bad in ("yes", 1, None, [True]):
        response = await client.patch(
            "/api/v1/settings", json={"wipe_requires_approval": bad}, headers=admin.headers
        )
        if bad is None:  # "not given": nothing changes
            assert response.status_code == 200 and response.json()["wipe_requires_approval"] is False
        else:
            assert response.status_code == 422, (bad, response.text)
    assert (await client.get("/api/v1/settings", headers=admin.headers)).json()[
        "wipe_requires_approval"
    ] is False
    await require_approval(client, admin)
    events = await audit_rows(sessionmaker, activity="settings.update")
    assert len(events) == 1 and events[0].actor_name == admin.email
    assert events[0].modified_properties == [{"name": "wipe_requires_approval", "old": False, "new": True}]


# ------------------------------------------------------------------------------------------- waiting
async def test_wipe_waits_for_approval_undelivered_and_blocks_other_destructive_actions(
    client: httpx.AsyncClient, factory: Factory, sessionmaker: async_sessionmaker[AsyncSession]
) -> None:
    requester, _approver, device, command = await pending_wipe(client, factory)
    assert command["status"] == "pending_approval" and command["requested_by_name"] == requester.email
    assert command["reviewed_by_name"] is None
    assert await state(client, requester, device) == "wipe_pending"

    # Check-in delivers only open commands: nothing, however often the device asks.
    for _ in range(2):
        answer = await device.checkin({})
        assert answer.status_code == 200 and answer.json()["commands"] == []
    assert (await command_row(sessionmaker, command["id"])).status is CommandStatus.pending_approval

    # Another wipe or a retire is refused while it waits; other actions are unaffected.
    assert (await wipe(client, requester.headers, device)).status_code == 409
    retire = await client.post(
        f"/api/v1/devices/{device.device_id}/actions/retire",
        json={"reason": REASON, "confirm": device.name},
        headers=requester.headers,
    )
    assert retire.status_code == 409
    lock = await client.post(
        f"/api/v1/devices/{device.device_id}/actions/lock", json={}, headers=requester.headers
    )
    assert lock.status_code == 202 and lock.json()["status"] == "queued"
    assert [c["type"] for c in (await device.checkin({})).json()["commands"]] == ["lock"]

    events = await audit_rows(sessionmaker, activity="device.action.wipe")
    assert len(events) == 1 and events[0].actor_name == requester.email
    assert "second administrator" in (events[0].detail or "") and REASON in (events[0].detail or "")
    assert {"name": "status", "old": None, "new": "pending_approval"} in events[0].modified_properties


async def test_second_administrator_approves_and_the_device_gets_the_wipe(
    client: httpx.AsyncClient, factory: Factory, sessionmaker: async_sessionmaker[AsyncSession]
) -> None:
    requester, approver, device, command = await pending_wipe(client, factory)
    before = datetime.now(UTC)
    approved = await review(client, approver.headers, device, command["id"], comment="Checked with the user")
    assert approved.status_code == 200, approved.text
    body = approved.json()
    assert body["status"] == "queued" and body["reviewed_by_name"] == approver.email
    assert body["reviewed_at"] is not None
    # Its lifetime starts at approval: the wipe type's 30 days from now.
    expires = datetime.fromisoformat(body["expires_at"])
    assert (
        before + timedelta(days=30) - timedelta(minutes=1) < expires < before + timedelta(days=30, minutes=1)
    )
    row = await command_row(sessionmaker, command["id"])
    assert row.reviewed_by_id == approver.id

    # Approving again changes nothing.
    again = await review(client, approver.headers, device, command["id"])
    assert again.status_code == 409 and "not waiting for approval" in again.json()["detail"]

    delivered = (await device.checkin({})).json()["commands"]
    assert [(c["id"], c["type"]) for c in delivered] == [(command["id"], "wipe")]
    assert await state(client, requester, device) == "wipe_issued"

    events = await audit_rows(sessionmaker, activity="device.action.approve")
    assert len(events) == 1 and events[0].actor_name == approver.email
    assert requester.email in (events[0].detail or "") and "Checked with the user" in (events[0].detail or "")
    assert {"name": "status", "old": "pending_approval", "new": "queued"} in events[0].modified_properties


async def test_approval_without_a_body_is_accepted(client: httpx.AsyncClient, factory: Factory) -> None:
    _requester, approver, device, command = await pending_wipe(client, factory)
    response = await client.post(
        f"/api/v1/devices/{device.device_id}/commands/{command['id']}/approve", headers=approver.headers
    )
    assert response.status_code == 200 and response.json()["status"] == "queued"


async def test_requester_cannot_approve_or_reject_their_own_wipe_even_through_another_token(
    client: httpx.AsyncClient, factory: Factory, sessionmaker: async_sessionmaker[AsyncSession]
) -> None:
    requester, _approver, device, command = await pending_wipe(client, factory)
    second_token = bearer(await issue_token(sessionmaker, requester.id, name="automation"))
    for headers in (requester.headers, second_token):
        approved = await review(client, headers, device, command["id"])
        assert approved.status_code == 403
        assert "a second administrator must approve" in approved.json()["detail"]
        rejected = await review(client, headers, device, command["id"], "reject", reason="Changed my mind")
        assert rejected.status_code == 403
    assert (await command_row(sessionmaker, command["id"])).status is CommandStatus.pending_approval
    assert await audit_rows(sessionmaker, activity="device.action.approve") == []


async def test_reject_cancels_the_wipe_with_its_reason_and_the_device_is_managed_again(
    client: httpx.AsyncClient, factory: Factory, sessionmaker: async_sessionmaker[AsyncSession]
) -> None:
    requester, approver, device, command = await pending_wipe(client, factory)
    for body in ({}, {"reason": " no "}, {"reason": "x" * 901}, {"reason": "Not this one", "extra": 1}):
        refused = await review(client, approver.headers, device, command["id"], "reject", **body)
        assert refused.status_code == 422, (body, refused.text)
    assert (await command_row(sessionmaker, command["id"])).status is CommandStatus.pending_approval

    rejected = await review(
        client, approver.headers, device, command["id"], "reject", reason="The laptop was found"
    )
    assert rejected.status_code == 200, rejected.text
    body = rejected.json()
    assert body["status"] == "canceled" and body["reviewed_by_name"] == approver.email
    assert body["error"] == f"Rejected by {approver.email}: The laptop was found"
    assert await state(client, requester, device) == "managed"
    assert (await device.checkin({})).json()["commands"] == []
    assert (await review(client, approver.headers, device, command["id"])).status_code == 409
    # The device takes destructive actions again.
    assert (await wipe(client, requester.headers, device)).status_code == 202

    events = await audit_rows(sessionmaker, activity="device.action.reject")
    assert len(events) == 1 and events[0].actor_name == approver.email
    assert "The laptop was found" in (events[0].detail or "")
    assert {"name": "management_state", "old": "wipe_pending", "new": "managed"} in events[
        0
    ].modified_properties


async def test_requester_can_cancel_while_the_wipe_waits(
    client: httpx.AsyncClient, factory: Factory, sessionmaker: async_sessionmaker[AsyncSession]
) -> None:
    requester, approver, device, command = await pending_wipe(client, factory)
    canceled = await client.post(
        f"/api/v1/devices/{device.device_id}/commands/{command['id']}/cancel", headers=requester.headers
    )
    assert canceled.status_code == 200 and canceled.json()["status"] == "canceled"
    assert await state(client, requester, device) == "managed"
    assert (await review(client, approver.headers, device, command["id"])).status_code == 409
    events = await audit_rows(sessionmaker, activity="device.action.cancel")
    assert {"name": "status", "old": "pending_approval", "new": "canceled"} in events[0].modified_properties


async def test_a_waiting_wipe_does_not_wake_the_device_and_its_approval_does(
    client: httpx.AsyncClient, factory: Factory, db_url: str
) -> None:
    heard: list[str] = []
    listener = await asyncpg.connect(db_url.replace("postgresql+asyncpg://", "postgresql://"))
    await listener.add_listener(WAKE_CHANNEL, lambda *args: heard.append(str(args[3])))
    try:
        _requester, approver, device, command = await pending_wipe(client, factory)
        await asyncio.sleep(0.3)
        assert f"{device.device_id}:command" not in heard
        assert (await review(client, approver.headers, device, command["id"])).status_code == 200
        for _ in range(100):
            if heard:
                break
            await asyncio.sleep(0.05)
        assert f"{device.device_id}:command" in heard
    finally:
        await listener.close()


# ------------------------------------------------------------------------------------------- who may approve
async def test_help_desk_without_remote_approve_is_refused(
    client: httpx.AsyncClient, factory: Factory, sessionmaker: async_sessionmaker[AsyncSession]
) -> None:
    _requester, _approver, device, command = await pending_wipe(client, factory)
    helpdesk = await factory.admin("Help desk operator")
    assert (await review(client, helpdesk.headers, device, command["id"])).status_code == 403
    rejected = await review(client, helpdesk.headers, device, command["id"], "reject", reason="Not needed")
    assert rejected.status_code == 403
    assert (await client.get("/api/v1/devices/approvals", headers=helpdesk.headers)).status_code == 403
    assert (await command_row(sessionmaker, command["id"])).status is CommandStatus.pending_approval


def test_approvers_are_global_and_service_administrators_not_help_desk() -> None:
    holders = {role.name for role in BUILTIN_ROLES if P.remote_approve in role.permissions}
    assert holders == {"Global administrator", "Service administrator"}


async def test_service_administrator_may_approve(client: httpx.AsyncClient, factory: Factory) -> None:
    _requester, _approver, device, command = await pending_wipe(client, factory)
    service = await factory.admin("Service administrator")
    approved = await review(client, service.headers, device, command["id"])
    assert approved.status_code == 200 and approved.json()["status"] == "queued"


async def test_scoped_approver_sees_and_approves_only_inside_their_scope(
    client: httpx.AsyncClient, factory: Factory, sessionmaker: async_sessionmaker[AsyncSession]
) -> None:
    admin = await factory.admin("Global administrator")
    paris = (await client.post("/api/v1/scope-tags", json={"name": "Paris"}, headers=admin.headers)).json()
    berlin = (await client.post("/api/v1/scope-tags", json={"name": "Berlin"}, headers=admin.headers)).json()
    in_paris = await enrolled(client, admin, scope_tag_ids=[paris["id"]])
    in_berlin = await enrolled(client, admin, scope_tag_ids=[berlin["id"]])
    await require_approval(client, admin)
    paris_wipe = (await wipe(client, admin.headers, in_paris)).json()
    berlin_wipe = (await wipe(client, admin.headers, in_berlin)).json()

    approver = await factory.admin(None, token=False)
    assignment = await client.post(
        "/api/v1/role-assignments",
        headers=admin.headers,
        json={
            "name": "Paris service admins",
            "role_id": str(SERVICE_ADMINISTRATOR.id),
            "member_ids": [str(approver.id)],
            "scope_all": False,
            "scope_tag_ids": [paris["id"]],
        },
    )
    assert assignment.status_code == 201, assignment.text
    headers = bearer(await issue_token(sessionmaker, approver.id))

    listed = (await client.get("/api/v1/devices/approvals", headers=headers)).json()
    assert [(c["id"], c["device_name"], c["can_approve"]) for c in listed] == [
        (paris_wipe["id"], in_paris.name, True)
    ]
    outside = await review(client, headers, in_berlin, berlin_wipe["id"])
    assert outside.status_code == 404
    assert (
        await review(client, headers, in_berlin, berlin_wipe["id"], "reject", reason="Nope!")
    ).status_code == 404
    # A command id under the wrong device is not found either.
    assert (await review(client, headers, in_paris, berlin_wipe["id"])).status_code == 404
    assert (await review(client, headers, in_paris, str(uuid.uuid4()))).status_code == 404
    assert (await review(client, headers, in_paris, paris_wipe["id"])).status_code == 200
    assert (await command_row(sessionmaker, berlin_wipe["id"])).status is CommandStatus.pending_approval


async def test_approvals_list_shows_requests_in_scope_and_whether_the_caller_may_approve(
    client: httpx.AsyncClient, factory: Factory
) -> None:
    requester, approver, device, command = await pending_wipe(client, factory)
    mine = (await client.get("/api/v1/devices/approvals", headers=requester.headers)).json()
    theirs = (await client.get("/api/v1/devices/approvals", headers=approver.headers)).json()
    assert [(c["id"], c["can_approve"]) for c in mine] == [(command["id"], False)]
    assert [(c["id"], c["can_approve"]) for c in theirs] == [(command["id"], True)]
    assert theirs[0]["device_name"] == device.name and theirs[0]["reason"] == REASON
    assert theirs[0]["requested_by_name"] == requester.email
    await review(client, approver.headers, device, command["id"])
    assert (await client.get("/api/v1/devices/approvals", headers=approver.headers)).json() == []


async def test_two_simultaneous_approvals_queue_the_wipe_once(
    client: httpx.AsyncClient, factory: Factory, sessionmaker: async_sessionmaker[AsyncSession]
) -> None:
    _requester, approver, device, command = await pending_wipe(client, factory)
    other = await factory.admin("Global administrator")
    answers = await asyncio.gather(
        *(
            review(client, h, device, command["id"])
            for h in (approver.headers, other.headers, approver.headers)
        )
    )
    assert sorted(a.status_code for a in answers) == [200, 409, 409]
    assert len(await audit_rows(sessionmaker, activity="device.action.approve")) == 1
    assert len((await device.checkin({})).json()["commands"]) == 1


# ------------------------------------------------------------------------------------------- expiry
async def _overdue(sessionmaker: async_sessionmaker[AsyncSession], command_id: str) -> None:
    async with sessionmaker() as session:
        await session.execute(
            update(DeviceCommand)
            .where(DeviceCommand.id == uuid.UUID(command_id))
            .values(expires_at=func.now() - timedelta(minutes=1))
        )
        await session.commit()


async def test_wipe_not_approved_in_time_expires_at_the_next_check_in(
    client: httpx.AsyncClient, factory: Factory, sessionmaker: async_sessionmaker[AsyncSession]
) -> None:
    requester, approver, device, command = await pending_wipe(client, factory)
    await _overdue(sessionmaker, command["id"])
    assert (await client.get("/api/v1/devices/approvals", headers=approver.headers)).json() == []
    late = await review(client, approver.headers, device, command["id"])
    assert late.status_code == 409 and "expired" in late.json()["detail"]
    assert (await command_row(sessionmaker, command["id"])).status is CommandStatus.pending_approval

    assert (await device.checkin({})).json()["commands"] == []
    row = await command_row(sessionmaker, command["id"])
    assert row.status is CommandStatus.expired and row.completed_at is not None
    assert row.error and "Not approved in time" in row.error
    assert await state(client, requester, device) == "managed"
    events = await audit_rows(sessionmaker, activity="device.action.expire")
    assert len(events) == 1 and "not approved in time" in (events[0].detail or "")
    assert {"name": "status", "old": "pending_approval", "new": "expired"} in events[0].modified_properties


async def test_an_expired_request_does_not_block_a_new_wipe(
    client: httpx.AsyncClient, factory: Factory, sessionmaker: async_sessionmaker[AsyncSession]
) -> None:
    requester, _approver, device, command = await pending_wipe(client, factory)
    await _overdue(sessionmaker, command["id"])
    again = await wipe(client, requester.headers, device)
    assert again.status_code == 202 and again.json()["status"] == "pending_approval"
    assert (await command_row(sessionmaker, command["id"])).status is CommandStatus.expired


# ------------------------------------------------------------------------------------------- bulk
async def test_bulk_wipe_waits_for_approval_device_by_device(
    client: httpx.AsyncClient, factory: Factory, sessionmaker: async_sessionmaker[AsyncSession]
) -> None:
    requester = await factory.admin("Global administrator")
    approver = await factory.admin("Global administrator")
    devices = [await enrolled(client, requester) for _ in range(2)]
    await require_approval(client, requester)
    created = await client.post(
        "/api/v1/devices/bulk-actions",
        json={"type": "wipe", "device_ids": [d.device_id for d in devices], "reason": REASON, "confirm": "2"},
        headers=requester.headers,
    )
    assert created.status_code == 201, created.text
    async with sessionmaker() as session:
        commands = list(
            (
                await session.scalars(select(DeviceCommand).where(DeviceCommand.bulk_action_id.is_not(None)))
            ).all()
        )
    assert len(commands) == 2 and {c.status for c in commands} == {CommandStatus.pending_approval}
    for device in devices:
        assert (await device.checkin({})).json()["commands"] == []
        assert await state(client, requester, device) == "wipe_pending"
    listed = (await client.get("/api/v1/devices/approvals", headers=approver.headers)).json()
    assert {c["device_name"] for c in listed} == {d.name for d in devices}
    first = next(c for c in commands if str(c.device_id) == devices[0].device_id)
    assert (await review(client, requester.headers, devices[0], str(first.id))).status_code == 403
    assert (await review(client, approver.headers, devices[0], str(first.id))).status_code == 200
    assert [c["type"] for c in (await devices[0].checkin({})).json()["commands"]] == ["wipe"]
    assert (await devices[1].checkin({})).json()["commands"] == []


# ------------------------------------------------------------------------------------------- admin center
async def test_admin_center_shows_the_waiting_wipe_and_a_second_admin_approves_it(
    app: Any, factory: Factory, sessionmaker: async_sessionmaker[AsyncSession]
) -> None:
    from tests.conftest import new_client

    async with new_client(app) as api:
        requester, approver, device, command = await pending_wipe(api, factory)
    helpdesk = await factory.admin("Help desk operator", token=False)

    async with new_client(app) as browser:
        await portal_csrf(browser, requester.email)
        page = await browser.get(f"/portal/devices/{device.device_id}")
        assert "Waiting for approval by a second administrator" in page.text
        assert f"/commands/{command['id']}/approve" not in page.text  # not for the requester
        assert f"/commands/{command['id']}/cancel" in page.text  # but they may cancel
        approvals = await browser.get("/portal/approvals")
        assert approvals.status_code == 200 and device.name in approvals.text
        assert "another administrator must approve" in approvals.text

    async with new_client(app) as browser:
        await portal_csrf(browser, helpdesk.email)
        home = await browser.get("/portal")
        assert 'href="/portal/approvals"' not in home.text
        assert (await browser.get("/portal/approvals")).status_code == 403
        page = await browser.get(f"/portal/devices/{device.device_id}")
        assert "Waiting for approval" in page.text and f"/commands/{command['id']}/approve" not in page.text

    async with new_client(app) as browser:
        token = await portal_csrf(browser, approver.email)
        home = await browser.get("/portal")
        assert 'href="/portal/approvals"' in home.text
        page = await browser.get(f"/portal/devices/{device.device_id}")
        assert f"/commands/{command['id']}/approve" in page.text
        listing = await browser.get("/portal/approvals")
        assert REASON in listing.text and requester.email in listing.text
        assert f"/commands/{command['id']}/approve" in listing.text
        forged = await browser.post(
            f"/portal/devices/{device.device_id}/commands/{command['id']}/approve", data={"back": "approvals"}
        )
        assert forged.status_code == 403  # no CSRF token
        short = await browser.post(
            f"/portal/devices/{device.device_id}/commands/{command['id']}/reject",
            data={"csrf_token": token, "reason": "no", "back": "device"},
        )
        assert short.status_code == 303 and short.headers["location"] == f"/portal/devices/{device.device_id}"
        assert (await command_row(sessionmaker, command["id"])).status is CommandStatus.pending_approval
        approved = await browser.post(
            f"/portal/devices/{device.device_id}/commands/{command['id']}/approve",
            data={"csrf_token": token, "comment": "OK by phone", "back": "https://evil.example/"},
        )
        assert approved.status_code == 303 and approved.headers["location"] == "/portal/approvals"
        assert (await command_row(sessionmaker, command["id"])).status is CommandStatus.queued
        after = await browser.get("/portal/approvals")
        assert "approved" in after.text and "Nothing is waiting for approval." in after.text


async def test_settings_page_turns_approval_on_with_csrf_and_settings_write(
    app: Any, factory: Factory, sessionmaker: async_sessionmaker[AsyncSession]
) -> None:
    from tests.conftest import new_client

    admin = await factory.admin("Global administrator", token=False)
    service = await factory.admin("Service administrator", token=False)
    async with new_client(app) as browser:
        token = await portal_csrf(browser, service.email)
        refused = await browser.post(
            "/portal/settings/wipe-approval", data={"csrf_token": token, "wipe_requires_approval": "on"}
        )
        assert refused.status_code == 403
    async with new_client(app) as browser:
        token = await portal_csrf(browser, admin.email)
        page = await browser.get("/portal/settings")
        assert "Wipes need a second administrator\u2019s approval" in page.text
        assert csrf_of(page.text) == token
        saved = await browser.post(
            "/portal/settings/wipe-approval", data={"csrf_token": token, "wipe_requires_approval": "on"}
        )
        assert saved.status_code == 303 and saved.headers["location"] == "/portal/settings"
        page = await browser.get("/portal/settings")
        assert 'name="wipe_requires_approval" value="on" checked' in page.text
        # The other settings form leaves it alone.
        kept = await browser.post(
            "/portal/settings", data={"csrf_token": token, "organization_name": "Contoso"}
        )
        assert kept.status_code == 303
        off = await browser.post("/portal/settings/wipe-approval", data={"csrf_token": token})
        assert off.status_code == 303
    events = await audit_rows(sessionmaker, activity="settings.update")
    assert [
        e.modified_properties for e in events if e.modified_properties[0]["name"] == "wipe_requires_approval"
    ] == [
        [{"name": "wipe_requires_approval", "old": False, "new": True}],
        [{"name": "wipe_requires_approval", "old": True, "new": False}],
    ]
