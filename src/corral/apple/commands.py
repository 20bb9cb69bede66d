"""Corral's commands on Apple's MDM channel: which a device can take (platform and supervision, from Apple's
schema, apple/device-management ``mdm/commands``), the Apple commands each becomes, and what their answers
mean. The same registry (commands/registry.py), permissions, approvals and audit apply as for agents; only
the delivery differs (apple/connect.py).

| Corral | Apple | where |
|---|---|---|
| lock | DeviceLock (Message, PhoneNumber; PIN on a Mac) | iPhone, iPad, Mac |
| wipe | EraseDevice (PIN on a Mac) | iPhone, iPad, Mac (company-owned) |
| retire | RemoveProfile of the enrollment profile | iPhone, iPad, Mac |
| sync | DeviceInformation, SecurityInfo, InstalledApplicationList, ProfileList, CertificateList | all |
| restart | RestartDevice | Mac; iPhone and iPad when supervised |
| shutdown | ShutDownDevice | Mac; iPhone and iPad when supervised |
| lost mode on / off | EnableLostMode / DisableLostMode | supervised iPhone and iPad |
| locate | DeviceLocation (the device answers only in lost mode) | supervised iPhone and iPad |
| passcode reset | ClearPasscode (the UnlockToken) | iPhone and iPad |
| rename | Settings: DeviceName | Mac; iPhone and iPad when supervised |
| notify | (none: Apple's MDM has no message command) | refused |
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Protocol

from corral.commands.registry import CommandType, Target
from corral.models import Platform

APPLE = frozenset({Platform.ios, Platform.ipados, Platform.macos})
MOBILE = frozenset({Platform.ios, Platform.ipados})

#: DeviceInformation's queries (Apple's ``information.device.yaml``): what inventory, groups and compliance
#: read. Phone number and ICCID are not asked for: personal data Corral has no use for.
DEVICE_INFORMATION_QUERIES = [
    "DeviceName",
    "OSVersion",
    "BuildVersion",
    "ModelName",
    "Model",
    "ProductName",
    "SerialNumber",
    "UDID",
    "DeviceCapacity",
    "AvailableDeviceCapacity",
    "IsSupervised",
    "IsMDMLostModeEnabled",
    "IsActivationLockEnabled",
    "IsDeviceLocatorServiceEnabled",
    "IsAppleSilicon",
    "SystemIntegrityProtectionEnabled",
    "HostName",
    "LocalHostName",
    "WiFiMAC",
    "BluetoothMAC",
    "EthernetMAC",
    "BatteryLevel",
]
#: What "sync" asks (and what Corral asks of its own after enrollment): the inventory set.
INVENTORY: tuple[tuple[str, dict[str, Any]], ...] = (
    ("DeviceInformation", {"Queries": DEVICE_INFORMATION_QUERIES}),
    ("SecurityInfo", {}),
    ("InstalledApplicationList", {"ManagedAppsOnly": False}),
    ("ProfileList", {}),
    ("CertificateList", {}),
)


class AppleTarget(Target, Protocol):
    """What the Apple rules read of a device: the registry's target, and whether it is supervised."""

    @property
    def supervised(self) -> bool | None: ...


@dataclass(frozen=True)
class Rule:
    platforms: frozenset[Platform]
    #: Platforms where Apple accepts the command only from a supervised device.
    supervised_on: frozenset[Platform] = field(default_factory=frozenset)


RULES: dict[str, Rule] = {
    "lock": Rule(APPLE),
    "wipe": Rule(APPLE),
    "retire": Rule(APPLE),
    "sync": Rule(APPLE),
    "restart": Rule(APPLE, MOBILE),
    "shutdown": Rule(APPLE, MOBILE),
    "lost_mode_on": Rule(MOBILE, MOBILE),
    "lost_mode_off": Rule(MOBILE, MOBILE),
    "locate": Rule(MOBILE, MOBILE),
    "passcode_reset": Rule(MOBILE),
    "rename": Rule(APPLE, MOBILE),
}
_NAMES = {Platform.ios: "iPhone", Platform.ipados: "iPad", Platform.macos: "Mac"}


def refusal(command_type: CommandType, params: dict[str, Any] | None, device: AppleTarget) -> str | None:
    """Why this command cannot go to this Apple device, or None; ``params`` None: whether the type ever can
    (the portal's action bar)."""
    label = command_type.label
    rule = RULES.get(command_type.name)
    if rule is None:
        return f"{label} is not available for devices managed through Apple MDM."
    what = _NAMES.get(device.platform, device.platform.value)
    if device.platform not in rule.platforms:
        return f"{label} is not available for a {what} managed through Apple MDM."
    if device.platform in rule.supervised_on and device.supervised is not True:
        state = "it has not reported whether it is (sync first)" if device.supervised is None else "it is not"
        return f"{label} needs a supervised {what}; {state}."
    ownership = command_type.ownership_refusal(device)
    if ownership:
        return ownership
    if params is None:
        return None
    if command_type.name in ("lock", "wipe"):
        pin = params.get("pin")
        if device.platform is Platform.macos and command_type.name == "lock" and not pin:
            return (
                "Locking a Mac needs a six-digit PIN: the Mac asks for it to unlock (keep it for the user)."
            )
        if pin and device.platform is not Platform.macos:
            return f"A PIN is for Macs; a {what} is unlocked with its own passcode."
    if command_type.name == "wipe":
        if params.get("keep_user_data"):
            return "Apple devices cannot keep user data through an erase: retire the device instead."
        if params.get("keep_enrollment_data"):
            return "Keeping enrollment data (Return to Service) is not supported for Apple devices yet."
    return None


