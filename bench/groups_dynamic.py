"""Dynamic groups at 100k devices against F_bulk, and S4's group part (1k groups nested 5 deep).

    .venv/bin/python bench/groups_dynamic.py [--devices 100000] [--groups 20] [--changes 200]

Measured in one run, on one database (CORRAL_DATABASE_URL's server or a throwaway embedded PostgreSQL):

* F_bulk: ``INSERT … SELECT`` of 100k (group, device) rows into a table shaped like ``group_devices``
  (same primary key and index, no foreign keys): the bulk-write floor.
* Full evaluation of a typical rule (Corral's code: ``membership.evaluate_group``, committed): from an empty
  group, again with nothing changed, and again after 1 % of the fleet changed.
* Incremental refresh of one changed device against ~20 dynamic groups, p50/p99 over ``--changes`` changes,
  for three strategies: Corral's (one SELECT evaluating every rule for the device, then at most one DELETE
  and one INSERT), the Python evaluator, and one SQL statement pair per group. The floor is the same change
  committed with no group work at all.
* S4 (groups part): 1,000 assigned groups nested 5 deep covering the fleet: the root's effective device set
  (materialised, 100k rows) against 3 x F_bulk, and moving one device between two leaf groups (the service,
  audit events included) against 50 ms p99.
"""

from __future__ import annotations

import argparse
import asyncio
import random
import statistics
import time
import uuid
from collections.abc import Awaitable, Callable
from typing import Any

from common import database, percentile
from sqlalchemy import delete, literal, select, text
from sqlalchemy.dialects.postgresql import UUID, insert
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from corral.groups import membership, repository
from corral.groups.rule_sql import device_attribute_values
from corral.groups.rules import evaluate as explain
from corral.groups.schemas import MemberRef, MemberType
from corral.groups.service import group_service
from corral.kit import context
from corral.kit.db import create_engine, create_sessionmaker
from corral.models import Device, DynamicKind, Group, MembershipType, group_children, group_devices
from corral.rbac.permissions import ALL_PERMISSIONS
from corral.rbac.principal import EVERYWHERE, Grant, Principal

TYPICAL_RULE = 'device.deviceOSType -eq "Windows" -and device.deviceOwnership -eq "Company"'
RULES = [
    TYPICAL_RULE,
    'device.deviceOSType -in ["iOS", "iPad"]',
    'device.deviceOSType -eq "MacMDM"',
    'device.deviceOSVersion -startsWith "10.0.2"',
    'device.deviceOSVersion -startsWith "17."',
    'device.deviceOwnership -eq "Personal"',
    'device.deviceModel -contains "latitude"',
    'device.deviceModel -startsWith "ThinkPad"',
    'device.deviceManufacturer -eq "Dell Inc."',
    'device.deviceManufacturer -in ["HP", "Lenovo"]',
    "device.isRooted -eq true",
    "device.isRooted -ne true",
    'device.cpuArchitecture -eq "arm64"',
    'device.displayName -startsWith "kiosk-"',
    'device.displayName -match "^lab-[0-9]+$"',
    'device.deviceOSType -eq "Android" -and -not (device.deviceModel -contains "test")',
    'device.serialNumber -startsWith "SN1"',
    '(device.deviceOSType -eq "Windows" -or device.deviceOSType -eq "MacMDM") -and device.isRooted -ne true',
    'device.deviceOSVersion -notStartsWith "10." -and device.deviceOwnership -eq "Company"',
    "device.objectId -ne null",
]

