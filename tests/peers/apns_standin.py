"""A stand-in for Apple's push service (APNs) on loopback: the HTTP/2 provider API over TLS, served by
hypercorn in the test's event loop, for Corral's APNs client and the Apple device simulator.

Like APNs it speaks only HTTP/2 (ALPN h2), requires a client certificate from the CA it is given (the tests'
stand-in "Apple" CA), takes the push's topic from that certificate's subject UID, and refuses what APNs
refuses with APNs' status and ``{"reason": ...}`` body. Each accepted push is recorded (and handed to a
callback registered for its token: a simulated device checks in when pushed). A token's answers can be
scripted (``script(token, [410])``) to play Apple's refusals and outages.

It runs as a task in the loop of the test that starts it (async tests: the loop runs while they await), so
callbacks and :meth:`ApnsStandin.wait_for` need no cross-thread hand-over.

hypercorn does not put the TLS peer certificate in the ASGI scope (no ``tls`` extension). The context's
SSLObject class is swapped for one that, when hypercorn's connection task asks it for the negotiated
protocol (once, right after the handshake, before any request), stores the peer certificate in a context
variable; the tasks hypercorn then starts for the connection's requests inherit it. Should hypercorn ever
stop asking there, every push is refused (403 MissingProviderToken): the tests fail, never pass blind."""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import json
import logging
import re
import socket
import ssl
import time
import uuid
from collections import defaultdict, deque
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any, Self

from cryptography import x509
from cryptography.x509.oid import NameOID
from hypercorn.asyncio import serve
from hypercorn.config import Config, Sockets

from tests.live import throwaway_ca_tls

_log = logging.getLogger(__name__)
_PEER_CERTIFICATE: contextvars.ContextVar[bytes | None] = contextvars.ContextVar(
    "apns_standin_peer", default=None
)
_DEVICE_PATH = re.compile(r"/3/device/(?P<token>[^/]*)")
_TOKEN = re.compile(r"(?:[0-9a-fA-F]{2}){32,100}")
MAX_PAYLOAD = 4096  # APNs' limit for everything but VoIP pushes
#: The reason APNs gives with each status when a script names only the status.
REASONS = {
    400: "BadDeviceToken",
    403: "BadCertificate",
    410: "Unregistered",
    413: "PayloadTooLarge",
    429: "TooManyRequests",
    500: "InternalServerError",
    503: "ServiceUnavailable",
}


@dataclass(frozen=True)
class Push:
    """A push the stand-in accepted."""

    token: str  # hex, lower case
    topic: str
    magic: str
    http_version: str
    connection: tuple[str, int]  # the client's address and port: one per connection
    at: float  # time.monotonic()


@dataclass(frozen=True)
class Refusal:
    token: str | None
    status: int
    reason: str


class _Refused(Exception):
    def __init__(self, status: int, reason: str) -> None:
        super().__init__(status, reason)
        self.status, self.reason = status, reason


class _PeerSeeingSSLObject(ssl.SSLObject):
    """Stores the peer certificate for the connection's requests (module docstring)."""

    def selected_alpn_protocol(self) -> str | None:
        _PEER_CERTIFICATE.set(self.getpeercert(binary_form=True))
        return super().selected_alpn_protocol()


class _Config(Config):
    """hypercorn's configuration with a socket already listening (its port known before serving) and the
    TLS context made up front (a mistake in it fails :meth:`ApnsStandin.start`, not a background task)."""

    def __init__(self, sock: socket.socket) -> None:
        super().__init__()
        self._socket = sock
        self._context: ssl.SSLContext | None = None

    def create_sockets(self) -> Sockets:
        return Sockets([self._socket], [], [])

    def create_ssl_context(self) -> ssl.SSLContext | None:
        if self._context is None:
            context = super().create_ssl_context()
            assert context is not None
            context.sslobject_class = _PeerSeeingSSLObject
            # The stand-in Apple CA's certificates are minimal (no key identifiers): not what Python 3.13's
            # strict verification wants, and not what this stand-in is testing.
            context.verify_flags &= ~ssl.VERIFY_X509_STRICT
            self._context = context
        return self._context


