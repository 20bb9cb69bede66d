"""S1 (steady check-in) and S6 (enrollment storm) against their floors, measured in the same run.

    .venv/bin/python bench/checkin_enroll.py [--seconds 8] [--concurrency 32] [--devices 200]

Uses CORRAL_DATABASE_URL's server or a throwaway embedded PostgreSQL; everything on loopback; bounded.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import tempfile
import time
from pathlib import Path
from typing import Any

import asyncpg
import httpx
from common import (
    LoadResult,
    corral_cli,
    database,
    load,
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


async def db_writes(admin_url: str, db_name: str) -> int:
    conn = await asyncpg.connect(admin_url)
    try:
        row = await conn.fetchrow(
            "SELECT xact_commit, tup_inserted + tup_updated + tup_deleted AS w "
            "FROM pg_stat_database WHERE datname = $1",
            db_name,
        )
        return int(row["w"]) if row else 0
    finally:
        await conn.close()


async def run(args: argparse.Namespace) -> None:
    db = await database("corral_bench")
    data_dir = Path(tempfile.mkdtemp(prefix="corral-bench-data-"))
    corral_cli(
        ["admin", "create", "--email", "bench@example.com", "--password-stdin"],
        db.url,
        data_dir,
        "bench password 123\n",
    )
    admin_token = corral_cli(["token", "create", "--email", "bench@example.com"], db.url, data_dir)
    corral, floor = start_corral(db.url, data_dir), start_floor(db.url)
    results: list[LoadResult] = []
    with servers(corral, floor):
        limits = httpx.Limits(max_connections=args.concurrency, max_keepalive_connections=args.concurrency)
        async with httpx.AsyncClient(limits=limits, timeout=30) as client:
            headers = {"Authorization": f"Bearer {admin_token}"}
            token = (
                await client.post(
                    f"{corral.url}/api/v1/enrollment-tokens",
                    headers=headers,
                    json={"name": "bench", "platforms": ["linux"], "expires_in_days": 1},
                )
            ).json()["token"]

            async def get(url: str) -> bool:
                return (await client.get(url)).status_code == 200

            for name, url in (
                ("F_http (static JSON)", f"{floor.url}/static"),
                ("F_rt (PK select)", f"{floor.url}/rt"),
            ):
                await load("warm-up", lambda i, u=url: get(u), concurrency=args.concurrency, seconds=1)
                results.append(
                    await load(
                        name, lambda i, u=url: get(u), concurrency=args.concurrency, seconds=args.seconds
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
            enrolled: list[tuple[ec.EllipticCurvePrivateKey, str]] = []

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
                    enrolled.append((key, response.json()["certificate_fingerprint"]))
                    return True
                return False

            results.append(
                await load(
                    "S6 enrollment",
                    enroll,
                    concurrency=args.concurrency,
                    seconds=args.seconds,
                    max_requests=args.max_enrollments,
                )
            )

            # S1: steady check-in of enrolled devices, nothing changed, no pending command.
            fleet = [RequestSigner(key, fingerprint) for key, fingerprint in enrolled[: args.devices]]

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

            first = await asyncio.gather(*(checkin(i, {"inventory": INVENTORY}) for i in range(len(fleet))))
            assert all(first), "first check-ins failed"
            before = await db_writes(db.admin_url, "corral_bench")
            s1 = await load(
                "S1 steady check-in",
                lambda i: checkin(i, {"inventory_hash": INVENTORY_HASH}),
                concurrency=args.concurrency,
                seconds=args.seconds,
            )
            writes = await db_writes(db.admin_url, "corral_bench") - before
            results.append(s1)

    sign_rate = f_sign()
    pgb = await pgbench_tps(db, seconds=int(args.seconds))
    by_name = {r.name: r for r in results if r.name != "warm-up"}
    f_rt = by_name["F_rt (PK select)"].rate
    s6 = by_name["S6 enrollment"]
    print()
    print(f"{'figure':<28} {'rate':>9}         latency")
    for result in by_name.values():
        print(result.line())
    print(f"{'F_sign (ECDSA P-256)':<28} {sign_rate:9.1f} signatures/s")
    print(f"{'F_pgb (pgbench -N)':<28} {pgb if pgb is not None else float('nan'):9.1f} tps")
    print()
    write_rate = writes / s1.seconds
    print(
        f"S1 / F_rt = {s1.rate / f_rt:.2f}  (target >= 0.5; "
        f"p99 {percentile(s1.latencies, 99) * 1000:.1f} ms, target < 100 ms)"
    )
    if pgb:
        print(
            f"S1 row writes {write_rate:.1f}/s = {write_rate / pgb:.2f} x F_pgb  (target <= 0.2; "
            f"{writes / max(s1.requests, 1):.2f} row writes per check-in)"
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
    asyncio.run(run(parser.parse_args()))


if __name__ == "__main__":
    main()
