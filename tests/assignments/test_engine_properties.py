"""The assignment engine's SQL against the reference resolver, on random worlds (hypothesis): random nested
group graphs, memberships of devices, users and primary users, filters and assignments with inclusions and
exclusions. Both ways of keeping ``device_targets`` current must give exactly what the resolver says: a
full recompute by object, and a refresh by device after random changes to the world (one by one in Python,
or set-based in SQL)."""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlalchemy import delete, insert, select, update
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from corral.assignments import engine
from corral.assignments.resolver import AssignmentSpec, DeviceView, targeted
from corral.groups.rule_sql import DEVICE_SCHEMA, device_attribute_values
from corral.groups.rules import matches, parse_rule
from corral.models import (
    Assignable,
    Assignment,
    AssignmentFilter,
    AssignmentMode,
    AssignmentTarget,
    CompliancePolicy,
    Device,
    DeviceDesiredState,
    FilterMode,
    Group,
    Platform,
    User,
    device_targets,
    group_children,
    group_devices,
    group_users,
)

FILTER_RULES = [
    'device.deviceOSType -eq "Windows"',
    'device.deviceOwnership -eq "Personal"',
    'device.displayName -startsWith "lab"',
    '-not (device.deviceOSType -in ["iOS", "Android"])',
]
PLATFORMS = ["windows", "ios", "ipados", "android"]
OBJECT_PLATFORMS = ["windows", "ios", "android"]
N_GROUPS, N_USERS, N_DEVICES, N_OBJECTS = 8, 4, 10, 3


@dataclass
class World:
    """Indexes into fixed pools of ids; ``edges`` are (child, parent) with child > parent (no cycles)."""

    edges: set[tuple[int, int]]
    device_groups: set[tuple[int, int]]  # (device, group)
    user_groups: set[tuple[int, int]]  # (user, group)
    device_user: dict[int, int | None]
    device_facts: dict[int, tuple[str, str, str, bool]]  # platform, ownership, name, active
    assignments: list[tuple[int, str, str, int | None, int | None, str | None]]
    # (object, target, mode, group, filter, filter_mode)
    object_platforms: list[str]
    ids: dict[str, list[uuid.UUID]] = field(default_factory=dict)


@st.composite
def worlds(draw: st.DrawFn) -> World:
    edges = draw(
        st.sets(
            st.tuples(st.integers(1, N_GROUPS - 1), st.integers(0, N_GROUPS - 2)).filter(
                lambda e: e[0] > e[1]
            ),
            max_size=12,
        )
    )
    device_groups = draw(
        st.sets(st.tuples(st.integers(0, N_DEVICES - 1), st.integers(0, N_GROUPS - 1)), max_size=14)
    )
    user_groups = draw(
        st.sets(st.tuples(st.integers(0, N_USERS - 1), st.integers(0, N_GROUPS - 1)), max_size=8)
    )
    device_user = {d: draw(st.one_of(st.none(), st.integers(0, N_USERS - 1))) for d in range(N_DEVICES)}
    device_facts = {
        d: (
            draw(st.sampled_from(PLATFORMS)),
            draw(st.sampled_from(["company", "personal"])),
            draw(st.sampled_from(["lab-1", "Lab-2", "office", "kiosk"])),
            draw(st.booleans()) if d % 5 == 0 else True,
        )
        for d in range(N_DEVICES)
    }
    assignments = []
    for obj in range(N_OBJECTS):
        targets = draw(
            st.lists(
                st.one_of(
                    st.tuples(st.just("group"), st.integers(0, N_GROUPS - 1)),
                    st.tuples(st.sampled_from(["all_devices", "all_users"]), st.none()),
                ),
                max_size=4,
                unique=True,
            )
        )
        for target, group in targets:
            mode = draw(st.sampled_from(["include", "exclude"])) if target == "group" else "include"
            filt = (
                draw(st.one_of(st.none(), st.integers(0, len(FILTER_RULES) - 1)))
                if mode == "include"
                else None
            )
            fmode = draw(st.sampled_from(["include", "exclude"])) if filt is not None else None
            assignments.append((obj, target, mode, group, filt, fmode))
    object_platforms = [draw(st.sampled_from(OBJECT_PLATFORMS)) for _ in range(N_OBJECTS)]
    return World(edges, device_groups, user_groups, device_user, device_facts, assignments, object_platforms)


