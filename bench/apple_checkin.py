"""S1-A and S3-A: Apple MDM check-ins and command round trips, against F_rt and F_notify in the same run.

    .venv/bin/python bench/apple_checkin.py [--devices 200] [--agents 200] [--seconds 6] [--locks 100]
                                            [--lock-rate 5] [--json out.json] [--profile DIR] [--keep]

One ``corral serve --http`` (no embedded worker), ``corral worker`` in a process of its own (periodic jobs
off), the test suite's APNs stand-in (HTTP/2 over TLS, the push certificate as client certificate) in this
process, and the floor app (bench/floor_app.py). The push certificate is requested, "signed by Apple" and
uploaded through the API. ``--devices`` simulated iPhones (corral.apple.simulator.AppleDevice) enroll
through the real flow: the signed profile, SCEP (an RSA-2048 key each, made ahead of time in a process
pool), Authenticate, TokenUpdate; each then answers the inventory queries Corral queues after enrollment,
so nothing is left for it. ``--agents`` agent devices enroll and check in once with their inventory, as in
bench/checkin_enroll.py.

S1-A, a steady Apple connect: ``PUT /apple/v1/connect`` with ``{"UDID", "Status": "Idle"}``, signed with
an ``Mdm-Signature`` (a detached CMS SignedData, RSA-2048 PKCS#1 v1.5, with a signing time) that the server
verifies (kit/cms.py), answered ``200`` with an empty body (nothing queued); next to it, the agents' steady
signed check-in (S1: inventory hash only, nothing pending). Each is measured closed-loop (32 connections:
throughput) and open-loop at ``--rate-fraction`` x F_rt offered (p50/p99 from each request's scheduled
start). Every request's signature is made before its phase (the device's work, not the server's: an
RSA-2048 CMS signature costs this process ~1.6 ms), each (device, signing second) once, so every request
is a fresh signature the server verifies and stores as a nonce. CPU per request: the Corral process and
the whole PostgreSQL cluster (bench/common.py: CpuMeter), compared with F_rt's; rows written per request
(pg_stat_user_tables, counted after the agents' batched last-seen flush and the statistics delay).

S3-A, a command round trip: an administrator locks an enrolled iPhone through the API (``202``), the
worker's ``apple.push`` job pushes over HTTP/2 to the stand-in, the stand-in's callback (the device woken)
connects (Idle), gets ``DeviceLock``, acknowledges it in its next connect, whose ``200`` comes after the
acknowledgement and the command's ``succeeded`` are committed. ``--locks`` distinct devices at
``--lock-rate`` per second. Compared with S3's target, 5 x F_notify p99 + one round trip (F_notify: a bare
LISTEN/NOTIFY round trip as bench/push_latency.py measures it; the round trip: a signed Idle connect, p50
of 200 sequential ones).

Uses CORRAL_DATABASE_URL's server or a throwaway embedded PostgreSQL; loopback only; bounded in time.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import os
import plistlib
import random
import signal
import sys
import tempfile
import time
from collections import defaultdict
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import asyncpg
import httpx
from apple_common import (
    ApnsStandin,
    PregeneratedKeys,
    apple_ca_pem,
    apple_env,
    pgdata_parent,
    removed_at_exit,
    rsa_keys,
    set_up_push_certificate,
    start_worker,
    tree,
)
from checkin_enroll import INVENTORY, INVENTORY_HASH, STATS_DELAY, db_writes, new_csr
from common import CpuMeter, LoadResult, cpu_seconds, database, load, load_at_rate, percentile, start_floor
from corral_agent.transport import RequestSigner
from push_common import admin_token, start_corral
from push_latency import f_notify

from corral.apple import plist, simulator
from corral.apple.simulator import AppleDevice
from corral.kit import cms
from corral.kit.db import asyncpg_dsn

CHECKIN_TYPE = "application/x-apple-aspen-mdm-checkin"
LAST_SEEN_FLUSH = 5.0


def ms(seconds: float) -> str:
    return f"{seconds * 1000:.1f} ms"


@dataclass
class Phase:
    """A load phase with its CPU: the server's (Corral or the floor), PostgreSQL's, this process's."""

    result: LoadResult
    generator_cpu: float = 0.0
    row_writes: int | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    def cpu_ms(self, which: str) -> float:
        value = {
            "server": self.result.server_cpu,
            "database": self.result.database_cpu,
            "generator": self.generator_cpu,
        }[which]
        return (value or 0.0) / max(self.result.requests, 1) * 1000

    def summary(self) -> dict[str, Any]:
        r = self.result
        return {
            "requests": r.requests,
            "errors": r.errors,
            "seconds": round(r.seconds, 2),
            "rate": round(r.rate, 1),
            "p50_ms": round(percentile(r.latencies, 50) * 1000, 1),
            "p99_ms": round(percentile(r.latencies, 99) * 1000, 1),
            "server_cpu_ms": round(self.cpu_ms("server"), 2),
            "database_cpu_ms": round(self.cpu_ms("database"), 2),
            "generator_cpu_ms": round(self.cpu_ms("generator"), 2),
            "row_writes_per_request": None
            if self.row_writes is None
            else round(self.row_writes / max(r.requests, 1), 2),
            **self.extra,
        }


