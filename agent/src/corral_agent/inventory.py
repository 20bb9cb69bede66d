"""Inventory (device-protocol.md §5) from what the operating system tells an unprivileged process, plus what
root can read. Unknown values are ``None``; nothing is guessed.

The result is deterministic for the same machine state (lists sorted; free storage rounded down to whole GiB
so that ordinary disk activity does not change the inventory hash at every check-in).
"""

from __future__ import annotations

import glob
import hashlib
import hmac
import json
import os
import platform
import plistlib
import re
import shutil
import socket
import subprocess
import sys
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import psutil  # type: ignore[import-untyped]

MAX_APPS = 5000
MAX_STRING = 512
MAX_INTERFACES = 64
GIB = 1024**3
PLATFORMS = ("windows", "macos", "linux", "ios", "ipados", "android")

Inventory = dict[str, Any]


# ------------------------------------------------------------------------------------------------ hashing
def canonical_json(inventory: Inventory) -> str:
    """Keys sorted, no whitespace: ``json.dumps(inventory, sort_keys=True, separators=(",", ":"))``."""
    return json.dumps(inventory, sort_keys=True, separators=(",", ":"))


def inventory_hash(inventory: Inventory) -> str:
    """SHA-256 (hex) of the canonical JSON of the inventory."""
    return hashlib.sha256(canonical_json(inventory).encode("utf-8")).hexdigest()


# ------------------------------------------------------------------------------------------------ helpers
def current_platform() -> str:
    if sys.platform.startswith("linux"):
        return "linux"
    if sys.platform == "darwin":
        return "macos"
    if sys.platform == "win32":
        return "windows"
    return sys.platform


def _read(path: str | Path, limit: int = 4096) -> str | None:
    try:
        with open(path, encoding="utf-8", errors="replace") as handle:
            return handle.read(limit).strip()
    except OSError:
        return None


def _read_bytes(path: str | Path) -> bytes | None:
    try:
        return Path(path).read_bytes()
    except OSError:
        return None


def _run(args: list[str], timeout: float = 10.0) -> str | None:
    """stdout of a command, or ``None`` when it is missing, fails or takes too long."""
    if shutil.which(args[0]) is None:
        return None
    try:
        done = subprocess.run(args, capture_output=True, text=True, timeout=timeout, check=False)
    except (OSError, subprocess.SubprocessError):
        return None
    return done.stdout if done.returncode == 0 else None


def _clean(value: str | None) -> str | None:
    """Firmware placeholders (``To Be Filled By O.E.M.``, ``Default string``, ``0``…) are unknowns."""
    if value is None:
        return None
    value = value.strip()
    placeholders = {
        "",
        "0",
        "none",
        "default string",
        "to be filled by o.e.m.",
        "not specified",
        "system serial number",
    }
    return None if value.lower() in placeholders else value


def _is_root() -> bool:
    return hasattr(os, "geteuid") and os.geteuid() == 0


def _limit_strings(value: Any) -> Any:
    if isinstance(value, str):
        return value[:MAX_STRING]
    if isinstance(value, list):
        return [_limit_strings(v) for v in value]
    if isinstance(value, dict):
        return {k: _limit_strings(v) for k, v in value.items()}
    return value


def parse_os_release(text: str) -> dict[str, str]:
    result: dict[str, str] = {}
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith("#") or "=" not in line:
            continue
        key, _, value = line.partition("=")
        value = value.strip()
        if len(value) >= 2 and value[0] == value[-1] and value[0] in "\"'":
            value = value[1:-1]
        result[key.strip()] = value.replace('\\"', '"').replace("\\\\", "\\")
    return result


# ------------------------------------------------------------------------------------------------ hardware
def _linux_dmi(name: str) -> str | None:
    return _clean(_read(f"/sys/class/dmi/id/{name}"))


def _mac_hardware() -> dict[str, str | None]:
    out = _run(["system_profiler", "SPHardwareDataType"], timeout=20) or ""
    fields = dict(
        (k.strip(), v.strip()) for k, _, v in (line.partition(":") for line in out.splitlines()) if _ == ":"
    )
    return {
        "manufacturer": "Apple",
        "model": fields.get("Model Identifier") or fields.get("Model Name"),
        "serial_number": _clean(fields.get("Serial Number (system)")),
    }


