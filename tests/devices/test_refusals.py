"""Refused device requests (hardening finding 3): anonymous traffic must not fill the append-only audit log.

Refusals are counted (metrics), audited once per kind and window with only what the server knows (reason code,
client address, the device or token it found), summarised with their count, and limited per client address
(429 + Retry-After) without touching the path of authenticated devices."""

from __future__ import annotations

import datetime as dt
import secrets
import uuid
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi import FastAPI
from prometheus_client import REGISTRY
from sqlalchemy import text, update
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from corral.config import Settings
from corral.models import Device, EnrollmentToken
from tests.conftest import BASE_URL, Factory, audit_rows, count_rows, make_settings, running_app
from tests.devices.device import TestDevice
from tests.devices.test_enrollment_and_checkin import make_token

CHECKIN = "/device/v1/checkin"
ENROLL = "/device/v1/enroll"


def client_at(app: FastAPI, address: str) -> httpx.AsyncClient:
    """A client whose connection comes from ``address``."""
    return httpx.AsyncClient(
        transport=httpx.ASGITransport(app=app, client=(address, 50000)), base_url=BASE_URL
    )


def refusals_metric(endpoint: str, reason: str) -> float:
    return REGISTRY.get_sample_value("corral_refusals_total", {"endpoint": endpoint, "reason": reason}) or 0.0


def is_summary(event: Any) -> bool:
    return any(p["name"] == "refusals" for p in event.modified_properties)


def refused_count(event: Any) -> int:
    """The refusals an audit row stands for: 1, or the count a summary carries."""
    counts = [p["new"] for p in event.modified_properties if p["name"] == "refusals"]
    return int(counts[0]) if counts else 1


async def unsigned(client: httpx.AsyncClient, **headers: str) -> httpx.Response:
    return await client.post(CHECKIN, json={}, headers=headers)


async def audit_dump(sessionmaker: async_sessionmaker[AsyncSession]) -> str:
    async with sessionmaker() as session:
        return str(
            await session.scalar(text("SELECT string_agg(row_to_json(a)::text, '') FROM audit_events a"))
        )


# ------------------------------------------------------------------------------------------- aggregation
async def test_200_unsigned_requests_from_one_address_write_two_audit_rows_and_count_200(
    app: FastAPI, client: httpx.AsyncClient, sessionmaker: async_sessionmaker[AsyncSession]
) -> None:
    before = refusals_metric(CHECKIN, "unsigned")
    statuses = [(await unsigned(client)).status_code for _ in range(200)]
    assert set(statuses) <= {401, 429} and statuses[0] == 401
    # The first refusal at once; the others wait for the window's summary.
    [first] = await audit_rows(sessionmaker, activity="device.auth")
    assert refusals_metric(CHECKIN, "unsigned") - before == 200
    assert first.result == "failure" and first.ip_address == "203.0.113.7"
    assert first.detail == "/device/v1/checkin: the request is not signed"
    assert await app.state.refusals.flush() == 1
    events = await audit_rows(sessionmaker, activity="device.auth")
    assert len(events) == 2
    summary = events[1]
    assert refused_count(summary) == 199 and sum(refused_count(e) for e in events) == 200
    assert summary.detail.startswith("199 further refusals (/device/v1/checkin: the request is not signed)")
    assert "from 203.0.113.7 between" in summary.detail and summary.ip_address == "203.0.113.7"
    # A window with nothing new writes nothing; once the kind is forgotten, the next refusal is written again.
    assert await app.state.refusals.flush() == 0
    assert await app.state.refusals.flush() == 0
    assert len(app.state.refusals) == 0
    await unsigned(client)
    assert len(await audit_rows(sessionmaker, activity="device.auth")) == 3


async def test_summaries_still_pending_are_written_at_shutdown(
    tmp_path: Path, db_url: str, sessionmaker: async_sessionmaker[AsyncSession]
) -> None:
    async with running_app(make_settings(tmp_path, db_url), db_url) as app, client_at(app, "192.0.2.1") as c:
        for _ in range(5):
            assert (await unsigned(c)).status_code == 401
        assert len(await audit_rows(sessionmaker, activity="device.auth")) == 1
    events = await audit_rows(sessionmaker, activity="device.auth")
    assert [refused_count(e) for e in events] == [1, 4]