async def measured(meter: CpuMeter, run: Awaitable[LoadResult]) -> Phase:
    mine = cpu_seconds(os.getpid())
    result = await meter.measure(run)
    return Phase(result, cpu_seconds(os.getpid()) - mine)


# ------------------------------------------------------------------------------------------ Apple devices
class AppleRequests:
    """Signed Idle connects made ahead of their phase. A signature's signing time has whole seconds and
    the server stores each signature once: each (device, second) is used once over the whole run, the
    seconds within the server's 5-minute window."""

    def __init__(self, phones: list[AppleDevice], url: str) -> None:
        self.phones, self.url = phones, url
        self.bodies = [
            plistlib.dumps({"UDID": p.udid, "Status": "Idle"}, fmt=plistlib.FMT_XML) for p in phones
        ]
        self.last_second: datetime | None = None
        self.busy = [asyncio.Lock() for _ in phones]

    def make(self, count: int) -> list[tuple[bytes, dict[str, str]]]:
        now = datetime.now(UTC).replace(microsecond=0)
        seconds = -(-count // len(self.phones))
        start = now - timedelta(seconds=seconds - 1)
        if self.last_second is not None and start <= self.last_second:
            start = self.last_second + timedelta(seconds=1)
        assert start + timedelta(seconds=seconds) < now + timedelta(seconds=240), (
            "too many requests per phase"
        )
        self.last_second = start + timedelta(seconds=seconds - 1)
        return [
            self.signed(index % len(self.phones), start + timedelta(seconds=index // len(self.phones)))
            for index in range(count)
        ]

    def signed(self, device: int, when: datetime) -> tuple[bytes, dict[str, str]]:
        phone, body = self.phones[device], self.bodies[device]
        assert phone.identity is not None
        der = cms.sign(body, phone.identity.certificate, phone.identity.key, detached=True, signing_time=when)
        return body, {"Content-Type": CHECKIN_TYPE, "Mdm-Signature": base64.b64encode(der).decode()}


def apple_call(
    client: httpx.AsyncClient,
    requests: AppleRequests,
    made: list[tuple[bytes, dict[str, str]]],
    tally: dict[str, int],
) -> Callable[[int], Awaitable[bool]]:
    async def call(index: int) -> bool:
        device = index % len(requests.phones)
        if index < len(made):
            body, headers = made[index]
        else:  # the phase outran what was made for it: signed now (counted)
            tally["signed_live"] += 1
            body, headers = requests.signed(device, datetime.now(UTC))
        async with requests.busy[device]:  # a device's requests one at a time, as a device sends them
            response = await client.put(requests.url, content=body, headers=headers)
        if response.status_code != 200:
            tally[f"status_{response.status_code}"] += 1
            return False
        if response.content:
            tally["not_empty"] += 1
            return False
        return True

    return call


# ------------------------------------------------------------------------------------------ agents
class AgentRequests:
    """Signed steady check-ins made ahead of their phase (a fresh nonce each)."""

    def __init__(self, client: httpx.AsyncClient, signers: list[RequestSigner], url: str) -> None:
        self.client, self.signers, self.url = client, signers, url
        self.body = json.dumps({"inventory_hash": INVENTORY_HASH}).encode()

    def make(self, count: int) -> list[httpx.Request]:
        made = []
        for index in range(count):
            request = self.client.build_request(
                "POST", self.url, content=self.body, headers={"content-type": "application/json"}
            )
            self.signers[index % len(self.signers)].sign(request)
            made.append(request)
        return made


def agent_call(
    requests: AgentRequests, made: list[httpx.Request], tally: dict[str, int]
) -> Callable[[int], Awaitable[bool]]:
    async def call(index: int) -> bool:
        if index < len(made):
            request = made[index]
        else:
            tally["signed_live"] += 1
            [request] = requests.make(1)
        response = await requests.client.send(request)
        if response.status_code != 200:
            tally[f"status_{response.status_code}"] += 1
            return False
        return True

    return call


async def enroll_agents(
    client: httpx.AsyncClient, base_url: str, token: str, count: int, concurrency: int = 8
) -> list[RequestSigner]:
    csrs = [new_csr() for _ in range(count)]
    signers: list[RequestSigner | None] = [None] * count
    pending = iter(range(count))

    async def worker() -> None:
        for index in pending:
            key, csr = csrs[index]
            response = await client.post(
                f"{base_url}/device/v1/enroll",
                json={
                    "token": token,
                    "csr": csr,
                    "device": {
                        "serial_number": f"AGENT{index:06d}",
                        "name": f"agent-{index}",
                        "platform": "linux",
                    },
                },
            )
            assert response.status_code == 201, response.text
            signer = RequestSigner(key, response.json()["certificate_fingerprint"])
            for _attempt in range(20):  # the first check-in carries the inventory; a 429 is retried
                request = client.build_request(
                    "POST",
                    f"{base_url}/device/v1/checkin",
                    content=json.dumps({"inventory": INVENTORY}).encode(),
                    headers={"content-type": "application/json"},
                )
                signer.sign(request)
                if (await client.send(request)).status_code == 200:
                    break
                await asyncio.sleep(0.5)
            else:
                raise RuntimeError("an agent's first check-in kept failing")
            signers[index] = signer

    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return [s for s in signers if s is not None]


# ------------------------------------------------------------------------------------------ S3-A
@dataclass
class Lock:
    device_id: str
    requested: float
    answered: float | None = None
    status: int | None = None
    pushed: float | None = None
    delivered: float | None = None
    acknowledged: float | None = None


class LockRun:
    def __init__(self, client: httpx.AsyncClient, phones: dict[str, AppleDevice]) -> None:
        self.client = client
        self.phones = phones  # push token hex → device
        self.locks: dict[str, Lock] = {}  # push token hex → its lock
        self.spurious = 0
        self.errors: list[str] = []

    def on_push(self, token: str) -> Callable[[str], Awaitable[None]]:
        async def woken(magic: str) -> None:
            pushed = time.monotonic()
            phone = self.phones[token]
            lock = self.locks.get(token)
            if lock is None or lock.pushed is not None or magic != phone.push_magic:
                self.spurious += 1
                await phone.connect_loop(self.client)
                return
            lock.pushed = pushed
            try:
                # What the device does when pushed: Idle, then its report on each command, until none is left.
                report: dict[str, Any] = {"Status": "Idle"}
                lock_uuid = None
                for _ in range(10):
                    response = await phone.connect(self.client, report)
                    if response.status_code != 200:
                        raise RuntimeError(f"connect: {response.status_code} {response.text[:200]}")
                    if lock_uuid is not None and report.get("CommandUUID") == lock_uuid:
                        lock.acknowledged = time.monotonic()  # committed before the answer
                    if not response.content:
                        return
                    command = plist.parse(response.content, max_bytes=1 << 20)
                    if command["Command"]["RequestType"] == "DeviceLock" and lock_uuid is None:
                        lock.delivered, lock_uuid = time.monotonic(), command["CommandUUID"]
                    report = phone.answer(command)
            except Exception as exc:
                self.errors.append(f"{phone.udid}: {exc!r}")

        return woken


async def lock_round_trips(
    client: httpx.AsyncClient,
    base_url: str,
    api_token: str,
    apns: ApnsStandin,
    phones: list[AppleDevice],
    device_ids: dict[str, str],
    locks: int,
    rate: float,
    drain_seconds: float,
) -> LockRun:
    by_token = {p.push_token.hex(): p for p in phones}
    run = LockRun(client, by_token)
    for token in by_token:
        apns.on_push[token] = run.on_push(token)
    targets = random.sample(phones, locks)

    async def issue(phone: AppleDevice) -> None:
        lock = Lock(device_ids[phone.udid], time.monotonic())
        run.locks[phone.push_token.hex()] = lock
        response = await client.post(
            f"{base_url}/api/v1/devices/{lock.device_id}/actions/lock",
            json={"params": {"message": "bench"}},
            headers={"Authorization": f"Bearer {api_token}"},
        )
        lock.answered, lock.status = time.monotonic(), response.status_code

    began = time.perf_counter()
    issuing = []
    for index, phone in enumerate(targets):
        delay = began + index / rate - time.perf_counter()
        if delay > 0:
            await asyncio.sleep(delay)
        issuing.append(asyncio.create_task(issue(phone)))
    await asyncio.gather(*issuing)
    deadline = time.monotonic() + drain_seconds
    while time.monotonic() < deadline and any(lock.acknowledged is None for lock in run.locks.values()):
        await asyncio.sleep(0.05)
    await asyncio.sleep(1)  # late or spurious pushes
    for token in by_token:
        apns.on_push.pop(token, None)
    return run


# ------------------------------------------------------------------------------------------ the run
async def profile(
    args: argparse.Namespace, pid: int, name: str, seconds: float | None = None
) -> asyncio.subprocess.Process | None:
    """With ``--profile DIR``: py-spy samples ``pid`` for the phase (raw stacks: DIR/name.txt). Its figures
    are then not the ones to report (sampling costs the server)."""
    if args.profile is None:
        return None
    args.profile.mkdir(parents=True, exist_ok=True)
    py_spy = Path(sys.executable).parent / "py-spy"
    return await asyncio.create_subprocess_exec(
        str(py_spy),
        "record",
        "--pid",
        str(pid),
        "--duration",
        str(int(seconds or args.seconds)),
        "--rate",
        "250",
        "--format",
        "raw",
        "--nonblocking",
        "--output",
        str(args.profile / f"{name}.txt"),
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.DEVNULL,
    )


async def wait_queue_empty(db_url: str, timeout: float = 60) -> None:
    conn = await asyncpg.connect(asyncpg_dsn(db_url))
    try:
        deadline = time.monotonic() + timeout
        while await conn.fetchval("SELECT count(*) FROM apple_push_queue"):
            if time.monotonic() > deadline:
                raise RuntimeError("the APNs queue did not drain")
            await asyncio.sleep(0.2)
    finally:
        await conn.close()


async def run(args: argparse.Namespace, keys: list[Any]) -> dict[str, Any]:
    removed = removed_at_exit()
    db = await database("corral_bench_apple")
    work = Path(tempfile.mkdtemp(prefix="corral-bench-apple-"))
    removed += pgdata_parent(db) + ([] if args.keep else [work])
    api_token = await asyncio.to_thread(admin_token, db.url, work)
    report: dict[str, Any] = {
        "args": vars(args),
        "tree": tree(),
        "started": time.strftime("%Y-%m-%d %H:%M:%S"),
    }
    print(f"Corral at {report['tree']}, {report['started']}", flush=True)
    async with ApnsStandin(apple_ca_pem(), work / "apns", idle_timeout=600) as apns:
        corral = start_corral(db.url, work, CORRAL_EMBEDDED_WORKER="false", **apple_env(apns))
        worker = start_worker(db.url, work / "data", apple_env(apns), work / "worker.log")
        floor = start_floor(db.url)
        try:
            report |= await scenario(
                args, keys, db, corral.url, corral.pid, floor, worker.pid, apns, api_token
            )
        finally:
            for server in (corral, worker):
                server.stop()
            floor.stop()
    return report


async def scenario(
    args: argparse.Namespace,
    keys: list[Any],
    db: Any,
    base_url: str,
    corral_pid: int,
    floor: Any,
    worker_pid: int,
    apns: ApnsStandin,
    api_token: str,
) -> dict[str, Any]:
    report: dict[str, Any] = {}
    headers = {"Authorization": f"Bearer {api_token}"}
    limits = httpx.Limits(max_connections=args.concurrency, max_keepalive_connections=args.concurrency)
    corral_cpu = CpuMeter(corral_pid, db.admin_url)
    floor_cpu = CpuMeter(floor.process.pid, db.admin_url)
    async with httpx.AsyncClient(limits=limits, timeout=30) as client:
        topic = await set_up_push_certificate(client, base_url, api_token)
        print(f"push certificate uploaded (topic {topic})", flush=True)

        # ---- enrollment: Apple devices through the profile, SCEP, Authenticate, TokenUpdate
        created = await client.post(
            f"{base_url}/api/v1/enrollment-tokens",
            headers=headers,
            json={"name": "bench iPhones", "platforms": ["ios"], "expires_in_days": 1},
        )
        assert created.status_code == 201, created.text
        profile_url = created.json()["apple_enrollment_url"]
        simulator.rsa = PregeneratedKeys(keys)  # type: ignore[assignment]
        phones = [AppleDevice("iphone", seed=f"bench-{index}") for index in range(args.devices)]
        pending = iter(phones)

        async def enroll_worker() -> None:
            for phone in pending:
                await phone.enroll(client, profile_url, None)

        server0, database0, started = (
            cpu_seconds(corral_pid),
            await corral_cpu.database_cpu(),
            time.perf_counter(),
        )
        await asyncio.gather(*(enroll_worker() for _ in range(args.enroll_concurrency)))
        enroll_seconds = time.perf_counter() - started
        enroll = {
            "devices": len(phones),
            "seconds": round(enroll_seconds, 1),
            "per_second": round(len(phones) / enroll_seconds, 1),
            "server_cpu_ms": round((cpu_seconds(corral_pid) - server0) / len(phones) * 1000, 1),
            "database_cpu_ms": round((await corral_cpu.database_cpu() - database0) / len(phones) * 1000, 1),
        }
        print(f"enrolled {len(phones)} iPhones: {enroll}", flush=True)
        # The inventory queries Corral queued at enrollment, answered (each device's first connect session).
        pending = iter(phones)
        handled: list[int] = []

        async def drain_worker() -> None:
            for phone in pending:
                handled.append(len(await phone.connect_loop(client)))

        server0, started = cpu_seconds(corral_pid), time.perf_counter()
        await asyncio.gather(*(drain_worker() for _ in range(args.enroll_concurrency)))
        enroll["inventory_commands_per_device"] = round(sum(handled) / len(phones), 1)
        enroll["inventory_seconds"] = round(time.perf_counter() - started, 1)
        enroll["inventory_server_cpu_ms_per_device"] = round(
            (cpu_seconds(corral_pid) - server0) / len(phones) * 1000, 1
        )
        report["apple_enrollment"] = enroll
        print(f"  inventory answered: {enroll}", flush=True)
        await wait_queue_empty(db.url)  # the enrollment's pushes sent

        agent_token = (
            await client.post(
                f"{base_url}/api/v1/enrollment-tokens",
                headers=headers,
                json={"name": "bench agents", "platforms": ["linux"], "expires_in_days": 1},
            )
        ).json()["token"]
        signers = await enroll_agents(client, base_url, agent_token, args.agents)
        print(f"enrolled {len(signers)} agents", flush=True)

        conn = await asyncpg.connect(asyncpg_dsn(db.url))
        try:
            device_ids = {
                r["udid"]: str(r["device_id"])
                for r in await conn.fetch("SELECT udid, device_id FROM apple_enrollments")
            }
        finally:
            await conn.close()

        connect_url = next(
            str(p["ServerURL"])
            for p in phones[0].profile["PayloadContent"]
            if p["PayloadType"] == "com.apple.mdm"
        )
        apple_requests = AppleRequests(phones, connect_url)
        agent_requests = AgentRequests(client, signers, f"{base_url}/device/v1/checkin")

        # ---- floors
        async def get(url: str) -> bool:
            return (await client.get(url)).status_code == 200

        rt_url = f"{floor.url}/rt"
        await load("warm-up", lambda i: get(rt_url), concurrency=args.concurrency, seconds=1)
        f_rt = await measured(
            floor_cpu,
            load(
                "F_rt (PK select)", lambda i: get(rt_url), concurrency=args.concurrency, seconds=args.seconds
            ),
        )
        print(f_rt.result.line(), flush=True)

        # ---- S1 and S1-A, closed loop
        phases: dict[str, Phase] = {"F_rt": f_rt}
        tallies: dict[str, dict[str, int]] = {}

        def tally(name: str) -> dict[str, int]:
            tallies[name] = defaultdict(int)
            return tallies[name]

        warm_agents = agent_requests.make(len(signers))
        await load(
            "warm-up",
            agent_call(agent_requests, warm_agents, tally("warm")),
            concurrency=args.concurrency,
            seconds=1,
        )
        warm_apple = apple_requests.make(2 * len(phones))
        await load(
            "warm-up",
            apple_call(client, apple_requests, warm_apple, tally("warm")),
            concurrency=args.concurrency,
            seconds=1,
        )
        await asyncio.sleep(LAST_SEEN_FLUSH + STATS_DELAY)

        budget = int(1.5 * f_rt.result.rate * args.seconds)
        for kind in ("agent", "apple"):
            name = f"{'S1 agent' if kind == 'agent' else 'S1-A Apple'} check-in, throughput"
            if kind == "agent":
                call = agent_call(agent_requests, agent_requests.make(budget), tally(name))
            else:
                call = apple_call(client, apple_requests, apple_requests.make(budget), tally(name))
            writes0, _ = await db_writes(db.url)
            spy = await profile(args, corral_pid, f"s1-{kind}")
            phase = await measured(
                corral_cpu, load(name, call, concurrency=args.concurrency, seconds=args.seconds)
            )
            if spy is not None:
                await spy.wait()
            await asyncio.sleep(LAST_SEEN_FLUSH + STATS_DELAY)
            phase.row_writes = (await db_writes(db.url))[0] - writes0
            phases[name] = phase
            print(phase.result.line(), f"(this process {phase.cpu_ms('generator'):.2f} ms)", flush=True)

        # ---- open loop at rate-fraction x F_rt offered
        rate = args.rate_fraction * f_rt.result.rate
        count = int(rate * args.seconds)
        for kind in ("agent", "apple"):
            name = f"{'S1 agent' if kind == 'agent' else 'S1-A Apple'} at {args.rate_fraction} x F_rt offered"
            if kind == "agent":
                call = agent_call(agent_requests, agent_requests.make(count), tally(name))
            else:
                call = apple_call(client, apple_requests, apple_requests.make(count), tally(name))
            phase = await measured(corral_cpu, load_at_rate(name, call, rate=rate, seconds=args.seconds))
            phase.extra["offered"] = round(rate, 1)
            phases[name] = phase
            print(phase.result.line(), flush=True)

        # ---- round trips, sequential (S3's "one round trip")
        round_trips: dict[str, list[float]] = {}
        for kind in ("agent", "apple"):
            if kind == "agent":
                call = agent_call(agent_requests, agent_requests.make(args.rt_samples), tally(f"RT {kind}"))
            else:
                call = apple_call(
                    client, apple_requests, apple_requests.make(args.rt_samples), tally(f"RT {kind}")
                )
            samples = []
            for index in range(args.rt_samples):
                began = time.perf_counter()
                assert await call(index)
                samples.append(time.perf_counter() - began)
            round_trips[kind] = samples

        # ---- S3-A
        notify = await f_notify(db.url, args.notify_samples)
        spies = [
            await profile(args, corral_pid, "s3-server", 600),
            await profile(args, worker_pid, "s3-worker", 600),
        ]
        server0, worker0, database0 = (
            cpu_seconds(corral_pid),
            cpu_seconds(worker_pid),
            await corral_cpu.database_cpu(),
        )
        lock_run = await lock_round_trips(
            client,
            base_url,
            api_token,
            apns,
            phones,
            device_ids,
            args.locks,
            args.lock_rate,
            args.drain_seconds,
        )
        for spy in spies:
            if spy is not None:
                spy.send_signal(signal.SIGINT)  # py-spy writes what it has
                await spy.wait()
        s3_cpu = {
            "server_cpu_ms_per_lock": round((cpu_seconds(corral_pid) - server0) / args.locks * 1000, 2),
            "worker_cpu_ms_per_lock": round((cpu_seconds(worker_pid) - worker0) / args.locks * 1000, 2),
            "database_cpu_ms_per_lock": round(
                (await corral_cpu.database_cpu() - database0) / args.locks * 1000, 2
            ),
        }
        conn = await asyncpg.connect(asyncpg_dsn(db.url))
        try:
            statuses = {
                r["status"]: r["n"]
                for r in await conn.fetch(
                    "SELECT status::text AS status, count(*) AS n FROM device_commands WHERE type = 'lock' "
                    "GROUP BY 1"
                )
            }
        finally:
            await conn.close()

    # ---- report
    f_rt_result = f_rt.result
    print()
    print(f"{'figure':<44} {'rate':>9}         latency")
    for name, phase in phases.items():
        r = phase.result
        print(
            f"{name:<44} {r.rate:9.1f} req/s   p50 {ms(percentile(r.latencies, 50)):>9}   "
            f"p99 {ms(percentile(r.latencies, 99)):>9}   errors {r.errors}   CPU/request: server "
            f"{phase.cpu_ms('server'):.2f} ms, PostgreSQL {phase.cpu_ms('database'):.2f} ms, "
            f"load generator {phase.cpu_ms('generator'):.2f} ms"
            + (
                ""
                if phase.row_writes is None
                else f", rows written {phase.row_writes / max(r.requests, 1):.2f}"
            )
        )
    print()
    f_server, f_database = f_rt.cpu_ms("server"), f_rt.cpu_ms("database")
    for name, phase in phases.items():
        if name == "F_rt":
            continue
        print(
            f"{name:<44} {phase.result.rate / f_rt_result.rate:5.2f} x F_rt's rate; server CPU "
            f"{phase.cpu_ms('server') / f_server:5.2f} x F_rt's, PostgreSQL CPU "
            f"{phase.cpu_ms('database') / f_database:5.2f} x"
        )
    for name, counts in tallies.items():
        if any(counts.values()) and name != "warm":
            print(f"  {name}: {dict(counts)}")
    agent_tp = phases["S1 agent check-in, throughput"]
    apple_tp = phases["S1-A Apple check-in, throughput"]
    print(
        "Apple connect / agent check-in: server CPU "
        f"{apple_tp.cpu_ms('server') / agent_tp.cpu_ms('server'):.2f} x, "
        f"PostgreSQL CPU {apple_tp.cpu_ms('database') / agent_tp.cpu_ms('database'):.2f} x, "
        f"throughput {apple_tp.result.rate / agent_tp.result.rate:.2f} x"
    )
    for kind, samples in round_trips.items():
        print(
            f"RT {kind:<6} (sequential, {len(samples)})   p50 {ms(percentile(samples, 50))}  "
            f"p99 {ms(percentile(samples, 99))}"
        )

    locks = list(lock_run.locks.values())
    to_push = [lk.pushed - lk.requested for lk in locks if lk.pushed is not None]
    to_202 = [lk.answered - lk.requested for lk in locks if lk.answered is not None]
    push_to_ack = [lk.acknowledged - lk.pushed for lk in locks if lk.acknowledged and lk.pushed]
    push_to_lock = [lk.delivered - lk.pushed for lk in locks if lk.delivered and lk.pushed]
    total = [lk.acknowledged - lk.requested for lk in locks if lk.acknowledged is not None]
    notify_p99 = percentile(notify, 99)
    rt_p50 = percentile(round_trips["apple"], 50)
    target = 5 * notify_p99 + rt_p50
    print()
    print(f"S3-A: {len(locks)} locks at {args.lock_rate}/s to {len(phones)} enrolled iPhones")
    print(f"  F_notify (bare LISTEN/NOTIFY)          p50 {ms(percentile(notify, 50))}  p99 {ms(notify_p99)}")
    for label, values in (
        ("API request → 202", to_202),
        ("API request → push at the stand-in", to_push),
        ("push → DeviceLock at the device", push_to_lock),
        ("push → acknowledgement stored", push_to_ack),
        ("API request → acknowledgement stored", total),
    ):
        print(
            f"  {label:<38} p50 {ms(percentile(values, 50))}  p99 {ms(percentile(values, 99))}  "
            f"({len(values)})"
        )
    verdict = "meets" if total and percentile(total, 99) <= target else "MISSES"
    print(f"  target: total p99 ≤ 5 x F_notify p99 + RT p50 (Apple Idle connect) = {ms(target)} → {verdict}")
    refused = sum(1 for lk in locks if lk.status != 202)
    print(
        f"  refused {refused}, not pushed {len(locks) - len(to_push)}, "
        f"not acknowledged {len(locks) - len(total)}, "
        f"spurious pushes {lock_run.spurious}, device errors {len(lock_run.errors)}; lock commands by status "
        f"{statuses}; CPU {s3_cpu}"
    )
    for error in lock_run.errors[:5]:
        print("   ", error)

    def dist(values: list[float]) -> dict[str, float]:
        return {
            "p50_ms": round(percentile(values, 50) * 1000, 1),
            "p99_ms": round(percentile(values, 99) * 1000, 1),
            "n": len(values),
        }

    report["phases"] = {name: phase.summary() for name, phase in phases.items()}
    report["errors_by_phase"] = {k: dict(v) for k, v in tallies.items() if any(v.values())}
    report["round_trips"] = {k: dist(v) for k, v in round_trips.items()}
    report["s3a"] = {
        "f_notify": dist(notify),
        "api_to_202": dist(to_202),
        "api_to_push": dist(to_push),
        "push_to_devicelock": dist(push_to_lock),
        "push_to_ack": dist(push_to_ack),
        "total": dist(total),
        "target_ms": round(target * 1000, 1),
        "refused": refused,
        "spurious": lock_run.spurious,
        "errors": lock_run.errors[:5],
        "statuses": statuses,
        **s3_cpu,
    }
    report["topic"] = topic
    return report


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--devices", type=int, default=200, help="simulated iPhones (enrolled over SCEP)")
    parser.add_argument("--agents", type=int, default=200)
    parser.add_argument("--seconds", type=float, default=6)
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--enroll-concurrency", type=int, default=4)
    parser.add_argument("--rate-fraction", type=float, default=0.5, help="open-loop phases offer this x F_rt")
    parser.add_argument("--rt-samples", type=int, default=200)
    parser.add_argument("--notify-samples", type=int, default=500)
    parser.add_argument("--locks", type=int, default=100)
    parser.add_argument("--lock-rate", type=float, default=5.0)
    parser.add_argument("--drain-seconds", type=float, default=30.0)
    parser.add_argument("--json", type=Path, help="also write the figures here")
    parser.add_argument(
        "--keep", action="store_true", help="keep the work directory (server and worker logs)"
    )
    parser.add_argument(
        "--profile",
        type=Path,
        help="py-spy the server (S1 phases, S3) and the worker (S3) into this directory",
    )
    args = parser.parse_args()
    assert args.locks <= args.devices, "one lock per device"
    started = time.perf_counter()
    keys = rsa_keys(args.devices)
    print(
        f"{len(keys)} RSA-2048 keys made in {time.perf_counter() - started:.1f} s (process pool)", flush=True
    )
    report = asyncio.run(run(args, keys))
    if args.json:
        args.json.write_text(json.dumps(report, indent=2, default=str))


if __name__ == "__main__":
    main()
