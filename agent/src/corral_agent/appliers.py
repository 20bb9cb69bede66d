"""Settings appliers (device-protocol.md, desired state): one applier per setting family.

A desired-state document lists the settings of every configuration profile that reaches the device as
``{"id": "<family>.<name>", "value": …}``. :func:`apply_settings` groups them by family and hands each family
to its applier, which makes the device match and answers per setting: ``succeeded``, ``error`` (with a
message), ``not_applicable`` (this platform or this machine has no mechanism for it) or ``conflict``.

Linux appliers write their files under a root directory (``/`` on a real device, a temporary directory in
tests) and touch running services only when that root is ``/``:

==================  ==========================================================================================
family              what it does on Linux
==================  ==========================================================================================
``login_banner``    ``text`` → ``/etc/issue`` and ``/etc/issue.net`` (the previous contents are kept and put
                    back when the setting goes away)
``ssh``             ``permit_root_login``, ``password_authentication``, ``max_auth_tries`` → the
                    drop-in ``/etc/ssh/sshd_config.d/50-corral.conf`` (checked with ``sshd -t`` where
                    present, then the service is reloaded)
``screen_lock``     ``timeout_minutes`` → the dconf keyfile ``/etc/dconf/db/local.d/50-corral-screen-lock``
                    (GNOME idle delay, lock enabled) and its lock file; ``dconf update`` where present
``password``        ``min_length``, ``min_character_classes`` → the pwquality drop-in
                    ``/etc/security/pwquality.conf.d/50-corral.conf``
``usb_storage``     ``blocked`` → ``/etc/modprobe.d/50-corral-usb-storage.conf`` (the module cannot load)
``firewall``        ``enabled`` → ``ufw`` (``--force enable`` / ``disable``) or ``firewalld`` through
                    ``systemctl``; not applicable when neither is installed
``agent``           ``checkin_interval_minutes``, ``log_level`` → ``agent-settings.json`` in the state
                    directory, read by the agent itself
==================  ==========================================================================================

Other families (camera, screenshots, disk encryption, Wi-Fi, VPN, OS updates, and the custom payloads of
other platforms: see ``apply_custom``) are ``not_applicable`` on Linux. In simulate mode nothing is written:
each setting is recorded in ``simulated-effects.jsonl`` and reported ``succeeded``.
"""

from __future__ import annotations

import json
import os
import shutil
import uuid
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

SettingState = Literal["succeeded", "error", "not_applicable", "conflict"]

#: Runs a command; returns (exit status, combined output).
Runner = Callable[[list[str]], tuple[int, str]]
#: Finds a program on the PATH (``shutil.which``).
Which = Callable[[str], str | None]

MANAGED_HEADER = "# Managed by Corral: changes made here are replaced at the next policy update.\n"
AGENT_SETTINGS_FILE = "agent-settings.json"
BACKUP_DIR = "backups"


@dataclass(frozen=True)
class SettingResult:
    setting_id: str
    state: SettingState
    message: str | None = None

    def to_json(self) -> dict[str, Any]:
        data: dict[str, Any] = {"id": self.setting_id, "state": self.state}
        if self.message:
            data["message"] = self.message[:512]
        return data


@dataclass
class ApplyContext:
    """Where and how appliers act."""

    root: Path
    state_dir: Path
    simulate: bool = False
    os_name: str = "linux"
    run: Runner | None = None
    which: Which = shutil.which
    record: Callable[[dict[str, Any]], None] = lambda effect: None
    #: Commands the appliers ran (for logs and tests).
    ran: list[list[str]] = field(default_factory=list)

    @property
    def live(self) -> bool:
        """Services are touched only on the real root."""
        return self.root == Path("/")

    def path(self, absolute: str) -> Path:
        return self.root / absolute.lstrip("/")

    def execute(self, args: list[str]) -> tuple[int, str]:
        self.ran.append(args)
        if self.run is None:
            from corral_agent.actions import run_command

            return run_command(args)
        return self.run(args)


class Applier:
    """Makes one family of settings true on the device. ``apply`` gets every setting of the family that the
    desired state holds (possibly none: then it removes what it put in place earlier)."""

    family: str = ""
    platforms: frozenset[str] = frozenset({"linux"})
    #: The setting names (after ``<family>.``) the applier knows.
    names: frozenset[str] = frozenset()

    def apply(self, ctx: ApplyContext, values: dict[str, Any]) -> dict[str, SettingResult]:
        raise NotImplementedError

    def result(self, name: str, state: SettingState, message: str | None = None) -> SettingResult:
        return SettingResult(f"{self.family}.{name}", state, message)

    def all(
        self, values: dict[str, Any], state: SettingState, message: str | None = None
    ) -> dict[str, SettingResult]:
        return {name: self.result(name, state, message) for name in values}


