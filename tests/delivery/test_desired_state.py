"""The desired-state exchange over the device protocol: the check-in carries the version, the document holds
what reaches the device (secrets for the device only), conflicting profiles are reported on both and
delivered from neither, reports are stored and refused for what was never delivered, the server answers
429 when busy, and the admin view shows applied versus intended."""

from __future__ import annotations

import asyncio
from typing import Any

import httpx
from fastapi import FastAPI
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from corral import delivery
from corral.delivery.service import delivery_service
from tests.assignments.helpers import group_target, put_assignments
from tests.conftest import Admin, Factory, sign_in
from tests.devices.device import TestDevice
from tests.devices.test_enrollment_and_checkin import enrolled
from tests.groups.helpers import add, create_group

Sessionmaker = async_sessionmaker[AsyncSession]


async def profile(
    client: httpx.AsyncClient, admin: Admin, name: str, settings: dict[str, Any]
) -> dict[str, Any]:
    made = await client.post(
        "/api/v1/configuration-profiles",
        json={"name": name, "platform": "linux", "settings": settings},
        headers=admin.headers,
    )
    assert made.status_code == 201, made.text
    response = await client.put(
        f"/api/v1/configuration-profiles/{made.json()['id']}/assignments",
        json={"assignments": [{"target": "all_devices"}]},
        headers=admin.headers,
    )
    assert response.status_code == 200, response.text
    return dict(made.json())


async def version_at_checkin(device: TestDevice) -> int:
    response = await device.checkin({})
    assert response.status_code == 200, response.text
    return int(response.json()["desired_state_version"])


async def test_document_conflicts_reports_and_applied_versus_intended(
    client: httpx.AsyncClient, factory: Factory, sessionmaker: Sessionmaker
) -> None:
    admin = await factory.admin()
    device = await enrolled(client, admin)
    assert await version_at_checkin(device) == 0  # nothing assigned yet

    banner = await profile(
        client, admin, "Banner A", {"login_banner.text": "A", "ssh.password_authentication": False}
    )
    first = await version_at_checkin(device)
    assert first > 0
    assert await version_at_checkin(device) == first  # steady: unchanged
    document = (await device.request("GET", "/device/v1/desired-state")).json()
    assert document["version"] == first
    assert document["conflicts"] == []
    (entry,) = document["profiles"]
    assert entry["id"] == banner["id"] and entry["version"] == 1
    assert entry["settings"] == [
        {"id": "login_banner.text", "value": "A"},
        {"id": "ssh.password_authentication", "value": False},
    ]

    other = await profile(client, admin, "Banner B", {"login_banner.text": "B"})
    second = await version_at_checkin(device)
    assert second != first
    document = (await device.request("GET", "/device/v1/desired-state")).json()
    assert document["conflicts"] == [
        {"setting_id": "login_banner.text", "profiles": sorted([banner["id"], other["id"]])}
    ]
    settings_by_profile = {p["name"]: [s["id"] for s in p["settings"]] for p in document["profiles"]}
    assert settings_by_profile == {"Banner A": ["ssh.password_authentication"], "Banner B": []}

    report = {
        "version": second,
        "profiles": [
            {
                "id": banner["id"],
                "version": 1,
                "settings": [{"id": "ssh.password_authentication", "state": "succeeded"}],
            },
            {"id": other["id"], "version": 1, "settings": []},
        ],
    }
    stored = await device.request("POST", "/device/v1/desired-state/report", report)
    assert stored.status_code == 200, stored.text
    view = (
        await client.get(f"/api/v1/devices/{device.device_id}/configuration", headers=admin.headers)
    ).json()
    by_name = {p["profile_name"]: p for p in view["profiles"]}
    a = {s["setting_id"]: s for s in by_name["Banner A"]["settings"]}
    assert by_name["Banner A"]["applied_version"] == 1 and by_name["Banner A"]["intended_version"] == 1
    assert a["ssh.password_authentication"]["state"] == "succeeded"
    assert a["login_banner.text"]["state"] == "conflict"
    assert a["login_banner.text"]["message"] == "Also set differently by Banner B"
    b = {s["setting_id"]: s for s in by_name["Banner B"]["settings"]}
    assert b["login_banner.text"]["state"] == "conflict" and "Banner A" in b["login_banner.text"]["message"]

    # A new version of A: intended 2, applied still 1, its settings pending until the device reports.
    await client.patch(
        f"/api/v1/configuration-profiles/{banner['id']}",
        json={"settings": {"login_banner.text": "A", "ssh.password_authentication": True}},
        headers=admin.headers,
    )
    assert await version_at_checkin(device) != second
    view = (
        await client.get(f"/api/v1/devices/{device.device_id}/configuration", headers=admin.headers)
    ).json()
    a_view = next(p for p in view["profiles"] if p["profile_name"] == "Banner A")
    assert (a_view["intended_version"], a_view["applied_version"]) == (2, 1)
    assert {s["setting_id"]: s["state"] for s in a_view["settings"]}[
        "ssh.password_authentication"
    ] == "pending"

    # The device's page shows the same: applied versus intended, the conflict named.
    await sign_in(client, admin.email)
    page = (await client.get(f"/portal/devices/{device.device_id}")).text
    card = page[page.index("data-configuration") :]
    assert "intended version 2, applied 1" in card
    assert "Also set differently by Banner B" in card and ">Pending<" in card

    # A report for a version it was never sent: refused, audited, nothing stored.
    bad = {"version": 1, "profiles": [{"id": banner["id"], "version": 7, "settings": []}]}
    refused = await device.request("POST", "/device/v1/desired-state/report", bad)
    assert refused.status_code == 422
    assert "was never delivered to this device" in refused.json()["detail"]


