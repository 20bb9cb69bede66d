"""Pieces of the push benchmarks (push_latency.py, push_memory.py): a database, servers in subprocesses, a
fleet of enrolled simulated devices, a light raw-socket Server-Sent Events client, process RSS and CPU.

Everything runs on loopback. A device's event stream is one plain asyncio connection (no HTTP library), so
the load generator costs little next to the server it measures.
"""

from __future__ import annotations

import asyncio
import json
import os
import socket
import ssl
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager, suppress
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any
from urllib.parse import urlsplit

import asyncpg
import httpx
from corral_agent.transport import RequestSigner
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from corral.kit.db import asyncpg_dsn
from corral.kit.embedded import start_embedded
from corral.kit.migrations import upgrade

SECRET = "bench-secret-key-" + "p" * 40
EVENTS = "/device/v1/events"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def percentile(values: list[float], p: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(p / 100 * (len(ordered) - 1)))]


def ms(seconds: float) -> str:
    return f"{seconds * 1000:.1f} ms"


# ------------------------------------------------------------------------------------------------ database
def _with_database(url: str, name: str) -> str:
    head, sep, query = url.partition("?")
    head = head.rsplit("/", 1)[0] if head.count("/") > 2 else head
    return f"{head}/{name}{sep}{query}"


@asynccontextmanager
async def bench_database(name: str) -> AsyncIterator[str]:
    """A fresh migrated database on CORRAL_DATABASE_URL's server, or on a throwaway embedded PostgreSQL."""
    external = os.environ.get("CORRAL_DATABASE_URL")
    handle = None
    if external:
        admin_url = external
    else:
        root = Path(tempfile.mkdtemp(prefix="corral-bench-push-"))
        handle, admin_url = await asyncio.to_thread(start_embedded, root / "pgdata", throwaway=True)
    conn = await asyncpg.connect(asyncpg_dsn(admin_url))
    try:
        await conn.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")
        await conn.execute(f"CREATE DATABASE {name}")
    finally:
        await conn.close()
    url = _with_database(admin_url, name)
    try:
        await asyncio.to_thread(upgrade, url)
        yield url
    finally:
        conn = await asyncpg.connect(asyncpg_dsn(admin_url))
        try:
            await conn.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")
        finally:
            await conn.close()
        if handle is not None:
            handle.cleanup()


# ------------------------------------------------------------------------------------------------ servers
@dataclass
class Server:
    url: str
    process: subprocess.Popen[bytes]
    log: IO[bytes]

    @property
    def pid(self) -> int:
        return self.process.pid

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self.log.close()


