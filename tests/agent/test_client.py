"""The Agent against a strict fake of Corral's device endpoints (tests/agent/fake_corral.py)."""

from __future__ import annotations

import os
import stat
from pathlib import Path
from typing import Any

import httpx
import pytest
from corral_agent import Agent, AgentConfig, parse_enrollment_url
from corral_agent.errors import AgentError, AuthenticationError, NotEnrolledError, ProtocolError
from corral_agent.inventory import inventory_hash

from tests.agent.conftest import Sleeps
from tests.agent.fake_corral import TOKEN, FakeCorral, problem

FP = "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08"


# ------------------------------------------------------------------------------------------------ URL parsing
def test_enrollment_url_parsing() -> None:
    target = parse_enrollment_url(
        f"https://corral.example.com/device/v1/enroll?token=cet_3q&ca=sha256:{FP.upper()}"
    )
    assert target.server_url == "https://corral.example.com"
    assert target.enroll_url == "https://corral.example.com/device/v1/enroll"
    assert target.token == "cet_3q"
    assert target.ca_fingerprint == FP


def test_server_url_with_separate_token_and_fingerprint() -> None:
    target = parse_enrollment_url("https://corral.example.com:8443/", token="cet_x", ca_fingerprint=FP)
    assert target.enroll_url == "https://corral.example.com:8443/device/v1/enroll"
    assert (target.token, target.ca_fingerprint) == ("cet_x", FP)
    colons = ":".join(FP[i : i + 2] for i in range(0, 64, 2))
    assert parse_enrollment_url("https://h/prefix", "t", colons).ca_fingerprint == FP
    assert parse_enrollment_url("https://h/prefix/device/v1/enroll?token=t").enroll_url == (
        "https://h/prefix/device/v1/enroll"
    )


def test_bad_enrollment_urls() -> None:
    with pytest.raises(AgentError):
        parse_enrollment_url("corral.example.com/device/v1/enroll?token=x")
    with pytest.raises(AgentError, match="fingerprint"):
        parse_enrollment_url("https://h/device/v1/enroll?token=x&ca=sha256:abc")


# ------------------------------------------------------------------------------------------------ enrollment
async def test_enrollment_stores_key_and_certificate(
    make_agent: Any, fake: FakeCorral, tmp_path: Path
) -> None:
    agent: Agent = make_agent()
    state = await agent.enroll(fake.enroll_url())
    assert state.device_id in fake.devices
    assert fake.devices[state.device_id].facts == {
        "serial_number": "SER-1",
        "name": "test-host",
        "platform": "linux",
        "os_version": "12.7",
        "model": "T1",
        "manufacturer": "Acme",
    }
    enroll_request = fake.requests[0]
    assert "signature" not in enroll_request.headers  # the token is the credential
    assert b"PRIVATE KEY" not in enroll_request.content
    assert state.certificate_fingerprint in fake.certificates
    assert state.checkin_url == "https://corral.test/device/v1/checkin"
    key_path = agent.store.key_path(state.key_file)
    if os.name == "posix":
        assert stat.S_IMODE(key_path.stat().st_mode) == 0o600
        assert stat.S_IMODE(agent.store.state_path.stat().st_mode) == 0o600
        assert stat.S_IMODE(agent.state_dir.stat().st_mode) == 0o700
    assert agent.load_state() == state
    assert agent.status()["device_id"] == state.device_id


async def test_enrollment_refusals_leave_nothing_behind(make_agent: Any, fake: FakeCorral) -> None:
    agent: Agent = make_agent()
    with pytest.raises(AuthenticationError) as refused:
        await agent.enroll("https://corral.test", token="cet_wrong")
    assert refused.value.status == 401
    assert "correlation id" in str(refused.value)
    assert not agent.enrolled
    assert not list(agent.state_dir.glob("device-*.key"))
    with pytest.raises(AgentError, match="token"):
        await agent.enroll("https://corral.test")


async def test_enrolling_twice_needs_force(make_agent: Any, fake: FakeCorral) -> None:
    agent: Agent = make_agent()
    first = await agent.enroll(fake.enroll_url(), name="first-name")
    with pytest.raises(AgentError, match="already enrolled"):
        await agent.enroll(fake.enroll_url())
    second = await agent.enroll(fake.enroll_url(), force=True)
    assert second.device_id != first.device_id
    assert [p.name for p in agent.state_dir.glob("device-*.key")] == [second.key_file]


async def test_plain_http_is_refused_except_to_loopback(tmp_path: Path) -> None:
    agent = Agent(tmp_path / "s")
    with pytest.raises(AgentError, match="plain HTTP"):
        await agent.enroll("http://corral.example.com/device/v1/enroll?token=x")


