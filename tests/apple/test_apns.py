"""Corral's APNs client against a stand-in APNs (tests/peers/apns_standin.py): real TLS with the push
certificate as client certificate, HTTP/2 on loopback, and Apple's answers classified."""

from __future__ import annotations

import asyncio
import datetime as dt
import os
import secrets
import ssl
import tempfile
import time
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.x509.oid import NameOID

from corral.apple.apns import ApnsClient, Outcome, transport_failure
from corral.pki import certs
from tests.apple.support import apple_ca_pem, apple_issues, new_topic
from tests.peers.apns_standin import ApnsStandin


def push_certificate(topic: str) -> tuple[bytes, bytes]:
    """As Corral gets one: its own key and CSR, the certificate "signed at Apple"; (certificate, key) PEM."""
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    csr = (
        x509.CertificateSigningRequestBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "Corral MDM push")]))
        .sign(key, hashes.SHA256())
    )
    certificate = apple_issues(csr.public_bytes(serialization.Encoding.PEM).decode(), topic)
    return certificate.encode(), certs.key_pem(key)


def self_signed(topic: str) -> tuple[bytes, bytes]:
    """A push certificate look-alike Apple did not issue."""
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    name = x509.Name([x509.NameAttribute(NameOID.USER_ID, topic)])
    now = dt.datetime.now(dt.UTC)
    certificate = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(days=1))
        .not_valid_after(now + dt.timedelta(days=30))
        .sign(key, hashes.SHA256())
    )
    return certs.cert_pem(certificate), certs.key_pem(key)


TOPIC = new_topic()
CERTIFICATE, KEY = push_certificate(TOPIC)


def token() -> bytes:
    return secrets.token_bytes(32)


@pytest.fixture
async def apns(tmp_path: Path) -> AsyncIterator[ApnsStandin]:
    async with ApnsStandin(apple_ca_pem(), tmp_path / "apns") as standin:
        yield standin


@pytest.fixture
async def client(apns: ApnsStandin) -> AsyncIterator[ApnsClient]:
    async with ApnsClient(CERTIFICATE, KEY, base_url=apns.url, ca_file=apns.ca_file) as client:
        yield client


async def test_a_push_reaches_apns_over_http2_with_the_certificates_topic(
    apns: ApnsStandin, client: ApnsClient
) -> None:
    device, magic = token(), str(uuid.uuid4())
    result = await client.push(device, TOPIC, magic)
    assert result.outcome is Outcome.sent and result.status == 200 and result.reason is None
    assert result.apns_id
    [push] = await apns.wait_for(1)
    assert (push.token, push.topic, push.magic, push.http_version) == (device.hex(), TOPIC, magic, "2")


async def test_the_device_callback_runs_when_pushed(apns: ApnsStandin, client: ApnsClient) -> None:
    device, woken = token(), []

    async def wake(magic: str) -> None:
        woken.append(magic)

    apns.on_push[device.hex()] = wake
    assert (await client.push(device, TOPIC, "magic")).outcome is Outcome.sent
    async with asyncio.timeout(5):
        while not woken:
            await asyncio.sleep(0.01)
    assert woken == ["magic"]


@pytest.mark.parametrize(
    ("answer", "status", "reason", "outcome"),
    [
        (410, 410, "Unregistered", Outcome.unreachable),
        ((400, "BadDeviceToken"), 400, "BadDeviceToken", Outcome.unreachable),
        ((400, "DeviceTokenNotForTopic"), 400, "DeviceTokenNotForTopic", Outcome.unreachable),
        (429, 429, "TooManyRequests", Outcome.retry),
        (500, 500, "InternalServerError", Outcome.retry),
        (503, 503, "ServiceUnavailable", Outcome.retry),
        ((403, "BadCertificate"), 403, "BadCertificate", Outcome.certificate),
        ((400, "BadExpirationDate"), 400, "BadExpirationDate", Outcome.failed),
    ],
)
async def test_apples_refusals_are_classified(
    apns: ApnsStandin, client: ApnsClient, answer: Any, status: int, reason: str, outcome: Outcome
) -> None:
    device = token()
    apns.script(device.hex(), [answer])
    result = await client.push(device, TOPIC, "magic")
    assert (result.status, result.reason, result.outcome) == (status, reason, outcome)
    assert result.apns_id
    # The script is spent: the next push goes through.
    assert (await client.push(device, TOPIC, "magic")).outcome is Outcome.sent