GENERATE_DEVICES = """
INSERT INTO devices (id, name, serial_number, platform, os_version, model, manufacturer, ownership,
                     management_state, compliance_state, enrolled_at, jailbroken, cpu_architecture, inventory)
SELECT gen_random_uuid(),
       (ARRAY['desk-', 'kiosk-', 'lab-', 'laptop-'])[1 + g % 4] || g,
       'SN' || g,
       (ARRAY['windows', 'windows', 'windows', 'windows', 'macos', 'ios', 'ipados', 'android', 'linux',
              'windows'])[1 + g % 10],
       (ARRAY['10.0.22631', '10.0.19045', '17.5.1', '14.5', '10.0.26100', NULL])[1 + g % 6],
       (ARRAY['Latitude 7440', 'ThinkPad X1', 'iPhone 15', 'Pixel 8', 'Test rig', NULL])[1 + (g / 7) % 6],
       (ARRAY['Dell Inc.', 'Lenovo', 'Apple', 'Google', 'HP', NULL])[1 + (g / 11) % 6],
       CASE WHEN g % 10 < 7 THEN 'company' ELSE 'personal' END,
       CASE WHEN g % 50 = 0 THEN 'retired' ELSE 'managed' END,
       'unknown',
       now(),
       CASE WHEN g % 97 = 0 THEN true WHEN g % 3 = 0 THEN NULL ELSE false END,
       CASE WHEN g % 4 = 0 THEN 'arm64' ELSE 'x64' END,
       '{}'::jsonb
FROM generate_series(1, :n) AS g
"""


def ms(seconds: float) -> str:
    return f"{seconds * 1000:,.1f} ms"


async def timed(call: Callable[[], Awaitable[Any]]) -> float:
    started = time.perf_counter()
    await call()
    return time.perf_counter() - started


async def median_of(
    runs: int, setup: Callable[[], Awaitable[None]], call: Callable[[], Awaitable[Any]]
) -> float:
    times = []
    for _ in range(runs):
        await setup()
        times.append(await timed(call))
    return statistics.median(times)


# ------------------------------------------------------------------------------------------------- floors
async def f_bulk(maker: async_sessionmaker[AsyncSession], runs: int) -> float:
    """INSERT … SELECT of every device into a group_devices-shaped table (PK and index, no FKs)."""
    async with maker() as session:
        await session.execute(text("DROP TABLE IF EXISTS bulk_floor"))
        await session.execute(
            text(
                "CREATE TABLE bulk_floor (group_id uuid NOT NULL, device_id uuid NOT NULL, "
                "PRIMARY KEY (group_id, device_id))"
            )
        )
        await session.execute(text("CREATE INDEX ON bulk_floor (device_id)"))
        await session.commit()

    async def setup() -> None:
        async with maker() as session:
            await session.execute(text("TRUNCATE bulk_floor"))
            await session.commit()

    async def run() -> None:
        async with maker() as session:
            await session.execute(
                text("INSERT INTO bulk_floor (group_id, device_id) SELECT :g, id FROM devices"),
                {"g": uuid.uuid4()},
            )
            await session.commit()

    return await median_of(runs, setup, run)


async def f_bulk_fk(maker: async_sessionmaker[AsyncSession], runs: int) -> float:
    """The same INSERT … SELECT into group_devices itself: its foreign keys check every row (a
    FOR KEY SHARE lock on the device and the group), which is what a membership row costs."""
    group_id = uuid.uuid4()
    async with maker() as session:
        session.add(Group(id=group_id, display_name="floor", description="", membership_type="assigned"))
        await session.commit()

    async def setup() -> None:
        async with maker() as session:
            await session.execute(delete(group_devices).where(group_devices.c.group_id == group_id))
            await session.commit()

    async def run() -> None:
        async with maker() as session:
            await session.execute(
                text("INSERT INTO group_devices (group_id, device_id) SELECT :g, id FROM devices"),
                {"g": group_id},
            )
            await session.commit()

    took = await median_of(runs, setup, run)
    async with maker() as session:
        await session.execute(delete(Group).where(Group.id == group_id))
        await session.commit()
    return took