def steps(
    name: str, params: dict[str, Any], platform: Platform, profile_identifier: str
) -> list[tuple[str, dict[str, Any]]]:
    """The Apple commands a Corral command becomes, in order, with their parameters (never a secret: those
    are put in by ``render`` as the command leaves)."""
    if name == "lock":
        lock: dict[str, Any] = {}
        if params.get("message"):
            lock["Message"] = params["message"]
        if params.get("phone"):
            lock["PhoneNumber"] = params["phone"]
        if params.get("pin"):
            lock["PIN"] = params["pin"]
        return [("DeviceLock", lock)]
    if name == "wipe":
        erase: dict[str, Any] = {"PIN": params["pin"]} if params.get("pin") else {}
        return [("EraseDevice", erase)]
    if name == "retire":
        return [("RemoveProfile", {"Identifier": profile_identifier})]
    if name == "sync":
        return [(request_type, dict(values)) for request_type, values in INVENTORY]
    if name == "restart":
        return [("RestartDevice", {})]
    if name == "shutdown":
        return [("ShutDownDevice", {})]
    if name == "lost_mode_on":
        lost: dict[str, Any] = {"Message": params["message"]}
        if params.get("phone"):
            lost["PhoneNumber"] = params["phone"]
        if params.get("footnote"):
            lost["Footnote"] = params["footnote"]
        return [("EnableLostMode", lost)]
    if name == "lost_mode_off":
        return [("DisableLostMode", {})]
    if name == "locate":
        return [("DeviceLocation", {})]
    if name == "passcode_reset":
        return [("ClearPasscode", {})]  # the UnlockToken goes in as it is sent
    if name == "rename":
        return [("Settings", {"Settings": [{"Item": "DeviceName", "DeviceName": params["name"]}]})]
    raise ValueError(f"{name} has no Apple command")


def result_of(request_type: str, answer: dict[str, Any]) -> dict[str, Any]:
    """What Corral keeps of an acknowledged command's answer (the inventory answers are read by
    apple/inventory.py; secrets and certificate bytes are never kept)."""
    if request_type == "DeviceLock":
        return (
            {"message_result": answer["MessageResult"]}
            if isinstance(answer.get("MessageResult"), str)
            else {}
        )
    if request_type == "DeviceLocation":
        out = {}
        for key, name in (
            ("Latitude", "latitude"),
            ("Longitude", "longitude"),
            ("HorizontalAccuracy", "accuracy_m"),
        ):
            if isinstance(answer.get(key), (int, float)) and not isinstance(answer.get(key), bool):
                out[name] = float(answer[key])
        return out
    if request_type == "Settings":
        items = answer.get("Settings")
        statuses = [i.get("Status") for i in items if isinstance(i, dict)] if isinstance(items, list) else []
        return {"statuses": [s for s in statuses if isinstance(s, str)]}
    return {}


def settings_failed(answer: dict[str, Any]) -> str | None:
    """A Settings command is acknowledged as a whole; each item carries its own Status."""
    items = answer.get("Settings")
    if not isinstance(items, list):
        return None
    for item in items:
        if isinstance(item, dict) and item.get("Status") not in (None, "Acknowledged"):
            chain = item.get("ErrorChain")
            text = error_text(chain) if isinstance(chain, list) else None
            return text or f"the device answered {item.get('Status')} for {item.get('Item')}"
    return None


def error_chain(chain: Any) -> list[dict[str, Any]]:
    """The ErrorChain of an Error report, kept as code, domain and English description."""
    out = []
    if isinstance(chain, list):
        for item in chain[:10]:
            if isinstance(item, dict):
                out.append(
                    {
                        "code": item.get("ErrorCode") if isinstance(item.get("ErrorCode"), int) else None,
                        "domain": str(item.get("ErrorDomain", ""))[:128],
                        "description": str(
                            item.get("USEnglishDescription") or item.get("LocalizedDescription") or ""
                        )[:512],
                    }
                )
    return out


def error_text(chain: Any) -> str | None:
    items = error_chain(chain)
    if not items:
        return None
    first = items[0]
    return f"{first['domain']} {first['code']}: {first['description']}".strip()[:1024]
