"""RFC 9440 ``Client-Cert``: devices authenticated by the certificate a trusted TLS proxy verified."""

from __future__ import annotations

import base64
import datetime as dt
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from sqlalchemy import update
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from corral.models import Device, DeviceCertificate, ManagementState
from tests.conftest import Factory, audit_rows, make_settings, new_client, running_app
from tests.devices.device import TestDevice, csr_for

# The test client's address (tests/conftest.py: new_client) is 203.0.113.7.
PROXY = "203.0.113.0/24"
ELSEWHERE = "198.51.100.0/24"


def header_of(certificate: x509.Certificate) -> str:
    """RFC 9440: the DER certificate as a structured-field byte sequence."""
    return ":" + base64.b64encode(certificate.public_bytes(serialization.Encoding.DER)).decode() + ":"


@pytest.fixture
def make_client(
    tmp_path: Path, db_url: str
) -> Any:  # a factory of clients for an app with the given settings (trusted proxies, header on or off)
    from contextlib import asynccontextmanager

    @asynccontextmanager
    async def make(**overrides: Any) -> AsyncIterator[httpx.AsyncClient]:
        values: dict[str, Any] = {"client_cert_header": True, "trusted_proxies": [PROXY]}
        values.update(overrides)
        async with (
            running_app(make_settings(tmp_path, db_url, **values), db_url) as app,
            new_client(app) as client,
        ):
            yield client

    return make


async def enrolled_device(client: httpx.AsyncClient, factory: Factory) -> tuple[TestDevice, x509.Certificate]:
    admin = await factory.admin("Global administrator")
    response = await client.post(
        "/api/v1/enrollment-tokens", json={"name": "Proxy", "platforms": ["linux"]}, headers=admin.headers
    )
    assert response.status_code == 201, response.text
    device = TestDevice(client)
    enrolled = await device.enroll(response.json()["token"])
    assert enrolled.status_code == 201, enrolled.text
    assert device.certificate is not None
    return device, x509.load_pem_x509_certificate(device.certificate.encode())


async def post_with_certificate(client: httpx.AsyncClient, value: str, body: Any = None) -> httpx.Response:
    return await client.post(
        "/device/v1/checkin", json={} if body is None else body, headers={"Client-Cert": value}
    )


async def refusals(sessionmaker: async_sessionmaker[AsyncSession]) -> list[Any]:
    return await audit_rows(sessionmaker, activity="device.auth", result="failure")


async def test_trusted_proxy_with_a_valid_certificate_checks_in(
    make_client: Any, factory: Factory, sessionmaker: async_sessionmaker[AsyncSession]
) -> None:
    async with make_client() as client:
        device, certificate = await enrolled_device(client, factory)
        response = await post_with_certificate(client, header_of(certificate), {"agent_version": "9.9"})
        assert response.status_code == 200, response.text
        assert response.json()["inventory"] == "needed"
        # Renewal and every other device request work the same way.
        renewed = await client.post(
            "/device/v1/renew",
            json={"csr": csr_for(ec.generate_private_key(ec.SECP256R1()))},
            headers={"Client-Cert": header_of(certificate)},
        )
        assert renewed.status_code == 200, renewed.text
    async with sessionmaker() as session:
        stored = await session.get(Device, uuid.UUID(str(device.device_id)))
        assert stored is not None and stored.agent_version == "9.9" and stored.last_checkin_at is not None
    assert await refusals(sessionmaker) == []


async def test_header_from_an_untrusted_peer_is_ignored(
    make_client: Any, factory: Factory, sessionmaker: async_sessionmaker[AsyncSession]
) -> None:
    async with make_client(trusted_proxies=[ELSEWHERE]) as client:
        device, certificate = await enrolled_device(client, factory)
        response = await post_with_certificate(client, header_of(certificate))
        assert response.status_code == 401
        assert "not signed" in response.json()["detail"]
        # A signed request from the same peer still works; the header changes nothing.
        body = b"{}"
        headers = device.signed_headers("POST", "/device/v1/checkin", body)
        headers["Client-Cert"] = header_of(certificate)
        signed = await client.post("/device/v1/checkin", content=body, headers=headers)
        assert signed.status_code == 200, signed.text
    assert len(await refusals(sessionmaker)) == 1


