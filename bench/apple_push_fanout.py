"""APNs fan-out: one change wakes 10,000 Apple devices; queued, sent and acknowledged, against floors measured
in the same run.

    .venv/bin/python bench/apple_push_fanout.py [--devices 10000] [--change wake|assignment]
                                                [--standin-max-requests 1000] [--json out.json] [--keep]

``corral serve --http`` (no embedded worker: it only serves the API, and its push hub LISTENs as in
production), ``corral worker`` in a process of its own (periodic jobs off, so its CPU is the pushes'), and
the test suite's APNs stand-in in this process (HTTP/2 over TLS, the push certificate as client
certificate, APNs' checks; it answers ``200`` to every well-formed push). The push certificate is requested,
"signed by Apple" and uploaded through the API. The devices are rows made directly (a Device and an
AppleEnrollment each, as Authenticate and TokenUpdate leave them: a 32-byte token, a PushMagic, the
certificate's topic); enrolling 10,000 over SCEP is not the point here.

The change:

- ``wake`` (default): ``push_service.wake_many`` of all of them in one transaction, what every command path
  and the assignment engine's version listener call (one ``pg_notify`` per device on the agents' wake
  channel, one ``apple_push_queue`` row per Apple device, the ``apple.push`` job deferred);
- ``assignment``: a real one, an iOS compliance policy assigned to all devices through the API: the
  assignment engine moves every device's desired-state version and its listener wakes them (up to
  ``delivery.MAX_WAKE``, 20,000); the worker also gets the policy's evaluation jobs, as in production.

Measured: time to queued (the change's transaction committed with every row in ``apple_push_queue``), time
until the stand-in has every push (sent), pushes/s, until the queue is empty (APNs' 200 applied to every row
and enrollment: acknowledged), the worker's, the server's and PostgreSQL's CPU. Floors, same run:

- F_apns: Corral's APNs client alone (``ApnsClient.push_many``, the same HTTP/2 connection settings and
  concurrency, the same batches of 1,000) pushing as many devices to the same stand-in from a process of its
  own, no database: the transport's and the stand-in's limit. Measured before and after the fan-out.
- F_bulk: ``INSERT … SELECT`` of the same devices into a table shaped like ``apple_push_queue`` (no foreign
  key), and pg_notify x N: the same ``pg_notify`` of every device alone; median of three each.

The stand-in runs on hypercorn, which closes an HTTP/2 connection (GOAWAY) after 1,000 requests by default,
as the test suite's stand-in does: ``--standin-max-requests`` sets that limit (a large one measures pushes on
one connection; the default shows what a connection closed under a batch costs).

Uses CORRAL_DATABASE_URL's server or a throwaway embedded PostgreSQL; loopback only; bounded in time.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import secrets
import ssl
import statistics
import sys
import tempfile
import time
import uuid
from collections import Counter
from pathlib import Path
from typing import Any

import httpx
from apple_common import (
    ApnsStandin,
    apple_ca_pem,
    apple_env,
    apple_issues,
    pgdata_parent,
    removed_at_exit,
    set_up_push_certificate,
    start_worker,
    tree,
)
from common import CpuMeter, cpu_seconds, database
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.x509.oid import NameOID
from hypercorn.config import Config as HypercornConfig
from push_common import admin_token, start_corral
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from corral.apple import push as apple_push
from corral.apple.apns import ApnsClient
from corral.kit.db import create_engine, create_sessionmaker
from corral.kit.time import utcnow
from corral.models import AppleEnrollment, Device, ManagementChannel, Ownership, Platform
from corral.push.service import push_service

Sessionmaker = async_sessionmaker[AsyncSession]


def ms(seconds: float) -> str:
    return f"{seconds * 1000:,.1f} ms"


# ------------------------------------------------------------------------------------------ the fleet
async def add_phones(maker: Sessionmaker, topic: str, count: int) -> dict[uuid.UUID, str]:
    """Enrolled iPhones as Authenticate and TokenUpdate leave them; their push tokens (hex) by device id."""
    now = utcnow()
    tokens: dict[uuid.UUID, str] = {}
    for start in range(0, count, 2000):
        ids = [uuid.uuid4() for _ in range(min(2000, count - start))]
        async with maker() as session:
            session.add_all(
                Device(
                    id=device_id,
                    name=f"iPhone-{device_id.hex[:6]}",
                    serial_number=device_id.hex[:12].upper(),
                    platform=Platform.ios,
                    ownership=Ownership.company,
                    management_channel=ManagementChannel.apple_mdm,
                    enrolled_at=now,
                )
                for device_id in ids
            )
            await session.flush()
            for device_id in ids:
                token = secrets.token_bytes(32)
                tokens[device_id] = token.hex()
                session.add(
                    AppleEnrollment(
                        device_id=device_id,
                        udid=secrets.token_hex(20),
                        topic=topic,
                        profile_identifier="com.corral.enroll.bench",
                        push_token=token,
                        push_magic=str(uuid.uuid4()).upper(),
                        authenticated_at=now,
                        first_token_update_at=now,
                        push_state="ok",
                    )
                )
            await session.commit()
    return tokens


# ------------------------------------------------------------------------------------------ floors
def floor_credentials(topic: str, work: Path) -> tuple[Path, Path]:
    """A push certificate of the floor's own for the same topic (its key in a file: the floor is not
    Corral)."""
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    csr = (
        x509.CertificateSigningRequestBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "floor")]))
        .sign(key, hashes.SHA256())
    )
    cert_path, key_path = work / "floor-cert.pem", work / "floor-key.pem"
    cert_path.write_text(apple_issues(csr.public_bytes(serialization.Encoding.PEM).decode(), topic))
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
    )
    return cert_path, key_path


async def floor_sender(args: argparse.Namespace) -> None:
    """F_apns, in a process of its own: ApnsClient.push_many of ``--devices`` pushes in batches of
    apple.push's size, after one push that opens the connection. Prints its figures as JSON."""
    client = ApnsClient(
        Path(args.floor_cert).read_bytes(),
        Path(args.floor_key).read_bytes(),
        base_url=args.floor_url,
        ca_file=args.floor_ca,
        concurrency=args.push_concurrency,
    )
    magic = str(uuid.uuid4()).upper()
    async with client:
        await client.push(secrets.token_bytes(32), args.floor_topic, magic)
        items = [(index, secrets.token_bytes(32), args.floor_topic, magic) for index in range(args.devices)]
        cpu, started = time.process_time(), time.perf_counter()
        statuses: Counter[int] = Counter()
        for start in range(0, len(items), apple_push.BATCH):
            results = await client.push_many(items[start : start + apple_push.BATCH])
            statuses.update(result.status for result in results.values())
        seconds = time.perf_counter() - started
    print(json.dumps({"seconds": seconds, "cpu": time.process_time() - cpu, "statuses": dict(statuses)}))


