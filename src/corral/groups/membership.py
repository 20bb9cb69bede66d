"""Dynamic membership, computed by PostgreSQL.

* **Full evaluation** of one group (on create, on a rule change, on demand): two set-based statements, a
  DELETE of the members that no longer match and an INSERT … SELECT of the new matches, with the compiled rule
  in both. Nothing is loaded into Python.
* **Incremental refresh** of one device or user (enrollment, a check-in that changed its attributes, an
  ownership change, retire/wipe, a user created or edited): one SELECT evaluates every dynamic group's rule
  for that one row (a boolean column per group), then at most one DELETE and one INSERT change its
  memberships. The same compiled SQL decides both ways, so a full evaluation and an incremental one always
  agree.

Both run in the caller's transaction: a change shows in the group the moment it commits.

Locking: a full evaluation holds the group row ``FOR NO KEY UPDATE`` (its UPDATE of ``evaluated_at``/``rule``
takes it); an incremental refresh reads the dynamic groups ``FOR SHARE``. So a refresh running alongside a
rule change either finishes first (and the evaluation then sees the device as it now is) or waits and uses
the new rule: no membership computed from a stale rule survives.

Retired and wiped devices belong to no dynamic group. Deleting a device or user removes its memberships
through ``ON DELETE CASCADE``.
"""

from __future__ import annotations

import logging
import time
import uuid
from collections.abc import Hashable, Sequence
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

from sqlalchemy import (
    ColumnElement,
    Table,
    and_,
    delete,
    exists,
    func,
    literal,
    select,
    text,
)
from sqlalchemy.dialects.postgresql import ARRAY, UUID, insert
from sqlalchemy.ext.asyncio import AsyncSession

from corral.audit.service import audit_service
from corral.groups.rule_sql import DEVICE_FIELDS, SCHEMAS, USER_FIELDS, EntitySchema, compile_rule
from corral.groups.rules import EntityKind, Rule, RuleError, parse_rule
from corral.kit.time import utcnow
from corral.models import (
    Device,
    DynamicKind,
    Group,
    ManagementState,
    MembershipType,
    User,
    group_devices,
    group_users,
)

log = logging.getLogger("corral.groups")

ENDED_STATES = (ManagementState.retired, ManagementState.wiped)
BATCH = 100
"""Rules evaluated per SELECT in an incremental refresh (a column each)."""


def schema_of(kind: DynamicKind) -> EntitySchema:
    return SCHEMAS[EntityKind(kind.value)]


@lru_cache(maxsize=4096)
def parsed(kind: DynamicKind, text: str) -> Rule:
    """The rule parsed against the bound schema of ``kind`` (cached: rules are immutable values)."""
    return parse_rule(text, schema_of(kind))


@lru_cache(maxsize=4096)
def compiled(kind: DynamicKind, text: str) -> ColumnElement[bool]:
    """The rule as a SQL expression (cached too: building the expression costs more than running it)."""
    return compile_rule(parsed(kind, text), schema_of(kind))


def active_device() -> ColumnElement[bool]:
    """Devices that may belong to dynamic groups: all but retired and wiped ones."""
    return Device.management_state.not_in(ENDED_STATES)


def predicate(kind: DynamicKind, rule: Rule) -> ColumnElement[bool]:
    """The rows of ``kind`` the rule selects (devices: only active ones)."""
    compiled = compile_rule(rule, schema_of(kind))
    return and_(active_device(), compiled) if kind is DynamicKind.device else compiled


@dataclass(frozen=True)
class _Target:
    entity: type[Device] | type[User]
    table: Table
    member: str  # the membership table's column naming the member

    @property
    def member_column(self) -> ColumnElement[uuid.UUID]:
        column: ColumnElement[uuid.UUID] = self.table.c[self.member]
        return column


TARGETS: dict[DynamicKind, _Target] = {
    DynamicKind.device: _Target(Device, group_devices, "device_id"),
    DynamicKind.user: _Target(User, group_users, "user_id"),
}


# ------------------------------------------------------------------------------------------ full evaluation
@dataclass(frozen=True)
class Evaluation:
    added: int
    removed: int
    members: int
    milliseconds: float


async def evaluate_group(session: AsyncSession, group: Group) -> Evaluation:
    """Recompute a dynamic group's members from its rule: two set-based statements. The caller holds the
    group row locked (it has just updated it, or selected it FOR UPDATE)."""
    assert group.membership_type is MembershipType.dynamic and group.rule and group.dynamic_kind
    started = time.perf_counter()
    kind = DynamicKind(group.dynamic_kind)
    rule = parsed(kind, group.rule)
    target = TARGETS[kind]
    entity, table, member = target.entity, target.table, target.member_column
    match = predicate(kind, rule)
    # Plan these for this group, never with a generic plan: after five runs of a prepared statement
    # PostgreSQL may switch to one built for an "average" group id, which estimates a handful of members
    # and loops over 38,000 of them quadratically (35 s instead of 0.2 s: bench/groups_dynamic.py).
    await session.execute(text("SET LOCAL plan_cache_mode = force_custom_plan"))
    removed = await session.execute(
        delete(table).where(
            table.c.group_id == group.id,
            ~exists(select(literal(1)).select_from(entity).where(entity.id == member, match)),
        )
    )
    existing = table.alias("existing")
    new_rows = select(literal(group.id, UUID(as_uuid=True)), entity.id).where(
        match,
        ~exists().where(existing.c.group_id == group.id, existing.c[target.member] == entity.id),
    )
    # No ON CONFLICT clause (it doubles the cost of a large insert): the NOT EXISTS above leaves out the
    # current members, and nothing else adds to this group meanwhile (its row is locked: refreshes wait).
    added = await session.execute(insert(table).from_select(["group_id", target.member], new_rows))
    members = int(
        await session.scalar(select(func.count()).select_from(table).where(table.c.group_id == group.id)) or 0
    )
    group.evaluated_at = utcnow()
    await session.flush()
    return Evaluation(
        added=int(added.rowcount or 0),  # type: ignore[attr-defined]
        removed=int(removed.rowcount or 0),  # type: ignore[attr-defined]
        members=members,
        milliseconds=(time.perf_counter() - started) * 1000,
    )


