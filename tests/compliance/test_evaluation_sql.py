"""Compliance evaluation runs in SQL (corral.compliance.evaluation); the catalog's Python checks are its
reference. This differential test builds a fleet of awkward devices (versions with suffixes, zeros and
leading blanks, facts of the wrong type, missing inventory, apps, retired devices, overrides, stale check-ins)
under random policies, evaluates it twice (the second time later, with some devices changed, so episodes and
grace periods carry over) and compares every stored result, device state and reason with what the reference
computes from the same rows."""

from __future__ import annotations

import random
import uuid
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

import pytest
from sqlalchemy import delete, func, select, text
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from corral.compliance import catalog
from corral.compliance.service import DEFAULT_ACTIONS, RANK, compliance_service
from corral.kit.time import utcnow
from corral.models import (
    ComplianceOverride,
    CompliancePolicy,
    ComplianceState,
    Device,
    DeviceApp,
    DeviceComplianceChange,
    DeviceCompliancePolicy,
    TenantSettings,
    device_targets,
)

VERSIONS = [
    "10.0.22631", "10.0.19045", "10.0.22631.3007", "14", "14.0", "14.0.0", "13.9.9", " 14.1",
    "14.1 (23B74)", "14.00", "10.0.0.00", "", "abc", "0", "0.0", "10.01", "99999999999999999999999.1",
    "7.", "\t14.1", "\u3000 15", "\u2003" + "10.0.19045", None,
]  # fmt: skip
#: Facts of every JSON type, and the catalog's bounds (equal to the policy's value: at least / at most).
FACTS = [None, 1, 4, 6, 8, 12, 15, 64, 600, 1440, True, "8", 8.5, -3, {"x": 1}]
APPS = ["com.a", "com.b", "Com.c", "z.app", "é.app"]
NAMES = ["Alpha", "beta", "Émile", "zeta", "Zulu", "alpha 2"]


def random_setting(r: random.Random, setting: catalog.Setting) -> Any:
    if setting.type == "boolean":
        return True
    if setting.type == "integer":
        assert setting.minimum is not None and setting.maximum is not None
        return r.choice(
            [setting.minimum, setting.maximum, r.randint(setting.minimum, min(setting.maximum, 20))]
        )
    if setting.type == "version":
        return r.choice(["10.0.19045", "10.0.22631", "14", "14.00", "14.0.1", "0.5", "13"])
    return r.sample(APPS, r.randint(1, 3))


def random_facts(r: random.Random) -> Any:
    roll = r.random()
    if roll < 0.1:
        return None  # no inventory key at all
    if roll < 0.15:
        return ["not", "an", "object"]
    facts = {}
    for key in ("passcode_min_length", "screen_lock_timeout_minutes"):
        if r.random() < 0.8:
            facts[key] = r.choice(FACTS)
    return facts


def random_device(r: random.Random, now: datetime) -> dict[str, Any]:
    facts = random_facts(r)
    return {
        "id": uuid.uuid4(),
        "name": f"d-{r.randint(0, 10**9)}",
        "serial_number": f"SN-{r.randint(0, 10**9)}",
        "platform": "windows",
        "os_version": r.choice(VERSIONS),
        "os_build": r.choice(VERSIONS),
        "agent_version": r.choice(VERSIONS),
        "ownership": "company",
        "management_state": r.choice(["managed"] * 9 + ["retired", "wiped", "retire_pending"]),
        "compliance_state": "unknown",
        "enrolled_at": now - timedelta(days=r.randint(0, 90), seconds=r.randint(0, 86399)),
        "last_checkin_at": r.choice(
            [None, now - timedelta(days=r.randint(0, 45), seconds=r.randint(0, 86399), microseconds=7)]
        ),
        "inventory_updated_at": None if r.random() < 0.1 else now,
        "disk_encrypted": r.choice([True, False, None]),
        "firewall_enabled": r.choice([True, False, None]),
        "screen_lock_enabled": r.choice([True, False, None]),
        "jailbroken": r.choice([True, False, None]),
        "secure_boot": r.choice([True, False, None]),
        "inventory": {} if facts is None else {"security": facts},
    }