class ApnsStandin:
    """``async with ApnsStandin(apple_ca_pem(), tmp_path) as apns:`` then ``ApnsClient(...,
    base_url=apns.url, ca_file=apns.ca_file)``."""

    def __init__(self, client_ca_pem: bytes, directory: Path, *, idle_timeout: float = 5.0) -> None:
        self._client_ca_pem = client_ca_pem
        self._directory = directory
        self._idle_timeout = idle_timeout  # an idle connection is closed after this long, as APNs does
        self.url = ""
        self.ca_file = ""  # the server certificate's CA, for the client to trust
        self.pushes: list[Push] = []
        self.refusals: list[Refusal] = []
        #: token hex → ``async fn(magic)``, called (as a task of its own) for each push accepted for it.
        self.on_push: dict[str, Callable[[str], Awaitable[None]]] = {}
        #: what the callbacks raised; re-raised when the stand-in stops.
        self.callback_errors: list[BaseException] = []
        self._scripts: defaultdict[str, deque[tuple[int, str]]] = defaultdict(deque)
        self._delays: dict[str, float] = {}
        self._changed = asyncio.Condition()
        self._callbacks: set[asyncio.Task[None]] = set()
        self._stopping = asyncio.Event()
        self._started = asyncio.Event()
        self._server: asyncio.Task[None] | None = None

    def script(self, token: str, answers: Sequence[int | tuple[int, str]], *, delay: float = 0.0) -> None:
        """Answer the next pushes to ``token`` with these statuses in order (a status alone gets APNs' usual
        reason, :data:`REASONS`), then accept them again; every answer to it waits ``delay`` seconds."""
        script = self._scripts[token.lower()]
        script.clear()
        for answer in answers:
            script.append(answer if isinstance(answer, tuple) else (answer, REASONS.get(answer, "")))
        self._delays[token.lower()] = delay

    async def wait_for(self, count: int, timeout: float = 10.0, *, token: str | None = None) -> list[Push]:
        """The pushes accepted (to ``token``, if given) once there are at least ``count`` of them."""

        def seen() -> list[Push]:
            return [push for push in self.pushes if token is None or push.token == token.lower()]

        try:
            async with asyncio.timeout(timeout), self._changed:
                await self._changed.wait_for(lambda: len(seen()) >= count)
        except TimeoutError:
            raise AssertionError(
                f"{len(seen())} of {count} pushes within {timeout} s; refused: {self.refusals[-5:]}"
            ) from None
        return seen()

    # -- serving -------------------------------------------------------------------------------------------

    async def start(self) -> None:
        self._directory.mkdir(parents=True, exist_ok=True)
        tls = throwaway_ca_tls(self._directory)
        client_ca = self._directory / "client-ca.pem"
        client_ca.write_bytes(self._client_ca_pem)
        sock = socket.socket()
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        sock.bind(("127.0.0.1", 0))
        sock.listen(128)  # connections wait in the backlog until hypercorn accepts: no start-up race
        sock.setblocking(False)
        config = _Config(sock)
        config.certfile, config.keyfile = str(tls.cert_file), str(tls.key_file)
        config.ca_certs, config.verify_mode = str(client_ca), ssl.CERT_REQUIRED
        config.alpn_protocols = ["h2"]
        # Below the client's own bound on purpose: the client must keep to the limit a server announces
        # (APNs: "don't assume a specific number of streams").
        config.h2_max_concurrent_streams = 100
        config.graceful_timeout = 1.0
        config.keep_alive_timeout = self._idle_timeout
        config.accesslog, config.errorlog = None, _log
        config.create_ssl_context()
        self.url = f"https://127.0.0.1:{sock.getsockname()[1]}"
        self.ca_file = str(tls.ca_file)
        self._server = asyncio.create_task(serve(self._app, config, shutdown_trigger=self._stopping.wait))
        started = asyncio.create_task(self._started.wait())
        await asyncio.wait({self._server, started}, timeout=10, return_when=asyncio.FIRST_COMPLETED)
        started.cancel()
        if self._server.done():
            self._server.result()  # raises what stopped it
            raise RuntimeError("the APNs stand-in stopped at once")
        if not self._started.is_set():
            raise RuntimeError("the APNs stand-in did not start")

    async def stop(self) -> None:
        self._stopping.set()
        if self._server is not None:
            with contextlib.suppress(TimeoutError):  # wait_for cancels it then
                await asyncio.wait_for(self._server, 5)
        if self._callbacks:
            await asyncio.wait(self._callbacks, timeout=5)
            for task in self._callbacks:
                task.cancel()
        if self.callback_errors:
            raise self.callback_errors[0]

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.stop()

    async def _app(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] == "lifespan":
            while (message := await receive())["type"] != "lifespan.shutdown":
                await send({"type": "lifespan.startup.complete"})
                self._started.set()
            await send({"type": "lifespan.shutdown.complete"})
            return
        body = b""
        while True:
            message = await receive()
            body += message.get("body", b"")[: MAX_PAYLOAD + 1]
            if not message.get("more_body") or len(body) > MAX_PAYLOAD:
                break
        path = _DEVICE_PATH.fullmatch(scope["path"])
        token = path["token"].lower() if path else None
        try:
            token, push = self._check(scope, body)
            delay = self._delays.get(token, 0.0)
            if delay:
                await asyncio.sleep(delay)
            if self._scripts[token]:
                status, reason = self._scripts[token].popleft()
                if status != 200:
                    raise _Refused(status, reason)
        except _Refused as refused:
            self.refusals.append(Refusal(token, refused.status, refused.reason))
            answer: dict[str, Any] = {"reason": refused.reason}
            if refused.status == 410:
                answer["timestamp"] = int(time.time() * 1000)  # when the token stopped being valid
            await _respond(send, refused.status, json.dumps(answer).encode())
            return
        async with self._changed:
            self.pushes.append(push)
            self._changed.notify_all()
        callback = self.on_push.get(token)
        if callback is not None:
            task = asyncio.create_task(self._call(callback, push.magic))
            self._callbacks.add(task)
            task.add_done_callback(self._callbacks.discard)
        await _respond(send, 200, b"")

    async def _call(self, callback: Callable[[str], Awaitable[None]], magic: str) -> None:
        # Not awaited by the push's answer: APNs answers Corral before the device wakes, and a device that
        # checked in under Corral's open push request could deadlock with it.
        try:
            await callback(magic)
        except Exception as exc:
            _log.exception("an on_push callback failed")
            self.callback_errors.append(exc)

    def _check(self, scope: dict[str, Any], body: bytes) -> tuple[str, Push]:
        """The push's token and record, or the refusal APNs would answer (in about APNs' order)."""
        if scope["http_version"] != "2":
            raise _Refused(505, "HTTPVersionNotSupported")  # APNs never gets this far: its ALPN is h2 only
        if scope["method"] != "POST":
            raise _Refused(405, "MethodNotAllowed")
        path = _DEVICE_PATH.fullmatch(scope["path"])
        if path is None:
            raise _Refused(404, "BadPath")
        token = path["token"].lower()
        if not token:
            raise _Refused(400, "MissingDeviceToken")
        if not _TOKEN.fullmatch(token):
            raise _Refused(400, "BadDeviceToken")
        headers: defaultdict[str, list[str]] = defaultdict(list)
        for name, value in scope["headers"]:
            headers[name.decode("latin-1").lower()].append(value.decode("latin-1"))
        if any(len(values) > 1 for name, values in headers.items() if name.startswith("apns-")):
            raise _Refused(400, "DuplicateHeaders")
        peer = _PEER_CERTIFICATE.get()
        if peer is None:
            raise _Refused(403, "MissingProviderToken")
        topic = headers.get("apns-topic", [""])[0]
        if not topic:
            raise _Refused(400, "MissingTopic")
        if topic != _uid(peer):
            raise _Refused(400, "TopicDisallowed")  # the certificate is not for this topic
        if headers.get("apns-push-type") != ["mdm"]:
            raise _Refused(400, "InvalidPushType")
        if headers.get("apns-priority", ["10"])[0] not in {"1", "5", "10"}:
            raise _Refused(400, "BadPriority")
        if not headers.get("apns-expiration", ["0"])[0].isdigit():
            raise _Refused(400, "BadExpirationDate")
        if not body:
            raise _Refused(400, "PayloadEmpty")
        if len(body) > MAX_PAYLOAD:
            raise _Refused(413, "PayloadTooLarge")
        try:
            payload = json.loads(body)
        except ValueError:
            payload = None
        if not (isinstance(payload, dict) and payload.keys() == {"mdm"} and isinstance(payload["mdm"], str)):
            # APNs documents no reason for this (a device ignores an MDM push without its PushMagic); the
            # stand-in refuses it so that a wrong payload fails the test that sent it.
            raise _Refused(400, "BadPayload")
        client = tuple(scope["client"])
        return token, Push(token, topic, payload["mdm"], scope["http_version"], client, time.monotonic())


def _uid(der: bytes) -> str | None:
    values = x509.load_der_x509_certificate(der).subject.get_attributes_for_oid(NameOID.USER_ID)
    value = values[0].value if values else None
    return value if isinstance(value, str) else None


async def _respond(send: Any, status: int, body: bytes) -> None:
    apns_id = str(uuid.uuid4()).upper()
    headers = [(b"apns-id", apns_id.encode()), (b"apns-unique-id", str(uuid.uuid4()).encode())]
    if body:
        headers += [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})
