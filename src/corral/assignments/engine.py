"""The effective targets of every assigned object, computed by PostgreSQL and kept current.

``device_targets`` holds, for every object, the active devices it reaches (``resolver.py`` states the rules).
Two ways keep it current, with one SQL generator behind both so they always agree:

* **by object** (``recompute_objects``): an object's assignments changed, a filter it uses changed, or
  groups it targets gained or lost members through nesting or a dynamic rule. One statement per batch of
  objects computes the devices each reaches (set-based: semi-joins on the groups' members, the filters
  compiled to SQL), deletes the targets that no longer hold and inserts the new ones.
* **by device** (``refresh_devices``): a device joined or left a group, changed properties a filter reads,
  changed primary user, enrolled, or was retired or wiped. The candidate objects are those with an
  assignment to all devices, all users or a group the device belongs to (effectively); the same statement,
  restricted to those devices, brings their targets up to date.

Every device whose targets changed gets a new desired-state version, in the same statement: by object, the
new targets carry the version they were added at and the devices that lost one get a version row
(``device_desired_states``); by device, each changed device gets a version row, as does every device of an
object whose settings changed (``bump_versions``). ``desired_version`` reads the greater. The caller's
transaction holds it all: a change shows the moment it commits.

Locking: recomputing by object takes the assignments advisory lock exclusively, refreshing by device (and
bumping the versions of an object's devices) takes it shared, each before it reads anything. So an
assignment change and a membership change never each miss the other: whichever comes second waits and then
sees the first one committed. And a version taken under the exclusive lock is greater than every version
committed before it, with none taken meanwhile, which is what lets object-wide changes skip the per-device
rows.
"""

from __future__ import annotations

import functools
import logging
import uuid
from collections.abc import Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy import (
    ColumnElement,
    Select,
    bindparam,
    delete,
    exists,
    func,
    literal,
    not_,
    or_,
    select,
    text,
    union,
    union_all,
)
from sqlalchemy.dialects.postgresql import UUID as PG_UUID
from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.ext.asyncio import AsyncSession

from corral.assignments.resolver import APPLIES_TO, AssignmentSpec, DeviceView, targeted
from corral.groups import effective
from corral.groups.membership import ENDED_STATES, active_device, compiled
from corral.groups.rules import RuleError
from corral.models import (
    Assignable,
    Assignment,
    AssignmentFilter,
    AssignmentMode,
    AssignmentTarget,
    Device,
    DeviceDesiredState,
    DynamicKind,
    FilterMode,
    Platform,
    device_targets,
    group_devices,
    group_users,
)

log = logging.getLogger("corral.assignments")

ASSIGNMENTS_LOCK = 0x636F7272616C61  # "corrala": object recomputes (exclusive) vs device refreshes (shared)
OBJECTS_PER_STATEMENT = 50
DEVICES_ONE_BY_ONE = 20  # more devices than this are refreshed by one set-based statement
_LOCK_KEY = "corral.assignments_lock"


# ----------------------------------------------------------------------------------------------- locking
#: Called with the devices whose targets changed, in the transaction of the change (compliance evaluation
#: registers here; a listener decides itself whether to work now or queue a job).
TargetsListener = Callable[[AsyncSession, set[uuid.UUID]], Awaitable[None]]
LISTENERS: list[TargetsListener] = []
#: Called with the devices whose desired-state version moved for any reason (targets or what an object asks):
#: delivery wakes them.
VERSION_LISTENERS: list[TargetsListener] = []


async def notify(session: AsyncSession, changed: set[uuid.UUID]) -> set[uuid.UUID]:
    if changed:
        for listener in (*LISTENERS, *VERSION_LISTENERS):
            await listener(session, changed)
    return changed


async def lock(session: AsyncSession, *, exclusive: bool) -> None:
    """Take the assignments lock for the rest of the transaction (once; an exclusive request after a shared
    one takes the exclusive lock too)."""
    held = session.info.get(_LOCK_KEY)
    if held == "exclusive" or (held == "shared" and not exclusive):
        return
    function = func.pg_advisory_xact_lock if exclusive else func.pg_advisory_xact_lock_shared
    await session.execute(select(function(ASSIGNMENTS_LOCK)))
    session.info[_LOCK_KEY] = "exclusive" if exclusive else "shared"


