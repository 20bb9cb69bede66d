"""Effective group membership, set-based, in SQL: the one home of the recursive group queries.

Groups nest (assigned groups hold other groups, never in a cycle); a device belongs to a group directly, or
through its primary user, or through any group nested in it. Everything here is a SQLAlchemy statement or a
query over whole sets of ids, so callers filter and join them in PostgreSQL instead of walking groups in
Python:

* ``descendants(ids)`` / ``ancestors(ids)``: the groups and every group nested in them / every group they are
  nested in (each includes the starting groups);
* ``descendant_pairs(ids)``: (root, group) for every root and each group in its subtree, one statement for
  many roots;
* ``device_direct_groups(device)`` and ``device_groups(devices)``: the groups a device belongs to directly
  (with its primary user's) and effectively (every ancestor of those);
* ``ancestor_edges(ids)``: the nesting edges above groups, to explain a chain.

The recursive CTEs use ``UNION`` (not ``UNION ALL``): they terminate even if a cycle slipped in.
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from typing import Any

from sqlalchemy import BindParameter, ColumnElement, Select, Subquery, any_, func, literal, select, union
from sqlalchemy.dialects.postgresql import ARRAY
from sqlalchemy.dialects.postgresql import UUID as PG_UUID
from sqlalchemy.ext.asyncio import AsyncSession

from corral.models import Device, group_children, group_devices, group_users

UUIDS = ARRAY(PG_UUID(as_uuid=True))


Ids = Sequence[uuid.UUID] | BindParameter[Any]


def id_array(ids: Ids) -> ColumnElement[list[uuid.UUID]]:
    """The ids as one array parameter (one statement text whatever their number). A ``bindparam`` of type
    ``UUIDS`` is taken as it is: a statement built once and executed with its values."""
    if isinstance(ids, BindParameter):
        return ids
    return literal(list(ids), UUIDS)


def in_ids(column: Any, ids: Ids) -> ColumnElement[bool]:
    """``column = ANY(:ids)``: the planner sees how many there are."""
    condition: ColumnElement[bool] = column == any_(id_array(ids))
    return condition


def _unnest(ids: Ids, name: str) -> Select[Any]:
    return select(func.unnest(id_array(ids)).label(name))


def descendants(ids: Sequence[uuid.UUID], name: str = "descendants") -> Any:
    """A recursive CTE (column ``id``) of the groups and every group nested in them, at any depth."""
    seed = _unnest(ids, "id").cte(name, recursive=True)
    return seed.union(select(group_children.c.child_id).where(group_children.c.parent_id == seed.c.id))


def ancestors(ids: Sequence[uuid.UUID] | Select[Any], name: str = "ancestors") -> Any:
    """A recursive CTE (column ``id``) of the groups and every group they are nested in, at any height.
    ``ids`` may be a statement selecting group ids."""
    seed_stmt: Select[Any] = ids if isinstance(ids, Select) else _unnest(ids, "id")
    seed = seed_stmt.cte(name, recursive=True)
    return seed.union(select(group_children.c.parent_id).where(group_children.c.child_id == seed.c.id))


def descendant_pairs(roots: Sequence[uuid.UUID], name: str = "subtrees") -> Any:
    """A recursive CTE (``root``, ``id``): each root with itself and every group nested in it."""
    root = _unnest(roots, "root").subquery()
    seed = select(root.c.root, root.c.root.label("id")).cte(name, recursive=True)
    return seed.union(
        select(seed.c.root, group_children.c.child_id).where(group_children.c.parent_id == seed.c.id)
    )


async def subtrees(session: AsyncSession, roots: Sequence[uuid.UUID]) -> dict[uuid.UUID, list[uuid.UUID]]:
    """Each root group with the groups nested in it (itself first), in one round trip."""
    if not roots:
        return {}
    pairs = descendant_pairs(roots)
    out: dict[uuid.UUID, list[uuid.UUID]] = {r: [r] for r in roots}
    for root, group_id in (await session.execute(select(pairs.c.root, pairs.c.id))).all():
        if group_id != root:
            out[root].append(group_id)
    return out


async def descendant_ids(session: AsyncSession, group_id: uuid.UUID) -> list[uuid.UUID]:
    """The group and every group nested in it, at any depth."""
    return (await subtrees(session, [group_id]))[group_id]


def device_direct_groups(device_id: Any, user_id: Any) -> Subquery:
    """The groups a device belongs to directly or through its primary user (``user_id`` may be a column or
    a value; a null primary user adds nothing). Column ``group_id``."""
    return union(
        select(group_devices.c.group_id).where(group_devices.c.device_id == device_id),
        select(group_users.c.group_id).where(group_users.c.user_id == user_id),
    ).subquery()


def device_memberships(device_ids: Ids) -> Subquery:
    """(device_id, group_id) of the direct memberships of the devices and of their primary users."""
    return union(
        select(group_devices.c.device_id, group_devices.c.group_id).where(
            in_ids(group_devices.c.device_id, device_ids)
        ),
        select(Device.id.label("device_id"), group_users.c.group_id)
        .join(group_users, group_users.c.user_id == Device.user_id)
        .where(in_ids(Device.id, device_ids)),
    ).subquery()


def device_groups(device_ids: Ids, name: str = "device_groups") -> Any:
    """A recursive CTE (``device_id``, ``group_id``): every group each device belongs to, directly, through
    its primary user, or through nesting — one statement for any number of devices."""
    direct = device_memberships(device_ids)
    seed = select(direct.c.device_id, direct.c.group_id).cte(name, recursive=True)
    return seed.union(
        select(seed.c.device_id, group_children.c.parent_id).where(
            group_children.c.child_id == seed.c.group_id
        )
    )


async def groups_of_device(session: AsyncSession, device_id: uuid.UUID) -> set[uuid.UUID]:
    """Every group the device belongs to, directly, through its primary user or through nesting."""
    closure = device_groups([device_id])
    return set((await session.scalars(select(closure.c.group_id))).all())


async def ancestor_edges(
    session: AsyncSession, start: Sequence[uuid.UUID]
) -> list[tuple[uuid.UUID, uuid.UUID]]:
    """(child, parent) nesting edges above the ``start`` groups, at any height (to explain a chain)."""
    if not start:
        return []
    seed = (
        select(group_children.c.child_id.label("child"), group_children.c.parent_id.label("parent"))
        .where(in_ids(group_children.c.child_id, start))
        .cte("up", recursive=True)
    )
    up = seed.union(
        select(group_children.c.child_id, group_children.c.parent_id).where(
            group_children.c.child_id == seed.c.parent
        )
    )
    return [(row[0], row[1]) for row in (await session.execute(select(up.c.child, up.c.parent))).all()]
