"""Enrollment tokens, enrollment, device authentication and check-in, over the real app and database."""

from __future__ import annotations

import datetime as dt
import uuid
from pathlib import Path
from typing import Any

import httpx
import pytest
from cryptography.hazmat.primitives.asymmetric import ec
from fastapi import FastAPI
from sqlalchemy import func, select, text, update
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from corral.models import (
    AuditEvent,
    Device,
    DeviceCertificate,
    DeviceInventoryChange,
    DeviceNonce,
    EnrollmentToken,
    EnrollmentTokenUse,
)
from tests.conftest import Admin, Factory, audit_rows, make_settings, new_client, running_app
from tests.devices.device import TestDevice, canonical_hash, csr_for, inventory, rsa_csr


async def make_token(client: httpx.AsyncClient, admin: Admin, **overrides: Any) -> str:
    body = {"name": "Laptops", "platforms": ["linux", "windows", "macos"], "ownership": "company"}
    body.update(overrides)
    response = await client.post("/api/v1/enrollment-tokens", json=body, headers=admin.headers)
    assert response.status_code == 201, response.text
    return str(response.json()["token"])


async def enrolled(client: httpx.AsyncClient, admin: Admin, **token: Any) -> TestDevice:
    device = TestDevice(client)
    response = await device.enroll(await make_token(client, admin, **token))
    assert response.status_code == 201, response.text
    return device


async def count(sessionmaker: async_sessionmaker[AsyncSession], model: Any, *where: Any) -> int:
    async with sessionmaker() as session:
        return int(await session.scalar(select(func.count()).select_from(model).where(*where)) or 0)


# ------------------------------------------------------------------------------------------- tokens
async def test_token_is_shown_once_with_an_enrollment_url_and_qr_code(
    client: httpx.AsyncClient, factory: Factory, sessionmaker: async_sessionmaker[AsyncSession]
) -> None:
    admin = await factory.admin("Global administrator")
    response = await client.post(
        "/api/v1/enrollment-tokens",
        headers=admin.headers,
        json={
            "name": "Field tablets",
            "platforms": ["android", "ios"],
            "ownership": "personal",
            "expires_in_days": 7,
            "max_uses": 20,
        },
    )
    assert response.status_code == 201
    body = response.json()
    assert body["token"].startswith("cet_")
    assert body["enrollment_url"] == f"https://testserver/device/v1/enroll?token={body['token']}"
    assert body["qr_svg_data_uri"].startswith("data:image/svg+xml")
    assert body["enrollment_token"]["platforms"] == ["android", "ios"]
    listed = (await client.get("/api/v1/enrollment-tokens", headers=admin.headers)).json()
    assert body["token"] not in str(listed) and listed[0]["status"] == "active"
    async with sessionmaker() as session:
        stored = await session.scalar(select(EnrollmentToken))
        assert stored is not None and body["token"].encode() not in stored.token_hash


async def test_help_desk_reads_tokens_but_cannot_create_them(
    client: httpx.AsyncClient, factory: Factory
) -> None:
    helpdesk = await factory.admin("Help desk operator")
    assert (await client.get("/api/v1/enrollment-tokens", headers=helpdesk.headers)).status_code == 200
    refused = await client.post(
        "/api/v1/enrollment-tokens", headers=helpdesk.headers, json={"name": "x", "platforms": ["linux"]}
    )
    assert refused.status_code == 403


# ------------------------------------------------------------------------------------------- enrollment
async def test_enrollment_creates_device_certificate_token_use_and_audit_atomically(
    client: httpx.AsyncClient, factory: Factory, sessionmaker: async_sessionmaker[AsyncSession]
) -> None:
    admin = await factory.admin("Global administrator")
    device = TestDevice(client)
    response = await device.enroll(await make_token(client, admin))
    assert response.status_code == 201, response.text
    body = response.json()
    assert body["checkin_url"] == "https://testserver/device/v1/checkin"
    assert body["checkin_interval_seconds"] == 180
    assert "BEGIN CERTIFICATE" in body["certificate"] and "BEGIN CERTIFICATE" in body["ca_certificates"]
    async with sessionmaker() as session:
        stored = await session.get(Device, uuid.UUID(body["device_id"]))
        assert stored is not None and stored.serial_number == device.serial and stored.ownership == "company"
        cert = await session.scalar(select(DeviceCertificate).where(DeviceCertificate.device_id == stored.id))
        assert cert is not None and cert.fingerprint_sha256 == body["certificate_fingerprint"]
        token = await session.scalar(select(EnrollmentToken))
        assert token is not None and token.use_count == 1
    assert await count(sessionmaker, EnrollmentTokenUse, EnrollmentTokenUse.result == "enrolled") == 1
    assert (
        await count(
            sessionmaker, AuditEvent, AuditEvent.activity == "device.enroll", AuditEvent.result == "success"
        )
        == 1
    )