# ------------------------------------------------------------------------------------------------ plans
@dataclass(frozen=True)
class Plan:
    """One object's assignments, ready for SQL: each group target with its subtree (itself and every group
    nested in it) and each filter's rule."""

    assignable_id: uuid.UUID
    platform: Platform
    specs: tuple[AssignmentSpec, ...]
    subtrees: dict[uuid.UUID, list[uuid.UUID]]
    rules: dict[uuid.UUID, str]


async def load_plans(session: AsyncSession, assignable_ids: Sequence[uuid.UUID]) -> list[Plan]:
    """The plans of the objects (objects deleted meanwhile are left out), in three round trips whatever
    their number."""
    if not assignable_ids:
        return []
    platforms = dict(
        (
            await session.execute(
                select(Assignable.id, Assignable.platform).where(
                    effective.in_ids(Assignable.id, assignable_ids)
                )
            )
        ).all()
    )
    rows = (
        await session.execute(
            select(Assignment, AssignmentFilter.rule)
            .outerjoin(AssignmentFilter, AssignmentFilter.id == Assignment.filter_id)
            .where(effective.in_ids(Assignment.assignable_id, assignable_ids))
            .order_by(Assignment.assignable_id, Assignment.id)
        )
    ).all()
    group_ids = sorted({a.group_id for a, _ in rows if a.group_id is not None})
    subtrees = await effective.subtrees(session, group_ids)
    by_object: dict[uuid.UUID, list[tuple[Assignment, str | None]]] = {i: [] for i in assignable_ids}
    for assignment, rule in rows:
        by_object[assignment.assignable_id].append((assignment, rule))
    plans = []
    for object_id in assignable_ids:
        if object_id not in platforms:  # deleted meanwhile
            continue
        items = by_object[object_id]
        plans.append(
            Plan(
                assignable_id=object_id,
                platform=Platform(platforms[object_id]),
                specs=tuple(spec_of(a) for a, _ in items),
                subtrees={a.group_id: subtrees[a.group_id] for a, _ in items if a.group_id is not None},
                rules={
                    a.filter_id: rule for a, rule in items if a.filter_id is not None and rule is not None
                },
            )
        )
    return plans


def spec_of(assignment: Assignment) -> AssignmentSpec:
    return AssignmentSpec(
        id=assignment.id,
        target=AssignmentTarget(assignment.target),
        mode=AssignmentMode(assignment.mode),
        group_id=assignment.group_id,
        filter_id=assignment.filter_id,
        filter_mode=FilterMode(assignment.filter_mode) if assignment.filter_mode else None,
    )


# ------------------------------------------------------------------------------------------ the SQL
def filter_condition(rule: str) -> ColumnElement[bool]:
    """A filter's rule as a condition on ``Device`` (cached). A rule that no longer parses matches
    nothing: an include-mode filter then lets no device through, an exclude-mode one lets every one."""
    try:
        return compiled(DynamicKind.device, rule)
    except RuleError as exc:
        log.warning("an assignment filter's rule no longer parses: %s", exc)
        return literal(False)


def _conditions(plan: Plan, spec: AssignmentSpec, device_ids: Sequence[uuid.UUID] | None) -> list[Any]:
    conditions: list[Any] = [active_device(), Device.platform.in_(sorted(APPLIES_TO[plan.platform]))]
    if device_ids is not None:
        conditions.append(effective.in_ids(Device.id, device_ids))
    if spec.filter_id is not None:
        rule = plan.rules.get(spec.filter_id)
        matched = filter_condition(rule) if rule is not None else literal(False)
        conditions.append(not_(matched) if spec.filter_mode is FilterMode.exclude else matched)
    return conditions


