"""S3, scaled to this machine: remote actions to connected devices, from the admin's request to the device.

    .venv/bin/python bench/push_latency.py [--devices 1000] [--commands 200] [--rate 10]

N simulated devices hold their wake-up stream (GET /device/v1/events) to one ``corral serve``; locks are
issued through the admin API for a subset at a steady rate. Each device, on ``wake``, checks in (gets the
lock) and checks in again to acknowledge it, as the agent does. Measured in the same run:

- F_notify: a bare LISTEN/NOTIFY round trip (asyncpg, one notifying and one listening connection);
- the push hop alone: NOTIFY on the wake channel → ``wake`` read by the device from Corral's stream
  (PostgreSQL, the hub, the stream, the socket): directly comparable to F_notify;
- RT: a device round trip (a signed check-in with nothing to do);
- admin request → ``wake`` received, and admin request → acknowledgement recorded by the server;
- lost wake-ups (a device woken late or never), spurious ones (devices woken that were not targeted).

S3's target: request → acknowledgement p99 ≤ 5 x F_notify p99 + one round trip. Uses CORRAL_DATABASE_URL's
server or a throwaway embedded PostgreSQL; loopback only; bounded in time.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import tempfile
import time
from pathlib import Path
from typing import Any

import asyncpg
import httpx
from push_common import (
    EVENTS,
    Device,
    Stream,
    admin_token,
    bench_database,
    enroll_fleet,
    ms,
    open_stream,
    open_streams,
    percentile,
    rss_kib,
    signed_headers,
    start_corral,
)

from corral.kit.db import asyncpg_dsn


async def f_notify(db_url: str, samples: int) -> list[float]:
    """A bare LISTEN/NOTIFY round trip: NOTIFY on one connection until the listener's callback runs."""
    listener = await asyncpg.connect(asyncpg_dsn(db_url))
    notifier = await asyncpg.connect(asyncpg_dsn(db_url))
    waiting: dict[str, asyncio.Future[float]] = {}

    def on_notify(connection: Any, pid: int, channel: str, payload: str) -> None:
        future = waiting.pop(payload, None)
        if future is not None and not future.done():
            future.set_result(time.perf_counter())

    await listener.add_listener("bench_floor", on_notify)
    rounds = []
    try:
        for index in range(samples):
            future: asyncio.Future[float] = asyncio.get_running_loop().create_future()
            waiting[str(index)] = future
            started = time.perf_counter()
            await notifier.execute("SELECT pg_notify('bench_floor', $1)", str(index))
            rounds.append(await asyncio.wait_for(future, 5) - started)
            await asyncio.sleep(0.002)
    finally:
        await listener.close()
        await notifier.close()
    return rounds


async def push_hop(db_url: str, fleet: Fleet, samples: int) -> list[float]:
    """NOTIFY on Corral's wake channel (as a committed command does) → the device reads ``wake``."""
    notifier = await asyncpg.connect(asyncpg_dsn(db_url))
    rounds = []
    try:
        for device in random.choices(fleet.devices, k=samples):
            future: asyncio.Future[float] = asyncio.get_running_loop().create_future()
            fleet.probes[device.device_id] = future
            started = time.perf_counter()
            await notifier.execute("SELECT pg_notify('corral_device_wake', $1)", f"{device.device_id}:bench")
            rounds.append(await asyncio.wait_for(future, 5) - started)
            await asyncio.sleep(0.002)
    finally:
        await notifier.close()
    return rounds


class Fleet:
    def __init__(self, base_url: str, devices: list[Device], client: httpx.AsyncClient) -> None:
        self.base_url = base_url
        self.devices = devices
        self.client = client
        self.targets: dict[str, float] = {}  # device id → when the admin request was sent
        self.woken: dict[str, float] = {}
        self.acked: dict[str, float] = {}
        self.spurious = 0
        self.probes: dict[str, asyncio.Future[float]] = {}
        self.errors: list[str] = []
        self.tasks: set[asyncio.Task[None]] = set()

    async def checkin(self, device: Device, body: dict[str, Any]) -> dict[str, Any]:
        content = json.dumps(body).encode()
        url = self.base_url + "/device/v1/checkin"
        response = await self.client.post(
            url, content=content, headers=signed_headers(device, "POST", url, content)
        )
        response.raise_for_status()
        data: dict[str, Any] = response.json()
        return data

    def on_event(self, device: Device) -> Any:
        def handle(name: str, data: Any) -> None:
            if name != "wake":
                return
            if data.get("reason") == "bench":
                probe = self.probes.pop(device.device_id, None)
                if probe is not None and not probe.done():
                    probe.set_result(time.perf_counter())
                return
            if device.device_id not in self.targets:
                self.spurious += 1
                return
            if device.device_id in self.woken:
                return
            self.woken[device.device_id] = time.perf_counter()
            task = asyncio.create_task(self.acknowledge(device))
            self.tasks.add(task)
            task.add_done_callback(self.tasks.discard)

        return handle

    async def acknowledge(self, device: Device) -> None:
        """What the agent does on a wake-up: check in, act, check in again with the result."""
        try:
            commands = (await self.checkin(device, {"command_results": []}))["commands"]
            results = [{"command_id": c["id"], "status": "acknowledged"} for c in commands]
            await self.checkin(device, {"command_results": results})
            if results:
                self.acked[device.device_id] = time.perf_counter()
        except Exception as exc:
            self.errors.append(f"{device.device_id}: {exc!r}")


