"""Licence data shows only to holders of licences:read (Global administrators by default): not in the
Service administrator's or help desk's pages, API payloads or exports."""

from __future__ import annotations

import csv
import html
import io
import re
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi import FastAPI
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from corral.auth.dependencies import Authenticated, Public, Require
from corral.checkin.auth import DeviceSigned
from corral.config import Settings
from corral.enrollment.service import USER_INELIGIBLE
from corral.kit.routes import RouteInfo, api_routes
from corral.main import create_app
from corral.rbac.permissions import DESCRIPTIONS, P
from corral.rbac.roles import (
    BUILTIN_ROLES,
    GLOBAL_ADMINISTRATOR,
    HELP_DESK_OPERATOR,
    READ_ONLY_OPERATOR,
    SERVICE_ADMINISTRATOR,
    BuiltinRole,
)
from corral.scim.auth import ScimBearer
from tests.assignments.helpers import make_policy, put_assignments
from tests.conftest import Admin, Factory, new_client, sign_in
from tests.devices.device import TestDevice
from tests.users.helpers import set_user

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


# ------------------------------------------------------------------------------------------- whole surface
# Every built-in role without licences:read, and every GET route (API and admin center) its guard lets it
# call, with path parameters filled from seeded objects: a new route or page is covered without a new test.
ROLES_WITHOUT_LICENCES = [role for role in BUILTIN_ROLES if P.licences_read not in role.permissions]
LICENCE_NAME, LICENCE_SKU = "Zephyr Seat Plan", "ZEPHYR-SKU-77"
# Words that name the permission vocabulary or describe built-in roles ("no licences") are not licence data:
# a role editor shows them (permissions grouped by resource). Removed before looking for licence words.
VOCABULARY = sorted(
    {p.value for p in P}
    | {f"<{tag}>{p.value.split(':')[0]}</{tag}>" for p in P for tag in ("legend", "h3")}
    | set(DESCRIPTIONS.values())
    | {role.description for role in BUILTIN_ROLES}
    | {html.escape(role.description) for role in BUILTIN_ROLES},
    key=len,
    reverse=True,
)
_TABLE_APP = create_app(
    Settings(
        secret_key="licence-walk-secret-" + "w" * 40,
        base_url="https://testserver",
        database_url="postgresql://unused/unused",
        data_dir=Path("/nonexistent-corral-data-dir"),
    )
)


def _guard(info: RouteInfo) -> Any:
    def walk(dependant: Any) -> list[Any]:
        found = []
        for sub in dependant.dependencies:
            if isinstance(sub.call, Require | Authenticated | Public | ScimBearer | DeviceSigned):
                found.append(sub.call)
            found.extend(walk(sub))
        return found

    (guard,) = walk(info.route.dependant)
    return guard


def reachable_get_routes(role: BuiltinRole) -> list[str]:
    """The GET routes an operator holding ``role`` may call (path templates): Authenticated routes and
    Require routes whose permissions the role satisfies; not public pages, nor device or SCIM routes."""
    paths = []
    for info in api_routes(_TABLE_APP):
        if "GET" not in info.methods:
            continue
        guard = _guard(info)
        if isinstance(guard, Require):
            held = [p in role.permissions for p in guard.permissions]
            if not (any(held) if guard.any_of else all(held)):
                continue
        elif not isinstance(guard, Authenticated):
            continue
        if not all(p in role.permissions for p in NEEDS_TOO.get(info.path, ())):
            continue  # the seeded object is one the role may not read: 404, rightly
        paths.append(info.path)
    return paths


# Routes that read an object the seed gives them, whose own read permission the route's guard does not carry:
# an explanation of why a device gets an object needs devices:read (the guard) and the object's kind's read
# permission (the seeded object is a compliance policy).
NEEDS_TOO = {"/api/v1/devices/{device_id}/assignments/{object_id}/explain": (P.compliance_read,)}