def reach_selects(
    plan: Plan, spec: AssignmentSpec, device_ids: Sequence[uuid.UUID] | None
) -> list[Select[Any]]:
    """The devices one assignment's target (and filter) reaches, as plain selects of ``Device.id`` that
    PostgreSQL runs as semi-joins (no OR across subqueries: that would defeat hashing at scale)."""
    conditions = _conditions(plan, spec, device_ids)
    if spec.target is AssignmentTarget.all_devices:
        return [select(Device.id).where(*conditions)]
    if spec.target is AssignmentTarget.all_users:
        return [select(Device.id).where(Device.user_id.is_not(None), *conditions)]
    assert spec.group_id is not None
    groups = plan.subtrees[spec.group_id]
    return [
        select(Device.id).where(
            Device.id.in_(
                select(group_devices.c.device_id).where(effective.in_ids(group_devices.c.group_id, groups))
            ),
            *conditions,
        ),
        select(Device.id).where(
            Device.user_id.in_(
                select(group_users.c.user_id).where(effective.in_ids(group_users.c.group_id, groups))
            ),
            *conditions,
        ),
    ]


def wanted(plans: Iterable[Plan], device_ids: Sequence[uuid.UUID] | None = None) -> Select[Any] | None:
    """(assignable_id, device_id) of every target the plans call for (restricted to ``device_ids``), or
    None when they call for none."""
    parts: list[Select[Any]] = []
    for plan in plans:
        includes = [
            s
            for spec in plan.specs
            if spec.mode is AssignmentMode.include
            for s in reach_selects(plan, spec, device_ids)
        ]
        if not includes:
            continue
        excludes = [
            s
            for spec in plan.specs
            if spec.mode is AssignmentMode.exclude
            for s in reach_selects(plan, spec, device_ids)
        ]
        included = (union(*includes) if len(includes) > 1 else includes[0]).subquery("included")
        stmt = select(
            literal(plan.assignable_id, PG_UUID(as_uuid=True)).label("assignable_id"),
            included.c.id.label("device_id"),
        )
        if excludes:
            excluded = (union(*excludes) if len(excludes) > 1 else excludes[0]).subquery("excluded")
            stmt = stmt.where(~exists().where(excluded.c.id == included.c.id))
        parts.append(stmt)
    if not parts:
        return None
    return parts[0] if len(parts) == 1 else union_all(*parts)  # type: ignore[return-value]


async def _apply(
    session: AsyncSession, wanted_stmt: Select[Any] | None, scope: ColumnElement[bool], *, exclusive: bool
) -> set[uuid.UUID]:
    """Make ``device_targets`` within ``scope`` (a condition on its rows) equal to ``wanted_stmt``, and give
    every device whose targets changed a new desired-state version. One statement; returns those devices.

    ``exclusive``: the caller holds the assignments lock exclusively, so nothing else inserts these targets
    meanwhile and the insert needs no ON CONFLICT clause (which doubles the cost of a large insert)."""
    targets = device_targets
    if wanted_stmt is None:
        removed = delete(targets).where(scope).returning(targets.c.device_id).cte("removed")
        changed = select(removed.c.device_id).distinct().cte("changed")
    else:
        w = wanted_stmt.cte("wanted")
        removed = (
            delete(targets)
            .where(
                scope,
                ~exists().where(
                    w.c.assignable_id == targets.c.assignable_id, w.c.device_id == targets.c.device_id
                ),
            )
            .returning(targets.c.device_id)
            .cte("removed")
        )
        existing = targets.alias("existing")
        new = select(w.c.assignable_id, w.c.device_id).where(
            ~exists().where(
                existing.c.assignable_id == w.c.assignable_id, existing.c.device_id == w.c.device_id
            )
        )
        if exclusive:
            # Alone under the lock: the targets carry the version they were added at, and only the devices
            # that lost a target get a version row of their own (see DeviceDesiredState).
            insert_new = insert(targets).from_select(
                ["assignable_id", "device_id", "added_version"], new.add_columns(next_version())
            )
            added = insert_new.returning(targets.c.device_id).cte("added")
            versioned = new_versions(select(removed.c.device_id).distinct()).cte("versioned")
            changed_ids = union(
                select(removed.c.device_id), select(added.c.device_id), select(versioned.c.device_id)
            )
            # One row, one array: 100,000 ids come back faster than as 100,000 rows.
            every = await session.scalar(select(func.array_agg(changed_ids.subquery().c[0])))
            return set(every or ())
        insert_new = insert(targets).from_select(["assignable_id", "device_id"], new).on_conflict_do_nothing()
        added = insert_new.returning(targets.c.device_id).cte("added")
        changed = union(select(removed.c.device_id), select(added.c.device_id)).cte("changed")
    return set((await session.scalars(new_versions(select(changed.c.device_id)))).all())