async def _clear(session: AsyncSession) -> None:
    for table in (device_targets, Assignment.__table__, AssignmentFilter.__table__, Assignable.__table__):
        await session.execute(delete(table))
    for table in (group_children, group_devices, group_users, DeviceDesiredState.__table__):
        await session.execute(delete(table))
    await session.execute(delete(Device))
    await session.execute(delete(Group))
    await session.execute(delete(User))


async def _build(session: AsyncSession, world: World) -> None:
    ids = world.ids
    ids["group"] = [uuid.uuid4() for _ in range(N_GROUPS)]
    ids["user"] = [uuid.uuid4() for _ in range(N_USERS)]
    ids["device"] = [uuid.uuid4() for _ in range(N_DEVICES)]
    ids["object"] = [uuid.uuid4() for _ in range(N_OBJECTS)]
    ids["filter"] = [uuid.uuid4() for _ in FILTER_RULES]
    now = datetime.now(UTC)
    await session.execute(
        insert(Group), [{"id": g, "display_name": f"g{i}"} for i, g in enumerate(ids["group"])]
    )
    await session.execute(
        insert(User),
        [
            {"id": u, "user_principal_name": f"u{i}@example.com", "display_name": f"u{i}"}
            for i, u in enumerate(ids["user"])
        ],
    )
    await session.execute(
        insert(Device),
        [
            {
                "id": device_id,
                "name": world.device_facts[i][2],
                "serial_number": f"S{i}",
                "platform": world.device_facts[i][0],
                "ownership": world.device_facts[i][1],
                "management_state": "managed" if world.device_facts[i][3] else "retired",
                "user_id": ids["user"][u] if (u := world.device_user[i]) is not None else None,
                "enrolled_at": now,
                "inventory": {},
            }
            for i, device_id in enumerate(ids["device"])
        ],
    )
    if world.edges:
        await session.execute(
            insert(group_children),
            [{"child_id": ids["group"][c], "parent_id": ids["group"][p]} for c, p in world.edges],
        )
    if world.device_groups:
        await session.execute(
            insert(group_devices),
            [{"device_id": ids["device"][d], "group_id": ids["group"][g]} for d, g in world.device_groups],
        )
    if world.user_groups:
        await session.execute(
            insert(group_users),
            [{"user_id": ids["user"][u], "group_id": ids["group"][g]} for u, g in world.user_groups],
        )
    await session.execute(
        insert(AssignmentFilter),
        [
            {"id": f, "name": f"f{i}", "platform": "windows", "rule": FILTER_RULES[i], "description": ""}
            for i, f in enumerate(ids["filter"])
        ],
    )
    for i, object_id in enumerate(ids["object"]):
        session.add(
            CompliancePolicy(id=object_id, name=f"p{i}", platform=world.object_platforms[i], settings={})
        )
    await session.flush()
    for obj, target, mode, group, filt, fmode in world.assignments:
        session.add(
            Assignment(
                assignable_id=ids["object"][obj],
                target=AssignmentTarget(target),
                mode=AssignmentMode(mode),
                group_id=ids["group"][group] if group is not None else None,
                filter_id=ids["filter"][filt] if filt is not None else None,
                filter_mode=FilterMode(fmode) if fmode else None,
            )
        )
    await session.flush()


def expected(world: World) -> set[tuple[uuid.UUID, uuid.UUID]]:
    """The reference: the resolver over the world, filters evaluated by the rule language in Python."""
    ids = world.ids
    parents: dict[uuid.UUID, frozenset[uuid.UUID]] = {}
    for child, parent in world.edges:
        parents[ids["group"][child]] = parents.get(ids["group"][child], frozenset()) | {ids["group"][parent]}
    rules = [parse_rule(text, DEVICE_SCHEMA) for text in FILTER_RULES]
    out = set()
    for d, device_id in enumerate(ids["device"]):
        platform, ownership, name, active = world.device_facts[d]
        user = world.device_user[d]
        facts = Device(id=device_id, name=name, serial_number=f"S{d}", platform=platform, ownership=ownership)
        values = device_attribute_values(facts)
        view = DeviceView(
            id=device_id,
            platform=Platform(platform),
            active=active,
            direct_groups=frozenset(ids["group"][g] for dd, g in world.device_groups if dd == d),
            user_id=ids["user"][user] if user is not None else None,
            user_groups=frozenset(ids["group"][g] for u, g in world.user_groups if u == user),
            parents=parents,
            filters={ids["filter"][i]: matches(rule, values) for i, rule in enumerate(rules)},
        )
        for obj, object_id in enumerate(ids["object"]):
            specs = [
                AssignmentSpec(
                    id=uuid.uuid4(),
                    target=AssignmentTarget(target),
                    mode=AssignmentMode(mode),
                    group_id=ids["group"][group] if group is not None else None,
                    filter_id=ids["filter"][filt] if filt is not None else None,
                    filter_mode=FilterMode(fmode) if fmode else None,
                )
                for o, target, mode, group, filt, fmode in world.assignments
                if o == obj
            ]
            if targeted(view, specs, world.object_platforms[obj]):
                out.add((object_id, device_id))
    return out


