"""S4, assignments part: a policy assigned to the root of 1,000 nested groups covering 100k devices.

    .venv/bin/python bench/assignments.py [--devices 100000] [--moves 200] [--runs 3]

Measured in one run, on one database (CORRAL_DATABASE_URL's server or a throwaway embedded PostgreSQL):

* F_bulk: ``INSERT … SELECT`` of every device into a table shaped like ``device_targets`` (same primary key
  and index, no foreign keys): the bulk-write floor.
* Assigning a compliance policy to the root of a Windows fleet, so that it reaches every active device
  (Corral's service: validation, the assignment row, the set-based recompute of ``device_targets`` with a
  new desired-state version for every device reached, the audit event; committed): from nothing, and
  assigning again with nothing changed. Target: 3 x F_bulk at most.
* Moving one device between two leaf groups (the groups service: membership rows, audit events, the
  device's targets re-resolved and its desired-state version changed; committed), p50/p99 over ``--moves``
  moves, with 20 policies assigned (to the root, to subtrees, to all devices, with a filter, with an
  exclusion). Target: p99 ≤ 50 ms. The floor is the same move with no policy assigned.
* Compliance evaluation of every device the root reaches after a policy change, as the worker runs it (one
  ``compliance.evaluate`` job per chunk of devices, each its own transaction, one after the other): every
  device has reported its security facts, one policy checks the firewall, disk encryption and a minimum OS
  version. From nothing (no earlier results), then after the policy's minimum version changed, one job at a
  time; then after another change with the worker's concurrency (its default number of jobs at once)
  (``--compliance-runs`` times each). Target: 5 x F_bulk at most.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import statistics
import time
import uuid

from common import database, percentile
from groups_dynamic import GENERATE_DEVICES, build_tree, median_of, ms
from sqlalchemy import delete, func, select, text
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker

from corral.assignments.engine import desired_version
from corral.assignments.schemas import AssignmentIn
from corral.assignments.service import assignment_service
from corral.config import Settings
from corral.groups.schemas import MemberRef, MemberType
from corral.groups.service import group_service
from corral.kit import context
from corral.kit.db import create_engine, create_sessionmaker
from corral.models import (
    Assignment,
    AssignmentFilter,
    AssignmentTarget,
    CompliancePolicy,
    Device,
    group_devices,
)
from corral.rbac.permissions import ALL_PERMISSIONS
from corral.rbac.principal import EVERYWHERE, Grant, Principal


async def f_bulk(maker: async_sessionmaker[AsyncSession], runs: int) -> float:
    async with maker() as session:
        await session.execute(text("DROP TABLE IF EXISTS targets_floor"))
        await session.execute(
            text(
                "CREATE TABLE targets_floor (assignable_id uuid NOT NULL, device_id uuid NOT NULL, "
                "added_version bigint NOT NULL DEFAULT 0, PRIMARY KEY (assignable_id, device_id))"
            )
        )
        await session.execute(text("CREATE INDEX ON targets_floor (device_id, added_version)"))
        await session.commit()

    async def setup() -> None:
        async with maker() as session:
            await session.execute(text("TRUNCATE targets_floor"))
            await session.commit()

    async def run() -> None:
        async with maker() as session:
            await session.execute(
                text(
                    "INSERT INTO targets_floor (assignable_id, device_id, added_version) "
                    "SELECT :o, id, 1 FROM devices"
                ),
                {"o": uuid.uuid4()},
            )
            await session.commit()

    return await median_of(runs, setup, run)


def principal() -> Principal:
    grant = Grant(uuid.uuid4(), "bench", uuid.uuid4(), "bench", ALL_PERMISSIONS, EVERYWHERE)
    return Principal(uuid.uuid4(), "bench", "bench", (grant,))


async def make_policy(maker: async_sessionmaker[AsyncSession], name: str) -> uuid.UUID:
    object_id = uuid.uuid4()
    async with maker() as session:
        session.add(CompliancePolicy(id=object_id, name=name, platform="windows", settings={}))
        await session.commit()
    return object_id


async def assign(
    maker: async_sessionmaker[AsyncSession], object_id: uuid.UUID, items: list[AssignmentIn]
) -> int:
    async with maker() as session:
        obj = await assignment_service.get_object(session, principal(), object_id, for_update=True)
        out = await assignment_service.replace(session, principal(), obj, items)
        await session.commit()
        return out.devices


async def clear(maker: async_sessionmaker[AsyncSession], object_id: uuid.UUID) -> None:
    async with maker() as session:
        await session.execute(delete(Assignment).where(Assignment.assignable_id == object_id))
        await session.execute(text("DELETE FROM device_targets WHERE assignable_id = :o"), {"o": object_id})
        await session.commit()


async def leaf_of(
    maker: async_sessionmaker[AsyncSession], leaves: list[uuid.UUID], device_id: uuid.UUID
) -> uuid.UUID | None:
    """The leaf group the device is in (the benchmark's bookkeeping, not part of a move)."""
    async with maker() as session:
        return await session.scalar(
            select(group_devices.c.group_id).where(
                group_devices.c.device_id == device_id, group_devices.c.group_id == func.any(leaves)
            )
        )


async def move(
    maker: async_sessionmaker[AsyncSession],
    device_id: uuid.UUID,
    current: uuid.UUID | None,
    target: uuid.UUID,
) -> None:
    """What an admin's move is: out of its group, into the other (the groups service, one transaction)."""
    who = principal()
    async with maker() as session:
        if current is not None and current != target:
            await group_service.remove_member(
                session, who, current, MemberRef(type=MemberType.device, id=device_id)
            )
        await group_service.add_member(session, who, target, MemberRef(type=MemberType.device, id=device_id))
        await session.commit()


async def moves(
    maker: async_sessionmaker[AsyncSession],
    leaves: list[uuid.UUID],
    device_ids: list[uuid.UUID],
    count: int,
    seed: int,
) -> tuple[list[float], int]:
    rng = random.Random(seed)
    latencies: list[float] = []
    changed = 0
    for _ in range(count):
        device_id = rng.choice(device_ids)
        target = rng.choice(leaves)
        async with maker() as session:
            before = await session.scalar(select(desired_version(device_id)))
        current = await leaf_of(maker, leaves, device_id)
        started = time.perf_counter()
        await move(maker, device_id, current, target)
        latencies.append(time.perf_counter() - started)
        async with maker() as session:
            after = await session.scalar(select(desired_version(device_id)))
        changed += int(after != before)
    return latencies, changed


INVENTORY = """
UPDATE devices SET inventory_updated_at = now(),
       firewall_enabled = abs(hashtext(id::text)) % 5 <> 0,
       disk_encrypted = abs(hashtext(id::text)) % 3 <> 0
"""


async def evaluate_all(
    maker: async_sessionmaker[AsyncSession], device_ids: list[uuid.UUID], lanes: int = 1
) -> float:
    """Every device evaluated as the worker's jobs do it: CHUNK devices per transaction, ``lanes`` jobs at a
    time (the worker runs ``CORRAL_WORKER_CONCURRENCY`` at once)."""
    from corral.compliance.jobs import CHUNK
    from corral.compliance.service import compliance_service

    ordered = sorted(device_ids)
    chunks = iter([ordered[start : start + CHUNK] for start in range(0, len(ordered), CHUNK)])

    async def lane() -> None:
        for chunk in chunks:  # shared: each lane takes the next job
            async with maker() as session:
                await compliance_service.evaluate(session, chunk, reason="bench")
                await session.commit()

    started = time.perf_counter()
    await asyncio.gather(*(lane() for _ in range(lanes)))
    return time.perf_counter() - started


async def compliance(
    engine: AsyncEngine, maker: async_sessionmaker[AsyncSession], root: uuid.UUID, bulk: float, runs: int
) -> None:
    async with maker() as session:
        await session.execute(text(INVENTORY))
        await session.commit()
    policy = uuid.uuid4()
    settings = {"firewall.required": True, "disk_encryption.required": True, "os.min_version": "10.0.19045"}
    async with maker() as session:
        session.add(
            CompliancePolicy(id=policy, name="compliance bench", platform="windows", settings=settings)
        )
        await session.commit()
    await assign(maker, policy, [AssignmentIn(target=AssignmentTarget.group, group_id=root)])
    async with maker() as session:
        await session.execute(text("DELETE FROM procrastinate.procrastinate_jobs"))  # the worker's, run below
        reached = list(
            (
                await session.scalars(
                    text("SELECT device_id FROM device_targets WHERE assignable_id = :p"), {"p": policy}
                )
            ).all()
        )
        await session.execute(text("ANALYZE"))
        await session.commit()

    async def reset() -> None:
        async with maker() as session:
            for table in (
                "device_compliance_policies",
                "device_compliance_history",
            ):
                await session.execute(text(f"DELETE FROM {table}"))  # noqa: S608 - fixed names
            await session.execute(text("UPDATE devices SET compliance_state = 'unknown'"))
            await session.execute(
                text("UPDATE compliance_policies SET settings = CAST(:s AS jsonb) WHERE id = :p"),
                {"s": json.dumps(settings), "p": policy},
            )
            await session.commit()
        async with engine.connect() as connection:  # VACUUM runs outside a transaction
            autocommit = await connection.execution_options(isolation_level="AUTOCOMMIT")
            await autocommit.execute(text("VACUUM ANALYZE"))

    async def changed(minimum: str = "10.0.22631") -> None:
        async with maker() as session:
            newer = json.dumps({**settings, "os.min_version": minimum})
            await session.execute(
                text("UPDATE compliance_policies SET settings = CAST(:s AS jsonb) WHERE id = :p"),
                {"s": newer, "p": policy},
            )
            # A new version, as the service makes it.
            await session.execute(
                text("UPDATE assignables SET version = version + 1 WHERE id = :p"), {"p": policy}
            )
            await session.commit()

    lanes = Settings.model_fields["worker_concurrency"].default
    first, second, concurrent = [], [], []
    for _ in range(runs):
        await reset()
        first.append(await evaluate_all(maker, reached))
        await changed()
        second.append(await evaluate_all(maker, reached))
        await changed("10.0.26100")  # another change, evaluated as the worker runs its jobs
        concurrent.append(await evaluate_all(maker, reached, lanes))
    async with maker() as session:
        states = dict(
            (await session.execute(text("SELECT compliance_state, count(*) FROM devices GROUP BY 1"))).all()
        )
    print(
        f"\nS4: compliance evaluation of the {len(reached):,} devices reached (worker jobs), median of {runs}"
    )
    for label, values in (
        ("from nothing, one job at a time", first),
        ("after the policy changed, one job at a time", second),
        (f"after it changed again, {lanes} jobs at a time (the worker's)", concurrent),
    ):
        value = statistics.median(values)
        print(f"  {label:<52} {ms(value):>12}   {value / bulk:5.2f} x F_bulk (target ≤ 5)")
    print(f"  device states after: {dict(sorted((str(k), v) for k, v in states.items()))}")
    await clear(maker, policy)  # the moves below measure their own policies


async def run(args: argparse.Namespace) -> None:
    db = await database("corral_bench_assignments")
    engine = create_engine(db.url, pool_size=4, max_overflow=0)
    maker = create_sessionmaker(engine)
    context.set_current(context.RequestContext(correlation_id="bench", actor=context.SYSTEM))
    try:
        async with maker() as session:
            await session.execute(text(GENERATE_DEVICES), {"n": args.devices})
            # A Windows fleet: the root's policy reaches every active device (S4: "covering 100k devices").
            await session.execute(text("UPDATE devices SET platform = 'windows'"))
            await session.commit()
        levels = await build_tree(maker)
        root, leaves = levels[0][0], levels[-1]
        async with maker() as session:
            await session.execute(text("ANALYZE"))
            await session.commit()
            device_ids = list(
                (await session.scalars(select(Device.id).where(Device.management_state == "managed"))).all()
            )
            windows = int(
                await session.scalar(
                    select(func.count()).where(
                        Device.platform == "windows", Device.management_state == "managed"
                    )
                )
                or 0
            )
        groups = sum(len(level) for level in levels)
        print(f"{args.devices:,} devices ({windows:,} active), {groups:,} nested groups")

        bulk = await f_bulk(maker, args.runs)
        print(f"F_bulk  INSERT … SELECT of {args.devices:,} target-shaped rows: {ms(bulk)}")

        policy = await make_policy(maker, "root policy")
        to_root = [AssignmentIn(target=AssignmentTarget.group, group_id=root)]
        reached = 0

        async def first() -> None:
            nonlocal reached
            reached = await assign(maker, policy, to_root)

        from_empty = await median_of(args.runs, lambda: clear(maker, policy), first)
        again = await median_of(args.runs, _nothing, first)
        print(f"\nS4: assign a policy to the root (service, committed), median of {args.runs}")
        label = f"from nothing ({reached:,} devices reached)"
        print(f"  {label:<52} {ms(from_empty):>12}   {from_empty / bulk:5.2f} x F_bulk (target ≤ 3)")
        print(f"  {'again, nothing changed':<52} {ms(again):>12}   {again / bulk:5.2f} x F_bulk")

        # The floor for moves: no policy at all.
        await clear(maker, policy)
        await compliance(engine, maker, root, bulk, args.compliance_runs)
        floor, _ = await moves(maker, leaves, device_ids, args.moves, seed=1)
        # 20 policies: the root, subtrees, all devices, a filter, an exclusion.
        async with maker() as session:
            lab = AssignmentFilter(
                id=uuid.uuid4(), name="lab", platform="windows", rule='device.displayName -startsWith "lab-"'
            )
            session.add(lab)
            await session.commit()
        await assign(maker, policy, to_root)
        for index in range(19):
            other = await make_policy(maker, f"policy {index}")
            items: list[AssignmentIn]
            if index % 4 == 0:
                items = [AssignmentIn(target=AssignmentTarget.all_devices, filter_id=lab.id)]
            elif index % 4 == 1:
                items = [
                    AssignmentIn(target=AssignmentTarget.group, group_id=levels[1][index % 3]),
                    AssignmentIn(target=AssignmentTarget.group, group_id=levels[3][index], mode="exclude"),
                ]
            else:
                items = [AssignmentIn(target=AssignmentTarget.group, group_id=levels[2][index % 12])]
            await assign(maker, other, items)
        latencies, changed = await moves(maker, leaves, device_ids, args.moves, seed=2)
        print(f"\nS4: move one device between leaf groups (groups service, committed), {args.moves} moves")
        for label, values in (("floor: no policy assigned", floor), ("20 policies assigned", latencies)):
            print(f"  {label:<28} p50 {ms(percentile(values, 50)):>10}  p99 {ms(percentile(values, 99)):>10}")
        print(f"  (target p99 ≤ 50 ms; {changed} of {args.moves} moves changed the desired-state version)")
    finally:
        await engine.dispose()
        if db.handle is not None:
            db.handle.cleanup()


async def _nothing() -> None:
    return None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--devices", type=int, default=100_000)
    parser.add_argument("--moves", type=int, default=200)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--compliance-runs", type=int, default=1)
    asyncio.run(run(parser.parse_args()))


if __name__ == "__main__":
    main()
