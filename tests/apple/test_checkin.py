"""Apple's check-in protocol (/apple/v1/checkin): Authenticate makes the device, TokenUpdate enrolls it,
CheckOut ends it; every way a request can fail to be the device's is refused with 401 and audited, a device
whose management ended gets Apple's unrecognized-device answer, and messages Corral does not implement are
refused plainly. The simulated device sends what a real one does; the real fixtures are sent as they are."""

from __future__ import annotations

import base64
import plistlib
from pathlib import Path
from typing import Any
from urllib.parse import quote

import httpx
import pytest
from cryptography.hazmat.primitives import hashes
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from corral.apple.checkin import UNLOCK_TOKEN_PURPOSE
from corral.apple.simulator import AppleDevice
from corral.config import Settings
from corral.kit import cms
from corral.kit.security import SecretBox
from corral.models import AppleEnrollment, Device, DeviceCertificate, EnrollmentToken
from corral.rbac.roles import GLOBAL_ADMINISTRATOR
from tests.apple.support import apple_token, ca_certificate, set_up_push_certificate
from tests.conftest import Admin, Factory, audit_rows

CHECKIN = "https://testserver/apple/v1/checkin"
FIXTURES = Path(__file__).parent.parent / "fixtures" / "apple-mdm"


async def enrolled(
    client: httpx.AsyncClient,
    factory: Factory,
    sessionmaker: async_sessionmaker[AsyncSession],
    settings: Settings,
    kind: str = "iphone",
    **token: Any,
) -> tuple[Admin, AppleDevice]:
    admin = await factory.admin(GLOBAL_ADMINISTRATOR.name)
    await set_up_push_certificate(client, admin)
    secret = await apple_token(client, admin, **token)
    device = AppleDevice(kind, seed=f"checkin-{kind}")
    await device.fetch_profile(
        client, f"/apple/v1/enroll?token={quote(secret)}", await ca_certificate(sessionmaker, settings)
    )
    await device.scep_enroll(client)
    return admin, device


async def stored(sessionmaker: async_sessionmaker[AsyncSession]) -> tuple[Device, AppleEnrollment]:
    async with sessionmaker() as session:
        row = (await session.execute(select(Device, AppleEnrollment).join(AppleEnrollment))).one()
    return row[0], row[1]


async def test_authenticate_then_token_update_enrolls_the_device(
    client: httpx.AsyncClient,
    factory: Factory,
    sessionmaker: async_sessionmaker[AsyncSession],
    settings: Settings,
) -> None:
    admin, phone = await enrolled(client, factory, sessionmaker, settings)
    response = await phone.send(client, phone.authenticate_message())
    assert response.status_code == 200, response.text
    device, enrollment = await stored(sessionmaker)
    assert device.management_channel == "apple_mdm" and device.platform == "ios"
    assert device.serial_number == phone.serial_number and device.manufacturer == "Apple"
    assert device.model == "iPhone" and device.os_version == "18.1" and device.os_build == "22B83"
    assert enrollment.udid == phone.udid and enrollment.topic == phone.topic
    assert enrollment.push_state == "pending" and enrollment.push_token is None
    async with sessionmaker() as session:
        token = await session.scalar(select(EnrollmentToken))
        certificate = await session.scalar(select(DeviceCertificate))
    assert token is not None and token.use_count == 1
    assert phone.identity is not None and certificate is not None
    assert certificate.fingerprint_sha256 == phone.identity.certificate.fingerprint(hashes.SHA256()).hex()

    response = await phone.send(client, phone.token_update_message())
    assert response.status_code == 200, response.text
    device, enrollment = await stored(sessionmaker)
    assert enrollment.push_token == phone.push_token and enrollment.push_magic == phone.push_magic
    assert enrollment.push_state == "ok" and device.last_checkin_at is not None
    # The UnlockToken is stored encrypted, and decrypts to what the device sent.
    assert enrollment.unlock_token_encrypted is not None
    assert phone.unlock_token not in enrollment.unlock_token_encrypted.encode()
    box = SecretBox(settings.resolved_secret_key(), UNLOCK_TOKEN_PURPOSE)
    assert box.decrypt(enrollment.unlock_token_encrypted) == phone.unlock_token
    activities = [e.activity for e in await audit_rows(sessionmaker, category="device")]
    assert "device.enroll" in activities and "device.apple.enrolled" in activities

    listed = (await client.get("/api/v1/devices", headers=admin.headers)).json()
    [item] = listed["items"] if isinstance(listed, dict) else listed
    assert item["management_channel"] == "apple_mdm" and item["platform"] == "ios"


