"""`corral simulate`: many virtual devices in one process, each a real `corral-agent` (in simulate mode) with
its own key, certificate and state, enrolling, holding its wake-up stream, checking in and answering commands.
For demos, tests and benchmarks."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import random
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

log = logging.getLogger("corral.simulator")

PLATFORMS = [
    ("windows", "11", "Dell", "Latitude 7440"),
    ("macos", "15.1", "Apple", "MacBook Pro"),
    ("linux", "12.7", "Lenovo", "ThinkPad X1 Carbon"),
    ("windows", "10", "HP", "EliteBook 840"),
    ("macos", "14.7", "Apple", "MacBook Air"),
]
APPS = [
    ("Firefox", "128.3.1", "org.mozilla.firefox"),
    ("Slack", "4.41.97", "com.tinyspeck.slackmacgap"),
    ("Zoom", "6.2.5", "us.zoom.xos"),
    ("Visual Studio Code", "1.95.3", "com.microsoft.VSCode"),
    ("Microsoft Teams", "24295.606", "com.microsoft.teams2"),
    ("1Password", "8.10.48", "com.1password.1password"),
    ("Google Chrome", "131.0.6778.86", "com.google.Chrome"),
    ("Docker Desktop", "4.36.0", "com.docker.docker"),
]
USERS = ["alice", "bob", "carol", "dave", "erin", "frank", "grace", "heidi", "ivan", "judy"]


def synthetic_device(index: int, seed: str) -> tuple[dict[str, Any], dict[str, Any]]:
    """Facts and an inventory for virtual device ``index``: varied, stable across runs."""
    digest = hashlib.sha256(f"{seed}:{index}".encode()).hexdigest()
    rng = random.Random(digest)
    platform, os_version, manufacturer, model = PLATFORMS[index % len(PLATFORMS)]
    serial = f"SIM{digest[:9].upper()}"
    user = USERS[index % len(USERS)]
    name = f"{user}-{platform}-{index:04d}"
    apps = [
        {"name": n, "version": v, "identifier": i}
        for n, v, i in rng.sample(APPS, k=rng.randint(3, len(APPS)))
    ]
    inventory = {
        "hardware": {
            "manufacturer": manufacturer,
            "model": model,
            "serial_number": serial,
            "cpu_architecture": "arm64" if manufacturer == "Apple" else "x86_64",
            "memory_bytes": rng.choice([8, 16, 32]) * 2**30,
            "storage_total_bytes": rng.choice([256, 512, 1024]) * 10**9,
            "storage_free_bytes": rng.randint(20, 200) * 10**9,
        },
        "os": {
            "platform": platform,
            "name": {"windows": "Windows", "macos": "macOS", "linux": "Debian GNU/Linux"}[platform],
            "version": os_version,
            "build": None,
        },
        "security": {
            "disk_encrypted": rng.random() > 0.1,
            "firewall_enabled": rng.random() > 0.2,
            "screen_lock_enabled": rng.random() > 0.05,
            "passcode_set": True,
            "jailbroken": False,
            "secure_boot": rng.random() > 0.1,
        },
        "network": {"hostname": name, "interfaces": []},
        "apps": apps,
        "primary_user": user,
    }
    facts = {
        "serial_number": serial,
        "name": name,
        "platform": platform,
        "os_version": os_version,
        "model": model,
        "manufacturer": manufacturer,
    }
    return facts, inventory


@dataclass
class Stats:
    devices: int
    enrolled: int = 0
    failed: int = 0
    checkins: int = 0
    commands: int = 0
    ended: int = 0
    started: float = field(default_factory=time.monotonic)

    def line(self) -> str:
        elapsed = time.monotonic() - self.started
        return (
            f"{self.enrolled}/{self.devices} enrolled, {self.checkins} check-ins, {self.commands} commands "
            f"answered, {self.ended} retired/wiped, {self.failed} errors — {elapsed:.0f}s"
        )


async def simulate(
    url: str,
    token: str | None,
    devices: int,
    state_dir: Path,
    *,
    ca_fingerprint: str | None = None,
    duration: float | None = None,
    concurrency: int = 20,
    progress: Callable[[Stats], None] | None = None,
    stop: asyncio.Event | None = None,
) -> Stats:
    """Run ``devices`` virtual devices until ``duration`` seconds pass or ``stop`` is set."""
    try:
        from corral_agent import Agent, AgentConfig, AgentError
        from corral_agent.daemon import run as run_agent
    except ImportError as exc:  # the agent is its own distribution
        raise SystemExit("corral simulate needs the corral-agent package: pip install ./agent") from exc

    stats = Stats(devices)
    stop = stop or asyncio.Event()
    seed = hashlib.sha256(str(state_dir).encode()).hexdigest()[:12]
    gate = asyncio.Semaphore(concurrency)

    async def one(index: int) -> None:
        facts, inventory = synthetic_device(index, seed)
        agent = Agent(
            state_dir / f"device-{index:05d}", config=AgentConfig(simulate=True), inventory=lambda: inventory
        )
        if not agent.enrolled:
            if not token:
                stats.failed += 1
                return
            async with gate:
                try:
                    await agent.enroll(url, token, ca_fingerprint, device=facts)
                except AgentError as exc:
                    stats.failed += 1
                    log.warning("device %s could not enroll: %s", index, exc)
                    return
        stats.enrolled += 1
        original_checkin = agent.checkin

        async def counted_checkin() -> Any:
            summary = await original_checkin()
            stats.checkins += 1
            stats.commands += len(getattr(summary, "commands", []) or [])
            if getattr(summary, "ended", None):
                stats.ended += 1
            return summary

        agent.checkin = counted_checkin  # type: ignore[method-assign]
        try:
            await run_agent(agent, stop=stop, handle_signals=False)
        except AgentError as exc:
            stats.failed += 1
            log.warning("device %s stopped: %s", index, exc)

    async def reporter() -> None:
        while not stop.is_set():
            if progress:
                progress(stats)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), timeout=1)
        if progress:
            progress(stats)

    async def timer() -> None:
        if duration is not None:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), timeout=duration)
            stop.set()

    tasks = [asyncio.create_task(one(i)) for i in range(devices)]
    helpers = [asyncio.create_task(reporter()), asyncio.create_task(timer())]
    await asyncio.gather(*tasks, return_exceptions=True)
    stop.set()
    await asyncio.gather(*helpers, return_exceptions=True)
    return stats


def print_progress(stats: Stats) -> None:
    sys.stderr.write("\r" + stats.line().ljust(100))
    sys.stderr.flush()