async def test_tracked_kinds_are_bounded_and_the_rest_is_aggregated_into_one_bucket(
    tmp_path: Path, db_url: str, sessionmaker: async_sessionmaker[AsyncSession]
) -> None:
    settings = make_settings(tmp_path, db_url, audit_refusal_max_keys=3)
    async with running_app(settings, db_url) as app:
        for i in range(1, 11):
            async with client_at(app, f"198.51.100.{i}") as c:
                assert (await unsigned(c)).status_code == 401
        # Three addresses tracked, everything else in the overflow bucket (written once, then counted).
        assert len(app.state.refusals) == 4
        events = await audit_rows(sessionmaker, activity="device.auth")
        assert [e.ip_address for e in events] == [
            "198.51.100.1",
            "198.51.100.2",
            "198.51.100.3",
            "198.51.100.4",
        ]
        await app.state.refusals.flush()
        summary = (await audit_rows(sessionmaker, activity="device.auth"))[-1]
        assert refused_count(summary) == 6 and "from clients beyond the 3 tracked" in summary.detail
        assert summary.ip_address is None


async def test_ipv6_clients_are_aggregated_and_limited_by_their_64() -> None:
    from corral.kit.rate_limit import client_key

    assert client_key("2001:db8:1:2:aaaa::1") == client_key("2001:db8:1:2:bbbb::2") == "2001:db8:1:2::/64"
    assert client_key("2001:db8:1:3::1") != client_key("2001:db8:1:2::1")
    assert client_key("203.0.113.7") == "203.0.113.7" and client_key("::ffff:203.0.113.7") == "203.0.113.7"
    assert client_key(None) == "unknown"


# ------------------------------------------------------------------------------------------- what rows say
async def test_no_request_text_reaches_the_audit_log(
    app: FastAPI,
    client: httpx.AsyncClient,
    factory: Factory,
    sessionmaker: async_sessionmaker[AsyncSession],
) -> None:
    marker = "ATTACKER" + secrets.token_hex(8)
    junk = (marker + "-") * 9  # ~225 characters of attacker text
    noisy = {"User-Agent": junk, "X-Request-ID": marker}
    # An unknown certificate named by a junk keyid, a malformed Signature-Input echoing junk, unsigned.
    signed_junk = {"Signature-Input": f'corral=("@method");keyid="{junk}"', "Signature": "corral=:AAAA:"}
    assert (await client.post(CHECKIN, json={}, headers={**noisy, **signed_junk})).status_code == 401
    broken = {"Signature-Input": f'corral=("@method";keyid="{junk}', "Signature": "corral=:AAAA:"}
    refused = await client.post(CHECKIN, json={}, headers={**noisy, **broken})
    assert refused.status_code == 401 and "malformed Signature-Input" in refused.json()["detail"]
    assert (await unsigned(client, **noisy)).status_code == 401
    # Enrollment with an unknown token full of junk, and a known but expired token with junk serial and name.
    body = TestDevice(client, serial=marker, name=junk).enroll_body("cet_" + junk[:190])
    assert (await client.post(ENROLL, json=body, headers=noisy)).status_code == 401
    admin = await factory.admin("Global administrator")
    token = await make_token(client, admin)
    async with sessionmaker() as session:
        await session.execute(update(EnrollmentToken).values(expires_at=dt.datetime.now(dt.UTC)))
        await session.commit()
    body = TestDevice(client, serial=marker, name=junk).enroll_body(token)
    assert (await client.post(ENROLL, json=body, headers=noisy)).status_code == 401
    assert marker.lower() not in (await audit_dump(sessionmaker)).lower()
    # Each again, so that summaries are written too.
    await client.post(CHECKIN, json={}, headers={**noisy, **signed_junk})
    await client.post(ENROLL, json=body, headers=noisy)
    await app.state.refusals.flush()

    events = await audit_rows(sessionmaker, result="failure")
    reasons = {(e.activity, e.detail) for e in events if not is_summary(e)}
    assert reasons == {
        ("device.auth", "/device/v1/checkin: unknown device certificate"),
        ("device.auth", "/device/v1/checkin: malformed Signature-Input"),
        ("device.auth", "/device/v1/checkin: the request is not signed"),
        ("device.enroll", "/device/v1/enroll: the enrollment token is not valid"),
        ("device.enroll", "/device/v1/enroll: the enrollment token has expired"),
    }
    assert len(events) == 7  # five kinds, two of which repeated: two summaries
    dump = await audit_dump(sessionmaker)
    assert marker not in dump and marker.lower() not in dump.lower()


