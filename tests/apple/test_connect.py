"""Apple's command protocol (/apple/v1/connect): Corral's commands reach an iPhone, iPad or Mac as Apple
commands, one per answer; the device's reports move them along (acknowledged, error, not now), its answers
fill the inventory; commands a device cannot take are refused when they are requested. The simulated device
answers as real ones do; the captured answers in tests/fixtures/apple-mdm are accepted as they are."""

from __future__ import annotations

import datetime as dt
import plistlib
import uuid
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy import select, update
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from corral.apple.commands import DEVICE_INFORMATION_QUERIES
from corral.config import Settings
from corral.models import AppleCommand, AppleEnrollment
from corral.rbac.roles import GLOBAL_ADMINISTRATOR, HELP_DESK_OPERATOR
from tests.apple.support import enrolled_apple
from tests.conftest import Admin, Factory, audit_rows

FIXTURES = Path(__file__).parent.parent / "fixtures" / "apple-mdm"
INVENTORY = [
    "DeviceInformation",
    "SecurityInfo",
    "InstalledApplicationList",
    "ProfileList",
    "CertificateList",
]


async def act(
    client: httpx.AsyncClient, admin: Admin, device_id: str, action: str, **body: Any
) -> httpx.Response:
    return await client.post(
        f"/api/v1/devices/{device_id}/actions/{action}", json=body, headers=admin.headers
    )


async def history(client: httpx.AsyncClient, admin: Admin, device_id: str) -> list[dict[str, Any]]:
    response = await client.get(f"/api/v1/devices/{device_id}/commands", headers=admin.headers)
    assert response.status_code == 200, response.text
    result: list[dict[str, Any]] = response.json()
    return result


async def test_after_enrollment_the_device_reports_its_inventory(
    client: httpx.AsyncClient,
    factory: Factory,
    sessionmaker: async_sessionmaker[AsyncSession],
    settings: Settings,
) -> None:
    admin = await factory.admin(GLOBAL_ADMINISTRATOR.name)
    phone, device_id = await enrolled_apple(client, admin, sessionmaker, settings)
    assert await phone.connect_loop(client) == INVENTORY
    assert phone.received[0]["Command"]["Queries"] == DEVICE_INFORMATION_QUERIES
    detail = (await client.get(f"/api/v1/devices/{device_id}", headers=admin.headers)).json()
    inventory = detail["inventory"]
    assert inventory["os"] == {"platform": "ios", "name": "iOS", "version": "18.1", "build": "22B83"}
    assert inventory["hardware"]["storage_total_bytes"] == 256 * 10**9
    assert inventory["security"]["passcode_set"] is True and inventory["security"]["disk_encrypted"] is True
    assert {a["identifier"] for a in inventory["apps"]} >= {"com.tinyspeck.chatlyio"}
    assert detail["supervised"] is False and detail["disk_encrypted"] is True
    assert detail["storage_total_bytes"] == 256 * 10**9
    async with sessionmaker() as session:
        enrollment = await session.scalar(select(AppleEnrollment))
    assert enrollment is not None
    [profile] = enrollment.facts["profiles"]
    assert profile["identifier"].startswith("com.corral.enroll.") and profile["managed"] is True
    [certificate] = enrollment.facts["certificates"]
    assert certificate["is_identity"] is True and len(certificate["sha256"]) == 64
    # Nothing else waits: the next connection ends at once.
    assert await phone.connect_loop(client) == []


async def test_the_help_desk_locks_an_iphone_and_sees_it_succeed(
    client: httpx.AsyncClient,
    factory: Factory,
    sessionmaker: async_sessionmaker[AsyncSession],
    settings: Settings,
) -> None:
    admin = await factory.admin(GLOBAL_ADMINISTRATOR.name)
    helpdesk = await factory.admin(HELP_DESK_OPERATOR.name)
    phone, device_id = await enrolled_apple(client, admin, sessionmaker, settings)
    await phone.connect_loop(client)
    queued = await act(
        client, helpdesk, device_id, "lock", params={"message": "Call IT", "phone": "+1 555 0100"}
    )
    assert queued.status_code == 202, queued.text
    assert await phone.connect_loop(client) == ["DeviceLock"]
    assert phone.received[-1]["Command"] == {
        "RequestType": "DeviceLock",
        "Message": "Call IT",
        "PhoneNumber": "+1 555 0100",
    }
    [lock] = [c for c in await history(client, helpdesk, device_id) if c["type"] == "lock"]
    assert lock["status"] == "succeeded" and lock["result"] == {"message_result": "Locked"}
    assert lock["sent_at"] and lock["completed_at"]


