"""Wake-ups for Apple devices: MDM pushes over APNs' HTTP/2 provider API.

An enrolled Apple device does not poll; Corral asks Apple's push service (APNs) to wake it, and the device
then connects to the check-in/command URL on its own. Apple ("Sending MDM commands to a device") expects, per
device: ``POST /3/device/<token hex>`` on api.push.apple.com over HTTP/2, TLS with the MDM push certificate
as the client certificate, ``apns-topic`` = that certificate's subject UID (the topic the device enrolled
with), ``apns-push-type: mdm``, and a payload of only ``{"mdm": "<PushMagic>"}`` (the device's PushMagic from
its TokenUpdate: a push without it is ignored). A push carries no command; it only says "check in".

Why httpx with HTTP/2 (``httpx[http2]``, the h2 package) rather than aioapns: aioapns hard-codes Apple's host
as a class attribute and loads the certificate from a file path, so a test stand-in is reachable only through
its HTTP CONNECT proxy support, and the key would have to sit decrypted on disk. httpx is already Corral's
HTTP client, takes a base URL and an ``ssl.SSLContext``, and multiplexes every push over one connection, as
Apple asks ("keep your connections open ... don't repeatedly open and close").

The key never touches the disk in clear: Python's ``ssl`` loads a client key only from a file, so it is
written PEM-encrypted with a random password held in memory, into a private (0600) temporary file that is
removed as soon as it is loaded."""

from __future__ import annotations

import asyncio
import json
import os
import secrets
import ssl
import tempfile
import time
from collections.abc import Hashable, Iterator, Sequence
from dataclasses import dataclass
from enum import StrEnum
from types import TracebackType
from typing import Self, TypeVar

import certifi
import httpx
from cryptography.hazmat.primitives import serialization

APPLE_URL = "https://api.push.apple.com"
#: How long APNs keeps a push for a device that is offline (it keeps only the latest one per device and
#: topic anyway). A day: a device away longer checks in by itself when it is back, and a wake-up older than
#: that is stale.
EXPIRATION = 86400
#: A reason is shown to administrators and stored; an error body of unexpected size is cut.
MAX_REASON = 200

K = TypeVar("K", bound=Hashable)


class Outcome(StrEnum):
    """What the caller should do next with this device (and this certificate)."""

    sent = "sent"  # APNs accepted the push; the device checks in when it wakes
    unreachable = "unreachable"  # the token is dead (or not this topic's): stop pushing to it
    certificate = "certificate"  # the certificate or its topic is refused: stop pushing, renew/fix it
    retry = "retry"  # APNs is busy or unreachable: try again later
    failed = "failed"  # a request APNs rejects as malformed: Corral's bug, retrying will not help


# 400 reasons that speak about the token, and those that speak about the topic the certificate covers.
_DEAD_TOKEN = {"BadDeviceToken", "DeviceTokenNotForTopic"}
_BAD_TOPIC = {"TopicDisallowed", "BadTopic"}


@dataclass(frozen=True)
class PushResult:
    status: int  # APNs' HTTP status; 0 when no answer came (a transport error)
    reason: str | None  # APNs' reason (``{"reason": ...}``), or "transport: ..."
    outcome: Outcome
    apns_id: str | None  # APNs' id for the push (its ``apns-id`` header)


def classify(status: int, reason: str | None) -> Outcome:
    """APNs' answer as what to do next ("Handling notification responses from APNs")."""
    if status == 200:
        return Outcome.sent
    if status == 410 or (status == 400 and reason in _DEAD_TOKEN):
        return Outcome.unreachable
    if status == 403 or (status == 400 and reason in _BAD_TOPIC):
        return Outcome.certificate
    if status == 429 or status >= 500 or (status == 400 and reason == "IdleTimeout"):
        return Outcome.retry
    return Outcome.failed


def _reason(response: httpx.Response) -> str | None:
    """The ``reason`` of an error body, if there is a readable one (never trusted to be well-formed)."""
    try:
        body = json.loads(response.content)
    except ValueError:
        return None
    reason = body.get("reason") if isinstance(body, dict) else None
    return reason[:MAX_REASON] if isinstance(reason, str) and reason else None


def _chain(exc: BaseException) -> Iterator[BaseException]:
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        yield current
        current = current.__cause__ or current.__context__


