"""What saving an identity connection (and signing in through one) fetches, and from where: a malformed
issuer is a 422, never a 500; non-public addresses are refused unless CORRAL_OIDC_ALLOW_PRIVATE_ISSUERS
allows them; the address connected to is the address checked (DNS rebinding); every fetch failure reads the
same, so saving a connection cannot probe which hosts and ports answer. Real HTTP over loopback."""

from __future__ import annotations

import asyncio
import json
import socket
import ssl
import uuid
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi import FastAPI
from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from corral.identity import oidc
from corral.kit import outbound
from corral.models import IdentityConnection
from corral.pki import certs
from corral.rbac.roles import GLOBAL_ADMINISTRATOR
from tests.conftest import Admin, Factory, csrf_of, make_settings, new_client, running_app, sign_in
from tests.identity.conftest import CLIENT_ID, CLIENT_SECRET
from tests.peers.idp_server import Idp

CONNECTIONS = "/api/v1/identity-connections"
FETCH_FAILED = "its discovery document could not be fetched"


@dataclass
class Peer:
    """A scripted HTTP(S) peer on loopback: what it was asked, and the port it listens on."""

    port: int
    heads: list[bytes] = field(default_factory=list)


Answer = Callable[[bytes, int], bytes | None]  # the request head, the port → the raw reply (None: silence)


@asynccontextmanager
async def peer(answer: Answer, *, tls: ssl.SSLContext | None = None) -> AsyncIterator[Peer]:
    stop = asyncio.Event()
    state = Peer(0)

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            head = await reader.readuntil(b"\r\n\r\n")
            state.heads.append(head)
            reply = answer(head, state.port)
            if reply is None:
                await stop.wait()
            else:
                writer.write(reply)
                await writer.drain()
        except (OSError, asyncio.IncompleteReadError, asyncio.LimitOverrunError, ssl.SSLError):
            pass
        finally:
            writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", 0, ssl=tls)
    state.port = server.sockets[0].getsockname()[1]
    try:
        async with server:
            yield state
    finally:
        stop.set()


def reply(status: str, body: bytes = b"", content_type: str = "application/json", **headers: str) -> bytes:
    extra = "".join(f"{name.replace('_', '-')}: {value}\r\n" for name, value in headers.items())
    return (
        f"HTTP/1.1 {status}\r\nContent-Type: {content_type}\r\nContent-Length: {len(body)}\r\n{extra}"
        "Connection: close\r\n\r\n"
    ).encode() + body


def discovery(issuer: str) -> bytes:
    document = {
        "issuer": issuer,
        "authorization_endpoint": f"{issuer}/auth",
        "token_endpoint": f"{issuer}/token",
        "jwks_uri": f"{issuer}/jwks",
    }
    return reply("200 OK", json.dumps(document).encode())


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def save(client: httpx.AsyncClient, admin: Admin, issuer: str) -> httpx.Response:
    body = {"name": f"IdP {uuid.uuid4().hex[:6]}", "issuer": issuer, "client_id": "c", "client_secret": "s"}
    return await client.post(CONNECTIONS, json=body, headers=admin.headers)


async def connection_count(sessionmaker: async_sessionmaker[AsyncSession]) -> int:
    async with sessionmaker() as session:
        return int(await session.scalar(select(func.count()).select_from(IdentityConnection)) or 0)


