"""Two `corral serve` processes behind a load balancer, real agents holding their wake-up streams and taking
commands, and one process killed (SIGKILL) while the commands are being delivered: every command is carried
out exactly once by its device and ends succeeded on the server, none lost or run twice (delivery is at least
once: the agent de-duplicates by command id, docs/device-protocol.md §4)."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
from corral_agent import Agent, AgentConfig
from corral_agent import daemon as agent_daemon

from tests.conftest import Factory
from tests.devices.device import inventory
from tests.live import free_port
from tests.push.test_two_replicas import Replica

DEVICES = 6
WAVES = 3


class Balancer:
    """A TCP load balancer on loopback: each connection goes to the next backend that accepts it (a killed
    one refuses), bytes piped both ways; when a backend dies, its connections close."""

    def __init__(self, port: int, backends: list[int]) -> None:
        self.port, self.backends = port, backends
        self._next = itertools.cycle(range(len(backends)))
        self._server: asyncio.Server | None = None

    async def __aenter__(self) -> Balancer:
        self._server = await asyncio.start_server(self._handle, "127.0.0.1", self.port)
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self._server is not None
        self._server.close()
        with contextlib.suppress(Exception):
            await asyncio.wait_for(self._server.wait_closed(), 2)

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        for _ in self.backends:
            port = self.backends[next(self._next)]
            try:
                upstream_reader, upstream_writer = await asyncio.open_connection("127.0.0.1", port)
                break
            except OSError:
                continue
        else:
            writer.close()
            return

        async def pipe(source: asyncio.StreamReader, sink: asyncio.StreamWriter) -> None:
            try:
                while data := await source.read(65536):
                    sink.write(data)
                    await sink.drain()
            except OSError:
                pass  # the other side is gone: close this one too
            finally:
                sink.close()

        both = (pipe(reader, upstream_writer), pipe(upstream_reader, writer))
        await asyncio.gather(*both, return_exceptions=True)


@contextlib.asynccontextmanager
async def running(agents: list[Agent]) -> AsyncIterator[None]:
    stop = asyncio.Event()
    tasks = [asyncio.create_task(agent_daemon.run(a, stop=stop, handle_signals=False)) for a in agents]
    try:
        yield
    finally:
        stop.set()
        await asyncio.wait_for(asyncio.gather(*tasks, return_exceptions=True), 30)


async def test_a_replica_killed_while_commands_are_delivered_loses_none_and_runs_none_twice(
    db_url: str, tmp_path: Path, factory: Factory
) -> None:
    public = f"http://127.0.0.1:{free_port()}"  # both replicas answer as the balancer's address
    a = Replica(db_url, tmp_path / "a", public_url=public)
    replicas = [a]
    try:
        a.wait_healthy()
        b = Replica(db_url, tmp_path / "b", public_url=public)
        replicas.append(b)
        b.wait_healthy()
        port = int(public.rsplit(":", 1)[1])
        async with Balancer(port, [a.port, b.port]), httpx.AsyncClient(base_url=public, timeout=10) as api:
            await run_fleet(api, a, factory, tmp_path)
    finally:
        for replica in replicas:
            replica.stop()


async def run_fleet(api: httpx.AsyncClient, a: Replica, factory: Factory, tmp_path: Path) -> None:
    admin = await factory.admin("Global administrator")
    token = await api.post(
        "/api/v1/enrollment-tokens",
        json={"name": "Failover", "platforms": ["linux"], "ownership": "company"},
        headers=admin.headers,
    )
    assert token.status_code == 201, token.text
    agents: list[Agent] = []
    ids: list[str] = []
    for index in range(DEVICES):
        facts = inventory()
        facts["hardware"]["serial_number"] = f"FAILOVER-{index}"
        agent = Agent(
            tmp_path / f"agent{index}",
            config=AgentConfig(simulate=True),
            inventory=lambda facts=facts: facts,
            os_name="linux",
        )
        state = await agent.enroll(token.json()["enrollment_url"], name=f"failover-{index}")
        agents.append(agent)
        ids.append(state.device_id)

    async def queue(wave: int) -> list[tuple[str, str]]:
        made = []
        for device_id in ids:
            response = await api.post(
                f"/api/v1/devices/{device_id}/actions/notify",
                json={"params": {"message": f"wave {wave}", "title": "Failover"}},
                headers=admin.headers,
            )
            assert response.status_code == 202, response.text
            made.append((device_id, response.json()["id"]))
        return made

    queued: list[tuple[str, str]] = []
    async with running(agents):
        await asyncio.sleep(1.0)  # the agents check in and hold their streams (on both replicas)
        for wave in range(WAVES):
            queued += await queue(wave)
            if wave == 1:
                await asyncio.sleep(0.05)  # the wake-ups are out, the agents' exchanges under way
                a.process.kill()  # SIGKILL: no shutdown, connections cut mid-request
            await asyncio.sleep(0.3)

        async def finished() -> dict[str, Any]:
            statuses: dict[str, Any] = {}
            for device_id in ids:
                history = await api.get(f"/api/v1/devices/{device_id}/commands", headers=admin.headers)
                assert history.status_code == 200, history.text
                statuses |= {c["id"]: c for c in history.json()}
            return statuses

        deadline = time.monotonic() + 30
        while True:
            statuses = await finished()
            if all(statuses.get(c, {}).get("status") == "succeeded" for _, c in queued):
                break
            assert time.monotonic() < deadline, [
                (d, statuses.get(c)) for d, c in queued if statuses.get(c, {}).get("status") != "succeeded"
            ]
            await asyncio.sleep(0.3)

    assert a.process.wait(5) == -9  # it was killed, not stopped
    assert len(queued) == DEVICES * WAVES
    # Each device carried out each of its commands once, in the order they were queued.
    for agent, device_id in zip(agents, ids, strict=True):
        ran = [e["command_id"] for e in agent.executor.read_effects() if e["type"] == "notify"]
        mine = [c for d, c in queued if d == device_id]
        assert ran == mine, (device_id, ran, mine)