async def f_apns(args: argparse.Namespace, apns: ApnsStandin, topic: str, work: Path) -> dict[str, Any]:
    cert, key = floor_credentials(topic, work)
    before = len(apns.pushes)
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        __file__,
        "--floor-sender",
        "--devices",
        str(args.devices),
        "--push-concurrency",
        str(args.push_concurrency),
        "--floor-url",
        apns.url,
        "--floor-ca",
        apns.ca_file,
        "--floor-cert",
        str(cert),
        "--floor-key",
        str(key),
        "--floor-topic",
        topic,
        stdout=asyncio.subprocess.PIPE,
    )
    mine = cpu_seconds(os.getpid())
    out, _ = await asyncio.wait_for(process.communicate(), args.timeout)
    result: dict[str, Any] = json.loads(out.decode().strip().splitlines()[-1])
    result["standin_cpu"] = cpu_seconds(os.getpid()) - mine
    result["received"] = len(apns.pushes) - before
    result["rate"] = args.devices / result["seconds"]
    return result


async def median_seconds(runs: int, setup: Any, run: Any) -> float:
    times = []
    for _ in range(runs):
        await setup()
        started = time.perf_counter()
        await run()
        times.append(time.perf_counter() - started)
    return statistics.median(times)


async def f_bulk(maker: Sessionmaker, ids: list[uuid.UUID]) -> tuple[float, float]:
    """INSERT … SELECT of the devices into a table shaped like apple_push_queue, and their pg_notify alone."""
    async with maker() as session:
        await session.execute(
            text(
                "CREATE TABLE queue_floor (device_id uuid PRIMARY KEY, due_at timestamptz NOT NULL, "
                "attempts smallint NOT NULL DEFAULT 0, reason varchar(32) NOT NULL, "
                "enqueued_at timestamptz NOT NULL, last_error varchar(256))"
            )
        )
        await session.execute(text("CREATE INDEX ON queue_floor (due_at)"))
        await session.commit()

    async def truncate() -> None:
        async with maker() as session:
            await session.execute(text("TRUNCATE queue_floor"))
            await session.commit()

    async def insert() -> None:
        async with maker() as session:
            await session.execute(
                text(
                    "INSERT INTO queue_floor (device_id, due_at, reason, enqueued_at, attempts) "
                    "SELECT device_id, now(), 'floor', now(), 0 FROM apple_enrollments "
                    "WHERE device_id = ANY(CAST(:ids AS uuid[])) ORDER BY device_id"
                ),
                {"ids": ids},
            )
            await session.commit()

    async def nothing() -> None:
        return None

    async def notify() -> None:
        async with maker() as session:
            await session.execute(
                text("SELECT pg_notify(:channel, payload) FROM unnest(CAST(:payloads AS text[])) AS payload"),
                {"channel": "bench_floor", "payloads": [f"{device_id}:floor" for device_id in ids]},
            )
            await session.commit()

    bulk = await median_seconds(3, truncate, insert)
    notified = await median_seconds(3, nothing, notify)
    async with maker() as session:
        await session.execute(text("DROP TABLE queue_floor"))
        await session.commit()
    return bulk, notified


