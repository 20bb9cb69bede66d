"""The real agent against a real server: enroll with the URL an admin created (Corral's own CA pinned),
run the daemon (wake-up stream + check-ins), get locked within a second or two of the help desk's click,
then wiped (company device) or retired (personal device): the enrollment ends on both sides and the old
credentials are refused."""

from __future__ import annotations

import asyncio
import shutil
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import datetime
from pathlib import Path
from typing import Any

import httpx
import pytest
from corral_agent import Agent, AgentConfig, AuthenticationError
from corral_agent import daemon as agent_daemon

from corral.push.hub import PushHub
from tests.conftest import Factory, make_settings
from tests.devices.device import inventory
from tests.live import LiveServer, corral_ca_tls, free_port, start_live_server
from tests.push.conftest import eventually


@pytest.fixture
async def live_https(tmp_path: Path, db_url: str) -> AsyncIterator[LiveServer]:
    """HTTPS with a certificate from Corral's own CA, as ``corral serve --https`` does: enrollment URLs then
    carry ``ca=sha256:…`` and the agent pins it."""
    port = free_port()
    settings = make_settings(tmp_path, db_url, base_url=f"https://127.0.0.1:{port}", tls=True)
    tls = await corral_ca_tls(settings, db_url, tmp_path / "tls")
    live = await asyncio.to_thread(start_live_server, tmp_path, db_url, tls=tls, port=port, settings=settings)
    yield live
    await asyncio.to_thread(live.stop)


def parse_time(value: str) -> datetime:
    return datetime.fromisoformat(value.replace("Z", "+00:00"))


async def until(check: Callable[[], Awaitable[Any]], timeout: float = 10.0) -> Any:
    return await eventually(check, timeout=timeout, interval=0.02)


@pytest.mark.parametrize(
    ("ownership", "action", "ended"),
    [("company", "wipe", "wiped"), ("personal", "retire", "retired")],
)
async def test_the_agent_is_enrolled_locked_at_once_and_then_its_enrollment_ended(
    live_https: LiveServer, factory: Factory, tmp_path: Path, ownership: str, action: str, ended: str
) -> None:
    live = live_https
    assert live.tls is not None
    admin = await factory.admin("Global administrator")
    helpdesk = await factory.admin("Help desk operator")
    async with httpx.AsyncClient(base_url=live.url, verify=live.tls.client_context(), timeout=10) as api:
        created = await api.post(
            "/api/v1/enrollment-tokens",
            json={"name": "Field laptops", "platforms": ["linux"], "ownership": ownership},
            headers=admin.headers,
        )
        assert created.status_code == 201, created.text
        enrollment_url = created.json()["enrollment_url"]
        assert "ca=sha256%3A" in enrollment_url or "ca=sha256:" in enrollment_url

        facts = inventory(primary_user="alice")
        facts["hardware"]["serial_number"] = f"E2E-{action.upper()}-1"
        agent = Agent(
            tmp_path / "agent", config=AgentConfig(simulate=True), inventory=lambda: facts, os_name="linux"
        )
        state = await agent.enroll(enrollment_url, name=f"e2e-{action}")
        assert state.tls_ca_fingerprint  # the server's CA is pinned
        device_id = state.device_id

        stop = asyncio.Event()
        running = asyncio.create_task(agent_daemon.run(agent, stop=stop, handle_signals=False))
        try:
            # It checks in with its inventory and holds the wake-up stream.
            async def visible() -> dict[str, Any] | None:
                response = await api.get(f"/api/v1/devices/{device_id}", headers=helpdesk.headers)
                body: dict[str, Any] = response.json()
                return body if response.status_code == 200 and body["inventory"] else None

            detail = await until(visible)
            assert detail["serial_number"] == f"E2E-{action.upper()}-1" and detail["ownership"] == ownership
            assert detail["inventory"]["primary_user"] == "alice" and detail["hostname"] == "alice-laptop"
            assert detail["agent_version"] and detail["management_state"] == "managed"
            hub: PushHub = live.app.state.push_hub
            await until(lambda: live.call(lambda: hub.connected(device_id)))

            # The help desk locks it: the wake-up makes the agent check in, act and report at once.
            started = time.perf_counter()
            queued = await api.post(
                f"/api/v1/devices/{device_id}/actions/lock",
                json={"params": {"message": "Call IT", "phone": "+1 555 0100"}},
                headers=helpdesk.headers,
            )
            assert queued.status_code == 202, queued.text

            async def lock_done() -> dict[str, Any] | None:
                history = await api.get(f"/api/v1/devices/{device_id}/commands", headers=helpdesk.headers)
                command: dict[str, Any] = history.json()[0]
                return command if command["status"] == "succeeded" else None

            command = await until(lock_done, timeout=5)
            seen = time.perf_counter() - started
            on_server = (
                parse_time(command["completed_at"]) - parse_time(command["created_at"])
            ).total_seconds()
            print(
                f"\nlock → agent's result: {on_server:.3f} s on the server clock "
                f"({seen:.3f} s as seen by the test)"
            )
            assert on_server < 2.0 and seen < 2.0
            assert command["result"]["locked_at"] and command["delivery_count"] == 1
            effects = agent.executor.read_effects()
            assert [(e["type"], e["effect"], e["params"]["message"]) for e in effects] == [
                ("lock", "screen locked", "Call IT")
            ]

            # Keep a copy of its credentials, to show they are refused once the enrollment has ended.
            kept = tmp_path / "kept-credentials"
            shutil.copytree(agent.state_dir, kept)

            reason = "Laptop reported stolen" if action == "wipe" else "Employee left; personal device"
            issued = await api.post(
                f"/api/v1/devices/{device_id}/actions/{action}",
                json={"reason": reason, "confirm": f"e2e-{action}"},
                headers=admin.headers,
            )
            assert issued.status_code == 202, issued.text
            summary = await asyncio.wait_for(running, 10)  # the daemon stops by itself: enrollment ended
        finally:
            stop.set()
            await asyncio.gather(running, return_exceptions=True)

        assert summary is not None and summary.ended == action
        assert not agent.enrolled
        last = agent.executor.read_effects()[-1]
        assert last["type"] == action and "enrollment removed" in last["effect"]

        detail = (await api.get(f"/api/v1/devices/{device_id}", headers=admin.headers)).json()
        assert detail["management_state"] == ended
        history = (await api.get(f"/api/v1/devices/{device_id}/commands", headers=admin.headers)).json()
        assert history[0]["type"] == action and history[0]["status"] == "acknowledged"

        stale = Agent(kept, config=AgentConfig(simulate=True), inventory=lambda: facts, os_name="linux")
        with pytest.raises(AuthenticationError) as refused:
            await stale.checkin()
        assert refused.value.status == 401 and "revoked" in str(refused.value)
        assert not await live.call(lambda: hub.connected(device_id))
