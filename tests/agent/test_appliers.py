"""Settings appliers against a temporary root: real files written, read back, removed; real programs run."""

from __future__ import annotations

import os
import shutil
import stat
from pathlib import Path
from typing import Any

from corral_agent.appliers import (
    MANAGED_HEADER,
    ApplyContext,
    applied_families,
    apply_settings,
    read_agent_settings,
)


def _ctx(tmp_path: Path, **kw: Any) -> ApplyContext:
    root = tmp_path / "root"
    state = tmp_path / "state"
    root.mkdir(parents=True, exist_ok=True)
    state.mkdir(parents=True, exist_ok=True)
    kw.setdefault("which", lambda name: None)
    return ApplyContext(root=root, state_dir=state, **kw)


def _states(results: dict[str, Any]) -> dict[str, str]:
    return {sid: r.state for sid, r in results.items()}


def test_ssh_password_and_usb_drop_ins_are_written_and_removed(tmp_path: Path) -> None:
    ctx = _ctx(tmp_path)
    results = apply_settings(
        ctx,
        [
            ("ssh.permit_root_login", "no"),
            ("ssh.password_authentication", False),
            ("password.min_length", 14),
            ("password.min_character_classes", 3),
            ("usb_storage.blocked", True),
        ],
    )
    assert set(_states(results).values()) == {"succeeded"}
    sshd = (ctx.root / "etc/ssh/sshd_config.d/50-corral.conf").read_text()
    assert sshd == MANAGED_HEADER + "PermitRootLogin no\nPasswordAuthentication no\n"
    pwq = (ctx.root / "etc/security/pwquality.conf.d/50-corral.conf").read_text()
    assert "minlen = 14\n" in pwq and "minclass = 3\n" in pwq
    usb = (ctx.root / "etc/modprobe.d/50-corral-usb-storage.conf").read_text()
    assert "install usb-storage /bin/false" in usb
    assert stat.S_IMODE(os.stat(ctx.root / "etc/modprobe.d/50-corral-usb-storage.conf").st_mode) == 0o644

    # The next document holds only the password rules: the other families clean up after themselves.
    families = applied_families(results)
    assert families == ["password", "ssh", "usb_storage"]
    again = apply_settings(ctx, [("password.min_length", 12)], previous_families=families)
    assert _states(again) == {"password.min_length": "succeeded"}
    assert not (ctx.root / "etc/ssh/sshd_config.d/50-corral.conf").exists()
    assert not (ctx.root / "etc/modprobe.d/50-corral-usb-storage.conf").exists()
    assert "minclass" not in (ctx.root / "etc/security/pwquality.conf.d/50-corral.conf").read_text()


def test_values_outside_what_the_mechanism_takes_are_errors_and_write_nothing(tmp_path: Path) -> None:
    ctx = _ctx(tmp_path)
    results = apply_settings(
        ctx,
        [
            ("ssh.permit_root_login", "sometimes"),
            ("password.min_length", 0),
            ("screen_lock.timeout_minutes", "5"),
        ],
    )
    assert _states(results) == {
        "ssh.permit_root_login": "error",
        "password.min_length": "error",
        "screen_lock.timeout_minutes": "error",
    }
    assert "PermitRootLogin cannot be 'sometimes'" in (results["ssh.permit_root_login"].message or "")
    assert not (ctx.root / "etc").exists()


def test_login_banner_keeps_and_restores_what_was_there(tmp_path: Path) -> None:
    ctx = _ctx(tmp_path)
    issue = ctx.root / "etc/issue"
    issue.parent.mkdir(parents=True)
    issue.write_text("Debian GNU/Linux 12 \\n \\l\n")
    results = apply_settings(ctx, [("login_banner.text", "Authorised use only.")])
    assert _states(results) == {"login_banner.text": "succeeded"}
    assert issue.read_text() == "Authorised use only.\n"
    assert (ctx.root / "etc/issue.net").read_text() == "Authorised use only.\n"
    # A second, different banner does not overwrite the original kept aside.
    apply_settings(ctx, [("login_banner.text", "Second banner")])
    apply_settings(ctx, [], previous_families=["login_banner"])
    # /etc/issue.net did not exist before Corral wrote it: it goes.
    assert not (ctx.root / "etc/issue.net").exists()
    assert issue.read_text() == "Debian GNU/Linux 12 \\n \\l\n"


