"""HTTP for the agent: TLS pinning, RFC 9421 request signatures, clock-skew correction, retries.

* **Pinning** (device-protocol.md §1). With a CA fingerprint from the enrollment URL, the very first request
  is already verified: :func:`fetch_pinned_ca` reads the server's chain over a handshake whose only purpose is
  to find the certificate with that SHA-256 fingerprint (nothing is sent over that connection), and every real
  request then uses an :class:`ssl.SSLContext` whose *only* trust anchor is that certificate, with normal
  chain and host-name verification. The CA's PEM is kept in the state, so later runs do not fetch it again.
  No matching certificate, or a chain that does not verify against it: the agent refuses (fail closed).
  Without a fingerprint the system's trust store is used.
* **Signatures** (§3): every request after enrollment is signed by :class:`RequestSigner` with the library
  ``http-message-signatures``: label ``corral``, components ``@method`` ``@target-uri`` (+ ``content-digest``
  when there is a body), parameters ``created``, ``nonce`` (16 random bytes, base64url), ``keyid`` (the
  certificate fingerprint), ``alg`` ``ecdsa-p256-sha256``, ``tag`` ``corral-device``.
* **Clock** (§3): :class:`Clock` learns the skew from the ``Date`` header of every response.
* **Overload** (§9): ``429``/``503`` (and a proxy's ``502``/``504``, and refused connections) are retried a
  bounded number of times, honouring ``Retry-After``, with jittered exponential backoff.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import ipaddress
import json
import logging
import random
import re
import secrets
import socket
import ssl
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime
from typing import Any
from urllib.parse import urlsplit

import httpx
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from http_message_signatures import HTTPMessageSigner, MappingKeyResolver, algorithms

from corral_agent._version import __version__
from corral_agent.errors import AgentError, AuthenticationError, PinningError, ProtocolError

log = logging.getLogger(__name__)

SIGNATURE_LABEL = "corral"
SIGNATURE_TAG = "corral-device"
COVERED_COMPONENTS = ("@method", "@target-uri")  # + "content-digest", added by the library with the body
USER_AGENT = f"corral-agent/{__version__}"
RETRYABLE_STATUSES = frozenset({429, 502, 503, 504})
_BODY_METHODS = frozenset({"POST", "PUT", "PATCH"})
_FINGERPRINT = re.compile(r"[0-9a-f]{64}")

Sleep = Callable[[float], Awaitable[None]]


# ------------------------------------------------------------------------------------------------ pinning
def normalize_fingerprint(value: str) -> str:
    """``sha256:9F:86:…`` / ``9f86…`` → ``9f86…`` (64 lower-case hex digits); anything else is refused."""
    text = value.strip().lower()
    if text.startswith("sha256:"):
        text = text[len("sha256:") :]
    elif text.startswith("sha-256:"):
        text = text[len("sha-256:") :]
    text = text.replace(":", "").replace(" ", "")
    if not _FINGERPRINT.fullmatch(text):
        raise AgentError(
            f"not a SHA-256 certificate fingerprint: {value!r} (expected sha256:<64 hex digits>)"
        )
    return text


def der_fingerprint(der: bytes) -> str:
    return hashlib.sha256(der).hexdigest()


def pem_fingerprint(pem: str) -> str:
    cert = x509.load_pem_x509_certificate(pem.encode())
    return der_fingerprint(cert.public_bytes(serialization.Encoding.DER))


def _peer_chain_der(tls: ssl.SSLSocket) -> list[bytes]:
    """The chain the server sent, unverified, as DER (leaf first)."""
    public = getattr(tls, "get_unverified_chain", None)  # Python 3.13+
    raw: list[Any] | None = public() if public is not None else None
    if raw is None:
        sslobj = getattr(tls, "_sslobj", None)  # Python 3.10-3.12 have it on the private object
        private = getattr(sslobj, "get_unverified_chain", None)
        raw = private() if private is not None else None
    chain: list[bytes] = []
    for item in raw or []:
        if isinstance(item, bytes | bytearray):
            chain.append(bytes(item))
        else:
            chain.append(item.public_bytes(ssl._ssl.ENCODING_DER))  # type: ignore[attr-defined]
    if not chain:
        leaf = tls.getpeercert(binary_form=True)
        if leaf:
            chain.append(leaf)
    return chain


def fetch_pinned_ca(url: str, fingerprint: str, *, timeout: float = 15.0) -> str:
    """Return (as PEM) the certificate with SHA-256 ``fingerprint`` from the TLS chain ``url``'s server sends.

    The handshake here does not verify anything: it only reads the chain to find the pinned certificate.
    Trust is decided afterwards, on a new connection, by :func:`ssl_context` verifying the chain (signatures,
    validity, host name) against that certificate alone. Raises :class:`PinningError` when no certificate in
    the chain has the fingerprint.
    """
    fingerprint = normalize_fingerprint(fingerprint)
    parts = urlsplit(url)
    if parts.scheme != "https" or not parts.hostname:
        raise PinningError(f"a CA fingerprint needs an https:// server URL, not {url!r}")
    host, port = parts.hostname, parts.port or 443
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE  # read-only probe: trust comes from the fingerprint, checked below
    try:
        with (
            socket.create_connection((host, port), timeout=timeout) as sock,
            context.wrap_socket(sock, server_hostname=host) as tls,
        ):
            chain = _peer_chain_der(tls)
    except OSError as exc:
        raise AgentError(f"cannot reach {host}:{port} to check its TLS certificate: {exc}") from exc
    for der in chain:
        if der_fingerprint(der) == fingerprint:
            return ssl.DER_cert_to_PEM_cert(der)
    raise PinningError(
        f"the TLS certificate chain of {host}:{port} does not contain the pinned CA "
        f"sha256:{fingerprint} ({len(chain)} certificate(s) presented); refusing to connect"
    )


def ssl_context(pinned_ca_pem: str | None) -> ssl.SSLContext:
    """Verification against the pinned CA only (when given), else against the system's trust store."""
    if pinned_ca_pem is None:
        return ssl.create_default_context()
    context = ssl.create_default_context(cadata=pinned_ca_pem)
    # Trust stops at the pinned certificate even when it is an intermediate CA.
    context.verify_flags |= ssl.VERIFY_X509_PARTIAL_CHAIN
    return context


