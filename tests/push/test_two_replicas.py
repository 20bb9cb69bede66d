"""Two `corral serve` processes on one database: a device holds its wake-up stream to replica A, an admin
locks it through replica B's API, and A wakes it within a second (PostgreSQL LISTEN/NOTIFY between them)."""

from __future__ import annotations

import asyncio
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import IO

import httpx
import pytest

from tests.conftest import Factory
from tests.live import free_port
from tests.push.conftest import enroll_on, lock, open_events
from tests.test_cli import CORRAL, env_for


class Replica:
    def __init__(self, db_url: str, directory: Path, public_url: str | None = None) -> None:
        directory.mkdir()
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        # Each replica's public URL is its own (the device signs @target-uri for the replica it talks to),
        # unless they stand behind one address.
        env = env_for(
            db_url, directory, CORRAL_BASE_URL=public_url or self.url, CORRAL_PUSH_HEARTBEAT_SECONDS="2"
        )
        self.log_path = directory / "serve.log"
        self._log: IO[str] = self.log_path.open("w")
        self.process = subprocess.Popen(
            [*CORRAL, "serve", "--http", "--port", str(self.port)],
            env=env,
            text=True,
            stdout=self._log,
            stderr=subprocess.STDOUT,
        )

    def wait_healthy(self) -> None:
        deadline = time.monotonic() + 45
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise AssertionError(
                    f"serve exited ({self.process.returncode}):\n{self.log_path.read_text()}"
                )
            try:
                if httpx.get(f"{self.url}/healthz", timeout=2).status_code == 200:
                    return  # the lifespan (and with it the first LISTEN) has completed
            except httpx.TransportError:
                pass
            time.sleep(0.2)
        raise AssertionError(f"serve did not become healthy:\n{self.log_path.read_text()}")

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self._log.close()


@pytest.fixture
def replicas(db_url: str, tmp_path: Path) -> Iterator[tuple[Replica, Replica]]:
    a = Replica(db_url, tmp_path / "a")
    started = [a]
    try:
        a.wait_healthy()  # one first: the first start creates the bootstrap administrator
        b = Replica(db_url, tmp_path / "b")
        started.append(b)
        b.wait_healthy()
        yield a, b
    finally:
        for replica in started:
            replica.stop()


async def test_a_lock_issued_on_replica_b_wakes_the_device_connected_to_replica_a(
    replicas: tuple[Replica, Replica], factory: Factory
) -> None:
    a, b = replicas
    admin = await factory.admin("Global administrator")
    helpdesk = await factory.admin("Help desk operator")
    async with (
        httpx.AsyncClient(base_url=a.url, timeout=10) as client_a,
        httpx.AsyncClient(base_url=b.url, timeout=10) as client_b,
    ):
        device = await enroll_on(client_a, admin, a.url)
        async with open_events(device) as events:
            assert await events.next() == ("ready", {"device_id": device.device_id})

            started = time.perf_counter()
            queued = await lock(client_b, helpdesk, device)
            assert await events.next(timeout=1.0) == ("wake", {"reason": "command"})
            elapsed = time.perf_counter() - started
            assert elapsed < 1.0, f"the wake-up crossed replicas in {elapsed:.3f} s"

            checkin = await device.checkin({})  # on replica A, as the agent would at once
            assert checkin.status_code == 200, checkin.text
            assert [c["id"] for c in checkin.json()["commands"]] == [queued.json()["id"]]

            # Replica A is stopped while the device is connected: its stream ends at once (the agent
            # reconnects elsewhere) instead of holding up the shutdown until uvicorn's 15 s timeout.
            stopping = time.perf_counter()
            a.process.send_signal(signal.SIGTERM)
            await events.until_end(timeout=5)
            exit_code = await asyncio.to_thread(a.process.wait, 10)
            assert exit_code == 0 and time.perf_counter() - stopping < 5

        # Replica B still serves the device (signed for B's URL).
        device.client, device.base_url = client_b, b.url
        acknowledged = await device.checkin(
            {"command_results": [{"command_id": queued.json()["id"], "status": "succeeded", "result": {}}]}
        )
        assert acknowledged.status_code == 200
        history = await client_b.get(f"/api/v1/devices/{device.device_id}/commands", headers=helpdesk.headers)
        assert history.json()[0]["status"] == "succeeded"