def collect_hardware(os_name: str) -> dict[str, Any]:
    info: dict[str, Any] = {"manufacturer": None, "model": None, "serial_number": None}
    if os_name == "linux":
        info["manufacturer"] = _linux_dmi("sys_vendor")
        info["model"] = _linux_dmi("product_name")
        info["serial_number"] = _linux_dmi("product_serial")  # readable by root only
    elif os_name == "macos":
        info.update(_mac_hardware())
    info["cpu_architecture"] = (platform.machine() or "")[:32] or None
    try:
        info["memory_bytes"] = int(psutil.virtual_memory().total)
    except (OSError, RuntimeError):
        info["memory_bytes"] = None
    root = os.environ.get("SYSTEMDRIVE", "C:") + "\\" if os_name == "windows" else "/"
    try:
        usage = psutil.disk_usage(root)
        info["storage_total_bytes"] = int(usage.total)
        info["storage_free_bytes"] = int(usage.free) // GIB * GIB
    except OSError:
        info["storage_total_bytes"] = info["storage_free_bytes"] = None
    return info


# ------------------------------------------------------------------------------------------------ os
def collect_os(os_name: str) -> dict[str, Any]:
    name: str | None = None
    version: str | None = None
    build: str | None = None
    if os_name == "linux":
        release = parse_os_release(_read("/etc/os-release") or _read("/usr/lib/os-release") or "")
        name = release.get("NAME") or "Linux"
        version = release.get("VERSION_ID")
        debian = _read("/etc/debian_version")
        if release.get("ID") == "debian" and debian and re.fullmatch(r"\d+(\.\d+)*", debian):
            version = debian  # "12.7" rather than VERSION_ID's "12"
        build = platform.release() or None
    elif os_name == "macos":
        name = "macOS"
        version = platform.mac_ver()[0] or None
        build = (_run(["sw_vers", "-buildVersion"]) or "").strip() or None
    elif os_name == "windows":
        win_release, win_version, _csd, _ptype = platform.win32_ver()
        name = f"Windows {win_release}".strip() if win_release else "Windows"
        version = win_version or None
        build = win_version.rsplit(".", 1)[-1] if win_version else None
    else:
        name, version, build = (
            platform.system() or None,
            platform.release() or None,
            platform.version() or None,
        )
    return {
        "platform": os_name,
        "name": name,
        "version": version[:64] if version else None,
        "build": build[:128] if build else None,
    }


# ------------------------------------------------------------------------------------------------ security
def _root_block_device() -> str | None:
    """Kernel name (``sda2``, ``nvme0n1p3``, ``dm-1``) of the block device mounted at ``/``."""
    mounts = _read("/proc/self/mounts", limit=1 << 20) or ""
    source = None
    for line in mounts.splitlines():
        fields = line.split()
        if len(fields) >= 2 and fields[1] == "/":
            source = fields[0]  # the last mount on / wins (the visible one)
    if source is None or not source.startswith("/dev/"):
        return None  # overlay, tmpfs, network: not a local block device (containers, live systems)
    try:
        return Path(os.path.realpath(source)).name
    except OSError:
        return None


def _crypt_in_stack(device: str, sys_block: Path, depth: int = 0) -> bool:
    """Whether ``device`` or anything below it (LVM on LUKS, …) is a dm-crypt mapping."""
    if depth > 16:
        return False
    uuid = _read(sys_block / device / "dm" / "uuid")
    if uuid and uuid.startswith("CRYPT-"):
        return True
    slaves = sys_block / device / "slaves"
    try:
        below = sorted(p.name for p in slaves.iterdir())
    except OSError:
        below = []
    return any(_crypt_in_stack(name, sys_block, depth + 1) for name in below)


def linux_disk_encrypted(sys_block: Path = Path("/sys/class/block")) -> bool | None:
    device = _root_block_device()
    if device is None or not (sys_block / device).exists():
        return None
    return _crypt_in_stack(device, sys_block)