async def test_secrets_reach_the_device_only_and_a_busy_server_says_when_to_come_back(
    app: FastAPI, client: httpx.AsyncClient, factory: Factory, sessionmaker: Sessionmaker
) -> None:
    admin = await factory.admin()
    device = await enrolled(client, admin)
    made = await client.post(
        "/api/v1/configuration-profiles",
        json={
            "name": "Wi-Fi",
            "platform": "windows",
            "settings": {
                "wifi.networks": [{"ssid": "Corp", "security": "wpa3_personal", "password": "s3cret-psk"}]
            },
        },
        headers=admin.headers,
    )
    assert made.status_code == 201, made.text
    windows = TestDevice(client, platform="windows")
    token = (
        await client.post(
            "/api/v1/enrollment-tokens", json={"name": "W", "platforms": ["windows"]}, headers=admin.headers
        )
    ).json()["token"]
    assert (await windows.enroll(token)).status_code == 201
    await client.put(
        f"/api/v1/configuration-profiles/{made.json()['id']}/assignments",
        json={"assignments": [{"target": "all_devices"}]},
        headers=admin.headers,
    )
    document = (await windows.request("GET", "/device/v1/desired-state")).json()
    (entry,) = document["profiles"]
    assert entry["settings"][0]["value"][0]["password"] == "s3cret-psk"
    view = (
        await client.get(f"/api/v1/devices/{windows.device_id}/configuration", headers=admin.headers)
    ).text
    assert "s3cret-psk" not in view
    # A second profile with the same network and password: equal values, no conflict (the two ciphertexts
    # differ, the passwords do not).
    same = await client.post(
        "/api/v1/configuration-profiles",
        json={
            "name": "Wi-Fi again",
            "platform": "windows",
            "settings": {
                "wifi.networks": [{"ssid": "Corp", "security": "wpa3_personal", "password": "s3cret-psk"}]
            },
        },
        headers=admin.headers,
    )
    await client.put(
        f"/api/v1/configuration-profiles/{same.json()['id']}/assignments",
        json={"assignments": [{"target": "all_devices"}]},
        headers=admin.headers,
    )
    document = (await windows.request("GET", "/device/v1/desired-state")).json()
    assert document["conflicts"] == [] and len(document["profiles"]) == 2
    # The Linux device gets nothing of a Windows profile.
    assert (await device.request("GET", "/device/v1/desired-state")).json()["profiles"] == []

    semaphore = delivery_service._semaphore(app.state.settings)
    places = app.state.settings.desired_state_concurrency
    for _ in range(places):
        await semaphore.acquire()
    # Every place taken: a fetch waits for one (here one frees after 0.2 s) instead of being refused...
    asyncio.get_running_loop().call_later(0.2, semaphore.release)
    waited = await windows.request("GET", "/device/v1/desired-state")
    assert waited.status_code == 200, waited.text
    # ... and is refused when none frees within the admission wait.
    await semaphore.acquire()
    settings = app.state.settings
    wait, settings.device_admission_wait_seconds = settings.device_admission_wait_seconds, 0.3
    try:
        busy = await windows.request("GET", "/device/v1/desired-state")
    finally:
        settings.device_admission_wait_seconds = wait
        for _ in range(places):
            semaphore.release()
    assert busy.status_code == 429
    assert busy.headers["retry-after"] == str(app.state.settings.desired_state_retry_after_seconds)
    assert (await windows.request("GET", "/device/v1/desired-state")).status_code == 200


