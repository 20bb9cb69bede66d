"""Configuration profiles on Apple's MDM channel: each Corral profile assigned to an Apple device is one Apple
configuration profile (``com.corral.profile.<id>``), generated from the settings catalog's Apple mechanisms
(catalog.yaml: payload type and key per platform) plus the payloads of a custom ``.mobileconfig`` if the
profile has one, signed by Corral's profile signer, installed with ``InstallProfile`` and removed with
``RemoveProfile`` when it no longer reaches the device.

Per-setting states go where agents' reports go (``device_setting_states``), so a profile's status page reads
Apple devices like any other: succeeded when the device acknowledged the install, error with the device's
ErrorChain text when it refused it, not applicable for settings Apple devices (or this platform) lack,
conflict for settings another profile gives another value (delivered from neither, as for agents).
"""

from __future__ import annotations

import plistlib
import uuid
from dataclasses import dataclass, field
from typing import Any

from corral.models import Platform
from corral.profiles import catalog

PREFIX = "com.corral.profile."


def identifier(profile_id: uuid.UUID | str) -> str:
    return f"{PREFIX}{profile_id}"


def profile_id_of(identifier_: str) -> uuid.UUID | None:
    """The Corral profile an installed profile's identifier names (None: not one of Corral's)."""
    if not identifier_.startswith(PREFIX):
        return None
    try:
        return uuid.UUID(identifier_[len(PREFIX) :])
    except ValueError:
        return None


#: Setting → how its value becomes the payload key's (the catalog names the key; some are said the other way
#: round, like "camera blocked" for Apple's allowCamera).
_CONVERT: dict[str, Any] = {
    "camera.blocked": lambda v: not v,
    "screenshots.blocked": lambda v: not v,
    "disk_encryption.enabled": lambda v: "On" if v else "Off",
}
#: Keys a payload needs beside a setting's own for the setting to take effect.
_COMPANIONS: dict[str, dict[str, Any]] = {
    "os_updates.deferral_days": {"forceDelayedSoftwareUpdates": True},
}
_WIFI_SECURITY = {"open": "None", "wpa2_personal": "WPA2", "wpa3_personal": "WPA3"}


@dataclass
class Generated:
    """An Apple profile for one Corral profile on one platform, and each setting's state once installed."""

    payloads: list[dict[str, Any]] = field(default_factory=list)
    #: setting id → (state if the install succeeds, message)
    states: dict[str, tuple[str, str]] = field(default_factory=dict)


def _payload(kind: str, name: str, profile_id: str, index: int, **keys: Any) -> dict[str, Any]:
    return {
        "PayloadType": kind,
        "PayloadIdentifier": f"{identifier(profile_id)}.{index}",
        "PayloadUUID": str(
            uuid.uuid5(uuid.NAMESPACE_URL, f"{identifier(profile_id)}/{index}/{kind}")
        ).upper(),
        "PayloadVersion": 1,
        "PayloadDisplayName": name,
        **keys,
    }


def generate(
    profile_id: str, settings: dict[str, Any], platform: Platform, conflicts: frozenset[str] = frozenset()
) -> Generated:
    """The payloads for ``settings`` (revealed: secrets in clear, for the device) on ``platform``."""
    out = Generated()
    by_type: dict[str, dict[str, Any]] = {}
    extra: list[tuple[str, str, dict[str, Any]]] = []
    names = {Platform.ios: "iPhone", Platform.ipados: "iPad", Platform.macos: "Mac"}
    on = names.get(platform, platform.value)
    for setting_id, value in sorted(settings.items()):
        setting = catalog.load().by_id.get(setting_id)
        if setting_id in conflicts:
            out.states[setting_id] = ("conflict", "another profile sets this setting to another value")
            continue
        mechanism = setting.platforms.get(platform) if setting else None
        if setting is None or mechanism is None or not mechanism.payload:
            out.states[setting_id] = ("not_applicable", f"not available on a {on}")
            continue
        if setting_id == "custom.mobileconfig":
            content = plistlib.loads(str(value).encode()).get("PayloadContent") or []
            for payload in content:
                if isinstance(payload, dict):
                    extra.append(
                        (str(payload.get("PayloadType")), str(payload.get("PayloadDisplayName", "")), payload)
                    )
            out.states[setting_id] = ("succeeded", f"{len(content)} payload(s) installed")
            continue
        if setting_id == "wifi.networks":
            for network in value or []:
                keys: dict[str, Any] = {
                    "SSID_STR": network["ssid"],
                    "EncryptionType": _WIFI_SECURITY.get(network.get("security", ""), "Any"),
                    "AutoJoin": bool(network.get("auto_join", True)),
                }
                if network.get("password"):
                    keys["Password"] = network["password"]
                extra.append(("com.apple.wifi.managed", f"Wi-Fi {network['ssid']}", keys))
            out.states[setting_id] = ("succeeded", "")
            continue
        if setting_id == "vpn.connections":
            skipped = []
            for connection in value or []:
                if connection.get("type") != "ikev2":
                    skipped.append(connection.get("name", "?"))
                    continue
                extra.append(
                    (
                        "com.apple.vpn.managed",
                        f"VPN {connection['name']}",
                        {
                            "UserDefinedName": connection["name"],
                            "VPNType": "IKEv2",
                            "IKEv2": {
                                "RemoteAddress": connection["server"],
                                "RemoteIdentifier": connection["server"],
                            },
                        },
                    )
                )
            out.states[setting_id] = (
                (
                    "succeeded",
                    f"not installed (only IKEv2 VPNs are configured on Apple devices): {', '.join(skipped)}",
                )
                if skipped
                else ("succeeded", "")
            )
            continue
        if mechanism.key is None:
            out.states[setting_id] = ("not_applicable", f"not available on a {on}")
            continue
        convert = _CONVERT.get(setting_id, lambda v: v)
        keys_of_type = by_type.setdefault(mechanism.payload, {})
        keys_of_type[mechanism.key] = convert(value)
        keys_of_type.update(_COMPANIONS.get(setting_id, {}))
        out.states[setting_id] = ("succeeded", "")
    index = 0
    for kind, keys in sorted(by_type.items()):
        out.payloads.append(_payload(kind, kind.rsplit(".", 1)[-1], profile_id, index, **keys))
        index += 1
    for kind, name, keys in extra:
        body = {k: v for k, v in keys.items() if not k.startswith("Payload") or k == "PayloadContent"}
        out.payloads.append(_payload(kind, name or kind, profile_id, index, **body))
        index += 1
    return out


def configuration(profile_id: str, name: str, organization: str, payloads: list[dict[str, Any]]) -> bytes:
    """The ``.mobileconfig`` (XML) of a Corral profile."""
    return plistlib.dumps(
        {
            "PayloadType": "Configuration",
            "PayloadIdentifier": identifier(profile_id),
            "PayloadUUID": str(uuid.uuid5(uuid.NAMESPACE_URL, identifier(profile_id))).upper(),
            "PayloadVersion": 1,
            "PayloadDisplayName": name,
            "PayloadOrganization": organization,
            "PayloadScope": "System",
            "PayloadRemovalDisallowed": True,
            "PayloadContent": payloads,
        },
        fmt=plistlib.FMT_XML,
    )