def next_version() -> Any:
    """One new value of the desired-state sequence for the whole statement (an uncorrelated subquery,
    evaluated once): a version only has to exceed what came before, and 100,000 devices then cost one
    ``nextval``, not 100,000."""
    return select(func.nextval(text("'desired_state_versions'"))).scalar_subquery()


def desired_version(device_id: Any) -> ColumnElement[int]:
    """A device's desired-state version (``device_id``: a value or a column to correlate with): the greater
    of its own row's and its targets' greatest ``added_version`` (the model's DeviceDesiredState says why;
    two index probes); 0 when nothing was ever assigned."""
    own = (
        select(DeviceDesiredState.version).where(DeviceDesiredState.device_id == device_id).scalar_subquery()
    )
    targets = (
        select(func.max(device_targets.c.added_version))
        .where(device_targets.c.device_id == device_id)
        .scalar_subquery()
    )
    version: ColumnElement[int] = func.greatest(func.coalesce(own, 0), func.coalesce(targets, 0))
    return version


def new_versions(device_ids: Select[Any]) -> Any:
    """A statement giving each device selected a new desired-state version; it returns their ids.

    One value of the sequence for the whole statement (``next_version``)."""
    stmt = insert(DeviceDesiredState).from_select(
        ["device_id", "version"], select(device_ids.subquery().c[0], next_version())
    )
    return stmt.on_conflict_do_update(
        index_elements=[DeviceDesiredState.device_id],
        set_={"version": stmt.excluded.version, "changed_at": func.now()},
    ).returning(DeviceDesiredState.device_id)


# ------------------------------------------------------------------------------------------- by object
async def recompute_objects(session: AsyncSession, assignable_ids: Sequence[uuid.UUID]) -> set[uuid.UUID]:
    """Bring the targets of these objects up to date (set-based). Returns the devices whose targets
    changed (each has a new desired-state version)."""
    if not assignable_ids:
        return set()
    await lock(session, exclusive=True)
    await session.flush()
    # Planned for these very objects, never with a generic plan (see groups/membership.evaluate_group).
    await session.execute(text("SET LOCAL plan_cache_mode = force_custom_plan"))
    changed: set[uuid.UUID] = set()
    ids = sorted(set(assignable_ids))
    for start in range(0, len(ids), OBJECTS_PER_STATEMENT):
        batch = ids[start : start + OBJECTS_PER_STATEMENT]
        plans = await load_plans(session, batch)
        scope = effective.in_ids(device_targets.c.assignable_id, batch)
        # Whole objects: hash joins, never nested loops. Statistics of device_targets lag behind a large
        # change, and a nested loop over a table the same statement is filling grows quadratically.
        await session.execute(text("SET LOCAL enable_nestloop = off"))
        try:
            changed |= await _apply(session, wanted(plans), scope, exclusive=True)
        finally:
            await session.execute(text("RESET enable_nestloop"))
    return await notify(session, changed)


async def bump_versions(session: AsyncSession, assignable_ids: Sequence[uuid.UUID]) -> set[uuid.UUID]:
    """A new desired-state version for every device these objects target (what they ask changed), under the
    shared assignments lock like every per-device version."""
    if not assignable_ids:
        return set()
    await lock(session, exclusive=False)
    targeted = (
        select(device_targets.c.device_id)
        .where(effective.in_ids(device_targets.c.assignable_id, assignable_ids))
        .distinct()
    )
    changed = set((await session.scalars(new_versions(targeted))).all())
    for listener in VERSION_LISTENERS:
        await listener(session, changed)
    return changed