def _wait_http(url: str, server: Server, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if server.process.poll() is not None:
            server.log.flush()
            raise RuntimeError(f"the server exited; see {server.log.name}")
        try:
            httpx.get(url, timeout=1, verify=False)  # noqa: S501 - only "is it up yet", on loopback
            return
        except httpx.HTTPError:
            time.sleep(0.2)
    raise RuntimeError(f"{url} did not answer")


def corral_env(db_url: str, base_url: str, data_dir: Path, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("CORRAL_")}
    env.update(
        {
            "CORRAL_DATABASE_URL": db_url,
            "CORRAL_BASE_URL": base_url,
            "CORRAL_DATA_DIR": str(data_dir),
            "CORRAL_SECRET_KEY": SECRET,
            "CORRAL_LOG_LEVEL": "WARNING",
            "CORRAL_LOG_JSON": "false",
        }
    )
    env.update(extra)
    return env


def start_corral(db_url: str, work: Path, *, https: bool = False, **extra_env: str) -> Server:
    """``corral serve --http`` (one process, as deployed behind a TLS proxy), or ``--https`` (its own CA's
    certificate: ``work/data/tls/ca.crt``)."""
    port = free_port()
    url = f"{'https' if https else 'http'}://127.0.0.1:{port}"
    work.mkdir(parents=True, exist_ok=True)
    log = (work / f"corral-{port}.log").open("wb")
    process = subprocess.Popen(
        [sys.executable, "-m", "corral.cli", "serve", "--https" if https else "--http", "--port", str(port)],
        env=corral_env(db_url, url, work / "data", **extra_env),
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    server = Server(url, process, log)
    _wait_http(f"{url}/healthz", server)
    return server


def start_app(module_app: str, work: Path, env: dict[str, str] | None = None, probe: str = "/") -> Server:
    """A bare ASGI app from bench/ under uvicorn, configured as ``corral serve`` runs uvicorn."""
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    work.mkdir(parents=True, exist_ok=True)
    log = (work / f"app-{port}.log").open("wb")
    code = (
        "import sys, uvicorn; sys.path.insert(0, sys.argv[1]); "
        "uvicorn.run(sys.argv[2], port=int(sys.argv[3]), log_config=None, proxy_headers=False, "
        "server_header=False, timeout_graceful_shutdown=15, access_log=False)"
    )
    process = subprocess.Popen(
        [sys.executable, "-c", code, str(Path(__file__).parent), module_app, str(port)],
        env={**os.environ, **(env or {})},
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    server = Server(url, process, log)
    _wait_http(url + probe, server)
    return server


def corral_cli(args: list[str], db_url: str, work: Path, stdin: str | None = None) -> str:
    done = subprocess.run(
        [sys.executable, "-m", "corral.cli", *args],
        input=stdin,
        capture_output=True,
        text=True,
        env=corral_env(db_url, "http://127.0.0.1", work / "data"),
        timeout=120,
        check=True,
    )
    return done.stdout.strip()


def admin_token(db_url: str, work: Path, role: str = "Global administrator") -> str:
    email = f"bench-{uuid.uuid4().hex[:8]}@example.com"
    corral_cli(
        ["admin", "create", "--email", email, "--role", role, "--password-stdin"],
        db_url,
        work,
        "a bench password that is long\n",
    )
    return corral_cli(["token", "create", "--email", email, "--name", "bench"], db_url, work)


# ------------------------------------------------------------------------------------------------ process
def rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise RuntimeError("no VmRSS")


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


# ------------------------------------------------------------------------------------------------ devices
@dataclass
class Device:
    device_id: str
    signer: RequestSigner


def _csr() -> tuple[ec.EllipticCurvePrivateKey, str]:
    key = ec.generate_private_key(ec.SECP256R1())
    csr = (
        x509.CertificateSigningRequestBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "bench")]))
        .sign(key, hashes.SHA256())
    )
    return key, csr.public_bytes(serialization.Encoding.PEM).decode()


async def enroll_fleet(
    base_url: str, admin: str, count: int, *, concurrency: int = 8, progress: bool = True
) -> list[Device]:
    """``count`` devices enrolled through the device protocol (one token, unlimited uses)."""
    headers = {"Authorization": f"Bearer {admin}"}
    async with httpx.AsyncClient(base_url=base_url, timeout=60) as client:
        created = await client.post(
            "/api/v1/enrollment-tokens",
            json={"name": "bench", "platforms": ["linux"], "ownership": "company"},
            headers=headers,
        )
        created.raise_for_status()
        token = created.json()["token"]
        devices: list[Device] = []
        counter = iter(range(count))
        started = time.perf_counter()

        async def worker() -> None:
            for index in counter:
                key, csr = _csr()
                body = {
                    "token": token,
                    "csr": csr,
                    "device": {
                        "serial_number": f"BENCH-{index:06d}",
                        "name": f"bench-{index}",
                        "platform": "linux",
                    },
                }
                response = await client.post("/device/v1/enroll", json=body)
                response.raise_for_status()
                data = response.json()
                devices.append(Device(data["device_id"], RequestSigner(key, data["certificate_fingerprint"])))
                if progress and len(devices) % 500 == 0:
                    print(f"  enrolled {len(devices)}/{count}", flush=True)

        await asyncio.gather(*(worker() for _ in range(concurrency)))
        if progress:
            elapsed = time.perf_counter() - started
            print(f"  enrolled {count} devices in {elapsed:.1f} s ({count / elapsed:.0f}/s)", flush=True)
        return devices


