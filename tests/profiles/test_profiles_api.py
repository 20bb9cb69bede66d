"""Configuration profiles through the API: the catalog, values checked on the server, secrets encrypted at
rest and never shown again, versions, roles and bad input refused without changing anything."""

from __future__ import annotations

import uuid
from typing import Any

import httpx
from sqlalchemy import func, select, text
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from corral.models import ConfigurationProfile
from corral.profiles import catalog
from tests.conftest import Factory, audit_rows

Sessionmaker = async_sessionmaker[AsyncSession]
WIFI = [{"ssid": "Corp", "security": "wpa2_personal", "password": "correct horse battery", "auto_join": True}]


def test_the_catalog_loads_and_every_setting_is_coherent() -> None:
    loaded = catalog.load()
    assert len(loaded.settings) >= 15
    for setting in loaded.settings:
        assert setting.platforms, setting.id
        for platform, mechanism in setting.platforms.items():
            # Every platform says how the setting reaches it.
            assert mechanism.payload or mechanism.csp or mechanism.applier or mechanism.field, (
                setting.id,
                platform,
            )
            if platform.value == "linux":
                assert mechanism.applier == setting.family, setting.id  # the agent's applier of that family
    assert loaded.by_id["wifi.networks"].secret_fields == ["password"]


async def test_create_read_version_and_secrets(
    client: httpx.AsyncClient, factory: Factory, sessionmaker: Sessionmaker
) -> None:
    admin = await factory.admin()
    listed = (
        await client.get("/api/v1/settings-catalog?platform=linux&search=ssh", headers=admin.headers)
    ).json()
    assert {s["id"] for s in listed} == {"ssh.permit_root_login", "ssh.password_authentication"}
    body = {
        "name": "Office laptops",
        "platform": "windows",
        "settings": {"password.min_length": 12, "firewall.enabled": True, "wifi.networks": WIFI},
    }
    made = await client.post("/api/v1/configuration-profiles", json=body, headers=admin.headers)
    assert made.status_code == 201, made.text
    profile = made.json()
    assert profile["version"] == 1
    assert profile["settings"]["wifi.networks"][0]["password"] == {"$secret": True}
    # At rest: encrypted, not the password.
    async with sessionmaker() as session:
        raw = await session.scalar(
            text("SELECT settings::text FROM configuration_profiles WHERE id = :id"), {"id": profile["id"]}
        )
    assert "correct horse" not in raw and "$secret" in raw
    (event,) = await audit_rows(sessionmaker, activity="configuration_profile.create")
    assert "correct horse" not in str(event.modified_properties)

    # Sending the placeholder back keeps the secret; a real change makes version 2.
    async with sessionmaker() as session:
        first = await session.get(ConfigurationProfile, uuid.UUID(profile["id"]))
        assert first is not None
        original_token = first.settings["wifi.networks"][0]["password"]["$secret"]
    networks = profile["settings"]["wifi.networks"]
    networks[0]["auto_join"] = False
    url = f"/api/v1/configuration-profiles/{profile['id']}"
    changed = await client.patch(
        url, json={"settings": {**profile["settings"], "wifi.networks": networks}}, headers=admin.headers
    )
    assert changed.status_code == 200, changed.text
    assert changed.json()["version"] == 2
    async with sessionmaker() as session:
        stored = await session.get(ConfigurationProfile, uuid.UUID(profile["id"]))
        assert stored is not None
        kept = stored.settings["wifi.networks"][0]["password"]["$secret"]
    assert kept == original_token  # the placeholder kept the very same ciphertext
    versions = (await client.get(f"{url}/versions", headers=admin.headers)).json()
    assert [v["version"] for v in versions] == [2, 1]
    same = await client.patch(url, json={"settings": changed.json()["settings"]}, headers=admin.headers)
    assert same.json()["version"] == 2  # nothing changed, no new version


async def test_bad_values_are_refused_naming_the_setting_and_change_nothing(
    client: httpx.AsyncClient, factory: Factory, sessionmaker: Sessionmaker
) -> None:
    admin = await factory.admin()
    cases: list[tuple[dict[str, Any], str]] = [
        ({"nope.nothing": 1}, "settings.nope.nothing: no such setting"),
        ({"ssh.permit_root_login": "no"}, "not available for windows devices"),
        ({"password.min_length": 3}, "settings.password.min_length: must be from 4 to 64"),
        ({"password.min_length": "12"}, "must be a whole number"),
        ({"firewall.enabled": "yes"}, "must be true or false"),
        ({"login_banner.text": "x" * 5000}, "at most 4096 characters"),
        (
            {"wifi.networks": [{"ssid": "A", "security": "wep"}]},
            "settings.wifi.networks: 0.security: must be one of",
        ),
        ({"wifi.networks": [{"security": "open"}]}, "0.ssid: required"),
        ({"wifi.networks": [{"ssid": "A", "security": "open", "colour": "red"}]}, "0.colour: unknown field"),
        (
            {"wifi.networks": [{"ssid": "A", "security": "open", "password": {"$secret": True}}]},
            "0.password: a new profile has no stored secret to keep",
        ),
        ({"wifi.networks": [{"ssid": "A", "security": "open", "password": 7}]}, "0.password: must be text"),
        ({}, "at least one setting"),
    ]
    for values, message in cases:
        response = await client.post(
            "/api/v1/configuration-profiles",
            json={"name": "Bad", "platform": "windows", "settings": values},
            headers=admin.headers,
        )
        assert response.status_code == 422, (values, response.text)
        assert message in response.json()["detail"], (message, response.json()["detail"])
    async with sessionmaker() as session:
        assert await session.scalar(select(func.count()).select_from(ConfigurationProfile)) == 0


async def test_roles(client: httpx.AsyncClient, factory: Factory) -> None:
    service = await factory.admin("Service administrator")
    compliance = await factory.admin("Device compliance administrator")
    reader = await factory.admin("Read-only operator")
    assert (await client.get("/api/v1/configuration-profiles")).status_code == 401
    body = {"name": "Banner", "platform": "linux", "settings": {"login_banner.text": "Authorised use only"}}
    made = await client.post("/api/v1/configuration-profiles", json=body, headers=service.headers)
    assert made.status_code == 201, made.text
    url = f"/api/v1/configuration-profiles/{made.json()['id']}"
    assert (await client.get(url, headers=reader.headers)).status_code == 200
    # The device compliance administrator works on compliance policies only.
    assert (await client.get(url, headers=compliance.headers)).status_code == 403
    for other in (compliance, reader):
        refused = await client.post(
            "/api/v1/configuration-profiles", json={**body, "name": "x"}, headers=other.headers
        )
        assert refused.status_code == 403
    deleted = await client.delete(
        f"/api/v1/configuration-profiles/{made.json()['id']}", headers=service.headers
    )
    assert deleted.status_code == 204
