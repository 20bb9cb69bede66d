"""The device-first dashboard: server-rendered charts over real devices, linking to the device lists behind
them, within the reader's scope; check-in days written by check-ins and by the batched last-seen flush."""

from __future__ import annotations

import re
import uuid
from datetime import UTC, datetime, timedelta

import httpx
from sqlalchemy import insert, select, text, update
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from corral.checkin.last_seen import LastSeenBuffer
from corral.models import (
    ComplianceState,
    Device,
    DeviceCompliancePolicy,
    device_checkin_days,
)
from corral.worker import housekeeping
from tests.conftest import Factory, make_settings, sign_in
from tests.devices.device import TestDevice
from tests.devices.test_enrollment_and_checkin import make_token


async def _enroll(client: httpx.AsyncClient, token: str, platform: str) -> TestDevice:
    device = TestDevice(client, platform=platform)
    assert (await device.enroll(token)).status_code == 201
    assert (await device.checkin()).status_code == 200
    return device


def _value(html: str, href: str) -> str:
    """The value of the SVG element (bar, slice or dot) that links to ``href``."""
    escaped = re.escape(href.replace("&", "&amp;"))
    match = re.search(rf'<a target="_top" xlink:href="{escaped}">(.*?)</a>', html, re.S)
    assert match, f"no chart element links to {href}"
    value = re.search(r'<desc class="value">([^<]*)</desc>', match.group(1))
    assert value, match.group(1)
    return value.group(1)


async def test_dashboard_charts_count_devices_and_link_to_them(
    client: httpx.AsyncClient, factory: Factory, sessionmaker: async_sessionmaker[AsyncSession]
) -> None:
    admin = await factory.admin()
    token = await make_token(client, admin, platforms=["linux", "windows"])
    linux = [await _enroll(client, token, "linux") for _ in range(2)]
    windows = await _enroll(client, token, "windows")
    two_days_ago = datetime.now(UTC).date() - timedelta(days=2)
    async with sessionmaker() as session, session.begin():
        await session.execute(
            update(Device)
            .where(Device.id == uuid.UUID(str(windows.device_id)))
            .values(compliance_state=ComplianceState.noncompliant)
        )
        await session.execute(
            insert(device_checkin_days).values(day=two_days_ago, device_id=uuid.UUID(str(linux[0].device_id)))
        )

    await sign_in(client, admin.email)
    page = await client.get("/portal")
    assert page.status_code == 200
    html = page.text
    assert "3 enrolled" in html
    # Platforms: a bar per platform with its count, opening the filtered device list.
    assert _value(html, "/portal/devices?platform=linux") == "2"
    assert _value(html, "/portal/devices?platform=windows") == "1"
    assert "platform=macos" not in html
    # Compliance: the noncompliant slice links to those devices.
    assert "Not compliant" in html
    assert _value(html, "/portal/devices?compliance_state=noncompliant") == "1"
    # Check-ins: today 3 devices, two days ago the one we recorded, 7 days in all.
    today = datetime.now(UTC).date()
    assert _value(html, f"/portal/devices?checked_in_on={today.isoformat()}") == "3"
    assert _value(html, f"/portal/devices?checked_in_on={two_days_ago.isoformat()}") == "1"
    assert len(set(re.findall(r"checked_in_on=([0-9-]+)", html))) == 7

    # The charts' styles are allowed by this response's nonce only; no script at all.
    csp = page.headers["content-security-policy"]
    nonce = re.search(r"'nonce-([^']+)'", csp)
    assert nonce and "script-src 'self';" in csp
    assert ' style="fill' not in html  # inline style attributes would be refused by the CSP
    styles = re.findall(r"<style[^>]*>", html)
    assert styles and all(f'nonce="{nonce.group(1)}"' in s for s in styles)
    assert "<script" not in html.split("<svg", 1)[1].rsplit("</svg>", 1)[0]

    # The list behind a day's dot: the device that checked in then, nobody else.
    listed = await client.get(f"/portal/devices?checked_in_on={two_days_ago.isoformat()}")
    assert linux[0].name in listed.text
    assert linux[1].name not in listed.text and windows.name not in listed.text
    api = await client.get(
        "/api/v1/devices", params={"checked_in_on": two_days_ago.isoformat()}, headers=admin.headers
    )
    assert [d["name"] for d in api.json()["items"]] == [linux[0].name]


async def test_dashboard_counts_only_devices_in_the_readers_scope(
    client: httpx.AsyncClient, factory: Factory
) -> None:
    admin = await factory.admin()
    token = await make_token(client, admin, platforms=["linux"])
    await _enroll(client, token, "linux")
    tag = await client.post(
        "/api/v1/scope-tags", json={"name": f"Paris-{uuid.uuid4().hex[:6]}"}, headers=admin.headers
    )
    assert tag.status_code == 201, tag.text
    helpdesk = await factory.admin(None, token=False)
    role_id = next(
        r["id"]
        for r in (await client.get("/api/v1/roles", headers=admin.headers)).json()
        if r["name"] == "Help desk operator"
    )
    assigned = await client.post(
        "/api/v1/role-assignments",
        json={
            "name": "Paris help desk",
            "role_id": role_id,
            "member_ids": [str(helpdesk.id)],
            "scope_all": False,
            "scope_tag_ids": [tag.json()["id"]],
        },
        headers=admin.headers,
    )
    assert assigned.status_code == 201, assigned.text
    await sign_in(client, helpdesk.email)
    html = (await client.get("/portal")).text
    # The device is not tagged: outside the help desk's scope, so no device and no chart.
    assert "No device is enrolled yet" in html
    assert "<svg" not in html