async def test_refusals_for_a_known_device_keep_its_id_and_are_aggregated_per_device(
    app: FastAPI, client: httpx.AsyncClient, factory: Factory, sessionmaker: async_sessionmaker[AsyncSession]
) -> None:
    admin = await factory.admin("Global administrator")
    device = TestDevice(client)
    assert (await device.enroll(await make_token(client, admin))).status_code == 201
    device_id = str(device.device_id)
    # Someone replays one captured request over and over.
    body = b"{}"
    headers = device.signed_headers("POST", CHECKIN, body)
    assert (await client.post(CHECKIN, content=body, headers=headers)).status_code == 200
    for _ in range(20):
        replay = await client.post(CHECKIN, content=body, headers=headers)
        assert replay.status_code == 401 and "replayed" in replay.json()["detail"]
    [event] = await audit_rows(sessionmaker, activity="device.auth")
    assert event.target_type == "device" and event.target_id == device_id
    assert event.actor_id == uuid.UUID(device_id) and event.target_name == device.name
    assert event.detail == "/device/v1/checkin: replayed request (nonce already used)"
    # From another address the replays are still the same kind: one summary for the device.
    async with client_at(app, "192.0.2.77") as elsewhere:
        assert (await elsewhere.post(CHECKIN, content=body, headers=headers)).status_code == 401
    await app.state.refusals.flush()
    events = await audit_rows(sessionmaker, activity="device.auth")
    assert len(events) == 2 and events[1].target_id == device_id
    assert refused_count(events[1]) == 20 and "from several addresses" in events[1].detail
    assert events[1].ip_address is None
    # A retired device's refusals keep its id too, as another kind.
    async with sessionmaker() as session:
        await session.execute(
            update(Device).where(Device.id == uuid.UUID(device_id)).values(management_state="retired")
        )
        await session.commit()
    assert (await device.checkin({})).status_code == 401
    retired = (await audit_rows(sessionmaker, activity="device.auth"))[-1]
    assert retired.target_id == device_id and retired.detail == "/device/v1/checkin: the device is retired"


async def test_refusals_of_a_known_enrollment_token_keep_the_token_and_are_aggregated(
    app: FastAPI, client: httpx.AsyncClient, factory: Factory, sessionmaker: async_sessionmaker[AsyncSession]
) -> None:
    admin = await factory.admin("Global administrator")
    secret = await make_token(client, admin, name="Kiosks")
    async with sessionmaker() as session:
        await session.execute(update(EnrollmentToken).values(revoked_at=dt.datetime.now(dt.UTC)))
        await session.commit()
    serials = [f"SN-{i}-{secrets.token_hex(3)}" for i in range(5)]
    for serial in serials:
        refused = await TestDevice(client, serial=serial).enroll(secret)
        assert refused.status_code == 401 and "revoked" in refused.json()["detail"]
    [event] = await audit_rows(sessionmaker, activity="device.enroll")
    token_id = event.target_id
    assert event.target_type == "enrollment_token" and event.target_name == "Kiosks"
    assert event.actor_name.startswith("enrollment token cet_")
    assert event.detail == "/device/v1/enroll: the enrollment token was revoked"
    uses = (await client.get(f"/api/v1/enrollment-tokens/{token_id}/uses", headers=admin.headers)).json()
    assert [(u["result"], u["serial_number"]) for u in uses] == [("refused", serials[0])]
    await app.state.refusals.flush()
    events = await audit_rows(sessionmaker, activity="device.enroll")
    assert len(events) == 2 and events[1].target_id == token_id and refused_count(events[1]) == 4
    uses = (await client.get(f"/api/v1/enrollment-tokens/{token_id}/uses", headers=admin.headers)).json()
    assert len(uses) == 2 and any("4 further refusals" in (u["detail"] or "") for u in uses)
    dump = await audit_dump(sessionmaker)
    assert not any(serial in dump for serial in serials)


