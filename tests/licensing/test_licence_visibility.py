"""Licence data shows only to holders of licences:read (Global administrators by default): not in the
Service administrator's or help desk's pages, API payloads or exports."""

from __future__ import annotations

import csv
import io
import re
import uuid
from dataclasses import dataclass

import httpx
import pytest

from corral.rbac.roles import (
    GLOBAL_ADMINISTRATOR,
    HELP_DESK_OPERATOR,
    READ_ONLY_OPERATOR,
    SERVICE_ADMINISTRATOR,
    BuiltinRole,
)
from tests.conftest import Admin, Factory, sign_in
from tests.devices.device import TestDevice

WITHOUT_LICENCES = [SERVICE_ADMINISTRATOR, HELP_DESK_OPERATOR, READ_ONLY_OPERATOR]
LICENCE_WORD = re.compile(r"licen[cs]", re.IGNORECASE)


@dataclass
class World:
    glob: Admin
    user_id: uuid.UUID
    device_id: str


@pytest.fixture
async def world(client: httpx.AsyncClient, factory: Factory) -> World:
    """A licensed user with a device enrolled for them through a bound token."""
    glob = await factory.admin(GLOBAL_ADMINISTRATOR.name)
    user_id = await factory.user("holder@contoso.example", display_name="Holder", licence=True)
    token = await client.post(
        "/api/v1/enrollment-tokens",
        json={"name": "Holder's", "platforms": ["linux"], "user_id": str(user_id)},
        headers=glob.headers,
    )
    device = TestDevice(client)
    enrolled = await device.enroll(token.json()["token"])
    assert enrolled.status_code == 201, enrolled.text
    return World(glob, user_id, enrolled.json()["device_id"])


@pytest.mark.parametrize("role", WITHOUT_LICENCES, ids=lambda r: r.name)
async def test_admins_without_licences_read_see_no_licence_data_in_the_api(
    client: httpx.AsyncClient, factory: Factory, world: World, role: BuiltinRole
) -> None:
    admin = await factory.admin(role.name)
    h = admin.headers
    for path in ("/api/v1/licences", f"/api/v1/users/{world.user_id}/licences"):
        refused = await client.get(path, headers=h)
        assert refused.status_code == 403 and "licences:read" in refused.json()["detail"], path
    for path in (
        "/api/v1/users",
        f"/api/v1/users/{world.user_id}",
        "/api/v1/devices",
        f"/api/v1/devices/{world.device_id}",
    ):
        response = await client.get(path, headers=h)
        assert response.status_code == 200, (path, response.text)
        assert not LICENCE_WORD.search(response.text), path
    detail = (await client.get(f"/api/v1/users/{world.user_id}", headers=h)).json()
    assert "licences" not in detail and [d["id"] for d in detail["devices"]] == [world.device_id]
    export = await client.get("/api/v1/users/export.csv", headers=h)
    header = next(csv.reader(io.StringIO(export.text)))
    assert "licences" not in header and not LICENCE_WORD.search(export.text)
    devices_csv = await client.get("/api/v1/devices/export.csv", headers=h)
    assert devices_csv.status_code == 200 and not LICENCE_WORD.search(devices_csv.text)
    # Nor in the audit log: licence events (the arranged licence.create and licence.assign) are hidden.
    for path in ("/api/v1/audit-events", "/api/v1/audit-events/export.csv"):
        audit = await client.get(path, headers=h)
        assert audit.status_code == 200 and "user.create" in audit.text, path
        assert not LICENCE_WORD.search(audit.text), path


@pytest.mark.parametrize("role", [SERVICE_ADMINISTRATOR, HELP_DESK_OPERATOR], ids=lambda r: r.name)
async def test_admins_without_licences_read_see_no_licence_data_in_the_admin_center(
    client: httpx.AsyncClient, factory: Factory, world: World, role: BuiltinRole
) -> None:
    admin = await factory.admin(role.name, token=False)
    assert (await sign_in(client, admin.email)).status_code == 303
    home = await client.get("/portal")
    assert 'href="/portal/licences"' not in home.text and not LICENCE_WORD.search(home.text)
    for path in ("/portal/users", f"/portal/users/{world.user_id}", f"/portal/devices/{world.device_id}"):
        page = await client.get(path)
        assert page.status_code == 200, path
        assert not LICENCE_WORD.search(page.text), path
    export = await client.get("/portal/users/export.csv")
    assert export.status_code == 200 and "licences" not in export.text.splitlines()[0]
    audit = await client.get("/portal/audit")
    assert audit.status_code == 200 and not LICENCE_WORD.search(audit.text)
    for path in ("/portal/licences", f"/portal/licences/{uuid.uuid4()}"):
        assert (await client.get(path)).status_code == 403, path


async def test_a_global_administrator_sees_licences_everywhere_they_belong(
    client: httpx.AsyncClient, world: World
) -> None:
    h = world.glob.headers
    detail = (await client.get(f"/api/v1/users/{world.user_id}", headers=h)).json()
    assert [lic["name"] for lic in detail["licences"]] and detail["licences"][0]["sku"].startswith("T-")
    rows = list(csv.DictReader(io.StringIO((await client.get("/api/v1/users/export.csv", headers=h)).text)))
    holder = next(r for r in rows if r["user_principal_name"] == "holder@contoso.example")
    assert holder["licences"].startswith("T-")
    # Device payloads carry no licence data for anyone: licences belong to users.
    device = await client.get(f"/api/v1/devices/{world.device_id}", headers=h)
    assert not LICENCE_WORD.search(device.text)
    assert (await sign_in(client, world.glob.email)).status_code == 303
    home = await client.get("/portal")
    assert 'href="/portal/licences"' in home.text
    page = await client.get(f"/portal/users/{world.user_id}")
    assert 'id="licences-title"' in page.text and holder["licences"] in page.text
    audit = (await client.get("/api/v1/audit-events", params={"category": "licence"}, headers=h)).json()
    assert {e["activity"] for e in audit["items"]} == {"licence.create", "licence.assign"}