async def report_profile(device: TestDevice, states: dict[str, str]) -> None:
    """Fetch the desired state and report these states for its one profile."""
    document = (await device.request("GET", "/device/v1/desired-state")).json()
    (entry,) = [p for p in document["profiles"] if p["name"] == "Servers"]
    report = {
        "version": document["version"],
        "profiles": [
            {
                "id": entry["id"],
                "version": entry["version"],
                "settings": [
                    {"id": sid, "state": state, **({"message": "no pwquality"} if state == "error" else {})}
                    for sid, state in states.items()
                ],
            }
        ],
    }
    stored = await device.request("POST", "/device/v1/desired-state/report", report)
    assert stored.status_code == 200, stored.text


async def test_a_profiles_status_report_counts_devices_by_what_they_reported(
    client: httpx.AsyncClient, factory: Factory
) -> None:
    admin = await factory.admin()
    ok, failing, conflicted, silent = [await enrolled(client, admin) for _ in range(4)]
    servers = await profile(client, admin, "Servers", {"login_banner.text": "A", "password.min_length": 12})
    await report_profile(ok, {"login_banner.text": "succeeded", "password.min_length": "succeeded"})
    await report_profile(failing, {"login_banner.text": "succeeded", "password.min_length": "error"})
    await report_profile(
        conflicted, {"login_banner.text": "conflict", "password.min_length": "not_applicable"}
    )
    base = f"/api/v1/configuration-profiles/{servers['id']}"
    status = (await client.get(f"{base}/status", headers=admin.headers)).json()
    assert status["version"] == 1
    assert status["counts"] == {
        "succeeded": 1,
        "error": 1,
        "conflict": 1,
        "not_applicable": 0,
        "pending": 1,
    }
    by_setting = {s["setting_id"]: s for s in status["settings"]}
    assert by_setting["password.min_length"] == {
        "setting_id": "password.min_length",
        "name": "Minimum password length",
        "succeeded": 1,
        "error": 1,
        "conflict": 0,
        "not_applicable": 1,
        "pending": 1,
    }
    errors = (await client.get(f"{base}/devices?state=error", headers=admin.headers)).json()
    assert [d["device_id"] for d in errors["items"]] == [failing.device_id]
    assert errors["items"][0]["message"] == "no pwquality"
    pending = (
        await client.get(f"{base}/devices?state=pending&setting_id=login_banner.text", headers=admin.headers)
    ).json()
    assert [d["device_id"] for d in pending["items"]] == [silent.device_id] and pending["total"] == 1
    csv = await client.get(f"{base}/devices.csv?state=succeeded", headers=admin.headers)
    assert csv.status_code == 200 and csv.headers["content-type"].startswith("text/csv")
    lines = csv.text.strip().splitlines()
    assert lines[0] == "device_id,device_name,serial_number,state,message,reported_at"
    assert len(lines) == 2 and lines[1].startswith(ok.device_id)

    # A new version: every report is for the old one, so every device is pending again.
    changed = await client.patch(base, json={"settings": {"login_banner.text": "B"}}, headers=admin.headers)
    assert changed.status_code == 200, changed.text
    status = (await client.get(f"{base}/status", headers=admin.headers)).json()
    assert status["counts"]["pending"] == 4 and status["version"] == 2
    # Readers see it, the unauthenticated and the bad state do not.
    helpdesk = await factory.admin("Help desk operator")
    assert (await client.get(f"{base}/status", headers=helpdesk.headers)).status_code == 200
    assert (await client.get(f"{base}/status")).status_code == 401
    assert (await client.get(f"{base}/devices?state=broken", headers=admin.headers)).status_code == 422


