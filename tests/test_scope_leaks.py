"""Outside your scope is "not found" on every way in, not only on the user and device pages: rule previews
and explanations, a user's groups and effective permissions, the administrators' list and pages, licence
holders, a device's enrolled-for user, an enrollment token's uses and the audit log (API, CSV, admin
center, activity names, dashboard) show nothing of the users and devices an administrator's scope groups or
scope tags leave out.

tests/test_route_scope.py proves the same for every route taking a user or device id, from the route table."""

from __future__ import annotations

import csv
import io
import re
import uuid
from typing import Any

import httpx
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from tests.conftest import Admin, Factory, issue_token, sign_in
from tests.devices.device import TestDevice
from tests.devices.test_enrollment_and_checkin import enrolled, make_token
from tests.groups.helpers import add, create_group, set_user
from tests.test_scope_groups import Paris, custom_role, paris, role_id, scoped_admin, set_primary_user

EVERY_USER = 'user.userPrincipalName -contains "@"'


async def desk(
    client: httpx.AsyncClient,
    factory: Factory,
    sessionmaker: async_sessionmaker[AsyncSession],
    admin: Admin,
    p: Paris,
    role: str = "Help desk operator",
) -> Admin:
    """An administrator holding a built-in role over the Paris scope group only."""
    return await scoped_admin(
        client, factory, sessionmaker, admin, await role_id(client, admin, role), scope_group_ids=[p.group]
    )


def same_refusal(outside: httpx.Response, missing: httpx.Response, detail: str) -> None:
    """Outside the caller's scope looks exactly like an id nobody ever used."""
    assert outside.status_code == missing.status_code == 404, (outside.text, missing.text)
    assert outside.json()["detail"] == missing.json()["detail"] == detail


# ------------------------------------------------------------------------------------------- groups
async def test_explaining_a_user_rule_shows_nothing_of_a_user_outside_scope(
    client: httpx.AsyncClient, factory: Factory, sessionmaker: async_sessionmaker[AsyncSession]
) -> None:
    admin = await factory.admin("Global administrator")
    p = await paris(client, factory, sessionmaker, admin)
    await set_user(sessionmaker, p.outsider, department="Mergers")
    helpdesk = await desk(client, factory, sessionmaker, admin, p)

    async def explain(who: Admin, user_id: Any) -> httpx.Response:
        body = {"dynamic_kind": "user", "rule": 'user.department -eq "Mergers"', "user_id": str(user_id)}
        return await client.post("/api/v1/groups/preview/explain", json=body, headers=who.headers)

    inside = await explain(helpdesk, p.resident)
    assert inside.status_code == 200 and inside.json()["subject"]["id"] == str(p.resident)
    outside, missing = await explain(helpdesk, p.outsider), await explain(helpdesk, uuid.uuid4())
    same_refusal(outside, missing, "No such user.")
    assert "Mergers" not in outside.text
    # Nothing is hidden from an administrator without scope groups.
    seen = await explain(admin, p.outsider)
    assert seen.status_code == 200 and seen.json()["matches"] is True and "Mergers" in seen.text


async def test_previewing_a_user_rule_lists_and_counts_only_users_in_scope(
    client: httpx.AsyncClient, factory: Factory, sessionmaker: async_sessionmaker[AsyncSession]
) -> None:
    admin = await factory.admin("Global administrator")
    p = await paris(client, factory, sessionmaker, admin)
    helpdesk = await desk(client, factory, sessionmaker, admin, p)

    async def preview(who: Admin, rule: str) -> dict[str, Any]:
        response = await client.post(
            "/api/v1/groups/preview",
            json={"dynamic_kind": "user", "rule": rule, "limit": 100},
            headers=who.headers,
        )
        assert response.status_code == 200, response.text
        body: dict[str, Any] = response.json()
        return body

    scoped = await preview(helpdesk, EVERY_USER)
    assert [m["id"] for m in scoped["members"]] == [str(p.resident)] and scoped["count"] == 1
    everyone = await preview(admin, EVERY_USER)
    assert {str(p.resident), str(p.outsider)} <= {m["id"] for m in everyone["members"]}
    assert everyone["count"] == len(everyone["members"]) > 2  # the administrators are users too
    # A count is an answer too: a rule naming the outsider finds nobody, like one naming no one.
    outsider_rule = f'user.objectId -eq "{p.outsider}"'
    assert (await preview(admin, outsider_rule))["count"] == 1
    assert (await preview(helpdesk, outsider_rule))["count"] == 0

    # The group editor's no-script Preview button answers the same (it needs groups:write).
    editor = await desk(client, factory, sessionmaker, admin, p, "Global administrator")
    upn = {
        who: (await client.get(f"/api/v1/users/{who}", headers=admin.headers)).json()["user_principal_name"]
        for who in (p.resident, p.outsider)
    }
    assert (await sign_in(client, editor.email)).status_code == 303
    csrf = re.search(r'name="csrf_token" value="([^"]+)"', (await client.get("/portal/groups/new")).text)
    assert csrf is not None
    form = {"csrf_token": csrf.group(1), "display_name": "Try", "membership_type": "dynamic"}
    page = await client.post(
        "/portal/groups/new",
        data={**form, "dynamic_kind": "user", "rule": EVERY_USER, "action": "preview"},
    )
    assert page.status_code == 200, page.text
    assert upn[p.resident] in page.text and upn[p.outsider] not in page.text


