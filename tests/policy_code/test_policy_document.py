"""Policy as code through the API: the export names everything and keeps a stable order, applying it back
changes nothing, an edited document is shown (dry run, nothing kept) then applied in one transaction through
the same validation, scope and audit as the API; bad documents are refused naming the object and field."""

from __future__ import annotations

import copy
from typing import Any

import httpx
from sqlalchemy import func, select, text
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from corral.models import AssignmentFilter, AuditEvent, CompliancePolicy, ConfigurationProfile
from tests.conftest import Admin, Factory, audit_rows
from tests.groups.helpers import create_group
from tests.test_scope_groups import role_id, scoped_admin

Sessionmaker = async_sessionmaker[AsyncSession]
WIFI = [{"ssid": "Corp", "security": "wpa2_personal", "password": "correct horse battery", "auto_join": True}]


async def arrange(client: httpx.AsyncClient, admin: Admin) -> dict[str, Any]:
    """A filter, a compliance policy with a ladder and a profile with a Wi-Fi secret, assigned."""
    h = admin.headers
    fleet = await create_group(client, admin, "Fleet")
    exempt = await create_group(client, admin, "Exempt")
    kiosks = await client.post(
        "/api/v1/assignment-filters",
        json={"name": "Kiosks", "platform": "windows", "rule": 'device.displayName -startsWith "kiosk"'},
        headers=h,
    )
    assert kiosks.status_code == 201, kiosks.text
    policy = await client.post(
        "/api/v1/compliance-policies",
        json={
            "name": "Windows baseline",
            "platform": "windows",
            "settings": {"firewall.required": True, "os.min_version": "10.0.19045"},
            "actions": [
                {"action": "mark_noncompliant", "delay_hours": 24},
                {"action": "email_user", "delay_hours": 24, "recipients": ["it@example.com"]},
            ],
        },
        headers=h,
    )
    assert policy.status_code == 201, policy.text
    profile = await client.post(
        "/api/v1/configuration-profiles",
        json={"name": "Office Wi-Fi", "platform": "windows", "settings": {"wifi.networks": WIFI}},
        headers=h,
    )
    assert profile.status_code == 201, profile.text
    for kind, obj, items in (
        (
            "compliance-policies",
            policy.json(),
            [
                {
                    "target": "group",
                    "group_id": fleet["id"],
                    "filter_id": kiosks.json()["id"],
                    "filter_mode": "exclude",
                },
                {"target": "group", "group_id": exempt["id"], "mode": "exclude"},
            ],
        ),
        ("configuration-profiles", profile.json(), [{"target": "all_devices"}]),
    ):
        done = await client.put(
            f"/api/v1/{kind}/{obj['id']}/assignments", json={"assignments": items}, headers=h
        )
        assert done.status_code == 200, done.text
    return {"policy": policy.json(), "profile": profile.json(), "fleet": fleet, "exempt": exempt}


async def export(client: httpx.AsyncClient, admin: Admin) -> dict[str, Any]:
    response = await client.get("/api/v1/policy-document", headers=admin.headers)
    assert response.status_code == 200, response.text
    document: dict[str, Any] = response.json()
    return document


async def apply(
    client: httpx.AsyncClient, admin: Admin, document: dict[str, Any], *, dry_run: bool = False
) -> httpx.Response:
    return await client.post(
        "/api/v1/policy-document/apply",
        params={"dry_run": str(dry_run).lower()},
        json=document,
        headers=admin.headers,
    )


async def snapshot(sessionmaker: Sessionmaker) -> tuple[Any, ...]:
    """Everything an apply could change, to show a dry run or a refusal changed nothing."""
    async with sessionmaker() as session:
        objects = (
            await session.execute(text("SELECT id, name, version, updated_at FROM assignables ORDER BY id"))
        ).all()
        assignments = (
            await session.execute(
                text("SELECT assignable_id, target, group_id, mode, filter_id FROM assignments ORDER BY id")
            )
        ).all()
        filters = (
            await session.execute(text("SELECT id, name, rule FROM assignment_filters ORDER BY id"))
        ).all()
        audit = await session.scalar(select(func.count()).select_from(AuditEvent))
    return tuple(objects), tuple(assignments), tuple(filters), audit