def _tls_failure(exc: BaseException) -> ssl.SSLError | None:
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        if isinstance(current, ssl.SSLError):
            return current
        current = current.__cause__ or current.__context__
    return None


def check_plain_http(url: str) -> None:
    """Plain HTTP would expose the enrollment token and responses: allowed only to a loopback address."""
    parts = urlsplit(url)
    if parts.scheme == "https":
        return
    if parts.scheme != "http" or not parts.hostname:
        raise AgentError(f"not an http(s) URL: {url!r}")
    host = parts.hostname
    try:
        loopback = ipaddress.ip_address(host).is_loopback
    except ValueError:
        loopback = host == "localhost"
    if not loopback:
        raise AgentError(
            f"refusing plain HTTP to {host}: use https:// (plain HTTP is allowed to loopback only)"
        )


# ------------------------------------------------------------------------------------------------ clock
class Clock:
    """The local clock corrected by the skew learnt from the server's ``Date`` headers."""

    def __init__(
        self,
        skew: float = 0.0,
        on_change: Callable[[float], None] | None = None,
        time_source: Callable[[], float] = time.time,
    ) -> None:
        self.skew = skew
        self.on_change = on_change
        self.time_source = time_source

    def now(self) -> float:
        return self.time_source() + self.skew

    def now_datetime(self) -> datetime:
        return datetime.fromtimestamp(self.now(), UTC)

    def observe(self, date_header: str | None) -> bool:
        """Learn the skew from a ``Date`` header. Returns whether the skew changed."""
        if not date_header:
            return False
        try:
            server = parsedate_to_datetime(date_header)
        except (TypeError, ValueError, IndexError):
            return False
        return self.observe_server_time(server)

    def observe_server_time(self, server: datetime | str | None) -> bool:
        """Learn the skew from the server's time (a ``Date`` header or a ``server_time`` field). Both have
        1 s resolution or worse: differences under 2 s are ignored. Returns whether the skew changed."""
        if isinstance(server, str):
            try:
                server = datetime.fromisoformat(server.replace("Z", "+00:00"))
            except ValueError:
                return False
        if server is None:
            return False
        if server.tzinfo is None:
            server = server.replace(tzinfo=UTC)
        measured = server.timestamp() - self.time_source()
        new = 0.0 if abs(measured) < 2 else float(round(measured))
        if abs(new - self.skew) < 2:
            return False
        log.info("server clock differs from ours by %+.0f s; correcting", new)
        self.skew = new
        if self.on_change is not None:
            self.on_change(new)
        return True


