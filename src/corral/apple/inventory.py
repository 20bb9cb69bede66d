"""Apple devices' answers to the inventory queries (DeviceInformation, SecurityInfo, InstalledApplicationList,
ProfileList, CertificateList), read into Corral's one inventory shape (devices/schemas.Inventory), so the
device page, history, dynamic groups and compliance read an iPhone like any other device.

Each answer updates its part of the device's current inventory and goes through the same ingestion as an
agent's upload (checkin/service.ingest_inventory: history, the app table, the columns lists read). Profiles
and certificates have no place there; they are kept as facts of the enrollment (names, identifiers, expiry;
never a certificate's bytes). Apple's MDM gives no jailbreak signal: ``jailbroken`` stays unknown.
"""

from __future__ import annotations

import hashlib
from datetime import datetime
from typing import Any

from pydantic import ValidationError
from sqlalchemy import inspect
from sqlalchemy.ext.asyncio import AsyncSession

from corral.checkin.service import checkin_service
from corral.devices.schemas import Inventory
from corral.models import AppleEnrollment, Device, Platform

INVENTORY_REQUESTS = frozenset(
    {"DeviceInformation", "SecurityInfo", "InstalledApplicationList", "ProfileList", "CertificateList"}
)
MAX_APPS = 5000
MAX_FACTS = 500


def _str(value: Any, limit: int = 512) -> str | None:
    return value[:limit] if isinstance(value, str) and value else None


def _gb(value: Any) -> int | None:
    """Apple reports capacities in (decimal) gigabytes, as a real."""
    if isinstance(value, (int, float)) and not isinstance(value, bool) and value >= 0:
        return int(value * 10**9)
    return None


def _bool(value: Any) -> bool | None:
    return value if isinstance(value, bool) else None


def _os_name(platform: Platform) -> str:
    return {Platform.ios: "iOS", Platform.ipados: "iPadOS", Platform.macos: "macOS"}.get(
        platform, platform.value
    )


def merge(
    current: dict[str, Any], request_type: str, answer: dict[str, Any], device: Device
) -> dict[str, Any]:
    """The inventory after this answer (a copy of ``current``, as JSON)."""
    hardware: dict[str, Any] = dict(current.get("hardware") or {})
    os_: dict[str, Any] = dict(current.get("os") or {})
    security: dict[str, Any] = dict(current.get("security") or {})
    network: dict[str, Any] = dict(current.get("network") or {})
    inventory: dict[str, Any] = {
        "hardware": hardware,
        "os": os_,
        "security": security,
        "network": network,
        "apps": list(current.get("apps") or []),
    }
    if request_type == "DeviceInformation":
        info = answer.get("QueryResponses")
        if isinstance(info, dict):
            hardware["manufacturer"] = "Apple"
            hardware["model"] = (
                _str(info.get("ModelName")) or _str(info.get("ProductName")) or hardware.get("model")
            )
            hardware["serial_number"] = _str(info.get("SerialNumber")) or hardware.get("serial_number")
            for key, name in (
                ("DeviceCapacity", "storage_total_bytes"),
                ("AvailableDeviceCapacity", "storage_free_bytes"),
            ):
                if _gb(info.get(key)) is not None:
                    hardware[name] = _gb(info.get(key))
            if (
                device.platform is Platform.macos
                and _bool(info.get("SystemIntegrityProtectionEnabled")) is not None
            ):
                security["system_integrity_protection"] = info["SystemIntegrityProtectionEnabled"]
            silicon = _bool(info.get("IsAppleSilicon"))
            if device.platform is not Platform.macos:
                hardware["cpu_architecture"] = "arm64"
            elif silicon is not None:
                hardware["cpu_architecture"] = "arm64" if silicon else "x86_64"
            os_["platform"] = device.platform.value
            os_["name"] = _os_name(device.platform)
            os_["version"] = _str(info.get("OSVersion"), 64) or os_.get("version")
            os_["build"] = _str(info.get("BuildVersion"), 128) or os_.get("build")
            hostname = _str(info.get("HostName")) or _str(info.get("LocalHostName"))
            if hostname:
                network["hostname"] = hostname
            interfaces = [
                {"name": name, "mac": mac[:64]}
                for name, key in (
                    ("Wi-Fi", "WiFiMAC"),
                    ("Ethernet", "EthernetMAC"),
                    ("Bluetooth", "BluetoothMAC"),
                )
                if isinstance(mac := info.get(key), str) and mac
            ]
            if interfaces:
                network["interfaces"] = interfaces
    elif request_type == "SecurityInfo":
        info = answer.get("SecurityInfo")
        if isinstance(info, dict):
            passcode = _bool(info.get("PasscodePresent"))
            if passcode is not None:
                security["passcode_set"] = passcode
                security["screen_lock_enabled"] = passcode
            if device.platform is Platform.macos:
                if _bool(info.get("FDE_Enabled")) is not None:
                    security["disk_encrypted"] = info["FDE_Enabled"]
                firewall = info.get("FirewallSettings")
                if isinstance(firewall, dict) and _bool(firewall.get("FirewallEnabled")) is not None:
                    security["firewall_enabled"] = firewall["FirewallEnabled"]
                secure_boot = info.get("SecureBoot")
                if isinstance(secure_boot, dict) and isinstance(secure_boot.get("SecureBootLevel"), str):
                    security["secure_boot"] = secure_boot["SecureBootLevel"] == "full"
            else:
                # Data protection: file-level encryption (HardwareEncryptionCaps bit 2) works once a passcode
                # is set.
                caps = info.get("HardwareEncryptionCaps")
                if isinstance(caps, int) and not isinstance(caps, bool) and passcode is not None:
                    security["disk_encrypted"] = bool(caps & 2) and passcode
    elif request_type == "InstalledApplicationList":
        apps = answer.get("InstalledApplicationList")
        if isinstance(apps, list):
            out = []
            for app in apps[:MAX_APPS]:
                if not isinstance(app, dict) or not _str(app.get("Name")):
                    continue
                version = _str(app.get("ShortVersion"), 128) or _str(app.get("Version"), 128)
                out.append(
                    {
                        "name": _str(app.get("Name")),
                        "version": version,
                        "identifier": _str(app.get("Identifier")),
                    }
                )
            inventory["apps"] = out
    return inventory


