"""Fixtures for the agent's tests: no Corral server, no database — a strict fake of the device endpoints."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from corral_agent import Agent, AgentConfig
from corral_agent.transport import RetryPolicy

from tests.agent.fake_corral import FakeCorral

INVENTORY: dict[str, Any] = {
    "hardware": {
        "manufacturer": "Acme",
        "model": "T1",
        "serial_number": "SER-1",
        "cpu_architecture": "x86_64",
    },
    "os": {"platform": "linux", "name": "Debian GNU/Linux", "version": "12.7", "build": "6.1.0"},
    "security": {"disk_encrypted": True, "firewall_enabled": None},
    "network": {"hostname": "test-host", "interfaces": []},
    "apps": [{"name": "bash", "version": "5.2", "identifier": "bash"}],
    "primary_user": "alice",
}


class Sleeps:
    """Records the delays the agent asks for instead of waiting."""

    def __init__(self) -> None:
        self.delays: list[float] = []

    async def __call__(self, seconds: float) -> None:
        self.delays.append(seconds)


@pytest.fixture
def fake() -> FakeCorral:
    return FakeCorral()


@pytest.fixture
def sleeps() -> Sleeps:
    return Sleeps()


@pytest.fixture
def inventory() -> dict[str, Any]:
    return {k: (dict(v) if isinstance(v, dict) else v) for k, v in INVENTORY.items()}


@pytest.fixture
def make_agent(fake: FakeCorral, sleeps: Sleeps, inventory: dict[str, Any], tmp_path: Path) -> Any:
    def factory(config: AgentConfig | None = None, state_dir: Path | None = None, **kwargs: Any) -> Agent:
        return Agent(
            state_dir or tmp_path / "state",
            config=config or AgentConfig(simulate=True),
            transport=httpx.MockTransport(fake),
            inventory=lambda: inventory,
            os_name="linux",
            retry=RetryPolicy(attempts=4),
            sleep=sleeps,
            **kwargs,
        )

    return factory


@pytest.fixture
async def enrolled(make_agent: Any, fake: FakeCorral) -> AsyncIterator[Agent]:
    agent = make_agent()
    await agent.enroll(fake.enroll_url())
    yield agent
