"""The agent's persisted state: one JSON file (mode 0600) in an owner-only state directory.

Layout of the state directory (0700)::

    state.json               enrollment and check-in state (this module)
    device-<random>.key      the device's private key (PEM, 0600); state.json names the current one
    simulated-effects.jsonl  what commands would have done, in simulate mode
    instance-id              a random identifier, the serial number of last resort (see Agent.enroll)
    .lock                    serialises check-ins of several agent processes on the same state
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import secrets
import sys
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from cryptography import x509

from corral_agent.errors import AgentError, NotEnrolledError
from corral_agent.keys import ensure_private_dir, read_private_file, write_private_file

STATE_FILE = "state.json"
EFFECTS_FILE = "simulated-effects.jsonl"
INSTANCE_ID_FILE = "instance-id"
LOCK_FILE = ".lock"
STATE_VERSION = 1
#: How many processed commands (id and final result) are remembered for de-duplication.
MAX_PROCESSED_COMMANDS = 500
ENV_STATE_DIR = "CORRAL_AGENT_STATE_DIR"


def default_state_dir() -> Path:
    """``$CORRAL_AGENT_STATE_DIR``; else a system directory for root (``/var/lib/corral-agent`` on Linux) and
    ``$XDG_STATE_HOME/corral-agent`` (``~/.local/state/corral-agent``) for anyone else."""
    env = os.environ.get(ENV_STATE_DIR)
    if env:
        return Path(env).expanduser()
    if sys.platform == "win32":
        base = os.environ.get("PROGRAMDATA") or os.environ.get("LOCALAPPDATA") or str(Path.home())
        return Path(base) / "corral-agent"
    if os.geteuid() == 0:
        return Path("/var/db/corral-agent") if sys.platform == "darwin" else Path("/var/lib/corral-agent")
    xdg = os.environ.get("XDG_STATE_HOME")
    return (Path(xdg) if xdg else Path.home() / ".local" / "state") / "corral-agent"


def utc_now_text() -> str:
    return datetime.now(UTC).replace(microsecond=0).isoformat().replace("+00:00", "Z")


@dataclass
class AgentState:
    """Everything the agent remembers between runs. Keys are never in here: ``key_file`` names the file."""

    server_url: str
    device_id: str
    key_file: str
    certificate_pem: str
    certificate_fingerprint: str
    checkin_url: str
    events_url: str
    ca_certificates_pem: str = ""
    checkin_interval_seconds: int = 180
    #: SHA-256 of the CA that must end the server's TLS chain (from the enrollment URL's ``ca``), and its PEM.
    tls_ca_fingerprint: str | None = None
    tls_ca_pem: str | None = None
    device_name: str | None = None
    #: Hash of the last inventory the server accepted (or said it already held).
    inventory_hash: str | None = None
    #: Final results of recently processed commands, oldest first, for de-duplication (bounded).
    processed_commands: list[dict[str, Any]] = field(default_factory=list)
    #: Results not yet delivered to the server.
    pending_results: list[dict[str, Any]] = field(default_factory=list)
    #: A destructive command acknowledged (or reported) but not yet carried out.
    pending_action: dict[str, Any] | None = None
    #: Seconds to add to the local clock to get the server's (from its ``Date`` header).
    clock_skew_seconds: float = 0.0
    enrolled_at: str = field(default_factory=utc_now_text)
    last_checkin_at: str | None = None
    renewed_at: str | None = None
    #: The desired-state version last applied (the check-in answer says when there is a newer one), and the
    #: setting families applied then (cleaned up when they are no longer wanted).
    desired_state_version: int = 0
    applied_families: list[str] = field(default_factory=list)

    @property
    def processed_command_ids(self) -> list[str]:
        return [str(entry["command_id"]) for entry in self.processed_commands]

    def processed_result(self, command_id: str) -> dict[str, Any] | None:
        for entry in self.processed_commands:
            if entry.get("command_id") == command_id:
                return entry
        return None

    def remember_processed(self, result: dict[str, Any]) -> None:
        self.processed_commands = [
            e for e in self.processed_commands if e.get("command_id") != result["command_id"]
        ]
        self.processed_commands.append(result)
        del self.processed_commands[:-MAX_PROCESSED_COMMANDS]

    def queue_result(self, result: dict[str, Any]) -> None:
        self.pending_results = [
            r for r in self.pending_results if r.get("command_id") != result["command_id"]
        ]
        self.pending_results.append(result)

    @property
    def certificate_not_after(self) -> datetime:
        return x509.load_pem_x509_certificate(self.certificate_pem.encode()).not_valid_after_utc

    def to_dict(self) -> dict[str, Any]:
        return {"version": STATE_VERSION, **dataclasses.asdict(self)}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> AgentState:
        names = {f.name for f in dataclasses.fields(cls)}
        values = {k: v for k, v in data.items() if k in names}
        try:
            return cls(**values)
        except TypeError as exc:
            raise AgentError(f"the agent state is incomplete ({exc})") from exc


class StateStore:
    """Reads and writes the state directory."""

    def __init__(self, directory: Path | str | None = None) -> None:
        self.directory = Path(directory).expanduser() if directory is not None else default_state_dir()

    @property
    def state_path(self) -> Path:
        return self.directory / STATE_FILE

    @property
    def effects_path(self) -> Path:
        return self.directory / EFFECTS_FILE

    @property
    def lock_path(self) -> Path:
        return self.directory / LOCK_FILE

    def ensure(self) -> Path:
        return ensure_private_dir(self.directory)

    def key_path(self, key_file: str) -> Path:
        if Path(key_file).name != key_file or key_file.startswith("."):
            raise AgentError(f"invalid key file name in the state: {key_file!r}")
        return self.directory / key_file

    def exists(self) -> bool:
        return self.state_path.is_file()

    def load(self) -> AgentState:
        try:
            raw = read_private_file(self.state_path)
        except FileNotFoundError:
            raise NotEnrolledError(
                f"this device is not enrolled (no {STATE_FILE} in {self.directory}): run corral-agent enroll"
            ) from None
        try:
            data = json.loads(raw)
        except json.JSONDecodeError as exc:
            raise AgentError(f"{self.state_path} is not valid JSON: {exc}") from exc
        if not isinstance(data, dict) or data.get("version") != STATE_VERSION:
            raise AgentError(f"{self.state_path} has an unknown format")
        return AgentState.from_dict(data)

    def load_optional(self) -> AgentState | None:
        try:
            return self.load()
        except NotEnrolledError:
            return None

    def save(self, state: AgentState) -> None:
        self.ensure()
        text = json.dumps(state.to_dict(), indent=2, sort_keys=True) + "\n"
        write_private_file(self.state_path, text.encode("utf-8"))

    def instance_id(self) -> str:
        """A random identifier made once and kept (also across re-enrollments)."""
        path = self.directory / INSTANCE_ID_FILE
        try:
            value = read_private_file(path).decode("ascii").strip()
            if value:
                return value
        except (FileNotFoundError, UnicodeDecodeError):
            pass
        value = "rnd-" + secrets.token_hex(16)
        write_private_file(path, value.encode("ascii") + b"\n")
        return value

    def forget_enrollment(self) -> None:
        """Delete the enrollment: the state file and every device key. The simulated-effects log stays."""
        with contextlib.suppress(FileNotFoundError):
            self.state_path.unlink()
        if self.directory.is_dir():
            for path in self.directory.glob("device-*.key"):
                with contextlib.suppress(FileNotFoundError):
                    path.unlink()