async def test_check_out_ends_management_and_later_requests_get_unrecognized(
    client: httpx.AsyncClient,
    factory: Factory,
    sessionmaker: async_sessionmaker[AsyncSession],
    settings: Settings,
) -> None:
    _, mac = await enrolled(client, factory, sessionmaker, settings, kind="mac")
    await mac.check_in(client)
    assert (await mac.check_out(client)).status_code == 200
    device, enrollment = await stored(sessionmaker)
    assert device.management_state == "retired" and enrollment.ended_at is not None
    assert enrollment.push_token is None and enrollment.unlock_token_encrypted is None
    async with sessionmaker() as session:
        certificate = await session.scalar(select(DeviceCertificate))
    assert certificate is not None and certificate.revoked_at is not None

    again = await mac.send(client, mac.token_update_message())
    assert again.status_code == 403 and again.headers["content-type"].startswith("application/xml")
    assert plistlib.loads(again.content)["code"] == "com.apple.unrecognized.device"


async def identity(
    client: httpx.AsyncClient,
    sessionmaker: async_sessionmaker[AsyncSession],
    settings: Settings,
    secret: str,
    kind: str,
    seed: str,
) -> AppleDevice:
    """A simulated device holding a fresh SCEP identity from the token (not checked in yet)."""
    device = AppleDevice(kind, seed=seed)
    await device.fetch_profile(
        client, f"/apple/v1/enroll?token={quote(secret)}", await ca_certificate(sessionmaker, settings)
    )
    await device.scep_enroll(client)
    return device


def fixture(name: str, **rewrite: Any) -> bytes:
    body = (FIXTURES / name).read_bytes()
    if not rewrite:
        return body
    message = plistlib.loads(body)
    message.update(rewrite)
    return plistlib.dumps(message)


NANOMDM_TOPIC = "com.apple.mgmt.External.e0bd1eac-1f17-4c8e-8a63-dd17d3dd35d9"


async def test_real_device_messages_are_accepted_as_they_are(
    client: httpx.AsyncClient,
    factory: Factory,
    sessionmaker: async_sessionmaker[AsyncSession],
    settings: Settings,
) -> None:
    """nanomdm's captures (an iPad on iOS 9.3.5, an iMac on macOS 10.12.6) sent byte for byte, signed by an
    identity of Corral's; micromdm's 2016 captures after their Topic is set to this server's."""
    admin = await factory.admin(GLOBAL_ADMINISTRATOR.name)
    topic = await set_up_push_certificate(client, admin, NANOMDM_TOPIC)
    secret = await apple_token(client, admin)
    for name, seed in (("Authenticate.1", "ipad"), ("Authenticate.2", "imac")):
        device = await identity(client, sessionmaker, settings, secret, "ipad", seed)
        token_update = name.replace("Authenticate", "TokenUpdate")
        for message in (name, token_update):
            response = await device.send_raw(client, fixture(f"nanomdm/{message}.plist"), url=CHECKIN)
            assert response.status_code == 200, (message, response.text)
    mac = await identity(client, sessionmaker, settings, secret, "mac", "micromdm")
    # Sent as captured, the 2016 Authenticate names another server's topic: refused, nothing created.
    verbatim = await mac.send_raw(
        client, fixture("micromdm-2016/macos_10.11.x_authenticate.plist"), url=CHECKIN
    )
    assert verbatim.status_code == 401
    for name in ("authenticate", "token_update", "token_update_user", "checkout"):
        body = fixture(f"micromdm-2016/macos_10.11.x_{name}.plist", Topic=topic)
        response = await mac.send_raw(client, body, url=CHECKIN)
        assert response.status_code == 200, (name, response.text)
    async with sessionmaker() as session:
        devices = {d.serial_number: d for d in (await session.scalars(select(Device))).all()}
        enrollments = {e.udid: e for e in (await session.scalars(select(AppleEnrollment))).all()}
    assert devices["F5JM992LF193"].platform == "ipados" and devices["F5JM992LF193"].os_version == "9.3.5"
    assert devices["C02MT66KFLHH"].platform == "macos" and devices["C02MT66KFLHH"].name == "Fruit"
    assert devices["C00000000004"].management_state == "retired"
    ipad = enrollments["663b07bb783e9ade1dae4fbb92ea12afc0ce5b69"]
    assert ipad.push_state == "ok" and ipad.push_token is not None and len(ipad.push_token) == 32
    assert ipad.unlock_token_encrypted is not None
    # The user channel's TokenUpdate was ignored: the Mac's device token ("apple") stayed until CheckOut.
    mac_enrollment = enrollments["00000000-1111-2222-3333-444455556666"]
    assert mac_enrollment.ended_at is not None and mac_enrollment.first_token_update_at is not None


