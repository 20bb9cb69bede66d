"""Assignments of policy objects to groups, assignment filters, reach previews and explanations."""

from __future__ import annotations

import contextlib
import uuid
from collections.abc import Sequence
from typing import Any

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from corral.assignments import engine
from corral.assignments import repository as repo
from corral.assignments.kinds import KINDS, Kind
from corral.assignments.resolver import (
    APPLIES_TO,
    AssignmentResult,
    AssignmentSpec,
    DeviceView,
    Verdict,
    Via,
    resolve,
)
from corral.assignments.schemas import (
    AssignmentExplanation,
    AssignmentIn,
    AssignmentOut,
    AssignmentsOut,
    ChainStep,
    DeviceRef,
    DeviceTargetOut,
    DeviceTargets,
    Explanation,
    FilterCreate,
    FilterDetail,
    FilterOut,
    FilterPreviewOut,
    FilterPreviewRequest,
    FilterRef,
    FilterResult,
    FilterUpdate,
    GroupRef,
    ObjectRef,
    ReachPreviewOut,
    ReachPreviewRequest,
)
from corral.audit.service import audit_service
from corral.devices.service import device_service
from corral.errors import Conflict, Forbidden, NotFound, ValidationFailed
from corral.groups import effective
from corral.groups import repository as groups_repository
from corral.groups.membership import ENDED_STATES
from corral.groups.rule_sql import DEVICE_SCHEMA, compile_rule, device_attribute_values
from corral.groups.rules import RuleError, evaluate, explanation_lines, format_rule, parse_rule
from corral.groups.service import rule_problem
from corral.models import (
    Assignable,
    AssignableKind,
    Assignment,
    AssignmentFilter,
    AssignmentMode,
    AssignmentTarget,
    Device,
    FilterMode,
    Group,
    Platform,
)
from corral.rbac import repository as rbac_repository
from corral.rbac.permissions import P
from corral.rbac.principal import Principal, Scope
from corral.users.service import user_service

EVERYWHERE = Scope(all=True)


def object_ref(obj: Assignable) -> ObjectRef:
    return ObjectRef(id=obj.id, kind=AssignableKind(obj.kind), name=obj.name, platform=Platform(obj.platform))


def device_ref(device: Device) -> DeviceRef:
    return DeviceRef(
        id=device.id, name=device.name, serial_number=device.serial_number, platform=device.platform
    )


def filter_out(item: AssignmentFilter) -> FilterOut:
    return FilterOut(
        id=item.id,
        name=item.name,
        description=item.description,
        platform=item.platform,
        rule=item.rule,
        scope_tags=sorted(t.name for t in item.scope_tags),
        created_at=item.created_at,
        updated_at=item.updated_at,
    )


def parse_filter_rule(text: str) -> Any:
    """The rule parsed over device properties; a 422 naming the position of the first mistake."""
    try:
        return parse_rule(text, DEVICE_SCHEMA)
    except RuleError as exc:
        raise rule_problem(exc) from exc


def describe(assignment: Assignment, groups: dict[uuid.UUID, Group]) -> str:
    """One assignment in words, for the audit log: "include group Sales (filter Laptops: include)"."""
    if assignment.target is AssignmentTarget.group:
        group = groups.get(assignment.group_id) if assignment.group_id else None
        what = f"group {group.display_name if group else assignment.group_id}"
    else:
        what = "all devices" if assignment.target is AssignmentTarget.all_devices else "all users"
    text = f"{assignment.mode.value} {what}"
    if assignment.filter is not None:
        text += f" (filter {assignment.filter.name}: {assignment.filter_mode})"
    return text


