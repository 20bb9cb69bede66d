"""Compliance policies through the API and real check-ins: settings from the catalog checked on the server,
grace periods on an injected clock, the device's state as the worst of its policies, history, overrides,
the tenant's rules for devices without policies and without check-ins, roles, and bad input refused."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
from sqlalchemy import func, select, update
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from corral.compliance.service import compliance_service
from corral.models import CompliancePolicy, Device, DeviceComplianceChange, DeviceCompliancePolicy
from tests.conftest import Admin, Factory, audit_rows
from tests.devices.device import TestDevice, canonical_hash, inventory
from tests.devices.test_enrollment_and_checkin import enrolled

Sessionmaker = async_sessionmaker[AsyncSession]


def policy_body(**overrides: Any) -> dict[str, Any]:
    body: dict[str, Any] = {
        "name": f"Linux baseline {uuid.uuid4().hex[:6]}",
        "platform": "linux",
        "settings": {"disk_encryption.required": True, "os.min_version": "12.5", "firewall.required": True},
        "actions": [{"action": "mark_noncompliant", "delay_hours": 24}],
    }
    body.update(overrides)
    return body


async def create_policy(client: httpx.AsyncClient, admin: Admin, **overrides: Any) -> dict[str, Any]:
    response = await client.post(
        "/api/v1/compliance-policies", json=policy_body(**overrides), headers=admin.headers
    )
    assert response.status_code == 201, response.text
    return dict(response.json())


async def assign_all(client: httpx.AsyncClient, admin: Admin, policy_id: str) -> None:
    response = await client.put(
        f"/api/v1/compliance-policies/{policy_id}/assignments",
        json={"assignments": [{"target": "all_devices"}]},
        headers=admin.headers,
    )
    assert response.status_code == 200, response.text


async def report(device: TestDevice, **security: Any) -> None:
    data = inventory()
    data["security"].update(security)
    response = await device.checkin(
        {"agent_version": "0.1.0", "inventory": data, "inventory_hash": canonical_hash(data)}
    )
    assert response.status_code == 200, response.text


async def state_of(client: httpx.AsyncClient, admin: Admin, device: TestDevice) -> dict[str, Any]:
    response = await client.get(f"/api/v1/devices/{device.device_id}/compliance", headers=admin.headers)
    assert response.status_code == 200, response.text
    return dict(response.json())


async def test_a_failing_device_is_in_grace_then_noncompliant_and_compliant_once_fixed(
    client: httpx.AsyncClient, factory: Factory, sessionmaker: Sessionmaker
) -> None:
    admin = await factory.admin()
    device = await enrolled(client, admin)
    await report(device)  # everything fine, no policy yet
    assert (await state_of(client, admin, device))["state"] == "compliant"  # the tenant default

    policy = await create_policy(client, admin)
    await assign_all(client, admin, policy["id"])
    assert (await state_of(client, admin, device))["state"] == "compliant"

    # The disk gets decrypted: the next check-in puts the device in its grace period (24 h).
    await report(device, disk_encrypted=False)
    result = await state_of(client, admin, device)
    assert result["state"] == "in_grace_period"
    (entry,) = result["policies"]
    assert entry["state"] == "in_grace_period"
    failing_since = datetime.fromisoformat(entry["failing_since"])
    assert datetime.fromisoformat(entry["grace_ends_at"]) == failing_since + timedelta(hours=24)
    disk = next(s for s in entry["settings"] if s["setting_id"] == "disk_encryption.required")
    assert (disk["state"], disk["expected"], disk["observed"]) == ("noncompliant", True, False)
    assert next(s for s in entry["settings"] if s["setting_id"] == "os.min_version")["observed"] == "12.7"

    # Time passes (the clock is injected): 23 h later still in grace, 25 h later noncompliant.
    async with sessionmaker() as session:
        assert await compliance_service.evaluate_due(session, failing_since + timedelta(hours=23)) == []
        changed = await compliance_service.evaluate_due(session, failing_since + timedelta(hours=25))
        await session.commit()
    assert [c.new for c in changed] == ["noncompliant"]
    assert (await state_of(client, admin, device))["state"] == "noncompliant"

    # Fixed: compliant at the next check-in; the history shows each change with its reason.
    await report(device, disk_encrypted=True)
    assert (await state_of(client, admin, device))["state"] == "compliant"
    history = (
        await client.get(f"/api/v1/devices/{device.device_id}/compliance/history", headers=admin.headers)
    ).json()
    assert [(h["old_state"], h["new_state"]) for h in reversed(history)] == [
        ("unknown", "compliant"),
        ("compliant", "in_grace_period"),
        ("in_grace_period", "noncompliant"),
        ("noncompliant", "compliant"),
    ]
    assert history[1]["reason"].startswith("time: fails")

    status = (
        await client.get(f"/api/v1/compliance-policies/{policy['id']}/status", headers=admin.headers)
    ).json()
    assert status["counts"]["compliant"] == 1 and status["counts"]["noncompliant"] == 0
    assert {s["setting_id"]: s["compliant"] for s in status["settings"]}["disk_encryption.required"] == 1


async def test_worst_policy_wins_unreported_settings_are_errors_and_a_new_version_reevaluates(
    client: httpx.AsyncClient, factory: Factory, sessionmaker: Sessionmaker
) -> None:
    admin = await factory.admin()
    device = await enrolled(client, admin)
    await report(device)
    lenient = await create_policy(client, admin, settings={"firewall.required": True})
    strict = await create_policy(
        client, admin, settings={"passcode.min_length": 12}, actions=[{"action": "mark_noncompliant"}]
    )
    await assign_all(client, admin, lenient["id"])
    await assign_all(client, admin, strict["id"])
    result = await state_of(client, admin, device)
    # The device does not report its passcode length: that policy is in error, the device too.
    assert result["state"] == "error"
    assert {p["policy_name"]: p["state"] for p in result["policies"]} == {
        lenient["name"]: "compliant",
        strict["name"]: "error",
    }
    await report(device, passcode_min_length=8)
    assert (await state_of(client, admin, device))["state"] == "noncompliant"  # no grace: delay 0

    # Relaxing the policy is a new version and re-evaluates its devices at once.
    response = await client.patch(
        f"/api/v1/compliance-policies/{strict['id']}",
        json={"settings": {"passcode.min_length": 8}},
        headers=admin.headers,
    )
    assert response.status_code == 200 and response.json()["version"] == 2
    assert (await state_of(client, admin, device))["state"] == "compliant"
    (event,) = await audit_rows(sessionmaker, activity="compliance_policy.update")
    assert event.modified_properties[0]["old"] == {"passcode.min_length": 12}


async def test_override_marks_compliant_until_it_runs_out(
    client: httpx.AsyncClient, factory: Factory, sessionmaker: Sessionmaker
) -> None:
    admin = await factory.admin()
    device = await enrolled(client, admin)
    policy = await create_policy(client, admin, actions=[{"action": "mark_noncompliant"}])
    await assign_all(client, admin, policy["id"])
    await report(device, firewall_enabled=False)
    assert (await state_of(client, admin, device))["state"] == "noncompliant"

    until = datetime.now(UTC) + timedelta(days=2)
    url = f"/api/v1/devices/{device.device_id}/compliance/override"
    too_far = await client.put(
        url,
        json={"until": (datetime.now(UTC) + timedelta(days=91)).isoformat(), "reason": "exec laptop"},
        headers=admin.headers,
    )
    assert too_far.status_code == 422 and "90 days" in too_far.json()["detail"]
    response = await client.put(
        url, json={"until": until.isoformat(), "reason": "Firewall vendor bug"}, headers=admin.headers
    )
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["state"] == "compliant" and body["override"]["reason"] == "Firewall vendor bug"
    assert len(await audit_rows(sessionmaker, activity="device.compliance_override")) == 1

    async with sessionmaker() as session:
        await compliance_service.evaluate_due(session, until + timedelta(minutes=1))
        await session.commit()
    result = await state_of(client, admin, device)
    assert result["state"] == "noncompliant" and result["override"] is None


async def test_tenant_rules_for_devices_without_policies_or_check_ins(
    client: httpx.AsyncClient, factory: Factory, sessionmaker: Sessionmaker
) -> None:
    admin = await factory.admin()
    device = await enrolled(client, admin)
    await report(device)
    assert (await state_of(client, admin, device))["state"] == "compliant"
    response = await client.patch(
        "/api/v1/tenant/compliance-settings", json={"no_policy_compliant": False}, headers=admin.headers
    )
    assert response.status_code == 200 and response.json()["no_policy_compliant"] is False
    assert (await state_of(client, admin, device))["state"] == "noncompliant"
    bad = await client.patch(
        "/api/v1/tenant/compliance-settings", json={"compliance_validity_days": 0}, headers=admin.headers
    )
    assert bad.status_code == 422

    await client.patch(
        "/api/v1/tenant/compliance-settings",
        json={"no_policy_compliant": True, "compliance_validity_days": 7},
        headers=admin.headers,
    )
    assert (await state_of(client, admin, device))["state"] == "compliant"
    async with sessionmaker() as session:
        await session.execute(
            update(Device)
            .where(Device.id == uuid.UUID(str(device.device_id)))
            .values(last_checkin_at=datetime.now(UTC) - timedelta(days=8))
        )
        await session.commit()
        await compliance_service.evaluate_due(session)
        await session.commit()
    result = await state_of(client, admin, device)
    assert result["state"] == "noncompliant" and "no check-in for more than 7 days" in result["reason"]


async def test_bad_policies_are_refused_and_change_nothing(
    client: httpx.AsyncClient, factory: Factory, sessionmaker: Sessionmaker
) -> None:
    admin = await factory.admin()
    cases = [
        ({"settings": {"nope.nothing": True}}, "settings.nope.nothing: no such compliance setting"),
        ({"settings": {"jailbreak.blocked": True}}, "not reported by linux devices"),
        ({"settings": {"passcode.min_length": 2}}, "settings.passcode.min_length: must be at least 4"),
        ({"settings": {"os.min_version": "latest"}}, "settings.os.min_version: must be a version"),
        ({"settings": {"os.min_version": "13", "os.max_version": "12"}}, "must not be below os.min_version"),
        ({"settings": {}}, "at least one setting"),
        (
            {"actions": [{"action": "email_user"}]},
            "actions.0.action: the first action must be mark_noncompliant",
        ),
        (
            {
                "actions": [
                    {"action": "mark_noncompliant"},
                    {"action": "remote_lock", "delay_hours": 48},
                    {"action": "retire", "delay_hours": 24},
                ]
            },
            "actions.2.delay_hours",
        ),
        (
            {"actions": [{"action": "mark_noncompliant"}, {"action": "push_message"}]},
            "actions.1.message",
        ),
        (
            {"actions": [{"action": "mark_noncompliant"}, {"action": "retire"}, {"action": "retire"}]},
            "actions.2.action: retire at most 1 time(s)",
        ),
        (
            {
                "actions": [
                    {"action": "mark_noncompliant"},
                    {"action": "email_user", "template_id": str(uuid.uuid4())},
                ]
            },
            "actions.1.template_id: no such notification template",
        ),
    ]
    for overrides, message in cases:
        response = await client.post(
            "/api/v1/compliance-policies", json=policy_body(**overrides), headers=admin.headers
        )
        assert response.status_code == 422, (overrides, response.text)
        assert message in response.json()["detail"], (message, response.json())
    too_late = policy_body(actions=[{"action": "mark_noncompliant", "delay_hours": 24 * 366}])
    assert (
        await client.post("/api/v1/compliance-policies", json=too_late, headers=admin.headers)
    ).status_code == 422
    async with sessionmaker() as session:
        assert await session.scalar(select(func.count()).select_from(CompliancePolicy)) == 0
    assert await audit_rows(sessionmaker, activity="compliance_policy.create") == []


async def test_roles_unauthenticated_and_scope(
    client: httpx.AsyncClient, factory: Factory, sessionmaker: Sessionmaker
) -> None:
    admin = await factory.admin()
    compliance_admin = await factory.admin("Device compliance administrator")
    helpdesk = await factory.admin("Help desk operator")
    reader = await factory.admin("Read-only operator")
    assert (await client.get("/api/v1/compliance-policies")).status_code == 401
    made = await client.post(
        "/api/v1/compliance-policies", json=policy_body(), headers=compliance_admin.headers
    )
    assert made.status_code == 201, made.text
    for other in (helpdesk, reader):
        assert (
            await client.get(f"/api/v1/compliance-policies/{made.json()['id']}", headers=other.headers)
        ).status_code == 200
        refused = await client.post("/api/v1/compliance-policies", json=policy_body(), headers=other.headers)
        assert refused.status_code == 403
        refused = await client.patch(
            f"/api/v1/compliance-policies/{made.json()['id']}", json={"name": "x"}, headers=other.headers
        )
        assert refused.status_code == 403
    (event,) = await audit_rows(sessionmaker, activity="compliance_policy.create")
    assert event.target_name == made.json()["name"]
    # Deleting: the devices it reached are evaluated again without it.
    device = await enrolled(client, admin)
    await report(device, firewall_enabled=False)
    await assign_all(client, admin, made.json()["id"])
    assert (await state_of(client, admin, device))["state"] == "in_grace_period"
    deleted = await client.delete(
        f"/api/v1/compliance-policies/{made.json()['id']}", headers=compliance_admin.headers
    )
    assert deleted.status_code == 204
    assert (await state_of(client, admin, device))["state"] == "compliant"
    async with sessionmaker() as session:
        changes = await session.scalar(select(func.count()).select_from(DeviceComplianceChange))
    assert changes == 3


async def test_results_are_written_only_when_they_change_and_go_with_their_device_or_policy(
    client: httpx.AsyncClient, factory: Factory, sessionmaker: Sessionmaker
) -> None:
    """The results are derived rows without foreign keys: an evaluation that finds the stored result writes
    nothing, and deleting a device or a policy deletes its results."""
    admin = await factory.admin()
    kept, deleted = await enrolled(client, admin), await enrolled(client, admin)
    for device in (kept, deleted):
        await report(device, disk_encrypted=False)
    policy = await create_policy(client, admin)
    await assign_all(client, admin, policy["id"])

    async def results() -> dict[str, tuple[datetime, dict[str, Any]]]:
        async with sessionmaker() as session:
            rows = (
                await session.execute(
                    select(
                        DeviceCompliancePolicy.device_id,
                        DeviceCompliancePolicy.evaluated_at,
                        DeviceCompliancePolicy.settings,
                    )
                )
            ).all()
        return {str(r[0]): (r[1], r[2]) for r in rows}

    first = await results()
    assert set(first) == {kept.device_id, deleted.device_id}
    assert first[kept.device_id][1]["disk_encryption.required"] == {
        "state": "noncompliant",
        "expected": True,
        "observed": False,
    }
    # Evaluated again with nothing changed: the rows are left as they were.
    async with sessionmaker() as session:
        await compliance_service.evaluate(session, [uuid.UUID(kept.device_id)], reason="test")
        await session.commit()
    assert (await results())[kept.device_id] == first[kept.device_id]
    # A change reaches the row (the episode's start is kept, the observed value follows the device).
    await report(kept, disk_encrypted=True)
    changed = (await results())[kept.device_id]
    assert changed[0] > first[kept.device_id][0]
    assert changed[1]["disk_encryption.required"]["state"] == "compliant"

    response = await client.delete(f"/api/v1/devices/{deleted.device_id}", headers=admin.headers)
    assert response.status_code == 204, response.text
    assert set(await results()) == {kept.device_id}
    response = await client.delete(f"/api/v1/compliance-policies/{policy['id']}", headers=admin.headers)
    assert response.status_code == 204, response.text
    assert await results() == {}