def licence_data_in(text: str) -> list[str]:
    for words in VOCABULARY:
        text = text.replace(words, "")
    found = [marker for marker in (LICENCE_NAME, LICENCE_SKU) if marker in text]
    found += [text[max(0, m.start() - 60) : m.end() + 60] for m in LICENCE_WORD.finditer(text)]
    return found


@dataclass
class Seeded:
    glob: Admin
    params: dict[str, str]


@pytest.fixture
async def seeded(
    client: httpx.AsyncClient, factory: Factory, sessionmaker: async_sessionmaker[AsyncSession]
) -> Seeded:
    """A user holding a licence (assigned, removed and given back: licence audit events), a device enrolled
    for them, a group holding both, refusals for a user without a licence and a disabled one, a bulk
    action, a custom role."""
    glob = await factory.admin(GLOBAL_ADMINISTRATOR.name)
    h = glob.headers
    licence = await client.post(
        "/api/v1/licences", json={"name": LICENCE_NAME, "sku": LICENCE_SKU, "seats": 3}, headers=h
    )
    assert licence.status_code == 201, licence.text
    licence_id = licence.json()["id"]
    holder = await factory.user("holder@contoso.example", display_name="Holder")
    for method in ("POST", "DELETE", "POST"):
        given = await client.request(method, f"/api/v1/users/{holder}/licences/{licence_id}", headers=h)
        assert given.status_code < 300, given.text
    pending = await factory.user("pending@contoso.example")
    disabled = await factory.user("disabled@contoso.example", licence=True)

    async def token_for(user_id: uuid.UUID) -> dict[str, Any]:
        body = {"name": f"For {user_id}", "platforms": ["linux"], "user_id": str(user_id)}
        response = await client.post("/api/v1/enrollment-tokens", json=body, headers=h)
        assert response.status_code == 201, response.text
        created: dict[str, Any] = response.json()
        return created

    holder_token = await token_for(holder)
    enrolled = await TestDevice(client).enroll(holder_token["token"])
    assert enrolled.status_code == 201, enrolled.text
    device_id = enrolled.json()["device_id"]
    refused_token = await token_for(pending)
    refused = await TestDevice(client).enroll(refused_token["token"])
    assert refused.status_code == 403 and "licence" in refused.json()["detail"]  # the device is told
    disabled_token = await token_for(disabled)
    await set_user(sessionmaker, disabled, enabled=False)
    assert (await TestDevice(client).enroll(disabled_token["token"])).status_code == 403
    group = await client.post("/api/v1/groups", json={"display_name": "Holders"}, headers=h)
    assert group.status_code == 201, group.text
    for kind, member in (("user", holder), ("device", device_id)):
        added = await client.post(
            f"/api/v1/groups/{group.json()['id']}/members", json={"type": kind, "id": str(member)}, headers=h
        )
        assert added.status_code < 300, added.text
    bulk = await client.post(
        "/api/v1/devices/bulk-actions", json={"type": "sync", "device_ids": [device_id]}, headers=h
    )
    assert bulk.status_code < 300, bulk.text
    role = await client.post(
        "/api/v1/roles", json={"name": "Seat counters", "permissions": ["devices:read"]}, headers=h
    )
    assert role.status_code == 201, role.text
    assignments = (await client.get("/api/v1/role-assignments", headers=h)).json()
    assert assignments
    lab = await client.post(
        "/api/v1/assignment-filters",
        json={"name": "Lab", "platform": "linux", "rule": 'device.displayName -startsWith "lab"'},
        headers=h,
    )
    assert lab.status_code == 201, lab.text
    policy = await make_policy(sessionmaker, "Linux baseline", platform="linux")
    profile = await make_policy(sessionmaker, "Linux banner", platform="linux", profile=True)
    for kind, object_id in (("compliance-policies", policy), ("configuration-profiles", profile)):
        response = await put_assignments(client, glob, object_id, [{"target": "all_devices"}], kind=kind)
        assert response.status_code == 200, response.text
    return Seeded(
        glob,
        {
            "user_id": str(holder),
            "device_id": device_id,
            "token_id": refused_token["enrollment_token"]["id"],
            "group_id": group.json()["id"],
            "bulk_action_id": bulk.json()["id"],
            "role_id": role.json()["id"],
            "assignment_id": assignments[0]["id"],
            "action": "wipe",
            "licence_id": licence_id,
            "filter_id": lab.json()["id"],
            "policy_id": str(policy),
            "profile_id": str(profile),
            "object_id": str(policy),
        },
    )


