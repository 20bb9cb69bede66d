"""TLS pinning against a real local HTTPS server whose certificate comes from a throwaway CA: the agent talks
to it when pinned to that CA's fingerprint and refuses (fail closed) when pinned to anything else."""

from __future__ import annotations

import ssl
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import pytest
from corral_agent import Agent
from corral_agent.errors import PinningError
from corral_agent.transport import create_http_client, fetch_pinned_ca, pem_fingerprint, ssl_context

from tests.agent.conftest import INVENTORY
from tests.agent.fake_corral import TOKEN, FakeCorral, fingerprint, issue, make_ca, pem


@dataclass
class TlsServer:
    url: str
    ca_pem: str
    ca_fingerprint: str
    fake: FakeCorral


def _handler(fake: FakeCorral) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def _handle(self) -> None:
            body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
            if self.path == "/hello":
                response = httpx.Response(200, text="hello")
            else:
                request = httpx.Request(
                    self.command, fake.base_url + self.path, headers=list(self.headers.items()), content=body
                )
                response = fake(request)
                response.read()
            self.send_response(response.status_code)
            for name, value in response.headers.items():
                if name.lower() not in ("content-length", "transfer-encoding", "content-encoding"):
                    self.send_header(name, value)
            self.send_header("Content-Length", str(len(response.content)))
            self.end_headers()
            self.wfile.write(response.content)

        do_GET = do_POST = _handle

        def log_message(self, format: str, *args: Any) -> None:
            pass

    return Handler


@pytest.fixture
def tls_server(tmp_path: Path) -> Iterator[TlsServer]:
    ca_cert, ca_key = make_ca("Throwaway TLS CA")
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec

    server_key = ec.generate_private_key(ec.SECP256R1())
    server_cert = issue((ca_cert, ca_key), server_key.public_key(), "127.0.0.1", server_names=["127.0.0.1"])
    chain = tmp_path / "chain.pem"
    chain.write_text(pem(server_cert) + pem(ca_cert))  # like `corral serve --https`: the CA is in the chain
    key_file = tmp_path / "server.key"
    key_file.write_bytes(
        server_key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
    )
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(chain, key_file)

    fake = FakeCorral()
    server = ThreadingHTTPServer(("127.0.0.1", 0), _handler(fake))
    server.socket = context.wrap_socket(server.socket, server_side=True)
    server.daemon_threads = True
    fake.base_url = f"https://127.0.0.1:{server.server_address[1]}"
    thread = threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    try:
        yield TlsServer(fake.base_url, pem(ca_cert), fingerprint(ca_cert), fake)
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5)


def other_fingerprint() -> str:
    return fingerprint(make_ca("Another CA")[0])


async def test_fetching_the_pinned_ca_from_the_chain(tls_server: TlsServer) -> None:
    found = fetch_pinned_ca(tls_server.url, f"sha256:{tls_server.ca_fingerprint}")
    assert pem_fingerprint(found) == tls_server.ca_fingerprint
    with pytest.raises(PinningError, match="does not contain the pinned CA"):
        fetch_pinned_ca(tls_server.url, other_fingerprint())


async def test_connects_when_pinned_to_the_ca_and_refuses_another_ca(tls_server: TlsServer) -> None:
    async with create_http_client(pinned_ca_pem=tls_server.ca_pem) as client:
        response = await client.get(f"{tls_server.url}/hello")
        assert response.text == "hello"
    another = pem(make_ca("Another CA")[0])
    async with create_http_client(pinned_ca_pem=another) as client:
        with pytest.raises(httpx.ConnectError, match="CERTIFICATE_VERIFY_FAILED"):
            await client.get(f"{tls_server.url}/hello")
    # Without a pin, the system trust store: a private CA is not in it.
    async with create_http_client() as client:
        with pytest.raises(httpx.ConnectError, match="CERTIFICATE_VERIFY_FAILED"):
            await client.get(f"{tls_server.url}/hello")


def test_the_pinned_context_still_checks_the_host_name(tls_server: TlsServer) -> None:
    context = ssl_context(tls_server.ca_pem)
    assert context.check_hostname and context.verify_mode == ssl.CERT_REQUIRED


async def test_enrollment_and_checkin_over_pinned_tls(tls_server: TlsServer, tmp_path: Path) -> None:
    agent = Agent(tmp_path / "state", inventory=lambda: INVENTORY)
    url = f"{tls_server.url}/device/v1/enroll?token={TOKEN}&ca=sha256:{tls_server.ca_fingerprint}"
    state = await agent.enroll(url)
    assert state.tls_ca_fingerprint == tls_server.ca_fingerprint
    assert state.tls_ca_pem is not None and pem_fingerprint(state.tls_ca_pem) == tls_server.ca_fingerprint
    summary = await agent.checkin()
    assert summary.inventory == "accepted"
    assert tls_server.fake.signatures[-1]["keyid"] == state.certificate_fingerprint


async def test_enrollment_pinned_to_another_ca_is_refused_before_sending_anything(
    tls_server: TlsServer, tmp_path: Path
) -> None:
    agent = Agent(tmp_path / "state", inventory=lambda: INVENTORY)
    with pytest.raises(PinningError):
        await agent.enroll(tls_server.url, token=TOKEN, ca_fingerprint=other_fingerprint())
    assert tls_server.fake.requests == []  # the token never left the device
    assert not agent.enrolled


async def test_checkin_fails_closed_when_the_server_changes_ca(tls_server: TlsServer, tmp_path: Path) -> None:
    agent = Agent(tmp_path / "state", inventory=lambda: INVENTORY)
    await agent.enroll(tls_server.url, token=TOKEN, ca_fingerprint=tls_server.ca_fingerprint)
    state = agent.load_state()
    another = pem(make_ca("Another CA")[0])
    state.tls_ca_pem, state.tls_ca_fingerprint = another, pem_fingerprint(another)
    agent.store.save(state)
    with pytest.raises(PinningError, match="TLS verification"):
        await agent.checkin()
    # A pinned PEM that does not match the pinned fingerprint (tampered state) is refused too.
    state.tls_ca_pem = tls_server.ca_pem
    agent.store.save(state)
    with pytest.raises(Exception, match="does not match its fingerprint"):
        await agent.checkin()