async def test_the_groups_of_a_user_outside_scope_are_not_found(
    client: httpx.AsyncClient, factory: Factory, sessionmaker: async_sessionmaker[AsyncSession]
) -> None:
    admin = await factory.admin("Global administrator")
    p = await paris(client, factory, sessionmaker, admin)
    lyon = (await create_group(client, admin, "Lyon"))["id"]
    assert (await add(client, admin, lyon, "user", p.outsider)).status_code == 201
    helpdesk = await desk(client, factory, sessionmaker, admin, p)

    inside = await client.get(f"/api/v1/users/{p.resident}/groups", headers=helpdesk.headers)
    assert inside.status_code == 200 and [m["group"]["display_name"] for m in inside.json()] == ["Paris"]
    outside = await client.get(f"/api/v1/users/{p.outsider}/groups", headers=helpdesk.headers)
    missing = await client.get(f"/api/v1/users/{uuid.uuid4()}/groups", headers=helpdesk.headers)
    same_refusal(outside, missing, "No such user.")
    seen = await client.get(f"/api/v1/users/{p.outsider}/groups", headers=admin.headers)
    assert [m["group"]["display_name"] for m in seen.json()] == ["Lyon"]


# ------------------------------------------------------------------------------------------- administrators
async def test_administrators_outside_scope_and_their_permissions_are_not_found(
    client: httpx.AsyncClient, factory: Factory, sessionmaker: async_sessionmaker[AsyncSession]
) -> None:
    admin = await factory.admin("Global administrator")
    p = await paris(client, factory, sessionmaker, admin)
    # Read-only operators read roles and users: over Paris only, here.
    reader = await desk(client, factory, sessionmaker, admin, p, "Read-only operator")
    help_desk = await role_id(client, admin, "Help desk operator")
    # Two administrators: one a member of Paris, one not.
    paris_admin = await scoped_admin(client, factory, sessionmaker, admin, help_desk)
    lyon_admin = await scoped_admin(client, factory, sessionmaker, admin, help_desk)
    assert (await add(client, admin, p.group, "user", paris_admin.id)).status_code == 201

    async def access(user_id: Any) -> httpx.Response:
        return await client.get(f"/api/v1/users/{user_id}/effective-permissions", headers=reader.headers)

    inside = await access(paris_admin.id)
    assert inside.status_code == 200 and inside.json()["user_principal_name"] == paris_admin.email
    outside, missing = await access(lyon_admin.id), await access(uuid.uuid4())
    same_refusal(outside, missing, "No such user.")
    assert lyon_admin.email not in outside.text

    listed = await client.get("/api/v1/admins", headers=reader.headers)
    assert listed.status_code == 200
    emails = {a["user_principal_name"] for a in listed.json()}
    assert paris_admin.email in emails and lyon_admin.email not in emails and admin.email not in emails
    everyone = {
        a["user_principal_name"] for a in (await client.get("/api/v1/admins", headers=admin.headers)).json()
    }
    assert {paris_admin.email, lyon_admin.email, admin.email} <= everyone

    # The admin center: the list, a page each, the dashboard's count.
    assert (await sign_in(client, reader.email)).status_code == 303
    page = await client.get("/portal/admins")
    assert page.status_code == 200 and paris_admin.email in page.text and lyon_admin.email not in page.text
    assert (await client.get(f"/portal/admins/{paris_admin.id}")).status_code == 200
    hidden = await client.get(f"/portal/admins/{lyon_admin.id}")
    assert hidden.status_code == 404 and lyon_admin.email not in hidden.text
    dashboard = (await client.get("/portal")).text
    tile = re.search(r'tile-label">Administrators</span>\s*<span class="tile-value">([\d,]+)<', dashboard)
    assert tile is not None and tile.group(1) == "1"