@pytest.mark.parametrize("problem", ["revoked", "expired", "used_up", "unknown"])
async def test_unusable_token_is_refused_logged_and_audited(
    client: httpx.AsyncClient, factory: Factory, sessionmaker: async_sessionmaker[AsyncSession], problem: str
) -> None:
    admin = await factory.admin("Global administrator")
    token = await make_token(client, admin, max_uses=1)
    if problem == "used_up":
        assert (await TestDevice(client).enroll(token)).status_code == 201
    async with sessionmaker() as session:
        if problem == "revoked":
            await session.execute(update(EnrollmentToken).values(revoked_at=dt.datetime.now(dt.UTC)))
        if problem == "expired":
            await session.execute(
                update(EnrollmentToken).values(expires_at=dt.datetime.now(dt.UTC) - dt.timedelta(seconds=1))
            )
        await session.commit()
    devices_before = await count(sessionmaker, Device)
    response = await TestDevice(client).enroll("cet_not-a-real-token" if problem == "unknown" else token)
    assert response.status_code == 401
    assert response.headers["content-type"].startswith("application/problem+json")
    assert await count(sessionmaker, Device) == devices_before
    assert (
        await count(
            sessionmaker, AuditEvent, AuditEvent.activity == "device.enroll", AuditEvent.result == "failure"
        )
        == 1
    )
    if problem != "unknown":
        assert await count(sessionmaker, EnrollmentTokenUse, EnrollmentTokenUse.result == "refused") == 1


@pytest.mark.parametrize(
    ("csr", "message"),
    [
        ("not a csr", "not a PEM-encoded"),
        ("rsa", "ECDSA P-256 or P-384"),
        ("p521", "curve"),
        ("foreign-signature", "does not verify"),
    ],
)
async def test_bad_csr_is_refused_and_nothing_created(
    client: httpx.AsyncClient,
    factory: Factory,
    sessionmaker: async_sessionmaker[AsyncSession],
    csr: str,
    message: str,
) -> None:
    admin = await factory.admin("Global administrator")
    token = await make_token(client, admin)
    if csr == "rsa":
        csr = rsa_csr()
    elif csr == "p521":
        csr = csr_for(ec.generate_private_key(ec.SECP521R1()))
    elif csr == "foreign-signature":
        good = csr_for(ec.generate_private_key(ec.SECP256R1()))
        other = csr_for(ec.generate_private_key(ec.SECP256R1()))
        # The public key of one request with the signature of another.
        import base64

        from cryptography import x509
        from cryptography.hazmat.primitives import serialization

        def der(pem: str) -> bytes:
            return x509.load_pem_x509_csr(pem.encode()).public_bytes(serialization.Encoding.DER)

        good_der, other_der = der(good), der(other)
        tampered = (
            good_der[:-72] + other_der[-72:] if len(good_der) == len(other_der) else other_der[:-1] + b"\x00"
        )
        csr = (
            "-----BEGIN CERTIFICATE REQUEST-----\n"
            + base64.encodebytes(tampered).decode()
            + "-----END CERTIFICATE REQUEST-----\n"
        )
    response = await TestDevice(client).enroll(token, csr=csr)
    assert response.status_code == 422, response.text
    assert message in response.json()["detail"]
    assert await count(sessionmaker, Device) == 0


async def test_token_refuses_other_platforms(client: httpx.AsyncClient, factory: Factory) -> None:
    admin = await factory.admin("Global administrator")
    token = await make_token(client, admin, platforms=["ios"])
    response = await TestDevice(client, platform="linux").enroll(token)
    assert response.status_code == 403 and "does not allow linux" in response.json()["detail"]


