"""A minimal device for server-side tests: its own key, a CSR, RFC 9421 signing — independent of the agent,
so tests can also forge, tamper and replay."""

from __future__ import annotations

import base64
import datetime as dt
import json
import secrets
from dataclasses import dataclass, field
from typing import Any

import httpx
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import NameOID
from http_message_signatures import HTTPMessageSigner, HTTPSignatureKeyResolver, algorithms

BASE_URL = "https://testserver"


def csr_for(key: Any, common_name: str = "device") -> str:
    builder = x509.CertificateSigningRequestBuilder().subject_name(
        x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])
    )
    return builder.sign(key, hashes.SHA256()).public_bytes(serialization.Encoding.PEM).decode()


def rsa_csr() -> str:
    return csr_for(rsa.generate_private_key(public_exponent=65537, key_size=2048))


class _Resolver(HTTPSignatureKeyResolver):
    def __init__(self, key: ec.EllipticCurvePrivateKey) -> None:
        self.key = key

    def resolve_private_key(self, key_id: str) -> Any:
        return self.key


@dataclass
class _Message:
    method: str
    url: str
    headers: httpx.Headers


@dataclass
class TestDevice:
    __test__ = False  # a helper, not a test class

    client: httpx.AsyncClient
    serial: str = field(default_factory=lambda: f"SN-{secrets.token_hex(4).upper()}")
    platform: str = "linux"
    name: str = ""
    key: ec.EllipticCurvePrivateKey = field(default_factory=lambda: ec.generate_private_key(ec.SECP256R1()))
    device_id: str | None = None
    fingerprint: str | None = None
    certificate: str | None = None
    # The URL the signature covers (@target-uri): the server's CORRAL_BASE_URL.
    base_url: str = BASE_URL

    def __post_init__(self) -> None:
        self.name = self.name or f"dev-{self.serial.lower()}"

    def enroll_body(self, token: str, csr: str | None = None) -> dict[str, Any]:
        return {
            "token": token,
            "csr": csr or csr_for(self.key),
            "device": {
                "serial_number": self.serial,
                "name": self.name,
                "platform": self.platform,
                "os_version": "12.7",
                "model": "Test Model",
                "manufacturer": "Test Inc",
            },
        }

    async def enroll(self, token: str, **kwargs: Any) -> httpx.Response:
        response = await self.client.post("/device/v1/enroll", json=self.enroll_body(token, **kwargs))
        if response.status_code == 201:
            body = response.json()
            self.device_id, self.fingerprint = body["device_id"], body["certificate_fingerprint"]
            self.certificate = body["certificate"]
        return response

    def signed_headers(
        self,
        method: str,
        path: str,
        body: bytes,
        *,
        key: ec.EllipticCurvePrivateKey | None = None,
        key_id: str | None = None,
        nonce: str | None = None,
        created: dt.datetime | None = None,
    ) -> httpx.Headers:
        headers = httpx.Headers({"content-type": "application/json"} if body else {})
        signer = HTTPMessageSigner(
            signature_algorithm=algorithms.ECDSA_P256_SHA256, key_resolver=_Resolver(key or self.key)
        )
        components = ("@method", "@target-uri") + (("content-digest",) if body else ())
        signer.sign(
            _Message(method, self.base_url + path, headers),
            key_id=key_id or self.fingerprint or "none",
            covered_component_ids=components,
            body=body if body else None,
            label="corral",
            tag="corral-device",
            nonce=nonce or base64.urlsafe_b64encode(secrets.token_bytes(16)).decode().rstrip("="),
            created=created or dt.datetime.now(dt.UTC),
        )
        return headers

    async def request(self, method: str, path: str, payload: Any = None, **sign: Any) -> httpx.Response:
        body = json.dumps(payload).encode() if payload is not None else b""
        headers = self.signed_headers(method, path, body, **sign)
        return await self.client.request(method, path, content=body or None, headers=headers)

    async def checkin(self, payload: dict[str, Any] | None = None, **sign: Any) -> httpx.Response:
        return await self.request("POST", "/device/v1/checkin", payload or {}, **sign)


def inventory(**overrides: Any) -> dict[str, Any]:
    data: dict[str, Any] = {
        "hardware": {
            "manufacturer": "Lenovo",
            "model": "ThinkPad X1",
            "serial_number": "SN",
            "cpu_architecture": "x86_64",
            "memory_bytes": 16 * 2**30,
            "storage_total_bytes": 512 * 2**30,
            "storage_free_bytes": 200 * 2**30,
        },
        "os": {"platform": "linux", "name": "Debian GNU/Linux", "version": "12.7", "build": "6.1.0-26-amd64"},
        "security": {
            "disk_encrypted": True,
            "firewall_enabled": True,
            "screen_lock_enabled": True,
            "passcode_set": True,
            "jailbroken": False,
            "secure_boot": True,
        },
        "network": {
            "hostname": "alice-laptop",
            "interfaces": [{"name": "eth0", "mac": "02:00:00:00:00:01", "ipv4": ["192.0.2.10"], "ipv6": []}],
        },
        "apps": [
            {"name": "Firefox", "version": "128.3.1esr", "identifier": "firefox-esr"},
            {"name": "curl", "version": "7.88.1", "identifier": "curl"},
        ],
        "primary_user": "alice",
    }
    data.update(overrides)
    return data


def canonical_hash(data: dict[str, Any]) -> str:
    import hashlib

    return hashlib.sha256(json.dumps(data, sort_keys=True, separators=(",", ":")).encode()).hexdigest()