def facts(current: dict[str, Any], request_type: str, answer: dict[str, Any]) -> dict[str, Any] | None:
    """The enrollment's facts after a ProfileList or CertificateList answer (None: not such an answer)."""
    if request_type == "ProfileList" and isinstance(answer.get("ProfileList"), list):
        profiles = []
        for item in answer["ProfileList"][:MAX_FACTS]:
            if not isinstance(item, dict) or not _str(item.get("PayloadIdentifier")):
                continue
            content = item.get("PayloadContent")
            kinds = (
                sorted(
                    {
                        str(p["PayloadType"])
                        for p in content
                        if isinstance(p, dict) and isinstance(p.get("PayloadType"), str)
                    }
                )
                if isinstance(content, list)
                else []
            )
            profiles.append(
                {
                    "identifier": _str(item.get("PayloadIdentifier")),
                    "name": _str(item.get("PayloadDisplayName")),
                    "organization": _str(item.get("PayloadOrganization")),
                    "payload_types": kinds[:50],
                    "managed": item.get("IsManaged") is True,
                }
            )
        return {**current, "profiles": profiles}
    if request_type == "CertificateList" and isinstance(answer.get("CertificateList"), list):
        certificates = []
        for item in answer["CertificateList"][:MAX_FACTS]:
            if not isinstance(item, dict):
                continue
            data = item.get("Data")
            certificates.append(
                {
                    "common_name": _str(item.get("CommonName")),
                    "is_identity": item.get("IsIdentity") is True,
                    "sha256": hashlib.sha256(data).hexdigest() if isinstance(data, bytes) else None,
                }
            )
        return {**current, "certificates": certificates}
    return None


async def ingest(
    session: AsyncSession,
    device: Device,
    enrollment: AppleEnrollment,
    request_type: str,
    answer: dict[str, Any],
    now: datetime,
) -> bool:
    """Apply one inventory answer; whether the device's inventory changed."""
    new_facts = facts(enrollment.facts or {}, request_type, answer)
    if new_facts is not None:
        enrollment.facts = new_facts
        return False
    if request_type == "DeviceInformation":
        info = answer.get("QueryResponses")
        if isinstance(info, dict):
            if _bool(info.get("IsSupervised")) is not None:
                device.supervised = info["IsSupervised"]
            if _bool(info.get("IsMDMLostModeEnabled")) is not None:
                enrollment.lost_mode_enabled = info["IsMDMLostModeEnabled"]
            if _str(info.get("DeviceName"), 256):
                device.name = info["DeviceName"][:256]
    if "inventory" in inspect(device).unloaded:
        await session.refresh(device, ["inventory"])
    merged = merge(device.inventory or {}, request_type, answer, device)
    try:
        inventory = Inventory.model_validate(merged)
    except ValidationError:
        return False  # an answer Corral cannot read into the inventory changes nothing
    state = await checkin_service.ingest_inventory(
        session, device, inventory, inventory.model_dump(mode="json"), now
    )
    return state == "accepted"
