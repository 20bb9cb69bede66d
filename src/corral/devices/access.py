"""Who can do this to that device? Every enabled administrator holding the action's permission and
devices:read over the device (what ``DeviceService.get`` checks before any action), each with the role
assignments that give them the action there: directly or through a member group (nested ones too), by scope
tags and scope groups as the device stands now. API tokens narrowed to fewer permissions are not counted:
the answer is about people."""

from __future__ import annotations

import uuid
from collections import defaultdict
from dataclasses import dataclass, field

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from corral.auth import repository as auth_repository
from corral.auth.service import scope_of
from corral.commands.registry import REGISTRY, CommandType
from corral.commands.service import command_service
from corral.devices.schemas import HolderOut, WhoCanOut
from corral.devices.service import reaches
from corral.errors import NotFound
from corral.models import Device, User, group_users
from corral.rbac import repository as rbac_repository
from corral.rbac.permissions import P
from corral.rbac.roles import role_permissions


@dataclass
class Holder:
    user: User
    via: list[str] = field(default_factory=list)  # "Help desk operator (Paris help desk)"


@dataclass
class WhoCan:
    command_type: CommandType
    holders: list[Holder]
    # Wipes that wait for a second administrator (tenant setting): who could approve one.
    approval_required: bool
    approvers: list[Holder]


def command_type(action: str) -> CommandType:
    found = REGISTRY.get(action)
    if found is None:
        raise NotFound(f"There is no remote action named {action!r}.")
    return found


async def who_can(session: AsyncSession, device: Device, action: str) -> WhoCan:
    """``device`` loaded as ``devices.repository.get`` loads it (its tags and groups)."""
    kind = command_type(action)
    assignments = await rbac_repository.list_assignments(session)
    nested = await auth_repository.with_nested(
        session, {g.id for a in assignments for g in (*a.scope_groups, *a.member_groups)}
    )
    member_groups = {
        g for a in assignments for root in a.member_groups for g in nested.get(root.id, {root.id})
    }
    users_of: dict[uuid.UUID, set[uuid.UUID]] = defaultdict(set)
    if member_groups:
        rows = await session.execute(
            select(group_users.c.group_id, group_users.c.user_id).where(
                group_users.c.group_id.in_(sorted(member_groups))
            )
        )
        for group_id, user_id in rows.all():
            users_of[group_id].add(user_id)

    within = reaches(device)
    holding: dict[P, dict[uuid.UUID, list[str]]] = defaultdict(lambda: defaultdict(list))
    wanted = {P.devices_read, kind.permission, P.remote_approve}
    for assignment in assignments:
        permissions = role_permissions(assignment.role) & wanted
        if not permissions or not within(scope_of(assignment, nested)):
            continue
        members = {m.id for m in assignment.members}
        for root in assignment.member_groups:
            for group_id in nested.get(root.id, {root.id}):
                members |= users_of[group_id]
        label = f"{assignment.role.name} ({assignment.name})"
        for permission in permissions:
            for user_id in members:
                holding[permission][user_id].append(label)

    readers = set(holding[P.devices_read])
    candidates = (set(holding[kind.permission]) | set(holding[P.remote_approve])) & readers
    users = {u.id: u for u in await rbac_repository.users_by_ids(session, sorted(candidates)) if u.enabled}

    def listed(permission: P) -> list[Holder]:
        found = [
            Holder(users[user_id], sorted(set(via)))
            for user_id, via in holding[permission].items()
            if user_id in users
        ]
        return sorted(found, key=lambda h: h.user.user_principal_name.lower())

    approval_required = await command_service.needs_approval(session, kind)
    return WhoCan(
        command_type=kind,
        holders=listed(kind.permission),
        approval_required=approval_required,
        approvers=listed(P.remote_approve) if approval_required else [],
    )


def _holder_out(holder: Holder) -> HolderOut:
    return HolderOut(
        user_id=holder.user.id,
        user_principal_name=holder.user.user_principal_name,
        display_name=holder.user.display_name,
        via=holder.via,
    )


def who_can_out(device: Device, found: WhoCan) -> WhoCanOut:
    return WhoCanOut(
        device_id=device.id,
        device_name=device.name,
        action=found.command_type.name,
        label=found.command_type.label,
        permission=found.command_type.permission.value,
        holders=[_holder_out(h) for h in found.holders],
        approval_required=found.approval_required,
        approvers=[_holder_out(h) for h in found.approvers],
    )