class Resolver:
    """Stands in for DNS on the running loop (Corral's check and httpx's own connection alike): names in
    ``answers`` get the next of their answers (the last one repeats); every other name resolves as usual."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch, answers: dict[str, list[str]]) -> None:
        self.answers = answers
        self.calls: list[str] = []
        loop = asyncio.get_running_loop()
        self._real = loop.getaddrinfo
        monkeypatch.setattr(loop, "getaddrinfo", self.getaddrinfo)

    async def getaddrinfo(self, host: Any, port: Any, *args: Any, **kwargs: Any) -> Any:
        name = host.decode() if isinstance(host, bytes) else host
        if name not in self.answers:
            return await self._real(host, port, *args, **kwargs)
        self.calls.append(name)
        queue = self.answers[name]
        addresses = queue.pop(0) if len(queue) > 1 else queue[0]
        return [
            (socket.AF_INET6 if ":" in a else socket.AF_INET, socket.SOCK_STREAM, 6, "", (a, int(port or 0)))
            for a in addresses.split(",")
        ]


# ------------------------------------------------------------------------------------------- the issuer URL
@pytest.mark.parametrize(
    "issuer",
    [
        "https://xn--",
        "https://xn--/tenant",
        "https://login.example.com:99999",
        "https://admin:secret@login.example.com",
        "https://login.example.com/?tenant=1",
        "https://login.example.com/#top",
        "https://-login.example.com",
        "https://login_1.example.com",
    ],
)
async def test_a_malformed_issuer_is_a_422_on_create_and_update_and_nothing_changes(
    client: httpx.AsyncClient,
    factory: Factory,
    idp: Idp,
    sessionmaker: async_sessionmaker[AsyncSession],
    issuer: str,
) -> None:
    admin = await factory.admin(GLOBAL_ADMINISTRATOR.name)
    created = await save(client, admin, idp.issuer)
    assert created.status_code == 201, created.text
    response = await save(client, admin, issuer)
    assert response.status_code == 422, response.text
    assert "issuer" in response.text
    patched = await client.patch(
        f"{CONNECTIONS}/{created.json()['id']}", json={"issuer": issuer}, headers=admin.headers
    )
    assert patched.status_code == 422, patched.text
    assert await connection_count(sessionmaker) == 1
    after = await client.get(f"{CONNECTIONS}/{created.json()['id']}", headers=admin.headers)
    assert after.json()["issuer"] == idp.issuer


async def test_a_malformed_issuer_in_the_admin_center_form_is_a_422_page(
    client: httpx.AsyncClient, factory: Factory
) -> None:
    admin = await factory.admin(GLOBAL_ADMINISTRATOR.name, token=False)
    assert (await sign_in(client, admin.email)).status_code == 303
    page = await client.get("/portal/identity-connections")
    form = {
        "csrf_token": csrf_of(page.text),
        "name": "Broken",
        "issuer": "https://xn--",
        "client_id": "c",
        "client_secret": "s",
    }
    response = await client.post("/portal/identity-connections", data=form)
    assert response.status_code == 422 and "not a valid URL" in response.text


# ------------------------------------------------------------------------------------------- addresses
@pytest.fixture
async def strict_app(tmp_path: Path, db_url: str) -> AsyncIterator[FastAPI]:
    """An application with the default: no private issuers."""
    settings = make_settings(tmp_path / "strict", db_url)
    assert settings.oidc_allow_private_issuers is False
    async with running_app(settings, db_url) as application:
        yield application


async def test_loopback_private_and_link_local_issuers_are_refused_by_default_without_a_request(
    strict_app: FastAPI, factory: Factory, idp: Idp, sessionmaker: async_sessionmaker[AsyncSession]
) -> None:
    admin = await factory.admin(GLOBAL_ADMINISTRATOR.name)
    async with peer(lambda _head, port: discovery(f"http://127.0.0.1:{port}")) as listening:
        p = listening.port
        issuers = [
            idp.issuer,  # a real, working provider, on loopback
            f"http://127.0.0.1:{p}",
            f"http://localhost:{p}",
            f"http://[::1]:{p}",
            f"http://[::ffff:127.0.0.1]:{p}",
            f"http://[::ffff:7f00:1]:{p}",
            f"http://0.0.0.0:{p}",
            f"http://127.1:{p}",
            f"http://2130706433:{p}",
            "http://169.254.169.254",  # cloud metadata
            "http://[fe80::1]",
            "http://10.0.0.1",
            "http://172.16.5.4",
            "http://192.168.1.1",
            "http://100.64.0.1",
            "http://[fd00::1]",
            "http://224.0.0.1",
            "http://[2002:7f00:1::1]",  # 6to4 around 127.0.0.1
        ]
        async with new_client(strict_app) as client:
            details = set()
            for issuer in issuers:
                response = await save(client, admin, issuer)
                assert response.status_code == 422, (issuer, response.text)
                details.add(response.json()["detail"].replace(issuer, "<issuer>"))
        assert listening.heads == []  # refused before any connection
    assert len(details) == 1 and FETCH_FAILED in details.pop()
    assert await connection_count(sessionmaker) == 0


async def test_a_name_with_one_private_address_among_public_ones_is_refused(
    strict_app: FastAPI, factory: Factory, monkeypatch: pytest.MonkeyPatch
) -> None:
    admin = await factory.admin(GLOBAL_ADMINISTRATOR.name)
    async with peer(lambda _head, port: discovery(f"http://mixed.example:{port}")) as listening:
        resolver = Resolver(monkeypatch, {"mixed.example": ["8.8.8.8,127.0.0.1"]})
        async with new_client(strict_app) as client:
            response = await save(client, admin, f"http://mixed.example:{listening.port}")
        assert response.status_code == 422 and FETCH_FAILED in response.json()["detail"]
        assert resolver.calls == ["mixed.example"] and listening.heads == []


async def test_the_connection_goes_to_the_address_that_was_checked_not_a_second_dns_answer(
    strict_app: FastAPI, factory: Factory, monkeypatch: pytest.MonkeyPatch
) -> None:
    """DNS rebinding: the name first answers an address the check accepts (127.0.0.2 passes for public
    here; nothing listens there), then the internal one where the peer listens. Corral connects to what it
    checked, so the peer never hears from it; a second lookup at connect time would have reached it."""
    admin = await factory.admin(GLOBAL_ADMINISTRATOR.name)
    monkeypatch.setattr(outbound, "is_public", lambda address: str(address) == "127.0.0.2")
    async with peer(lambda _head, port: discovery(f"http://rebind.example:{port}")) as listening:
        resolver = Resolver(monkeypatch, {"rebind.example": ["127.0.0.2", "127.0.0.1"]})
        async with new_client(strict_app) as client:
            response = await save(client, admin, f"http://rebind.example:{listening.port}")
        assert response.status_code == 422, response.text
        assert resolver.calls == ["rebind.example"] and listening.heads == []


async def test_allowed_private_issuers_keep_the_host_name_for_the_request(
    client: httpx.AsyncClient, factory: Factory, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With CORRAL_OIDC_ALLOW_PRIVATE_ISSUERS (this package's settings): the name resolves once, the
    request goes to that address and still names the host (Host header), and the provider is saved."""
    admin = await factory.admin(GLOBAL_ADMINISTRATOR.name)
    async with peer(lambda _head, port: discovery(f"http://idp.internal.example:{port}")) as listening:
        resolver = Resolver(monkeypatch, {"idp.internal.example": ["127.0.0.1"]})
        response = await save(client, admin, f"http://idp.internal.example:{listening.port}")
        assert response.status_code == 201, response.text
        assert resolver.calls == ["idp.internal.example"]
        (head,) = listening.heads
        assert head.startswith(b"GET /.well-known/openid-configuration HTTP/1.1\r\n")
        assert f"host: idp.internal.example:{listening.port}\r\n".encode() in head.lower()