@dataclass
class Policy:
    id: uuid.UUID
    name: str
    version: int
    settings: dict[str, Any]
    grace: timedelta


def reference_result(policy: Policy, observation: catalog.Observation, before: Any) -> dict[str, Any]:
    """The Python evaluator Corral ran before evaluation moved into SQL."""
    settings: dict[str, dict[str, Any]] = {}
    failing = erroring = False
    for sid, expected in sorted(policy.settings.items()):
        setting = catalog.BY_ID[sid]
        observed = setting.observe(observation)
        result: dict[str, Any] = {"expected": expected}
        if observed is None:
            result["state"] = ComplianceState.error.value
            result["message"] = f"The device does not report {setting.reads}."
            erroring = True
        elif setting.complies(expected, observed):
            result["state"] = ComplianceState.compliant.value
        else:
            result["state"] = ComplianceState.noncompliant.value
            failing = True
        result["observed"] = catalog.observed_for_display(setting, expected, observed)
        settings[sid] = result
    failing_since = grace_end = None
    if failing:
        failing_since = (
            before.failing_since if before is not None and before.failing_since else observation.now
        )
        grace_end = failing_since + policy.grace
        state = (
            ComplianceState.noncompliant if observation.now >= grace_end else ComplianceState.in_grace_period
        )
    elif erroring:
        state = ComplianceState.error
    else:
        state = ComplianceState.compliant
    return {
        "state": state,
        "policy_version": policy.version,
        "failing_since": failing_since,
        "grace_ends_at": grace_end if state is ComplianceState.in_grace_period else None,
        "settings": settings,
    }


def reference_state(
    device: Any,
    states: list[tuple[str, ComplianceState]],
    override: Any,
    now: datetime,
    no_policy_compliant: bool,
    validity_days: int,
) -> tuple[ComplianceState, str]:
    if device.inventory_updated_at is None:
        return ComplianceState.not_evaluated, "the device has not reported its inventory yet"
    if override is not None and override.until > now:
        return ComplianceState.compliant, (
            f"marked compliant by {override.created_by_name or 'an administrator'} until "
            f"{override.until:%Y-%m-%d %H:%M} UTC: {override.reason}"
        )
    last = device.last_checkin_at or device.enrolled_at
    if last is not None and now - last > timedelta(days=validity_days):
        return ComplianceState.noncompliant, f"no check-in for more than {validity_days} days"
    if not states:
        word = "compliant" if no_policy_compliant else "noncompliant"
        return (
            ComplianceState.compliant if no_policy_compliant else ComplianceState.noncompliant,
            f"no compliance policy is assigned (the tenant counts it {word})",
        )
    worst_policy, worst = min(states, key=lambda s: (-RANK[s[1]], s[0]))  # ties: the first name
    if worst is ComplianceState.compliant:
        return worst, f"meets {', '.join(sorted(name for name, _ in states))}"
    label = {
        ComplianceState.noncompliant: "fails",
        ComplianceState.in_grace_period: "fails (in grace period)",
        ComplianceState.error: "cannot be evaluated against",
    }[worst]
    return worst, f"{label} {worst_policy}"