def _write_managed(path: Path, text: str) -> bool:
    """Write ``text`` to ``path`` (0644) when it differs; returns whether the file changed."""
    try:
        if path.read_text(encoding="utf-8") == text:
            return False
    except FileNotFoundError:
        pass
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.corral-tmp")
    tmp.write_text(text, encoding="utf-8")
    os.chmod(tmp, 0o644)
    os.replace(tmp, path)
    return True


def _remove(path: Path) -> bool:
    try:
        path.unlink()
    except FileNotFoundError:
        return False
    return True


class DropInApplier(Applier):
    """A family written as one drop-in file of ``key value`` lines that is removed when the family goes."""

    file: str = ""

    def render(self, values: dict[str, Any]) -> str:
        raise NotImplementedError

    def check(self, ctx: ApplyContext, path: Path) -> str | None:
        """An error message when the written file is refused by the system (then it is removed)."""
        return None

    def after_change(self, ctx: ApplyContext) -> str | None:
        return None

    def apply(self, ctx: ApplyContext, values: dict[str, Any]) -> dict[str, SettingResult]:
        path = ctx.path(self.file)
        if not values:
            if _remove(path):
                self.after_change(ctx)
            return {}
        unknown = {name for name in values if name not in self.names}
        known = {name: value for name, value in values.items() if name not in unknown}
        results = {name: self.result(name, "not_applicable", "not known to this agent") for name in unknown}
        try:
            text = self.render(known)
        except ValueError as exc:
            return {**results, **self.all(known, "error", str(exc))}
        changed = _write_managed(path, MANAGED_HEADER + text)
        problem = self.check(ctx, path)
        if problem:
            _remove(path)
            return {**results, **self.all(known, "error", problem)}
        if changed:
            problem = self.after_change(ctx)
            if problem:
                return {**results, **self.all(known, "error", problem)}
        return {**results, **self.all(known, "succeeded")}


def _yes_no(value: Any) -> str:
    if not isinstance(value, bool):
        raise ValueError(f"expected true or false, got {value!r}")
    return "yes" if value else "no"