class AssignmentService:
    # ---------------------------------------------------------------- objects
    def kind_of(self, obj: Assignable) -> Kind:
        return KINDS[AssignableKind(obj.kind)]

    def visible(self, principal: Principal, obj: Assignable, permission: P | None = None) -> bool:
        kind = self.kind_of(obj)
        scope = principal.scope_for(permission or kind.read)
        return scope.covers(t.id for t in obj.scope_tags)

    async def get_object(
        self,
        session: AsyncSession,
        principal: Principal,
        object_id: uuid.UUID,
        kind: AssignableKind | None = None,
        *,
        for_update: bool = False,
    ) -> Assignable:
        """The object, 404 when it is of another kind or outside the caller's read scope."""
        obj = await repo.get_object(session, object_id, for_update=for_update)
        if obj is None or (kind is not None and obj.kind != kind) or not self.visible(principal, obj):
            label = KINDS[kind].label if kind else "object"
            raise NotFound(f"No such {label}.")
        return obj

    async def visible_objects(self, session: AsyncSession, principal: Principal) -> list[Assignable]:
        """Every object the caller may read (its kind's read permission, its scope tags), by kind and name."""
        return [
            obj
            for obj in await repo.all_objects(session)
            if principal.has(self.kind_of(obj).read) and self.visible(principal, obj)
        ]

    # ---------------------------------------------------------------- assignments
    async def assignments_out(
        self, session: AsyncSession, principal: Principal, obj: Assignable
    ) -> AssignmentsOut:
        items = await repo.assignments_of(session, obj.id)
        groups = await repo.groups_by_ids(session, [a.group_id for a in items if a.group_id])
        devices = await repo.count_targets(session, obj.id, principal.scope_for(P.devices_read))
        return AssignmentsOut(
            object=object_ref(obj),
            assignments=[self.assignment_out(a, groups) for a in items],
            devices=devices,
        )

    def assignment_out(self, assignment: Assignment, groups: dict[uuid.UUID, Group]) -> AssignmentOut:
        group = groups.get(assignment.group_id) if assignment.group_id else None
        return AssignmentOut(
            id=assignment.id,
            target=assignment.target,
            group=GroupRef(id=group.id, display_name=group.display_name) if group else None,
            mode=assignment.mode,
            filter=FilterRef(id=assignment.filter.id, name=assignment.filter.name)
            if assignment.filter
            else None,
            filter_mode=assignment.filter_mode,
        )

    async def _validate(
        self,
        session: AsyncSession,
        principal: Principal,
        platform: Platform,
        items: Sequence[AssignmentIn],
        assign: P,
        object_tags: Sequence[uuid.UUID],
    ) -> tuple[dict[uuid.UUID, Group], dict[uuid.UUID, AssignmentFilter]]:
        """Refuse duplicates, unknown or out-of-scope groups and filters, and filters of another platform."""
        seen: set[tuple[str, uuid.UUID | None]] = set()
        for index, item in enumerate(items):
            key = (item.target.value, item.group_id)
            if key in seen:
                raise ValidationFailed(
                    f"assignments.{index}: this target is already in the list (a group is included or "
                    "excluded once)."
                )
            seen.add(key)
        group_ids = sorted({i.group_id for i in items if i.group_id is not None})
        groups = await repo.groups_by_ids(session, group_ids)
        scope = principal.scope_for(assign)
        for index, item in enumerate(items):
            if item.group_id is not None and item.group_id not in groups:
                raise ValidationFailed(f"assignments.{index}.group_id: no such group.")
            reach = [item.group_id] if item.group_id is not None else []
            if not scope.covers_member(object_tags, reach):
                where = "that group" if reach else item.target.value.replace("_", " ")
                raise Forbidden(
                    f"assignments.{index}: you may not assign to {where}: it is outside the scope groups of "
                    f"your {assign.value} permission."
                )
        filter_ids = sorted({i.filter_id for i in items if i.filter_id is not None})
        filters = await repo.filters_by_ids(session, filter_ids)
        filter_scope = principal.scope_for(P.filters_read)
        for index, item in enumerate(items):
            if item.filter_id is None:
                continue
            found = filters.get(item.filter_id)
            if found is None or not filter_scope.covers(t.id for t in found.scope_tags):
                raise ValidationFailed(f"assignments.{index}.filter_id: no such filter.")
            if Platform(found.platform) not in APPLIES_TO[Platform(platform)]:
                raise ValidationFailed(
                    f"assignments.{index}.filter_id: the filter {found.name!r} is for {found.platform} "
                    f"devices; this object is for {platform}."
                )
        return groups, filters

    async def replace(
        self, session: AsyncSession, principal: Principal, obj: Assignable, items: Sequence[AssignmentIn]
    ) -> AssignmentsOut:
        """Make the object's assignments exactly ``items`` (Intune's "assign"), recompute its targets and
        audit the old and new lists."""
        kind = self.kind_of(obj)
        object_tags = [t.id for t in obj.scope_tags]
        if not principal.scope_for(kind.assign).covers(object_tags):
            raise Forbidden(f"This needs the permission {kind.assign.value} over this {kind.label}.")
        await engine.lock(session, exclusive=True)
        groups, filters = await self._validate(
            session, principal, Platform(obj.platform), items, kind.assign, object_tags
        )
        current = await repo.assignments_of(session, obj.id)
        groups.update(await repo.groups_by_ids(session, [a.group_id for a in current if a.group_id]))
        before = [describe(a, groups) for a in current]
        by_key = {(a.target.value, a.group_id): a for a in current}
        keep: set[uuid.UUID] = set()
        for item in items:
            existing = by_key.get((item.target.value, item.group_id))
            if existing is not None:
                keep.add(existing.id)
                existing.mode = item.mode
                existing.filter_id = item.filter_id
                existing.filter_mode = item.filter_mode
                existing.filter = filters.get(item.filter_id) if item.filter_id else None
            else:
                session.add(
                    Assignment(
                        assignable_id=obj.id,
                        target=item.target,
                        group_id=item.group_id,
                        mode=item.mode,
                        filter_id=item.filter_id,
                        filter_mode=item.filter_mode,
                    )
                )
        await repo.delete_assignments(session, [a.id for a in current if a.id not in keep])
        await session.flush()
        after_items = await repo.assignments_of(session, obj.id)
        after = [describe(a, groups) for a in after_items]
        changed = await engine.recompute_objects(session, [obj.id])
        if sorted(before) != sorted(after):
            await audit_service.record(
                session,
                activity=f"{obj.kind}.assign",
                category="policy",
                operation="update",
                target_type=str(obj.kind),
                target_id=obj.id,
                target_name=obj.name,
                changes=[("assignments", sorted(before), sorted(after))],
                detail=f"{len(changed)} device(s) gained or lost the {kind.label}",
            )
        return await self.assignments_out(session, principal, obj)

    async def preview(
        self, session: AsyncSession, principal: Principal, data: ReachPreviewRequest
    ) -> ReachPreviewOut:
        """How many devices (in the caller's scope) assignments would reach, without saving them."""
        _, filters = await self._validate(
            session, principal, data.platform, data.assignments, P.devices_read, []
        )
        specs = tuple(
            AssignmentSpec(
                id=uuid.uuid4(),
                target=i.target,
                mode=i.mode,
                group_id=i.group_id,
                filter_id=i.filter_id,
                filter_mode=i.filter_mode,
            )
            for i in data.assignments
        )
        subtrees = await effective.subtrees(
            session, sorted({i.group_id for i in data.assignments if i.group_id})
        )
        plan = engine.Plan(
            assignable_id=uuid.uuid4(),
            platform=data.platform,
            specs=specs,
            subtrees=subtrees,
            rules={f.id: f.rule for f in filters.values()},
        )
        stmt = engine.wanted([plan])
        if stmt is None:
            return ReachPreviewOut(devices=0)
        reached = stmt.subquery()
        count = await repo.count_devices(
            session,
            select(Device.id).where(Device.id.in_(select(reached.c.device_id))),
            principal.scope_for(P.devices_read),
        )
        return ReachPreviewOut(devices=count)

    # ---------------------------------------------------------------- a device's targets and why
    async def device_targets(
        self, session: AsyncSession, principal: Principal, device_id: uuid.UUID
    ) -> DeviceTargets:
        device = await device_service.get(session, principal, device_id)
        objects = await repo.targets_of_device(session, device.id)
        return DeviceTargets(
            items=[
                DeviceTargetOut(object=object_ref(o), version=o.version)
                for o in objects
                if self.visible(principal, o)
            ],
            desired_state_version=await repo.desired_state_version(session, device.id),
        )

    async def explain(
        self, session: AsyncSession, principal: Principal, device_id: uuid.UUID, object_id: uuid.UUID
    ) -> Explanation:
        """Why the object reaches the device or not: every assignment, the group chain or user it comes
        through, each filter's result on the device's property values, and the verdict."""
        device = await device_service.get(session, principal, device_id)
        obj = await self.get_object(session, principal, object_id)
        assignments = await repo.assignments_of(session, obj.id)
        direct, user_groups, edges = await repo.device_memberships(session, device)
        parents: dict[uuid.UUID, frozenset[uuid.UUID]] = {}
        for child, parent in edges:
            parents[child] = parents.get(child, frozenset()) | {parent}
        filters = {a.filter.id: a.filter for a in assignments if a.filter is not None}
        matched = await repo.evaluate_conditions(
            session, device.id, [engine.filter_condition(f.rule) for f in filters.values()]
        )
        view = DeviceView(
            id=device.id,
            platform=Platform(device.platform),
            active=device.management_state not in ENDED_STATES,
            direct_groups=frozenset(direct),
            user_id=device.user_id,
            user_groups=frozenset(user_groups),
            parents=parents,
            filters=dict(zip(filters, matched, strict=True)),
        )
        resolution = resolve(view, [engine.spec_of(a) for a in assignments], obj.platform)
        group_ids = (
            {g for a in assignments if a.group_id for g in [a.group_id]} | set(direct) | set(user_groups)
        )
        group_ids |= {g for edge in edges for g in edge}
        groups = await repo.groups_by_ids(session, sorted(group_ids))
        profile = await groups_repository.enrollment_token_name(session, device.enrollment_token_id)
        values = device_attribute_values(device, enrollment_profile_name=profile)
        # The primary user is named only within the caller's users:read scope (a device may be in scope and
        # its user not: outside, they are "its primary user", unnamed).
        user_name = None
        if device.user_id is not None and principal.has(P.users_read):
            with contextlib.suppress(NotFound):
                user_name = (
                    await user_service.get_for(session, principal, device.user_id)
                ).user_principal_name
        items = [
            self._explain_one(result, assignments[i], groups, filters, values, user_name)
            for i, result in enumerate(resolution.results)
        ]
        return Explanation(
            device=device_ref(device),
            object=object_ref(obj),
            verdict=resolution.verdict,
            summary=self._summary(resolution.verdict, items, device, obj),
            assignments=items,
            stored=await repo.is_target(session, obj.id, device.id),
        )

    def _explain_one(
        self,
        result: AssignmentResult,
        assignment: Assignment,
        groups: dict[uuid.UUID, Group],
        filters: dict[uuid.UUID, AssignmentFilter],
        values: dict[str, Any],
        user_name: str | None,
    ) -> AssignmentExplanation:
        out = self.assignment_out(assignment, groups)
        path = result.path
        chain = [
            ChainStep(id=g, display_name=groups[g].display_name if g in groups else str(g))
            for g in (path.chain if path else ())
        ]
        filter_result = None
        if assignment.filter is not None and path is not None:
            found = filters[assignment.filter.id]
            explanation: dict[str, Any] = {}
            lines: list[str] = []
            try:
                evaluated = evaluate(parse_rule(found.rule, DEVICE_SCHEMA), values)
                explanation, lines = evaluated.to_dict(), explanation_lines(evaluated)
            except (RuleError, KeyError) as exc:
                lines = [f"✗ the rule no longer applies: {exc}"]
            filter_result = FilterResult(
                filter=FilterRef(id=found.id, name=found.name),
                mode=FilterMode(assignment.filter_mode or FilterMode.include),
                rule=found.rule,
                matched=bool(result.filter_matched),
                passed=result.filter_passed,
                explanation=explanation,
                lines=lines,
            )
        target = out.group.display_name if out.group else assignment.target.value.replace("_", " ")
        if path is None:
            effect = "none"
            if assignment.target is AssignmentTarget.all_users:
                reason = "The device has no primary user."
            elif assignment.target is AssignmentTarget.group:
                reason = f"Neither the device nor its primary user is in {target} (or a group nested in it)."
            else:
                reason = "The object does not apply to this device."
        elif not result.filter_passed:
            assert filter_result is not None
            effect = "none"
            reason = (
                f"Its filter {filter_result.filter.name!r} ({filter_result.mode.value} mode) "
                f"{'matches' if filter_result.matched else 'does not match'} the device, so the assignment "
                "does not apply."
            )
        else:
            effect = "includes" if assignment.mode is AssignmentMode.include else "excludes"
            how = {
                Via.all_devices: "all devices",
                Via.all_users: "all users (its primary user" + (f" {user_name}" if user_name else "") + ")",
                Via.device: "the device's membership"
                + (
                    f" through {' → '.join(s.display_name for s in chain)}"
                    if len(chain) > 1
                    else f" of {target}"
                ),
                Via.primary_user: (f"its primary user {user_name}'s" if user_name else "its primary user's")
                + " membership"
                + (
                    f" through {' → '.join(s.display_name for s in chain)}"
                    if len(chain) > 1
                    else f" of {target}"
                ),
            }[path.via]
            reason = f"{'Includes' if effect == 'includes' else 'Excludes'} the device by {how}"
            if filter_result is not None:
                reason += f"; its filter {filter_result.filter.name!r} lets it through"
            reason += "."
        return AssignmentExplanation(
            assignment=out,
            reaches=path is not None,
            via=path.via if path else None,
            user=user_name if path is not None and path.via in (Via.primary_user, Via.all_users) else None,
            chain=chain,
            filter=filter_result,
            effect=effect,
            reason=reason,
        )

    def _summary(
        self, verdict: Verdict, items: list[AssignmentExplanation], device: Device, obj: Assignable
    ) -> str:
        if verdict is Verdict.inactive:
            return f"The device is {device.management_state.value}: nothing is assigned to it."
        if verdict is Verdict.not_applicable:
            return f"The {obj.name!r} {obj.platform} object does not apply to a {device.platform} device."
        excluded = [i for i in items if i.effect == "excludes"]
        included = [i for i in items if i.effect == "includes"]
        if verdict is Verdict.excluded:
            names = ", ".join(i.assignment.group.display_name for i in excluded if i.assignment.group)
            also = " (exclusion wins over inclusion)" if included else ""
            return f"Excluded by {names}{also}."
        if verdict is Verdict.included:
            return "Included: " + " ".join(i.reason for i in included)
        if not items:
            return "Not targeted: the object has no assignments."
        return "Not targeted: no assignment reaches the device."

    # ---------------------------------------------------------------- filters
    def _filter_visible(
        self, principal: Principal, item: AssignmentFilter, permission: P = P.filters_read
    ) -> bool:
        return principal.scope_for(permission).covers(t.id for t in item.scope_tags)

    async def filters(
        self, session: AsyncSession, principal: Principal, search: str | None, platform: Platform | None
    ) -> list[FilterOut]:
        items = await repo.filters(session, search, platform.value if platform else None)
        return [filter_out(f) for f in items if self._filter_visible(principal, f)]

    async def get_filter(
        self,
        session: AsyncSession,
        principal: Principal,
        filter_id: uuid.UUID,
        permission: P = P.filters_read,
    ) -> AssignmentFilter:
        item = await repo.get_filter(session, filter_id)
        if item is None or not self._filter_visible(principal, item):
            raise NotFound("No such filter.")
        if permission is not P.filters_read and not self._filter_visible(principal, item, permission):
            raise Forbidden(f"This needs the permission {permission.value} over this filter.")
        return item

    async def filter_detail(
        self, session: AsyncSession, principal: Principal, item: AssignmentFilter
    ) -> FilterDetail:
        used = await repo.objects_using_filter(session, item.id)
        return FilterDetail(
            **filter_out(item).model_dump(),
            used_by=[object_ref(o) for o in used if self.visible(principal, o)],
        )

    async def _tags(self, session: AsyncSession, principal: Principal, ids: Sequence[uuid.UUID]) -> list[Any]:
        tags = await rbac_repository.tags_by_ids(session, ids)
        if len(tags) != len(set(ids)):
            raise ValidationFailed("scope_tag_ids: one or more scope tags do not exist.")
        new_scope = Scope(tag_ids=frozenset(t.id for t in tags)) if tags else EVERYWHERE
        if not principal.scope_for(P.filters_write).ignoring_groups().contains(new_scope):
            raise Forbidden("You can only tag a filter into scopes you administer.")
        return tags

    async def create_filter(
        self, session: AsyncSession, principal: Principal, data: FilterCreate
    ) -> AssignmentFilter:
        rule = parse_filter_rule(data.rule)
        if await repo.filter_name_taken(session, data.name):
            raise Conflict(f"A filter named {data.name!r} already exists.")
        tags = await self._tags(session, principal, data.scope_tag_ids)
        item = AssignmentFilter(
            id=uuid.uuid4(),
            name=data.name,
            description=data.description,
            platform=data.platform,
            rule=format_rule(rule),
            scope_tags=tags,
        )
        session.add(item)
        await session.flush()
        await audit_service.record(
            session,
            activity="filter.create",
            category="policy",
            operation="create",
            target_type="assignment_filter",
            target_id=item.id,
            target_name=item.name,
            changes=[
                ("name", None, item.name),
                ("platform", None, item.platform),
                ("rule", None, item.rule),
                ("scope_tags", None, sorted(t.name for t in tags) or None),
            ],
        )
        return await self.get_filter(session, principal, item.id)

    async def update_filter(
        self, session: AsyncSession, principal: Principal, filter_id: uuid.UUID, data: FilterUpdate
    ) -> AssignmentFilter:
        item = await self.get_filter(session, principal, filter_id, P.filters_write)
        changes: list[tuple[str, Any, Any]] = []
        if data.name is not None and data.name != item.name:
            if await repo.filter_name_taken(session, data.name, item.id):
                raise Conflict(f"A filter named {data.name!r} already exists.")
            changes.append(("name", item.name, data.name))
            item.name = data.name
        if data.description is not None and data.description != item.description:
            changes.append(("description", item.description, data.description))
            item.description = data.description
        rule_changed = False
        if data.rule is not None:
            rule = format_rule(parse_filter_rule(data.rule))
            if rule != item.rule:
                changes.append(("rule", item.rule, rule))
                item.rule, rule_changed = rule, True
        if data.scope_tag_ids is not None:
            tags = await self._tags(session, principal, data.scope_tag_ids)
            before = sorted(t.name for t in item.scope_tags)
            item.scope_tags = tags
            if before != sorted(t.name for t in tags):
                changes.append(("scope_tags", before, sorted(t.name for t in tags)))
        if not changes:
            return item
        await session.flush()
        detail = None
        if rule_changed:
            from corral.assignments import hooks

            objects = await engine.objects_using_filter(session, item.id)
            await hooks.recompute(session, objects)
            detail = f"{len(objects)} object(s) use this filter: their targets were recomputed"
        await audit_service.record(
            session,
            activity="filter.update",
            category="policy",
            operation="update",
            target_type="assignment_filter",
            target_id=item.id,
            target_name=item.name,
            changes=changes,
            detail=detail,
        )
        return await self.get_filter(session, principal, item.id)

    async def delete_filter(self, session: AsyncSession, principal: Principal, filter_id: uuid.UUID) -> None:
        item = await self.get_filter(session, principal, filter_id, P.filters_write)
        used = await repo.objects_using_filter(session, item.id)
        if used:
            names = ", ".join(repr(o.name) for o in used[:5]) + (" …" if len(used) > 5 else "")
            raise Conflict(f"The filter is used by the assignments of {names}: remove it from them first.")
        await session.delete(item)
        await session.flush()
        await audit_service.record(
            session,
            activity="filter.delete",
            category="policy",
            operation="delete",
            target_type="assignment_filter",
            target_id=item.id,
            target_name=item.name,
            changes=[("rule", item.rule, None)],
        )

    async def preview_filter(
        self, session: AsyncSession, principal: Principal, data: FilterPreviewRequest
    ) -> FilterPreviewOut:
        rule = parse_filter_rule(data.rule)
        count, devices = await repo.sample_devices(
            session,
            compile_rule(rule, DEVICE_SCHEMA),
            sorted(APPLIES_TO[data.platform]),
            principal.scope_for(P.devices_read),
            data.limit,
        )
        return FilterPreviewOut(count=count, devices=[device_ref(d) for d in devices], rule=format_rule(rule))


assignment_service = AssignmentService()
