"""The `corral` command as an operator runs it: real processes against the test database."""

from __future__ import annotations

import asyncio
import os
import re
import signal
import socket
import ssl
import subprocess
import sys
import time
from pathlib import Path

import asyncpg
import httpx
from fastapi import FastAPI

from tests.conftest import Cluster, new_client, with_database

CORRAL = [sys.executable, "-m", "corral.cli"]


def env_for(db_url: str, tmp_path: Path, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("CORRAL_")}
    env.update(
        {
            "CORRAL_DATABASE_URL": db_url,
            "CORRAL_DATA_DIR": str(tmp_path / "data"),
            "CORRAL_SECRET_KEY": "cli-test-secret-" + "s" * 40,
            "CORRAL_LOG_JSON": "false",
        }
    )
    env.update(extra)
    return env


def corral(
    args: list[str], env: dict[str, str], stdin: str | None = None
) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*CORRAL, *args], env=env, input=stdin, capture_output=True, text=True, timeout=60)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


async def test_admin_create_and_token_create_give_a_working_api_token(
    app: FastAPI, db_url: str, tmp_path: Path
) -> None:
    env = env_for(db_url, tmp_path)
    created = await asyncio.to_thread(
        corral,
        ["admin", "create", "--email", "ops@example.com", "--role", "Help desk operator", "--password-stdin"],
        env,
        "a long enough password\n",
    )
    assert created.returncode == 0, created.stderr
    assert "created ops@example.com (Help desk operator)" in created.stdout

    again = await asyncio.to_thread(
        corral,
        ["admin", "create", "--email", "OPS@example.com", "--password-stdin"],
        env,
        "another password 1\n",
    )
    assert again.returncode == 1 and "already exists" in again.stderr

    unknown_role = await asyncio.to_thread(
        corral,
        ["admin", "create", "--email", "x@example.com", "--role", "Emperor", "--one-time-password"],
        env,
    )
    assert unknown_role.returncode == 1 and "No role is named 'Emperor'" in unknown_role.stderr

    token = await asyncio.to_thread(corral, ["token", "create", "--email", "ops@example.com"], env)
    assert token.returncode == 0, token.stderr
    secret = token.stdout.strip()
    assert secret.startswith("corral_pat_")
    async with new_client(app) as client:
        me = await client.get("/api/v1/me", headers={"Authorization": f"Bearer {secret}"})
        assert me.status_code == 200 and me.json()["email"] == "ops@example.com"
        assert (
            await client.get("/api/v1/settings", headers={"Authorization": f"Bearer {secret}"})
        ).status_code == 403

    beyond = await asyncio.to_thread(
        corral, ["token", "create", "--email", "ops@example.com", "--permission", "settings:write"], env
    )
    assert beyond.returncode == 1 and "lacks" in beyond.stderr


async def test_serve_refuses_an_unmigrated_database(cluster: Cluster, tmp_path: Path) -> None:
    name = f"empty_{os.getpid()}_{time.monotonic_ns()}"
    conn = await asyncpg.connect(cluster.admin_url)
    await conn.execute(f"CREATE DATABASE {name}")
    await conn.close()
    env = env_for(with_database(cluster.admin_url, name), tmp_path)
    result = await asyncio.to_thread(corral, ["serve", "--port", str(free_port())], env)
    assert result.returncode == 1
    assert "not current" in result.stderr and "corral db upgrade" in result.stderr
    status = await asyncio.to_thread(corral, ["db", "current"], env)
    assert status.returncode == 1 and "current: empty" in status.stdout


def _wait_healthy(url: str, verify: str, proc: subprocess.Popen[str]) -> None:
    deadline = time.monotonic() + 45
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise AssertionError(
                f"serve exited with {proc.returncode}: {proc.stderr.read() if proc.stderr else ''}"
            )
        try:
            if (
                httpx.get(
                    f"{url}/healthz", verify=ssl.create_default_context(cafile=verify), timeout=2
                ).status_code
                == 200
            ):
                return
        except (httpx.TransportError, FileNotFoundError, OSError):
            pass
        time.sleep(0.3)
    raise AssertionError("serve did not become healthy")


async def test_serve_over_https_with_its_own_ca_and_bootstrap_admin(db_url: str, tmp_path: Path) -> None:
    port = free_port()
    env = env_for(db_url, tmp_path)
    proc = subprocess.Popen(
        [*CORRAL, "serve", "--https", "--port", str(port)],
        env=env,
        text=True,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    try:
        ca = tmp_path / "data" / "tls" / "ca.crt"
        url = f"https://127.0.0.1:{port}"
        await asyncio.to_thread(_wait_healthy, url, str(ca), proc)
        # The certificate verifies against Corral's CA: no "insecure" flag needed.
        async with httpx.AsyncClient(
            base_url=url, verify=ssl.create_default_context(cafile=str(ca))
        ) as client:
            ready = await client.get("/readyz")
            assert ready.status_code == 200 and ready.json()["status"] == "ready"
            page = await client.get("/portal/sign-in")
            assert page.status_code == 200
            assert "max-age=31536000" in page.headers["strict-transport-security"]
    finally:
        proc.send_signal(signal.SIGTERM)
        out, err = await asyncio.to_thread(proc.communicate, timeout=30)
    # Graceful: the application shut down, then uvicorn re-raised the signal it caught.
    assert proc.returncode in (0, -signal.SIGTERM), err
    assert "Application shutdown complete" in err
    assert f"Corral is starting on https://127.0.0.1:{port}" in out
    assert re.search(r"sign-in name:\s+admin@corral.local", out)
    assert re.search(r"password:\s+\S{16,}", out)
    assert "SHA-256 fingerprint" in out
    key = tmp_path / "data" / "tls" / "server.key"
    assert oct(key.stat().st_mode & 0o777) == "0o600"
