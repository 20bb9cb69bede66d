"""S7, scaled to this machine: what an idle wake-up stream costs the server (resident memory, idle CPU).

    .venv/bin/python bench/push_memory.py [--connections 2000] [--idle-seconds 30] [--no-tls]

Opens N idle event streams to each server in turn and reports the growth of the server process's resident set
(VmRSS) per connection, and its CPU use while they sit idle:

- Corral: ``corral serve --http`` (as behind a TLS proxy), N enrolled devices each holding
  GET /device/v1/events (signed, authenticated, subscribed to the hub);
- Corral ``serve --https`` (TLS in the Corral process itself), the same devices;
- F_conn: a bare Starlette ``StreamingResponse`` handler under the same uvicorn settings;
- for the choice of implementation: the same bare app with sse-starlette's ``EventSourceResponse`` and with
  Corral's ``EventStream`` response.

S7's target: ≤ 20 KiB per connection (100k in 4 GiB), idle CPU < 5 %. Uses CORRAL_DATABASE_URL's server or a
throwaway embedded PostgreSQL; loopback only; bounded in time.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import importlib.util
import ssl
import tempfile
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path

from push_common import (
    EVENTS,
    Device,
    Server,
    Stream,
    admin_token,
    bench_database,
    cpu_seconds,
    enroll_fleet,
    open_stream,
    open_streams,
    rss_kib,
    signed_headers,
    start_app,
    start_corral,
)

WARM_UP = 100


@dataclass
class Result:
    name: str
    connections: int
    kib_each: float
    idle_cpu_percent: float
    open_seconds: float

    def line(self) -> str:
        return (
            f"  {self.name:<44} {self.kib_each:6.1f} KiB/connection   idle CPU {self.idle_cpu_percent:4.1f} %"
            f"   ({self.connections} opened in {self.open_seconds:.1f} s)"
        )


async def measure(
    name: str,
    server: Server,
    count: int,
    opener: Callable[[int], Awaitable[Stream]],
    idle_seconds: float,
    wait_ready: bool = True,
) -> Result:
    # Warm up: code paths loaded, caches and pools filled, so the growth below is the connections' own.
    warm = await open_streams(WARM_UP, opener, wait_ready=wait_ready)
    await asyncio.sleep(1)
    for stream in warm:
        stream.close()
    await asyncio.sleep(2)
    before = rss_kib(server.pid)
    started = time.perf_counter()
    streams = await open_streams(count, lambda i: opener(WARM_UP + i), wait_ready=wait_ready)
    opened = time.perf_counter() - started
    await asyncio.sleep(3)
    gc.collect()
    after = rss_kib(server.pid)
    cpu_before, wall_before = cpu_seconds(server.pid), time.perf_counter()
    await asyncio.sleep(idle_seconds)
    cpu = (cpu_seconds(server.pid) - cpu_before) / (time.perf_counter() - wall_before) * 100
    alive = sum(1 for s in streams if s.task is not None and not s.task.done())
    for stream in streams:
        stream.close()
    if alive != count:
        print(f"  warning: {count - alive} of {name}'s streams ended while idle")
    result = Result(name, count, (after - before) / count, cpu, opened)
    print(result.line(), flush=True)
    return result


def corral_opener(
    server: Server, devices: list[Device], tls: ssl.SSLContext | None = None
) -> Callable[[int], Awaitable[Stream]]:
    async def opener(index: int) -> Stream:
        device = devices[index]
        headers = signed_headers(device, "GET", server.url + EVENTS)
        return await open_stream(server.url, EVENTS, headers, tls=tls)

    return opener


def bare_opener(server: Server, path: str) -> Callable[[int], Awaitable[Stream]]:
    async def opener(index: int) -> Stream:
        return await open_stream(server.url, path)

    return opener


async def main(args: argparse.Namespace) -> None:
    work = Path(tempfile.mkdtemp(prefix="corral-push-memory-"))
    total = args.connections + WARM_UP
    results: list[Result] = []
    async with bench_database("corral_bench_push_memory") as db_url:
        server = start_corral(db_url, work / "http")
        try:
            admin = await asyncio.to_thread(admin_token, db_url, work)
            devices = await enroll_fleet(server.url, admin, total, concurrency=16)
            results.append(
                await measure(
                    "Corral, serve --http (behind a TLS proxy)",
                    server,
                    args.connections,
                    corral_opener(server, devices),
                    args.idle_seconds,
                )
            )
        finally:
            await asyncio.to_thread(server.stop)
        if args.tls and not args.corral_only:
            server = start_corral(db_url, work / "https", https=True)
            try:
                tls = ssl.create_default_context(cafile=str(work / "https" / "data" / "tls" / "ca.crt"))
                results.append(
                    await measure(
                        "Corral, serve --https (TLS in process)",
                        server,
                        args.connections,
                        corral_opener(server, devices, tls),
                        args.idle_seconds,
                    )
                )
            finally:
                await asyncio.to_thread(server.stop)
    bare = (
        ("/plain", "F_conn: bare Starlette StreamingResponse", False),
        ("/sse", "bare sse-starlette EventSourceResponse", True),
        ("/eventstream", "bare Corral EventStream", True),
    )
    if importlib.util.find_spec("sse_starlette") is None:
        print("  (sse-starlette is not installed: its comparison is skipped)")
        bare = tuple(item for item in bare if item[0] != "/sse")
    for path, name, ready in bare[:1] if args.corral_only else bare:
        server = start_app("push_floor_app:app", work / path.strip("/"))
        try:
            results.append(
                await measure(
                    name, server, args.connections, bare_opener(server, path), args.idle_seconds, ready
                )
            )
        finally:
            await asyncio.to_thread(server.stop)

    floor = next(r for r in results if r.name.startswith("F_conn"))
    corral = results[0]
    print()
    print(
        f"S7 (scaled): {args.connections} idle wake-up streams per server, idle for {args.idle_seconds:.0f} s"
    )
    for result in results:
        print(result.line())
    print(
        f"  Corral / F_conn: {corral.kib_each / floor.kib_each:.2f}x; target ≤ 20 KiB/connection → "
        f"{'meets' if corral.kib_each <= 20 else 'MISSES'}; 100k connections ≈ "
        f"{corral.kib_each * 100_000 / 1024 / 1024:.2f} GiB"
    )


if __name__ == "__main__":
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--connections", type=int, default=2000)
    parser.add_argument("--idle-seconds", type=float, default=30.0, help="≥ 25 includes one heartbeat round")
    parser.add_argument("--no-tls", dest="tls", action="store_false", help="skip the serve --https run")
    parser.add_argument(
        "--corral-only", action="store_true", help="only Corral over plain HTTP and F_conn (a quicker run)"
    )
    asyncio.run(main(parser.parse_args()))
