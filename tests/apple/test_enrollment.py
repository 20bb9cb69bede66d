"""Apple enrollment up to the device identity: the signed enrollment profile an enrollment token downloads,
and Corral's SCEP server issuing the identity for the profile's one-time challenge (the simulated device
plays the iPhone's part; tests/apple/test_scepclient.py plays Debian's scepclient against it)."""

from __future__ import annotations

import datetime as dt
from urllib.parse import quote

import httpx
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import rsa
from sqlalchemy import select, update
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from corral.apple.enrollment import SCEP_REASONS
from corral.apple.simulator import AppleDevice, ScepRefused, SimulatorError
from corral.config import Settings
from corral.kit import cms
from corral.kit.security import token_digest
from corral.models import (
    ApplePendingIdentity,
    ApplePushCertificate,
    AppleScepChallenge,
    EnrollmentToken,
    ServiceCertificate,
)
from corral.rbac.roles import GLOBAL_ADMINISTRATOR
from tests.apple.support import (
    PUSH_URL,
    apple_issues,
    apple_token,
    ca_certificate,
    new_topic,
    set_up_push_certificate,
)
from tests.conftest import Admin, Factory, audit_rows, count_rows

ENROLL = "/apple/v1/enroll"


def profile_url(secret: str) -> str:
    return f"{ENROLL}?token={quote(secret)}"


async def admin_with_push(client: httpx.AsyncClient, factory: Factory) -> tuple[Admin, str]:
    admin = await factory.admin(GLOBAL_ADMINISTRATOR.name)
    return admin, await set_up_push_certificate(client, admin)


async def test_a_device_downloads_the_signed_profile_and_enrolls_over_scep(
    client: httpx.AsyncClient,
    factory: Factory,
    sessionmaker: async_sessionmaker[AsyncSession],
    settings: Settings,
) -> None:
    admin, topic = await admin_with_push(client, factory)
    secret = await apple_token(client, admin)
    response = await client.get(profile_url(secret))
    assert response.status_code == 200, response.text
    assert response.headers["content-type"] == "application/x-apple-aspen-config"
    assert "attachment" in response.headers["content-disposition"]

    phone = AppleDevice("iphone", seed="enroll-1")
    root = await ca_certificate(sessionmaker, settings)
    profile = await phone.fetch_profile(client, profile_url(secret), root)
    payloads = {p["PayloadType"]: p for p in profile["PayloadContent"]}
    mdm = payloads["com.apple.mdm"]
    assert mdm["Topic"] == topic
    assert mdm["ServerURL"] == "https://testserver/apple/v1/connect"
    assert mdm["CheckInURL"] == "https://testserver/apple/v1/checkin"
    assert mdm["SignMessage"] is True and mdm["CheckOutWhenRemoved"] is True
    scep = payloads["com.apple.security.scep"]["PayloadContent"]
    assert scep["URL"] == "https://testserver/apple/v1/scep" and scep["Keysize"] == 2048
    # Corral serves plain HTTP here (no TLS of its own): no CA to install.
    assert "com.apple.security.root" not in payloads

    identity = await phone.scep_enroll(client)
    device_ca = await ca_certificate(sessionmaker, settings, "device")
    identity.certificate.verify_directly_issued_by(device_ca)
    key = identity.certificate.public_key()
    assert isinstance(key, rsa.RSAPublicKey) and key.key_size == 2048
    usage = identity.certificate.extensions.get_extension_for_class(x509.KeyUsage).value
    assert usage.digital_signature and usage.key_encipherment

    async with sessionmaker() as session:
        pending = (await session.scalars(select(ApplePendingIdentity))).all()
        challenges = (await session.scalars(select(AppleScepChallenge))).all()
        token = await session.scalar(select(EnrollmentToken))
        ra_keys = (await session.scalars(select(ServiceCertificate.private_key_encrypted))).all()
    assert [p.fingerprint_sha256 for p in pending] == [
        identity.certificate.fingerprint(hashes.SHA256()).hex()
    ]
    # Two downloads, two challenges; the one the device used is spent.
    assert sorted(c.used_at is not None for c in challenges) == [False, True]
    # The token's use is counted when the device first checks in, not when it gets its identity.
    assert token is not None and token.use_count == 0
    assert ra_keys and all("PRIVATE KEY" not in k for k in ra_keys)
    activities = [e.activity for e in await audit_rows(sessionmaker, category="enrollment")]
    assert "apple.enrollment_profile.download" in activities and "apple.scep.issue" in activities

    # The challenge is good for one certificate: a second request with it is refused, nothing issued.
    again = AppleDevice("iphone", seed="enroll-2")
    again.profile = phone.profile
    with pytest.raises(ScepRefused) as refused:
        await again.scep_enroll(client)
    assert refused.value.fail_info == "2"  # badRequest
    assert await count_rows(sessionmaker, "apple_pending_identities") == 1