async def test_export_names_everything_in_a_stable_order_and_applying_it_back_changes_nothing(
    client: httpx.AsyncClient, factory: Factory, sessionmaker: Sessionmaker
) -> None:
    admin = await factory.admin()
    await arrange(client, admin)
    document = await export(client, admin)
    assert document == {
        "version": 1,
        "filters": [
            {"name": "Kiosks", "platform": "windows", "rule": 'device.displayName -startsWith "kiosk"'}
        ],
        "compliance_policies": [
            {
                "name": "Windows baseline",
                "platform": "windows",
                "settings": {"firewall.required": True, "os.min_version": "10.0.19045"},
                "actions": [
                    {"action": "mark_noncompliant", "delay_hours": 24},
                    {"action": "email_user", "delay_hours": 24, "recipients": ["it@example.com"]},
                ],
                "assignments": [
                    {"group": "Fleet", "filter": "Kiosks", "filter_mode": "exclude"},
                    {"group": "Exempt", "mode": "exclude"},
                ],
            }
        ],
        "configuration_profiles": [
            {
                "name": "Office Wi-Fi",
                "platform": "windows",
                # The secret never leaves the server: a placeholder that keeps it.
                "settings": {"wifi.networks": [{**WIFI[0], "password": {"$secret": True}}]},
                "assignments": [{"target": "all_devices"}],
            }
        ],
    }
    assert document == await export(client, admin)  # stable
    before = await snapshot(sessionmaker)
    for dry_run in (True, False):
        same = await apply(client, admin, document, dry_run=dry_run)
        assert same.status_code == 200, same.text
        assert same.json() == {"dry_run": dry_run, "changes": [], "unchanged": 3}
    assert await snapshot(sessionmaker) == before  # no version bump, no audit row