def transport_failure(exc: httpx.TransportError) -> PushResult:
    """No answer from APNs. A TLS alert refusing Corral's certificate (expired, revoked, not Apple's) is a
    certificate problem when it is seen; a refusal is often seen only as a closed connection (the server
    drops it right after the handshake, before any answer), which cannot be told from a network failure:
    retried, with the underlying error in the reason for the administrator."""
    chain = list(_chain(exc))
    refused = any(
        isinstance(error, ssl.SSLError)
        and "ALERT" in (error.reason or "")
        and any(word in (error.reason or "") for word in ("CERTIFICATE", "UNKNOWN_CA"))
        for error in chain
    )
    root = chain[-1]
    reason = f"transport: {type(exc).__name__}"
    if root is not exc:
        reason += f": {type(root).__name__}"
    if str(root):
        reason += f": {root}"
    return PushResult(0, reason[:MAX_REASON], Outcome.certificate if refused else Outcome.retry, None)


def _ssl_context(certificate_pem: bytes, key_pem: bytes, ca_file: str | None) -> ssl.SSLContext:
    """A client context presenting the push certificate. ``ssl`` loads a key only from a file: it is written
    encrypted (random password, kept in memory) to a 0600 file (``mkstemp``) removed once loaded."""
    key = serialization.load_pem_private_key(key_pem, password=None)
    password = secrets.token_urlsafe(32).encode()
    encrypted = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.BestAvailableEncryption(password),
    )
    # Without ca_file, certifi's roots (as httpx's default): slim containers often have no system store.
    context = ssl.create_default_context(cafile=ca_file or certifi.where())
    fd, path = tempfile.mkstemp(prefix="corral-apns-", suffix=".pem")
    try:
        with os.fdopen(fd, "wb") as file:
            file.write(certificate_pem.rstrip() + b"\n" + encrypted)
        context.load_cert_chain(path, password=password)
    finally:
        os.unlink(path)
    return context


class ApnsClient:
    """One HTTP/2 connection to APNs with the push certificate; at most ``concurrency`` pushes in flight
    (HTTP/2 multiplexes them; the client also waits for the stream limit the server announces)."""

    def __init__(
        self,
        certificate_pem: bytes,
        key_pem: bytes,
        *,
        base_url: str = APPLE_URL,
        ca_file: str | None = None,
        concurrency: int = 256,
        timeout: float = 10,
    ) -> None:
        self._limit = asyncio.Semaphore(concurrency)
        self._concurrency = concurrency
        self._http = httpx.AsyncClient(
            base_url=base_url,
            verify=_ssl_context(certificate_pem, key_pem, ca_file),
            http1=False,  # APNs speaks only HTTP/2: fail rather than fall back
            http2=True,
            timeout=timeout,
            # One connection carries every push. Kept open while idle for a while, as Apple asks; APNs
            # closes it itself when it wants to (a new one is then opened).
            limits=httpx.Limits(max_connections=1, max_keepalive_connections=1, keepalive_expiry=300),
        )

    async def push(self, token: bytes, topic: str, magic: str) -> PushResult:
        """Wake one device; never raises for APNs' refusals or for network trouble (see :class:`Outcome`)."""
        headers = {
            "apns-topic": topic,
            "apns-push-type": "mdm",
            "apns-priority": "10",
            "apns-expiration": str(int(time.time()) + EXPIRATION),
        }
        body = json.dumps({"mdm": magic}, separators=(",", ":")).encode()
        async with self._limit:
            try:
                response = await self._post(f"/3/device/{token.hex()}", headers, body)
            except httpx.TransportError as exc:
                return transport_failure(exc)
        reason = None if response.status_code == 200 else _reason(response)
        outcome = classify(response.status_code, reason)
        return PushResult(response.status_code, reason, outcome, response.headers.get("apns-id"))

    async def _post(self, path: str, headers: dict[str, str], body: bytes) -> httpx.Response:
        """POST, and once more on a new connection if the one kept open turns out to be gone: httpx does not
        notice an idle HTTP/2 connection closed by the server (APNs closes idle ones) until it uses it. A
        push sent twice is harmless (the device checks in once)."""
        try:
            return await self._http.post(path, headers=headers, content=body)
        except (httpx.ReadError, httpx.WriteError, httpx.RemoteProtocolError, httpx.LocalProtocolError):
            # LocalProtocolError: the connection was closed (GOAWAY) while this request was being sent.
            return await self._http.post(path, headers=headers, content=body)

    async def push_many(self, items: Sequence[tuple[K, bytes, str, str]]) -> dict[K, PushResult]:
        """Push to many devices at once, ``(key, token, topic, magic)`` each; results by key. No more than
        ``concurrency`` workers take items in turn (not one task per item: a fleet can be large)."""
        results: dict[K, PushResult] = {}
        pending: Iterator[tuple[K, bytes, str, str]] = iter(items)

        async def work() -> None:
            for key, token, topic, magic in pending:
                results[key] = await self.push(token, topic, magic)

        async with asyncio.TaskGroup() as group:
            for _ in range(min(self._concurrency, len(items))):
                group.create_task(work())
        return results

    async def aclose(self) -> None:
        await self._http.aclose()

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.aclose()