async def test_scripted_answers_come_in_order_then_pushes_go_through(
    apns: ApnsStandin, client: ApnsClient
) -> None:
    device = token()
    apns.script(device.hex(), [429, 500, 410])
    outcomes = [(await client.push(device, TOPIC, "m")).outcome for _ in range(4)]
    assert outcomes == [Outcome.retry, Outcome.retry, Outcome.unreachable, Outcome.sent]
    assert [refusal.status for refusal in apns.refusals] == [429, 500, 410]


async def test_a_topic_the_certificate_is_not_for_is_refused(apns: ApnsStandin, client: ApnsClient) -> None:
    result = await client.push(token(), new_topic(), "magic")
    assert (result.status, result.reason, result.outcome) == (400, "TopicDisallowed", Outcome.certificate)
    assert apns.pushes == []


async def test_a_certificate_apple_did_not_issue_is_refused_at_the_handshake(
    apns: ApnsStandin,
) -> None:
    """The stand-in refuses the handshake by closing the connection (no alert reaches the client), which the
    client cannot tell from a network failure: a retry, the cause in the reason, nothing delivered."""
    certificate, key = self_signed(TOPIC)
    async with ApnsClient(certificate, key, base_url=apns.url, ca_file=apns.ca_file) as client:
        result = await client.push(token(), TOPIC, "magic")
    assert (result.status, result.outcome, result.apns_id) == (0, Outcome.retry, None)
    assert result.reason is not None and result.reason.startswith("transport: "), result.reason
    assert apns.pushes == []


def test_a_tls_alert_refusing_the_certificate_is_a_certificate_problem() -> None:
    """What a server that does send its alert (expired, revoked, unknown issuer) makes the client raise."""
    alert = ssl.SSLError(1, "[SSL: SSLV3_ALERT_CERTIFICATE_EXPIRED] sslv3 alert certificate expired")
    alert.reason = "SSLV3_ALERT_CERTIFICATE_EXPIRED"
    try:
        raise httpx.ReadError("") from alert
    except httpx.ReadError as exc:
        result = transport_failure(exc)
    assert (result.status, result.outcome) == (0, Outcome.certificate)
    assert result.reason == f"transport: ReadError: SSLError: {alert}"
    # Our own refusal of the server's certificate is not the push certificate's fault.
    ours = ssl.SSLCertVerificationError(1, "[SSL: CERTIFICATE_VERIFY_FAILED] certificate verify failed")
    ours.reason = "CERTIFICATE_VERIFY_FAILED"
    try:
        raise httpx.ConnectError("") from ours
    except httpx.ConnectError as exc:
        assert transport_failure(exc).outcome is Outcome.retry


async def test_a_slow_apns_is_a_retry(apns: ApnsStandin) -> None:
    device = token()
    apns.script(device.hex(), [], delay=2)
    async with ApnsClient(CERTIFICATE, KEY, base_url=apns.url, ca_file=apns.ca_file, timeout=0.5) as client:
        result = await client.push(device, TOPIC, "magic")
    assert result.outcome is Outcome.retry and result.status == 0
    assert result.reason is not None and result.reason.startswith("transport: ReadTimeout")


async def test_a_connection_apns_closed_while_idle_is_opened_again(tmp_path: Path) -> None:
    async with (
        ApnsStandin(apple_ca_pem(), tmp_path / "apns", idle_timeout=0.2) as apns,
        ApnsClient(CERTIFICATE, KEY, base_url=apns.url, ca_file=apns.ca_file) as client,
    ):
        assert (await client.push(token(), TOPIC, "first")).outcome is Outcome.sent
        await asyncio.sleep(0.6)
        assert (await client.push(token(), TOPIC, "second")).outcome is Outcome.sent
        first, second = await apns.wait_for(2)
        assert first.connection != second.connection


async def test_hundreds_of_devices_are_pushed_at_once(apns: ApnsStandin, client: ApnsClient) -> None:
    """More pushes than the stand-in's 100 concurrent streams, over one connection (bench/apple_push_fanout.py
    measures 10,000)."""
    devices = {n: token() for n in range(300)}
    started = time.perf_counter()
    results = await client.push_many([(n, device, TOPIC, f"magic-{n}") for n, device in devices.items()])
    took = time.perf_counter() - started
    print(f"300 pushes in {took:.2f} s")
    assert {n: result.outcome for n, result in results.items()} == dict.fromkeys(devices, Outcome.sent)
    pushes = await apns.wait_for(300)
    assert sorted(push.token for push in pushes) == sorted(device.hex() for device in devices.values())
    assert {push.magic for push in pushes} == {f"magic-{n}" for n in devices}
    assert len({push.connection for push in pushes}) == 1  # multiplexed over one connection


