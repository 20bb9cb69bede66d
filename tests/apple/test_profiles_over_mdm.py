"""Configuration profiles on Apple devices: a profile assigned to an iPhone is installed with InstallProfile
(a signed .mobileconfig generated from the settings catalog, plus a custom profile's payloads), its status
comes from the device's answer, a new version replaces it, and it is removed with RemoveProfile when it no
longer reaches the device."""

from __future__ import annotations

import plistlib
from typing import Any

import httpx
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from corral.apple.profiles import identifier
from corral.config import Settings
from corral.kit import cms
from corral.rbac.roles import GLOBAL_ADMINISTRATOR
from tests.apple.support import enrolled_apple
from tests.conftest import Admin, Factory

CUSTOM = plistlib.dumps(
    {
        "PayloadType": "Configuration",
        "PayloadIdentifier": "com.example.web",
        "PayloadUUID": "5C1A7E2E-1111-4A4A-9C9C-000000000001",
        "PayloadVersion": 1,
        "PayloadDisplayName": "Web clip",
        "PayloadContent": [
            {
                "PayloadType": "com.apple.webClip.managed",
                "PayloadIdentifier": "com.example.web.clip",
                "PayloadUUID": "5C1A7E2E-1111-4A4A-9C9C-000000000002",
                "PayloadVersion": 1,
                "Label": "Intranet",
                "URL": "https://intranet.example.com",
            }
        ],
    }
).decode()


async def assigned_profile(
    client: httpx.AsyncClient, admin: Admin, settings: dict[str, Any]
) -> dict[str, Any]:
    made = await client.post(
        "/api/v1/configuration-profiles",
        json={"name": "iPhone baseline", "platform": "ios", "settings": settings},
        headers=admin.headers,
    )
    assert made.status_code == 201, made.text
    assigned = await client.put(
        f"/api/v1/configuration-profiles/{made.json()['id']}/assignments",
        json={"assignments": [{"target": "all_devices"}]},
        headers=admin.headers,
    )
    assert assigned.status_code == 200, assigned.text
    return dict(made.json())


def installed(command: dict[str, Any]) -> dict[str, Any]:
    signed = cms.verify_signed_data(command["Command"]["Payload"])
    profile: dict[str, Any] = plistlib.loads(signed.content)
    return profile


async def test_a_profile_is_installed_reported_updated_and_removed(
    client: httpx.AsyncClient,
    factory: Factory,
    sessionmaker: async_sessionmaker[AsyncSession],
    settings: Settings,
) -> None:
    admin = await factory.admin(GLOBAL_ADMINISTRATOR.name)
    phone, device_id = await enrolled_apple(client, admin, sessionmaker, settings)
    await phone.connect_loop(client)
    profile = await assigned_profile(
        client,
        admin,
        {
            "password.min_length": 8,
            "camera.blocked": True,
            "wifi.networks": [{"ssid": "Corp", "security": "wpa2_personal", "password": "s3cret-pass"}],
            "custom.mobileconfig": CUSTOM,
        },
    )
    assert await phone.connect_loop(client) == ["InstallProfile"]
    mobileconfig = installed(phone.received[-1])
    assert mobileconfig["PayloadIdentifier"] == identifier(profile["id"])
    payloads = {p["PayloadType"]: p for p in mobileconfig["PayloadContent"]}
    assert payloads["com.apple.mobiledevice.passwordpolicy"]["minLength"] == 8
    assert payloads["com.apple.applicationaccess"]["allowCamera"] is False
    wifi = payloads["com.apple.wifi.managed"]
    assert (wifi["SSID_STR"], wifi["EncryptionType"], wifi["Password"]) == ("Corp", "WPA2", "s3cret-pass")
    assert payloads["com.apple.webClip.managed"]["URL"] == "https://intranet.example.com"

    base = f"/api/v1/configuration-profiles/{profile['id']}"
    status = (await client.get(f"{base}/status", headers=admin.headers)).json()
    assert status["counts"]["succeeded"] == 1, status
    # Nothing more to do until something changes.
    assert await phone.connect_loop(client) == []

    # A new version replaces it (same identifier, one payload for both password settings).
    changed = await client.patch(
        base,
        json={"settings": {"password.min_length": 10, "screen_lock.timeout_minutes": 5}},
        headers=admin.headers,
    )
    assert changed.status_code == 200, changed.text
    assert await phone.connect_loop(client) == ["InstallProfile"]
    again = installed(phone.received[-1])
    assert again["PayloadIdentifier"] == identifier(profile["id"])
    [policy] = again["PayloadContent"]
    assert policy["PayloadType"] == "com.apple.mobiledevice.passwordpolicy"
    assert (policy["minLength"], policy["maxInactivity"]) == (10, 5)
    status = (await client.get(f"{base}/status", headers=admin.headers)).json()
    assert status["version"] == 2 and status["counts"]["succeeded"] == 1, status
    assert {s["setting_id"]: s["succeeded"] for s in status["settings"]} == {
        "password.min_length": 1,
        "screen_lock.timeout_minutes": 1,
    }

    # Gone from the device (its ProfileList says so at the next sync): installed again.
    phone.installed_profiles.clear()
    assert (
        await client.post(f"/api/v1/devices/{device_id}/actions/sync", json={}, headers=admin.headers)
    ).status_code == 202
    assert (await phone.connect_loop(client))[-1] == "InstallProfile"
    assert identifier(profile["id"]) in phone.installed_profiles

    # Unassigned: removed from the device.
    unassigned = await client.put(f"{base}/assignments", json={"assignments": []}, headers=admin.headers)
    assert unassigned.status_code == 200, unassigned.text
    assert await phone.connect_loop(client) == ["RemoveProfile"]
    assert phone.received[-1]["Command"]["Identifier"] == identifier(profile["id"])
    assert phone.installed_profiles == {}


async def test_a_refused_install_shows_as_an_error(
    client: httpx.AsyncClient,
    factory: Factory,
    sessionmaker: async_sessionmaker[AsyncSession],
    settings: Settings,
) -> None:
    admin = await factory.admin(GLOBAL_ADMINISTRATOR.name)
    phone, _ = await enrolled_apple(client, admin, sessionmaker, settings)
    await phone.connect_loop(client)
    phone.refuse_profiles = True
    profile = await assigned_profile(client, admin, {"password.min_length": 8})
    assert await phone.connect_loop(client) == ["InstallProfile"]
    status = (
        await client.get(f"/api/v1/configuration-profiles/{profile['id']}/status", headers=admin.headers)
    ).json()
    assert status["counts"]["error"] == 1, status