async def test_same_serial_cannot_enroll_twice_while_managed(
    client: httpx.AsyncClient, factory: Factory, sessionmaker: async_sessionmaker[AsyncSession]
) -> None:
    """The unique index decides (no query beforehand); the refusal is still audited and logged on the token,
    and nothing else changes: no second device, no use counted."""
    admin = await factory.admin("Global administrator")
    token = await make_token(client, admin, name="Lab")
    first = TestDevice(client)
    assert (await first.enroll(token)).status_code == 201
    again = await TestDevice(client, serial=first.serial).enroll(token)
    assert again.status_code == 409
    assert f"serial number {first.serial} already exists" in again.json()["detail"]
    assert await count(sessionmaker, Device) == 1
    async with sessionmaker() as session:
        stored = await session.scalar(select(EnrollmentToken).where(EnrollmentToken.name == "Lab"))
    assert stored is not None and stored.use_count == 1
    uses = (await client.get(f"/api/v1/enrollment-tokens/{stored.id}/uses", headers=admin.headers)).json()
    assert sorted((u["result"], u["serial_number"]) for u in uses) == [
        ("enrolled", first.serial),
        ("refused", first.serial),
    ]
    [refused] = [e for e in await audit_rows(sessionmaker, activity="device.enroll") if e.result != "success"]
    assert refused.target_name == "Lab" and "already" in (refused.detail or "")


async def test_concurrent_enrollments_respect_the_quota(
    client: httpx.AsyncClient, factory: Factory, sessionmaker: async_sessionmaker[AsyncSession]
) -> None:
    import asyncio

    admin = await factory.admin("Global administrator")
    token = await make_token(client, admin, max_uses=3)
    results = await asyncio.gather(*(TestDevice(client).enroll(token) for _ in range(6)))
    assert sorted(r.status_code for r in results) == [201, 201, 201, 401, 401, 401]
    assert await count(sessionmaker, Device) == 3


# ------------------------------------------------------------------------------------------- authentication
async def test_check_in_with_inventory_then_hash_only(
    client: httpx.AsyncClient, factory: Factory, sessionmaker: async_sessionmaker[AsyncSession]
) -> None:
    admin = await factory.admin("Global administrator")
    device = await enrolled(client, admin)
    data = inventory()
    first = await device.checkin(
        {"agent_version": "0.1.0", "inventory": data, "inventory_hash": canonical_hash(data)}
    )
    assert first.status_code == 200, first.text
    assert first.json()["inventory"] == "accepted" and first.json()["commands"] == []
    second = await device.checkin({"inventory_hash": canonical_hash(data)})
    assert second.json()["inventory"] == "unchanged"
    unknown = await device.checkin({"inventory_hash": "0" * 64})
    assert unknown.json()["inventory"] == "needed"
    changed = inventory(
        primary_user="bob", apps=[{"name": "Firefox", "version": "129.0", "identifier": "firefox-esr"}]
    )
    assert (await device.checkin({"inventory": changed})).json()["inventory"] == "accepted"

    detail = (await client.get(f"/api/v1/devices/{device.device_id}", headers=admin.headers)).json()
    assert detail["primary_user"] == "bob" and detail["hostname"] == "alice-laptop"
    assert detail["disk_encrypted"] is True and detail["last_checkin_at"] is not None
    assert detail["certificate_fingerprint"] == device.fingerprint
    history = (
        await client.get(f"/api/v1/devices/{device.device_id}/inventory-history", headers=admin.headers)
    ).json()
    fields = {h["field"]: h for h in history}
    assert fields["primary_user"]["old_value"] == "alice" and fields["primary_user"]["new_value"] == "bob"
    assert fields["apps.removed"]["new_value"] == ["curl 7.88.1"]
    assert fields["apps.updated"]["new_value"] == ["Firefox 129.0"]
    apps = (await client.get(f"/api/v1/devices/{device.device_id}/apps", headers=admin.headers)).json()
    assert [(a["identifier"], a["version"]) for a in apps] == [("firefox-esr", "129.0")]
    assert await count(sessionmaker, DeviceInventoryChange) == len(history)


async def test_unsigned_request_is_refused_and_audited(
    client: httpx.AsyncClient, sessionmaker: async_sessionmaker[AsyncSession]
) -> None:
    response = await client.post("/device/v1/checkin", json={})
    assert response.status_code == 401
    assert await count(sessionmaker, AuditEvent, AuditEvent.activity == "device.auth") == 1


async def test_forged_and_tampered_requests_are_refused(client: httpx.AsyncClient, factory: Factory) -> None:
    admin = await factory.admin("Global administrator")
    device = await enrolled(client, admin)
    victim = await enrolled(client, admin)
    # Another key claiming this device's certificate.
    forged = await device.checkin({}, key=ec.generate_private_key(ec.SECP256R1()))
    assert forged.status_code == 401 and "bad signature" in forged.json()["detail"]
    # This device's key claiming another device's certificate.
    assert (await device.checkin({}, key_id=victim.fingerprint)).status_code == 401
    # An unknown certificate.
    assert (await device.checkin({}, key_id="ab" * 32)).status_code == 401
    # A valid signature over other bytes.
    body = b'{"inventory_hash": null}'
    headers = device.signed_headers("POST", "/device/v1/checkin", body)
    tampered = await client.post("/device/v1/checkin", content=b'{"command_results": []}', headers=headers)
    assert tampered.status_code == 401
    # Signed for another path.
    headers = device.signed_headers("POST", "/device/v1/renew", body)
    assert (await client.post("/device/v1/checkin", content=body, headers=headers)).status_code == 401


