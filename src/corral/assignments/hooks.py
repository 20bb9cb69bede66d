"""What the rest of Corral calls when something that decides assignment targets changes: a device's
properties, state or primary user, a user's or device's groups, the nesting of groups, a dynamic group's
members. Each brings dynamic groups and then ``device_targets`` up to date in the caller's transaction (or,
for a change that reaches many targets, in a worker job queued in that transaction)."""

from __future__ import annotations

import logging
import uuid
from collections.abc import Hashable, Sequence

from sqlalchemy.ext.asyncio import AsyncSession

from corral.assignments import engine
from corral.assignments import repository as repo
from corral.groups import membership
from corral.groups.membership import MembershipChange
from corral.models import Device, User

log = logging.getLogger("corral.assignments")

# Recomputing objects whose targets number more than this is left to the worker (assignments.recompute).
INLINE_TARGETS = 20_000


def device_inputs(device: Device) -> tuple[Hashable, ...]:
    """Everything about a device that dynamic rules and filters read, its lifecycle and its primary user:
    when this is unchanged, neither its dynamic groups nor its targets can have changed."""
    return (*membership.device_rule_inputs(device), device.user_id)


async def device_changed(
    session: AsyncSession, device: Device, *, unless: Sequence[Hashable] | None = None
) -> MembershipChange | None:
    """After an enrollment, a check-in or an edit: the device's dynamic groups, then its targets.
    ``unless``: its ``device_inputs`` from before the change; when they are the same, nothing is done (no
    query: the check-in's fast path)."""
    if unless is not None and tuple(unless) == device_inputs(device):
        return None
    change = await membership.refresh_device(session, device)
    await engine.refresh_devices(session, [device.id])
    return change


async def user_changed(
    session: AsyncSession, user: User, *, unless: Sequence[Hashable] | None = None
) -> MembershipChange | None:
    """After a user is created or edited: their dynamic groups; their devices' targets if those changed."""
    change = await membership.refresh_user(session, user, unless=unless)
    if change is not None and (change.added or change.removed):
        await users_regrouped(session, [user.id])
    return change


async def devices_regrouped(session: AsyncSession, device_ids: Sequence[uuid.UUID]) -> None:
    """Devices joined or left groups (assigned membership)."""
    await engine.refresh_devices(session, device_ids)


async def users_regrouped(session: AsyncSession, user_ids: Sequence[uuid.UUID]) -> None:
    """Users joined or left groups: the devices they are the primary user of."""
    await engine.refresh_devices(session, await engine.devices_of_users(session, user_ids))


async def groups_regrouped(session: AsyncSession, group_ids: Sequence[uuid.UUID]) -> None:
    """These groups gained or lost members wholesale (a nested group added or removed, a dynamic rule
    evaluated, a group deleted from inside them): recompute the objects assigned to them or to any group
    they are nested in — at once, or in the worker when those objects reach many devices."""
    objects = await engine.objects_targeting_groups(session, group_ids)
    if not objects:
        return
    await recompute(session, objects)


async def recompute(session: AsyncSession, object_ids: Sequence[uuid.UUID]) -> None:
    """Recompute objects now, or queue it for the worker when they reach many devices."""
    if await repo.count_target_rows(session, object_ids) > INLINE_TARGETS:
        from corral.assignments.jobs import defer_recompute

        await defer_recompute(session, object_ids)
        return
    await engine.recompute_objects(session, object_ids)