_NFT_STRUCTURE = (
    "table ",
    "chain ",
    "type ",
    "policy ",
    "}",
    "{",
    "#",
    "flags ",
    "set ",
    "map ",
    "elements ",
)


def nft_has_rules(ruleset: str) -> bool:
    """Whether an ``nft list ruleset`` output filters anything: a rule line or a dropping chain policy."""
    if "policy drop" in ruleset:
        return True
    return any(line.strip() and not line.strip().startswith(_NFT_STRUCTURE) for line in ruleset.splitlines())


def linux_firewall_enabled() -> bool | None:
    """Rules present in nftables/iptables (readable by root only); unprivileged, only ufw's own switch when
    it says yes — otherwise unknown."""
    if _is_root():
        ruleset = _run(["nft", "list", "ruleset"])
        if ruleset is not None and nft_has_rules(ruleset):
            return True
        saved = _run(["iptables", "-S"])
        if saved is not None:
            return any(r.startswith("-A") for r in saved.splitlines()) or "-P INPUT DROP" in saved
        return False if ruleset is not None else None
    ufw = parse_os_release(_read("/etc/ufw/ufw.conf") or "")
    if ufw.get("ENABLED", "").lower() == "yes":
        return True
    return None


SECURE_BOOT_VAR = "SecureBoot-8be4df61-93ca-11d2-aa0d-00e098032b8c"


def linux_secure_boot(efi: Path = Path("/sys/firmware/efi")) -> bool | None:
    if not efi.exists():
        return False  # legacy BIOS boot: Secure Boot cannot be on
    data = _read_bytes(efi / "efivars" / SECURE_BOOT_VAR)
    if data is None or len(data) < 5:
        return None
    return data[4] == 1  # 4 bytes of attributes, then the value


def collect_security(os_name: str) -> dict[str, Any]:
    result: dict[str, Any] = {
        "disk_encrypted": None,
        "firewall_enabled": None,
        "screen_lock_enabled": None,
        "passcode_set": None,
        "jailbroken": None,
        "secure_boot": None,
    }
    if os_name == "linux":
        result["disk_encrypted"] = linux_disk_encrypted()
        result["firewall_enabled"] = linux_firewall_enabled()
        result["secure_boot"] = linux_secure_boot()
    elif os_name == "macos":
        filevault = _run(["fdesetup", "status"])
        if filevault:
            result["disk_encrypted"] = "FileVault is On" in filevault
        firewall = _run(["/usr/libexec/ApplicationFirewall/socketfilterfw", "--getglobalstate"])
        if firewall:
            result["firewall_enabled"] = "enabled" in firewall.lower()
    return result


# ------------------------------------------------------------------------------------------------ network
def collect_network() -> dict[str, Any]:
    link_families = {getattr(psutil, "AF_LINK", None), getattr(socket, "AF_PACKET", None)} - {None}
    interfaces = []
    try:
        addresses = psutil.net_if_addrs()
    except OSError:
        addresses = {}
    for name in sorted(addresses):
        mac = None
        ipv4: list[str] = []
        ipv6: list[str] = []
        for addr in addresses[name]:
            if addr.family in link_families:
                if addr.address and addr.address.replace("-", ":") != "00:00:00:00:00:00":
                    mac = addr.address.replace("-", ":").lower()
            elif addr.family == socket.AF_INET:
                ipv4.append(addr.address)
            elif addr.family == socket.AF_INET6:
                ipv6.append(addr.address.split("%", 1)[0])
        if mac is None and all(a.startswith("127.") for a in ipv4) and all(a == "::1" for a in ipv6):
            continue  # loopback
        interfaces.append(
            {"name": name, "mac": mac, "ipv4": sorted(set(ipv4))[:64], "ipv6": sorted(set(ipv6))[:64]}
        )
    return {"hostname": socket.gethostname() or None, "interfaces": interfaces[:MAX_INTERFACES]}