# ------------------------------------------------------------------------------------------ the change
async def queue_count(maker: Sessionmaker) -> int:
    async with maker() as session:
        return int(await session.scalar(text("SELECT count(*) FROM apple_push_queue")) or 0)


async def change_by_wake(maker: Sessionmaker, ids: list[uuid.UUID]) -> tuple[float, int]:
    """wake_many of every device in one transaction: seconds until committed (the count of the queued rows,
    read inside the transaction, left out of the time), rows queued."""
    started = time.perf_counter()
    async with maker() as session:
        await push_service.wake_many(session, ids, "bench")
        statement = time.perf_counter() - started
        queued = int(await session.scalar(text("SELECT count(*) FROM apple_push_queue")) or 0)
        committing = time.perf_counter()
        await session.commit()
        return statement + time.perf_counter() - committing, queued


async def change_by_assignment(
    client: httpx.AsyncClient, base_url: str, api_token: str, maker: Sessionmaker
) -> tuple[float, int]:
    """An iOS compliance policy assigned to all devices through the API: seconds until the API answered
    (committed), rows in the queue then (some may already be sent)."""
    headers = {"Authorization": f"Bearer {api_token}"}
    created = await client.post(
        f"{base_url}/api/v1/compliance-policies",
        headers=headers,
        json={"name": "bench iOS policy", "platform": "ios", "settings": {"os.min_version": "17.0"}},
    )
    assert created.status_code == 201, created.text
    started = time.perf_counter()
    assigned = await client.put(
        f"{base_url}/api/v1/compliance-policies/{created.json()['id']}/assignments",
        headers=headers,
        json={"assignments": [{"target": "all_devices"}]},
    )
    seconds = time.perf_counter() - started
    assert assigned.status_code == 200, assigned.text
    return seconds, await queue_count(maker)


# ------------------------------------------------------------------------------------------ the run
def quiet_cancellations(loop: asyncio.AbstractEventLoop, context: dict[str, Any]) -> None:
    """The stand-in's connections cancelled, or closed under it, are not worth a traceback."""
    if not isinstance(context.get("exception"), asyncio.CancelledError | ssl.SSLError | ConnectionError):
        loop.default_exception_handler(context)


