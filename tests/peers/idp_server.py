"""The test identity provider (tests/peers/idp: npm oidc-provider, OpenID-certified) as a subprocess on
loopback. ``npm ci`` runs once when its node_modules is missing."""

from __future__ import annotations

import fcntl
import json
import os
import select
import shutil
import subprocess
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

IDP_DIR = Path(__file__).parent / "idp"
_install_lock = threading.Lock()


def _installed() -> bool:
    # npm writes node_modules/.package-lock.json last: a half-done install does not count.
    modules = IDP_DIR / "node_modules"
    return (modules / "oidc-provider").is_dir() and (modules / ".package-lock.json").is_file()


def ensure_installed() -> None:
    """Install once, also across pytest-xdist worker processes (a file lock: one ``npm ci`` at a time, the
    others wait for it and find it done)."""
    with _install_lock, open(IDP_DIR.parent / ".idp-install.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if _installed():
            return
        if shutil.which("node") is None or shutil.which("npm") is None:
            pytest.fail(
                "the OIDC tests need Node.js and npm (apt-get install nodejs npm); none found on PATH"
            )
        done = subprocess.run(
            ["npm", "ci", "--no-audit", "--no-fund"],
            cwd=IDP_DIR,
            capture_output=True,
            text=True,
            timeout=300,
            check=False,
        )
        if done.returncode != 0:
            pytest.fail(f"npm ci in {IDP_DIR} failed:\n{done.stdout[-2000:]}\n{done.stderr[-2000:]}")


@dataclass
class Idp:
    issuer: str
    users_file: Path

    def users(self) -> dict[str, Any]:
        users: dict[str, Any] = json.loads(self.users_file.read_text())
        return users

    def set_user(self, account: str, **claims: Any) -> None:
        """Add or change an account (the provider re-reads the file at every use)."""
        users = self.users()
        users[account] = claims
        tmp = self.users_file.with_suffix(".tmp")
        tmp.write_text(json.dumps(users))
        tmp.replace(self.users_file)


#: How long the provider may take to say where it listens before it is restarted (once) or the test fails.
START_TIMEOUT = 30.0


def _issuer_within(process: subprocess.Popen[str], timeout: float) -> str | None:
    """The ``listening <url>`` line of a starting provider, read with a deadline (never blocking for ever on a
    provider that hangs), or None."""
    assert process.stdout is not None
    fd = process.stdout.fileno()
    deadline = time.monotonic() + timeout
    seen = ""
    while (left := deadline - time.monotonic()) > 0:
        ready, _, _ = select.select([fd], [], [], left)
        if not ready:
            return None
        chunk = os.read(fd, 4096)  # raw reads: the text wrapper has buffered nothing yet
        if not chunk:
            return None  # it exited
        seen += chunk.decode("utf-8", "replace")
        for line in seen.splitlines():
            if line.startswith("listening "):
                return line.split(" ", 1)[1].strip()
    return None


def _drain(process: subprocess.Popen[str]) -> None:
    for _ in process.stdout or []:
        pass


def _start(env: dict[str, str]) -> tuple[subprocess.Popen[str], str]:
    """Start the provider; one that does not come up within START_TIMEOUT is killed and started once more."""
    for attempt in (1, 2):
        process = subprocess.Popen(
            ["node", "server.mjs"],
            cwd=IDP_DIR,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        issuer = _issuer_within(process, START_TIMEOUT)
        if issuer is not None:
            # Keep draining its output so it never blocks on a full pipe.
            threading.Thread(target=_drain, args=(process,), daemon=True).start()
            return process, issuer
        process.kill()
        process.wait(10)
        if attempt == 2:
            pytest.fail(f"the test identity provider did not start within {START_TIMEOUT:.0f} s (twice)")
    raise AssertionError("unreachable")


@contextmanager
def run_idp(directory: Path, clients: list[dict[str, Any]], *, id_token_ttl: int = 3600) -> Iterator[Idp]:
    ensure_installed()
    directory.mkdir(parents=True, exist_ok=True)
    clients_file, users_file = directory / "clients.json", directory / "users.json"
    clients_file.write_text(json.dumps(clients))
    users_file.write_text("{}")
    env = {
        **os.environ,
        "IDP_PORT": "0",
        "IDP_CLIENTS": str(clients_file),
        "IDP_USERS": str(users_file),
        "IDP_TTL_ID_TOKEN": str(id_token_ttl),
        "NODE_NO_WARNINGS": "1",
    }
    process, issuer = _start(env)
    try:
        yield Idp(issuer, users_file)
    finally:
        process.terminate()
        try:
            process.wait(10)
        except subprocess.TimeoutExpired:
            process.kill()
