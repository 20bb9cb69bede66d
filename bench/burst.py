"""S2: a profile change reaching 100k devices, each woken within 60 s and fetching its desired state.

    .venv/bin/python bench/burst.py [--devices 100000] [--wake-seconds 60] [--connections 256] [--servers 1]
                                    [--kill-after SECONDS]

Target (../shared/reference/benchmarks.md): every fetch answered within 1.25 x devices / (0.5 x F_rt), with
no 5xx (429 with Retry-After is fine: the simulated devices come back after it with the agent's own jitter,
``corral_agent.transport.RetryPolicy``).

The fleet is generated set-based (devices and their certificates, one device key shared by all of them but one
certificate each, so each has its own identity for the server), a configuration profile is assigned to every
device through the API, then its settings are changed through the API: every device's desired-state version
moves. Each simulated device then wakes at a uniformly random moment within ``--wake-seconds`` (60 s scaled
to the fleet: the arrival rate of 100k devices in 60 s) and fetches ``GET /device/v1/desired-state``, signed
as the agent signs it (RFC 9421), over a pool of ``--connections`` keep-alive connections (more than the
server's admission places: overload reaches the server). F_rt is measured in the same run with the same
client. Reported: the drain time and its ratio to the target, the answers by status, the server's and
PostgreSQL's CPU per delivered document and the server's peak memory.

With ``--servers 2 --kill-after 30``, the last server process is killed (SIGKILL) 30 s into the burst; its
devices, on a connection error, go to a live one as they would behind a load balancer: every device must
still get the changed document, and no 5xx.

Uses CORRAL_DATABASE_URL's server or a throwaway embedded PostgreSQL; everything on loopback; bounded.
"""

from __future__ import annotations

import argparse
import asyncio
import random
import tempfile
import time
import uuid
from collections import Counter
from datetime import UTC, datetime, timedelta
from pathlib import Path

import asyncpg
import httpx
from common import (
    CpuMeter,
    admin_token,
    cpu_seconds,
    database,
    load,
    percentile,
    servers,
    start_corral,
    start_floor,
)
from corral_agent.transport import RequestSigner, RetryPolicy, parse_retry_after
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

PROFILE = {"ssh.permit_root_login": "no", "ssh.password_authentication": False}
CONNECTIONS_PER_POOL = 8
CHANGED = {"ssh.permit_root_login": "no", "ssh.password_authentication": True}


def certificates(count: int, key: ec.EllipticCurvePrivateKey) -> list[tuple[str, str, str]]:
    """(fingerprint, serial, PEM) of ``count`` certificates for the device key, from a throwaway issuer: a
    signed request is checked against the certificate stored for its keyid, not against a chain."""
    issuer_key = ec.generate_private_key(ec.SECP256R1())
    issuer = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "bench device CA")])
    public = key.public_key()
    now = datetime.now(UTC) - timedelta(hours=1)
    out = []
    for index in range(count):
        cert = (
            x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, f"burst-{index}")]))
            .issuer_name(issuer)
            .public_key(public)
            .serial_number(index + 1)
            .not_valid_before(now)
            .not_valid_after(now + timedelta(days=30))
            .sign(issuer_key, hashes.SHA256())
        )
        out.append(
            (
                cert.fingerprint(hashes.SHA256()).hex(),
                format(index + 1, "x"),
                cert.public_bytes(serialization.Encoding.PEM).decode(),
            )
        )
    return out


async def generate_fleet(url: str, count: int) -> list[RequestSigner]:
    """``count`` managed Linux devices, each with its own certificate; the signers to speak for them."""
    key = ec.generate_private_key(ec.SECP256R1())
    certs = await asyncio.to_thread(certificates, count, key)
    ids = [uuid.uuid4() for _ in range(count)]
    conn = await asyncpg.connect(url)
    try:
        async with conn.transaction():
            await conn.execute(
                """
                INSERT INTO devices (id, name, serial_number, platform, os_version, ownership,
                                     management_state, compliance_state, enrolled_at, inventory)
                SELECT id, 'burst-' || g, 'BURST' || g, 'linux', '12.7', 'company', 'managed', 'unknown',
                       now(), '{}'::jsonb
                FROM unnest($1::uuid[]) WITH ORDINALITY AS t(id, g)
                """,
                ids,
            )
            now = datetime.now(UTC)
            await conn.copy_records_to_table(
                "device_certificates",
                columns=[
                    "id",
                    "device_id",
                    "fingerprint_sha256",
                    "serial_number",
                    "certificate_pem",
                    "issuer_fingerprint_sha256",
                    "not_before",
                    "not_after",
                    "created_at",
                ],
                records=[
                    (
                        uuid.uuid4(),
                        device_id,
                        fp,
                        serial,
                        pem,
                        "0" * 64,
                        now - timedelta(hours=1),
                        now + timedelta(days=30),
                        now,
                    )
                    for device_id, (fp, serial, pem) in zip(ids, certs, strict=True)
                ],
            )
        await conn.execute("ANALYZE")
    finally:
        await conn.close()
    return [RequestSigner(key, fingerprint) for fingerprint, _serial, _pem in certs]