async def test_replayed_and_stale_requests_are_refused(client: httpx.AsyncClient, factory: Factory) -> None:
    admin = await factory.admin("Global administrator")
    device = await enrolled(client, admin)
    body = b"{}"
    headers = device.signed_headers("POST", "/device/v1/checkin", body)
    assert (await client.post("/device/v1/checkin", content=body, headers=headers)).status_code == 200
    replay = await client.post("/device/v1/checkin", content=body, headers=headers)
    assert replay.status_code == 401 and "replayed" in replay.json()["detail"]
    stale = await device.checkin({}, created=dt.datetime.now(dt.UTC) - dt.timedelta(minutes=10))
    assert stale.status_code == 401
    future = await device.checkin({}, created=dt.datetime.now(dt.UTC) + dt.timedelta(minutes=10))
    assert future.status_code == 401
    assert (await device.checkin({}, nonce="short")).status_code == 401


async def test_a_refused_request_does_not_use_up_its_nonce(
    client: httpx.AsyncClient, factory: Factory, sessionmaker: async_sessionmaker[AsyncSession]
) -> None:
    """The nonce is stored by the certificate lookup, before the signature is checked: a refusal rolls it
    back, so someone who saw a nonce cannot spend it with a forged request before the device does."""
    admin = await factory.admin("Global administrator")
    device = await enrolled(client, admin)
    nonce = "n" * 22
    forged = await device.checkin({}, key=ec.generate_private_key(ec.SECP256R1()), nonce=nonce)
    assert forged.status_code == 401 and "bad signature" in forged.json()["detail"]
    async with sessionmaker() as session:
        assert await session.scalar(select(func.count()).select_from(DeviceNonce)) == 0
    assert (await device.checkin({}, nonce=nonce)).status_code == 200
    replayed = await device.checkin({}, nonce=nonce)
    assert replayed.status_code == 401 and "replayed" in replayed.json()["detail"]
    async with sessionmaker() as session:
        assert await session.scalar(select(func.count()).select_from(DeviceNonce)) == 1


async def test_malformed_and_oversized_check_ins_change_nothing(
    client: httpx.AsyncClient, factory: Factory, sessionmaker: async_sessionmaker[AsyncSession]
) -> None:
    admin = await factory.admin("Global administrator")
    device = await enrolled(client, admin)
    bad = await device.checkin({"inventory": {"apps": "everything"}})
    assert bad.status_code == 422
    extra = await device.checkin({"surprise": True})
    assert extra.status_code == 422
    too_many = await device.checkin({"inventory": inventory(apps=[{"name": f"a{i}"} for i in range(5001)])})
    assert too_many.status_code == 422
    long_text = await device.checkin({"inventory": inventory(primary_user="x" * 513)})
    assert long_text.status_code == 422
    huge = b"{" + b" " * (3 * 1024 * 1024) + b"}"
    headers = device.signed_headers("POST", "/device/v1/checkin", huge)
    assert (await client.post("/device/v1/checkin", content=huge, headers=headers)).status_code == 413
    unknown_result = await device.checkin(
        {"command_results": [{"command_id": str(uuid.uuid4()), "status": "succeeded"}]}
    )
    assert unknown_result.status_code == 422
    async with sessionmaker() as session:
        stored = await session.get(Device, uuid.UUID(str(device.device_id)))
        assert stored is not None and stored.last_checkin_at is None and stored.inventory == {}


# ------------------------------------------------------------------------------------------- last seen
async def last_seen_of(sessionmaker: async_sessionmaker[AsyncSession], device: TestDevice) -> tuple[Any, Any]:
    async with sessionmaker() as session:
        stored = await session.get(Device, uuid.UUID(str(device.device_id)))
        assert stored is not None
        return stored.last_checkin_at, stored.last_checkin_ip


