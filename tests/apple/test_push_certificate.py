"""Settings, Apple MDM push certificate: Corral's key and CSR, Apple's certificate uploaded for it, its topic
kept across renewals, its expiry shown."""

from __future__ import annotations

import datetime as dt

import httpx
import pytest
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import rsa
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from corral.apple.push_certificate import expiry
from corral.models import ApplePushCertificate
from corral.rbac.roles import GLOBAL_ADMINISTRATOR, SERVICE_ADMINISTRATOR
from tests.apple.support import apple_issues, new_topic
from tests.conftest import Admin, Factory, audit_rows, sign_in

URL = "/api/v1/apple/push-certificate"


async def request_csr(client: httpx.AsyncClient, admin: Admin) -> str:
    response = await client.post(f"{URL}/request", headers=admin.headers)
    assert response.status_code == 201, response.text
    csr_pem: str = response.json()["csr_pem"]
    return csr_pem


async def stored(sessionmaker: async_sessionmaker[AsyncSession]) -> list[ApplePushCertificate]:
    async with sessionmaker() as session:
        return list((await session.scalars(select(ApplePushCertificate))).all())


async def test_request_sign_upload_then_the_status_shows_topic_and_expiry(
    client: httpx.AsyncClient, factory: Factory, sessionmaker: async_sessionmaker[AsyncSession]
) -> None:
    admin = await factory.admin(GLOBAL_ADMINISTRATOR.name)
    empty = await client.get(URL, headers=admin.headers)
    assert empty.status_code == 200 and empty.json() == {"certificate": None, "pending_request": None}

    csr_pem = await request_csr(client, admin)
    csr = x509.load_pem_x509_csr(csr_pem.encode())
    assert csr.is_signature_valid
    key = csr.public_key()
    assert isinstance(key, rsa.RSAPublicKey) and key.key_size == 2048
    waiting = (await client.get(URL, headers=admin.headers)).json()
    assert waiting["certificate"] is None and waiting["pending_request"]["csr_pem"] == csr_pem
    # The key is Corral's and stays encrypted at rest.
    [row] = await stored(sessionmaker)
    assert "PRIVATE KEY" not in row.private_key_encrypted and row.certificate_pem is None

    topic = new_topic()
    uploaded = await client.put(
        URL,
        json={"certificate_pem": apple_issues(csr_pem, topic), "apple_account": "mdm@example.com"},
        headers=admin.headers,
    )
    assert uploaded.status_code == 200, uploaded.text
    body = uploaded.json()
    assert body["topic"] == topic and body["apple_account"] == "mdm@example.com"
    assert body["expiry_state"] == "valid" and 362 <= body["days_left"] <= 364
    status = (await client.get(URL, headers=admin.headers)).json()
    assert status["pending_request"] is None and status["certificate"]["topic"] == topic
    activities = [e.activity for e in await audit_rows(sessionmaker, category="settings")]
    assert activities[-2:] == ["apple_push_certificate.request", "apple_push_certificate.upload"]


@pytest.mark.parametrize(
    ("case", "detail"),
    [
        ("not_pem", "not a PEM certificate"),
        ("other_key", "not issued for Corral's current request"),
        ("no_topic", "not an MDM push certificate"),
        ("other_prefix", "not an MDM push certificate"),
        ("expired", "not valid now"),
        ("not_yet_valid", "not valid now"),
    ],
)
async def test_a_certificate_that_does_not_fit_is_refused_and_nothing_changes(
    client: httpx.AsyncClient,
    factory: Factory,
    sessionmaker: async_sessionmaker[AsyncSession],
    case: str,
    detail: str,
) -> None:
    admin = await factory.admin(GLOBAL_ADMINISTRATOR.name)
    csr_pem = await request_csr(client, admin)
    now = dt.datetime.now(dt.UTC)
    pem = {
        "not_pem": lambda: "-----BEGIN CERTIFICATE-----\nnot base64\n-----END CERTIFICATE-----",
        "other_key": lambda: apple_issues(
            csr_pem,
            new_topic(),
            public_key=rsa.generate_private_key(public_exponent=65537, key_size=2048).public_key(),
        ),
        "no_topic": lambda: apple_issues(csr_pem, None),
        "other_prefix": lambda: apple_issues(csr_pem, "com.example.push"),
        "expired": lambda: apple_issues(csr_pem, new_topic(), starts=now - dt.timedelta(days=400)),
        "not_yet_valid": lambda: apple_issues(csr_pem, new_topic(), starts=now + dt.timedelta(days=2)),
    }[case]()
    response = await client.put(URL, json={"certificate_pem": pem}, headers=admin.headers)
    assert response.status_code == 422, response.text
    assert detail in response.json()["detail"]
    [row] = await stored(sessionmaker)
    assert row.certificate_pem is None and row.topic is None  # the request still waits, unchanged