# ------------------------------------------------------------------------------------------------ apps
def parse_dpkg_status(text: str) -> list[dict[str, str | None]]:
    """Installed packages from dpkg's status file: name and identifier are the package name."""
    installed: list[tuple[str, str | None, str]] = []
    for paragraph in re.split(r"\n\s*\n", text):
        fields: dict[str, str] = {}
        for line in paragraph.splitlines():
            if line[:1] in (" ", "\t") or ":" not in line:
                continue
            key, _, value = line.partition(":")
            fields[key] = value.strip()
        package = fields.get("Package")
        if package and fields.get("Status", "").endswith(" installed"):
            installed.append((package, fields.get("Version") or None, fields.get("Architecture") or ""))
    # Multi-arch packages (libc6:amd64 and libc6:i386) share a name: qualify their identifiers.
    counts: dict[str, int] = {}
    for package, _, _ in installed:
        counts[package] = counts.get(package, 0) + 1
    return [
        {
            "name": package,
            "version": version,
            "identifier": f"{package}:{arch}" if counts[package] > 1 and arch else package,
        }
        for package, version, arch in installed
    ]


def _linux_apps() -> list[dict[str, str | None]]:
    status = _read("/var/lib/dpkg/status", limit=64 << 20)
    if status:
        return parse_dpkg_status(status)
    if Path("/var/lib/rpm").exists() or Path("/usr/lib/sysimage/rpm").exists():
        out = _run(["rpm", "-qa", "--queryformat", "%{NAME}\t%{VERSION}-%{RELEASE}\n"], timeout=60) or ""
        return [
            {"name": name, "version": version or None, "identifier": name}
            for name, _, version in (line.partition("\t") for line in out.splitlines())
            if name
        ]
    return []


def _mac_apps() -> list[dict[str, str | None]]:
    apps = []
    for bundle in sorted(glob.glob("/Applications/*.app") + glob.glob("/Applications/*/*.app")):
        data = _read_bytes(Path(bundle) / "Contents" / "Info.plist")
        if data is None:
            continue
        try:
            info = plistlib.loads(data)
        except (plistlib.InvalidFileException, ValueError):
            continue
        name = info.get("CFBundleName") or Path(bundle).stem
        version = info.get("CFBundleShortVersionString") or info.get("CFBundleVersion")
        identifier = info.get("CFBundleIdentifier")
        apps.append(
            {
                "name": str(name),
                "version": str(version) if version else None,
                "identifier": str(identifier) if identifier else None,
            }
        )
    return apps


def _windows_apps() -> list[dict[str, str | None]]:
    apps: list[dict[str, str | None]] = []
    if sys.platform != "win32":
        return apps
    import winreg

    roots = [
        (winreg.HKEY_LOCAL_MACHINE, r"SOFTWARE\Microsoft\Windows\CurrentVersion\Uninstall"),
        (winreg.HKEY_LOCAL_MACHINE, r"SOFTWARE\WOW6432Node\Microsoft\Windows\CurrentVersion\Uninstall"),
        (winreg.HKEY_CURRENT_USER, r"SOFTWARE\Microsoft\Windows\CurrentVersion\Uninstall"),
    ]
    for hive, path in roots:
        try:
            key = winreg.OpenKey(hive, path)
        except OSError:
            continue
        with key:
            for index in range(winreg.QueryInfoKey(key)[0]):
                try:
                    sub_name = winreg.EnumKey(key, index)
                    with winreg.OpenKey(key, sub_name) as sub:
                        name = str(winreg.QueryValueEx(sub, "DisplayName")[0])
                        try:
                            version: str | None = str(winreg.QueryValueEx(sub, "DisplayVersion")[0])
                        except OSError:
                            version = None
                except OSError:
                    continue
                apps.append({"name": name, "version": version, "identifier": sub_name})
    return apps


