"""Inventory: the spec's shape on this machine, a canonical hash, and the Linux probes on fake files."""

from __future__ import annotations

import hashlib
import json
import sys
from pathlib import Path
from typing import Any

import pytest
from corral_agent import inventory as inv


def test_hash_is_the_sha256_of_the_canonical_json() -> None:
    data = {"b": 1, "a": {"z": None, "y": [1, 2]}, "é": "ü"}
    expected = hashlib.sha256(json.dumps(data, sort_keys=True, separators=(",", ":")).encode()).hexdigest()
    assert inv.inventory_hash(data) == expected
    assert inv.canonical_json(data) == '{"a":{"y":[1,2],"z":null},"b":1,"\\u00e9":"\\u00fc"}'


def test_hash_does_not_depend_on_key_order() -> None:
    one = {"hardware": {"model": "X", "memory_bytes": 1}, "apps": [], "os": {"platform": "linux"}}
    two = {"os": {"platform": "linux"}, "apps": [], "hardware": {"memory_bytes": 1, "model": "X"}}
    assert inv.inventory_hash(one) == inv.inventory_hash(two)
    assert inv.inventory_hash(one) != inv.inventory_hash({**one, "primary_user": "x"})


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="collects on Linux")
def test_collection_on_this_machine_has_the_spec_shape() -> None:
    data = inv.collect_inventory()
    assert set(data) == {"hardware", "os", "security", "network", "apps", "primary_user"}
    hw = data["hardware"]
    assert set(hw) == {
        "manufacturer",
        "model",
        "serial_number",
        "cpu_architecture",
        "memory_bytes",
        "storage_total_bytes",
        "storage_free_bytes",
    }
    for name in ("memory_bytes", "storage_total_bytes", "storage_free_bytes"):
        assert hw[name] is None or (isinstance(hw[name], int) and hw[name] >= 0)
    assert isinstance(hw["cpu_architecture"], str)
    assert data["os"]["platform"] == "linux"
    assert isinstance(data["os"]["name"], str)
    assert set(data["security"]) == {
        "disk_encrypted",
        "firewall_enabled",
        "screen_lock_enabled",
        "passcode_set",
        "jailbroken",
        "secure_boot",
    }
    assert all(v is None or isinstance(v, bool) for v in data["security"].values())
    assert isinstance(data["network"]["hostname"], str)
    for interface in data["network"]["interfaces"]:
        assert set(interface) == {"name", "mac", "ipv4", "ipv6"}
        assert all(isinstance(a, str) and "%" not in a for a in interface["ipv4"] + interface["ipv6"])
    assert len(data["apps"]) <= inv.MAX_APPS
    for app in data["apps"]:
        assert set(app) == {"name", "version", "identifier"}
        assert isinstance(app["name"], str)
    assert data["primary_user"] is None or isinstance(data["primary_user"], str)

    def strings(value: Any) -> list[str]:
        if isinstance(value, str):
            return [value]
        if isinstance(value, dict):
            return [s for v in value.values() for s in strings(v)]
        if isinstance(value, list):
            return [s for v in value for s in strings(v)]
        return []

    assert all(len(s) <= inv.MAX_STRING for s in strings(data))
    assert len(inv.canonical_json(data).encode()) < 2 * 1024 * 1024
    # Deterministic for the same machine state.
    assert inv.inventory_hash(data) == inv.inventory_hash(inv.collect_inventory())


def test_dpkg_status_parsing_keeps_installed_packages_only() -> None:
    status = (
        "Package: bash\nStatus: install ok installed\nVersion: 5.2.15-2+b2\n"
        "Description: shell\n continued line\n\n"
        "Package: removed-thing\nStatus: deinstall ok config-files\nVersion: 1.0\n\n"
        "Package: firefox-esr\nStatus: install ok installed\nArchitecture: amd64\nVersion: 128.3.1esr-1\n"
    )
    assert inv.parse_dpkg_status(status) == [
        {"name": "bash", "version": "5.2.15-2+b2", "identifier": "bash"},
        {"name": "firefox-esr", "version": "128.3.1esr-1", "identifier": "firefox-esr"},
    ]


def test_apps_are_sorted_deduplicated_and_capped(monkeypatch: pytest.MonkeyPatch) -> None:
    many = [
        {"name": f"p{i:05d}", "version": "1", "identifier": f"p{i:05d}"} for i in range(inv.MAX_APPS + 10)
    ]
    monkeypatch.setattr(inv, "_linux_apps", lambda: list(reversed(many)) + many[:3])
    apps = inv.collect_apps("linux")
    assert len(apps) == inv.MAX_APPS
    assert apps == sorted(apps, key=lambda a: a["identifier"] or "")


def test_os_release_parsing() -> None:
    text = (
        'PRETTY_NAME="Debian GNU/Linux 12 (bookworm)"\nNAME="Debian GNU/Linux"\n'
        'VERSION_ID="12"\nID=debian\n# c\n'
    )
    parsed = inv.parse_os_release(text)
    assert parsed["NAME"] == "Debian GNU/Linux"
    assert parsed["VERSION_ID"] == "12"
    assert parsed["ID"] == "debian"


