"""The device signature's verifier (corral/checkin/signature.py) against the general-purpose library it
replaced on the request path: the same verdict on valid, tampered and malformed requests, except where the
device protocol is narrower (components other than its three are refused)."""

from __future__ import annotations

import base64
import datetime as dt
import hashlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import httpx
import pytest
from cryptography.hazmat.primitives.asymmetric import ec
from http_message_signatures import (
    HTTPMessageSigner,
    HTTPMessageVerifier,
    HTTPSignatureKeyResolver,
    algorithms,
)
from http_message_signatures.exceptions import HTTPMessageSignaturesException

from corral.checkin import signature

KEY = ec.generate_private_key(ec.SECP256R1())
OTHER_KEY = ec.generate_private_key(ec.SECP256R1())
KEY_ID = "ab" * 32
URL = "https://corral.example/device/v1/checkin"
BODY = b'{"inventory_hash": null}'
MAX_AGE, SKEW = dt.timedelta(seconds=300), dt.timedelta(seconds=60)
NONCE = "n" * 22


class _Keys(HTTPSignatureKeyResolver):
    def resolve_private_key(self, key_id: str) -> Any:
        return KEY

    def resolve_public_key(self, key_id: str) -> Any:
        return KEY.public_key() if key_id == KEY_ID else None


class _Verifier(HTTPMessageVerifier):
    max_clock_skew = SKEW


@dataclass
class Message:
    method: str
    url: str
    headers: httpx.Headers


def signed(
    method: str = "POST",
    body: bytes = BODY,
    *,
    key: ec.EllipticCurvePrivateKey = KEY,
    components: tuple[str, ...] | None = None,
    **sign: Any,
) -> tuple[Message, bytes]:
    headers = httpx.Headers({"content-type": "application/json"} if body else {})
    message = Message(method, URL, headers)
    keys = _Keys()
    keys.resolve_private_key = lambda key_id: key  # type: ignore[method-assign]
    options: dict[str, Any] = {
        "key_id": KEY_ID,
        "label": "corral",
        "tag": "corral-device",
        "nonce": NONCE,
        "created": dt.datetime.now(dt.UTC),
    }
    options.update(sign)
    HTTPMessageSigner(signature_algorithm=algorithms.ECDSA_P256_SHA256, key_resolver=keys).sign(
        message,
        covered_component_ids=components
        or (("@method", "@target-uri") + (("content-digest",) if body else ())),
        body=body or None,
        **options,
    )
    return message, body


def library_accepts(message: Message, body: bytes) -> bool:
    required = ("@method", "@target-uri", "content-digest") if body else ("@method", "@target-uri")
    try:
        _Verifier(signature_algorithm=algorithms.ECDSA_P256_SHA256, key_resolver=_Keys()).verify(
            message,
            max_age=MAX_AGE,
            expect_tag="corral-device",
            expect_label="corral",
            require_components=required,
            body=body,
        )
    except HTTPMessageSignaturesException:
        return False
    return True


def field(headers: httpx.Headers, name: str) -> str | None:
    lines = headers.get_list(name)
    return ", ".join(line.strip(" \t") for line in lines) if lines else None


def corral_accepts(message: Message, body: bytes) -> bool:
    try:
        parsed = signature.parse_signature_input(field(message.headers, "signature-input") or "")
        if parsed.key_id != KEY_ID:
            return False  # (the lookup finds no certificate)
        signature.verify(
            parsed,
            field(message.headers, "signature") or "",
            key=KEY.public_key(),
            method=message.method,
            target_uri=message.url,
            content_digest=field(message.headers, "content-digest"),
            body=body,
            now=dt.datetime.now(dt.UTC),
            max_age=MAX_AGE,
            clock_skew=SKEW,
        )
    except ValueError:  # SignatureError included
        return False
    return True


def edit(name: str, change: Callable[[str], str]) -> Callable[[Message, bytes], tuple[Message, bytes]]:
    def apply(message: Message, body: bytes) -> tuple[Message, bytes]:
        message.headers[name] = change(message.headers[name])
        return message, body

    return apply


def digest(algorithm: str, data: bytes) -> str:
    return (
        f"{algorithm}=:{base64.b64encode(hashlib.new(algorithm.replace('-', ''), data).digest()).decode()}:"
    )


Case = tuple[Callable[[], tuple[Message, bytes]], Callable[[Message, bytes], tuple[Message, bytes]] | None]


def _now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


