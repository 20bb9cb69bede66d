"""A stand-in for Corral's device endpoints (device-protocol.md), strict where the protocol is strict: it
verifies every RFC 9421 signature with the ``http-message-signatures`` verifier, the ``created`` window, nonce
reuse, the tag, the covered components and the body digest, and refuses unknown request fields. The agent's
tests run against it (through ``httpx.MockTransport`` or a local HTTPS server): they need no Corral server."""

from __future__ import annotations

import base64
import hashlib
import json
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from email.utils import formatdate
from typing import Any

import httpx
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from http_message_signatures import (
    HTTPMessageSignaturesException,
    HTTPMessageVerifier,
    InvalidSignature,
    MappingKeyResolver,
    algorithms,
)

TOKEN = "cet_test-token"


# ------------------------------------------------------------------------------------------- certificates
def make_ca(name: str = "Test CA") -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    now = datetime.now(UTC)
    ski = x509.SubjectKeyIdentifier.from_public_key(key.public_key())
    cert = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - timedelta(minutes=5))
        .not_valid_after(now + timedelta(days=30))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(ski, critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ski), critical=False)
        .sign(key, hashes.SHA256())
    )
    return cert, key


def issue(
    ca: tuple[x509.Certificate, ec.EllipticCurvePrivateKey],
    public_key: Any,
    common_name: str,
    *,
    server_names: list[str] | None = None,
    days: int = 365,
) -> x509.Certificate:
    import ipaddress

    ca_cert, ca_key = ca
    now = datetime.now(UTC)
    builder = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)]))
        .issuer_name(ca_cert.subject)
        .public_key(public_key)
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - timedelta(minutes=5))
        .not_valid_after(now + timedelta(days=days))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(public_key), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()),
            critical=False,
        )
    )
    if server_names is not None:
        alt: list[x509.GeneralName] = []
        for name in server_names:
            try:
                alt.append(x509.IPAddress(ipaddress.ip_address(name)))
            except ValueError:
                alt.append(x509.DNSName(name))
        builder = builder.add_extension(x509.SubjectAlternativeName(alt), critical=False).add_extension(
            x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False
        )
    else:
        builder = builder.add_extension(
            x509.SubjectAlternativeName([x509.UniformResourceIdentifier(f"urn:corral:device:{common_name}")]),
            critical=False,
        )
    return builder.sign(ca_key, hashes.SHA256())


def pem(cert: x509.Certificate) -> str:
    return cert.public_bytes(serialization.Encoding.PEM).decode()


def fingerprint(cert: x509.Certificate) -> str:
    return hashlib.sha256(cert.public_bytes(serialization.Encoding.DER)).hexdigest()