def signed_headers(device: Device, method: str, url: str, body: bytes | None = None) -> httpx.Headers:
    request = httpx.Request(method, url, content=body, headers={"Accept": "text/event-stream"})
    if body is not None:
        request.headers["Content-Type"] = "application/json"
    device.signer.sign(request)
    return request.headers


# ------------------------------------------------------------------------------------------------ SSE client
@dataclass
class Stream:
    """One open event stream over a raw connection (HTTP/1.1, chunked body)."""

    reader: asyncio.StreamReader
    writer: asyncio.StreamWriter
    on_event: Callable[[str, Any], None] | None = None
    events: list[tuple[float, str, Any]] = field(default_factory=list)
    ready: asyncio.Event = field(default_factory=asyncio.Event)
    task: asyncio.Task[None] | None = None

    async def _read(self) -> None:
        pending = b""
        with suppress(asyncio.IncompleteReadError, ConnectionError):
            while True:
                size_line = await self.reader.readline()
                if not size_line:
                    return
                size = int(size_line.strip() or b"0", 16)
                chunk = await self.reader.readexactly(size + 2)
                if size == 0:
                    return
                pending += chunk[:-2].replace(b"\r\n", b"\n")
                while b"\n\n" in pending:
                    block, pending = pending.split(b"\n\n", 1)
                    self._dispatch(block.decode())

    def _dispatch(self, block: str) -> None:
        name, data = "message", []
        for line in block.split("\n"):
            if line.startswith(":"):
                continue
            key, _, value = line.partition(": ")
            if key == "event":
                name = value
            elif key == "data":
                data.append(value)
        if not data:
            return
        parsed = json.loads("\n".join(data))
        self.events.append((time.perf_counter(), name, parsed))
        if name == "ready":
            self.ready.set()
        if self.on_event is not None:
            self.on_event(name, parsed)

    def close(self) -> None:
        if self.task is not None:
            self.task.cancel()
        self.writer.close()


async def open_stream(
    url: str,
    path: str = EVENTS,
    headers: httpx.Headers | None = None,
    on_event: Callable[[str, Any], None] | None = None,
    tls: ssl.SSLContext | None = None,
) -> Stream:
    parts = urlsplit(url)
    reader, writer = await asyncio.open_connection(parts.hostname, parts.port, ssl=tls)
    lines = [f"GET {path} HTTP/1.1", f"Host: {parts.netloc}"]
    for name, value in (headers or httpx.Headers()).items():
        if name.lower() != "host":
            lines.append(f"{name}: {value}")
    writer.write(("\r\n".join(lines) + "\r\n\r\n").encode())
    status = await reader.readline()
    if b" 200 " not in status:
        writer.close()
        raise RuntimeError(f"stream refused: {status!r}")
    while (await reader.readline()) not in (b"\r\n", b""):
        pass
    stream = Stream(reader, writer, on_event)
    stream.task = asyncio.create_task(stream._read())
    return stream


async def open_streams(
    count: int, opener: Callable[[int], Any], *, concurrency: int = 50, wait_ready: bool = True
) -> list[Stream]:
    """Open ``count`` streams, ``concurrency`` at a time; wait for their ``ready`` events."""
    streams: list[Stream | None] = [None] * count
    counter = iter(range(count))

    async def worker() -> None:
        for index in counter:
            streams[index] = await opener(index)
            if wait_ready:
                await asyncio.wait_for(streams[index].ready.wait(), 30)  # type: ignore[union-attr]

    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return [s for s in streams if s is not None]