async def test_renewal_keeps_the_topic_and_a_certificate_for_another_topic_is_refused(
    client: httpx.AsyncClient, factory: Factory, sessionmaker: async_sessionmaker[AsyncSession]
) -> None:
    admin = await factory.admin(GLOBAL_ADMINISTRATOR.name)
    topic = new_topic()
    first = await client.put(
        URL,
        json={"certificate_pem": apple_issues(await request_csr(client, admin), topic)},
        headers=admin.headers,
    )
    assert first.status_code == 200

    # Another topic (a new certificate instead of a renewal) would orphan the enrolled devices.
    csr_pem = await request_csr(client, admin)
    refused = await client.put(
        URL, json={"certificate_pem": apple_issues(csr_pem, new_topic())}, headers=admin.headers
    )
    assert refused.status_code == 409 and topic in refused.json()["detail"]
    assert (await client.get(URL, headers=admin.headers)).json()["certificate"]["topic"] == topic

    # The same topic, a later expiry: the renewal is taken and replaces the certificate in use.
    renewed = await client.put(
        URL, json={"certificate_pem": apple_issues(csr_pem, topic, days=500)}, headers=admin.headers
    )
    assert renewed.status_code == 200, renewed.text
    status = (await client.get(URL, headers=admin.headers)).json()
    assert status["certificate"]["topic"] == topic and status["certificate"]["days_left"] >= 497
    assert status["pending_request"] is None
    [event] = await audit_rows(sessionmaker, activity="apple_push_certificate.renew")
    assert event.target_name == "Apple MDM push certificate"


async def test_a_new_request_replaces_the_one_waiting_and_an_upload_without_one_is_refused(
    client: httpx.AsyncClient, factory: Factory, sessionmaker: async_sessionmaker[AsyncSession]
) -> None:
    admin = await factory.admin(GLOBAL_ADMINISTRATOR.name)
    none_waiting = await client.put(
        URL,
        json={"certificate_pem": apple_issues(await request_csr(client, admin), new_topic())},
        headers=admin.headers,
    )
    assert none_waiting.status_code == 200
    orphan = apple_issues(await request_csr(client, admin), new_topic())
    await request_csr(client, admin)  # replaces the waiting request: the old key is gone
    rows = await stored(sessionmaker)
    assert len(rows) == 2 and sum(r.certificate_pem is None for r in rows) == 1
    refused = await client.put(URL, json={"certificate_pem": orphan}, headers=admin.headers)
    assert refused.status_code == 422 and "current request" in refused.json()["detail"]


async def test_only_who_may_change_settings_can_request_or_upload(
    client: httpx.AsyncClient, factory: Factory, sessionmaker: async_sessionmaker[AsyncSession]
) -> None:
    service = await factory.admin(SERVICE_ADMINISTRATOR.name)  # no settings permission
    assert (await client.get(URL)).status_code == 401
    assert (await client.post(f"{URL}/request")).status_code == 401
    assert (await client.get(URL, headers=service.headers)).status_code == 403
    assert (await client.post(f"{URL}/request", headers=service.headers)).status_code == 403
    assert (await client.put(URL, json={"certificate_pem": "x"}, headers=service.headers)).status_code == 403
    assert await stored(sessionmaker) == []


@pytest.mark.parametrize(
    ("left", "state"),
    [
        (dt.timedelta(days=31), "valid"),
        (dt.timedelta(days=30), "expiring"),
        (dt.timedelta(days=8), "expiring"),
        (dt.timedelta(days=7), "expiring_soon"),
        (dt.timedelta(seconds=1), "expiring_soon"),
        (dt.timedelta(0), "expired"),
        (-dt.timedelta(days=3), "expired"),
    ],
)
def test_expiry_warns_at_30_and_7_days(left: dt.timedelta, state: str) -> None:
    now = dt.datetime(2026, 12, 4, tzinfo=dt.UTC)
    assert expiry(now + left, now).state == state


@pytest.mark.parametrize(("days", "words"), [(10, "expires in"), (-5, "expired on")])
async def test_readyz_and_the_dashboard_warn_before_the_certificate_expires(
    client: httpx.AsyncClient, factory: Factory, days: int, words: str
) -> None:
    admin = await factory.admin(GLOBAL_ADMINISTRATOR.name)
    assert (await client.get("/readyz")).json()["warnings"] == {}
    csr_pem = await request_csr(client, admin)
    # A certificate that expires soon (uploaded while it was still valid) or has expired since.
    starts = dt.datetime.now(dt.UTC) - dt.timedelta(days=365 - days)
    pem = apple_issues(csr_pem, new_topic(), starts=starts)
    if days > 0:
        assert (
            await client.put(URL, json={"certificate_pem": pem}, headers=admin.headers)
        ).status_code == 200
    else:
        fresh = apple_issues(csr_pem, new_topic(), days=30)
        assert (
            await client.put(URL, json={"certificate_pem": fresh}, headers=admin.headers)
        ).status_code == 200
        async with factory.sessionmaker() as session:
            row = await session.scalar(select(ApplePushCertificate))
            assert row is not None
            row.not_after = dt.datetime.now(dt.UTC) + dt.timedelta(days=days)
            await session.commit()
    ready = await client.get("/readyz")
    assert ready.status_code == 200 and ready.json()["status"] == "ready"  # a warning, not unreadiness
    assert words in ready.json()["warnings"]["apple_push_certificate"]

    await sign_in(client, admin.email)
    dashboard = await client.get("/portal")
    assert 'id="push-certificate-alert"' in dashboard.text
    assert ("has expired" if days < 0 else f"expires in {days - 1} days") in dashboard.text