async def run(args: argparse.Namespace) -> dict[str, Any]:
    removed = removed_at_exit()
    db = await database("corral_bench_apple_fanout")
    work = Path(tempfile.mkdtemp(prefix="corral-bench-apple-fanout-"))
    removed += pgdata_parent(db) + ([] if args.keep else [work])
    api_token = await asyncio.to_thread(admin_token, db.url, work)
    engine = create_engine(db.url, pool_size=2, max_overflow=0)
    maker = create_sessionmaker(engine)
    report: dict[str, Any] = {
        "args": {k: v for k, v in vars(args).items() if not k.startswith("floor")},
        "tree": tree(),
        "started": time.strftime("%Y-%m-%d %H:%M:%S"),
    }
    print(f"Corral at {report['tree']}, {report['started']}", flush=True)
    HypercornConfig.keep_alive_max_requests = args.standin_max_requests
    asyncio.get_running_loop().set_exception_handler(quiet_cancellations)
    try:
        async with ApnsStandin(apple_ca_pem(), work / "apns", idle_timeout=600) as apns:
            extra = apple_env(apns) | {"CORRAL_APPLE_PUSH_CONCURRENCY": str(args.push_concurrency)}
            corral = start_corral(db.url, work, CORRAL_EMBEDDED_WORKER="false", **extra)
            worker = None
            try:
                async with httpx.AsyncClient(timeout=120) as client:
                    topic = await set_up_push_certificate(client, corral.url, api_token)
                    started = time.perf_counter()
                    tokens = await add_phones(maker, topic, args.devices)
                    [warm_id] = list(await add_phones(maker, topic, 1))
                    print(
                        f"{len(tokens):,} devices made in {time.perf_counter() - started:.1f} s", flush=True
                    )
                    ids = sorted(tokens)

                    bulk, notified = await f_bulk(maker, ids)
                    print(
                        f"F_bulk ({len(ids):,} queue rows) {ms(bulk)}; "
                        f"pg_notify x {len(ids):,} {ms(notified)}"
                    )
                    floors = [await f_apns(args, apns, topic, work)]
                    print(f"F_apns (before) {floors[0]}", flush=True)

                    worker = start_worker(
                        db.url, work / "data", extra | {"CORRAL_LOG_LEVEL": "INFO"}, work / "worker.log"
                    )
                    # Warm-up: the worker running and its HTTP/2 connection to the stand-in open.
                    before = len(apns.pushes)
                    async with maker() as session:
                        await push_service.wake_many(session, [warm_id], "warm-up")
                        await session.commit()
                    await apns.wait_for(before + 1, timeout=60)
                    while await queue_count(maker):
                        await asyncio.sleep(0.1)
                    await asyncio.sleep(1)

                    report |= await fan_out(args, client, corral, worker, db, maker, apns, tokens, api_token)
                    floors.append(await f_apns(args, apns, topic, work))
                    print(f"F_apns (after) {floors[1]}", flush=True)
                    runs = [
                        line.split("apple.push: ", 1)[1]
                        for line in (work / "worker.log").read_text().splitlines()
                        if "apple.push: " in line
                    ]
                    report["apple_push_runs"] = runs
            finally:
                if worker is not None:
                    worker.stop()
                corral.stop()
    finally:
        await engine.dispose()
    fan = report["fan_out"]
    rate = statistics.mean(f["rate"] for f in floors)
    floor_cpu = statistics.mean(f["cpu"] / args.devices for f in floors)
    report["floors"] = {"f_bulk_s": bulk, "f_notify_n_s": notified, "f_apns": floors}
    print()
    print(
        f"Fan-out to {args.devices:,} Apple devices ({args.change}), push concurrency {args.push_concurrency}"
    )
    rates = ", ".join(f"{f['rate']:,.0f}" for f in floors)
    standin_cpu = statistics.mean(f["standin_cpu"] for f in floors) / args.devices
    print(
        f"  floors: F_bulk {ms(bulk)} + pg_notify x N {ms(notified)};  F_apns {rate:,.0f} pushes/s (mean of"
    )
    print(
        f"          {rates}), client CPU {floor_cpu * 1e3:.3f} ms/push, "
        f"stand-in CPU {standin_cpu * 1e3:.3f} ms/push"
    )
    print(
        f"  queued:   {ms(fan['queued_s'])} ({fan['queued_rows']:,} rows) = "
        f"{fan['queued_s'] / (bulk + notified):.1f} x (F_bulk + pg_notify x N)"
    )
    print(
        f"  sent:     first push after {ms(fan['first_push_s'])}, every device's after "
        f"{fan['all_sent_s']:.2f} s ({fan['pushes']:,} devices) → {fan['pushes_per_s']:,.0f} pushes/s from "
        f"the change = {fan['pushes_per_s'] / rate:.2f} x F_apns ({fan['sending_per_s']:,.0f}/s from the "
        f"first push = {fan['sending_per_s'] / rate:.2f} x)"
    )
    print(
        f"  acknowledged: queue empty after {fan['settled_s']:.2f} s; stand-in answered 200 to "
        f"{fan['accepted']:,}, refused {fan['refused']} {fan['refusals']}; "
        f"distinct tokens {fan['distinct_tokens']:,}, "
        f"duplicates {fan['duplicates']}, missing {fan['missing']}; enrollments pushed (ok, last_push_at "
        f"set) {fan['enrollments_ok']:,}"
    )
    print(
        f"  CPU: worker {fan['worker_cpu_s']:.2f} s "
        f"({fan['worker_cpu_s'] / args.devices * 1e3:.3f} ms/push = "
        f"{fan['worker_cpu_s'] / args.devices / floor_cpu:.1f} x F_apns's client), server "
        f"{fan['server_cpu_s']:.2f} s, PostgreSQL {fan['database_cpu_s']:.2f} s, this process (stand-in) "
        f"{fan['standin_cpu_s']:.2f} s"
    )
    for line in report["apple_push_runs"]:
        print(f"  worker: apple.push: {line}")
    return report