def _signed(device: AppleDevice, body: bytes, **sign: Any) -> str:
    assert device.identity is not None
    der = cms.sign(body, device.identity.certificate, device.identity.key, detached=True, **sign)
    return base64.b64encode(der).decode()


@pytest.mark.parametrize(
    "case",
    [
        "unsigned",
        "not_base64",
        "signed_other_bytes",
        "foreign_identity",
        "stale",
        "replayed",
        "other_udid",
        "other_topic",
        "revoked",
        "unknown_identity",
    ],
)
async def test_a_request_that_is_not_the_devices_is_refused_and_audited(
    case: str,
    client: httpx.AsyncClient,
    factory: Factory,
    sessionmaker: async_sessionmaker[AsyncSession],
    settings: Settings,
) -> None:
    admin, phone = await enrolled(client, factory, sessionmaker, settings)
    await phone.check_in(client)
    message = phone.token_update_message()
    body = plistlib.dumps(message)
    signature: str | None = phone.sign(body)
    if case == "unsigned":
        signature = ""
    elif case == "not_base64":
        signature = "not base64!"
    elif case == "signed_other_bytes":
        signature = phone.sign(body + b" ")
    elif case == "foreign_identity":
        stranger = AppleDevice("iphone", seed="stranger")
        from tests.apple.support import self_signed_identity

        stranger.identity = self_signed_identity()
        signature = stranger.sign(body)
    elif case == "stale":
        import datetime as dt

        signature = _signed(phone, body, signing_time=dt.datetime.now(dt.UTC) - dt.timedelta(minutes=10))
    elif case == "replayed":
        # Signed 10 s ago and used once: a repeat within a second or two of its signing time would be the
        # device's own (an unchanged message signed within the same second has the same signature).
        import datetime as dt

        body = plistlib.dumps({**message, "AwaitingConfiguration": True})
        signature = _signed(phone, body, signing_time=dt.datetime.now(dt.UTC) - dt.timedelta(seconds=10))
        assert (await phone.send_raw(client, body, url=CHECKIN, signature=signature)).status_code == 200
    elif case == "other_udid":
        body = plistlib.dumps({**message, "UDID": "0" * 40})
        signature = phone.sign(body)
    elif case == "other_topic":
        body = plistlib.dumps({**message, "Topic": "com.apple.mgmt.External.other"})
        signature = phone.sign(body)
    elif case == "revoked":
        async with sessionmaker() as session:
            certificate = await session.scalar(select(DeviceCertificate))
            assert certificate is not None
            import datetime as dt

            certificate.revoked_at = dt.datetime.now(dt.UTC)
            await session.commit()
    elif case == "unknown_identity":
        newcomer = await identity(
            client, sessionmaker, settings, await apple_token(client, admin), "iphone", "newcomer"
        )
        signature = newcomer.sign(body)  # a pending identity may only Authenticate
    _, before = await stored(sessionmaker)
    response = await phone.send_raw(client, body, url=CHECKIN, signature=signature)
    assert response.status_code == 401, response.text
    _, after = await stored(sessionmaker)
    assert (after.push_token, after.last_token_update_at) == (before.push_token, before.last_token_update_at)
    refusals = [
        e
        for e in await audit_rows(sessionmaker, result="failure")
        if e.activity in ("device.auth", "device.apple.checkin")
    ]
    assert refusals, "the refusal is audited"