async def main(args: argparse.Namespace) -> None:
    work = Path(tempfile.mkdtemp(prefix="corral-push-latency-"))
    async with bench_database("corral_bench_push_latency") as db_url:
        server = start_corral(db_url, work)
        streams: list[Stream] = []
        try:
            admin = await asyncio.to_thread(admin_token, db_url, work)
            print(f"corral serve pid {server.pid} at {server.url}; database ready")
            devices = await enroll_fleet(server.url, admin, args.devices)
            limits = httpx.Limits(max_connections=64, max_keepalive_connections=64)
            async with httpx.AsyncClient(timeout=30, limits=limits) as client:
                fleet = Fleet(server.url, devices, client)

                async def opener(index: int) -> Stream:
                    device = devices[index]
                    headers = signed_headers(device, "GET", server.url + EVENTS)
                    return await open_stream(server.url, EVENTS, headers, fleet.on_event(device))

                started = time.perf_counter()
                streams = await open_streams(len(devices), opener)
                print(f"  {len(streams)} event streams open in {time.perf_counter() - started:.1f} s")
                await asyncio.sleep(1)

                # Floors, with the fleet connected.
                notify = await f_notify(db_url, args.notify_samples)
                hop = await push_hop(db_url, fleet, args.notify_samples)
                round_trips = []
                for device in random.sample(devices, min(200, len(devices))):
                    began = time.perf_counter()
                    await fleet.checkin(device, {"command_results": []})
                    round_trips.append(time.perf_counter() - began)

                # Locks for a subset, at a steady rate, through the admin API.
                targets = random.sample(devices, args.commands)
                admin_latency: list[float] = []
                refused = 0

                async def issue(device: Device) -> None:
                    nonlocal refused
                    fleet.targets[device.device_id] = began = time.perf_counter()
                    response = await client.post(
                        f"{server.url}/api/v1/devices/{device.device_id}/actions/lock",
                        json={"params": {"message": "bench"}},
                        headers={"Authorization": f"Bearer {admin}"},
                    )
                    admin_latency.append(time.perf_counter() - began)
                    if response.status_code != 202:
                        refused += 1

                issuing = []
                began_issuing = time.perf_counter()
                for index, device in enumerate(targets):
                    delay = began_issuing + index / args.rate - time.perf_counter()
                    if delay > 0:
                        await asyncio.sleep(delay)
                    issuing.append(asyncio.create_task(issue(device)))
                await asyncio.gather(*issuing)
                deadline = time.perf_counter() + args.drain_seconds
                while len(fleet.acked) < len(targets) and time.perf_counter() < deadline:
                    await asyncio.sleep(0.05)
                await asyncio.sleep(0.5)  # late or spurious wake-ups
                issue_seconds = time.perf_counter() - began_issuing
                rss = rss_kib(server.pid)

            wake = [fleet.woken[d] - fleet.targets[d] for d in fleet.woken]
            ack = [fleet.acked[d] - fleet.targets[d] for d in fleet.acked]
            notify_p99, rt_p50 = percentile(notify, 99), percentile(round_trips, 50)
            target = 5 * notify_p99 + rt_p50
            print()
            print(f"S3 (scaled): {args.devices} connected devices, {args.commands} locks at {args.rate}/s")
            print(f"  F_notify (bare LISTEN/NOTIFY)  p50 {ms(percentile(notify, 50))}  p99 {ms(notify_p99)}")
            hop_p99 = percentile(hop, 99)
            print(
                f"  NOTIFY → wake via Corral       p50 {ms(percentile(hop, 50))}  p99 {ms(hop_p99)}"
                f"  ({hop_p99 / notify_p99:.1f}x F_notify p99)"
            )
            print(f"  RT (signed idle check-in)      p50 {ms(rt_p50)}  p99 {ms(percentile(round_trips, 99))}")
            print(
                f"  admin request → 202            p50 {ms(percentile(admin_latency, 50))}  "
                f"p99 {ms(percentile(admin_latency, 99))}  refused {refused}"
            )
            print(
                f"  admin request → wake received  p50 {ms(percentile(wake, 50))}  "
                f"p99 {ms(percentile(wake, 99))}  ({len(wake)}/{len(targets)} woken)"
            )
            print(
                f"  admin request → ack recorded   p50 {ms(percentile(ack, 50))}  "
                f"p99 {ms(percentile(ack, 99))}  ({len(ack)}/{len(targets)} acknowledged)"
            )
            print(f"  wake p99 / F_notify p99        {percentile(wake, 99) / notify_p99:.1f}x")
            verdict = "meets" if percentile(ack, 99) <= target else "MISSES"
            print(
                f"  S3 target: ack p99 ≤ 5 x F_notify p99 + RT p50 = {ms(target)} → {verdict} "
                f"({ms(percentile(ack, 99))})"
            )
            print(
                f"  lost {len(targets) - len(wake)}, not acknowledged {len(targets) - len(ack)}, "
                f"spurious {fleet.spurious}, device errors {len(fleet.errors)}; "
                f"issue+drain {issue_seconds:.1f} s; server RSS {rss / 1024:.0f} MiB"
            )
            for error in fleet.errors[:5]:
                print("   ", error)
        finally:
            for stream in streams:
                stream.close()
            await asyncio.to_thread(server.stop)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--devices", type=int, default=1000)
    parser.add_argument("--commands", type=int, default=200)
    parser.add_argument("--rate", type=float, default=10.0, help="locks issued per second")
    parser.add_argument("--notify-samples", type=int, default=500)
    parser.add_argument("--drain-seconds", type=float, default=30.0)
    asyncio.run(main(parser.parse_args()))