async def test_an_edited_document_is_shown_by_a_dry_run_then_applied_in_one_go(
    client: httpx.AsyncClient, factory: Factory, sessionmaker: Sessionmaker
) -> None:
    admin = await factory.admin()
    arranged = await arrange(client, admin)
    document = await export(client, admin)
    edited = copy.deepcopy(document)
    baseline = edited["compliance_policies"][0]
    baseline["settings"]["os.min_version"] = "10.0.22631"
    baseline["assignments"] = [{"group": "Fleet"}]  # no more exclusion, no filter
    edited["compliance_policies"].append(
        {"name": "Linux disks", "platform": "linux", "settings": {"disk_encryption.required": True}}
    )
    edited["configuration_profiles"][0]["settings"]["wifi.networks"][0]["password"] = "a new passphrase"
    edited["filters"] = []  # the filter is no longer used: deleted

    before = await snapshot(sessionmaker)
    dry = await apply(client, admin, edited, dry_run=True)
    assert dry.status_code == 200, dry.text
    plan = dry.json()
    assert plan["dry_run"] is True and plan["unchanged"] == 0
    by_name = {(c["kind"], c["name"]): c for c in plan["changes"]}
    assert [c["action"] for c in plan["changes"]] == ["update", "create", "update", "delete"]
    update = by_name[("compliance_policy", "Windows baseline")]
    assert {f["path"]: (f["old"], f["new"]) for f in update["fields"]} == {
        "settings.os.min_version": ("10.0.19045", "10.0.22631"),
        "assignments": (
            ['include group "Fleet" with filter "Kiosks" (exclude)', 'exclude group "Exempt"'],
            ['include group "Fleet"'],
        ),
    }
    assert by_name[("compliance_policy", "Linux disks")]["action"] == "create"
    wifi = by_name[("configuration_profile", "Office Wi-Fi")]["fields"]
    assert [f["path"] for f in wifi] == ["settings.wifi.networks"]
    assert wifi[0]["old"][0]["password"] == "<secret>"
    assert wifi[0]["new"][0]["password"] == "<secret, changed>"
    assert "passphrase" not in dry.text and "correct horse" not in dry.text
    assert by_name[("filter", "Kiosks")]["action"] == "delete"
    assert await snapshot(sessionmaker) == before  # a dry run keeps nothing

    done = await apply(client, admin, edited)
    assert done.status_code == 200, done.text
    assert done.json()["changes"] == plan["changes"] and done.json()["dry_run"] is False
    async with sessionmaker() as session:
        policies = {p.name: p for p in (await session.scalars(select(CompliancePolicy))).all()}
        assert policies["Windows baseline"].settings["os.min_version"] == "10.0.22631"
        assert policies["Windows baseline"].version == 2
        assert "Linux disks" in policies
        assert await session.scalar(select(func.count()).select_from(AssignmentFilter)) == 0
        profile = await session.scalar(select(ConfigurationProfile))
        assert profile is not None and profile.version == 2
    # Each change audited by its own service, plus one event for the whole document.
    assert len(await audit_rows(sessionmaker, activity="compliance_policy.update")) == 1
    assert len(await audit_rows(sessionmaker, activity="compliance_policy.create")) == 2
    assert len(await audit_rows(sessionmaker, activity="filter.delete")) == 1
    (whole,) = await audit_rows(sessionmaker, activity="policy_document.apply")
    assert "delete filter 'Kiosks'" in (whole.detail or "")
    # The device gets the new secret (what the profile delivers), and the document is now the tenant.
    assignments = await client.get(
        f"/api/v1/compliance-policies/{arranged['policy']['id']}/assignments", headers=admin.headers
    )
    assert [a["group"]["display_name"] for a in assignments.json()["assignments"]] == ["Fleet"]
    again = await apply(client, admin, await export(client, admin))
    assert again.json() == {"dry_run": False, "changes": [], "unchanged": 3}


async def test_sections_left_out_are_left_alone_and_a_rename_replaces(
    client: httpx.AsyncClient, factory: Factory, sessionmaker: Sessionmaker
) -> None:
    admin = await factory.admin()
    await arrange(client, admin)
    document = await export(client, admin)
    only_policies = {"version": 1, "compliance_policies": document["compliance_policies"]}
    only_policies["compliance_policies"][0]["name"] = "Windows baseline 2"
    result = await apply(client, admin, only_policies)
    assert result.status_code == 200, result.text
    assert [(c["action"], c["name"]) for c in result.json()["changes"]] == [
        ("create", "Windows baseline 2"),
        ("delete", "Windows baseline"),
    ]
    async with sessionmaker() as session:
        assert await session.scalar(select(func.count()).select_from(ConfigurationProfile)) == 1
        assert await session.scalar(select(func.count()).select_from(AssignmentFilter)) == 1