# ------------------------------------------------------------------------------------------------ check-in
async def test_checkin_is_signed_and_sends_inventory_only_when_it_changed(
    enrolled: Agent, fake: FakeCorral, inventory: dict[str, Any]
) -> None:
    first = await enrolled.checkin()
    assert (first.requests, first.inventory, first.inventory_sent) == (1, "accepted", True)
    assert fake.checkins[0]["inventory"] == inventory
    assert fake.checkins[0]["inventory_hash"] == inventory_hash(inventory)
    assert fake.checkins[0]["agent_version"] == "0.1.0"
    signature = fake.signatures[-1]
    assert signature["keyid"] == enrolled.load_state().certificate_fingerprint
    assert signature["tag"] == "corral-device"

    second = await enrolled.checkin()
    assert (second.inventory, second.inventory_sent) == ("unchanged", False)
    assert "inventory" not in fake.checkins[1]

    inventory["primary_user"] = "bob"
    third = await enrolled.checkin()
    assert (third.inventory, third.inventory_sent) == ("accepted", True)
    assert enrolled.load_state().last_checkin_at is not None


async def test_inventory_needed_means_checking_in_again_at_once(enrolled: Agent, fake: FakeCorral) -> None:
    await enrolled.checkin()
    fake.forget_inventory = True
    summary = await enrolled.checkin()
    assert summary.requests == 2
    assert "inventory" not in fake.checkins[1] and "inventory" in fake.checkins[2]
    assert summary.inventory == "accepted"


async def test_a_command_is_carried_out_and_reported_in_an_immediate_second_checkin(
    enrolled: Agent, fake: FakeCorral
) -> None:
    device_id = enrolled.load_state().device_id
    lock = fake.queue(device_id, "lock", message="Call IT")
    summary = await enrolled.checkin()
    assert summary.requests == 2
    assert fake.checkins[0]["command_results"] == []
    [reported] = fake.checkins[1]["command_results"]
    assert reported["command_id"] == lock.id and reported["status"] == "succeeded"
    assert lock.status == "succeeded" and "locked_at" in lock.result
    assert [e["type"] for e in enrolled.executor.read_effects()] == ["lock"]
    assert enrolled.load_state().pending_results == []


async def test_commands_are_deduplicated_and_a_lost_result_is_reported_again(
    enrolled: Agent, fake: FakeCorral
) -> None:
    lock = fake.queue(enrolled.load_state().device_id, "lock")
    fake.drop_results_once = True  # the server "loses" the first result: the command stays pending
    first = await enrolled.checkin()
    assert first.requests == 2 and lock.status == "pending"
    second = await enrolled.checkin()  # the server sends the command again
    assert second.requests == 2
    assert fake.checkins[-1]["command_results"][0]["command_id"] == lock.id
    assert lock.status == "succeeded"
    assert len(enrolled.executor.read_effects()) == 1  # carried out once, reported twice


async def test_not_now_is_reported_without_looping(enrolled: Agent, fake: FakeCorral) -> None:
    locate = fake.queue(enrolled.load_state().device_id, "locate")
    summary = await enrolled.checkin()
    assert summary.requests == 2
    assert fake.checkins[1]["command_results"] == [{"command_id": locate.id, "status": "not_now"}]
    assert locate.status == "pending"  # the server asks again later
    assert locate.id not in enrolled.load_state().processed_command_ids


async def test_rename_updates_the_state(enrolled: Agent, fake: FakeCorral) -> None:
    fake.queue(enrolled.load_state().device_id, "rename", name="finance-laptop-7")
    await enrolled.checkin()
    assert enrolled.load_state().device_name == "finance-laptop-7"


async def test_results_the_server_refuses_are_dropped_once(enrolled: Agent, fake: FakeCorral) -> None:
    state = enrolled.load_state()
    state.queue_result({"command_id": "not-a-command", "status": "succeeded"})
    enrolled.store.save(state)
    summary = await enrolled.checkin()
    assert summary.inventory == "accepted"
    assert enrolled.load_state().pending_results == []


async def test_wipe_is_acknowledged_first_then_carried_out(
    make_agent: Any, fake: FakeCorral, tmp_path: Path
) -> None:
    managed = tmp_path / "managed"
    managed.mkdir()
    (managed / "secret.xlsx").write_text("numbers")
    outside = tmp_path / "outside.txt"
    outside.write_text("keep")
    agent: Agent = make_agent(AgentConfig(managed_data_dirs=(managed,), allow_destructive=True))
    state = await agent.enroll(fake.enroll_url())
    wipe = fake.queue(state.device_id, "wipe", keep_enrollment_data=False)
    files_at_ack: list[list[str]] = []
    fake.on_result.append(lambda command: files_at_ack.append(sorted(p.name for p in managed.iterdir())))

    summary = await agent.checkin()
    assert summary.ended == "wipe"
    assert wipe.status == "acknowledged"
    assert files_at_ack == [["secret.xlsx"]]  # the server heard before anything was deleted
    assert list(managed.iterdir()) == []
    assert outside.read_text() == "keep"
    assert fake.devices[state.device_id].status == "wiped"
    assert not agent.enrolled
    assert not list(agent.state_dir.glob("device-*.key"))
    with pytest.raises(NotEnrolledError):
        await agent.checkin()