# ------------------------------------------------------------------------------------------------ signing
def new_nonce() -> str:
    """16 random bytes, base64url without padding."""
    return base64.urlsafe_b64encode(secrets.token_bytes(16)).rstrip(b"=").decode("ascii")


class RequestSigner:
    """Signs :class:`httpx.Request` objects in place per device-protocol.md §3."""

    def __init__(
        self, private_key: ec.EllipticCurvePrivateKey, key_id: str, clock: Clock | None = None
    ) -> None:
        self.key_id = key_id
        self.clock = clock or Clock()
        self._signer = HTTPMessageSigner(
            signature_algorithm=algorithms.ECDSA_P256_SHA256,
            key_resolver=MappingKeyResolver(public_keys={}, private_keys={key_id: private_key}),
        )

    def sign(self, request: httpx.Request) -> None:
        content = request.content
        body = content if content or request.method in _BODY_METHODS else None
        for name in ("content-digest", "signature-input", "signature"):
            if name in request.headers:
                del request.headers[name]  # a retried request is signed afresh
        self._signer.sign(
            request,
            key_id=self.key_id,
            created=self.clock.now_datetime(),
            nonce=new_nonce(),
            label=SIGNATURE_LABEL,
            tag=SIGNATURE_TAG,
            include_alg=True,
            covered_component_ids=COVERED_COMPONENTS,
            body=body,
        )


# ------------------------------------------------------------------------------------------------ retries
@dataclass(frozen=True)
class RetryPolicy:
    attempts: int = 5
    base_delay: float = 1.0
    max_delay: float = 60.0
    #: Longest ``Retry-After`` honoured for one wait (a larger value is capped).
    max_retry_after: float = 900.0

    def delay(self, attempt: int, retry_after: float | None = None) -> float:
        """Seconds to wait before retry number ``attempt + 1``: exponential backoff with jitter, and at
        least ``Retry-After`` (plus up to 20 % jitter, so that devices do not all come back at once)."""
        backoff = min(self.max_delay, self.base_delay * (2**attempt))
        jittered = random.uniform(backoff / 2, backoff)
        if retry_after is None:
            return jittered
        wait = min(max(retry_after, 0.0), self.max_retry_after)
        return wait + random.uniform(0, max(wait * 0.2, jittered / 2))


def parse_retry_after(value: str | None, now: float | None = None) -> float | None:
    """``Retry-After`` as seconds: delay-seconds or an HTTP-date (RFC 9110 §10.2.3)."""
    if not value:
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    try:
        when = parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return max(0.0, when.timestamp() - (time.time() if now is None else now))


def problem_error(response: httpx.Response) -> ProtocolError:
    problem: dict[str, Any] = {}
    try:
        data = response.json()
        if isinstance(data, dict):
            problem = data
    except (ValueError, UnicodeDecodeError):
        pass
    title = str(problem.get("title") or response.reason_phrase or "error")
    detail = problem.get("detail")
    if detail is not None and not isinstance(detail, str):
        detail = json.dumps(detail)
    cls = AuthenticationError if response.status_code == 401 else ProtocolError
    return cls(response.status_code, title, detail, problem)


# ------------------------------------------------------------------------------------------------ client
def create_http_client(
    *,
    pinned_ca_pem: str | None = None,
    transport: httpx.AsyncBaseTransport | None = None,
    timeout: float = 30.0,
) -> httpx.AsyncClient:
    """The agent's HTTP client: pinned or system TLS verification, no redirects (a redirect could move a
    signed request elsewhere), a short connect timeout. ``transport`` is for tests (it bypasses TLS)."""
    return httpx.AsyncClient(
        verify=ssl_context(pinned_ca_pem),
        transport=transport,
        timeout=httpx.Timeout(timeout, connect=min(timeout, 15.0)),
        headers={"User-Agent": USER_AGENT},
        follow_redirects=False,
    )