async def test_bad_documents_are_refused_naming_the_object_and_field_and_change_nothing(
    client: httpx.AsyncClient, factory: Factory, sessionmaker: Sessionmaker
) -> None:
    admin = await factory.admin()
    await arrange(client, admin)
    await create_group(client, admin, "Twins")
    await create_group(client, admin, "twins")
    document = await export(client, admin)
    before = await snapshot(sessionmaker)

    def edit(change: Any) -> dict[str, Any]:
        out = copy.deepcopy(document)
        change(out)
        return out

    def policy(out: dict[str, Any]) -> dict[str, Any]:
        found: dict[str, Any] = out["compliance_policies"][0]
        return found

    cases: list[tuple[dict[str, Any], int, str]] = [
        (
            edit(lambda d: policy(d)["assignments"].append({"group": "Nobody"})),
            422,
            'compliance_policies["Windows baseline"].assignments[2].group: no group named "Nobody"',
        ),
        (
            edit(lambda d: policy(d)["assignments"].append({"group": "Twins"})),
            422,
            '2 groups are named "Twins": name it by group_id',
        ),
        (
            edit(lambda d: policy(d)["settings"].update({"os.min_version": 7})),
            422,
            'compliance_policies["Windows baseline"].settings.os.min_version',
        ),
        (
            edit(lambda d: policy(d)["settings"].update({"no.such": True})),
            422,
            'compliance_policies["Windows baseline"].settings.no.such: no such compliance setting',
        ),
        (
            edit(lambda d: policy(d).update({"platform": "linux"})),
            422,
            "platform: an existing object's platform cannot change",
        ),
        (
            edit(lambda d: policy(d).update({"scope_tags": ["Mars"]})),
            422,
            'scope_tags[0]: no scope tag named "Mars"',
        ),
        (
            edit(lambda d: d["filters"][0].update({"rule": 'device.displayName -eq "x" -and'})),
            422,
            'filters["Kiosks"].rule:',
        ),
        (
            edit(lambda d: policy(d)["actions"].insert(0, {"action": "retire"})),
            422,
            '"Windows baseline"].actions.0.action: the first action must be mark_noncompliant',
        ),
        (
            edit(lambda d: policy(d)["actions"][1].update({"template": "Missing"})),
            422,
            'actions[1].template: no notification template named "Missing"',
        ),
        (
            edit(lambda d: policy(d)["assignments"].append({"group": "Fleet", "filter": "Elsewhere"})),
            422,
            'assignments[2].filter: no filter named "Elsewhere"',
        ),
        (
            # A filter still used by an object the document does not manage: in use, nothing deleted.
            {"version": 1, "filters": []},
            409,
            'filters["Kiosks"].The filter is used by the assignments of',
        ),
        (
            edit(lambda d: d["compliance_policies"].append(copy.deepcopy(d["compliance_policies"][0]))),
            422,
            "appears twice in compliance_policies",
        ),
        (
            edit(
                lambda d: d["configuration_profiles"].append(
                    {
                        "name": "New Wi-Fi",
                        "platform": "windows",
                        "settings": {"wifi.networks": [{**WIFI[0], "password": {"$secret": True}}]},
                    }
                )
            ),
            422,
            'configuration_profiles["New Wi-Fi"].settings.wifi.networks: 0.password: a new profile has no '
            "stored secret to keep",
        ),
        (edit(lambda d: d.update({"version": 2})), 422, ""),
        (edit(lambda d: d.update({"apps": []})), 422, ""),
    ]
    for body, status, message in cases:
        for dry_run in (True, False):
            response = await apply(client, admin, body, dry_run=dry_run)
            assert response.status_code == status, (message, response.text)
            problem = response.json()
            said = " ".join(
                [
                    problem["detail"],
                    *(f"{e['location']}: {e['message']}" for e in problem.get("errors") or []),
                ]
            )
            assert message in said, said
    assert await snapshot(sessionmaker) == before


