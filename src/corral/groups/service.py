"""Groups: assigned groups (users, devices and nested groups added by hand, never in a cycle) and dynamic
groups (the users or devices a rule selects, kept by ``corral.groups.membership``)."""

from __future__ import annotations

import uuid
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession

from corral.assignments import hooks as assignment_hooks
from corral.assignments import repository as assignments_repository
from corral.audit.service import audit_service
from corral.devices.service import device_service
from corral.errors import Conflict, Forbidden, NotFound, ValidationFailed
from corral.groups import membership, repository
from corral.groups.membership import Evaluation
from corral.groups.rule_sql import device_attribute_values, user_attribute_values
from corral.groups.rules import Rule, RuleError, evaluate, explanation_lines
from corral.groups.schemas import (
    EvaluationOut,
    ExplainOut,
    ExplainRequest,
    GroupCreate,
    GroupDetail,
    GroupFilter,
    GroupMembership,
    GroupOut,
    GroupRef,
    GroupUpdate,
    MemberCounts,
    MemberFilter,
    MemberOut,
    MemberPage,
    MemberRef,
    MemberType,
    PreviewOut,
    PreviewRequest,
    RoleAssignmentRef,
)
from corral.models import (
    Device,
    DynamicKind,
    Group,
    GroupSource,
    MembershipType,
    User,
)
from corral.rbac.permissions import P
from corral.rbac.principal import Principal
from corral.rbac.repository import Without
from corral.rbac.service import rbac_service
from corral.users import repository as users_repository


def rule_problem(error: RuleError) -> ValidationFailed:
    """A rule error as a 422 whose problem body carries the position (offset, line, column, length), the
    message, hint and an excerpt with a caret, so a form can point at the problem."""
    return ValidationFailed(
        f"The rule can't be used: {error.message}",
        errors=[{"location": "rule", "type": "rule_error", **error.to_dict()}],
    )


def parse(kind: DynamicKind, text: str) -> Rule:
    try:
        return membership.parsed(DynamicKind(kind), text)
    except RuleError as exc:
        raise rule_problem(exc) from None


def group_out(group: Group, counts: MemberCounts | None = None) -> GroupOut:
    return GroupOut(
        id=group.id,
        display_name=group.display_name,
        description=group.description,
        membership_type=group.membership_type,
        dynamic_kind=group.dynamic_kind,
        rule=group.rule,
        source=group.source,
        connection_id=group.connection_id,
        external_id=group.external_id,
        evaluated_at=group.evaluated_at,
        created_at=group.created_at,
        updated_at=group.updated_at,
        members=counts or MemberCounts(),
    )


def group_ref(group: Group) -> GroupRef:
    return GroupRef(id=group.id, display_name=group.display_name, membership_type=group.membership_type)


def device_member(device: Device) -> MemberOut:
    return MemberOut(
        type=MemberType.device,
        id=device.id,
        name=device.name,
        detail=device.serial_number,
        state=device.management_state.value,
    )


def user_member(user: User) -> MemberOut:
    return MemberOut(
        type=MemberType.user,
        id=user.id,
        name=user.display_name,
        detail=user.user_principal_name,
        state="enabled" if user.enabled else "disabled",
    )


def group_member(group: Group) -> MemberOut:
    return MemberOut(
        type=MemberType.group, id=group.id, name=group.display_name, detail=group.membership_type.value
    )


def _member_label(member: User | Group) -> str:
    if isinstance(member, Group):
        return f"group {member.display_name} ({member.id})"
    return f"{member.user_principal_name} ({member.id})"


def evaluation_detail(evaluation: Evaluation) -> str:
    return (
        f"Evaluated: {evaluation.added} added, {evaluation.removed} removed; {evaluation.members} members; "
        f"{evaluation.milliseconds:.0f} ms"
    )


@dataclass(frozen=True)
class Saved:
    group: Group
    evaluation: Evaluation | None