# ------------------------------------------------------------------------------------- incremental refresh
@dataclass(frozen=True)
class MembershipChange:
    added: list[Group]
    removed: list[Group]


def device_rule_inputs(device: Device) -> tuple[Hashable, ...]:
    """Everything a device rule can read, plus whether the device is still active: when this tuple is
    unchanged, no dynamic membership of the device can have changed."""
    return (
        *(getattr(device, field) for field in DEVICE_FIELDS.values()),
        device.enrollment_token_id,
        device.management_state in ENDED_STATES,
    )


def user_rule_inputs(user: User) -> tuple[Hashable, ...]:
    return tuple(getattr(user, field) for field in USER_FIELDS.values())


async def _dynamic_groups(session: AsyncSession, kind: DynamicKind) -> list[Group]:
    stmt = (
        select(Group)
        .where(Group.membership_type == MembershipType.dynamic, Group.dynamic_kind == kind)
        .order_by(Group.id)
        .with_for_update(read=True)  # FOR SHARE: a concurrent rule change waits, or is waited for
    )
    return list((await session.scalars(stmt)).all())


async def _refresh(
    session: AsyncSession, kind: DynamicKind, object_id: uuid.UUID, active: bool
) -> MembershipChange | None:
    await session.flush()  # the rules must see the object as it is now
    groups = await _dynamic_groups(session, kind)
    if not groups:
        return None
    target = TARGETS[kind]
    entity, table, member = target.entity, target.table, target.member_column
    evaluated: list[Group] = []
    columns: list[ColumnElement[Any]] = []
    for group in groups:
        try:
            columns.append(compiled(kind, group.rule or ""))
        except RuleError as exc:  # saved under an older schema: keep its members as they are
            log.warning("dynamic group %s has a rule that no longer parses: %s", group.id, exc)
            continue
        evaluated.append(group)
    ids = [g.id for g in evaluated]
    # Its current memberships in these groups, in the same round trip as the first batch of rules.
    current_ids = (
        select(func.coalesce(func.array_agg(table.c.group_id), literal([], ARRAY(UUID(as_uuid=True)))))
        .where(member == object_id, table.c.group_id.in_(ids))
        .scalar_subquery()
    )
    wanted: set[uuid.UUID] = set()
    current: set[uuid.UUID] = set()
    for start in range(0, len(evaluated), BATCH):
        chunk = columns[start : start + BATCH] if active else []
        first = start == 0
        stmt = select(*chunk, *([current_ids] if first else [])).where(entity.id == object_id)
        row = (await session.execute(stmt)).first()
        if row is None:  # deleted meanwhile: its memberships went with it
            return None
        results = tuple(row)
        if first:
            current = set(results[-1])
            results = results[:-1]
        wanted.update(g.id for g, ok in zip(evaluated[start : start + BATCH], results, strict=False) if ok)
        if not active:
            break
    to_add, to_remove = wanted - current, current - wanted
    if to_remove:
        await session.execute(delete(table).where(member == object_id, table.c.group_id.in_(to_remove)))
    if to_add:
        await session.execute(
            insert(table)
            .values([{"group_id": g, target.member: object_id} for g in sorted(to_add)])
            .on_conflict_do_nothing()
        )
    by_id = {g.id: g for g in evaluated}
    return MembershipChange(
        added=[by_id[g] for g in sorted(to_add)], removed=[by_id[g] for g in sorted(to_remove)]
    )


async def _audit(
    session: AsyncSession, kind: DynamicKind, object_id: uuid.UUID, name: str, change: MembershipChange | None
) -> MembershipChange | None:
    if change is None or not (change.added or change.removed):
        return change
    changes: list[tuple[str, Any, Any]] = []
    if change.added:
        changes.append(("groups_joined", None, sorted(g.display_name for g in change.added)))
    if change.removed:
        changes.append(("groups_left", sorted(g.display_name for g in change.removed), None))
    await audit_service.record(
        session,
        activity="group.dynamic_membership",
        category="group",
        operation="update",
        target_type=kind.value,
        target_id=object_id,
        target_name=name,
        changes=changes,
        detail="dynamic group rules re-evaluated for this " + kind.value,
    )
    return change


async def refresh_device(
    session: AsyncSession, device: Device, *, unless: Sequence[Hashable] | None = None
) -> MembershipChange | None:
    """Re-evaluate every dynamic device group for this one device and change its memberships to match.

    ``unless``: the device's ``device_rule_inputs`` from before a change; when nothing a rule can read has
    changed, this returns at once without touching the database (the check-in fast path)."""
    if unless is not None and tuple(unless) == device_rule_inputs(device):
        return None
    active = device.management_state not in ENDED_STATES
    change = await _refresh(session, DynamicKind.device, device.id, active)
    return await _audit(session, DynamicKind.device, device.id, device.name, change)


async def refresh_user(
    session: AsyncSession, user: User, *, unless: Sequence[Hashable] | None = None
) -> MembershipChange | None:
    """Re-evaluate every dynamic user group for this one user (call after creating or editing a user)."""
    if unless is not None and tuple(unless) == user_rule_inputs(user):
        return None
    change = await _refresh(session, DynamicKind.user, user.id, True)
    return await _audit(session, DynamicKind.user, user.id, user.user_principal_name, change)