# ------------------------------------------------------------------------------------------ full evaluation
async def make_group(maker: async_sessionmaker[AsyncSession], name: str, rule: str) -> uuid.UUID:
    async with maker() as session:
        group = Group(
            id=uuid.uuid4(),
            display_name=name,
            description="",
            membership_type=MembershipType.dynamic,
            dynamic_kind=DynamicKind.device,
            rule=rule,
        )
        session.add(group)
        await session.commit()
        return group.id


async def evaluate(maker: async_sessionmaker[AsyncSession], group_id: uuid.UUID) -> membership.Evaluation:
    async with maker() as session:
        group = await repository.get(session, group_id, for_update=True)
        assert group is not None
        result = await membership.evaluate_group(session, group)
        await session.commit()
        return result


async def full_evaluation(maker: async_sessionmaker[AsyncSession], runs: int) -> dict[str, Any]:
    group_id = await make_group(maker, "typical", TYPICAL_RULE)
    broad_id = await make_group(maker, "everything", "device.objectId -ne null")
    out: dict[str, Any] = {}

    async def empty(gid: uuid.UUID) -> None:
        async with maker() as session:
            await session.execute(delete(group_devices).where(group_devices.c.group_id == gid))
            await session.commit()

    async def nothing() -> None:
        return None

    out["typical_from_empty"] = await median_of(
        runs, lambda: empty(group_id), lambda: evaluate(maker, group_id)
    )
    out["typical_members"] = (await evaluate(maker, group_id)).members
    out["typical_unchanged"] = await median_of(runs, nothing, lambda: evaluate(maker, group_id))
    out["broad_from_empty"] = await median_of(
        runs, lambda: empty(broad_id), lambda: evaluate(maker, broad_id)
    )
    out["broad_members"] = (await evaluate(maker, broad_id)).members

    async def churn() -> None:  # 1 % of the fleet moves between Windows and macOS
        async with maker() as session:
            await session.execute(
                text(
                    "UPDATE devices SET platform = "
                    "CASE platform WHEN 'windows' THEN 'macos' ELSE 'windows' END "
                    "WHERE id IN (SELECT id FROM devices TABLESAMPLE BERNOULLI (1))"
                )
            )
            await session.commit()

    out["typical_after_1pct"] = await median_of(runs, churn, lambda: evaluate(maker, group_id))
    async with maker() as session:
        for gid in (group_id, broad_id):
            await session.execute(delete(Group).where(Group.id == gid))
        await session.commit()
    return out


# -------------------------------------------------------------------------------------------- incremental
async def _dynamic_device_groups(session: AsyncSession) -> list[Group]:
    stmt = (
        select(Group)
        .where(Group.membership_type == MembershipType.dynamic, Group.dynamic_kind == DynamicKind.device)
        .order_by(Group.id)
        .with_for_update(read=True)
    )
    return list((await session.scalars(stmt)).all())


async def python_refresh(session: AsyncSession, device: Device) -> None:
    """Alternative 1: the Python evaluator (device_attribute_values) against every rule; audited alike."""
    await session.flush()
    groups = await _dynamic_device_groups(session)
    values = device_attribute_values(device, enrollment_profile_name=None)
    active = device.management_state.value not in ("retired", "wiped")
    wanted = {
        g.id
        for g in groups
        if active and explain(membership.parsed(DynamicKind.device, g.rule or ""), values).result
    }
    ids = [g.id for g in groups]
    current = set(
        (
            await session.scalars(
                select(group_devices.c.group_id).where(
                    group_devices.c.device_id == device.id, group_devices.c.group_id.in_(ids)
                )
            )
        ).all()
    )
    if current - wanted:
        await session.execute(
            delete(group_devices).where(
                group_devices.c.device_id == device.id, group_devices.c.group_id.in_(current - wanted)
            )
        )
    if wanted - current:
        await session.execute(
            insert(group_devices)
            .values([{"group_id": g, "device_id": device.id} for g in wanted - current])
            .on_conflict_do_nothing()
        )
    by_id = {g.id: g for g in groups}
    change = membership.MembershipChange(
        added=[by_id[g] for g in wanted - current], removed=[by_id[g] for g in current - wanted]
    )
    await membership._audit(session, DynamicKind.device, device.id, device.name, change)