def test_secure_boot_from_the_efi_variable(tmp_path: Path) -> None:
    assert inv.linux_secure_boot(tmp_path / "no-efi") is False  # BIOS boot
    efivars = tmp_path / "efi" / "efivars"
    efivars.mkdir(parents=True)
    assert inv.linux_secure_boot(tmp_path / "efi") is None  # EFI, variable unreadable
    (efivars / inv.SECURE_BOOT_VAR).write_bytes(b"\x06\x00\x00\x00\x01")
    assert inv.linux_secure_boot(tmp_path / "efi") is True
    (efivars / inv.SECURE_BOOT_VAR).write_bytes(b"\x06\x00\x00\x00\x00")
    assert inv.linux_secure_boot(tmp_path / "efi") is False


def test_disk_encryption_follows_the_device_stack(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # / on LVM (dm-1) on LUKS (dm-0) on nvme0n1p3.
    blocks = tmp_path / "block"
    for name in ("nvme0n1p3", "dm-0", "dm-1", "sda1"):
        (blocks / name / "slaves").mkdir(parents=True)
    (blocks / "dm-0" / "dm").mkdir()
    (blocks / "dm-0" / "dm" / "uuid").write_text("CRYPT-LUKS2-abc-luks\n")
    (blocks / "dm-1" / "dm").mkdir()
    (blocks / "dm-1" / "dm" / "uuid").write_text("LVM-xyz\n")
    (blocks / "dm-1" / "slaves" / "dm-0").mkdir()
    (blocks / "dm-0" / "slaves" / "nvme0n1p3").mkdir()
    monkeypatch.setattr(inv, "_root_block_device", lambda: "dm-1")
    assert inv.linux_disk_encrypted(blocks) is True
    monkeypatch.setattr(inv, "_root_block_device", lambda: "sda1")
    assert inv.linux_disk_encrypted(blocks) is False
    monkeypatch.setattr(inv, "_root_block_device", lambda: None)  # overlay root (a container)
    assert inv.linux_disk_encrypted(blocks) is None


def test_nft_ruleset_detection() -> None:
    assert not inv.nft_has_rules("")
    assert not inv.nft_has_rules(
        "table inet filter {\n\tchain input {\n\t\ttype filter hook input priority 0;\n\t}\n}\n"
    )
    assert inv.nft_has_rules("table inet filter {\n\tchain input {\n\t\ttcp dport 22 accept\n\t}\n}\n")
    assert inv.nft_has_rules(
        "table inet f {\n chain input {\n  type filter hook input priority 0; policy drop;\n }\n}"
    )


def test_device_facts_leave_unknowns_out() -> None:
    data = {
        "hardware": {"manufacturer": "Lenovo", "model": None, "serial_number": "C02"},
        "os": {"platform": "linux", "version": "12.7"},
        "network": {"hostname": "alice-laptop"},
    }
    assert inv.device_facts(data) == {
        "serial_number": "C02",
        "name": "alice-laptop",
        "platform": "linux",
        "os_version": "12.7",
        "manufacturer": "Lenovo",
    }
    assert inv.device_facts(data, name="renamed")["name"] == "renamed"


def test_multiarch_packages_get_qualified_identifiers() -> None:
    status = (
        "Package: libc6\nStatus: install ok installed\nArchitecture: amd64\nVersion: 2.36\n\n"
        "Package: libc6\nStatus: install ok installed\nArchitecture: i386\nVersion: 2.36\n\n"
        "Package: bash\nStatus: install ok installed\nArchitecture: amd64\nVersion: 5.2\n"
    )
    assert [a["identifier"] for a in inv.parse_dpkg_status(status)] == ["libc6:amd64", "libc6:i386", "bash"]


def test_identifiers_are_unique_and_lengths_fit_the_server(monkeypatch: pytest.MonkeyPatch) -> None:
    apps = [
        {"name": "kernel", "version": "6.1-1", "identifier": "kernel"},
        {"name": "kernel", "version": "6.2-1", "identifier": "kernel"},
        {"name": "long", "version": "v" * 300, "identifier": "long"},
        {"name": "No Bundle Id", "version": None, "identifier": None},
    ]
    monkeypatch.setattr(inv, "_linux_apps", lambda: apps)
    collected = inv.collect_apps("linux")
    assert [a["identifier"] for a in collected] == [None, "kernel", "long"]
    assert next(a for a in collected if a["identifier"] == "kernel")["version"] == "6.2-1"
    assert len(next(a for a in collected if a["identifier"] == "long")["version"] or "") == 128


@pytest.mark.skipif(not Path("/etc/machine-id").is_file(), reason="needs /etc/machine-id")
def test_fallback_serial_is_stable_and_does_not_reveal_the_machine_id() -> None:
    serial = inv.fallback_serial_number()
    assert serial is not None and serial.startswith("mid-") and len(serial) == 36
    assert serial == inv.fallback_serial_number()
    assert Path("/etc/machine-id").read_text().strip() not in serial