def test_screen_lock_writes_a_dconf_keyfile_and_lock(tmp_path: Path) -> None:
    ctx = _ctx(tmp_path)
    results = apply_settings(ctx, [("screen_lock.timeout_minutes", 5)])
    assert _states(results) == {"screen_lock.timeout_minutes": "succeeded"}
    keyfile = (ctx.root / "etc/dconf/db/local.d/50-corral-screen-lock").read_text()
    assert "[org/gnome/desktop/session]\nidle-delay=uint32 300\n" in keyfile
    assert "lock-enabled=true" in keyfile
    locks = (ctx.root / "etc/dconf/db/local.d/locks/50-corral-screen-lock").read_text()
    assert "/org/gnome/desktop/session/idle-delay" in locks
    # Not the real root: no dconf update was run, whatever is installed.
    assert ctx.ran == []


def test_firewall_runs_ufw_and_reports_its_failure(tmp_path: Path) -> None:
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    log = tmp_path / "ufw.log"
    ufw = bin_dir / "ufw"
    ufw.write_text(
        f'#!/bin/sh\necho "$@" >> {log}\n'
        '[ "$1" = "disable" ] && { echo "ERROR: not root"; exit 1; }\nexit 0\n'
    )
    ufw.chmod(0o755)
    ctx = _ctx(tmp_path, which=lambda name: shutil.which(name, path=str(bin_dir)))
    assert _states(apply_settings(ctx, [("firewall.enabled", True)])) == {"firewall.enabled": "succeeded"}
    assert log.read_text() == "--force enable\n"
    failed = apply_settings(ctx, [("firewall.enabled", False)])
    assert failed["firewall.enabled"].state == "error"
    assert "ERROR: not root" in (failed["firewall.enabled"].message or "")


def test_firewall_without_a_tool_is_not_applicable(tmp_path: Path) -> None:
    results = apply_settings(_ctx(tmp_path), [("firewall.enabled", True)])
    assert results["firewall.enabled"].state == "not_applicable"
    assert "neither ufw nor firewalld" in (results["firewall.enabled"].message or "")


def test_unknown_families_and_other_platforms_are_not_applicable(tmp_path: Path) -> None:
    ctx = _ctx(tmp_path)
    results = apply_settings(ctx, [("camera.blocked", True), ("ssh.banner_text", "x"), ("nodot", 1)])
    assert _states(results) == {
        "camera.blocked": "not_applicable",
        "ssh.banner_text": "not_applicable",
        "nodot": "error",
    }
    windows = _ctx(tmp_path, os_name="windows")
    assert apply_settings(windows, [("ssh.permit_root_login", "no")])["ssh.permit_root_login"].state == (
        "not_applicable"
    )


def test_agent_settings_and_simulate_mode(tmp_path: Path) -> None:
    ctx = _ctx(tmp_path)
    results = apply_settings(ctx, [("agent.checkin_interval_minutes", 30), ("agent.log_level", "loud")])
    assert _states(results) == {"agent.checkin_interval_minutes": "succeeded", "agent.log_level": "error"}
    assert read_agent_settings(ctx.state_dir) == {"checkin_interval_minutes": 30}

    recorded: list[dict[str, Any]] = []
    sim = _ctx(tmp_path / "sim", simulate=True, record=recorded.append)
    results = apply_settings(
        sim, [("login_banner.text", "Hi"), ("wifi.networks", [{"ssid": "Corp", "password": "hunter22"}])]
    )
    assert _states(results) == {"login_banner.text": "succeeded", "wifi.networks": "not_applicable"}
    assert not (sim.root / "etc").exists()
    assert recorded == [{"effect": "setting applied", "setting_id": "login_banner.text", "value": "Hi"}]