async def test_check_in_days_are_written_by_the_batched_flush_and_purged(
    sessionmaker: async_sessionmaker[AsyncSession], tmp_path: object, db_url: str
) -> None:
    # Devices need not exist for the day rows (derived data without foreign keys).
    ids = [uuid.uuid4(), uuid.uuid4()]
    buffer = LastSeenBuffer(sessionmaker, interval=60)
    now = datetime.now(UTC)
    buffer.note(ids[0], now - timedelta(days=1), "192.0.2.1")
    buffer.note(ids[1], now, "192.0.2.2")
    buffer.note(ids[1], now, "192.0.2.2")
    await buffer.flush()
    async with sessionmaker() as session:
        rows = set((await session.execute(select(device_checkin_days))).all())
    assert rows == {((now - timedelta(days=1)).date(), ids[0]), (now.date(), ids[1])}

    settings = make_settings(tmp_path, db_url, checkin_days_retention_days=7)  # type: ignore[arg-type]
    async with sessionmaker() as session, session.begin():
        await session.execute(
            insert(device_checkin_days).values(day=now.date() - timedelta(days=8), device_id=ids[0])
        )
    deleted = await housekeeping.purge_checkin_days(sessionmaker, settings, batch=1, now=now)
    assert deleted == 1
    async with sessionmaker() as session:
        left = await session.scalar(text("SELECT count(*) FROM device_checkin_days"))
    assert left == 2


async def test_a_check_in_day_is_a_date(client: httpx.AsyncClient, factory: Factory) -> None:
    admin = await factory.admin()
    for bad in ("0", "1700000000", "2026-13-01", "yesterday"):
        response = await client.get("/api/v1/devices", params={"checked_in_on": bad}, headers=admin.headers)
        assert response.status_code == 422, (bad, response.text)
        assert "checked_in_on" in response.text


async def test_failing_settings_and_grace_periods_ending_are_charted_and_listed(
    client: httpx.AsyncClient, factory: Factory, sessionmaker: async_sessionmaker[AsyncSession]
) -> None:
    admin = await factory.admin()
    token = await make_token(client, admin, platforms=["linux"])
    failing, grace, fine = [await _enroll(client, token, "linux") for _ in range(3)]
    policy = await client.post(
        "/api/v1/compliance-policies",
        json={"name": "Baseline", "platform": "linux", "settings": {"firewall.required": True}},
        headers=admin.headers,
    )
    assert policy.status_code == 201, policy.text
    policy_id = uuid.UUID(policy.json()["id"])
    now = datetime.now(UTC)
    tomorrow = now.date() + timedelta(days=1)
    ends = datetime.combine(tomorrow, datetime.min.time(), tzinfo=UTC) + timedelta(hours=9)
    async with sessionmaker() as session, session.begin():
        for device, state, grace_end in (
            (failing, ComplianceState.noncompliant, None),
            (grace, ComplianceState.in_grace_period, ends),
            (fine, ComplianceState.compliant, None),
        ):
            device_id = uuid.UUID(str(device.device_id))
            await session.execute(update(Device).where(Device.id == device_id).values(compliance_state=state))
            await session.execute(
                insert(DeviceCompliancePolicy).values(
                    device_id=device_id,
                    policy_id=policy_id,
                    state=state,
                    policy_version=1,
                    failing_since=now if grace_end or state is ComplianceState.noncompliant else None,
                    grace_ends_at=grace_end,
                    settings={
                        "firewall.required": {
                            "state": "compliant" if state is ComplianceState.compliant else "noncompliant",
                            "expected": True,
                            "observed": state is ComplianceState.compliant,
                        }
                    },
                    evaluated_at=now,
                )
            )
    await sign_in(client, admin.email)
    html = (await client.get("/portal")).text
    # Both devices that fail the firewall setting (one still in its grace period) under the setting's name.
    assert "Require firewall" in html
    assert _value(html, "/portal/devices?failing_setting=firewall.required") == "2"
    # The grace period ending tomorrow, 7 days charted from today.
    assert _value(html, f"/portal/devices?grace_ends_on={tomorrow.isoformat()}") == "1"
    assert _value(html, f"/portal/devices?grace_ends_on={now.date().isoformat()}") == "0"
    assert len(set(re.findall(r"grace_ends_on=([0-9-]+)", html))) == 7

    listed = await client.get(f"/portal/devices?grace_ends_on={tomorrow.isoformat()}")
    assert grace.name in listed.text and failing.name not in listed.text and fine.name not in listed.text
    api = await client.get(
        "/api/v1/devices", params={"failing_setting": "firewall.required"}, headers=admin.headers
    )
    assert sorted(d["name"] for d in api.json()["items"]) == sorted([failing.name, grace.name])
    bad = await client.get("/api/v1/devices", params={"failing_setting": "x;y"}, headers=admin.headers)
    assert bad.status_code == 422