async def per_group_sql_refresh(session: AsyncSession, device: Device) -> None:
    """Alternative 2: a DELETE and an INSERT … SELECT per group, restricted to the device; audited alike."""
    await session.flush()
    added, removed = [], []
    for group in await _dynamic_device_groups(session):
        match = membership.predicate(
            DynamicKind.device, membership.parsed(DynamicKind.device, group.rule or "")
        )
        gone = await session.execute(
            delete(group_devices)
            .where(
                group_devices.c.group_id == group.id,
                group_devices.c.device_id == device.id,
                ~select(literal(1)).where(Device.id == device.id, match).exists(),
            )
            .returning(group_devices.c.group_id)
        )
        removed.extend(group for _ in gone.all())
        new = await session.execute(
            insert(group_devices)
            .from_select(
                ["group_id", "device_id"],
                select(literal(group.id, UUID(as_uuid=True)), Device.id).where(Device.id == device.id, match),
            )
            .on_conflict_do_nothing()
            .returning(group_devices.c.group_id)
        )
        added.extend(group for _ in new.all())
    change = membership.MembershipChange(added=added, removed=removed)
    await membership._audit(session, DynamicKind.device, device.id, device.name, change)


async def corral_refresh(session: AsyncSession, device: Device) -> None:
    await membership.refresh_device(session, device)


async def no_refresh(session: AsyncSession, device: Device) -> None:
    return None


MODELS = ["Latitude 7440", "ThinkPad X1", "iPhone 15", "Pixel 8", "Test rig", None]
VERSIONS = ["10.0.22631", "10.0.19045", "17.5.1", "14.5", "10.0.26100", None]


async def incremental(
    maker: async_sessionmaker[AsyncSession], device_ids: list[uuid.UUID], changes: int
) -> dict[str, list[float]]:
    strategies: dict[str, Callable[[AsyncSession, Device], Awaitable[None]]] = {
        "floor: the change alone": no_refresh,
        "Corral: one SELECT for all rules": corral_refresh,
        "Python evaluator": python_refresh,
        "one SQL pair per group": per_group_sql_refresh,
    }
    rng = random.Random(4)
    out: dict[str, list[float]] = {}
    for name, strategy in strategies.items():
        latencies: list[float] = []
        for _ in range(changes):
            device_id = rng.choice(device_ids)
            started = time.perf_counter()
            async with maker() as session:
                device = await session.get_one(Device, device_id, with_for_update=True)
                device.model = rng.choice(MODELS)
                device.os_version = rng.choice(VERSIONS)
                await strategy(session, device)
                await session.commit()
            latencies.append(time.perf_counter() - started)
        out[name] = latencies
    return out