async def reference(
    session: AsyncSession, policies: dict[uuid.UUID, Policy], now: datetime, tenant: TenantSettings
) -> tuple[dict[tuple[uuid.UUID, uuid.UUID], dict[str, Any]], dict[uuid.UUID, tuple[ComplianceState, str]]]:
    """What the Python evaluator makes of the rows as they are now."""
    devices = (
        await session.execute(
            select(
                Device.id,
                Device.management_state,
                Device.inventory_updated_at,
                Device.inventory["security"].label("facts"),
                *catalog.EVALUATED,
            )
        )
    ).all()
    reached: dict[uuid.UUID, list[uuid.UUID]] = {}
    for device_id, policy_id in (
        await session.execute(select(device_targets.c.device_id, device_targets.c.assignable_id))
    ).all():
        reached.setdefault(device_id, []).append(policy_id)
    apps: dict[uuid.UUID, set[str]] = {}
    for device_id, identifier in (
        await session.execute(select(DeviceApp.device_id, DeviceApp.identifier))
    ).all():
        apps.setdefault(device_id, set()).add(identifier)
    before = {
        (r.device_id, r.policy_id): r for r in (await session.scalars(select(DeviceCompliancePolicy))).all()
    }
    overrides = {o.device_id: o for o in (await session.scalars(select(ComplianceOverride))).all()}
    rows: dict[tuple[uuid.UUID, uuid.UUID], dict[str, Any]] = {}
    states: dict[uuid.UUID, tuple[ComplianceState, str]] = {}
    for device in devices:
        if device.management_state in ("retired", "wiped"):
            continue
        judged: list[tuple[str, ComplianceState]] = []
        if device.inventory_updated_at is not None:
            facts = device.facts if isinstance(device.facts, dict) else {}
            observation = catalog.Observation(device, facts, frozenset(apps.get(device.id, ())), now)
            for policy_id in reached.get(device.id, ()):
                policy = policies[policy_id]
                row = reference_result(policy, observation, before.get((device.id, policy_id)))
                rows[(device.id, policy_id)] = row
                judged.append((policy.name, row["state"]))
        states[device.id] = reference_state(
            device,
            judged,
            overrides.get(device.id),
            now,
            tenant.no_policy_compliant,
            tenant.compliance_validity_days,
        )
    return rows, states


async def stored(session: AsyncSession) -> dict[tuple[uuid.UUID, uuid.UUID], dict[str, Any]]:
    return {
        (r.device_id, r.policy_id): {
            "state": r.state,
            "policy_version": r.policy_version,
            "failing_since": r.failing_since,
            "grace_ends_at": r.grace_ends_at,
            "settings": r.settings,
        }
        for r in (await session.scalars(select(DeviceCompliancePolicy))).all()
    }