async def test_licence_holders_outside_scope_are_not_listed(
    client: httpx.AsyncClient, factory: Factory, sessionmaker: async_sessionmaker[AsyncSession]
) -> None:
    admin = await factory.admin("Global administrator")
    p = await paris(client, factory, sessionmaker, admin)
    licence = await client.post(
        "/api/v1/licences", json={"name": "Suite", "sku": "SUITE", "seats": 5}, headers=admin.headers
    )
    assert licence.status_code == 201, licence.text
    licence_id = licence.json()["id"]
    for holder in (p.resident, p.outsider):
        held = await client.post(f"/api/v1/users/{holder}/licences/{licence_id}", headers=admin.headers)
        assert held.status_code == 201, held.text
    clerk = await scoped_admin(
        client,
        factory,
        sessionmaker,
        admin,
        await custom_role(client, admin, ["licences:read", "users:read"]),
        scope_group_ids=[p.group],
    )
    holders = await client.get(f"/api/v1/licences/{licence_id}/users", headers=clerk.headers)
    assert holders.status_code == 200 and [h["user_id"] for h in holders.json()] == [str(p.resident)]
    everyone = await client.get(f"/api/v1/licences/{licence_id}/users", headers=admin.headers)
    assert {h["user_id"] for h in everyone.json()} == {str(p.resident), str(p.outsider)}

    assert (await sign_in(client, clerk.email)).status_code == 303
    page = await client.get(f"/portal/licences/{licence_id}")
    assert page.status_code == 200 and str(p.resident) in page.text and str(p.outsider) not in page.text


# ------------------------------------------------------------------------------------------- admin center
async def test_a_device_page_does_not_show_its_user_when_they_are_outside_scope(
    client: httpx.AsyncClient, factory: Factory, sessionmaker: async_sessionmaker[AsyncSession]
) -> None:
    admin = await factory.admin("Global administrator")
    p = await paris(client, factory, sessionmaker, admin)
    outsider_upn = (await client.get(f"/api/v1/users/{p.outsider}", headers=admin.headers)).json()[
        "user_principal_name"
    ]
    resident_upn = (await client.get(f"/api/v1/users/{p.resident}", headers=admin.headers)).json()[
        "user_principal_name"
    ]
    # ``direct`` is in Paris itself; its user is not.
    await set_primary_user(sessionmaker, p.direct, p.outsider)
    helpdesk = await desk(client, factory, sessionmaker, admin, p)
    assert (await sign_in(client, helpdesk.email)).status_code == 303
    page = await client.get(f"/portal/devices/{p.direct.device_id}")
    assert page.status_code == 200 and outsider_upn not in page.text and str(p.outsider) not in page.text
    own = await client.get(f"/portal/devices/{p.users_phone.device_id}")
    assert own.status_code == 200 and resident_upn in own.text and f"/portal/users/{p.resident}" in own.text


async def test_the_user_list_offers_only_departments_in_scope(
    client: httpx.AsyncClient, factory: Factory, sessionmaker: async_sessionmaker[AsyncSession]
) -> None:
    admin = await factory.admin("Global administrator")
    p = await paris(client, factory, sessionmaker, admin)
    await set_user(sessionmaker, p.resident, department="Paris Sales")
    await set_user(sessionmaker, p.outsider, department="Lyon Mergers")
    helpdesk = await desk(client, factory, sessionmaker, admin, p)
    assert (await sign_in(client, helpdesk.email)).status_code == 303
    page = await client.get("/portal/users")
    assert page.status_code == 200 and "Paris Sales" in page.text and "Lyon Mergers" not in page.text


