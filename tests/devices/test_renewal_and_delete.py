"""Certificate renewal, and deletion of a device record revoking its identity."""

from __future__ import annotations

import datetime as dt

import httpx
from cryptography.hazmat.primitives.asymmetric import ec
from sqlalchemy import select, update
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from corral.models import AuditEvent, DeviceCertificate
from tests.conftest import Factory
from tests.devices.device import csr_for
from tests.devices.test_enrollment_and_checkin import enrolled


async def test_renewal_is_offered_late_in_life_and_switches_to_a_new_key(
    client: httpx.AsyncClient, factory: Factory, sessionmaker: async_sessionmaker[AsyncSession]
) -> None:
    admin = await factory.admin("Global administrator")
    device = await enrolled(client, admin)
    assert (await device.checkin({})).json()["renew_certificate"] is False
    async with sessionmaker() as session:  # two thirds of its life have passed
        await session.execute(
            update(DeviceCertificate).values(
                not_before=dt.datetime.now(dt.UTC) - dt.timedelta(days=300),
                not_after=dt.datetime.now(dt.UTC) + dt.timedelta(days=65),
            )
        )
        await session.commit()
    assert (await device.checkin({})).json()["renew_certificate"] is True

    same_key = await device.request("POST", "/device/v1/renew", {"csr": csr_for(device.key)})
    assert same_key.status_code == 422 and "new key pair" in same_key.json()["detail"]
    new_key = ec.generate_private_key(ec.SECP256R1())
    renewed = await device.request("POST", "/device/v1/renew", {"csr": csr_for(new_key)})
    assert renewed.status_code == 200, renewed.text
    old_fingerprint = device.fingerprint
    device.key, device.fingerprint = new_key, renewed.json()["certificate_fingerprint"]
    assert device.fingerprint != old_fingerprint
    after = await device.checkin({})
    assert after.status_code == 200 and after.json()["renew_certificate"] is False
    async with sessionmaker() as session:
        audited = await session.scalar(
            select(AuditEvent).where(AuditEvent.activity == "device.certificate_renew")
        )
    assert audited is not None


async def test_deleting_a_device_revokes_it_and_needs_devices_delete(
    client: httpx.AsyncClient, factory: Factory
) -> None:
    admin = await factory.admin("Global administrator")
    helpdesk = await factory.admin("Help desk operator")
    device = await enrolled(client, admin)
    assert (
        await client.delete(f"/api/v1/devices/{device.device_id}", headers=helpdesk.headers)
    ).status_code == 403
    assert (
        await client.delete(f"/api/v1/devices/{device.device_id}", headers=admin.headers)
    ).status_code == 204
    assert (await client.get(f"/api/v1/devices/{device.device_id}", headers=admin.headers)).status_code == 404
    assert (await device.checkin({})).status_code == 401