async def fan_out(
    args: argparse.Namespace,
    client: httpx.AsyncClient,
    corral: Any,
    worker: Any,
    db: Any,
    maker: Sessionmaker,
    apns: ApnsStandin,
    tokens: dict[uuid.UUID, str],
    api_token: str,
) -> dict[str, Any]:
    meter = CpuMeter(corral.pid, db.admin_url)
    before = len(apns.pushes)
    refused_before = len(apns.refusals)
    wall = utcnow()
    cpu = (
        cpu_seconds(worker.pid),
        cpu_seconds(corral.pid),
        await meter.database_cpu(),
        cpu_seconds(os.getpid()),
    )
    started = time.monotonic()
    if args.change == "wake":
        queued_s, queued_rows = await change_by_wake(maker, sorted(tokens))
    else:
        queued_s, queued_rows = await change_by_assignment(client, corral.url, api_token, maker)
    print(f"queued {queued_rows:,} in {ms(queued_s)}", flush=True)
    wanted = set(tokens.values())
    deadline = started + args.timeout
    seen: set[str] = set()
    scanned = before
    while len(seen) < len(wanted) and time.monotonic() < deadline:
        await asyncio.sleep(0.05)
        pushes = apns.pushes[scanned:]
        scanned += len(pushes)
        seen.update(p.token for p in pushes if p.token in wanted)
    while await queue_count(maker) and time.monotonic() < deadline:
        await asyncio.sleep(0.1)
    settled = time.monotonic() - started
    ours = [p for p in apns.pushes[before:] if p.token in wanted]
    firsts: dict[str, float] = {}
    for push in ours:
        firsts.setdefault(push.token, push.at)  # each device's first push (a resent one is a duplicate)
    worker_cpu = cpu_seconds(worker.pid) - cpu[0]
    server_cpu = cpu_seconds(corral.pid) - cpu[1]
    database_cpu = await meter.database_cpu() - cpu[2]
    standin_cpu = cpu_seconds(os.getpid()) - cpu[3]
    async with maker() as session:
        ok = await session.scalar(
            text(
                "SELECT count(*) FROM apple_enrollments WHERE push_state = 'ok' AND last_push_at >= :t "
                "AND device_id = ANY(CAST(:ids AS uuid[]))"
            ),
            {"t": wall, "ids": list(tokens)},
        )
    pushed = Counter(p.token for p in ours)
    first = min(firsts.values(), default=started) - started
    last = max(firsts.values(), default=started) - started
    fan = {
        "queued_s": queued_s,
        "queued_rows": queued_rows,
        "first_push_s": first,
        "all_sent_s": last,
        "pushes": len(firsts),
        "pushes_per_s": len(firsts) / max(last, 1e-9),
        "sending_per_s": len(firsts) / max(last - first, 1e-9),
        "settled_s": settled,
        "accepted": len(ours),
        "refused": len(apns.refusals) - refused_before,
        "refusals": dict(Counter(f"{r.status} {r.reason}" for r in apns.refusals[refused_before:])),
        "distinct_tokens": len(pushed),
        "duplicates": sum(n - 1 for n in pushed.values()),
        "missing": len(wanted - set(pushed)),
        "enrollments_ok": int(ok or 0),
        "worker_cpu_s": worker_cpu,
        "server_cpu_s": server_cpu,
        "database_cpu_s": database_cpu,
        "standin_cpu_s": standin_cpu,
    }
    return {"fan_out": fan}


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--devices", type=int, default=10_000)
    parser.add_argument("--change", choices=("wake", "assignment"), default="wake")
    parser.add_argument(
        "--push-concurrency", type=int, default=256, help="CORRAL_APPLE_PUSH_CONCURRENCY (its default: 256)"
    )
    parser.add_argument(
        "--standin-max-requests",
        type=int,
        default=1000,
        help="requests the stand-in (hypercorn) serves on one connection before closing it with GOAWAY "
        "(hypercorn's default, the test suite's stand-in: 1000)",
    )
    parser.add_argument("--timeout", type=float, default=240)
    parser.add_argument("--json", type=Path, help="also write the figures here")
    parser.add_argument(
        "--keep", action="store_true", help="keep the work directory (server and worker logs)"
    )
    # The F_apns sender's own arguments (it is this script, run again in a process of its own).
    parser.add_argument("--floor-sender", action="store_true", help=argparse.SUPPRESS)
    for name in ("url", "ca", "cert", "key", "topic"):
        parser.add_argument(f"--floor-{name}", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.floor_sender:
        asyncio.run(floor_sender(args))
        return
    report = asyncio.run(run(args))
    if args.json:
        args.json.write_text(json.dumps(report, indent=2, default=str))


if __name__ == "__main__":
    main()