# ------------------------------------------------------------------------------------------- audit log
async def audit_targets(client: httpx.AsyncClient, who: Admin, **params: Any) -> list[tuple[str, str]]:
    response = await client.get("/api/v1/audit-events", params={"limit": 500, **params}, headers=who.headers)
    assert response.status_code == 200, response.text
    return [(e["target_type"], e["target_id"]) for e in response.json()["items"]]


async def test_a_help_desk_limited_to_a_scope_tag_reads_no_event_about_devices_outside_it(
    client: httpx.AsyncClient, factory: Factory, sessionmaker: async_sessionmaker[AsyncSession]
) -> None:
    admin = await factory.admin("Global administrator")
    tag = (await client.post("/api/v1/scope-tags", json={"name": "Kiosks"}, headers=admin.headers)).json()[
        "id"
    ]
    kiosk = await enrolled(client, admin, scope_tag_ids=[tag])
    laptop = await enrolled(client, admin)  # untagged: outside a grant limited to Kiosks
    # An activity only the laptop ever saw.
    changed = await client.patch(
        f"/api/v1/devices/{laptop.device_id}", json={"ownership": "personal"}, headers=admin.headers
    )
    assert changed.status_code == 200, changed.text
    helpdesk = await scoped_admin(
        client,
        factory,
        sessionmaker,
        admin,
        await role_id(client, admin, "Help desk operator"),
        scope_all=False,
        scope_tag_ids=[tag],
    )

    everything = await audit_targets(client, admin)
    assert ("device", laptop.device_id) in everything and ("device", kiosk.device_id) in everything
    seen = await audit_targets(client, helpdesk)
    assert ("device", kiosk.device_id) in seen and ("device", laptop.device_id) not in seen
    # Filtering by the device's id finds nothing either, as for an id never used.
    assert await audit_targets(client, helpdesk, target_id=laptop.device_id) == []
    assert await audit_targets(client, helpdesk, target_id=kiosk.device_id) != []
    # Users carry no scope tags: a grant limited to tags reaches every user, and the events about them.
    assert ("user", str(helpdesk.id)) in seen and ("user", str(admin.id)) in seen

    export = await client.get("/api/v1/audit-events/export.csv", headers=helpdesk.headers)
    assert export.status_code == 200
    rows = list(csv.DictReader(io.StringIO(export.text)))
    ids = {r["target_id"] for r in rows}
    assert kiosk.device_id in ids and laptop.device_id not in ids and laptop.name not in export.text

    # The admin center: the page, its activity choices, its export, the dashboard.
    assert (await sign_in(client, helpdesk.email)).status_code == 303
    page = await client.get("/portal/audit")
    assert page.status_code == 200 and kiosk.name in page.text and laptop.name not in page.text
    assert 'value="device.enroll"' in page.text and 'value="device.update"' not in page.text
    portal_csv = await client.get("/portal/audit/export.csv")
    assert (
        portal_csv.status_code == 200 and kiosk.name in portal_csv.text and laptop.name not in portal_csv.text
    )
    dashboard = (await client.get("/portal")).text
    assert kiosk.name in dashboard and laptop.name not in dashboard

    client.cookies.clear()
    assert (await sign_in(client, admin.email)).status_code == 303
    assert 'value="device.update"' in (await client.get("/portal/audit")).text