async def test_setting_off_ignores_the_header_even_from_a_trusted_proxy(
    make_client: Any, factory: Factory
) -> None:
    async with make_client(client_cert_header=False) as client:
        device, certificate = await enrolled_device(client, factory)
        assert (await post_with_certificate(client, header_of(certificate))).status_code == 401
        assert (await device.checkin({})).status_code == 200


@pytest.mark.parametrize("problem", ["revoked", "retired", "expired"])
async def test_unusable_certificate_is_refused_and_audited(
    make_client: Any, factory: Factory, sessionmaker: async_sessionmaker[AsyncSession], problem: str
) -> None:
    async with make_client() as client:
        device, certificate = await enrolled_device(client, factory)
        device_id = uuid.UUID(str(device.device_id))
        async with sessionmaker() as session:
            if problem == "revoked":
                await session.execute(
                    update(DeviceCertificate)
                    .where(DeviceCertificate.device_id == device_id)
                    .values(revoked_at=dt.datetime.now(dt.UTC), revocation_reason="test")
                )
            elif problem == "retired":
                await session.execute(
                    update(Device)
                    .where(Device.id == device_id)
                    .values(management_state=ManagementState.retired)
                )
            else:
                await session.execute(
                    update(DeviceCertificate)
                    .where(DeviceCertificate.device_id == device_id)
                    .values(not_after=dt.datetime.now(dt.UTC) - dt.timedelta(seconds=1))
                )
            await session.commit()
        response = await post_with_certificate(client, header_of(certificate))
        assert response.status_code == 401
    expected = {"revoked": "revoked", "retired": "retired", "expired": "not valid now"}[problem]
    assert expected in response.json()["detail"]
    [event] = await refusals(sessionmaker)
    assert event.target_id == str(device_id) and expected in (event.detail or "")


async def test_certificate_from_another_ca_is_refused_and_audited(
    make_client: Any, factory: Factory, sessionmaker: async_sessionmaker[AsyncSession]
) -> None:
    async with make_client() as client:
        device, genuine = await enrolled_device(client, factory)
        # Another CA issues a certificate with the same subject, issuer name and key as the genuine one.
        other_key = ec.generate_private_key(ec.SECP256R1())
        now = dt.datetime.now(dt.UTC)
        forged = (
            x509.CertificateBuilder()
            .subject_name(genuine.subject)
            .issuer_name(genuine.issuer)
            .public_key(device.key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(minutes=1))
            .not_valid_after(now + dt.timedelta(days=1))
            .sign(other_key, hashes.SHA256())
        )
        stranger = (
            x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, str(device.device_id))]))
            .issuer_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "Someone else's CA")]))
            .public_key(device.key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(minutes=1))
            .not_valid_after(now + dt.timedelta(days=1))
            .sign(other_key, hashes.SHA256())
        )
        for certificate in (forged, stranger):
            response = await post_with_certificate(client, header_of(certificate))
            assert response.status_code == 401
            assert "not issued by Corral's device CA" in response.json()["detail"]
        assert (await post_with_certificate(client, header_of(genuine))).status_code == 200
    events = await refusals(sessionmaker)
    assert len(events) == 2 and all("device CA" in (e.detail or "") for e in events)


@pytest.mark.parametrize(
    "value",
    [
        "",
        "garbage",
        ":not base64!:",
        ":" + base64.b64encode(b"not a DER certificate").decode() + ":",
        "::",
        '"a string"',
        ":" + "A" * 20_000 + ":",
        "MIIB" + "A" * 40,  # base64 without the colons
    ],
)
async def test_malformed_header_is_refused_not_an_error(
    make_client: Any, factory: Factory, sessionmaker: async_sessionmaker[AsyncSession], value: str
) -> None:
    async with make_client() as client:
        response = await post_with_certificate(client, value)
    assert response.status_code == 401, response.text
    assert "malformed Client-Cert" in response.json()["detail"]
    assert len(await refusals(sessionmaker)) == 1