async def test_roles_scope_and_unauthenticated(
    client: httpx.AsyncClient, factory: Factory, sessionmaker: Sessionmaker
) -> None:
    admin = await factory.admin()
    await arrange(client, admin)
    document = await export(client, admin)
    assert (await client.get("/api/v1/policy-document")).status_code == 401
    assert (await client.post("/api/v1/policy-document/apply", json=document)).status_code == 401
    app_manager = await factory.admin("Application manager")  # filters only
    exported = await export(client, app_manager)
    assert set(exported) == {"version", "filters"}
    # The compliance administrator reads no profiles: the section is left out of its export, refused in
    # its documents; its own section it may change.
    compliance_admin = await factory.admin("Device compliance administrator")
    exported = await export(client, compliance_admin)
    assert set(exported) == {"version", "filters", "compliance_policies"}
    refused = await apply(client, compliance_admin, document, dry_run=True)
    assert refused.status_code == 403
    assert "configuration_profiles: applying them needs the permission profiles:read" in refused.text
    exported["compliance_policies"][0]["description"] = "Owned by the compliance team"
    assert (await apply(client, compliance_admin, exported)).status_code == 200
    # Read-only: never a change (a dry run meets the refusal the real apply would).
    reader = await factory.admin("Read-only operator")
    exported = await export(client, reader)
    exported["compliance_policies"][0]["description"] = "changed"
    before = await snapshot(sessionmaker)
    for dry_run in (True, False):
        refused = await apply(client, reader, exported, dry_run=dry_run)
        assert refused.status_code == 403
        assert "compliance:write" in refused.json()["detail"]
    assert await snapshot(sessionmaker) == before
    assert (await apply(client, reader, await export(client, reader))).status_code == 200  # nothing to do
    created = {
        "version": 1,
        "filters": [{"name": "New", "platform": "linux", "rule": 'device.displayName -eq "x"'}],
    }
    refused = await apply(client, reader, created, dry_run=True)
    assert refused.status_code == 403
    assert refused.json()["detail"] == 'filters["New"]: changing it needs the permission filters:write.'

    # A manager limited to a scope tag sees and deletes only objects tagged with it.
    paris = await client.post("/api/v1/scope-tags", json={"name": "Paris"}, headers=admin.headers)
    assert paris.status_code == 201, paris.text
    manager = await scoped_admin(
        client,
        factory,
        sessionmaker,
        admin,
        await role_id(client, admin, "Service administrator"),
        scope_all=False,
        scope_tag_ids=[paris.json()["id"]],
    )
    scoped = await export(client, manager)
    assert scoped == {"version": 1, "filters": [], "compliance_policies": [], "configuration_profiles": []}
    mine = {
        "version": 1,
        "filters": [],
        "compliance_policies": [
            {
                "name": "Paris disks",
                "platform": "windows",
                "settings": {"firewall.required": True},
                "scope_tags": ["Paris"],
            }
        ],
        "configuration_profiles": [],
    }
    made = await apply(client, manager, mine)
    assert made.status_code == 200, made.text
    assert [c["action"] for c in made.json()["changes"]] == ["create"]  # nothing of the tenant's deleted
    async with sessionmaker() as session:
        names = set((await session.scalars(select(CompliancePolicy.name))).all())
    assert names == {"Windows baseline", "Paris disks"}
    untagged = copy.deepcopy(mine)
    untagged["compliance_policies"][0]["scope_tags"] = []
    refused = await apply(client, manager, untagged)
    assert refused.status_code == 403 and "Paris disks" in refused.text
    # The scoped manager cannot see the tenant's policy, so cannot take its name either.
    taken = copy.deepcopy(mine)
    taken["compliance_policies"].append(
        {
            "name": "Windows baseline",
            "platform": "windows",
            "settings": {"firewall.required": True},
            "scope_tags": ["Paris"],
        }
    )
    assert (await apply(client, manager, taken)).status_code == 409


async def test_custom_payloads_round_trip_and_text_json_is_no_change(
    client: httpx.AsyncClient, factory: Factory
) -> None:
    admin = await factory.admin()
    document = {
        "version": 1,
        "configuration_profiles": [
            {"name": "Agent extras", "platform": "linux", "settings": {"custom.json": '{"team": "web"}'}}
        ],
    }
    first = await apply(client, admin, document)
    assert [c["action"] for c in first.json()["changes"]] == ["create"]
    again = await apply(client, admin, document, dry_run=True)
    assert again.json() == {"dry_run": True, "changes": [], "unchanged": 1}
    exported = await export(client, admin)
    assert exported["configuration_profiles"][0]["settings"] == {"custom.json": {"team": "web"}}
    assert (await apply(client, admin, exported)).json()["changes"] == []