def peak_rss_mib(pid: int) -> float:
    """The process's peak resident memory (NaN once it is gone)."""
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return float("nan")
    for line in status.splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


async def run(args: argparse.Namespace) -> None:
    db = await database("corral_bench_burst")
    data_dir = Path(tempfile.mkdtemp(prefix="corral-bench-data-"))
    api_token = admin_token(db.url, data_dir)
    started = time.perf_counter()
    fleet = await generate_fleet(db.url, args.devices)
    print(
        f"{args.devices:,} devices with their certificates generated in {time.perf_counter() - started:.1f} s"
    )

    # The request path only: no background job worker in the server processes.
    env = {"CORRAL_EMBEDDED_WORKER": "false"}
    corrals = [start_corral(db.url, data_dir, env) for _ in range(args.servers)]
    floor = start_floor(db.url)
    with servers(*corrals, floor):
        async with httpx.AsyncClient(timeout=600) as client:
            headers = {"Authorization": f"Bearer {api_token}"}
            api = corrals[0].url + "/api/v1"

            # F_rt as bench/checkin_enroll.py measures it: 32 connections of one pool.
            async with httpx.AsyncClient(
                limits=httpx.Limits(max_connections=32, max_keepalive_connections=32), timeout=30
            ) as floor_client:

                async def get(url: str) -> bool:
                    return (await floor_client.get(url)).status_code == 200

                url = f"{floor.url}/rt"
                await load("warm-up", lambda i: get(url), concurrency=32, seconds=1)
                f_rt = await load(
                    "F_rt (PK select)", lambda i: get(url), concurrency=32, seconds=args.floor_seconds
                )

            made = await client.post(
                f"{api}/configuration-profiles",
                headers=headers,
                json={"name": "burst", "platform": "linux", "settings": PROFILE},
            )
            assert made.status_code == 201, made.text
            profile = made.json()["id"]
            started = time.perf_counter()
            assigned = await client.put(
                f"{api}/configuration-profiles/{profile}/assignments",
                headers=headers,
                json={"assignments": [{"target": "all_devices"}]},
                timeout=600,
            )
            assert assigned.status_code == 200, assigned.text
            print(f"profile assigned to every device in {time.perf_counter() - started:.1f} s")
            started = time.perf_counter()
            changed = await client.patch(
                f"{api}/configuration-profiles/{profile}",
                headers=headers,
                json={"settings": CHANGED},
                timeout=600,
            )
            assert changed.status_code == 200, changed.text
            print(
                "profile changed (every device's desired state moved) in "
                f"{time.perf_counter() - started:.1f} s"
            )

            statuses: Counter[int] = Counter()
            transport_errors = 0
            errors_seen: Counter[str] = Counter()
            stale: list[int] = []
            wanted = [{"id": sid, "value": value} for sid, value in sorted(CHANGED.items())]
            latencies: list[float] = []  # wake-up -> document, per device
            retry = RetryPolicy()
            rng = random.Random(1)
            wake_seconds = args.wake_seconds if args.wake_seconds is not None else 60 * args.devices / 100_000

            # The fleet's connections in pools of CONNECTIONS_PER_POOL, each request waiting for a free one
            # before it reaches a pool: an httpx pool looks at every connection (and every waiter) for each
            # request, so one pool of hundreds would make the load generator the bottleneck.
            pools = [
                (
                    httpx.AsyncClient(
                        # Idle connections dropped before the server's 5-s keep-alive timeout closes them
                        # (else a request may race the server's close: a transport error, not an answer).
                        limits=httpx.Limits(
                            max_connections=CONNECTIONS_PER_POOL,
                            max_keepalive_connections=CONNECTIONS_PER_POOL,
                            keepalive_expiry=4.0,
                        ),
                        timeout=60,
                    ),
                    asyncio.Semaphore(CONNECTIONS_PER_POOL),
                )
                for _ in range(max(1, args.connections // CONNECTIONS_PER_POOL))
            ]

            async def device(index: int, wake: float, origin: float) -> None:
                nonlocal transport_errors
                await asyncio.sleep(max(0.0, origin + wake - time.perf_counter()))
                woke = time.perf_counter()
                server = corrals[index % len(corrals)]
                pool, in_flight = pools[index % len(pools)]
                for attempt in range(1000):
                    try:
                        async with in_flight:
                            request = pool.build_request("GET", f"{server.url}/device/v1/desired-state")
                            fleet[index].sign(request)
                            response = await pool.send(request)
                    except httpx.TransportError as exc:
                        transport_errors += 1
                        errors_seen[type(exc).__name__] += 1
                        if server.process.poll() is not None:  # as a load balancer would: another one
                            server = next(s for s in corrals if s.process.poll() is None)
                        await asyncio.sleep(retry.delay(attempt))
                        continue
                    statuses[response.status_code] += 1
                    if response.status_code == 200:
                        latencies.append(time.perf_counter() - woke)
                        if response.json()["profiles"][0]["settings"] != wanted:
                            stale.append(index)  # an answer, but not the changed profile
                        return
                    if response.status_code in (429, 503):
                        wait = parse_retry_after(response.headers.get("retry-after"))
                        await asyncio.sleep(retry.delay(min(attempt, 5), wait))
                        continue
                    return  # anything else is counted and not retried: the run fails its target

            meter = CpuMeter(corrals[0].process.pid, db.admin_url)  # its PostgreSQL part
            before_server = [cpu_seconds(server.process.pid) for server in corrals]
            before_db = await meter.database_cpu()
            client_before = time.process_time()
            killed_cpu = 0.0

            async def kill_one() -> None:
                """kill -9 of the last server mid-burst (its CPU so far is counted)."""
                nonlocal killed_cpu
                await asyncio.sleep(args.kill_after)
                victim = corrals[-1]
                killed_cpu = cpu_seconds(victim.process.pid) - before_server[-1]
                victim.process.kill()
                print(f"killed server {len(corrals)} (pid {victim.process.pid}) at {args.kill_after:.0f} s")

            origin = time.perf_counter()
            await asyncio.gather(
                *(device(i, rng.uniform(0, wake_seconds), origin) for i in range(args.devices)),
                *([kill_one()] if args.kill_after is not None else []),
            )
            drained = time.perf_counter() - origin
            for pool, _ in pools:
                await pool.aclose()
            client_cpu = time.process_time() - client_before
            server_cpu = killed_cpu + sum(
                cpu_seconds(s.process.pid) - b
                for s, b in zip(corrals, before_server, strict=True)
                if s.process.poll() is None
            )
            database_cpu = await meter.database_cpu() - before_db
            rss = [peak_rss_mib(server.process.pid) for server in corrals]

    target = 1.25 * args.devices / (0.5 * f_rt.rate)
    delivered = statuses[200]
    print()
    print(f"F_rt (PK select)   {f_rt.rate:8.1f} req/s   p99 {percentile(f_rt.latencies, 99) * 1000:.1f} ms")
    print(
        f"S2 burst: {args.devices:,} devices woken within {wake_seconds:.0f} s, {len(corrals)} server "
        f"process(es), {args.connections} connections"
    )
    print(
        f"  drained in {drained:.1f} s = {delivered / drained:.1f} documents/s = "
        f"{delivered / drained / f_rt.rate:.2f} x F_rt; target <= 1.25 x N / (0.5 x F_rt) = {target:.1f} s: "
        f"{drained / target:.2f} of the target"
    )
    print(
        f"  answers: {dict(sorted(statuses.items()))}, transport errors {transport_errors}, "
        f"5xx {sum(n for code, n in statuses.items() if code >= 500)}"
    )
    print(f"  documents without the change: {len(stale)}")
    if errors_seen:
        print(f"  transport errors: {dict(errors_seen)}")
    print(
        f"  wake-up -> document: p50 {percentile(latencies, 50):.1f} s, "
        f"p99 {percentile(latencies, 99):.1f} s, "
        f"max {max(latencies, default=float('nan')):.1f} s"
    )
    if delivered:
        print(
            f"  CPU per document: server {server_cpu / delivered * 1000:.2f} ms, PostgreSQL "
            f"{database_cpu / delivered * 1000:.2f} ms, "
            f"load generator {client_cpu / delivered * 1000:.2f} ms "
            "(all answers, 429s included); server peak RSS " + ", ".join(f"{r:.0f} MiB" for r in rss)
        )


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--devices", type=int, default=100_000)
    parser.add_argument(
        "--wake-seconds", type=float, default=None, help="the wake-up window (default: 60 s per 100k devices)"
    )
    parser.add_argument("--connections", type=int, default=256)
    parser.add_argument("--servers", type=int, default=1, help="corral serve processes (one database)")
    parser.add_argument(
        "--kill-after",
        type=float,
        default=None,
        help="kill -9 the last server this many seconds into the burst (needs --servers 2 or more); its "
        "devices then go to the others, as behind a load balancer",
    )
    parser.add_argument("--floor-seconds", type=float, default=8)
    args = parser.parse_args()
    if args.kill_after is not None and args.servers < 2:
        parser.error("--kill-after needs --servers 2 or more")
    asyncio.run(run(args))


if __name__ == "__main__":
    main()