REFUSED: dict[str, list[tuple[str, dict[str, Any], str]]] = {
    "iphone": [
        ("restart", {}, "needs a supervised iPhone"),
        ("lost_mode_on", {"message": "Lost"}, "needs a supervised iPhone"),
        ("rename", {"name": "New"}, "needs a supervised iPhone"),
        ("notify", {"message": "Hi"}, "not available for devices managed through Apple MDM"),
        ("lock", {"pin": "123456"}, "A PIN is for Macs"),
        ("wipe", {"keep_user_data": True}, "retire the device instead"),
    ],
    "mac": [
        ("lock", {}, "needs a six-digit PIN"),
        ("passcode_reset", {}, "not available for a Mac"),
        ("lost_mode_on", {"message": "Lost"}, "not available for a Mac"),
    ],
}


@pytest.mark.parametrize("kind", sorted(REFUSED))
async def test_commands_a_device_cannot_take_are_refused_when_requested(
    kind: str,
    client: httpx.AsyncClient,
    factory: Factory,
    sessionmaker: async_sessionmaker[AsyncSession],
    settings: Settings,
) -> None:
    admin = await factory.admin(GLOBAL_ADMINISTRATOR.name)
    device, device_id = await enrolled_apple(
        client, admin, sessionmaker, settings, kind=kind, ownership="company"
    )
    await device.connect_loop(client)  # inventory: supervised is known (false)
    for action, params, words in REFUSED[kind]:
        body: dict[str, Any] = {"params": params}
        if action == "wipe":
            body |= {
                "reason": "The device was lost on a train",
                "confirm": device.authenticate_message()["DeviceName"],
            }
        refused = await act(client, admin, device_id, action, **body)
        assert refused.status_code == 422 and words in refused.json()["detail"], (action, refused.text)
    assert await history(client, admin, device_id) == []
    assert await device.connect_loop(client) == []


async def test_supervised_devices_take_what_supervision_allows(
    client: httpx.AsyncClient,
    factory: Factory,
    sessionmaker: async_sessionmaker[AsyncSession],
    settings: Settings,
) -> None:
    admin = await factory.admin(GLOBAL_ADMINISTRATOR.name)
    ipad, device_id = await enrolled_apple(
        client, admin, sessionmaker, settings, kind="ipad", ownership="company"
    )
    ipad.supervised = True
    await ipad.connect_loop(client)
    for action, params in (
        ("lost_mode_on", {"message": "Please return me"}),
        ("locate", {}),
        ("rename", {"name": "Kiosk 4"}),
    ):
        assert (await act(client, admin, device_id, action, params=params)).status_code == 202
    assert await ipad.connect_loop(client) == ["EnableLostMode", "DeviceLocation", "Settings"]
    done = {c["type"]: c for c in await history(client, admin, device_id)}
    assert done["lost_mode_on"]["status"] == "succeeded"
    assert done["locate"]["status"] == "succeeded"
    assert done["locate"]["result"] == {"latitude": 48.8584, "longitude": 2.2945, "accuracy_m": 12.0}
    assert done["rename"]["status"] == "succeeded"
    detail = (await client.get(f"/api/v1/devices/{device_id}", headers=admin.headers)).json()
    assert detail["name"] == "Kiosk 4"


async def test_not_now_is_sent_again_later_and_an_error_fails_the_command(
    client: httpx.AsyncClient,
    factory: Factory,
    sessionmaker: async_sessionmaker[AsyncSession],
    settings: Settings,
) -> None:
    admin = await factory.admin(GLOBAL_ADMINISTRATOR.name)
    phone, device_id = await enrolled_apple(client, admin, sessionmaker, settings)
    await phone.connect_loop(client)
    await act(client, admin, device_id, "lock")
    phone.not_now = 1
    assert await phone.connect_loop(client) == ["DeviceLock"]  # answered NotNow
    [lock] = await history(client, admin, device_id)
    assert lock["status"] == "not_now"
    assert await phone.connect_loop(client) == []  # not before its backoff
    async with sessionmaker() as session:
        await session.execute(
            update(AppleCommand).values(not_before=dt.datetime.now(dt.UTC) - dt.timedelta(seconds=1))
        )
        await session.commit()
    assert await phone.connect_loop(client) == ["DeviceLock"]
    [lock] = await history(client, admin, device_id)
    assert lock["status"] == "succeeded" and lock["delivery_count"] == 2

    phone.unlock_token = b"not the token the server has"
    await act(client, admin, device_id, "passcode_reset")
    assert await phone.connect_loop(client) == ["ClearPasscode"]
    [reset] = [c for c in await history(client, admin, device_id) if c["type"] == "passcode_reset"]
    assert (
        reset["status"] == "failed"
        and "MCMDMErrorDomain 12078: The unlock token is invalid." in reset["error"]
    )


