"""RFC 9421 request signatures exactly as device-protocol.md §3 says, checked with the library's verifier."""

from __future__ import annotations

import base64
import hashlib
import time
from datetime import timedelta

import httpx
import pytest
from corral_agent import keys
from corral_agent.transport import Clock, RequestSigner, new_nonce
from http_message_signatures import HTTPMessageVerifier, InvalidSignature, MappingKeyResolver, algorithms

KEYID = "e3b0c442" + "0" * 56


@pytest.fixture
def key():  # type: ignore[no-untyped-def]
    return keys.generate_private_key()


def verifier(public_key: object) -> HTTPMessageVerifier:
    return HTTPMessageVerifier(
        signature_algorithm=algorithms.ECDSA_P256_SHA256,
        key_resolver=MappingKeyResolver(public_keys={KEYID: public_key}, private_keys={}),  # type: ignore[dict-item]
    )


def signed_post(signer: RequestSigner, body: bytes = b'{"a":1}') -> httpx.Request:
    request = httpx.Request(
        "POST",
        "https://corral.example.com/device/v1/checkin",
        content=body,
        headers={"Content-Type": "application/json"},
    )
    signer.sign(request)
    return request


def test_signature_headers_have_the_protocol_parameters(key) -> None:  # type: ignore[no-untyped-def]
    request = signed_post(RequestSigner(key, KEYID))
    body_digest = base64.b64encode(hashlib.sha256(b'{"a":1}').digest()).decode()
    assert request.headers["Content-Digest"] == f"sha-256=:{body_digest}:"
    signature_input = request.headers["Signature-Input"]
    assert signature_input.startswith('corral=("@method" "@target-uri" "content-digest");')
    for part in (f'keyid="{KEYID}"', 'alg="ecdsa-p256-sha256"', 'tag="corral-device"', "nonce=", "created="):
        assert part in signature_input
    assert request.headers["Signature"].startswith("corral=:")


def test_the_library_verifier_accepts_the_signature(key) -> None:  # type: ignore[no-untyped-def]
    request = signed_post(RequestSigner(key, KEYID))
    results = verifier(key.public_key()).verify(
        request,
        body=request.content,
        max_age=timedelta(minutes=5),
        expect_tag="corral-device",
        require_components=("@method", "@target-uri", "content-digest"),
    )
    assert results[0].label == "corral"
    assert results[0].parameters["keyid"] == KEYID
    assert abs(int(results[0].parameters["created"]) - time.time()) < 5
    nonce = str(results[0].nonce)
    assert len(base64.urlsafe_b64decode(nonce + "=" * (-len(nonce) % 4))) == 16


def test_a_changed_body_fails_verification(key) -> None:  # type: ignore[no-untyped-def]
    request = signed_post(RequestSigner(key, KEYID))
    tampered = httpx.Request("POST", request.url, headers=request.headers, content=b'{"a":2}')
    with pytest.raises(InvalidSignature):
        verifier(key.public_key()).verify(tampered, body=tampered.content, max_age=timedelta(minutes=5))


def test_another_url_or_method_or_key_fails_verification(key) -> None:  # type: ignore[no-untyped-def]
    request = signed_post(RequestSigner(key, KEYID))
    elsewhere = httpx.Request("POST", "https://corral.example.com/device/v1/renew", headers=request.headers)
    with pytest.raises(InvalidSignature):
        verifier(key.public_key()).verify(elsewhere, max_age=timedelta(minutes=5))
    with pytest.raises(InvalidSignature):
        verifier(keys.generate_private_key().public_key()).verify(
            request, body=request.content, max_age=timedelta(minutes=5)
        )


def test_nonce_differs_per_request(key) -> None:  # type: ignore[no-untyped-def]
    signer = RequestSigner(key, KEYID)
    inputs = {signed_post(signer).headers["Signature-Input"] for _ in range(20)}
    assert len(inputs) == 20
    assert len({new_nonce() for _ in range(100)}) == 100


def test_get_without_body_covers_no_digest(key) -> None:  # type: ignore[no-untyped-def]
    request = httpx.Request("GET", "https://corral.example.com/device/v1/events")
    RequestSigner(key, KEYID).sign(request)
    assert "content-digest" not in request.headers
    assert request.headers["Signature-Input"].startswith('corral=("@method" "@target-uri");')
    verifier(key.public_key()).verify(
        request, max_age=timedelta(minutes=5), require_components=("@target-uri",)
    )


def test_signing_again_replaces_the_previous_signature(key) -> None:  # type: ignore[no-untyped-def]
    signer = RequestSigner(key, KEYID)
    request = signed_post(signer)
    first = request.headers["Signature"]
    signer.sign(request)  # a retry
    assert request.headers["Signature"] != first
    assert len(request.headers.get_list("Signature")) == 1
    verifier(key.public_key()).verify(request, body=request.content, max_age=timedelta(minutes=5))


def test_created_is_corrected_by_the_clock_skew(key) -> None:  # type: ignore[no-untyped-def]
    clock = Clock()
    assert clock.observe("Thu, 01 Jan 2099 00:00:00 GMT")
    assert clock.skew > 365 * 86400
    request = signed_post(RequestSigner(key, KEYID, clock))
    created = int(request.headers["Signature-Input"].split("created=")[1].split(";")[0])
    assert created == pytest.approx(time.time() + clock.skew, abs=3)


def test_clock_ignores_small_differences_and_garbage() -> None:
    changes: list[float] = []
    clock = Clock(on_change=changes.append, time_source=lambda: 1_000_000.0)
    assert not clock.observe("not a date")
    assert not clock.observe(None)
    assert not clock.observe_server_time("1970-01-12T13:46:41Z")  # 1 s off: ignored
    assert clock.observe_server_time("1970-01-12T13:56:40Z")  # 600 s ahead
    assert changes == [600.0]
    assert clock.now() == 1_000_600.0
