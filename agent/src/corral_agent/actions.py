"""Command handlers (device-protocol.md §8).

Real mode acts on the device; simulate mode (``--simulate`` or ``"simulate": true``) appends what would have
happened to ``simulated-effects.jsonl`` in the state directory instead. Destructive commands (wipe, retire,
restart, shutdown) act in real mode only when the configuration says ``"allow_destructive": true``, and wipe
and retire only ever delete the *contents* of the configured ``managed_data_dirs``.

``wipe`` and ``retire`` are reported ``acknowledged`` first and carried out afterwards (the client delivers
the acknowledgement, then calls :meth:`Executor.perform_deferred`), because the server revokes the device's
certificate as soon as it learns of them: there is no later request to report success with.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import subprocess
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal

from corral_agent.config import AgentConfig
from corral_agent.inventory import current_platform
from corral_agent.state import AgentState, StateStore

log = logging.getLogger(__name__)

Status = Literal["acknowledged", "succeeded", "failed", "not_now"]
DESTRUCTIVE_DISABLED = "destructive actions are disabled on this device; set allow_destructive"
#: Restart and shutdown are scheduled this many minutes ahead, so the result can still be reported.
POWER_DELAY_MINUTES = 1
_MACOS_CGSESSION = "/System/Library/CoreServices/Menu Extras/User.menu/Contents/Resources/CGSession"

#: Runs a command; returns (exit status, combined output). Replaceable in tests.
Runner = Callable[[list[str]], tuple[int, str]]


def run_command(args: list[str]) -> tuple[int, str]:
    try:
        done = subprocess.run(args, capture_output=True, text=True, timeout=60, check=False)
    except FileNotFoundError:
        return 127, f"{args[0]}: not found"
    except (OSError, subprocess.SubprocessError) as exc:
        return 1, str(exc)
    return done.returncode, (done.stdout + done.stderr).strip()


@dataclass(frozen=True)
class CommandResult:
    """One entry of ``command_results`` in a check-in."""

    command_id: str
    status: Status
    result: dict[str, Any] | None = None
    error: str | None = None

    def to_json(self) -> dict[str, Any]:
        data: dict[str, Any] = {"command_id": self.command_id, "status": self.status}
        if self.result is not None:
            data["result"] = self.result
        if self.error is not None:
            data["error"] = self.error[:512]
        return data


@dataclass(frozen=True)
class Outcome:
    """What handling a command produced: a result to report now and, for wipe/retire, work to do after the
    result has been delivered."""

    result: CommandResult
    deferred: bool = False
    ends_enrollment: bool = False


def _now_text() -> str:
    return datetime.now(UTC).replace(microsecond=0).isoformat().replace("+00:00", "Z")


def _parse_time(value: Any) -> datetime | None:
    if not isinstance(value, str):
        return None
    try:
        parsed = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        return None
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)


def wipe_directory_contents(directory: Path) -> int:
    """Delete everything inside ``directory`` (not the directory itself), never following symbolic links:
    a link is removed, not what it points to. Returns the number of top-level entries removed."""
    removed = 0
    with os.scandir(directory) as entries:
        for entry in sorted(entries, key=lambda e: e.name):
            if entry.is_dir(follow_symlinks=False):
                shutil.rmtree(entry.path)
            else:
                os.unlink(entry.path)
            removed += 1
    return removed


class Executor:
    """Carries out commands on this device, or records them in simulate mode."""

    def __init__(
        self,
        config: AgentConfig,
        store: StateStore,
        *,
        os_name: str | None = None,
        runner: Runner = run_command,
        now: Callable[[], datetime] = lambda: datetime.now(UTC),
    ) -> None:
        self.config = config
        self.store = store
        self.os_name = os_name or current_platform()
        self.runner = runner
        self.now = now

    @property
    def simulate(self) -> bool:
        return self.config.simulate

    # -------------------------------------------------------------------------------------------- effects
    def record_effect(self, command: dict[str, Any], effect: str, **details: Any) -> None:
        """Append one line to ``simulated-effects.jsonl`` (0600)."""
        self.store.ensure()
        line = {
            "time": _now_text(),
            "command_id": command.get("id"),
            "type": command.get("type"),
            "params": command.get("params") or {},
            "platform": self.os_name,
            "effect": effect,
            **details,
        }
        fd = os.open(self.store.effects_path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
        with os.fdopen(fd, "a", encoding="utf-8") as handle:
            handle.write(json.dumps(line, sort_keys=True) + "\n")

    def read_effects(self) -> list[dict[str, Any]]:
        try:
            text = self.store.effects_path.read_text(encoding="utf-8")
        except FileNotFoundError:
            return []
        return [json.loads(line) for line in text.splitlines() if line.strip()]

    # -------------------------------------------------------------------------------------------- dispatch
    def execute(self, command: dict[str, Any], state: AgentState) -> Outcome:
        command_id = str(command.get("id"))
        kind = str(command.get("type"))
        params = command.get("params") or {}
        if not isinstance(params, dict):
            return Outcome(CommandResult(command_id, "failed", error="params must be an object"))
        expires = _parse_time(command.get("expires_at"))
        if expires is not None and expires < self.now():
            return Outcome(
                CommandResult(command_id, "failed", error="the command expired before it could run")
            )
        handler = getattr(self, f"_do_{kind}", None)
        if handler is None:
            return Outcome(CommandResult(command_id, "failed", error=f"unknown command type {kind!r}"))
        try:
            outcome: Outcome = handler(command_id, command, params, state)
        except Exception as exc:  # a handler bug must become a failed result, not a stuck command
            log.exception("command %s (%s) failed", command_id, kind)
            return Outcome(CommandResult(command_id, "failed", error=f"{type(exc).__name__}: {exc}"))
        return outcome

    def _succeeded(self, command_id: str, result: dict[str, Any] | None = None) -> Outcome:
        return Outcome(CommandResult(command_id, "succeeded", result))

    def _failed(self, command_id: str, error: str) -> Outcome:
        return Outcome(CommandResult(command_id, "failed", error=error))

    def _unsupported(self, command_id: str) -> Outcome:
        return self._failed(command_id, f"not supported on {self.os_name}")

    # -------------------------------------------------------------------------------------------- handlers
    def _do_sync(
        self, command_id: str, command: dict[str, Any], params: dict[str, Any], state: AgentState
    ) -> Outcome:
        if self.simulate:
            self.record_effect(command, "checked in")
        return self._succeeded(command_id)

    def _do_lock(
        self, command_id: str, command: dict[str, Any], params: dict[str, Any], state: AgentState
    ) -> Outcome:
        if self.simulate:
            self.record_effect(
                command, "screen locked", message=params.get("message"), phone=params.get("phone")
            )
            return self._succeeded(command_id, {"locked_at": _now_text()})
        if self.os_name == "linux":
            attempts = [["loginctl", "lock-sessions"]]
        elif self.os_name == "macos":
            attempts = [[_MACOS_CGSESSION, "-suspend"]] if Path(_MACOS_CGSESSION).exists() else []
            attempts.append(["pmset", "displaysleepnow"])
        elif self.os_name == "windows":
            attempts = [["rundll32.exe", "user32.dll,LockWorkStation"]]
        else:
            return self._unsupported(command_id)
        errors = []
        for args in attempts:
            status, output = self.runner(args)
            if status == 0:
                return self._succeeded(command_id, {"locked_at": _now_text()})
            errors.append(f"{' '.join(args)}: exit {status}{': ' + output if output else ''}")
        return self._failed(command_id, "could not lock the screen: " + "; ".join(errors))

    def _do_notify(
        self, command_id: str, command: dict[str, Any], params: dict[str, Any], state: AgentState
    ) -> Outcome:
        message = str(params.get("message") or "")
        title = str(params.get("title") or "Corral")
        if not message:
            return self._failed(command_id, "the notification has no message")
        if self.simulate:
            self.record_effect(command, "notification shown", title=title, message=message)
            return self._succeeded(command_id, {"shown_at": _now_text()})
        if self.os_name == "linux":
            # A system service reaches logged-in users' terminals; desktop sessions show it through wall too.
            attempts = [["wall", f"{title}: {message}"]]
        elif self.os_name == "macos":
            script = f"display notification {json.dumps(message)} with title {json.dumps(title)}"
            attempts = [["osascript", "-e", script]]
        elif self.os_name == "windows":
            attempts = [["msg", "*", f"{title}: {message}"]]
        else:
            return self._unsupported(command_id)
        errors = []
        for args in attempts:
            status, output = self.runner(args)
            if status == 0:
                return self._succeeded(command_id, {"shown_at": _now_text()})
            errors.append(f"{args[0]}: exit {status}{': ' + output if output else ''}")
        return self._failed(command_id, "could not show the notification: " + "; ".join(errors))

    def _destructive_refused(self) -> bool:
        return not self.simulate and not self.config.allow_destructive

    def _do_wipe(
        self, command_id: str, command: dict[str, Any], params: dict[str, Any], state: AgentState
    ) -> Outcome:
        if self._destructive_refused():
            return self._failed(command_id, DESTRUCTIVE_DISABLED)
        return Outcome(CommandResult(command_id, "acknowledged"), deferred=True, ends_enrollment=True)

    def _do_retire(
        self, command_id: str, command: dict[str, Any], params: dict[str, Any], state: AgentState
    ) -> Outcome:
        if self._destructive_refused():
            return self._failed(command_id, DESTRUCTIVE_DISABLED)
        return Outcome(CommandResult(command_id, "acknowledged"), deferred=True, ends_enrollment=True)

    def _power(self, command_id: str, command: dict[str, Any], restart: bool) -> Outcome:
        if self._destructive_refused():
            return self._failed(command_id, DESTRUCTIVE_DISABLED)
        word = "restart" if restart else "shutdown"
        if self.simulate:
            self.record_effect(command, f"{word} scheduled in {POWER_DELAY_MINUTES} minute(s)")
            return self._succeeded(command_id, {})
        if self.os_name in ("linux", "macos"):
            args = ["shutdown", "-r" if restart else "-h", f"+{POWER_DELAY_MINUTES}"]
        elif self.os_name == "windows":
            args = ["shutdown", "/r" if restart else "/s", "/t", str(POWER_DELAY_MINUTES * 60)]
        else:
            return self._unsupported(command_id)
        status, output = self.runner(args)
        if status != 0:
            return self._failed(
                command_id, f"could not schedule the {word}: exit {status}: {output}".strip(": ")
            )
        return self._succeeded(command_id, {})

    def _do_restart(
        self, command_id: str, command: dict[str, Any], params: dict[str, Any], state: AgentState
    ) -> Outcome:
        return self._power(command_id, command, restart=True)

    def _do_shutdown(
        self, command_id: str, command: dict[str, Any], params: dict[str, Any], state: AgentState
    ) -> Outcome:
        return self._power(command_id, command, restart=False)

    def _do_locate(
        self, command_id: str, command: dict[str, Any], params: dict[str, Any], state: AgentState
    ) -> Outcome:
        # No location source on desktop systems: "not now" (the server may ask again later).
        if self.simulate:
            self.record_effect(command, "no location source: not now")
        return Outcome(CommandResult(command_id, "not_now"))

    def _do_lost_mode_on(
        self, command_id: str, command: dict[str, Any], params: dict[str, Any], state: AgentState
    ) -> Outcome:
        return self._unsupported(command_id)

    _do_lost_mode_off = _do_lost_mode_on
    _do_passcode_reset = _do_lost_mode_on

    def _do_rename(
        self, command_id: str, command: dict[str, Any], params: dict[str, Any], state: AgentState
    ) -> Outcome:
        name = params.get("name")
        if not isinstance(name, str) or not name.strip() or len(name) > 512:
            return self._failed(command_id, "rename needs a non-empty name of at most 512 characters")
        state.device_name = name.strip()
        if self.simulate:
            self.record_effect(command, f"renamed to {state.device_name!r}")
        return self._succeeded(command_id, {})

    # -------------------------------------------------------------------------------------------- deferred
    def perform_deferred(self, command: dict[str, Any]) -> dict[str, Any]:
        """Carry out an acknowledged wipe or retire: delete the contents of the managed data directories (or,
        simulating, record that). The caller then forgets the enrollment."""
        kind = command.get("type")
        params = command.get("params") or {}
        dirs = [str(d) for d in self.config.managed_data_dirs]
        if self.simulate:
            self.record_effect(
                command,
                f"{kind}: contents of managed data directories deleted; enrollment removed",
                managed_data_dirs=dirs,
            )
            return {"simulated": True, "managed_data_dirs": dirs}
        if not self.config.allow_destructive:  # checked when the command arrived; checked again here
            raise PermissionError(DESTRUCTIVE_DISABLED)
        removed: dict[str, int] = {}
        for directory in self.config.managed_data_dirs:
            resolved = directory.resolve()
            if resolved == Path(resolved.anchor):
                log.error("%s: refusing to wipe %s (a filesystem root)", kind, resolved)
                continue
            if not resolved.is_dir():
                log.warning(
                    "%s: managed data directory %s does not exist; nothing to delete", kind, directory
                )
                continue
            removed[str(directory)] = wipe_directory_contents(resolved)
            log.warning("%s: deleted %d entries in %s", kind, removed[str(directory)], directory)
        if kind == "wipe" and params:
            log.info("wipe parameters %s: this agent wipes only managed data directories", sorted(params))
        return {"removed": removed}