async def test_a_summary_is_written_even_when_its_token_was_deleted_meanwhile(
    app: FastAPI, client: httpx.AsyncClient, factory: Factory, sessionmaker: async_sessionmaker[AsyncSession]
) -> None:
    admin = await factory.admin("Global administrator")
    secret = await make_token(client, admin, platforms=["ios"])
    for _ in range(3):
        assert (await TestDevice(client, platform="linux").enroll(secret)).status_code == 403
    assert (await unsigned(client)).status_code == 401
    assert (await unsigned(client)).status_code == 401
    async with sessionmaker() as session:
        await session.execute(text("DELETE FROM enrollment_tokens"))
        await session.commit()
    assert await app.state.refusals.flush() == 2
    summaries = [e for e in await audit_rows(sessionmaker, result="failure") if is_summary(e)]
    assert sorted((e.activity, refused_count(e)) for e in summaries) == [
        ("device.auth", 1),
        ("device.enroll", 2),
    ]
    assert await count_rows(sessionmaker, "enrollment_token_uses") == 0


# ------------------------------------------------------------------------------------------- rate limits
@pytest.fixture
def limited(tmp_path: Path, db_url: str) -> Settings:
    return make_settings(
        tmp_path,
        db_url,
        device_auth_refusal_limit="5/hour",
        device_enroll_refusal_limit="3/hour",
        trusted_proxies=["192.0.2.10/32"],
    )


async def refuse_until_429(send: Any, limit: int) -> httpx.Response:
    """Send refused requests until one is answered 429 (a sliding window may allow a little more)."""
    for attempt in range(limit + 3):
        response: httpx.Response = await send()
        if response.status_code == 429:
            assert attempt >= limit, f"limited after {attempt} refusals, before the limit of {limit}"
            return response
        assert response.status_code in (401, 403), response.text
    raise AssertionError(f"no 429 after {limit + 3} refused requests")


def retry_after(response: httpx.Response) -> int:
    value = int(response.headers["Retry-After"])
    assert 1 <= value <= 3600
    return value


async def test_refused_device_authentications_past_the_limit_get_429_but_devices_keep_checking_in(
    limited: Settings, db_url: str, factory: Factory, sessionmaker: async_sessionmaker[AsyncSession]
) -> None:
    async with running_app(limited, db_url) as app, client_at(app, "203.0.113.7") as client:
        admin = await factory.admin("Global administrator")
        device = TestDevice(client)
        assert (await device.enroll(await make_token(client, admin))).status_code == 201
        limited_response = await refuse_until_429(lambda: unsigned(client), 5)
        retry_after(limited_response)
        assert limited_response.headers["content-type"].startswith("application/problem+json")
        assert "Too many refused requests" in limited_response.json()["detail"]
        # A device at the same address is never held back: authenticated requests are not counted.
        for _ in range(3):
            assert (await device.checkin({})).status_code == 200
        # Another client is unaffected.
        async with client_at(app, "198.51.100.20") as other:
            assert (await unsigned(other)).status_code == 401
    assert len(await audit_rows(sessionmaker, activity="device.auth", result="failure")) <= 4