async def test_the_key_file_is_encrypted_private_and_gone_once_loaded(
    apns: ApnsStandin, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    directory = tmp_path / "tmp"
    directory.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(directory))
    seen: list[tuple[int, bytes]] = []
    load_cert_chain = ssl.SSLContext.load_cert_chain

    def spy(self: ssl.SSLContext, certfile: str, *args: Any, **kwargs: Any) -> None:
        seen.append((os.stat(certfile).st_mode & 0o777, Path(certfile).read_bytes()))
        assert Path(certfile).parent == directory
        load_cert_chain(self, certfile, *args, **kwargs)

    monkeypatch.setattr(ssl.SSLContext, "load_cert_chain", spy)
    async with ApnsClient(CERTIFICATE, KEY, base_url=apns.url, ca_file=apns.ca_file) as client:
        assert list(directory.iterdir()) == []
        [(mode, written)] = seen
        assert mode == 0o600
        assert b"-----BEGIN ENCRYPTED PRIVATE KEY-----" in written and KEY not in written
        assert (await client.push(token(), TOPIC, "magic")).outcome is Outcome.sent


GOOD = {"apns-topic": TOPIC, "apns-push-type": "mdm"}


@pytest.mark.parametrize(
    ("method", "path", "headers", "body", "status", "reason"),
    [
        ("GET", "/3/device/{token}", GOOD, b"", 405, "MethodNotAllowed"),
        ("POST", "/3/devices/{token}", GOOD, b'{"mdm":"m"}', 404, "BadPath"),
        ("POST", "/3/device/", GOOD, b'{"mdm":"m"}', 400, "MissingDeviceToken"),
        ("POST", "/3/device/not-hex", GOOD, b'{"mdm":"m"}', 400, "BadDeviceToken"),
        ("POST", "/3/device/{token}", {"apns-push-type": "mdm"}, b'{"mdm":"m"}', 400, "MissingTopic"),
        (
            "POST",
            "/3/device/{token}",
            {**GOOD, "apns-push-type": "alert"},
            b'{"mdm":"m"}',
            400,
            "InvalidPushType",
        ),
        ("POST", "/3/device/{token}", {"apns-topic": TOPIC}, b'{"mdm":"m"}', 400, "InvalidPushType"),
        ("POST", "/3/device/{token}", {**GOOD, "apns-priority": "7"}, b'{"mdm":"m"}', 400, "BadPriority"),
        ("POST", "/3/device/{token}", GOOD, b"", 400, "PayloadEmpty"),
        ("POST", "/3/device/{token}", GOOD, b'{"aps":{}}', 400, "BadPayload"),
        ("POST", "/3/device/{token}", GOOD, b'{"mdm":"m","aps":{}}', 400, "BadPayload"),
        ("POST", "/3/device/{token}", GOOD, b'{"mdm":1}', 400, "BadPayload"),
        ("POST", "/3/device/{token}", GOOD, b"x" * 5000, 413, "PayloadTooLarge"),
    ],
)
async def test_the_standin_refuses_what_apns_refuses(
    apns: ApnsStandin,
    tmp_path: Path,
    method: str,
    path: str,
    headers: dict[str, str],
    body: bytes,
    status: int,
    reason: str,
) -> None:
    """The stand-in is what proves the client right: it must be as strict as APNs."""
    context = ssl.create_default_context(cafile=apns.ca_file)
    pem = tmp_path / "push.pem"
    pem.write_bytes(CERTIFICATE + KEY)
    context.load_cert_chain(pem)
    async with httpx.AsyncClient(base_url=apns.url, verify=context, http1=False, http2=True) as http:
        response = await http.request(method, path.format(token=token().hex()), headers=headers, content=body)
    assert (response.status_code, response.json()) == (status, {"reason": reason})
    assert response.headers["apns-id"] and apns.pushes == []


async def test_the_standin_speaks_only_http2(apns: ApnsStandin, tmp_path: Path) -> None:
    context = ssl.create_default_context(cafile=apns.ca_file)
    pem = tmp_path / "push.pem"
    pem.write_bytes(CERTIFICATE + KEY)
    context.load_cert_chain(pem)
    async with httpx.AsyncClient(base_url=apns.url, verify=context) as http:  # HTTP/1.1 only
        response = await http.post(f"/3/device/{token().hex()}", headers=GOOD, content=b'{"mdm":"m"}')
    assert response.status_code == 505 and apns.pushes == []