async def release_objects(session: AsyncSession, assignable_ids: Sequence[uuid.UUID]) -> set[uuid.UUID]:
    """Before objects are deleted: drop their targets, a new version for the devices they had."""
    if not assignable_ids:
        return set()
    await lock(session, exclusive=True)
    changed = await _apply(
        session, None, effective.in_ids(device_targets.c.assignable_id, assignable_ids), exclusive=True
    )
    return await notify(session, changed)


async def forget_devices(session: AsyncSession, device_ids: Sequence[uuid.UUID]) -> None:
    """Before devices are deleted: their targets and desired-state versions (no foreign keys cascade)."""
    if device_ids:
        await session.execute(
            delete(device_targets).where(effective.in_ids(device_targets.c.device_id, device_ids))
        )
        await session.execute(
            delete(DeviceDesiredState).where(effective.in_ids(DeviceDesiredState.device_id, device_ids))
        )


async def objects_targeting_groups(session: AsyncSession, group_ids: Sequence[uuid.UUID]) -> list[uuid.UUID]:
    """Objects with an assignment to one of these groups or to a group they are nested in: the objects whose
    targets a membership change of these groups can change."""
    if not group_ids:
        return []
    above = effective.ancestors(group_ids)
    stmt = (
        select(Assignment.assignable_id)
        .where(Assignment.group_id.in_(select(above.c.id)))
        .distinct()
        .order_by(Assignment.assignable_id)
    )
    return list((await session.scalars(stmt)).all())


async def objects_using_filter(session: AsyncSession, filter_id: uuid.UUID) -> list[uuid.UUID]:
    stmt = (
        select(Assignment.assignable_id)
        .where(Assignment.filter_id == filter_id)
        .distinct()
        .order_by(Assignment.assignable_id)
    )
    return list((await session.scalars(stmt)).all())


# ------------------------------------------------------------------------------------------- by device
async def candidate_objects(session: AsyncSession, device_ids: Sequence[uuid.UUID]) -> list[uuid.UUID]:
    """Objects that may reach these devices: assigned to all devices, all users, or a group the devices
    (or their primary users) belong to, effectively."""
    closure = effective.device_groups(device_ids)
    stmt = (
        select(Assignment.assignable_id)
        .where(
            or_(
                Assignment.target.in_([AssignmentTarget.all_devices, AssignmentTarget.all_users]),
                Assignment.group_id.in_(select(closure.c.group_id)),
            )
        )
        .distinct()
        .order_by(Assignment.assignable_id)
    )
    return list((await session.scalars(stmt)).all())


async def refresh_devices(
    session: AsyncSession, device_ids: Sequence[uuid.UUID], *, set_based: bool | None = None
) -> set[uuid.UUID]:
    """Bring these devices' targets up to date (after a membership, property, primary-user or lifecycle
    change). Returns those whose targets changed (each has a new desired-state version).

    A few devices are resolved one by one (their groups, the assignments that can reach them, their filters:
    three small queries, then the resolver in Python and at most one write); many devices at once by the
    set-based statement of ``recompute_objects``, restricted to them (``set_based`` forces either way: the
    property tests hold the two together)."""
    ids = sorted(set(device_ids))
    if not ids:
        return set()
    await lock(session, exclusive=False)
    await session.flush()
    if not (set_based if set_based is not None else len(ids) > DEVICES_ONE_BY_ONE):
        changed: set[uuid.UUID] = set()
        for device_id in ids:
            if await _refresh_one(session, device_id):
                changed.add(device_id)
        return await notify(session, changed)
    candidates = await candidate_objects(session, ids)
    plans = await load_plans(session, candidates)
    changed = await _apply(
        session, wanted(plans, ids), effective.in_ids(device_targets.c.device_id, ids), exclusive=False
    )
    return await notify(session, changed)


