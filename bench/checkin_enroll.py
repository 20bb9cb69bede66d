"""S1 (steady check-in) and S6 (enrollment storm) against their floors, measured in the same run.

    .venv/bin/python bench/checkin_enroll.py [--seconds 8] [--concurrency 32] [--devices 200] [--policies 0]

S1 is measured three ways: as many signed check-ins as 32 connections get through (throughput), at an offered
rate of 0.5 x F_rt (the target: its p99 must stay under 100 ms), and with RFC 9440 Client-Cert headers instead
of signatures (the server trusts the load generator as its TLS proxy). Its database writes are counted until
the batched last-seen flush after the throughput phase has run.

Uses CORRAL_DATABASE_URL's server or a throwaway embedded PostgreSQL; everything on loopback; bounded.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import tempfile
import time
from pathlib import Path
from typing import Any

import asyncpg
import httpx
from common import (
    CpuMeter,
    LoadResult,
    admin_token,
    database,
    load,
    load_at_rate,
    percentile,
    pgbench_tps,
    servers,
    start_corral,
    start_floor,
)
from corral_agent.transport import RequestSigner
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

INVENTORY: dict[str, Any] = {
    "hardware": {"manufacturer": "Bench", "model": "B1", "memory_bytes": 8 * 2**30},
    "os": {"platform": "linux", "version": "12.7"},
    "security": {"disk_encrypted": True},
    "apps": [{"name": f"app{i}", "version": "1.0", "identifier": f"app{i}"} for i in range(50)],
}
INVENTORY_HASH = (
    __import__("hashlib")
    .sha256(json.dumps(INVENTORY, sort_keys=True, separators=(",", ":")).encode())
    .hexdigest()
)


# PostgreSQL reports an idle backend's statistics (pg_stat_*) within 10 seconds: the last flush's writes are
# counted after the flush interval and this.
STATS_DELAY = 11.0


def new_csr() -> tuple[ec.EllipticCurvePrivateKey, str]:
    key = ec.generate_private_key(ec.SECP256R1())
    csr = (
        x509.CertificateSigningRequestBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "bench")]))
        .sign(key, hashes.SHA256())
    )
    return key, csr.public_bytes(serialization.Encoding.PEM).decode()


def f_sign(seconds: float = 2.0) -> float:
    key = ec.generate_private_key(ec.SECP256R1())
    count, deadline = 0, time.perf_counter() + seconds
    while time.perf_counter() < deadline:
        key.sign(b"x" * 64, ec.ECDSA(hashes.SHA256()))
        count += 1
    return count / seconds


async def db_writes(url: str) -> tuple[int, int]:
    """Rows of Corral's tables written (inserted, updated, deleted) and transactions committed so far in the
    database of ``url`` (catalog writes such as autoanalyze's are left out)."""
    conn = await asyncpg.connect(url)
    try:
        rows = await conn.fetchval(
            "SELECT coalesce(sum(n_tup_ins + n_tup_upd + n_tup_del), 0) FROM pg_stat_user_tables"
        )
        commits = await conn.fetchval(
            "SELECT xact_commit FROM pg_stat_database WHERE datname = current_database()"
        )
        return int(rows), int(commits)
    finally:
        await conn.close()


async def run(args: argparse.Namespace) -> None:
    db = await database("corral_bench")
    data_dir = Path(tempfile.mkdtemp(prefix="corral-bench-data-"))
    api_token = admin_token(db.url, data_dir)
    corral_env = {
        # The load generator stands for the TLS proxy of the Client-Cert phase.
        "CORRAL_CLIENT_CERT_HEADER": "true",
        "CORRAL_TRUSTED_PROXIES": "127.0.0.1/32",
        "CORRAL_LAST_SEEN_FLUSH_SECONDS": str(args.last_seen_flush_seconds),
        # The request path only: no background job worker in the server process.
        "CORRAL_EMBEDDED_WORKER": "false",
    }
    corral, floor = start_corral(db.url, data_dir, corral_env), start_floor(db.url)
    results: list[LoadResult] = []
    with servers(corral, floor):
        limits = httpx.Limits(max_connections=args.concurrency, max_keepalive_connections=args.concurrency)
        async with httpx.AsyncClient(limits=limits, timeout=30) as client:
            headers = {"Authorization": f"Bearer {api_token}"}
            token = (
                await client.post(
                    f"{corral.url}/api/v1/enrollment-tokens",
                    headers=headers,
                    json={"name": "bench", "platforms": ["linux"], "expires_in_days": 1},
                )
            ).json()["token"]

            floor_cpu = CpuMeter(floor.process.pid, db.admin_url)
            corral_cpu = CpuMeter(corral.process.pid, db.admin_url)

            async def get(url: str) -> bool:
                return (await client.get(url)).status_code == 200

            for name, url in (
                ("F_http (static JSON)", f"{floor.url}/static"),
                ("F_rt (PK select)", f"{floor.url}/rt"),
            ):
                await load("warm-up", lambda i, u=url: get(u), concurrency=args.concurrency, seconds=1)
                results.append(
                    await floor_cpu.measure(
                        load(
                            name, lambda i, u=url: get(u), concurrency=args.concurrency, seconds=args.seconds
                        )
                    )
                )
            results.append(
                await load(
                    "F_upd (single UPDATE)",
                    lambda i: _ok(client.post(f"{floor.url}/upd?{i}")),
                    concurrency=args.concurrency,
                    seconds=args.seconds,
                )
            )

            # S6: enrollment storm. CSRs are made before timing (the device's work, not the server's).
            csrs = [new_csr() for _ in range(args.max_enrollments)]
            enrolled: list[tuple[ec.EllipticCurvePrivateKey, str, str]] = []

            async def enroll(i: int) -> bool:
                key, csr = csrs[i]
                response = await client.post(
                    f"{corral.url}/device/v1/enroll",
                    json={
                        "token": token,
                        "csr": csr,
                        "device": {
                            "serial_number": f"BENCH{i:07d}",
                            "name": f"bench-{i}",
                            "platform": "linux",
                        },
                    },
                )
                if response.status_code == 201:
                    body = response.json()
                    enrolled.append((key, body["certificate_fingerprint"], body["certificate"]))
                    return True
                return False

            results.append(
                await corral_cpu.measure(
                    load(
                        "S6 enrollment",
                        enroll,
                        concurrency=args.concurrency,
                        seconds=args.seconds,
                        max_requests=args.max_enrollments,
                    )
                )
            )

            # Policies assigned to every device: a steady check-in reads its desired-state version, which
            # its targets take part in.
            for index in range(args.policies):
                created = await client.post(
                    f"{corral.url}/api/v1/compliance-policies",
                    headers=headers,
                    json={
                        "name": f"bench policy {index}",
                        "platform": "linux",
                        "settings": {"firewall.required": True},
                    },
                )
                assigned = await client.put(
                    f"{corral.url}/api/v1/compliance-policies/{created.json()['id']}/assignments",
                    headers=headers,
                    json={"assignments": [{"target": "all_devices"}]},
                )
                assert assigned.status_code == 200, assigned.text

            # S1: steady check-in of enrolled devices, nothing changed, no pending command.
            fleet = [RequestSigner(key, fingerprint) for key, fingerprint, _pem in enrolled[: args.devices]]
            client_certs = [
                ":"
                + base64.b64encode(
                    x509.load_pem_x509_certificate(pem.encode()).public_bytes(serialization.Encoding.DER)
                ).decode()
                + ":"
                for _key, _fingerprint, pem in enrolled[: args.devices]
            ]

            async def checkin(i: int, body: dict[str, Any]) -> bool:
                request = client.build_request(
                    "POST",
                    f"{corral.url}/device/v1/checkin",
                    content=json.dumps(body).encode(),
                    headers={"content-type": "application/json"},
                )
                fleet[i % len(fleet)].sign(request)
                response = await client.send(request)
                return response.status_code == 200

            async def checkin_by_certificate(i: int, body: dict[str, Any]) -> bool:
                response = await client.post(
                    f"{corral.url}/device/v1/checkin",
                    content=json.dumps(body).encode(),
                    headers={"content-type": "application/json", "client-cert": client_certs[i % len(fleet)]},
                )
                return response.status_code == 200

            async def first_checkin(i: int) -> bool:
                # All at once: beyond the server's admission places some are told to come back (429), as
                # agents are; they retry like agents (after a pause), here without the agent's long backoff.
                for _attempt in range(20):
                    if await checkin(i, {"inventory": INVENTORY}):
                        return True
                    await asyncio.sleep(0.5)
                return False

            first = await asyncio.gather(*(first_checkin(i) for i in range(len(fleet))))
            assert all(first), "first check-ins failed"
            steady = {"inventory_hash": INVENTORY_HASH}
            await load("warm-up", lambda i: checkin(i, steady), concurrency=args.concurrency, seconds=1)
            settle = args.last_seen_flush_seconds + STATS_DELAY
            await asyncio.sleep(settle)  # the warm-up's last-seen flush, and its statistics reported
            before, commits_before = await db_writes(db.url)
            s1 = await corral_cpu.measure(
                load(
                    "S1 steady check-in",
                    lambda i: checkin(i, steady),
                    concurrency=args.concurrency,
                    seconds=args.seconds,
                )
            )
            await asyncio.sleep(settle)  # count the batched last-seen writes too
            after, commits_after = await db_writes(db.url)
            writes, commits = after - before, commits_after - commits_before
            results.append(s1)
            f_rt_rate = next(r for r in results if r.name.startswith("F_rt")).rate
            results.append(
                await load_at_rate(
                    "S1 at 0.5 x F_rt offered",
                    lambda i: checkin(i, steady),
                    rate=0.5 * f_rt_rate,
                    seconds=args.seconds,
                )
            )
            results.append(
                await corral_cpu.measure(
                    load(
                        "S1 Client-Cert (RFC 9440)",
                        lambda i: checkin_by_certificate(i, steady),
                        concurrency=args.concurrency,
                        seconds=args.seconds,
                    )
                )
            )

    sign_rate = f_sign()
    pgb = await pgbench_tps(db, seconds=int(args.seconds))
    by_name = {r.name: r for r in results if r.name != "warm-up"}
    f_rt = by_name["F_rt (PK select)"].rate
    s6 = by_name["S6 enrollment"]
    paced = by_name["S1 at 0.5 x F_rt offered"]
    print()
    print(f"{'figure':<28} {'rate':>9}         latency")
    for result in by_name.values():
        print(result.line())
    print(f"{'F_sign (ECDSA P-256)':<28} {sign_rate:9.1f} signatures/s")
    print(f"{'F_pgb (pgbench -N)':<28} {pgb if pgb is not None else float('nan'):9.1f} tps")
    print()
    write_rate = writes / s1.seconds
    print(
        f"S1 / F_rt = {s1.rate / f_rt:.2f} at full load (p99 {percentile(s1.latencies, 99) * 1000:.1f} ms); "
        f"offered 0.5 x F_rt = {0.5 * f_rt:.1f}/s: served {paced.rate / f_rt:.2f} x F_rt, "
        f"p99 {percentile(paced.latencies, 99) * 1000:.1f} ms, errors {paced.errors}  "
        "(target >= 0.5 at p99 < 100 ms)"
    )
    if pgb:
        print(
            f"S1 row writes {write_rate:.1f}/s = {write_rate / pgb:.2f} x F_pgb  (target <= 0.2; "
            f"{writes / max(s1.requests, 1):.2f} row writes and {commits / max(s1.requests, 1):.2f} commits "
            "per check-in)"
        )
    print(f"S6 / F_rt = {s6.rate / f_rt:.2f}  (target >= 0.25); S6 / F_sign = {s6.rate / sign_rate:.3f}")


async def _ok(response: Any) -> bool:
    return bool((await response).status_code == 200)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--seconds", type=float, default=8)
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--devices", type=int, default=200)
    parser.add_argument("--max-enrollments", type=int, default=3000)
    parser.add_argument(
        "--policies", type=int, default=0, help="compliance policies assigned to every device before S1"
    )
    parser.add_argument(
        "--last-seen-flush-seconds", type=float, default=5, help="the server's CORRAL_LAST_SEEN_FLUSH_SECONDS"
    )
    asyncio.run(run(parser.parse_args()))


if __name__ == "__main__":
    main()