def _refuse_widening_own_scope(principal: Principal, group: Group, change: str) -> None:
    """An administrator limited to scope groups may not widen them: nesting a group in one (or in a group
    nested in one) or changing its rule could bring in any user or device. Adding users and devices they
    already reach is fine."""
    if group.id in principal.scope_group_ids:
        raise Forbidden(
            f"{group.display_name} limits what you may reach (a scope group of your role assignments): "
            f"{change[0].lower()}{change[1:]} would widen your own scope. Ask an administrator not limited "
            "to it."
        )


class GroupService:
    # ---------------------------------------------------------------- reads
    async def page(
        self, session: AsyncSession, filters: GroupFilter
    ) -> tuple[list[GroupOut], str | None, int]:
        groups, next_cursor, total = await repository.page(session, filters)
        counts = await repository.member_counts(session, [g.id for g in groups])
        return [group_out(g, counts[g.id]) for g in groups], next_cursor, total

    async def get(self, session: AsyncSession, group_id: uuid.UUID, *, for_update: bool = False) -> Group:
        group = await repository.get(session, group_id, for_update=for_update)
        if group is None:
            raise NotFound("No such group.")
        return group

    async def out(self, session: AsyncSession, group: Group) -> GroupOut:
        counts = await repository.member_counts(session, [group.id])
        return group_out(group, counts[group.id])

    async def detail(self, session: AsyncSession, group: Group) -> GroupDetail:
        base = await self.out(session, group)
        return GroupDetail(
            **base.model_dump(),
            managed_by=await self.managed_by(session, group),
            parents=[group_ref(g) for g in await repository.parents(session, group.id)],
            role_assignments=[
                RoleAssignmentRef(id=i, name=n, usage=u)
                for i, n, u in await repository.role_assignment_usage(session, group.id)
            ],
        )

    async def managed_by(self, session: AsyncSession, group: Group) -> str | None:
        """The identity connection that provisions the group ("an identity provider" once it is gone)."""
        if group.source is GroupSource.local:
            return None
        name = await repository.connection_name(session, group.connection_id)
        return name or f"an identity provider ({group.source.value.upper()})"

    async def last_evaluation(self, session: AsyncSession, group: Group) -> Any:
        return await repository.last_evaluation(session, group.id)

    async def members(
        self, session: AsyncSession, principal: Principal, group_id: uuid.UUID, filters: MemberFilter
    ) -> MemberPage:
        """Direct members (nested groups, users, devices) or, with ``transitive``, the users and devices
        reached through nested groups too. Devices outside the caller's devices:read scope, and users
        without users:read, are counted as hidden."""
        await self.get(session, group_id)
        items, next_cursor, total, hidden = await repository.member_page(
            session,
            group_id,
            filters,
            principal.scope_for(P.devices_read),
            principal.scope_for(P.users_read),
        )
        return MemberPage(
            items=[
                MemberOut(
                    type=MemberType(i["type"]),
                    id=i["id"],
                    name=i["name"],
                    detail=i["detail"],
                    state=i["state"],
                )
                for i in items
            ],
            next_cursor=next_cursor,
            total=total,
            hidden=hidden,
        )

    async def groups_of(
        self, session: AsyncSession, kind: MemberType, member_id: uuid.UUID
    ) -> list[GroupMembership]:
        """Every group the user, device or group belongs to: directly, or through nested groups (with the
        chain of groups it comes through, nearest first)."""
        direct = await repository.direct_groups_of(session, kind, member_id)
        edges = await repository.ancestor_edges(session, direct)
        parents: dict[uuid.UUID, list[uuid.UUID]] = {}
        for child, parent in edges:
            parents.setdefault(child, []).append(parent)
        via: dict[uuid.UUID, list[uuid.UUID]] = {g: [] for g in direct}
        queue = deque(direct)
        while queue:  # breadth first: the shortest chain to each ancestor
            current = queue.popleft()
            for parent in parents.get(current, []):
                if parent not in via:
                    via[parent] = [*via[current], current]
                    queue.append(parent)
        groups = {g.id: g for g in await repository.by_ids(session, list(via))}
        out = [
            GroupMembership(
                group=group_ref(groups[g]),
                direct=not chain,
                via=[groups[c].display_name for c in chain if c in groups],
            )
            for g, chain in via.items()
            if g in groups
        ]
        return sorted(out, key=lambda m: (not m.direct, m.group.display_name.lower(), str(m.group.id)))

    async def groups_of_device(
        self, session: AsyncSession, principal: Principal, device_id: uuid.UUID
    ) -> list[GroupMembership]:
        await device_service.get(session, principal, device_id)  # 404 outside the caller's scope
        return await self.groups_of(session, MemberType.device, device_id)

    async def groups_of_user(
        self, session: AsyncSession, principal: Principal, user_id: uuid.UUID
    ) -> list[GroupMembership]:
        await self._user(session, principal, user_id)  # 404 outside the caller's scope
        return await self.groups_of(session, MemberType.user, user_id)

    # ---------------------------------------------------------------- create, edit, delete
    async def create(self, session: AsyncSession, data: GroupCreate) -> Saved:
        rule = None
        if data.membership_type is MembershipType.dynamic:
            assert data.dynamic_kind is not None and data.rule is not None
            rule = parse(data.dynamic_kind, data.rule)
        group = Group(
            id=uuid.uuid4(),
            display_name=data.display_name,
            description=data.description,
            membership_type=data.membership_type,
            dynamic_kind=data.dynamic_kind,
            rule=data.rule,
            source=GroupSource.local,
        )
        session.add(group)
        await session.flush()
        evaluation = await membership.evaluate_group(session, group) if rule is not None else None
        await session.refresh(group)
        await audit_service.record(
            session,
            activity="group.create",
            category="group",
            operation="create",
            target_type="group",
            target_id=group.id,
            target_name=group.display_name,
            changes=[
                ("display_name", None, group.display_name),
                ("description", None, group.description or None),
                ("membership_type", None, group.membership_type),
                ("dynamic_kind", None, group.dynamic_kind),
                ("rule", None, group.rule),
            ],
            detail=evaluation_detail(evaluation) if evaluation else None,
        )
        return Saved(group, evaluation)

    async def update(
        self, session: AsyncSession, principal: Principal, group_id: uuid.UUID, data: GroupUpdate
    ) -> Saved:
        group = await self.get(session, group_id, for_update=True)
        changes: list[tuple[str, Any, Any]] = []
        evaluation = None
        if data.rule is not None and data.rule != group.rule:
            _refuse_widening_own_scope(principal, group, "Changing its rule")
            if group.membership_type is not MembershipType.dynamic or group.dynamic_kind is None:
                raise ValidationFailed(
                    "An assigned group has no rule: its members are added by hand. Create a dynamic group "
                    "for rule-based membership."
                )
            parse(group.dynamic_kind, data.rule)
            changes.append(("rule", group.rule, data.rule))
            group.rule = data.rule
        if data.display_name is not None and data.display_name != group.display_name:
            changes.append(("display_name", group.display_name, data.display_name))
            group.display_name = data.display_name
        if data.description is not None and data.description != group.description:
            changes.append(("description", group.description, data.description))
            group.description = data.description
        if not changes:
            return Saved(group, None)
        await session.flush()
        if any(name == "rule" for name, _, _ in changes):
            evaluation = await membership.evaluate_group(session, group)
            if evaluation.added or evaluation.removed:
                await assignment_hooks.groups_regrouped(session, [group.id])
        await session.refresh(group)
        await audit_service.record(
            session,
            activity="group.update",
            category="group",
            operation="update",
            target_type="group",
            target_id=group.id,
            target_name=group.display_name,
            changes=changes,
            detail=evaluation_detail(evaluation) if evaluation else None,
        )
        return Saved(group, evaluation)

    async def delete(self, session: AsyncSession, group_id: uuid.UUID) -> Group:
        group = await self.get(session, group_id, for_update=True)
        await self._refuse_if_managed(session, group, "deleted", allow_orphan=True)
        usage = await repository.role_assignment_usage(session, group.id)
        if usage:
            raise Conflict(self._usage_message(group, usage))
        await self._refuse_if_assigned(session, group)
        await rbac_service.guard_group_change(session, Without(group=group.id))
        parents = [g.id for g in await repository.parents(session, group.id)]
        counts = (await repository.member_counts(session, [group.id]))[group.id]
        await audit_service.record(
            session,
            activity="group.delete",
            category="group",
            operation="delete",
            target_type="group",
            target_id=group.id,
            target_name=group.display_name,
            changes=[
                ("display_name", group.display_name, None),
                ("membership_type", group.membership_type, None),
                ("rule", group.rule, None),
            ],
            detail=f"had {counts.users} user(s), {counts.devices} device(s), {counts.groups} nested group(s)",
        )
        await session.delete(group)
        try:
            await session.flush()
        except IntegrityError as exc:  # an assignment named it meanwhile (ON DELETE RESTRICT)
            raise Conflict(
                f"The group {group.display_name} is used by a role assignment or a policy assignment; remove "
                "it there first."
            ) from exc
        await assignment_hooks.groups_regrouped(session, parents)  # its members left every group above it
        return group

    @staticmethod
    async def _refuse_if_assigned(session: AsyncSession, group: Group) -> None:
        objects = await assignments_repository.usage_of_group(session, group.id)
        if objects:
            names = "; ".join(f"{o.name} ({o.kind.replace('_', ' ')})" for o in objects[:10])
            more = f" and {len(objects) - 10} more" if len(objects) > 10 else ""
            raise Conflict(
                f"The group {group.display_name} is assigned to {len(objects)} object(s): {names}{more}. "
                "Remove it from their assignments before deleting it."
            )

    @staticmethod
    def _usage_message(group: Group, usage: list[tuple[uuid.UUID, str, str]]) -> str:
        names = "; ".join(
            f"{name} ({'its members hold the role' if how == 'members' else 'as the scope'})"
            for _, name, how in usage
        )
        return (
            f"The group {group.display_name} is used by {len(usage)} role assignment(s): {names}. "
            "Remove it from them before deleting it."
        )

    async def _refuse_if_managed(
        self, session: AsyncSession, group: Group, what: str, *, allow_orphan: bool = False
    ) -> None:
        if group.source is GroupSource.local or (allow_orphan and group.connection_id is None):
            return
        raise Conflict(
            f"The group {group.display_name} is managed by {await self.managed_by(session, group)}: "
            f"it can't be {what} in Corral. Make the change in the identity provider."
        )

    # ---------------------------------------------------------------- members
    async def _user(self, session: AsyncSession, principal: Principal, user_id: uuid.UUID) -> User:
        """The user, within the caller's users:read scope (outside it, as if it did not exist)."""
        user = await users_repository.get_with_groups(session, user_id)
        if user is None or not users_repository.reaches_user(user)(principal.scope_for(P.users_read)):
            raise NotFound("No such user.")
        return user

    async def _member(self, session: AsyncSession, principal: Principal, ref: MemberRef) -> MemberOut:
        """The user, device or group a member reference names (users and devices: within the caller's read
        scope)."""
        if ref.type is MemberType.device:
            return device_member(await device_service.get(session, principal, ref.id))
        if ref.type is MemberType.user:
            return user_member(await self._user(session, principal, ref.id))
        child = await repository.get(session, ref.id)
        if child is None:
            raise NotFound("No such group.")
        return group_member(child)

    async def _editable_members(self, session: AsyncSession, group_id: uuid.UUID) -> Group:
        group = await self.get(session, group_id, for_update=True)
        await self._refuse_if_managed(session, group, "changed: its members are")
        if group.membership_type is MembershipType.dynamic:
            raise Conflict(
                f"{group.display_name} is a dynamic group: its members are the {group.dynamic_kind}s its "
                "rule selects, and can't be added or removed by hand. Change the rule instead."
            )
        return group

    async def add_member(
        self, session: AsyncSession, principal: Principal, group_id: uuid.UUID, ref: MemberRef
    ) -> tuple[MemberOut, bool]:
        """Add a user, device or nested group; returns the member and whether it is new. Nesting is refused
        when it would close a cycle, under a transaction-wide advisory lock so that two concurrent
        additions can't close one together."""
        group = await self._editable_members(session, group_id)
        member = await self._member(session, principal, ref)
        if ref.type is MemberType.group:
            if ref.id == group.id:
                raise Conflict("A group can't be a member of itself.")
            _refuse_widening_own_scope(principal, group, "Nesting a group in it")
            await repository.lock_nesting(session)
            if await repository.reachable(session, ref.id, group.id):
                raise Conflict(
                    f"Adding {member.name} to {group.display_name} would make a cycle: {group.display_name} "
                    f"is already a member of {member.name} (directly or through nested groups)."
                )
        added = await repository.add_member(session, group.id, ref.type, ref.id)
        if added:
            await _regrouped(session, group.id, ref.type, ref.id)
            await audit_service.record(
                session,
                activity="group.member_add",
                category="group",
                operation="update",
                target_type="group",
                target_id=group.id,
                target_name=group.display_name,
                changes=[(f"{ref.type.value}s", None, f"{member.name} ({member.id})")],
            )
        return member, added

    async def remove_member(
        self, session: AsyncSession, principal: Principal, group_id: uuid.UUID, ref: MemberRef
    ) -> MemberOut:
        group = await self._editable_members(session, group_id)
        member = await self._member(session, principal, ref)
        if ref.type is MemberType.group:
            await repository.lock_nesting(session)
            await rbac_service.guard_group_change(session, Without(nestings=frozenset({(group.id, ref.id)})))
        elif ref.type is MemberType.user:
            await rbac_service.guard_group_change(
                session, Without(group_users=frozenset({(group.id, ref.id)}))
            )
        if not await repository.remove_member(session, group.id, ref.type, ref.id):
            raise NotFound(f"{member.name} is not a direct member of {group.display_name}.")
        await _regrouped(session, group.id, ref.type, ref.id)
        await audit_service.record(
            session,
            activity="group.member_remove",
            category="group",
            operation="update",
            target_type="group",
            target_id=group.id,
            target_name=group.display_name,
            changes=[(f"{ref.type.value}s", f"{member.name} ({member.id})", None)],
        )
        return member

    async def resolve_member(
        self, session: AsyncSession, principal: Principal, kind: MemberType, lookup: str
    ) -> MemberRef:
        """A member named the way people name it (admin center): a device's name or serial number, a
        user's sign-in name or email address, a group's name, or any of their ids."""
        found: list[Any]
        if kind is MemberType.device:
            found = await repository.devices_named(session, lookup, principal.scope_for(P.devices_read))
        elif kind is MemberType.user:
            found = await repository.users_named(session, lookup, principal.scope_for(P.users_read))
        else:
            found = await repository.groups_named(session, lookup)
        if not found:
            raise NotFound(f"No {kind.value} called {lookup!r} that you can see.")
        if len(found) > 1:
            raise ValidationFailed(
                f"{len(found)} {kind.value}s are called {lookup!r}; use the ID or the serial number instead."
            )
        return MemberRef(type=kind, id=found[0].id)

    # ---------------------------------------------------------------- provisioned by an identity provider
    async def create_provisioned(
        self,
        session: AsyncSession,
        *,
        source: GroupSource,
        connection_id: uuid.UUID,
        display_name: str,
        external_id: str | None,
    ) -> Group:
        """An assigned group pushed by an identity provider (SCIM): only the provider changes it."""
        group = Group(
            id=uuid.uuid4(),
            display_name=display_name,
            description="",
            membership_type=MembershipType.assigned,
            source=source,
            connection_id=connection_id,
            external_id=external_id,
        )
        session.add(group)
        await session.flush()
        await session.refresh(group)
        await audit_service.record(
            session,
            activity="group.create",
            category="group",
            operation="create",
            target_type="group",
            target_id=group.id,
            target_name=group.display_name,
            changes=[
                ("display_name", None, group.display_name),
                ("external_id", None, external_id),
                ("source", None, source.value),
            ],
        )
        return group

    async def update_provisioned(
        self, session: AsyncSession, group: Group, *, display_name: str, external_id: str | None
    ) -> Group:
        changes: list[tuple[str, Any, Any]] = []
        if display_name != group.display_name:
            changes.append(("display_name", group.display_name, display_name))
            group.display_name = display_name
        if external_id != group.external_id:
            changes.append(("external_id", group.external_id, external_id))
            group.external_id = external_id
        if changes:
            await session.flush()
            await session.refresh(group)
            await audit_service.record(
                session,
                activity="group.update",
                category="group",
                operation="update",
                target_type="group",
                target_id=group.id,
                target_name=group.display_name,
                changes=changes,
            )
        return group

    async def change_provisioned_members(
        self,
        session: AsyncSession,
        group: Group,
        *,
        add: Sequence[User | Group] = (),
        remove: Sequence[User | Group] = (),
    ) -> None:
        """Add and remove direct members (users and nested groups) of a provisioned group; nesting that would
        close a cycle is refused (nothing changes). One audit event per direction."""
        if any(isinstance(m, Group) for m in [*add, *remove]):
            await repository.lock_nesting(session)
        if remove:
            await rbac_service.guard_group_change(
                session,
                Without(
                    group_users=frozenset((group.id, m.id) for m in remove if isinstance(m, User)),
                    nestings=frozenset((group.id, m.id) for m in remove if isinstance(m, Group)),
                ),
            )
        added: list[str] = []
        removed: list[str] = []
        for member in remove:
            kind = MemberType.group if isinstance(member, Group) else MemberType.user
            if await repository.remove_member(session, group.id, kind, member.id):
                removed.append(_member_label(member))
        for member in add:
            if isinstance(member, Group):
                if member.id == group.id or await repository.reachable(session, member.id, group.id):
                    raise ValidationFailed(
                        f"Adding {member.display_name} to {group.display_name} would make a cycle of nested "
                        "groups."
                    )
                kind = MemberType.group
            else:
                kind = MemberType.user
            if await repository.add_member(session, group.id, kind, member.id):
                added.append(_member_label(member))
        if added or removed:
            changed = [*add, *remove]
            await assignment_hooks.users_regrouped(session, [m.id for m in changed if isinstance(m, User)])
            if any(isinstance(m, Group) for m in changed):
                await assignment_hooks.groups_regrouped(session, [group.id])
        for activity, names, old_new in (
            ("group.member_add", added, lambda n: (None, n)),
            ("group.member_remove", removed, lambda n: (n, None)),
        ):
            if names:
                old, new = old_new(sorted(names))
                await audit_service.record(
                    session,
                    activity=activity,
                    category="group",
                    operation="update",
                    target_type="group",
                    target_id=group.id,
                    target_name=group.display_name,
                    changes=[("members", old, new)],
                )

    async def delete_provisioned(self, session: AsyncSession, group: Group) -> None:
        usage = await repository.role_assignment_usage(session, group.id)
        if usage:
            raise Conflict(self._usage_message(group, usage))
        await self._refuse_if_assigned(session, group)
        await rbac_service.guard_group_change(session, Without(group=group.id))
        parents = [g.id for g in await repository.parents(session, group.id)]
        await audit_service.record(
            session,
            activity="group.delete",
            category="group",
            operation="delete",
            target_type="group",
            target_id=group.id,
            target_name=group.display_name,
            changes=[("display_name", group.display_name, None), ("external_id", group.external_id, None)],
        )
        await session.delete(group)
        await session.flush()
        await assignment_hooks.groups_regrouped(session, parents)

    # ---------------------------------------------------------------- dynamic membership
    async def evaluate(self, session: AsyncSession, group_id: uuid.UUID) -> EvaluationOut:
        group = await self.get(session, group_id, for_update=True)
        if group.membership_type is not MembershipType.dynamic:
            raise Conflict(f"{group.display_name} is an assigned group: it has no rule to evaluate.")
        assert group.dynamic_kind is not None
        parse(group.dynamic_kind, group.rule or "")
        evaluation = await membership.evaluate_group(session, group)
        if evaluation.added or evaluation.removed:
            await assignment_hooks.groups_regrouped(session, [group.id])
        await session.refresh(group)
        await audit_service.record(
            session,
            activity="group.evaluate",
            category="group",
            operation="update",
            target_type="group",
            target_id=group.id,
            target_name=group.display_name,
            changes=[
                ("members", evaluation.members - evaluation.added + evaluation.removed, evaluation.members)
            ],
            detail=evaluation_detail(evaluation),
        )
        assert group.evaluated_at is not None
        return EvaluationOut(
            group_id=group.id,
            added=evaluation.added,
            removed=evaluation.removed,
            members=evaluation.members,
            milliseconds=round(evaluation.milliseconds, 1),
            evaluated_at=group.evaluated_at,
        )

    def _need_read(self, principal: Principal, kind: DynamicKind) -> None:
        permission = P.devices_read if kind is DynamicKind.device else P.users_read
        if not principal.has(permission):
            raise Forbidden(f"Trying a {kind.value} rule needs the permission {permission.value}.")

    async def preview(self, session: AsyncSession, principal: Principal, data: PreviewRequest) -> PreviewOut:
        """What a rule would select now, without saving anything: computed in SQL over the users in the
        caller's users:read scope, or the devices in their devices:read scope. The count is of those too:
        nothing says how many match outside it (a rule is a question, and a count an answer about them)."""
        kind = DynamicKind(data.dynamic_kind)
        rule = parse(kind, data.rule)
        self._need_read(principal, kind)
        members: list[MemberOut]
        if kind is DynamicKind.device:
            stmt = repository.devices_scoped(
                select(Device).where(membership.predicate(kind, rule)), principal.scope_for(P.devices_read)
            )
            count, rows = await repository.preview(
                session, stmt, func.lower(Device.name), Device.id, data.limit
            )
            members = [device_member(row[0]) for row in rows]
        else:
            stmt = users_repository.scoped(
                select(User).where(membership.predicate(kind, rule)), principal.scope_for(P.users_read)
            )
            count, rows = await repository.preview(
                session, stmt, func.lower(User.display_name), User.id, data.limit
            )
            members = [user_member(row[0]) for row in rows]
        return PreviewOut(
            count=count, members=members, rule=rule.canonical, attributes=sorted(rule.attributes)
        )

    async def explain(self, session: AsyncSession, principal: Principal, data: ExplainRequest) -> ExplainOut:
        """Does this device (or user) match the rule, and why: every clause with the value it saw."""
        kind = DynamicKind(data.dynamic_kind)
        rule = parse(kind, data.rule)
        self._need_read(principal, kind)
        note = None
        if kind is DynamicKind.device:
            device_id = data.device_id
            if device_id is None:
                assert data.lookup is not None
                device_id = (await self.resolve_member(session, principal, MemberType.device, data.lookup)).id
            device = await device_service.get(session, principal, device_id)
            profile = await repository.enrollment_token_name(session, device.enrollment_token_id)
            explanation = evaluate(rule, device_attribute_values(device, enrollment_profile_name=profile))
            subject = device_member(device)
            entity: Any = Device
            if device.management_state in membership.ENDED_STATES:
                note = f"The device is {device.management_state.value}: it belongs to no dynamic group."
        else:
            user_id = data.user_id
            if user_id is None:
                assert data.lookup is not None
                user_id = (await self.resolve_member(session, principal, MemberType.user, data.lookup)).id
            user = await self._user(session, principal, user_id)
            explanation = evaluate(rule, user_attribute_values(user))
            subject = user_member(user)
            entity = User
        matches = await repository.matches_one(session, membership.predicate(kind, rule), entity, subject.id)
        if note is None and matches != explanation.result:
            note = (
                "PostgreSQL and the explanation disagree (case-insensitive comparison of rare characters "
                "such as Turkish dotted İ): membership follows PostgreSQL."
            )
        return ExplainOut(
            matches=matches,
            subject=subject,
            explanation=explanation.to_dict(),
            lines=explanation_lines(explanation),
            note=note,
        )


group_service = GroupService()


async def _regrouped(
    session: AsyncSession, group_id: uuid.UUID, kind: MemberType, member_id: uuid.UUID
) -> None:
    """A direct member joined or left the group: bring assignment targets up to date."""
    if kind is MemberType.device:
        await assignment_hooks.devices_regrouped(session, [member_id])
    elif kind is MemberType.user:
        await assignment_hooks.users_regrouped(session, [member_id])
    else:
        await assignment_hooks.groups_regrouped(session, [group_id])
