"""What the Apple MDM tests share: a stand-in for Apple's certificate portal, a push certificate set up
through the API, an Apple enrollment token, and Corral's root CA (what a device is told to trust)."""

from __future__ import annotations

import datetime as dt
import functools
import uuid
from typing import Any

import httpx
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.x509.oid import NameOID
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from corral.config import Settings
from corral.pki.service import ROOT, pki_service
from tests.conftest import Admin

PUSH_URL = "/api/v1/apple/push-certificate"
_APPLE_KEY = rsa.generate_private_key(public_exponent=65537, key_size=2048)
_APPLE = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "Apple Application Integration 2 CA (test)")])


def apple_issues(
    csr_pem: str,
    topic: str | None,
    *,
    days: int = 365,
    starts: dt.datetime | None = None,
    public_key: rsa.RSAPublicKey | None = None,
) -> str:
    """What Apple's portal hands back for a CSR: a certificate for its key whose subject's UID is the topic
    (and CN APSP:<uuid>), here from a stand-in issuer."""
    csr = x509.load_pem_x509_csr(csr_pem.encode())
    key = public_key or csr.public_key()
    assert isinstance(key, rsa.RSAPublicKey)
    start = starts or dt.datetime.now(dt.UTC) - dt.timedelta(days=1)
    attributes = [x509.NameAttribute(NameOID.COMMON_NAME, f"APSP:{uuid.uuid4()}")]
    if topic is not None:
        attributes.insert(0, x509.NameAttribute(NameOID.USER_ID, topic))
    certificate = (
        x509.CertificateBuilder()
        .subject_name(x509.Name(attributes))
        .issuer_name(_APPLE)
        .public_key(key)
        .serial_number(x509.random_serial_number())
        .not_valid_before(start)
        .not_valid_after(start + dt.timedelta(days=days))
        .sign(_APPLE_KEY, hashes.SHA256())
    )
    return certificate.public_bytes(serialization.Encoding.PEM).decode()


@functools.cache
def apple_ca_pem() -> bytes:
    """The stand-in issuer's certificate, for what must trust the certificates :func:`apple_issues` makes
    (the stand-in APNs checking client certificates). Valid for long before and after: certificates are
    issued with ``starts`` in the past."""
    now = dt.datetime.now(dt.UTC)
    certificate = (
        x509.CertificateBuilder()
        .subject_name(_APPLE)
        .issuer_name(_APPLE)
        .public_key(_APPLE_KEY.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(days=3650))
        .not_valid_after(now + dt.timedelta(days=3650))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(_APPLE_KEY, hashes.SHA256())
    )
    return certificate.public_bytes(serialization.Encoding.PEM)


def new_topic() -> str:
    return f"com.apple.mgmt.External.{uuid.uuid4()}"


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