async def test_the_profile_is_refused_without_a_push_certificate_or_a_good_token(
    client: httpx.AsyncClient,
    factory: Factory,
    sessionmaker: async_sessionmaker[AsyncSession],
    settings: Settings,
) -> None:
    admin = await factory.admin(GLOBAL_ADMINISTRATOR.name)
    secret = await apple_token(client, admin)
    no_push = await client.get(profile_url(secret))
    assert no_push.status_code == 409 and "push certificate" in no_push.json()["detail"]
    [not_ready] = await audit_rows(sessionmaker, activity="device.enroll")
    assert not_ready.result == "failure" and "Apple enrollment is not set up" in (not_ready.detail or "")
    await set_up_push_certificate(client, admin)

    unknown = await client.get(profile_url("cet_" + "x" * 32))
    assert unknown.status_code == 401
    linux = await apple_token(client, admin, platforms=["linux", "windows"])
    wrong_platform = await client.get(profile_url(linux))
    assert wrong_platform.status_code == 403 and "ios" in wrong_platform.json()["detail"]
    expired = await apple_token(client, admin)
    async with sessionmaker() as session:
        await session.execute(
            update(EnrollmentToken)
            .where(EnrollmentToken.token_hash == token_digest(expired))
            .values(expires_at=dt.datetime.now(dt.UTC) - dt.timedelta(minutes=1))
        )
        await session.commit()
    assert (await client.get(profile_url(expired))).status_code == 401
    # Nothing was handed out for any of them.
    assert await count_rows(sessionmaker, "apple_scep_challenges") == 0
    details = " | ".join(e.detail or "" for e in await audit_rows(sessionmaker, activity="device.enroll"))
    assert details.count("/apple/v1/enroll:") == 4
    for text in ("is not valid", "does not allow this platform", "has expired"):
        assert f"/apple/v1/enroll: the enrollment token {text}" in details


@pytest.mark.parametrize("case", ["expired_challenge", "revoked_token", "wrong_challenge"])
async def test_scep_refuses_a_spent_token_or_a_bad_challenge(
    case: str,
    client: httpx.AsyncClient,
    factory: Factory,
    sessionmaker: async_sessionmaker[AsyncSession],
    settings: Settings,
) -> None:
    admin, _ = await admin_with_push(client, factory)
    secret = await apple_token(client, admin)
    phone = AppleDevice("ipad", seed=case)
    await phone.fetch_profile(client, profile_url(secret), await ca_certificate(sessionmaker, settings))
    async with sessionmaker() as session:
        if case == "expired_challenge":
            await session.execute(
                update(AppleScepChallenge).values(
                    expires_at=dt.datetime.now(dt.UTC) - dt.timedelta(seconds=1)
                )
            )
        elif case == "revoked_token":
            await session.execute(update(EnrollmentToken).values(revoked_at=dt.datetime.now(dt.UTC)))
        await session.commit()
    if case == "wrong_challenge":
        phone._payload("com.apple.security.scep")["PayloadContent"]["Challenge"] = "not-the-challenge"
    with pytest.raises(ScepRefused):
        await phone.scep_enroll(client)
    assert await count_rows(sessionmaker, "apple_pending_identities") == 0
    reason = {"expired_challenge": "challenge_expired", "revoked_token": "token_inactive"}.get(
        case, "unknown_challenge"
    )
    refused = [
        e for e in await audit_rows(sessionmaker, activity="apple.scep.issue") if e.result == "failure"
    ]
    assert [e.detail for e in refused] == [f"/apple/v1/scep: {SCEP_REASONS[reason]}"]