# ---------------------------------------------------------------------------------------- S4: nested tree
async def build_tree(maker: async_sessionmaker[AsyncSession]) -> list[list[uuid.UUID]]:
    """1,000 assigned groups, 5 levels (1, 3, 12, 84, 900); the leaves hold the fleet between them. Returns
    the groups by level (the root alone first)."""
    sizes = [1, 3, 12, 84, 900]
    levels: list[list[uuid.UUID]] = [[uuid.uuid4() for _ in range(n)] for n in sizes]
    async with maker() as session:
        await session.execute(
            insert(Group),
            [
                {
                    "id": gid,
                    "display_name": f"tree {depth}.{i}",
                    "description": "",
                    "membership_type": "assigned",
                    "source": "local",
                }
                for depth, level in enumerate(levels)
                for i, gid in enumerate(level)
            ],
        )
        edges = [
            {"parent_id": levels[d][i * len(levels[d]) // len(levels[d + 1])], "child_id": child}
            for d in range(len(levels) - 1)
            for i, child in enumerate(levels[d + 1])
        ]
        await session.execute(insert(group_children), edges)
        leaves = levels[-1]
        await session.execute(
            text(
                "INSERT INTO group_devices (group_id, device_id) "
                "SELECT (CAST(:leaves AS uuid[]))[1 + (row_number() OVER (ORDER BY id) % :n)::int], id "
                "FROM devices"
            ),
            {"leaves": leaves, "n": len(leaves)},
        )
        await session.commit()
        await session.execute(text("ANALYZE groups, group_children, group_devices"))
        await session.commit()
    return levels


async def nested_tree(
    maker: async_sessionmaker[AsyncSession], device_ids: list[uuid.UUID], moves: int, runs: int
) -> dict[str, Any]:
    """1,000 assigned groups, 5 levels (1, 3, 12, 84, 900); the leaves hold the fleet between them."""
    levels = await build_tree(maker)
    sizes = [len(level) for level in levels]
    leaves = levels[-1]
    root = levels[0][0]
    out: dict[str, Any] = {"groups": sum(sizes)}

    async with maker() as session:
        await session.execute(text("CREATE TABLE IF NOT EXISTS effective_floor (device_id uuid PRIMARY KEY)"))
        await session.commit()

    async def setup() -> None:
        async with maker() as session:
            await session.execute(text("TRUNCATE effective_floor"))
            await session.commit()

    async def materialise() -> None:
        tree = repository.descendants(root)
        async with maker() as session:
            await session.execute(
                insert(text_table("effective_floor")).from_select(
                    ["device_id"],
                    select(group_devices.c.device_id)
                    .where(group_devices.c.group_id.in_(select(tree.c.id)))
                    .distinct(),
                )
            )
            await session.commit()

    out["effective"] = await median_of(runs, setup, materialise)
    async with maker() as session:
        out["effective_rows"] = int(await session.scalar(text("SELECT count(*) FROM effective_floor")) or 0)

    # The transitive member count as the groups page asks for it.
    async def count() -> None:
        async with maker() as session:
            from corral.groups.schemas import MemberFilter

            await repository.member_page(
                session, root, MemberFilter(transitive=True, limit=50), EVERYWHERE, EVERYWHERE
            )

    out["members_page"] = await median_of(runs, _nothing, count)

    grant = Grant(uuid.uuid4(), "bench", uuid.uuid4(), "bench", ALL_PERMISSIONS, EVERYWHERE)
    principal = Principal(uuid.uuid4(), "bench", "bench", (grant,))
    context.set_current(context.RequestContext(correlation_id="bench", actor=context.SYSTEM))
    rng = random.Random(9)
    latencies = []
    for _ in range(moves):
        device_id = rng.choice(device_ids)
        target = rng.choice(leaves)
        started = time.perf_counter()
        async with maker() as session:
            current = await session.scalar(
                select(group_devices.c.group_id).where(
                    group_devices.c.device_id == device_id, group_devices.c.group_id.in_(leaves)
                )
            )
            if current is not None and current != target:
                await group_service.remove_member(
                    session, principal, current, MemberRef(type=MemberType.device, id=device_id)
                )
            await group_service.add_member(
                session, principal, target, MemberRef(type=MemberType.device, id=device_id)
            )
            await session.commit()
        latencies.append(time.perf_counter() - started)
    out["moves"] = latencies
    return out


async def _nothing() -> None:
    return None


def text_table(name: str) -> Any:
    from sqlalchemy import Column, MetaData, Table

    return Table(name, MetaData(), Column("device_id", UUID(as_uuid=True), primary_key=True))


# ------------------------------------------------------------------------------------------------------ run
async def run(args: argparse.Namespace) -> None:
    db = await database("corral_bench_groups")
    engine = create_engine(db.url, pool_size=4, max_overflow=0)
    maker = create_sessionmaker(engine)
    context.set_current(context.RequestContext(correlation_id="bench", actor=context.SYSTEM))
    try:
        generate = time.perf_counter()
        async with maker() as session:
            await session.execute(text(GENERATE_DEVICES), {"n": args.devices})
            await session.commit()
        generate = time.perf_counter() - generate
        async with maker() as session:
            await session.execute(text("ANALYZE"))
            await session.commit()
            device_ids = list(
                (await session.scalars(select(Device.id).where(Device.management_state == "managed"))).all()
            )
        print(f"{args.devices:,} devices generated (INSERT … SELECT generate_series) in {ms(generate)}")

        bulk = await f_bulk(maker, args.runs)
        print(
            f"F_bulk  INSERT … SELECT of {args.devices:,} membership-shaped rows: {ms(bulk)} "
            f"(median of {args.runs})"
        )

        bulk_fk = await f_bulk_fk(maker, args.runs)
        print(
            f"F_bulk' the same into group_devices (foreign keys checked): {ms(bulk_fk)} "
            f"= {bulk_fk / bulk:.2f} x F_bulk"
        )

        full = await full_evaluation(maker, args.runs)
        print("\nFull evaluation (membership.evaluate_group, committed), median of", args.runs)
        for key, label in (
            ("typical_from_empty", f"typical rule from empty ({full['typical_members']:,} members)"),
            ("typical_unchanged", "typical rule again, nothing changed"),
            ("typical_after_1pct", "typical rule after 1 % of devices changed"),
            ("broad_from_empty", f"device.objectId -ne null from empty ({full['broad_members']:,} members)"),
        ):
            print(
                f"  {label:<58} {ms(full[key]):>12}   {full[key] / bulk:5.2f} x F_bulk"
                f"   {full[key] / bulk_fk:5.2f} x F_bulk'"
            )

        # ~20 dynamic groups for the incremental case.
        for index, rule in enumerate(RULES[: args.groups]):
            gid = await make_group(maker, f"rule {index}", rule)
            await evaluate(maker, gid)
        async with maker() as session:
            await session.execute(text("ANALYZE"))
            await session.commit()
        print(
            f"\nIncremental refresh of one changed device, {args.groups} dynamic groups, "
            f"{args.changes} changes"
        )
        results = await incremental(maker, device_ids, args.changes)
        floor = results["floor: the change alone"]
        for name, latencies in results.items():
            extra = percentile(latencies, 50) - percentile(floor, 50)
            print(
                f"  {name:<36} p50 {ms(percentile(latencies, 50)):>10}  "
                f"p99 {ms(percentile(latencies, 99)):>10}"
                + (f"   (+{ms(extra)} over the floor at p50)" if latencies is not floor else "")
            )

        s4 = await nested_tree(maker, device_ids, args.changes, args.runs)
        print(f"\nS4, groups part: {s4['groups']:,} assigned groups nested 5 deep over the fleet")
        print(
            f"  root's effective device set materialised ({s4['effective_rows']:,} rows)   "
            f"{ms(s4['effective']):>10}"
            f"   {s4['effective'] / bulk:5.2f} x F_bulk (target ≤ 3)"
        )
        print(f"  root's members page (transitive, with counts)               {ms(s4['members_page']):>10}")
        moves = s4["moves"]
        print(
            f"  move one device between leaf groups (service, audited)      p50 {ms(percentile(moves, 50))}"
            f"  p99 {ms(percentile(moves, 99))} (target p99 ≤ 50 ms)"
        )
    finally:
        await engine.dispose()
        if db.handle is not None:
            db.handle.cleanup()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--devices", type=int, default=100_000)
    parser.add_argument("--groups", type=int, default=20)
    parser.add_argument("--changes", type=int, default=200)
    parser.add_argument("--runs", type=int, default=3)
    asyncio.run(run(parser.parse_args()))


if __name__ == "__main__":
    main()