async def test_a_help_desk_limited_to_scope_groups_reads_events_about_its_users_and_devices_only(
    client: httpx.AsyncClient, factory: Factory, sessionmaker: async_sessionmaker[AsyncSession]
) -> None:
    admin = await factory.admin("Global administrator")
    p = await paris(client, factory, sessionmaker, admin)
    for user_id in (p.resident, p.outsider):
        renamed = await client.patch(
            f"/api/v1/users/{user_id}", json={"job_title": "Engineer"}, headers=admin.headers
        )
        assert renamed.status_code == 200, renamed.text
    # A failed sign-in with a name nobody has: about no user the help desk can open.
    assert (await sign_in(client, "nobody-here@example.com", "wrong password")).status_code != 303
    helpdesk = await desk(client, factory, sessionmaker, admin, p)

    seen = await audit_targets(client, helpdesk)
    assert ("user", str(p.resident)) in seen and ("user", str(p.outsider)) not in seen
    assert ("device", p.nested.device_id) in seen and ("device", p.lyon_device.device_id) not in seen
    assert ("user", None) not in seen
    everything = await audit_targets(client, admin)
    assert ("user", str(p.outsider)) in everything and ("user", None) in everything
    # What decides is the audit:read grant's scope: an unscoped administrator's token narrowed to audit:read
    # (say, for a SIEM) still reads every event.
    siem = Admin(admin.id, admin.email, admin.password, admin.role)
    siem.token = await issue_token(sessionmaker, admin.id, permissions=["audit:read"])
    assert await audit_targets(client, siem) == await audit_targets(client, admin)

    # Events about a device that no longer exists: nobody's scope can say it reached it, but an
    # unscoped administrator still reads them.
    deleted = await client.delete(f"/api/v1/devices/{p.direct.device_id}", headers=admin.headers)
    assert deleted.status_code == 204, deleted.text
    assert ("device", p.direct.device_id) in await audit_targets(client, admin)
    assert ("device", p.direct.device_id) not in await audit_targets(client, helpdesk)


async def test_an_enrollment_tokens_uses_leave_out_devices_outside_scope(
    client: httpx.AsyncClient, factory: Factory, sessionmaker: async_sessionmaker[AsyncSession]
) -> None:
    admin = await factory.admin("Global administrator")
    group = (await create_group(client, admin, "Paris"))["id"]
    token = await make_token(client, admin)
    paris_laptop, lyon_laptop = TestDevice(client), TestDevice(client)
    for device in (paris_laptop, lyon_laptop):
        assert (await device.enroll(token)).status_code == 201
    assert (await add(client, admin, group, "device", paris_laptop.device_id)).status_code == 201
    helpdesk = await scoped_admin(
        client,
        factory,
        sessionmaker,
        admin,
        await role_id(client, admin, "Help desk operator"),
        scope_group_ids=[group],
    )
    token_id = next(
        t["id"]
        for t in (await client.get("/api/v1/enrollment-tokens", headers=admin.headers)).json()
        if token.startswith(t["prefix"])
    )

    async def uses(who: Admin) -> set[str | None]:
        response = await client.get(f"/api/v1/enrollment-tokens/{token_id}/uses", headers=who.headers)
        assert response.status_code == 200, response.text
        return {u["device_id"] for u in response.json()}

    assert await uses(admin) == {paris_laptop.device_id, lyon_laptop.device_id}
    assert await uses(helpdesk) == {paris_laptop.device_id}
    assert (await sign_in(client, helpdesk.email)).status_code == 303
    page = await client.get(f"/portal/enrollment/{token_id}")
    assert (
        page.status_code == 200 and paris_laptop.serial in page.text and lyon_laptop.serial not in page.text
    )


async def test_an_administrator_who_reaches_no_device_or_no_user_sees_none_rather_than_an_error(
    client: httpx.AsyncClient, factory: Factory, sessionmaker: async_sessionmaker[AsyncSession]
) -> None:
    """An empty scope is a condition that selects nothing (it used to be invalid SQL: a 500)."""
    admin = await factory.admin("Global administrator")
    holder = await factory.user(licence=True)
    # A user's page lists their devices within the caller's devices:read scope: here, none at all.
    users_only = Admin(admin.id, admin.email, admin.password, admin.role)
    users_only.token = await issue_token(sessionmaker, admin.id, permissions=["users:read"])
    page = await client.get(f"/api/v1/users/{holder}", headers=users_only.headers)
    assert page.status_code == 200, page.text
    assert page.json()["devices"] == [] and page.json()["devices_total"] == 0
    # Licence holders are listed within the caller's users:read scope: none without users:read.
    licence_id = (await client.get(f"/api/v1/users/{holder}/licences", headers=admin.headers)).json()[0][
        "licence_id"
    ]
    licences_only = Admin(admin.id, admin.email, admin.password, admin.role)
    licences_only.token = await issue_token(sessionmaker, admin.id, permissions=["licences:read"])
    holders = await client.get(f"/api/v1/licences/{licence_id}/users", headers=licences_only.headers)
    assert holders.status_code == 200 and holders.json() == []
    everyone = await client.get(f"/api/v1/licences/{licence_id}/users", headers=admin.headers)
    assert [h["user_id"] for h in everyone.json()] == [str(holder)]