CASES: dict[str, Case] = {
    "valid": (lambda: signed(), None),
    "valid, no body": (lambda: signed("GET", b""), None),
    "valid, created 30 s ahead (within the skew)": (
        lambda: signed(created=_now() + dt.timedelta(seconds=30)),
        None,
    ),
    "valid, created 5 min ago": (lambda: signed(created=_now() - dt.timedelta(seconds=290)), None),
    "valid, with expires": (lambda: signed(expires=_now() + dt.timedelta(minutes=5)), None),
    "valid, without alg": (lambda: signed(include_alg=False), None),
    "valid, components in another order": (
        lambda: signed(components=("content-digest", "@target-uri", "@method")),
        None,
    ),
    "other key": (lambda: signed(key=OTHER_KEY), None),
    "other body": (lambda: signed(), lambda m, b: (m, b + b" ")),
    "other method": (lambda: signed(), lambda m, b: (Message("PUT", m.url, m.headers), b)),
    "other target": (lambda: signed(), lambda m, b: (Message(m.method, URL + "?x=1", m.headers), b)),
    "body added to a signed GET": (lambda: signed("GET", b""), lambda m, b: (m, BODY)),
    # (The library's signer adds content-digest to what it covers whenever it is given a body.)
    "valid, content-digest added by the signer": (
        lambda: signed(components=("@method", "@target-uri")),
        None,
    ),
    "no @target-uri": (lambda: signed(components=("@method", "content-digest")), None),
    "created in the future": (lambda: signed(created=_now() + dt.timedelta(minutes=5)), None),
    "stale": (lambda: signed(created=_now() - dt.timedelta(minutes=10)), None),
    "expired": (lambda: signed(expires=_now() - dt.timedelta(minutes=5)), None),
    "other tag": (lambda: signed(tag="something-else"), None),
    "other label": (lambda: signed(label="other"), None),
    "valid, without a nonce (the nonce is checked afterwards)": (lambda: signed(nonce=None), None),
    "no created": (lambda: signed(), edit("signature-input", lambda v: _drop_created(v))),
    "content-digest edited": (
        lambda: signed(),
        edit("content-digest", lambda v: digest("sha-256", b"other")),
    ),
    "content-digest sha-512 instead": (
        lambda: signed(),
        edit("content-digest", lambda v: digest("sha-512", BODY)),
    ),
    "content-digest with an unknown algorithm too": (
        lambda: signed(),
        edit("content-digest", lambda v: v + ", md5=:AA==:"),
    ),
    "content-digest twice": (lambda: signed(), edit("content-digest", lambda v: v + ", " + v)),
    "signature truncated": (lambda: signed(), edit("signature", lambda v: v[:-8] + ":")),
    "signature not a byte sequence": (lambda: signed(), edit("signature", lambda v: 'corral="abc"')),
    "signature label differs": (
        lambda: signed(),
        edit("signature", lambda v: v.replace("corral=", "other=")),
    ),
    "signature header malformed": (lambda: signed(), edit("signature", lambda v: v + ",,")),
    "alg changed": (
        lambda: signed(),
        edit("signature-input", lambda v: v.replace("ecdsa-p256-sha256", "ed25519")),
    ),
    "unknown parameter": (lambda: signed(), edit("signature-input", lambda v: v + ';extra="x"')),
    "created as a string": (
        lambda: signed(),
        edit("signature-input", lambda v: v.replace(";created=", ';x="').replace(";keyid", '";keyid')),
    ),
    "created huge": (lambda: signed(), edit("signature-input", lambda v: _set_created(v, "999999999999999"))),
    "component duplicated": (
        lambda: signed(),
        edit("signature-input", lambda v: v.replace('("@method"', '("@method" "@method"')),
    ),
    "component with a parameter": (
        lambda: signed(),
        edit("signature-input", lambda v: v.replace('"content-digest"', '"content-digest";sf')),
    ),
    "component as a token": (
        lambda: signed(),
        edit("signature-input", lambda v: v.replace('"@method"', "method")),
    ),
    "valid, with a second, unrelated signature": (
        lambda: signed(),
        lambda m, b: (
            Message(
                m.method,
                m.url,
                httpx.Headers(
                    {
                        **dict(m.headers),
                        "signature-input": m.headers["signature-input"] + ', proxy=("@method");tag="proxy"',
                        "signature": m.headers["signature"] + ", proxy=:AAAA:",
                    }
                ),
            ),
            b,
        ),
    ),
}
# Where the device protocol is narrower than RFC 9421: it covers exactly @method, @target-uri and
# content-digest (docs/device-protocol.md §3).
NARROWER: dict[str, Case] = {
    "valid, also covering content-type": (
        lambda: signed(components=("@method", "@target-uri", "content-digest", "content-type")),
        None,
    ),
    "valid, also covering @authority": (
        lambda: signed(components=("@method", "@authority", "@target-uri")),
        None,
    ),
}


def _drop_created(value: str) -> str:
    head, _, tail = value.partition(";created=")
    return head + tail[tail.index(";") :]


def _set_created(value: str, created: str) -> str:
    head, _, tail = value.partition(";created=")
    return f"{head};created={created}{tail[tail.index(';') :]}"


@pytest.mark.parametrize("case", sorted(CASES))
def test_the_verifier_agrees_with_the_library(case: str) -> None:
    make, change = CASES[case]
    message, body = make()
    if change is not None:
        message, body = change(Message(message.method, message.url, httpx.Headers(message.headers)), body)
    expected = library_accepts(message, body)
    assert corral_accepts(message, body) is expected
    assert expected is case.startswith("valid")  # the case is what it says


@pytest.mark.parametrize("case", sorted(NARROWER))
def test_components_beyond_the_protocols_are_refused(case: str) -> None:
    message, body = NARROWER[case][0]()
    assert library_accepts(message, body)
    assert not corral_accepts(message, body)