@functools.cache
def _one_device_statements() -> tuple[Select[Any], Select[Assignment, Platform, str]]:
    """``_refresh_one``'s two reads, built once: building these statements (a recursive CTE, an ORM join)
    cost more CPU than PostgreSQL spends running them, on every enrollment. Parameters: ``device_id``,
    ``device_ids`` (the same id as an array) and ``group_ids``."""
    device_id = bindparam("device_id", type_=PG_UUID(as_uuid=True))
    closure = effective.device_groups(bindparam("device_ids", type_=effective.UUIDS))
    state = select(
        Device.platform,
        Device.management_state,
        Device.user_id,
        func.array(select(closure.c.group_id).scalar_subquery()),
        func.array(
            select(device_targets.c.assignable_id)
            .where(device_targets.c.device_id == Device.id)
            .scalar_subquery()
        ),
    ).where(Device.id == device_id)
    candidates = (
        select(Assignment, Assignable.platform, AssignmentFilter.rule)
        .join(Assignable, Assignable.id == Assignment.assignable_id)
        .outerjoin(AssignmentFilter, AssignmentFilter.id == Assignment.filter_id)
        .where(
            or_(
                Assignment.target.in_([AssignmentTarget.all_devices, AssignmentTarget.all_users]),
                effective.in_ids(Assignment.group_id, bindparam("group_ids", type_=effective.UUIDS)),
            )
        )
    )
    return state, candidates


async def _refresh_one(session: AsyncSession, device_id: uuid.UUID) -> bool:
    """One device's targets, resolved in Python from what decides them; whether they changed."""
    state, candidates_of = _one_device_statements()
    row = (await session.execute(state, {"device_id": device_id, "device_ids": [device_id]})).first()
    if row is None:  # deleted meanwhile
        return False
    platform, state_value, user_id, group_ids, current_ids = row
    member_of = frozenset(group_ids or ())
    current = set(current_ids or ())
    candidates = (await session.execute(candidates_of, {"group_ids": sorted(member_of)})).all()
    rules = {a.filter_id: rule for a, _, rule in candidates if a.filter_id is not None and rule is not None}
    matched: dict[uuid.UUID, bool] = {}
    if rules:
        conditions = [filter_condition(rule) for rule in rules.values()]
        values = (await session.execute(select(*conditions).where(Device.id == device_id))).one()
        matched = {f: bool(v) for f, v in zip(rules, values, strict=True)}
    # The device's whole closure stands for its direct groups: a group target reaches it exactly when the
    # group is in it (the chain only matters to explanations).
    view = DeviceView(
        id=device_id,
        platform=Platform(platform),
        active=state_value not in ENDED_STATES,
        direct_groups=member_of,
        user_id=user_id,
        filters=matched,
    )
    specs: dict[uuid.UUID, list[AssignmentSpec]] = {}
    platforms: dict[uuid.UUID, Platform] = {}
    for assignment, object_platform, _ in candidates:
        specs.setdefault(assignment.assignable_id, []).append(spec_of(assignment))
        platforms[assignment.assignable_id] = Platform(object_platform)
    wanted_ids = {o for o, items in specs.items() if targeted(view, items, platforms[o])}
    add, remove = wanted_ids - current, current - wanted_ids
    if not add and not remove:
        return False
    if remove:
        await session.execute(
            delete(device_targets).where(
                device_targets.c.device_id == device_id,
                effective.in_ids(device_targets.c.assignable_id, sorted(remove)),
            )
        )
    if add:
        await session.execute(
            insert(device_targets)
            .values([{"assignable_id": o, "device_id": device_id} for o in sorted(add)])
            .on_conflict_do_nothing()
        )
    await session.execute(new_versions(select(literal(device_id, PG_UUID(as_uuid=True)))))
    return True


async def devices_of_users(session: AsyncSession, user_ids: Sequence[uuid.UUID]) -> list[uuid.UUID]:
    if not user_ids:
        return []
    stmt = (
        select(Device.id)
        .where(effective.in_ids(Device.user_id, user_ids), active_device())
        .order_by(Device.id)
    )
    return list((await session.scalars(stmt)).all())


async def targets_of(session: AsyncSession, device_id: uuid.UUID) -> set[uuid.UUID]:
    stmt = select(device_targets.c.assignable_id).where(device_targets.c.device_id == device_id)
    return set((await session.scalars(stmt)).all())