async def test_tls_to_a_checked_address_still_verifies_the_certificate_against_the_host_name(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The connection goes to an IP address, but the certificate is checked for the name (SNI)."""
    now = datetime.now(UTC)
    ca_cert, ca_key = certs.build_ca("Issuer fetch test CA", now)
    (tmp_path / "ca.pem").write_bytes(certs.cert_pem(ca_cert))
    monkeypatch.setenv("SSL_CERT_FILE", str(tmp_path / "ca.pem"))
    for name, served_for, works in (
        ("idp.example", "idp.example", True),
        ("idp.example", "other.example", False),
    ):
        cert, key = certs.issue_server_certificate(ca_cert, ca_key, [served_for], now)
        (tmp_path / "server.pem").write_bytes(certs.cert_pem(cert))
        (tmp_path / "server.key").write_bytes(certs.key_pem(key))
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        context.load_cert_chain(tmp_path / "server.pem", tmp_path / "server.key")
        answer: Answer = lambda _head, port, name=name: discovery(f"https://{name}:{port}")  # noqa: E731
        async with peer(answer, tls=context) as listening:
            Resolver(monkeypatch, {name: ["127.0.0.1"]})
            issuer = f"https://{name}:{listening.port}"
            if works:
                metadata = await oidc.discover(issuer, allow_private=True, fresh=True)
                assert metadata.issuer == issuer and len(listening.heads) == 1
            else:
                with pytest.raises(oidc.FetchFailed):
                    await oidc.discover(issuer, allow_private=True, fresh=True)
                assert listening.heads == []  # the handshake failed: no request was sent


# ------------------------------------------------------------------------------------------- one answer
async def test_every_way_a_fetch_fails_gets_the_same_answer(
    client: httpx.AsyncClient,
    factory: Factory,
    idp: Idp,
    monkeypatch: pytest.MonkeyPatch,
    sessionmaker: async_sessionmaker[AsyncSession],
) -> None:
    """Whether nothing listens, something that is not HTTP answers, or an HTTP server answers anything but
    a discovery document (an error, HTML, a redirect — even to a working provider —, too much, nothing in
    time): one message, which names neither the status nor the error."""
    monkeypatch.setattr(outbound, "TIMEOUT", httpx.Timeout(0.5, connect=0.5))
    admin = await factory.admin(GLOBAL_ADMINISTRATOR.name)
    where = f"{idp.issuer}/.well-known/openid-configuration"
    answers: dict[str, Answer] = {
        "not found": lambda _h, _p: reply("404 Not Found", b'{"error": "no"}'),
        "server error": lambda _h, _p: reply("500 Internal Server Error"),
        "html": lambda _h, _p: reply("200 OK", b"<html>Welcome</html>", "text/html"),
        "a JSON list": lambda _h, _p: reply("200 OK", b"[1, 2]"),
        "deep JSON": lambda _h, _p: reply("200 OK", b"[" * 100_000),
        "redirect": lambda _h, _p: reply("302 Found", Location=where),
        "not HTTP": lambda _h, _p: b"SSH-2.0-OpenSSH_9.2p1\r\n",
        "too large": lambda _h, p: reply(
            "200 OK", json.dumps({"issuer": f"http://127.0.0.1:{p}", "x": "y" * 2_000_000}).encode()
        ),
        "silence": lambda _h, _p: None,
    }
    details = {}
    for label, answer in answers.items():
        async with peer(answer) as listening:
            issuer = f"http://127.0.0.1:{listening.port}"
            response = await save(client, admin, issuer)
            assert response.status_code == 422, (label, response.text)
            assert len(listening.heads) == 1, label  # it was asked, once (no redirect followed)
            details[label] = response.json()["detail"].replace(issuer, "<issuer>")
    closed = f"http://127.0.0.1:{free_port()}"
    response = await save(client, admin, closed)
    assert response.status_code == 422
    details["nothing listening"] = response.json()["detail"].replace(closed, "<issuer>")
    assert len(set(details.values())) == 1, details
    assert FETCH_FAILED in details["nothing listening"]
    assert await connection_count(sessionmaker) == 0


# ------------------------------------------------------------------------------------------- sign-in fetches
async def test_signing_in_fetches_through_the_same_guard(
    client: httpx.AsyncClient, factory: Factory, idp: Idp, strict_app: FastAPI
) -> None:
    """A connection saved where private issuers are allowed, used by an application where they are not:
    the sign-in's discovery is refused like the save's would be, with a page, not an error."""
    admin = await factory.admin(GLOBAL_ADMINISTRATOR.name)
    created = await save(client, admin, idp.issuer)
    assert created.status_code == 201, created.text
    async with new_client(strict_app) as browser:
        response = await browser.get(f"/portal/sign-in/oidc/{created.json()['id']}")
    assert response.status_code == 502 and "could not be fetched" in response.text


async def test_keys_and_the_token_endpoint_are_fetched_through_the_same_guard() -> None:
    """The discovery document names the other endpoints: they are checked like the issuer."""
    async with peer(lambda _head, _port: reply("200 OK", b'{"keys": []}')) as listening:
        inside = f"http://127.0.0.1:{listening.port}"
        metadata = oidc.Metadata(
            issuer="https://idp.example",
            authorization_endpoint="https://idp.example/auth",
            token_endpoint=f"{inside}/token",
            jwks_uri=f"{inside}/jwks",
            algorithms=("RS256",),
            iss_parameter_supported=True,
        )
        with pytest.raises(oidc.FetchFailed, match="signing keys"):
            await oidc.keys(metadata, fresh=True)
        with pytest.raises(oidc.FetchFailed, match="token endpoint"):
            await oidc.exchange_code(
                metadata,
                client_id=CLIENT_ID,
                client_secret=CLIENT_SECRET,
                redirect_uri="https://testserver/auth/oidc/callback",
                code="code",
                code_verifier="v" * 43,
            )
        assert listening.heads == []
        with pytest.raises(oidc.OidcError, match="cannot be read"):  # allowed: fetched (an empty key set)
            await oidc.keys(metadata, allow_private=True, fresh=True)
        assert len(listening.heads) == 1