async def test_devices_reached_by_the_same_objects_share_one_built_content_and_every_change_shows(
    client: httpx.AsyncClient, factory: Factory, monkeypatch: Any
) -> None:
    """A fleet woken by one change asks for the same content many times: it is built once per process, and
    a change of what reaches the devices (a new version, a rename, another object) is never served stale."""
    built: list[int] = []
    real = delivery.service._content

    def counting(*args: Any, **kwargs: Any) -> Any:
        built.append(1)
        return real(*args, **kwargs)

    monkeypatch.setattr(delivery.service, "_content", counting)
    admin = await factory.admin()
    first, second = await enrolled(client, admin), await enrolled(client, admin)
    made = await profile(client, admin, "Shared banner", {"login_banner.text": "Hello"})

    async def fetch(device: TestDevice) -> dict[str, Any]:
        response = await device.request("GET", "/device/v1/desired-state")
        assert response.status_code == 200, response.text
        assert response.headers["content-type"] == "application/json"
        document: dict[str, Any] = response.json()
        assert document["version"] == await version_at_checkin(device)
        return document

    one, two = await fetch(first), await fetch(second)
    assert len(built) == 1  # the second device's document came from the first one's content
    assert one == two and [p["name"] for p in one["profiles"] if p["id"] == made["id"]] == ["Shared banner"]

    url = f"/api/v1/configuration-profiles/{made['id']}"
    renamed = await client.patch(url, json={"name": "Greeting"}, headers=admin.headers)
    assert renamed.status_code == 200 and renamed.json()["version"] == 1  # same version, new name
    document = await fetch(first)
    assert [p["name"] for p in document["profiles"] if p["id"] == made["id"]] == ["Greeting"]
    assert document["hash"] != one["hash"] and len(built) == 2

    changed = await client.patch(url, json={"settings": {"login_banner.text": "Bye"}}, headers=admin.headers)
    assert changed.json()["version"] == 2
    document = await fetch(second)
    (entry,) = [p for p in document["profiles"] if p["id"] == made["id"]]
    assert entry["version"] == 2 and entry["settings"] == [{"id": "login_banner.text", "value": "Bye"}]
    assert document["version"] > two["version"] and len(built) == 3

    # Only the first device leaves the profile's reach: its content is another one.
    excluded = await create_group(client, admin, "Banner-free")
    joined = await add(client, admin, excluded["id"], "device", str(first.device_id))
    assert joined.status_code in (200, 201, 204), joined.text
    excluding = await put_assignments(
        client,
        admin,
        made["id"],
        [{"target": "all_devices"}, group_target(excluded["id"], "exclude")],
        kind="configuration-profiles",
    )
    assert excluding.status_code == 200, excluding.text
    assert made["id"] not in [p["id"] for p in (await fetch(first))["profiles"]]
    assert made["id"] in [p["id"] for p in (await fetch(second))["profiles"]]