class DeviceHttp:
    """Requests to the Corral server: JSON bodies, optional signature, retries, skew correction."""

    def __init__(
        self,
        client: httpx.AsyncClient,
        *,
        clock: Clock,
        signer: RequestSigner | None = None,
        retry: RetryPolicy | None = None,
        sleep: Sleep = asyncio.sleep,
    ) -> None:
        self.client = client
        self.clock = clock
        self.signer = signer
        self.retry = retry or RetryPolicy()
        self.sleep = sleep

    def _build(
        self, method: str, url: str, content: bytes | None, signed: bool, accept: str
    ) -> httpx.Request:
        headers = {"Accept": accept}
        if content is not None:
            headers["Content-Type"] = "application/json"
        request = self.client.build_request(method, url, content=content, headers=headers)
        if signed:
            if self.signer is None:
                raise AgentError("this request must be signed, but the agent is not enrolled")
            self.signer.sign(request)
        return request

    async def request(
        self, method: str, url: str, *, json_body: Any = None, signed: bool = True, repeatable: bool = False
    ) -> httpx.Response:
        """Send, retrying overload and refused connections; raise :class:`ProtocolError` on errors.

        ``repeatable``: the request may be sent again when its connection broke before an answer came (the
        server may have handled it, e.g. one of several servers behind a load balancer died): a check-in
        (command results and inventory are idempotent), a desired-state fetch or report. Not an enrollment
        or a certificate renewal."""
        content = None if json_body is None else json.dumps(json_body, separators=(",", ":")).encode("utf-8")
        retried_after_skew = False
        attempt = 0
        while True:
            request = self._build(method, url, content, signed, "application/json")
            try:
                response = await self.client.send(request)
            except (httpx.ConnectError, httpx.ConnectTimeout) as exc:
                tls = _tls_failure(exc)
                if tls is not None:
                    raise PinningError(f"TLS verification of {request.url.host} failed: {tls}") from exc
                if attempt + 1 >= self.retry.attempts:
                    raise AgentError(f"cannot reach {request.url.host}: {exc or type(exc).__name__}") from exc
                delay = self.retry.delay(attempt)
                log.info("cannot reach %s (%s); retrying in %.1f s", request.url.host, exc, delay)
                await self.sleep(delay)
                attempt += 1
                continue
            except httpx.TimeoutException as exc:
                raise AgentError(f"{method} {url} timed out") from exc
            except (httpx.RemoteProtocolError, httpx.ReadError, httpx.WriteError) as exc:
                if not repeatable or attempt + 1 >= self.retry.attempts:
                    raise AgentError(f"{method} {url} failed: {exc}") from exc
                delay = self.retry.delay(attempt)
                log.info("%s %s broke off unanswered (%s); retrying in %.1f s", method, url, exc, delay)
                await self.sleep(delay)
                attempt += 1
                continue
            except httpx.HTTPError as exc:
                raise AgentError(f"{method} {url} failed: {exc}") from exc
            skew_changed = self.clock.observe(response.headers.get("date"))
            if response.status_code in RETRYABLE_STATUSES and attempt + 1 < self.retry.attempts:
                retry_after = parse_retry_after(response.headers.get("retry-after"))
                delay = self.retry.delay(attempt, retry_after)
                log.info("%s answered %d; retrying in %.1f s", request.url.host, response.status_code, delay)
                await self.sleep(delay)
                attempt += 1
                continue
            if response.status_code == 401 and signed and skew_changed and not retried_after_skew:
                retried_after_skew = True  # our clock was off: this response corrected it, sign again
                continue
            if response.is_error:
                raise problem_error(response)
            return response

    @asynccontextmanager
    async def stream(self, url: str, *, read_timeout: float = 75.0) -> AsyncIterator[httpx.Response]:
        """A signed ``GET`` whose body is read incrementally (Server-Sent Events)."""
        request = self._build("GET", url, None, True, "text/event-stream")
        request.extensions["timeout"] = httpx.Timeout(30.0, read=read_timeout).as_dict()
        try:
            response = await self.client.send(request, stream=True)
        except httpx.ConnectError as exc:
            tls = _tls_failure(exc)
            if tls is not None:
                raise PinningError(f"TLS verification of {request.url.host} failed: {tls}") from exc
            raise
        try:
            self.clock.observe(response.headers.get("date"))
            if response.is_error:
                await response.aread()
                raise problem_error(response)
            yield response
        finally:
            await response.aclose()