async def test_passcode_reset_sends_the_unlock_token_and_retire_ends_management(
    client: httpx.AsyncClient,
    factory: Factory,
    sessionmaker: async_sessionmaker[AsyncSession],
    settings: Settings,
) -> None:
    admin = await factory.admin(GLOBAL_ADMINISTRATOR.name)
    phone, device_id = await enrolled_apple(client, admin, sessionmaker, settings)
    await phone.connect_loop(client)
    assert (await act(client, admin, device_id, "passcode_reset")).status_code == 202
    assert await phone.connect_loop(client) == ["ClearPasscode"]
    assert phone.passcode_set is False
    async with sessionmaker() as session:
        params = (
            await session.scalars(
                select(AppleCommand.params).where(AppleCommand.request_type == "ClearPasscode")
            )
        ).one()
    assert params == {}  # the UnlockToken is never stored in the command

    name = phone.authenticate_message()["DeviceName"]
    retire = await act(client, admin, device_id, "retire", reason="Leaving the company", confirm=name)
    assert retire.status_code == 202, retire.text
    assert await phone.connect_loop(client) == ["RemoveProfile"]
    assert phone.received[-1]["Command"]["Identifier"] == phone.profile["PayloadIdentifier"]
    detail = (await client.get(f"/api/v1/devices/{device_id}", headers=admin.headers)).json()
    assert detail["management_state"] == "retired"
    later = await phone.connect(client, {"Status": "Idle"})
    assert (
        later.status_code == 403 and plistlib.loads(later.content)["code"] == "com.apple.unrecognized.device"
    )


async def test_a_report_on_an_unknown_command_is_refused_and_audited(
    client: httpx.AsyncClient,
    factory: Factory,
    sessionmaker: async_sessionmaker[AsyncSession],
    settings: Settings,
) -> None:
    admin = await factory.admin(GLOBAL_ADMINISTRATOR.name)
    phone, _ = await enrolled_apple(client, admin, sessionmaker, settings)
    for report in (
        {"Status": "Acknowledged", "CommandUUID": str(uuid.uuid4())},
        {"Status": "Acknowledged", "CommandUUID": "not-a-uuid"},
        {"Status": "Finished"},
    ):
        response = await phone.connect(client, report)
        assert response.status_code == 400, response.text
    refused = await audit_rows(sessionmaker, activity="device.apple.connect")
    assert refused and all(e.result == "failure" for e in refused)


def _fixture(name: str, udid: str) -> bytes:
    message = plistlib.loads((FIXTURES / name).read_bytes())
    message["UDID"] = udid
    return plistlib.dumps(message)


