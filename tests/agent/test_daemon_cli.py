"""`corral-agent run` (the daemon loop) and the command line."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import httpx
import pytest
from corral_agent import Agent, AgentConfig, cli
from corral_agent.daemon import error_delay, next_delay, run

from tests.agent.conftest import INVENTORY
from tests.agent.fake_corral import TOKEN, FakeCorral


async def wait_until(condition: Any, seconds: float = 10.0) -> None:
    for _ in range(int(seconds / 0.05)):
        if condition():
            return
        await asyncio.sleep(0.05)
    raise AssertionError("condition not met in time")


async def test_run_checks_in_acts_on_wake_ups_and_stops(enrolled: Agent, fake: FakeCorral) -> None:
    device_id = enrolled.load_state().device_id
    lock = fake.queue(device_id, "lock")
    stop = asyncio.Event()
    task = asyncio.create_task(run(enrolled, stop=stop, handle_signals=False))
    await wait_until(lambda: lock.status == "succeeded")
    rename = fake.queue(device_id, "rename", name="after-wake")
    # The periodic check-in is 180 s away: only a wake-up from the event stream brings this one in.
    await wait_until(lambda: rename.status == "succeeded")
    assert any(r.url.path == "/device/v1/events" for r in fake.requests)
    stop.set()
    assert await asyncio.wait_for(task, 5) is None


async def test_run_ends_after_retire(enrolled: Agent, fake: FakeCorral) -> None:
    fake.queue(enrolled.load_state().device_id, "retire")
    summary = await asyncio.wait_for(run(enrolled, handle_signals=False), 10)
    assert summary is not None and summary.ended == "retire"
    assert not enrolled.enrolled


def test_delays_have_bounded_jitter() -> None:
    for _ in range(100):
        assert 180 <= next_delay(180) <= 198
        assert 28800 <= next_delay(28800) <= 28800 + 600
        assert 15 <= error_delay(1, 180) <= 30
        assert error_delay(10, 180) <= 180


@pytest.fixture
def cli_fake(monkeypatch: pytest.MonkeyPatch) -> FakeCorral:
    fake = FakeCorral()

    def agent(state_dir: Path, config: AgentConfig) -> Agent:
        return Agent(
            state_dir, config=config, transport=httpx.MockTransport(fake), inventory=lambda: INVENTORY
        )

    monkeypatch.setattr(cli, "Agent", agent)
    return fake


def test_cli_enroll_checkin_status(
    cli_fake: FakeCorral, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    state_dir = str(tmp_path / "state")
    assert cli.main(["--state-dir", state_dir, "status"]) == 1
    assert "not enrolled" in capsys.readouterr().err

    assert cli.main(["enroll", cli_fake.enroll_url(), "--state-dir", state_dir]) == 0
    out = capsys.readouterr().out
    assert "enrolled: device" in out
    device_id = next(iter(cli_fake.devices))
    cli_fake.queue(device_id, "lock")

    assert cli.main(["checkin", "--state-dir", state_dir, "--simulate"]) == 0
    out = capsys.readouterr().out
    assert "command:    lock" in out and "succeeded" in out
    assert (Path(state_dir) / "simulated-effects.jsonl").exists()

    assert cli.main(["status", "--json", "--state-dir", state_dir]) == 0
    status = json.loads(capsys.readouterr().out)
    assert status["device_id"] == device_id
    assert status["last_checkin_at"]


def test_cli_enroll_with_url_and_token_options(
    cli_fake: FakeCorral, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    state_dir = str(tmp_path / "state")
    assert cli.main(["enroll", "--url", cli_fake.base_url, "--state-dir", state_dir]) == 1  # no token
    monkeypatch.setenv("CORRAL_ENROLLMENT_TOKEN", TOKEN)
    assert (
        cli.main(["enroll", "--url", cli_fake.base_url, "--state-dir", state_dir, "--name", "kiosk-1"]) == 0
    )
    assert next(iter(cli_fake.devices.values())).facts["name"] == "kiosk-1"


def test_cli_configuration_errors(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    config = tmp_path / "agent.json"
    config.write_text('{"allow_destructive": "yes"}')
    assert cli.main(["--config", str(config), "--state-dir", str(tmp_path), "status"]) == 2
    assert "allow_destructive" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        cli.main(["no-such-command"])