async def stored(session: AsyncSession) -> set[tuple[uuid.UUID, uuid.UUID]]:
    rows = await session.execute(select(device_targets.c.assignable_id, device_targets.c.device_id))
    return {(a, d) for a, d in rows.all()}


@settings(
    max_examples=40,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(world=worlds(), changes=st.lists(st.integers(0, 10_000), max_size=6))
async def test_sql_targets_agree_with_the_resolver_after_recompute_and_after_device_refreshes(
    sessionmaker: async_sessionmaker[AsyncSession], world: World, changes: list[int]
) -> None:
    async with sessionmaker() as session:
        await _clear(session)
        await _build(session, world)
        # Nothing stored yet: a full recompute by object gives the resolver's answer.
        await engine.recompute_objects(session, world.ids["object"])
        assert await stored(session) == expected(world)

        # Random changes to memberships, primary users and properties, each followed by the by-device
        # refresh of the devices it touched: the stored targets follow the resolver all along.
        for seed in changes:
            touched = await _mutate(session, world, seed)
            # Both ways of refreshing devices: resolved one by one in Python, or by the set-based SQL.
            await engine.refresh_devices(session, touched, set_based=bool(seed % 2))
            assert await stored(session) == expected(world), f"after change {seed}"
        # A recompute by object from there changes nothing.
        assert await engine.recompute_objects(session, world.ids["object"]) == set()
        await session.rollback()


async def _mutate(session: AsyncSession, world: World, seed: int) -> list[uuid.UUID]:
    """One change to the world (in the database and in ``world``); returns the devices it may affect."""
    ids = world.ids
    d, g, u = seed % N_DEVICES, (seed // 7) % N_GROUPS, (seed // 11) % N_USERS
    kind = (seed // 13) % 4
    device_id = ids["device"][d]
    if kind == 0:  # the device joins or leaves a group
        if (d, g) in world.device_groups:
            world.device_groups.discard((d, g))
            await session.execute(
                delete(group_devices).where(
                    group_devices.c.device_id == device_id, group_devices.c.group_id == ids["group"][g]
                )
            )
        else:
            world.device_groups.add((d, g))
            await session.execute(insert(group_devices).values(device_id=device_id, group_id=ids["group"][g]))
        return [device_id]
    if kind == 1:  # its primary user changes
        new_user = None if world.device_user[d] == u else u
        world.device_user[d] = new_user
        await session.execute(
            update(Device)
            .where(Device.id == device_id)
            .values(user_id=ids["user"][u] if new_user is not None else None)
        )
        return [device_id]
    if kind == 2:  # a user joins or leaves a group: every device of theirs
        if (u, g) in world.user_groups:
            world.user_groups.discard((u, g))
            await session.execute(
                delete(group_users).where(
                    group_users.c.user_id == ids["user"][u], group_users.c.group_id == ids["group"][g]
                )
            )
        else:
            world.user_groups.add((u, g))
            await session.execute(
                insert(group_users).values(user_id=ids["user"][u], group_id=ids["group"][g])
            )
        return [ids["device"][i] for i, owner in world.device_user.items() if owner == u]
    # a property a filter reads changes, or the device is retired
    platform, ownership, name, active = world.device_facts[d]
    if seed % 3 == 0:
        active = False
    else:
        platform = PLATFORMS[(PLATFORMS.index(platform) + 1) % len(PLATFORMS)]
        ownership = "personal" if ownership == "company" else "company"
    world.device_facts[d] = (platform, ownership, name, active)
    await session.execute(
        update(Device)
        .where(Device.id == device_id)
        .values(platform=platform, ownership=ownership, management_state="managed" if active else "retired")
    )
    return [device_id]