async def test_scep_capabilities_ca_certificates_and_garbage(client: httpx.AsyncClient) -> None:
    caps = await client.get("/apple/v1/scep", params={"operation": "GetCACaps"})
    assert caps.status_code == 200 and set(caps.text.split()) >= {"POSTPKIOperation", "AES", "SHA-256"}
    cacert = await client.get("/apple/v1/scep", params={"operation": "GetCACert"})
    assert cacert.headers["content-type"] == "application/x-x509-ca-ra-cert"
    ra, ca = cms.certificates_of(cacert.content)
    ra.verify_directly_issued_by(ca)
    assert ra.extensions.get_extension_for_class(x509.KeyUsage).value.key_encipherment
    unknown = await client.get("/apple/v1/scep", params={"operation": "GetNextCACert"})
    assert unknown.status_code == 400
    garbage = await client.post(
        "/apple/v1/scep", params={"operation": "PKIOperation"}, content=b"\x30\x03\x02\x01\x00"
    )
    assert garbage.status_code == 400 and "signed SCEP message" in garbage.json()["detail"]
    empty = await client.post("/apple/v1/scep", params={"operation": "PKIOperation"}, content=b"")
    assert empty.status_code == 400


async def test_the_simulator_refuses_a_profile_signed_by_someone_else(
    client: httpx.AsyncClient,
    factory: Factory,
    sessionmaker: async_sessionmaker[AsyncSession],
    settings: Settings,
) -> None:
    admin, _ = await admin_with_push(client, factory)
    secret = await apple_token(client, admin)
    other = await ca_certificate(
        sessionmaker, settings, "device"
    )  # a CA of Corral's, but not the profile signer's
    with pytest.raises(SimulatorError, match="not signed by a certificate the trusted CA issued"):
        await AppleDevice("mac").fetch_profile(client, profile_url(secret), other)


async def test_the_profile_is_refused_while_the_push_certificate_is_expired(
    client: httpx.AsyncClient, factory: Factory, sessionmaker: async_sessionmaker[AsyncSession]
) -> None:
    admin = await factory.admin(GLOBAL_ADMINISTRATOR.name)
    secret = await apple_token(client, admin)
    # An expired certificate is refused at upload (422, nothing saved); one that expired in use is the
    # stored certificate's end moved into the past.
    request = await client.post(f"{PUSH_URL}/request", headers=admin.headers)
    expired = apple_issues(
        request.json()["csr_pem"],
        new_topic(),
        starts=dt.datetime.now(dt.UTC) - dt.timedelta(days=400),
        days=365,
    )
    refused = await client.put(PUSH_URL, json={"certificate_pem": expired}, headers=admin.headers)
    assert refused.status_code == 422 and "not valid now" in refused.json()["detail"], refused.text
    await set_up_push_certificate(client, admin)
    async with sessionmaker() as session:
        await session.execute(
            update(ApplePushCertificate)
            .where(ApplePushCertificate.certificate_pem.is_not(None))
            .values(not_after=dt.datetime.now(dt.UTC) - dt.timedelta(minutes=1))
        )
        await session.commit()

    response = await client.get(profile_url(secret))
    assert response.status_code == 409, response.text
    assert "the Apple MDM push certificate has expired" in response.json()["detail"]
    # No challenge was handed out, and no profile download recorded.
    assert await count_rows(sessionmaker, "apple_scep_challenges") == 0
    assert await audit_rows(sessionmaker, activity="apple.enrollment_profile.download") == []