def _concrete(path: str, params: dict[str, str]) -> str:
    for name in re.findall(r"{(\w+)(?::\w+)?}", path):
        assert name in params, f"{path}: seed an object for {{{name}}} in this test's fixture"
        path = re.sub(r"{" + name + r"(?::\w+)?}", params[name], path)
    return path


@pytest.mark.parametrize("role", ROLES_WITHOUT_LICENCES, ids=lambda r: r.name)
async def test_no_response_or_page_a_reader_without_licences_read_can_get_holds_licence_data(
    app: FastAPI, client: httpx.AsyncClient, factory: Factory, seeded: Seeded, role: BuiltinRole
) -> None:
    admin = await factory.admin(role.name)
    routes = reachable_get_routes(role)
    assert "/api/v1/enrollment-tokens/{token_id}/uses" in routes or P.enrollment_read not in role.permissions
    assert "/api/v1/licences" not in routes and "/portal/licences" not in routes
    async with new_client(app) as browser:
        assert (await sign_in(browser, admin.email)).status_code == 303
        leaks = {}
        for template in routes:
            path = _concrete(template, seeded.params)
            if path.startswith("/portal"):
                response = await browser.get(path)
            else:
                response = await client.get(path, headers=admin.headers)
            assert response.status_code == 200, (path, response.status_code, response.text[:300])
            if found := licence_data_in(response.text):
                leaks[path] = found
    assert not leaks, leaks


async def test_a_licences_reader_sees_the_licence_refusal_and_others_a_generic_one(
    client: httpx.AsyncClient, factory: Factory, seeded: Seeded
) -> None:
    uses_path = f"/api/v1/enrollment-tokens/{seeded.params['token_id']}/uses"
    (full,) = (await client.get(uses_path, headers=seeded.glob.headers)).json()
    assert full["reason"] == "user_unlicensed"
    assert full["detail"] == "pending@contoso.example holds no Corral licence."
    help_desk = await factory.admin(HELP_DESK_OPERATOR.name)
    (masked,) = (await client.get(uses_path, headers=help_desk.headers)).json()
    assert masked["reason"] == "user_ineligible" and masked["result"] == "refused"
    assert masked["detail"] == USER_INELIGIBLE and masked["serial_number"] == full["serial_number"]
    # The disabled user's refusal reads the same to them, so the generic text does not single out licences.
    tokens = (await client.get("/api/v1/enrollment-tokens", headers=help_desk.headers)).json()
    shown = {}
    for token in tokens:
        for use in (
            await client.get(f"/api/v1/enrollment-tokens/{token['id']}/uses", headers=help_desk.headers)
        ).json():
            shown[use["serial_number"]] = (use["result"], use["reason"], use["detail"])
    assert sorted(r for r, _, _ in shown.values()) == ["enrolled", "refused", "refused"]
    assert {v for v in shown.values() if v[0] == "refused"} == {
        ("refused", "user_ineligible", USER_INELIGIBLE)
    }
    # The global administrator's portal page names it.
    assert (await sign_in(client, seeded.glob.email)).status_code == 303
    page = await client.get(f"/portal/enrollment/{seeded.params['token_id']}")
    assert "pending@contoso.example holds no Corral licence." in page.text