async def test_enrollment_refusals_past_the_limit_get_429_and_another_client_is_unaffected(
    limited: Settings, db_url: str, factory: Factory, sessionmaker: async_sessionmaker[AsyncSession]
) -> None:
    async with running_app(limited, db_url) as app, client_at(app, "203.0.113.7") as client:
        admin = await factory.admin("Global administrator")
        secret = await make_token(client, admin)
        before = refusals_metric(ENROLL, "rate_limited")
        response = await refuse_until_429(lambda: TestDevice(client).enroll("cet_not-a-real-token"), 3)
        retry_after(response)
        assert "Too many refused enrollments" in response.json()["detail"]
        # The address is refused before its token is even looked at: a valid one waits too.
        assert (await TestDevice(client).enroll(secret)).status_code == 429
        assert refusals_metric(ENROLL, "rate_limited") - before == 2
        assert await count_rows(sessionmaker, "devices") == 0
        async with client_at(app, "198.51.100.30") as other:
            assert (await TestDevice(other).enroll(secret)).status_code == 201
            assert (await TestDevice(other).enroll("cet_not-a-real-token")).status_code == 401
        # Successful enrollments never count: a storm of them from one address goes through.
        async with client_at(app, "198.51.100.31") as storm:
            for _ in range(6):
                assert (await TestDevice(storm).enroll(secret)).status_code == 201
        events = await audit_rows(sessionmaker, activity="device.enroll", result="failure")
        assert sorted(e.detail for e in events) == [
            "/device/v1/enroll: the enrollment token is not valid",
            "/device/v1/enroll: the enrollment token is not valid",
            "/device/v1/enroll: too many refused enrollments from this address",
        ]
        assert {e.ip_address for e in events} == {"203.0.113.7", "198.51.100.30"}


async def test_forwarded_addresses_are_believed_only_from_trusted_proxies(
    limited: Settings, db_url: str, sessionmaker: async_sessionmaker[AsyncSession]
) -> None:
    def forwarded(client: httpx.AsyncClient, address: str) -> Any:
        return lambda: client.post(CHECKIN, json={}, headers={"X-Forwarded-For": address})

    async with running_app(limited, db_url) as app:
        async with client_at(app, "192.0.2.10") as proxy:
            await refuse_until_429(forwarded(proxy, "198.51.100.1"), 5)
            # Through the proxy, another client has its own count.
            assert (await forwarded(proxy, "198.51.100.2")()).status_code == 401
        async with client_at(app, "203.0.113.99") as untrusted:
            # From an untrusted peer the header is ignored: changing it does not escape the limit.
            counter = iter(range(1, 100))
            await refuse_until_429(lambda: forwarded(untrusted, f"198.51.100.{100 + next(counter)}")(), 5)
    addresses = {e.ip_address for e in await audit_rows(sessionmaker, activity="device.auth")}
    assert addresses == {"198.51.100.1", "198.51.100.2", "203.0.113.99"}


def test_rate_limits_are_checked_settings(tmp_path: Path) -> None:
    from pydantic import ValidationError

    with pytest.raises(ValidationError, match="rate limit"):
        make_settings(tmp_path, "postgresql://x/y", device_enroll_refusal_limit="many")
    with pytest.raises(ValidationError, match="one limit"):
        make_settings(tmp_path, "postgresql://x/y", device_auth_refusal_limit="1/second;5/minute")
    assert make_settings(tmp_path, "postgresql://x/y", device_auth_refusal_limit="100 per 10 minutes")


# ------------------------------------------------------------------------------------------- over real HTTP
async def test_a_flood_over_real_http_writes_a_bounded_number_of_audit_rows(
    tmp_path: Path, db_url: str, sessionmaker: async_sessionmaker[AsyncSession]
) -> None:
    import asyncio

    from tests.live import start_live_server

    before = refusals_metric(CHECKIN, "unsigned")
    live = start_live_server(tmp_path, db_url, device_enroll_refusal_limit="10/hour")
    try:
        async with httpx.AsyncClient(base_url=live.url, timeout=30) as client:
            gate = asyncio.Semaphore(20)

            async def one() -> int:
                async with gate:
                    return (await client.post(CHECKIN, json={}, headers={"User-Agent": "flood"})).status_code

            statuses = await asyncio.gather(*(one() for _ in range(200)))
            assert set(statuses) <= {401, 429} and statuses.count(401) >= 60
            limited = await refuse_until_429(lambda: TestDevice(client).enroll("cet_not-a-real-token"), 10)
            retry_after(limited)
    finally:
        live.stop()  # the summaries are written at shutdown
    assert refusals_metric(CHECKIN, "unsigned") - before == 200
    events = await audit_rows(sessionmaker, activity="device.auth")
    assert [refused_count(e) for e in events] == [1, 199]
    assert all(e.ip_address == "127.0.0.1" and e.user_agent is None for e in events)
    enrollments = await audit_rows(sessionmaker, activity="device.enroll")
    assert sum(refused_count(e) for e in enrollments) >= 11 and len(enrollments) <= 4