async def test_steady_check_in_is_seen_at_the_next_flush_not_at_once(
    tmp_path: Path, db_url: str, factory: Factory, sessionmaker: async_sessionmaker[AsyncSession]
) -> None:
    settings = make_settings(tmp_path, db_url, last_seen_flush_seconds=300)
    async with running_app(settings, db_url) as app, new_client(app) as client:
        admin = await factory.admin("Global administrator")
        device = await enrolled(client, admin)
        data = inventory()
        # The first check-in (and any that changes something) is written in its own transaction.
        assert (await device.checkin({"inventory": data})).status_code == 200
        first, ip = await last_seen_of(sessionmaker, device)
        assert first is not None and ip == "203.0.113.7"
        steady = await device.checkin({"inventory_hash": canonical_hash(data)})
        assert steady.status_code == 200 and steady.json()["inventory"] == "unchanged"
        assert (await last_seen_of(sessionmaker, device))[0] == first
        assert len(app.state.last_seen) == 1
        assert await app.state.last_seen.flush() == 1
        seen, _ip = await last_seen_of(sessionmaker, device)
        assert seen > first
        assert seen == dt.datetime.fromisoformat(steady.json()["server_time"])
        # The portal and the API read the flushed time.
        detail = (await client.get(f"/api/v1/devices/{device.device_id}", headers=admin.headers)).json()
        assert dt.datetime.fromisoformat(detail["last_checkin_at"]) == seen
        # Another steady check-in, still pending at shutdown, is written when the application stops.
        assert (await device.checkin({"inventory_hash": canonical_hash(data)})).status_code == 200
    assert (await last_seen_of(sessionmaker, device))[0] > seen


async def test_a_flush_never_moves_the_last_check_in_back(
    app: FastAPI, client: httpx.AsyncClient, factory: Factory, sessionmaker: async_sessionmaker[AsyncSession]
) -> None:
    admin = await factory.admin("Global administrator")
    device = await enrolled(client, admin)
    assert (await device.checkin({})).status_code == 200
    assert (await device.checkin({})).status_code == 200  # steady: buffered
    assert len(app.state.last_seen) == 1
    later = dt.datetime.now(dt.UTC) + dt.timedelta(minutes=5)
    async with sessionmaker() as session:
        await session.execute(
            update(Device).where(Device.id == uuid.UUID(str(device.device_id))).values(last_checkin_at=later)
        )
        await session.commit()
    assert await app.state.last_seen.flush() == 0
    assert (await last_seen_of(sessionmaker, device))[0] == later


async def test_without_batching_every_check_in_writes_its_time(
    tmp_path: Path, db_url: str, factory: Factory, sessionmaker: async_sessionmaker[AsyncSession]
) -> None:
    settings = make_settings(tmp_path, db_url, last_seen_flush_seconds=0)
    async with running_app(settings, db_url) as app, new_client(app) as client:
        device = await enrolled(client, await factory.admin("Global administrator"))
        assert (await device.checkin({})).status_code == 200
        first = (await last_seen_of(sessionmaker, device))[0]
        response = await device.checkin({})
        assert response.status_code == 200
        assert len(app.state.last_seen) == 0
        seen = (await last_seen_of(sessionmaker, device))[0]
        assert seen > first and seen == dt.datetime.fromisoformat(response.json()["server_time"])


async def test_steady_check_in_does_not_wait_for_a_lock_on_the_device_row(
    client: httpx.AsyncClient, factory: Factory, sessionmaker: async_sessionmaker[AsyncSession]
) -> None:
    import asyncio

    device = await enrolled(client, await factory.admin("Global administrator"))
    assert (await device.checkin({})).status_code == 200
    async with sessionmaker() as holder:
        # What another writer of the device row holds (e.g. an UPDATE of its name or the last-seen flush).
        await holder.execute(
            text("SELECT 1 FROM devices WHERE id = :id FOR NO KEY UPDATE"),
            {"id": uuid.UUID(str(device.device_id))},
        )
        response = await asyncio.wait_for(device.checkin({}), timeout=10)
        assert response.status_code == 200
        await holder.rollback()


async def test_check_in_with_a_pending_command_takes_it_even_when_nothing_else_changed(
    client: httpx.AsyncClient, factory: Factory
) -> None:
    admin = await factory.admin("Global administrator")
    device = await enrolled(client, admin)
    assert (await device.checkin({})).status_code == 200
    assert (await device.checkin({})).json()["commands"] == []
    issued = await client.post(
        f"/api/v1/devices/{device.device_id}/actions/sync", json={}, headers=admin.headers
    )
    assert issued.status_code in (200, 201, 202), issued.text
    commands = (await device.checkin({})).json()["commands"]
    assert [c["type"] for c in commands] == ["sync"]
