"""What the Apple MDM tests share: a stand-in for Apple's certificate portal, a push certificate set up
through the API, an Apple enrollment token, and Corral's root CA (what a device is told to trust)."""

from __future__ import annotations

import datetime as dt
from typing import Any

import httpx
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.x509.oid import NameOID
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from corral.config import Settings
from corral.pki.service import ROOT, pki_service
from tests.conftest import Admin
from tests.peers.apple_ca import apple_ca_pem, apple_issues, new_topic

__all__ = ["apple_ca_pem", "apple_issues", "new_topic"]

PUSH_URL = "/api/v1/apple/push-certificate"


async def set_up_push_certificate(client: httpx.AsyncClient, admin: Admin, topic: str | None = None) -> str:
    """Request, "sign at Apple" and upload a push certificate; its topic."""
    response = await client.post(f"{PUSH_URL}/request", headers=admin.headers)
    assert response.status_code == 201, response.text
    topic = topic or new_topic()
    uploaded = await client.put(
        PUSH_URL,
        json={"certificate_pem": apple_issues(response.json()["csr_pem"], topic)},
        headers=admin.headers,
    )
    assert uploaded.status_code == 200, uploaded.text
    return topic


async def apple_token(client: httpx.AsyncClient, admin: Admin, **body: Any) -> str:
    """An enrollment token for Apple devices; its secret."""
    payload = {"name": "iPhones", "platforms": ["ios", "ipados", "macos"], **body}
    response = await client.post("/api/v1/enrollment-tokens", json=payload, headers=admin.headers)
    assert response.status_code == 201, response.text
    secret: str = response.json()["token"]
    return secret


async def ca_certificate(
    sessionmaker: async_sessionmaker[AsyncSession], settings: Settings, purpose: str = ROOT
) -> x509.Certificate:
    """One of Corral's CAs (made now if the server has not yet made it, as the server would)."""
    async with sessionmaker() as session:
        ca = await pki_service.get_or_create_ca(session, settings, purpose)
        await session.commit()
    return x509.load_pem_x509_certificate(ca.certificate_pem.encode())


def self_signed_identity() -> Any:
    """An RSA identity no Corral CA issued (what a device from elsewhere would present)."""
    from corral.apple.simulator import Identity

    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "stranger")])
    now = dt.datetime.now(dt.UTC)
    certificate = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=1))
        .sign(key, hashes.SHA256())
    )
    return Identity(certificate, key, [])


async def enrolled_apple(
    client: httpx.AsyncClient,
    admin: Admin,
    sessionmaker: async_sessionmaker[AsyncSession],
    settings: Settings,
    kind: str = "iphone",
    seed: str = "device",
    **token: Any,
) -> tuple[Any, str]:
    """A simulated Apple device enrolled all the way (profile, SCEP, Authenticate, TokenUpdate), with the
    push certificate set up if it was not; the device and its id in Corral."""
    from corral.apple.simulator import AppleDevice

    status = (await client.get(PUSH_URL, headers=admin.headers)).json()
    if status["certificate"] is None:
        await set_up_push_certificate(client, admin)
    secret = await apple_token(client, admin, **token)
    device = AppleDevice(kind, seed=seed)
    trust = await ca_certificate(sessionmaker, settings)
    await device.enroll(client, f"/apple/v1/enroll?token={secret}", trust)
    listed = (
        await client.get("/api/v1/devices", params={"search": device.serial_number}, headers=admin.headers)
    ).json()
    items = listed["items"] if isinstance(listed, dict) else listed
    [item] = [i for i in items if i["serial_number"] == device.serial_number]
    return device, str(item["id"])