def collect_apps(os_name: str) -> list[dict[str, str | None]]:
    collectors: dict[str, Callable[[], list[dict[str, str | None]]]] = {
        "linux": _linux_apps,
        "macos": _mac_apps,
        "windows": _windows_apps,
    }
    apps = collectors.get(os_name, list)()
    # One entry per identifier (the server keys apps by it); several installed versions keep the last.
    unique: dict[tuple[str, str], dict[str, str | None]] = {}
    for app in sorted(apps, key=lambda a: (a["identifier"] or "", a["name"] or "", a["version"] or "")):
        app = {**app, "version": app["version"][:128] if app["version"] else None}
        unique[(app["identifier"] or "", "" if app["identifier"] else app["name"] or "")] = app
    return [unique[k] for k in sorted(unique)][:MAX_APPS]


# ------------------------------------------------------------------------------------------------ user
def _primary_user(users: Iterable[Any]) -> str | None:
    """The user on the console (a graphical seat or a local tty), else the first signed-in user."""
    sessions = sorted(((u.name or "", u.terminal or "") for u in users), key=lambda s: (s[1], s[0]))
    for name, terminal in sessions:
        if name and (terminal.startswith((":", "tty", "seat", "console"))):
            return str(name)
    names = sorted({name for name, _ in sessions if name})
    return names[0] if names else None


def collect_primary_user() -> str | None:
    try:
        return _primary_user(psutil.users())
    except (OSError, RuntimeError):
        return None


# ------------------------------------------------------------------------------------------------ all
def collect_inventory(os_name: str | None = None) -> Inventory:
    """The whole inventory in the shape of device-protocol.md §5."""
    os_name = os_name or current_platform()
    inventory = {
        "hardware": collect_hardware(os_name),
        "os": collect_os(os_name),
        "security": collect_security(os_name),
        "network": collect_network(),
        "apps": collect_apps(os_name),
        "primary_user": collect_primary_user(),
    }
    limited: Inventory = _limit_strings(inventory)
    return limited


def device_facts(inventory: Inventory, name: str | None = None) -> dict[str, str]:
    """The ``device`` object of an enrollment request (device-protocol.md §2), unknowns left out."""
    hardware = inventory.get("hardware") or {}
    os_info = inventory.get("os") or {}
    network = inventory.get("network") or {}
    facts = {
        "serial_number": hardware.get("serial_number"),
        "name": name or network.get("hostname"),
        "platform": os_info.get("platform"),
        "os_version": os_info.get("version"),
        "model": hardware.get("model"),
        "manufacturer": hardware.get("manufacturer"),
    }
    limits = {"serial_number": 128, "name": 256, "os_version": 64, "model": 256, "manufacturer": 256}
    return {k: str(v)[: limits.get(k, MAX_STRING)] for k, v in facts.items() if v is not None and str(v)}


_SERIAL_KEY = b"corral-agent stable device identifier v1"


def _app_specific(identifier: str) -> str:
    """A keyed hash of a machine identifier: stable, but not the identifier itself (machine-id(5) asks that
    the machine ID be hashed with an application-specific key before it is shown to anyone)."""
    return hmac.new(_SERIAL_KEY, identifier.strip().lower().encode(), hashlib.sha256).hexdigest()[:32]


def fallback_serial_number() -> str | None:
    """A stable stand-in when the hardware serial number is unreadable (Linux without root, most VMs and
    containers): ``mid-`` and a keyed hash of the OS installation's machine identifier."""
    candidates: list[str | None] = []
    if sys.platform.startswith("linux"):
        candidates += [_read("/etc/machine-id"), _read("/var/lib/dbus/machine-id")]
    elif sys.platform == "darwin":
        out = _run(["ioreg", "-rd1", "-c", "IOPlatformExpertDevice"]) or ""
        match = re.search(r'"IOPlatformUUID" = "([0-9A-Fa-f-]+)"', out)
        candidates.append(match.group(1) if match else None)
    elif sys.platform == "win32":
        import winreg

        try:
            with winreg.OpenKey(winreg.HKEY_LOCAL_MACHINE, r"SOFTWARE\Microsoft\Cryptography") as key:
                candidates.append(str(winreg.QueryValueEx(key, "MachineGuid")[0]))
        except OSError:
            pass
    for candidate in candidates:
        if candidate and len(candidate.strip()) >= 16:
            return "mid-" + _app_specific(candidate)
    return None