async def test_wipe_without_allow_destructive_fails_and_keeps_everything(
    make_agent: Any, fake: FakeCorral, tmp_path: Path
) -> None:
    managed = tmp_path / "managed"
    managed.mkdir()
    (managed / "secret.xlsx").write_text("numbers")
    agent: Agent = make_agent(AgentConfig(managed_data_dirs=(managed,)))
    state = await agent.enroll(fake.enroll_url())
    wipe = fake.queue(state.device_id, "wipe")
    summary = await agent.checkin()
    assert summary.ended is None
    assert (wipe.status, wipe.error) == (
        "failed",
        "destructive actions are disabled on this device; set allow_destructive",
    )
    assert (managed / "secret.xlsx").exists()
    assert agent.enrolled


async def test_retire_in_simulate_mode_records_and_removes_the_enrollment(
    enrolled: Agent, fake: FakeCorral
) -> None:
    state = enrolled.load_state()
    retire = fake.queue(state.device_id, "retire")
    summary = await enrolled.checkin()
    assert summary.ended == "retire"
    assert retire.status == "acknowledged"
    assert fake.devices[state.device_id].status == "retired"
    assert [e["type"] for e in enrolled.executor.read_effects()] == ["retire"]
    assert not enrolled.enrolled


async def test_an_interrupted_wipe_is_finished_at_the_next_checkin(enrolled: Agent, fake: FakeCorral) -> None:
    state = enrolled.load_state()
    wipe = fake.queue(state.device_id, "wipe")
    # As if the agent had stopped right after deciding to wipe: the acknowledgement is still pending.
    state.pending_action = {"command": {"id": wipe.id, "type": "wipe", "params": {}}, "ends_enrollment": True}
    state.queue_result({"command_id": wipe.id, "status": "acknowledged"})
    enrolled.store.save(state)
    summary = await enrolled.checkin()
    assert summary.ended == "wipe"
    assert wipe.status == "acknowledged"
    assert not enrolled.enrolled


async def test_a_revoked_device_gets_authentication_errors(enrolled: Agent, fake: FakeCorral) -> None:
    state = enrolled.load_state()
    fake.devices[state.device_id].status = "retired"
    with pytest.raises(AuthenticationError) as refused:
        await enrolled.checkin()
    assert refused.value.status == 401


async def test_overload_is_retried_honouring_retry_after(
    enrolled: Agent, fake: FakeCorral, sleeps: Sleeps
) -> None:
    fake.inject = [
        problem(429, "Too Many Requests"),
        problem(503, "Service Unavailable"),
    ]
    fake.inject[0].headers["Retry-After"] = "7"
    fake.inject[1].headers["Retry-After"] = "2"
    summary = await enrolled.checkin()
    assert summary.inventory == "accepted"
    assert len(sleeps.delays) == 2
    assert 7 <= sleeps.delays[0] <= 7 * 1.2 + 1
    assert 2 <= sleeps.delays[1] <= 2 * 1.2 + 2
    signatures = [r.headers["Signature-Input"] for r in fake.requests[-3:]]
    assert len(set(signatures)) == 3  # every attempt signed afresh (new nonce)


async def test_a_check_in_whose_connection_broke_before_the_answer_is_sent_again(
    enrolled: Agent, fake: FakeCorral, sleeps: Sleeps
) -> None:
    # One of several servers died after handling it (or a keep-alive connection was closed under it).
    fake.break_after_handling = 2
    summary = await enrolled.checkin()
    assert summary.inventory in ("accepted", "unchanged")
    checkins = [r for r in fake.requests if r.url.path == "/device/v1/checkin"]
    assert len(checkins) == 3 and len(sleeps.delays) == 2
    assert len({r.headers["Signature-Input"] for r in checkins}) == 3  # each signed afresh


async def test_a_renewal_whose_connection_broke_is_not_sent_again(enrolled: Agent, fake: FakeCorral) -> None:
    # The server may have issued the new certificate: the agent does not ask twice on its own.
    fake.break_after_handling = 1
    with pytest.raises(AgentError, match="failed"):
        await enrolled.renew()
    assert [r.url.path for r in fake.requests].count("/device/v1/renew") == 1


