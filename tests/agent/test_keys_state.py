"""The device key and the state directory: owner-only permissions, atomic writes, a valid CSR."""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path

import pytest
from corral_agent import keys
from corral_agent.errors import AgentError, NotEnrolledError
from corral_agent.state import MAX_PROCESSED_COMMANDS, AgentState, StateStore, default_state_dir
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec

pytestmark = pytest.mark.skipif(os.name != "posix", reason="POSIX permissions")


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_private_key_is_written_owner_only_in_an_owner_only_directory(tmp_path: Path) -> None:
    directory = tmp_path / "a" / "state"
    key = keys.generate_private_key()
    path = directory / keys.new_key_file_name()
    keys.save_private_key(path, key)
    assert mode(path) == 0o600
    assert mode(directory) == 0o700
    assert isinstance(key.curve, ec.SECP256R1)
    loaded = keys.load_private_key(path)
    assert loaded.private_numbers() == key.private_numbers()
    assert [p.name for p in directory.iterdir()] == [path.name]  # no temporary file left behind


def test_private_file_mode_does_not_depend_on_umask(tmp_path: Path) -> None:
    old = os.umask(0)
    try:
        keys.write_private_file(tmp_path / "s" / "f", b"x")
    finally:
        os.umask(old)
    assert mode(tmp_path / "s" / "f") == 0o600
    assert mode(tmp_path / "s") == 0o700


def test_an_existing_loose_directory_is_tightened(tmp_path: Path) -> None:
    directory = tmp_path / "loose"
    directory.mkdir(mode=0o755)
    directory.chmod(0o755)
    keys.ensure_private_dir(directory)
    assert mode(directory) == 0o700


def test_a_key_readable_by_others_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "k" / "device.key"
    keys.save_private_key(path, keys.generate_private_key())
    path.chmod(0o644)
    with pytest.raises(AgentError, match="chmod 600"):
        keys.load_private_key(path)


def test_overwriting_replaces_atomically(tmp_path: Path) -> None:
    path = tmp_path / "s" / "file"
    keys.write_private_file(path, b"one")
    keys.write_private_file(path, b"two")
    assert path.read_bytes() == b"two"
    assert mode(path) == 0o600


def test_csr_is_valid_and_signed_by_the_device_key() -> None:
    key = keys.generate_private_key()
    csr = x509.load_pem_x509_csr(keys.build_csr(key).encode())
    assert csr.is_signature_valid
    assert csr.public_key().public_numbers() == key.public_key().public_numbers()
    assert csr.signature_hash_algorithm is not None and csr.signature_hash_algorithm.name == "sha256"
    assert "PRIVATE" not in keys.build_csr(key)


def _state(**overrides: object) -> AgentState:
    values: dict[str, object] = {
        "server_url": "https://corral.test",
        "device_id": "d-1",
        "key_file": "device-0011223344556677.key",
        "certificate_pem": "-----BEGIN CERTIFICATE-----\n…",
        "certificate_fingerprint": "ab" * 32,
        "checkin_url": "https://corral.test/device/v1/checkin",
        "events_url": "https://corral.test/device/v1/events",
    }
    values.update(overrides)
    return AgentState(**values)  # type: ignore[arg-type]


def test_state_round_trips_with_owner_only_permissions(tmp_path: Path) -> None:
    store = StateStore(tmp_path / "state")
    state = _state(tls_ca_fingerprint="cd" * 32, checkin_interval_seconds=28800, clock_skew_seconds=-42.0)
    state.queue_result({"command_id": "c1", "status": "succeeded", "result": {}})
    store.save(state)
    assert mode(store.state_path) == 0o600
    assert mode(store.directory) == 0o700
    loaded = store.load()
    assert loaded == state
    assert json.loads(store.state_path.read_text())["version"] == 1


def test_missing_state_means_not_enrolled(tmp_path: Path) -> None:
    store = StateStore(tmp_path / "nothing")
    with pytest.raises(NotEnrolledError, match="not enrolled"):
        store.load()
    assert store.load_optional() is None


def test_unknown_state_fields_are_ignored_for_forward_compatibility(tmp_path: Path) -> None:
    store = StateStore(tmp_path / "state")
    store.save(_state())
    data = json.loads(store.state_path.read_text())
    data["from_a_newer_agent"] = 1
    keys.write_private_file(store.state_path, json.dumps(data).encode())
    assert store.load().device_id == "d-1"


def test_processed_commands_are_bounded_and_deduplicated() -> None:
    state = _state()
    for index in range(MAX_PROCESSED_COMMANDS + 20):
        state.remember_processed({"command_id": f"c{index}", "status": "succeeded"})
    state.remember_processed({"command_id": f"c{MAX_PROCESSED_COMMANDS + 19}", "status": "failed"})
    assert len(state.processed_commands) == MAX_PROCESSED_COMMANDS
    assert state.processed_command_ids[0] == "c20"
    assert state.processed_result(f"c{MAX_PROCESSED_COMMANDS + 19}") == {
        "command_id": f"c{MAX_PROCESSED_COMMANDS + 19}",
        "status": "failed",
    }
    assert state.processed_result("c0") is None


def test_forget_enrollment_keeps_the_simulated_effects(tmp_path: Path) -> None:
    store = StateStore(tmp_path / "state")
    store.save(_state())
    keys.save_private_key(store.key_path("device-0011223344556677.key"), keys.generate_private_key())
    store.effects_path.write_text("{}\n")
    store.forget_enrollment()
    assert sorted(p.name for p in store.directory.iterdir()) == ["simulated-effects.jsonl"]


def test_key_file_names_cannot_escape_the_state_directory(tmp_path: Path) -> None:
    store = StateStore(tmp_path)
    for bad in ("../x.key", "/etc/passwd", ".hidden"):
        with pytest.raises(AgentError):
            store.key_path(bad)


def test_default_state_dir(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("CORRAL_AGENT_STATE_DIR", str(tmp_path / "env"))
    assert default_state_dir() == tmp_path / "env"
    monkeypatch.delenv("CORRAL_AGENT_STATE_DIR")
    monkeypatch.setattr(os, "geteuid", lambda: 0)
    assert default_state_dir() == Path("/var/lib/corral-agent")
    monkeypatch.setattr(os, "geteuid", lambda: 1000)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.delenv("XDG_STATE_HOME", raising=False)
    assert default_state_dir() == tmp_path / "home" / ".local" / "state" / "corral-agent"