def canonical_hash(inventory: Any) -> str:
    return hashlib.sha256(json.dumps(inventory, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


# ------------------------------------------------------------------------------------------------ server
@dataclass
class FakeDevice:
    id: str
    facts: dict[str, Any]
    status: str = "active"
    inventory_hash: str | None = None
    inventory: Any = None


@dataclass
class FakeCommand:
    id: str
    device_id: str
    type: str
    params: dict[str, Any] = field(default_factory=dict)
    status: str = "pending"  # pending, acknowledged, succeeded, failed
    result: Any = None
    error: str | None = None


def problem(status: int, title: str, detail: str = "") -> httpx.Response:
    return httpx.Response(
        status,
        json={"title": title, "status": status, "detail": detail, "correlation_id": uuid.uuid4().hex},
        headers={"Content-Type": "application/problem+json"},
    )


class FakeCorral:
    """Callable as an ``httpx.MockTransport`` handler (``httpx.Request`` → ``httpx.Response``)."""

    def __init__(self, base_url: str = "https://corral.test") -> None:
        self.base_url = base_url
        self.ca = make_ca("Fake Corral device CA")
        self.devices: dict[str, FakeDevice] = {}
        self.certificates: dict[str, tuple[str, Any, bool]] = {}  # fingerprint -> (device id, key, revoked)
        self.nonces: set[tuple[str, str]] = set()
        self.commands: list[FakeCommand] = []
        self.checkins: list[dict[str, Any]] = []
        self.requests: list[httpx.Request] = []
        self.signatures: list[dict[str, Any]] = []
        self.inject: list[httpx.Response] = []
        #: The next this many requests are handled, then their connection breaks before the answer.
        self.break_after_handling = 0
        self.clock_offset = 0.0
        self.interval = 180
        self.renew = False
        self.forget_inventory = False
        self.drop_results_once = False
        self.events_payload = b': heartbeat\n\nevent: wake\ndata: {"reason": "command"}\n\n'
        self.on_result: list[Any] = []  # callbacks(command) when a result arrives

    # -------------------------------------------------------------------------------------------- helpers
    def now(self) -> float:
        return time.time() + self.clock_offset

    def queue(self, device_id: str, type_: str, **params: Any) -> FakeCommand:
        command = FakeCommand(str(uuid.uuid4()), device_id, type_, params)
        self.commands.append(command)
        return command

    def enroll_url(self, ca: str | None = None) -> str:
        url = f"{self.base_url}/device/v1/enroll?token={TOKEN}"
        return url + (f"&ca=sha256:{ca}" if ca else "")

    def _json(self, status: int, data: Any) -> httpx.Response:
        return httpx.Response(status, json=data)

    # -------------------------------------------------------------------------------------------- dispatch
    def __call__(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(request)
        response = self.inject.pop(0) if self.inject else self._route(request)
        if self.break_after_handling:
            self.break_after_handling -= 1
            broke = "Server disconnected without sending a response."
            raise httpx.RemoteProtocolError(broke, request=request)
        response.headers["Date"] = formatdate(self.now(), usegmt=True)
        return response

    def _route(self, request: httpx.Request) -> httpx.Response:
        path = request.url.path
        routes = {
            ("POST", "/device/v1/enroll"): self._enroll,
            ("POST", "/device/v1/checkin"): self._checkin,
            ("POST", "/device/v1/renew"): self._renew,
            ("GET", "/device/v1/events"): self._events,
        }
        handler = routes.get((request.method, path))
        if handler is None:
            return problem(404, "Not Found")
        return handler(request)

    def _issue(self, device_id: str, csr_pem: str) -> x509.Certificate | httpx.Response:
        try:
            csr = x509.load_pem_x509_csr(csr_pem.encode())
        except ValueError:
            return problem(422, "Malformed CSR")
        if not csr.is_signature_valid:
            return problem(422, "Bad CSR signature")
        key = csr.public_key()
        if not isinstance(key, ec.EllipticCurvePublicKey):
            return problem(422, "Unsupported key")
        cert = issue(self.ca, key, device_id)
        self.certificates[fingerprint(cert)] = (device_id, key, False)
        return cert

    def _enroll(self, request: httpx.Request) -> httpx.Response:
        body = json.loads(request.content)
        if set(body) - {"token", "csr", "device"}:
            return problem(422, "Unknown fields")
        facts = body.get("device") or {}
        if not isinstance(facts.get("serial_number"), str) or not facts["serial_number"]:
            return problem(422, "device.serial_number is required")
        if body.get("token") != TOKEN:
            return problem(401, "Invalid enrollment token")
        device_id = str(uuid.uuid4())
        cert = self._issue(device_id, body.get("csr", ""))
        if isinstance(cert, httpx.Response):
            return cert
        self.devices[device_id] = FakeDevice(device_id, body.get("device") or {})
        return self._json(
            201,
            {
                "device_id": device_id,
                "certificate": pem(cert),
                "ca_certificates": pem(self.ca[0]),
                "certificate_fingerprint": fingerprint(cert),
                "checkin_url": f"{self.base_url}/device/v1/checkin",
                "events_url": f"{self.base_url}/device/v1/events",
                "checkin_interval_seconds": self.interval,
                "server_time": datetime.fromtimestamp(self.now(), UTC).isoformat().replace("+00:00", "Z"),
                "some_future_field": True,
            },
        )

    def authenticate(self, request: httpx.Request) -> FakeDevice | httpx.Response:
        keys = {fp: key for fp, (_, key, revoked) in self.certificates.items() if not revoked}
        verifier = HTTPMessageVerifier(
            signature_algorithm=algorithms.ECDSA_P256_SHA256,
            key_resolver=MappingKeyResolver(public_keys=keys, private_keys={}),
        )
        verifier.max_clock_skew = timedelta(days=3650)  # the window is checked below, against *our* clock
        body = request.content
        required = ("@method", "@target-uri", "content-digest") if body else ("@method", "@target-uri")
        try:
            results = verifier.verify(
                request,
                max_age=None,
                expect_tag="corral-device",
                require_components=required,
                body=body or None,
            )
        except (InvalidSignature, HTTPMessageSignaturesException) as exc:
            return problem(401, "Bad signature", str(exc))
        result = results[0]
        params = result.parameters
        self.signatures.append({"label": result.label, **params})
        if result.label != "corral" or params.get("alg") != "ecdsa-p256-sha256":
            return problem(401, "Bad signature", "label or alg")
        if abs(int(params["created"]) - self.now()) > 300:
            return problem(401, "Stale signature", "created out of window")
        nonce = str(params.get("nonce") or "")
        if len(base64.urlsafe_b64decode(nonce + "=" * (-len(nonce) % 4))) < 16:
            return problem(401, "Bad nonce")
        keyid = str(params["keyid"])
        if (keyid, nonce) in self.nonces:
            return problem(401, "Replayed nonce")
        self.nonces.add((keyid, nonce))
        device = self.devices[self.certificates[keyid][0]]
        if device.status != "active":
            return problem(401, "Device not active")
        return device

    def _revoke(self, device: FakeDevice) -> None:
        for fp, (device_id, key, _) in list(self.certificates.items()):
            if device_id == device.id:
                self.certificates[fp] = (device_id, key, True)

    def _checkin(self, request: httpx.Request) -> httpx.Response:
        device = self.authenticate(request)
        if isinstance(device, httpx.Response):
            return device
        body = json.loads(request.content)
        if set(body) - {"agent_version", "inventory_hash", "inventory", "command_results"}:
            return problem(422, "Unknown fields")
        self.checkins.append(body)
        results = body.get("command_results") or []
        by_id = {c.id: c for c in self.commands if c.device_id == device.id}
        for result in results:
            if result.get("command_id") not in by_id:
                return problem(422, "Unknown command", str(result.get("command_id")))
            if result.get("status") not in ("acknowledged", "succeeded", "failed", "not_now"):
                return problem(422, "Bad status")
        if self.drop_results_once and results:
            self.drop_results_once = False
            results = []
        for result in results:
            command = by_id[result["command_id"]]
            if command.status in ("succeeded", "failed"):
                continue
            if result["status"] != "not_now":
                command.status = result["status"]
                command.result = result.get("result")
                command.error = result.get("error")
            for callback in self.on_result:
                callback(command)
            if command.type in ("wipe", "retire") and result["status"] in ("acknowledged", "succeeded"):
                device.status = "wiped" if command.type == "wipe" else "retired"
                self._revoke(device)
        if self.forget_inventory:
            device.inventory_hash = None
            self.forget_inventory = False
        if "inventory" in body and set(body["inventory"]) - {
            "hardware",
            "os",
            "security",
            "network",
            "apps",
            "primary_user",
        }:
            return problem(422, "Unknown inventory fields")
        if "inventory" in body:
            if canonical_hash(body["inventory"]) != body.get("inventory_hash"):
                return problem(422, "inventory_hash does not match the inventory")
            device.inventory, device.inventory_hash = body["inventory"], body["inventory_hash"]
            inventory = "accepted"
        elif body.get("inventory_hash") == device.inventory_hash:
            inventory = "unchanged"
        else:
            inventory = "needed"
        pending = [c for c in self.commands if c.device_id == device.id and c.status == "pending"]
        return self._json(
            200,
            {
                "server_time": datetime.fromtimestamp(self.now(), UTC).isoformat().replace("+00:00", "Z"),
                "checkin_interval_seconds": self.interval,
                "inventory": inventory,
                "commands": [
                    {
                        "id": c.id,
                        "type": c.type,
                        "params": c.params,
                        "expires_at": (datetime.now(UTC) + timedelta(days=1)).isoformat(),
                    }
                    for c in pending
                ],
                "renew_certificate": self.renew,
            },
        )

    def _renew(self, request: httpx.Request) -> httpx.Response:
        device = self.authenticate(request)
        if isinstance(device, httpx.Response):
            return device
        body = json.loads(request.content)
        cert = self._issue(device.id, body.get("csr", ""))
        if isinstance(cert, httpx.Response):
            return cert
        self.renew = False
        return self._json(
            200,
            {
                "certificate": pem(cert),
                "ca_certificates": pem(self.ca[0]),
                "certificate_fingerprint": fingerprint(cert),
            },
        )

    def _events(self, request: httpx.Request) -> httpx.Response:
        device = self.authenticate(request)
        if isinstance(device, httpx.Response):
            return device
        payload = self.events_payload

        async def stream() -> AsyncIterator[bytes]:
            for index in range(0, len(payload), 7):  # in small, arbitrary chunks
                yield payload[index : index + 7]

        return httpx.Response(200, headers={"Content-Type": "text/event-stream"}, content=stream())