def _integer(value: Any, low: int, high: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise ValueError(f"expected a whole number from {low} to {high}, got {value!r}")
    return value


class SshApplier(DropInApplier):
    family = "ssh"
    names = frozenset({"permit_root_login", "password_authentication", "max_auth_tries"})
    file = "/etc/ssh/sshd_config.d/50-corral.conf"

    def render(self, values: dict[str, Any]) -> str:
        lines = []
        if "permit_root_login" in values:
            value = values["permit_root_login"]
            if isinstance(value, bool):
                value = "yes" if value else "no"
            if value not in {"yes", "no", "prohibit-password", "forced-commands-only"}:
                raise ValueError(f"PermitRootLogin cannot be {value!r}")
            lines.append(f"PermitRootLogin {value}")
        if "password_authentication" in values:
            lines.append(f"PasswordAuthentication {_yes_no(values['password_authentication'])}")
        if "max_auth_tries" in values:
            lines.append(f"MaxAuthTries {_integer(values['max_auth_tries'], 1, 100)}")
        return "\n".join(lines) + "\n"

    def check(self, ctx: ApplyContext, path: Path) -> str | None:
        sshd = ctx.which("sshd")
        if not ctx.live or sshd is None:
            return None
        status, output = ctx.execute([sshd, "-t"])
        return None if status == 0 else f"sshd refused the configuration: {output}"

    def after_change(self, ctx: ApplyContext) -> str | None:
        systemctl = ctx.which("systemctl")
        if ctx.live and systemctl is not None:
            status, output = ctx.execute([systemctl, "reload-or-restart", "ssh"])
            if status != 0:
                status, output = ctx.execute([systemctl, "reload-or-restart", "sshd"])
            if status != 0:
                return f"the SSH service could not be reloaded: {output}"
        return None


class PasswordApplier(DropInApplier):
    family = "password"
    names = frozenset({"min_length", "min_character_classes"})
    file = "/etc/security/pwquality.conf.d/50-corral.conf"

    def render(self, values: dict[str, Any]) -> str:
        lines = []
        if "min_length" in values:
            lines.append(f"minlen = {_integer(values['min_length'], 1, 128)}")
        if "min_character_classes" in values:
            lines.append(f"minclass = {_integer(values['min_character_classes'], 0, 4)}")
        return "\n".join(lines) + "\n"


class UsbStorageApplier(DropInApplier):
    family = "usb_storage"
    names = frozenset({"blocked"})
    file = "/etc/modprobe.d/50-corral-usb-storage.conf"

    def apply(self, ctx: ApplyContext, values: dict[str, Any]) -> dict[str, SettingResult]:
        # "blocked: false" means nothing to enforce: the drop-in goes.
        if values.get("blocked") is False:
            _remove(ctx.path(self.file))
            return self.all(values, "succeeded")
        return super().apply(ctx, values)

    def render(self, values: dict[str, Any]) -> str:
        if values.get("blocked") is not True:
            raise ValueError(f"expected true or false, got {values.get('blocked')!r}")
        return "blacklist usb-storage\ninstall usb-storage /bin/false\n"


class ScreenLockApplier(Applier):
    """GNOME's idle delay and screen lock through a system dconf database keyfile and its lock file."""

    family = "screen_lock"
    names = frozenset({"timeout_minutes"})
    keyfile = "/etc/dconf/db/local.d/50-corral-screen-lock"
    lockfile = "/etc/dconf/db/local.d/locks/50-corral-screen-lock"

    def apply(self, ctx: ApplyContext, values: dict[str, Any]) -> dict[str, SettingResult]:
        keyfile, lockfile = ctx.path(self.keyfile), ctx.path(self.lockfile)
        if not values:
            if _remove(keyfile) | _remove(lockfile):
                self._update(ctx)
            return {}
        results = {
            name: self.result(name, "not_applicable", "not known to this agent")
            for name in values
            if name not in self.names
        }
        if "timeout_minutes" not in values:
            return results
        try:
            minutes = _integer(values["timeout_minutes"], 1, 1440)
        except ValueError as exc:
            return {**results, "timeout_minutes": self.result("timeout_minutes", "error", str(exc))}
        text = (
            MANAGED_HEADER
            + "[org/gnome/desktop/session]\n"
            + f"idle-delay=uint32 {minutes * 60}\n\n"
            + "[org/gnome/desktop/screensaver]\n"
            + "lock-enabled=true\nlock-delay=uint32 0\n"
        )
        locks = "/org/gnome/desktop/session/idle-delay\n/org/gnome/desktop/screensaver/lock-enabled\n"
        changed = _write_managed(keyfile, text) | _write_managed(lockfile, locks)
        problem = self._update(ctx) if changed else None
        state: SettingState = "error" if problem else "succeeded"
        return {**results, "timeout_minutes": self.result("timeout_minutes", state, problem)}

    def _update(self, ctx: ApplyContext) -> str | None:
        dconf = ctx.which("dconf")
        if ctx.live and dconf is not None:
            status, output = ctx.execute([dconf, "update"])
            if status != 0:
                return f"dconf update failed: {output}"
        return None


class LoginBannerApplier(Applier):
    """The pre-login banner: ``/etc/issue`` (consoles) and ``/etc/issue.net`` (SSH, telnet). What was there
    before Corral is kept in the state directory and put back when the banner is no longer wanted."""

    family = "login_banner"
    names = frozenset({"text"})
    files = ("/etc/issue", "/etc/issue.net")

    def apply(self, ctx: ApplyContext, values: dict[str, Any]) -> dict[str, SettingResult]:
        backups = ctx.state_dir / BACKUP_DIR
        if not values.get("text"):
            for name in self.files:
                backup = backups / Path(name).name
                absent = backups / (Path(name).name + ".absent")
                if backup.exists():
                    _write_managed(ctx.path(name), backup.read_text(encoding="utf-8"))
                    backup.unlink()
                elif absent.exists():  # there was no file before Corral wrote one
                    _remove(ctx.path(name))
                    absent.unlink()
            return self.all(values, "succeeded") if values else {}
        text = values["text"]
        if not isinstance(text, str) or len(text) > 4096:
            return self.all(values, "error", "the banner must be text of at most 4,096 characters")
        text = text if text.endswith("\n") else text + "\n"
        for name in self.files:
            target, backup = ctx.path(name), backups / Path(name).name
            absent = backups / (Path(name).name + ".absent")
            if not backup.exists() and not absent.exists():
                backups.mkdir(parents=True, exist_ok=True, mode=0o700)
                if target.exists():
                    backup.write_text(target.read_text(encoding="utf-8", errors="replace"), encoding="utf-8")
                else:
                    absent.touch()
            _write_managed(target, text)
        results = self.all(values, "not_applicable", "not known to this agent")
        results["text"] = self.result("text", "succeeded")
        return results


class FirewallApplier(Applier):
    family = "firewall"
    names = frozenset({"enabled"})

    def apply(self, ctx: ApplyContext, values: dict[str, Any]) -> dict[str, SettingResult]:
        if "enabled" not in values:
            return self.all(values, "not_applicable", "not known to this agent")
        enabled = values["enabled"]
        if not isinstance(enabled, bool):
            return self.all(values, "error", f"expected true or false, got {enabled!r}")
        ufw, systemctl = ctx.which("ufw"), ctx.which("systemctl")
        firewalld = ctx.which("firewall-cmd")
        if ufw is not None:
            args = [ufw, "--force", "enable"] if enabled else [ufw, "disable"]
        elif firewalld is not None and systemctl is not None:
            args = [systemctl, "enable" if enabled else "disable", "--now", "firewalld"]
        else:
            return self.all(values, "not_applicable", "neither ufw nor firewalld is installed")
        status, output = ctx.execute(args)
        if status != 0:
            return self.all(values, "error", f"{Path(args[0]).name} failed: {output or status}")
        return self.all(values, "succeeded")


class AgentSettingsApplier(Applier):
    """The agent's own settings, kept in ``agent-settings.json`` in its state directory."""

    family = "agent"
    platforms = frozenset({"linux", "macos", "windows"})
    names = frozenset({"checkin_interval_minutes", "log_level"})

    def apply(self, ctx: ApplyContext, values: dict[str, Any]) -> dict[str, SettingResult]:
        path = ctx.state_dir / AGENT_SETTINGS_FILE
        settings: dict[str, Any] = {}
        results: dict[str, SettingResult] = {}
        for name, value in values.items():
            if name == "checkin_interval_minutes":
                try:
                    settings[name] = _integer(value, 1, 1440)
                except ValueError as exc:
                    results[name] = self.result(name, "error", str(exc))
                    continue
            elif name == "log_level":
                if value not in {"debug", "info", "warning", "error"}:
                    results[name] = self.result(name, "error", f"unknown log level {value!r}")
                    continue
                settings[name] = value
            else:
                results[name] = self.result(name, "not_applicable", "not known to this agent")
                continue
            results[name] = self.result(name, "succeeded")
        if settings:
            _write_managed(path, json.dumps(settings, sort_keys=True) + "\n")
        else:
            _remove(path)
        return results


APPLIERS: dict[str, Applier] = {
    applier.family: applier
    for applier in (
        SshApplier(),
        PasswordApplier(),
        UsbStorageApplier(),
        ScreenLockApplier(),
        LoginBannerApplier(),
        FirewallApplier(),
        AgentSettingsApplier(),
    )
}


def read_agent_settings(state_dir: Path) -> dict[str, Any]:
    """What the ``agent`` family last set (empty when nothing)."""
    try:
        data = json.loads((state_dir / AGENT_SETTINGS_FILE).read_text(encoding="utf-8"))
    except (FileNotFoundError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def _redact(value: Any) -> Any:
    if isinstance(value, dict):
        return {
            k: "********" if "password" in k or "secret" in k or k == "psk" else _redact(v)
            for k, v in value.items()
        }
    if isinstance(value, list):
        return [_redact(v) for v in value]
    return value


def apply_settings(
    ctx: ApplyContext, settings: Iterable[tuple[str, Any]], *, previous_families: Iterable[str] = ()
) -> dict[str, SettingResult]:
    """Apply ``(setting id, value)`` pairs; families that were applied before (``previous_families``) and
    hold no setting now are handed an empty set, so they remove what they put in place. Returns the result of
    every setting by id."""
    by_family: dict[str, dict[str, Any]] = {}
    results: dict[str, SettingResult] = {}
    for setting_id, value in settings:
        family, _, name = setting_id.partition(".")
        if not family or not name:
            results[setting_id] = SettingResult(setting_id, "error", "a setting id is <family>.<name>")
            continue
        by_family.setdefault(family, {})[name] = value
    for family in previous_families:
        by_family.setdefault(family, {})
    for family, values in sorted(by_family.items()):
        applier = APPLIERS.get(family)
        if applier is None or ctx.os_name not in applier.platforms:
            for name in values:
                results[f"{family}.{name}"] = SettingResult(
                    f"{family}.{name}", "not_applicable", f"not supported on {ctx.os_name} by this agent"
                )
            continue
        if ctx.simulate:
            for name, value in values.items():
                ctx.record(
                    {"effect": "setting applied", "setting_id": f"{family}.{name}", "value": _redact(value)}
                )
                results[f"{family}.{name}"] = SettingResult(f"{family}.{name}", "succeeded")
            continue
        try:
            family_results = applier.apply(ctx, values)
        except OSError as exc:
            family_results = applier.all(values, "error", f"{type(exc).__name__}: {exc}")
        for result in family_results.values():
            results[result.setting_id] = result
    return results


def applied_families(results: dict[str, SettingResult]) -> list[str]:
    """The families with a setting in place (to be cleaned up when they go)."""
    return sorted(
        {
            sid.partition(".")[0]
            for sid, r in results.items()
            if r.state == "succeeded" and sid.partition(".")[0] in APPLIERS
        }
    )


CUSTOM_DIR = "/etc/corral/custom.d"
CUSTOM_PREFIX = "custom."


def apply_custom(
    ctx: ApplyContext, items: Iterable[tuple[str, str, Any]]
) -> dict[tuple[str, str], SettingResult]:
    """Apply the custom payloads of each profile (``(profile id, setting id, value)``): on Linux a
    ``custom.json`` object becomes ``/etc/corral/custom.d/<profile id>.json`` and the files of profiles that
    no longer reach the device are removed; a ``.mobileconfig`` is Apple MDM's to install (macOS does not let
    an agent install profiles) and OMA-URI rows are Windows MDM's, so both are not applicable here. Returns
    the result of each by (profile id, setting id)."""
    results: dict[tuple[str, str], SettingResult] = {}
    wanted: dict[str, Any] = {}
    for profile_id, setting_id, value in items:
        kind = setting_id.removeprefix(CUSTOM_PREFIX)
        key = (profile_id, setting_id)
        if ctx.simulate:
            ctx.record(
                {"effect": "custom payload applied", "setting_id": setting_id, "profile_id": profile_id}
            )
            results[key] = SettingResult(setting_id, "succeeded")
        elif kind == "json" and ctx.os_name == "linux":
            wanted[profile_id] = value
        elif kind == "mobileconfig":
            results[key] = SettingResult(
                setting_id,
                "not_applicable",
                "a .mobileconfig is installed through Apple MDM enrollment, not by the agent",
            )
        elif kind == "oma_uri":
            results[key] = SettingResult(
                setting_id, "not_applicable", "OMA-URI settings are applied through Windows MDM enrollment"
            )
        else:
            results[key] = SettingResult(
                setting_id, "not_applicable", f"not supported on {ctx.os_name} by this agent"
            )
    if ctx.simulate or ctx.os_name != "linux":
        return results
    directory = ctx.path(CUSTOM_DIR)
    for profile_id, value in wanted.items():
        key = (profile_id, f"{CUSTOM_PREFIX}json")
        try:
            name = f"{uuid.UUID(profile_id)}.json"  # never a path the server chose
        except ValueError:
            results[key] = SettingResult(key[1], "error", "the profile id is not a UUID")
            continue
        if not isinstance(value, dict):
            results[key] = SettingResult(key[1], "error", "the payload is not a JSON object")
            continue
        try:
            directory.mkdir(parents=True, exist_ok=True)
            target = directory / name
            text = json.dumps(value, indent=2, sort_keys=True) + "\n"
            if not target.exists() or target.read_text(encoding="utf-8") != text:
                temporary = target.with_suffix(".tmp")
                temporary.write_text(text, encoding="utf-8")
                os.chmod(temporary, 0o644)
                temporary.replace(target)
            results[key] = SettingResult(key[1], "succeeded")
        except OSError as exc:
            results[key] = SettingResult(key[1], "error", f"{type(exc).__name__}: {exc}")
    if directory.is_dir():
        keep = {f"{p}.json" for p in wanted}
        for path in directory.glob("*.json"):
            if path.name not in keep:
                path.unlink(missing_ok=True)
    return results