@pytest.mark.parametrize("seed", [1, 2, 3])
async def test_sql_evaluation_agrees_with_the_python_reference(
    seed: int, sessionmaker: async_sessionmaker[AsyncSession]
) -> None:
    r = random.Random(seed)
    now = utcnow()
    policies: dict[uuid.UUID, Policy] = {}
    async with sessionmaker() as session:
        tenant = TenantSettings(
            id=1, no_policy_compliant=r.choice([True, False]), compliance_validity_days=r.choice([7, 30])
        )
        await session.merge(tenant)
        for index, name in enumerate(NAMES):
            chosen = r.sample(catalog.SETTINGS, r.randint(0 if index == 0 else 1, 5))
            settings = {s.id: random_setting(r, s) for s in chosen}
            hours = r.choice([0, 0, 24, 72])
            actions = DEFAULT_ACTIONS if hours == 0 and r.random() < 0.5 else [
                {"action": "email_user", "delay_hours": 0},
                {"action": "mark_noncompliant", "delay_hours": hours},
            ]  # fmt: skip
            policy = CompliancePolicy(
                name=name, platform="windows", settings=settings, actions=actions, version=r.randint(1, 9)
            )
            session.add(policy)
            await session.flush()
            policies[policy.id] = Policy(policy.id, name, policy.version, settings, timedelta(hours=hours))
        devices = [random_device(r, now) for _ in range(300)]
        await session.execute(Device.__table__.insert(), devices)
        apps = [
            {"device_id": d["id"], "identifier": a, "name": a}
            for d in devices
            for a in r.sample(APPS, r.randint(0, len(APPS)))
        ]
        await session.execute(DeviceApp.__table__.insert(), apps)
        targets = [
            {"device_id": d["id"], "assignable_id": p}
            for d in devices
            for p in r.sample(list(policies), r.randint(0, 4))
        ]
        await session.execute(device_targets.insert(), targets)
        for d in r.sample(devices, 30):
            session.add(
                ComplianceOverride(
                    device_id=d["id"],
                    until=now + timedelta(hours=r.choice([-1, 5])),
                    reason="travelling: laptop's at home",
                    created_by_name=r.choice(["", "Ada Lovelace"]),
                    created_at=now,
                )
            )
        await session.commit()

    ids = [d["id"] for d in devices]
    for round_, at in enumerate((now, now + timedelta(hours=30))):
        async with sessionmaker() as session:
            if round_:  # some devices change between the two evaluations; all states are compared
                for d in r.sample(devices, 60):
                    await session.execute(
                        Device.__table__.update()
                        .where(Device.id == d["id"])
                        .values(
                            firewall_enabled=r.choice([True, False, None]),
                            os_version=r.choice(VERSIONS),
                            last_checkin_at=at - timedelta(days=r.randint(0, 10)),
                        )
                    )
                dropped = r.sample(targets, 40)
                for t in dropped:
                    await session.execute(
                        delete(device_targets).where(
                            device_targets.c.device_id == t["device_id"],
                            device_targets.c.assignable_id == t["assignable_id"],
                        )
                    )
            await session.execute(text("UPDATE devices SET compliance_state = 'unknown'"))
            expected_rows, expected_states = await reference(session, policies, at, tenant)
            # The caller's own planner setting survives the evaluation's (planned per batch).
            await session.execute(text("SET LOCAL plan_cache_mode = force_generic_plan"))
            moved = await compliance_service.evaluate(session, ids, at, reason="test")
            planner = await session.scalar(text("SELECT current_setting('plan_cache_mode')"))
            assert planner == "force_generic_plan"
            await session.commit()
        async with sessionmaker() as session:
            assert await stored(session) == expected_rows
            states = dict((await session.execute(select(Device.id, Device.compliance_state))).all())
        for device_id, (state, _) in expected_states.items():
            assert states[device_id] == state, device_id
        assert {m.device_id: (m.new, m.reason) for m in moved} == expected_states
        assert all(m.history == (m.reason if m.new is ComplianceState.not_evaluated else f"test: {m.reason}")
                   for m in moved)  # fmt: skip
        # The fleet is varied enough to mean something.
        seen = {row["state"] for row in expected_rows.values()}
        assert {ComplianceState.compliant, ComplianceState.noncompliant, ComplianceState.error} <= seen

    # Evaluated again with nothing changed: nothing is written, no device moves.
    async with sessionmaker() as session:
        before = (await session.execute(select(DeviceCompliancePolicy.__table__))).all()
        history = await session.scalar(select(func.count()).select_from(DeviceComplianceChange))
        moved = await compliance_service.evaluate(session, ids, at, reason="test")
        await session.commit()
    async with sessionmaker() as session:
        assert moved == []
        after = (await session.execute(select(DeviceCompliancePolicy.__table__))).all()
        assert sorted(after) == sorted(before)  # evaluated_at included: no row rewritten
        assert await session.scalar(select(func.count()).select_from(DeviceComplianceChange)) == history


async def test_versions_compare_in_sql_as_version_key_compares_them(
    sessionmaker: async_sessionmaker[AsyncSession],
) -> None:
    versions = [v for v in VERSIONS if v is not None] + [
        "14.0.00",
        "10.0.0.0.1",
        "00.1",
        "3.10",
        "3.9",
        "1.2.3abc",
        "\u00a014",  # only ASCII blanks may lead a version
        "\u2028 3",
        " \f\v\r\n2.1",
    ]
    key = catalog._version_sql("v")
    async with sessionmaker() as session:
        keys = dict(
            (
                await session.execute(
                    text(f"SELECT v, {key} FROM unnest(CAST(:v AS text[])) AS v"),  # noqa: S608 - constant
                    {"v": versions},
                )
            ).all()
        )
    for version in versions:
        assert tuple(keys[version]) == catalog.version_key(version), version
