"""Command handlers: simulate mode records effects; destructive commands need allow_destructive; wipe deletes
only inside managed data directories."""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path

import pytest
from corral_agent.actions import DESTRUCTIVE_DISABLED, CommandResult, Executor, wipe_directory_contents
from corral_agent.config import AgentConfig
from corral_agent.errors import ConfigError
from corral_agent.state import AgentState, StateStore


def state() -> AgentState:
    return AgentState(
        server_url="https://corral.test",
        device_id="d",
        key_file="device-00.key",
        certificate_pem="",
        certificate_fingerprint="ab" * 32,
        checkin_url="https://corral.test/device/v1/checkin",
        events_url="https://corral.test/device/v1/events",
    )


class FakeRunner:
    def __init__(self, status: int = 0, output: str = "") -> None:
        self.calls: list[list[str]] = []
        self.status, self.output = status, output

    def __call__(self, args: list[str]) -> tuple[int, str]:
        self.calls.append(args)
        return self.status, self.output


def command(type_: str, **params: object) -> dict[str, object]:
    return {"id": f"cmd-{type_}", "type": type_, "params": params, "expires_at": "2999-01-01T00:00:00Z"}


def test_simulate_records_effects_and_runs_nothing(tmp_path: Path) -> None:
    runner = FakeRunner()
    store = StateStore(tmp_path / "state")
    executor = Executor(AgentConfig(simulate=True), store, os_name="linux", runner=runner)
    current = state()
    lock = executor.execute(command("lock", message="Call IT", phone="+1 555 0100"), current)
    assert lock.result.status == "succeeded" and "locked_at" in (lock.result.result or {})
    assert executor.execute(command("restart"), current).result.status == "succeeded"
    assert executor.execute(command("shutdown"), current).result.status == "succeeded"
    assert executor.execute(command("rename", name="new-name"), current).result == CommandResult(
        "cmd-rename", "succeeded", {}
    )
    assert current.device_name == "new-name"
    wipe = executor.execute(command("wipe", keep_user_data=True), current)
    assert (wipe.result.status, wipe.deferred, wipe.ends_enrollment) == ("acknowledged", True, True)
    executor.perform_deferred(command("wipe", keep_user_data=True))
    assert runner.calls == []
    effects = executor.read_effects()
    assert [e["type"] for e in effects] == ["lock", "restart", "shutdown", "rename", "wipe"]
    assert effects[0]["params"] == {"message": "Call IT", "phone": "+1 555 0100"}
    assert effects[0]["command_id"] == "cmd-lock"
    if os.name == "posix":
        assert stat.S_IMODE(store.effects_path.stat().st_mode) == 0o600
    assert all(json.loads(line) for line in store.effects_path.read_text().splitlines())


def test_real_lock_uses_loginctl_on_linux_and_reports_failure(tmp_path: Path) -> None:
    runner = FakeRunner()
    executor = Executor(AgentConfig(), StateStore(tmp_path), os_name="linux", runner=runner)
    assert executor.execute(command("lock"), state()).result.status == "succeeded"
    assert runner.calls == [["loginctl", "lock-sessions"]]
    failing = Executor(
        AgentConfig(), StateStore(tmp_path), os_name="linux", runner=FakeRunner(1, "no sessions")
    )
    result = failing.execute(command("lock"), state()).result
    assert result.status == "failed" and result.error is not None and "no sessions" in result.error
    windows = FakeRunner()
    Executor(AgentConfig(), StateStore(tmp_path), os_name="windows", runner=windows).execute(
        command("lock"), state()
    )
    assert windows.calls == [["rundll32.exe", "user32.dll,LockWorkStation"]]


@pytest.mark.parametrize("kind", ["wipe", "retire", "restart", "shutdown"])
def test_destructive_commands_are_refused_without_allow_destructive(tmp_path: Path, kind: str) -> None:
    runner = FakeRunner()
    executor = Executor(
        AgentConfig(allow_destructive=False), StateStore(tmp_path), os_name="linux", runner=runner
    )
    outcome = executor.execute(command(kind), state())
    assert outcome.result == CommandResult(f"cmd-{kind}", "failed", error=DESTRUCTIVE_DISABLED)
    assert not outcome.deferred
    assert runner.calls == []