@pytest.mark.parametrize(
    ("name", "request_type", "status"),
    [
        ("nanomdm/DeviceInformation.1.plist", "DeviceInformation", "acknowledged"),
        ("micromdm-2016/ios_9.x_security_info.plist", "SecurityInfo", "acknowledged"),
        ("micromdm-2016/macos_10.11.x_certificate_list.plist", "CertificateList", "acknowledged"),
        ("micromdm-2016/macos_10.11.x_device_information.plist", "DeviceInformation", "acknowledged"),
        (
            "micromdm-2016/macos_10.11.x_installed_application_list.plist",
            "InstalledApplicationList",
            "acknowledged",
        ),
        ("micromdm-2016/macos_10.11.x_profile_list.plist", "ProfileList", "acknowledged"),
        ("micromdm-2016/macos_10.11.x_security_info.plist", "SecurityInfo", "acknowledged"),
        ("micromdm-2016/macos_10.11.x_error_invalid_request_type.plist", "OSUpdateStatus", "error"),
    ],
)
async def test_captured_command_answers_are_accepted(
    name: str,
    request_type: str,
    status: str,
    client: httpx.AsyncClient,
    factory: Factory,
    sessionmaker: async_sessionmaker[AsyncSession],
    settings: Settings,
) -> None:
    """Each captured answer, sent for a command of that CommandUUID (only its UDID set to the device's)."""
    admin = await factory.admin(GLOBAL_ADMINISTRATOR.name)
    mac, device_id = await enrolled_apple(client, admin, sessionmaker, settings, kind="mac")
    await mac.connect_loop(client)
    command_uuid = uuid.UUID(plistlib.loads((FIXTURES / name).read_bytes())["CommandUUID"])
    async with sessionmaker() as session:
        session.add(
            AppleCommand(
                id=command_uuid,
                device_id=uuid.UUID(device_id),
                request_type=request_type,
                params={},
                status="sent",
                created_at=dt.datetime.now(dt.UTC),
            )
        )
        await session.commit()
    response = await mac.send_raw(client, _fixture(name, mac.udid), url=mac._url("ServerURL"))
    assert response.status_code == 200, response.text
    async with sessionmaker() as session:
        command = await session.get(AppleCommand, command_uuid)
    assert command is not None and command.status == status
    if status == "error":
        assert command.error_chain and command.error_chain[0]["code"] == 12021
    if request_type == "InstalledApplicationList":
        detail = (await client.get(f"/api/v1/devices/{device_id}", headers=admin.headers)).json()
        assert (
            "Google Chrome" in {a["name"] for a in detail["inventory"]["apps"]} or detail["inventory"]["apps"]
        )


async def test_a_macs_security_posture_is_read_by_compliance(
    client: httpx.AsyncClient,
    factory: Factory,
    sessionmaker: async_sessionmaker[AsyncSession],
    settings: Settings,
) -> None:
    """FileVault, the firewall and System Integrity Protection, as a Mac reports them over MDM, decide a
    compliance policy like an agent's report does."""
    admin = await factory.admin(GLOBAL_ADMINISTRATOR.name)
    mac, device_id = await enrolled_apple(client, admin, sessionmaker, settings, kind="mac")
    await mac.connect_loop(client)
    detail = (await client.get(f"/api/v1/devices/{device_id}", headers=admin.headers)).json()
    security = detail["inventory"]["security"]
    assert security["disk_encrypted"] is True and security["firewall_enabled"] is True
    assert security["system_integrity_protection"] is True and security["secure_boot"] is True
    assert detail["cpu_architecture"] == "arm64"
    made = await client.post(
        "/api/v1/compliance-policies",
        json={
            "name": "Mac baseline",
            "platform": "macos",
            "settings": {
                "disk_encryption.required": True,
                "firewall.required": True,
                "system_integrity_protection.required": True,
            },
            "actions": [{"action": "mark_noncompliant", "delay_hours": 0}],
        },
        headers=admin.headers,
    )
    assert made.status_code == 201, made.text
    assigned = await client.put(
        f"/api/v1/compliance-policies/{made.json()['id']}/assignments",
        json={"assignments": [{"target": "all_devices"}]},
        headers=admin.headers,
    )
    assert assigned.status_code == 200, assigned.text
    compliance = (await client.get(f"/api/v1/devices/{device_id}/compliance", headers=admin.headers)).json()
    assert compliance["state"] == "compliant", compliance


async def test_connections_of_one_device_at_the_same_time_do_not_deadlock(
    client: httpx.AsyncClient,
    factory: Factory,
    sessionmaker: async_sessionmaker[AsyncSession],
    settings: Settings,
) -> None:
    """A device polling twice at once (a push during a session): both answered, neither a 500 (the replay
    check's nonce row holds a key-share lock on the device, which the connection's lock must not fight)."""
    import asyncio

    admin = await factory.admin(GLOBAL_ADMINISTRATOR.name)
    phone, _ = await enrolled_apple(client, admin, sessionmaker, settings)
    await phone.connect_loop(client)
    for round_ in range(5):
        # Different bodies (so different signatures: identical ones would wait on each other's nonce).
        answers = await asyncio.gather(
            *(phone.connect(client, {"Status": "Idle", "Round": f"{round_}.{n}"}) for n in range(4))
        )
        assert [a.status_code for a in answers] == [200] * 4, [a.text for a in answers]