async def test_overload_gives_up_after_a_bounded_number_of_attempts(
    enrolled: Agent, fake: FakeCorral, sleeps: Sleeps
) -> None:
    fake.inject = [problem(503, "Service Unavailable") for _ in range(10)]
    with pytest.raises(ProtocolError) as failed:
        await enrolled.checkin()
    assert failed.value.status == 503
    assert len(sleeps.delays) == 3  # 4 attempts


async def test_clock_skew_is_learnt_from_the_date_header(enrolled: Agent, fake: FakeCorral) -> None:
    fake.clock_offset = 1000.0  # the server's clock is 1000 s ahead: our first signature is "stale"
    summary = await enrolled.checkin()
    assert summary.inventory == "accepted"
    checkin_requests = [r for r in fake.requests if r.url.path == "/device/v1/checkin"]
    assert len(checkin_requests) == 2 and len(fake.checkins) == 1  # refused as stale once, then accepted
    assert enrolled.load_state().clock_skew_seconds == pytest.approx(1000, abs=2)
    await enrolled.checkin()  # signed right the first time now
    assert len([r for r in fake.requests if r.url.path == "/device/v1/checkin"]) == 3


async def test_certificate_renewal_replaces_key_and_certificate(enrolled: Agent, fake: FakeCorral) -> None:
    before = enrolled.load_state()
    fake.renew = True
    summary = await enrolled.checkin()
    assert summary.renewed
    after = enrolled.load_state()
    assert after.certificate_fingerprint != before.certificate_fingerprint
    assert after.key_file != before.key_file
    assert [p.name for p in enrolled.state_dir.glob("device-*.key")] == [after.key_file]
    await enrolled.checkin()
    assert fake.signatures[-1]["keyid"] == after.certificate_fingerprint


async def test_renew_on_demand(enrolled: Agent, fake: FakeCorral) -> None:
    before = enrolled.load_state().certificate_fingerprint
    renewed = await enrolled.renew()
    assert renewed.certificate_fingerprint != before
    assert renewed.renewed_at is not None


# ------------------------------------------------------------------------------------------------ events
async def test_events_stream_yields_wake_ups(enrolled: Agent, fake: FakeCorral) -> None:
    events = [event async for event in enrolled.events()]
    assert [(e.event, e.json()) for e in events] == [("wake", {"reason": "command"})]
    assert fake.requests[-1].method == "GET"
    assert fake.requests[-1].headers["Accept"] == "text/event-stream"


async def test_events_refused_raises(enrolled: Agent, fake: FakeCorral) -> None:
    fake.inject = [problem(401, "Bad signature")]
    with pytest.raises(AuthenticationError):
        _ = [event async for event in enrolled.events()]


async def test_enroll_uses_server_time_when_there_is_no_date_header(
    tmp_path: Path, inventory: dict[str, Any]
) -> None:
    fake = FakeCorral()
    fake.clock_offset = -500.0

    def no_date(request: httpx.Request) -> httpx.Response:
        response = fake(request)
        del response.headers["Date"]
        return response

    agent = Agent(tmp_path / "s", transport=httpx.MockTransport(no_date), inventory=lambda: inventory)
    state = await agent.enroll(f"https://corral.test/device/v1/enroll?token={TOKEN}")
    assert state.clock_skew_seconds == pytest.approx(-500, abs=2)


async def test_enrollment_without_a_readable_serial_number_sends_a_stable_stand_in(
    fake: FakeCorral, tmp_path: Path, inventory: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    import corral_agent.client

    monkeypatch.setattr(corral_agent.client, "fallback_serial_number", lambda: None)
    inventory["hardware"] = {**inventory["hardware"], "serial_number": None}
    agent = Agent(tmp_path / "s", transport=httpx.MockTransport(fake), inventory=lambda: inventory)
    state = await agent.enroll(fake.enroll_url())
    serial = fake.devices[state.device_id].facts["serial_number"]
    assert serial.startswith("rnd-")
    await agent.enroll(fake.enroll_url(), force=True)  # the stand-in survives re-enrollment
    assert [d.facts["serial_number"] for d in fake.devices.values()] == [serial, serial]


async def test_a_refused_inventory_does_not_stop_check_ins(
    enrolled: Agent, fake: FakeCorral, inventory: dict[str, Any]
) -> None:
    inventory["from_the_future"] = 1  # the server refuses the inventory (422)
    lock = fake.queue(enrolled.load_state().device_id, "lock")
    summary = await enrolled.checkin()
    assert summary.inventory == "needed"  # no inventory this time …
    assert lock.status == "succeeded"  # … but commands and results went through
    assert enrolled.load_state().inventory_hash is None