@pytest.mark.parametrize(
    ("message", "status"),
    [
        ({"MessageType": "DeclarativeManagement", "Endpoint": "tokens"}, 400),
        ({"MessageType": "GetBootstrapToken"}, 400),
        ({"MessageType": "UserAuthenticate", "UserID": "A"}, 410),
        ({"MessageType": "Teleport"}, 400),
        ({}, 400),
        ({"MessageType": "TokenUpdate", "PushMagic": "x"}, 400),
    ],
)
async def test_messages_corral_does_not_take_are_refused_plainly(
    message: dict[str, Any],
    status: int,
    client: httpx.AsyncClient,
    factory: Factory,
    sessionmaker: async_sessionmaker[AsyncSession],
    settings: Settings,
) -> None:
    _, phone = await enrolled(client, factory, sessionmaker, settings)
    await phone.check_in(client)
    _, before = await stored(sessionmaker)
    response = await phone.send(client, {**message, "UDID": phone.udid, "Topic": phone.topic})
    assert response.status_code == status, response.text
    _, after = await stored(sessionmaker)
    assert after.push_magic == before.push_magic and after.push_token == before.push_token
    [event] = await audit_rows(sessionmaker, activity="device.apple.checkin")
    assert event.result == "failure"


@pytest.mark.parametrize(
    "body",
    [
        b'<?xml version="1.0"?><!DOCTYPE plist [<!ENTITY a "aaaa">]>'
        b"<plist><dict><key>MessageType</key><string>&a;</string></dict></plist>",
        b"bplist00garbage",
        b"not a plist",
        b"<plist><array><string>x</string></array></plist>",
    ],
)
async def test_a_body_that_is_not_an_mdm_plist_gets_400_and_changes_nothing(
    body: bytes,
    client: httpx.AsyncClient,
    factory: Factory,
    sessionmaker: async_sessionmaker[AsyncSession],
    settings: Settings,
) -> None:
    _, phone = await enrolled(client, factory, sessionmaker, settings)
    await phone.check_in(client)
    response = await phone.send_raw(client, body, url=CHECKIN)
    assert response.status_code == 400 and "property list" in response.json()["detail"]
    device, _ = await stored(sessionmaker)
    assert device.management_state == "managed"
    [refused] = await audit_rows(sessionmaker, activity="device.apple.message")
    assert refused.result == "failure" and "not a valid MDM property list" in (refused.detail or "")


async def test_an_oversized_body_is_refused_before_it_is_read(
    client: httpx.AsyncClient,
    factory: Factory,
    sessionmaker: async_sessionmaker[AsyncSession],
    settings: Settings,
) -> None:
    _, phone = await enrolled(client, factory, sessionmaker, settings)
    big = b"<plist>" + b" " * (settings.max_body_apple_bytes + 1) + b"</plist>"
    response = await phone.send_raw(client, big, url=CHECKIN, signature="x")
    assert response.status_code == 413


async def test_a_second_enrollment_of_the_same_device_and_other_apple_products_are_refused(
    client: httpx.AsyncClient,
    factory: Factory,
    sessionmaker: async_sessionmaker[AsyncSession],
    settings: Settings,
) -> None:
    admin, phone = await enrolled(client, factory, sessionmaker, settings)
    await phone.check_in(client)
    secret = await apple_token(client, admin)
    twin = await identity(
        client, sessionmaker, settings, secret, "iphone", "checkin-iphone"
    )  # same UDID, serial
    duplicate = await twin.send(client, twin.authenticate_message())
    assert duplicate.status_code == 409, duplicate.text
    tv = await identity(client, sessionmaker, settings, secret, "iphone", "tv")
    refused = await tv.send(
        client, {**tv.authenticate_message(), "ProductName": "AppleTV11,1", "Model": "AppleTV11,1"}
    )
    assert refused.status_code == 403 and "iPhone, iPad and Mac" in refused.json()["detail"]
    async with sessionmaker() as session:
        assert len((await session.scalars(select(Device))).all()) == 1
        token = await session.scalar(select(EnrollmentToken).order_by(EnrollmentToken.created_at.desc()))
    assert token is not None and token.use_count == 0
