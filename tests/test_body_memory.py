"""Request bodies over their limit cost the server no memory: a real `corral serve` process receives 64 MiB
bodies, chunked and with a declared length, on every route family, and its peak resident memory (VmHWM) stays
where it was. Before the limits, a 256 MiB chunked enrollment took one process from 173 to 1,485 MiB."""

from __future__ import annotations

import asyncio
import re
import select
import signal
import socket
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO

import httpx
import pytest
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from tests.conftest import Factory, bearer, count_rows
from tests.live import free_port
from tests.push.conftest import enroll_on
from tests.scim.helpers import make_connection
from tests.test_cli import CORRAL, env_for

MiB = 1024 * 1024
HUGE = 64 * MiB
PIECE = 256 * 1024


@dataclass
class Served:
    url: str
    port: int
    process: subprocess.Popen[str]
    log_path: Path

    def peak_rss(self) -> int:
        """The process's peak resident set size so far (VmHWM), in bytes."""
        status = Path(f"/proc/{self.process.pid}/status").read_text()
        match = re.search(r"^VmHWM:\s+(\d+) kB", status, re.MULTILINE)
        assert match, status
        return int(match.group(1)) * 1024


@pytest.fixture
def served(db_url: str, tmp_path: Path) -> Iterator[Served]:
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    env = env_for(db_url, tmp_path, CORRAL_BASE_URL=url, CORRAL_EMBEDDED_WORKER="false")
    log_path = tmp_path / "serve.log"
    log: IO[str] = log_path.open("w")
    process = subprocess.Popen(
        [*CORRAL, "serve", "--http", "--port", str(port)],
        env=env,
        text=True,
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    try:
        deadline = time.monotonic() + 45
        while True:
            if process.poll() is not None:
                raise AssertionError(f"serve exited ({process.returncode}):\n{log_path.read_text()}")
            try:
                if httpx.get(f"{url}/healthz", timeout=2).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            if time.monotonic() > deadline:
                raise AssertionError(f"serve did not become healthy:\n{log_path.read_text()}")
            time.sleep(0.2)
        yield Served(url, port, process, log_path)
    finally:
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        log.close()


@dataclass
class Sent:
    status: int
    headers: dict[str, str]
    sent: int


def post_large(port: int, path: str, headers: dict[str, str], *, total: int, chunked: bool) -> Sent:
    """POST ``total`` bytes over a plain socket, chunked or with a declared Content-Length, until the body
    ends or the server answers: it may answer (and hang up) long before the body ends."""
    head = [f"POST {path} HTTP/1.1", f"Host: 127.0.0.1:{port}", *(f"{k}: {v}" for k, v in headers.items())]
    head.append("Transfer-Encoding: chunked" if chunked else f"Content-Length: {total}")
    piece = b" " * PIECE
    frame = b"%x\r\n%s\r\n" % (len(piece), piece) if chunked else piece
    sent = 0
    with socket.create_connection(("127.0.0.1", port), timeout=60) as sock:
        sock.sendall(("\r\n".join(head) + "\r\n\r\n").encode())
        try:
            while sent < total and not select.select([sock], [], [], 0)[0]:  # nothing answered yet
                sock.sendall(frame)
                sent += len(piece)
            if chunked and sent == total:
                sock.sendall(b"0\r\n\r\n")
        except (BrokenPipeError, ConnectionResetError):
            pass  # the server answered and closed the connection; its answer is still to be read
        raw = b""
        while b"\r\n\r\n" not in raw:
            received = sock.recv(65536)
            assert received, f"no answer: {raw!r}"
            raw += received
    status_line, *lines = raw.split(b"\r\n\r\n")[0].decode("latin-1").split("\r\n")
    fields = dict(line.split(": ", 1) for line in lines if ": " in line)
    return Sent(int(status_line.split(" ")[1]), {k.lower(): v for k, v in fields.items()}, sent)


async def test_bodies_over_the_limit_leave_the_servers_memory_flat(
    served: Served, factory: Factory, sessionmaker: async_sessionmaker[AsyncSession]
) -> None:
    admin = await factory.admin("Global administrator")
    scim = await make_connection(sessionmaker)
    async with httpx.AsyncClient(base_url=served.url, timeout=30) as client:
        device = await enroll_on(client, admin, served.url)
        page = await client.get("/portal/sign-in")
        form_token = re.search(r'name="form_token" value="([^"]+)"', page.text)
        assert form_token
        signed_in = await client.post(
            "/portal/sign-in",
            data={"username": admin.email, "password": admin.password, "form_token": form_token.group(1)},
        )
        assert signed_in.status_code == 303, signed_in.text
        cookie = "; ".join(f"{name}={value}" for name, value in client.cookies.items())
    json_type = {"Content-Type": "application/json"}
    form_type = {"Content-Type": "application/x-www-form-urlencoded"}
    checkin_headers = dict(device.signed_headers("POST", "/device/v1/checkin", b"{}"))
    # (what, path, headers, status for a chunked body, status for a declared length)
    cases = [
        ("device enrollment (public)", "/device/v1/enroll", json_type, 413, 413),
        ("device check-in (signed)", "/device/v1/checkin", checkin_headers, 413, 413),
        # Anonymous: refused before its body is read, so a chunked body never reaches the limit.
        ("admin API, anonymous", "/api/v1/users", json_type, 401, 413),
        ("admin API, token", "/api/v1/users", {**json_type, **bearer(admin.token or "")}, 413, 413),
        ("SCIM", "/scim/v2/Users", scim.headers, 413, 413),
        ("portal sign-in form (public)", "/portal/sign-in", form_type, 413, 413),
        # No X-CSRF-Token header: the guard looks for the token in the form, reading the (limited) body.
        ("portal form, signed in", "/portal/scope-tags", {**form_type, "Cookie": cookie}, 413, 413),
    ]
    users, tags = await count_rows(sessionmaker, "users"), await count_rows(sessionmaker, "scope_tags")

    async def round_of(total: int) -> list[tuple[str, bool, Sent]]:
        results = []
        for what, path, headers, _chunked_status, _declared_status in cases:
            for chunked in (True, False):
                sent = await asyncio.to_thread(
                    post_large, served.port, path, headers, total=total, chunked=chunked
                )
                results.append((what, chunked, sent))
        return results

    await round_of(8 * MiB)  # warm up: first requests of each kind load templates, code paths, buffers
    before = served.peak_rss()
    for what, chunked, result in await round_of(HUGE):
        expected = next(c[3] if chunked else c[4] for c in cases if c[0] == what)
        kind = "chunked" if chunked else "declared"
        assert result.status == expected, f"{what}, {kind}: {result.status}"
        # The server stopped reading and hung up: the client could not deliver the body.
        assert result.sent < HUGE, f"{what}, {kind}: the server read all {HUGE} bytes"
        if result.status == 413:
            assert result.headers.get("connection") == "close", f"{what}, {kind}"
    grown = served.peak_rss() - before
    assert grown < 8 * MiB, f"peak RSS grew by {grown / MiB:.1f} MiB (before: {before / MiB:.0f} MiB)"
    assert await count_rows(sessionmaker, "users") == users
    assert await count_rows(sessionmaker, "scope_tags") == tags