def test_restart_is_scheduled_so_the_result_can_still_be_reported(tmp_path: Path) -> None:
    runner = FakeRunner()
    executor = Executor(
        AgentConfig(allow_destructive=True), StateStore(tmp_path), os_name="linux", runner=runner
    )
    assert executor.execute(command("restart"), state()).result.status == "succeeded"
    assert executor.execute(command("shutdown"), state()).result.status == "succeeded"
    assert runner.calls == [["shutdown", "-r", "+1"], ["shutdown", "-h", "+1"]]


def test_wipe_in_real_mode_refuses_without_allow_destructive_and_deletes_nothing(tmp_path: Path) -> None:
    managed = tmp_path / "managed"
    managed.mkdir()
    (managed / "report.txt").write_text("company data")
    executor = Executor(
        AgentConfig(managed_data_dirs=(managed,)), StateStore(tmp_path / "s"), os_name="linux"
    )
    outcome = executor.execute(command("wipe"), state())
    assert outcome.result.status == "failed" and outcome.result.error == DESTRUCTIVE_DISABLED
    with pytest.raises(PermissionError):
        executor.perform_deferred(command("wipe"))
    assert (managed / "report.txt").read_text() == "company data"


def test_wipe_in_real_mode_deletes_only_inside_managed_directories(tmp_path: Path) -> None:
    managed = tmp_path / "managed"
    (managed / "sub" / "deeper").mkdir(parents=True)
    (managed / "a.txt").write_text("a")
    (managed / ".hidden").write_text("h")
    (managed / "sub" / "deeper" / "b.txt").write_text("b")
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "keep.txt").write_text("keep")
    (managed / "link-to-outside").symlink_to(outside, target_is_directory=True)
    (managed / "sub" / "file-link").symlink_to(outside / "keep.txt")
    unlisted = tmp_path / "unlisted"
    unlisted.mkdir()
    (unlisted / "also-keep.txt").write_text("x")

    config = AgentConfig(managed_data_dirs=(managed, tmp_path / "does-not-exist"), allow_destructive=True)
    executor = Executor(config, StateStore(tmp_path / "state"), os_name="linux")
    assert executor.execute(command("wipe"), state()).result.status == "acknowledged"
    details = executor.perform_deferred(command("wipe"))
    assert details == {"removed": {str(managed): 4}}
    assert managed.is_dir() and list(managed.iterdir()) == []
    assert (outside / "keep.txt").read_text() == "keep"  # symbolic links were removed, not followed
    assert (unlisted / "also-keep.txt").exists()
    assert executor.read_effects() == []  # real mode records no simulated effects


def test_wipe_directory_contents_counts_top_level_entries(tmp_path: Path) -> None:
    (tmp_path / "d").mkdir()
    (tmp_path / "f").write_text("")
    assert wipe_directory_contents(tmp_path) == 2
    assert wipe_directory_contents(tmp_path) == 0


def test_other_commands(tmp_path: Path) -> None:
    executor = Executor(AgentConfig(), StateStore(tmp_path), os_name="linux", runner=FakeRunner())
    current = state()
    assert executor.execute(command("locate"), current).result.status == "not_now"
    for kind in ("lost_mode_on", "lost_mode_off", "passcode_reset"):
        result = executor.execute(command(kind, message="m"), current).result
        assert (result.status, result.error) == ("failed", "not supported on linux")
    assert executor.execute(command("sync"), current).result.to_json() == {
        "command_id": "cmd-sync",
        "status": "succeeded",
    }
    assert executor.execute(command("rename", name=""), current).result.status == "failed"
    assert executor.execute(command("teleport"), current).result.error == "unknown command type 'teleport'"
    expired = {**command("lock"), "expires_at": "2000-01-01T00:00:00Z"}
    assert executor.execute(expired, current).result.error == "the command expired before it could run"


def test_config_file(tmp_path: Path) -> None:
    path = tmp_path / "agent.json"
    path.write_text(json.dumps({"managed_data_dirs": ["/srv/data"], "allow_destructive": True}))
    config = AgentConfig.load(path)
    assert config == AgentConfig(managed_data_dirs=(Path("/srv/data"),), allow_destructive=True)
    for bad in (
        {"managed_data_dirs": ["relative"]},
        {"managed_data_dirs": ["/"]},
        {"allow_destructive": "yes"},
        {"allow_destructiv": True},
        [],
    ):
        path.write_text(json.dumps(bad))
        with pytest.raises(ConfigError):
            AgentConfig.load(path)
