"""Compliance policies: their lifecycle (through the API and the admin center), and the evaluation of
devices against the policies that reach them (docs/policies.md, "Compliance").

Evaluation runs on the server: when a device reports new inventory, when a policy's settings or actions or
its assignments change (through the assignment engine's targets listener), and on time in the worker
(grace periods ending, the validity period, overrides running out). It stores per device, policy and setting
what the policy expects and what the device reported; per device and policy the state and, while it fails,
when the episode began and when its grace period ends; the device's own state (the worst of its policies,
unless an administrator's override or the tenant's validity rule says otherwise) and a history of its
changes.
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, cast

from sqlalchemy import (
    Integer,
    Select,
    delete,
    func,
    select,
    text,
    true,
)
from sqlalchemy import cast as sa_cast
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm import selectinload
from sqlalchemy.orm.attributes import set_committed_value
from sqlalchemy.orm.util import identity_key

from corral.assignments import engine
from corral.audit.service import audit_service
from corral.compliance import catalog, evaluation
from corral.compliance.schemas import (
    ActionIn,
    ActionKind,
    ActionOut,
    CatalogSetting,
    ComplianceTenantSettings,
    ComplianceTenantSettingsUpdate,
    DeviceCompliance,
    HistoryEntry,
    OverrideIn,
    OverrideOut,
    PolicyCreate,
    PolicyOut,
    PolicyPage,
    PolicyResult,
    PolicyStatus,
    PolicyUpdate,
    SettingCount,
    SettingResult,
    StatusDevice,
    StatusDevicePage,
    StepTaken,
)
from corral.devices import repository as devices_repository
from corral.devices.service import device_service
from corral.errors import Conflict, Forbidden, NotFound, ValidationFailed
from corral.groups import effective
from corral.groups.membership import ENDED_STATES
from corral.kit.time import utcnow
from corral.models import (
    AssignableKind,
    ComplianceActionRun,
    ComplianceOverride,
    CompliancePolicy,
    ComplianceState,
    Device,
    DeviceComplianceChange,
    DeviceCompliancePolicy,
    Platform,
    TenantSettings,
    device_targets,
)
from corral.models.compliance import setting_results
from corral.rbac import repository as rbac_repository
from corral.rbac.permissions import P
from corral.rbac.principal import EVERYWHERE, Principal, Scope

#: Worst first: a device's state is the worst of its policies'.
RANK = {
    ComplianceState.compliant: 0,
    ComplianceState.in_grace_period: 1,
    ComplianceState.error: 2,
    ComplianceState.noncompliant: 3,
}
#: Devices evaluated per batch (two statements each, whatever the number of policies and settings).
BATCH = 5000
#: Evaluations of more devices than this are planned for their parameters (see ``evaluate``).
CUSTOM_PLANS_ABOVE = 100
#: More devices than this after a change are evaluated by the worker, not in the request.
INLINE_DEVICES = 2000
MAX_OVERRIDE = timedelta(days=90)
DEFAULT_ACTIONS: list[dict[str, Any]] = [{"action": "mark_noncompliant", "delay_hours": 0}]
#: How many times an action may appear in a ladder.
MAX_PER_ACTION = {
    ActionKind.mark_noncompliant: 1,
    ActionKind.email_user: 3,
    ActionKind.push_message: 3,
    ActionKind.remote_lock: 1,
    ActionKind.retire: 1,
}


def policy_out(policy: CompliancePolicy) -> PolicyOut:
    return PolicyOut(
        id=policy.id,
        name=policy.name,
        description=policy.description,
        platform=policy.platform,
        version=policy.version,
        settings=dict(policy.settings or {}),
        actions=[ActionOut(**_action_defaults(a)) for a in (policy.actions or DEFAULT_ACTIONS)],
        scope_tags=sorted(t.name for t in policy.scope_tags),
        created_at=policy.created_at,
        updated_at=policy.updated_at,
    )


def _action_defaults(action: dict[str, Any]) -> dict[str, Any]:
    return {"recipients": [], "template_id": None, "message": "", "delay_hours": 0, **action}


def validate_settings(platform: Platform, settings: dict[str, Any]) -> dict[str, Any]:
    """The settings, checked against the catalog: a 422 naming the first bad one."""
    if not settings:
        raise ValidationFailed("settings: a compliance policy requires at least one setting.")
    for setting_id, value in settings.items():
        setting = catalog.BY_ID.get(setting_id)
        if setting is None:
            raise ValidationFailed(f"settings.{setting_id}: no such compliance setting.")
        if platform not in setting.platforms:
            raise ValidationFailed(
                f"settings.{setting_id}: {setting.name!r} is not reported by {platform.value} devices."
            )
        problem = setting.validate(value)
        if problem:
            raise ValidationFailed(f"settings.{setting_id}: {problem}.")
    low, high = settings.get("os.min_version"), settings.get("os.max_version")
    if low and high and catalog.version_key(low) > catalog.version_key(high):
        raise ValidationFailed("settings.os.max_version: must not be below os.min_version.")
    clash = set(settings.get("apps.required") or ()) & set(settings.get("apps.forbidden") or ())
    if clash:
        raise ValidationFailed(f"settings.apps.forbidden: {sorted(clash)[0]!r} is also required.")
    return dict(sorted(settings.items()))


def validate_actions(actions: Sequence[ActionIn]) -> list[dict[str, Any]]:
    """The ladder: mark noncompliant first (its delay is the grace period), then the other steps with delays
    never going back, each action a bounded number of times;
    only e-mail takes recipients and a template, only a message takes text."""
    if not actions:
        raise ValidationFailed("actions: the first action must be mark_noncompliant.")
    if actions[0].action is not ActionKind.mark_noncompliant:
        raise ValidationFailed("actions.0.action: the first action must be mark_noncompliant.")
    counts: dict[ActionKind, int] = {}
    out = []
    previous = 0
    for index, step in enumerate(actions):
        counts[step.action] = counts.get(step.action, 0) + 1
        if counts[step.action] > MAX_PER_ACTION[step.action]:
            raise ValidationFailed(
                f"actions.{index}.action: {step.action.value} at most {MAX_PER_ACTION[step.action]} time(s)."
            )
        # The grace period (the first step) has its own clock; the steps after it run in order.
        if index > 1 and step.delay_hours < previous:
            raise ValidationFailed(
                f"actions.{index}.delay_hours: steps run in order; {step.delay_hours} h comes before the "
                f"previous step's {previous} h."
            )
        if index > 0:
            previous = step.delay_hours
        if step.action is not ActionKind.email_user and (step.recipients or step.template_id):
            raise ValidationFailed(f"actions.{index}: only email_user takes recipients and a template.")
        if step.action is ActionKind.push_message and not step.message:
            raise ValidationFailed(f"actions.{index}.message: the text the device shows is required.")
        if step.action is not ActionKind.push_message and step.message:
            raise ValidationFailed(f"actions.{index}.message: only push_message takes a message.")
        item: dict[str, Any] = {"action": step.action.value, "delay_hours": step.delay_hours}
        if step.recipients:
            item["recipients"] = list(step.recipients)
        if step.template_id:
            item["template_id"] = str(step.template_id)
        if step.message:
            item["message"] = step.message
        out.append(item)
    return out


@dataclass
class Evaluated:
    """One device's result (for the caller: what changed)."""

    device_id: uuid.UUID
    old: ComplianceState
    new: ComplianceState
    reason: str
    #: As the device's history records it (with what caused the evaluation).
    history: str = ""


class ComplianceService:
    # ---------------------------------------------------------------- catalog
    def catalog(self, platform: Platform | None) -> list[CatalogSetting]:
        settings = catalog.settings_for(platform) if platform else list(catalog.SETTINGS)
        return [CatalogSetting(**s.describe()) for s in settings]

    # ---------------------------------------------------------------- policies
    def _visible(
        self, principal: Principal, policy: CompliancePolicy, permission: P = P.compliance_read
    ) -> bool:
        return principal.scope_for(permission).covers(t.id for t in policy.scope_tags)

    async def get(
        self,
        session: AsyncSession,
        principal: Principal,
        policy_id: uuid.UUID,
        permission: P = P.compliance_read,
        *,
        for_update: bool = False,
    ) -> CompliancePolicy:
        stmt = (
            select(CompliancePolicy)
            .where(CompliancePolicy.id == policy_id)
            .options(selectinload(CompliancePolicy.scope_tags))
        )
        if for_update:
            stmt = stmt.with_for_update(of=CompliancePolicy.__table__)
        policy = await session.scalar(stmt)
        if policy is None or not self._visible(principal, policy):
            raise NotFound("No such compliance policy.")
        if permission is not P.compliance_read and not self._visible(principal, policy, permission):
            raise Forbidden(f"This needs the permission {permission.value} over this compliance policy.")
        return policy

    async def page(
        self,
        session: AsyncSession,
        principal: Principal,
        *,
        search: str | None = None,
        platform: Platform | None = None,
        scope_tag_id: uuid.UUID | None = None,
    ) -> PolicyPage:
        stmt = select(CompliancePolicy).options(selectinload(CompliancePolicy.scope_tags))
        if search:
            stmt = stmt.where(CompliancePolicy.name.icontains(search.strip(), autoescape=True))
        if platform:
            stmt = stmt.where(CompliancePolicy.platform == platform)
        stmt = stmt.order_by(func.lower(CompliancePolicy.name), CompliancePolicy.id)
        items = [
            p
            for p in (await session.scalars(stmt)).all()
            if self._visible(principal, p)
            and (scope_tag_id is None or scope_tag_id in {t.id for t in p.scope_tags})
        ]
        return PolicyPage(items=[policy_out(p) for p in items], total=len(items))

    async def _tags(self, session: AsyncSession, principal: Principal, ids: Sequence[uuid.UUID]) -> list[Any]:
        tags = await rbac_repository.tags_by_ids(session, ids)
        if len(tags) != len(set(ids)):
            raise ValidationFailed("scope_tag_ids: one or more scope tags do not exist.")
        new_scope = Scope(tag_ids=frozenset(t.id for t in tags)) if tags else EVERYWHERE
        if not principal.scope_for(P.compliance_write).ignoring_groups().contains(new_scope):
            raise Forbidden("You can only tag a compliance policy into scopes you administer.")
        return tags

    async def _name_taken(self, session: AsyncSession, name: str, but: uuid.UUID | None = None) -> bool:
        stmt = select(CompliancePolicy.id).where(func.lower(CompliancePolicy.name) == name.lower())
        if but is not None:
            stmt = stmt.where(CompliancePolicy.id != but)
        return (await session.scalar(stmt)) is not None

    async def create(
        self, session: AsyncSession, principal: Principal, data: PolicyCreate
    ) -> CompliancePolicy:
        settings = validate_settings(data.platform, data.settings)
        actions = validate_actions(data.actions) if data.actions is not None else list(DEFAULT_ACTIONS)
        await self._check_templates(session, actions)
        if await self._name_taken(session, data.name):
            raise Conflict(f"A compliance policy named {data.name!r} already exists.")
        tags = await self._tags(session, principal, data.scope_tag_ids)
        policy = CompliancePolicy(
            id=uuid.uuid4(),
            kind=AssignableKind.compliance_policy,
            name=data.name,
            description=data.description,
            platform=data.platform,
            settings=settings,
            actions=actions,
            scope_tags=tags,
            created_by_id=principal.user_id,
        )
        session.add(policy)
        await session.flush()
        await audit_service.record(
            session,
            activity="compliance_policy.create",
            category="policy",
            operation="create",
            target_type="compliance_policy",
            target_id=policy.id,
            target_name=policy.name,
            changes=[
                ("name", None, policy.name),
                ("platform", None, policy.platform),
                ("settings", None, settings),
                ("actions", None, actions),
                ("scope_tags", None, sorted(t.name for t in tags) or None),
            ],
        )
        return await self.get(session, principal, policy.id)

    async def update(
        self, session: AsyncSession, principal: Principal, policy_id: uuid.UUID, data: PolicyUpdate
    ) -> CompliancePolicy:
        policy = await self.get(session, principal, policy_id, P.compliance_write, for_update=True)
        changes: list[tuple[str, Any, Any]] = []
        if data.name is not None and data.name != policy.name:
            if await self._name_taken(session, data.name, policy.id):
                raise Conflict(f"A compliance policy named {data.name!r} already exists.")
            changes.append(("name", policy.name, data.name))
            policy.name = data.name
        if data.description is not None and data.description != policy.description:
            changes.append(("description", policy.description, data.description))
            policy.description = data.description
        asks_changed = False
        if data.settings is not None:
            settings = validate_settings(Platform(policy.platform), data.settings)
            if settings != policy.settings:
                changes.append(("settings", policy.settings, settings))
                policy.settings, asks_changed = settings, True
        if data.actions is not None:
            actions = validate_actions(data.actions)
            await self._check_templates(session, actions)
            if actions != policy.actions:
                changes.append(("actions", policy.actions, actions))
                policy.actions, asks_changed = actions, True
        if data.scope_tag_ids is not None:
            tags = await self._tags(session, principal, data.scope_tag_ids)
            before = sorted(t.name for t in policy.scope_tags)
            policy.scope_tags = tags
            if before != sorted(t.name for t in tags):
                changes.append(("scope_tags", before, sorted(t.name for t in tags)))
        if not changes:
            return policy
        if asks_changed:
            policy.version += 1
        policy.updated_at = utcnow()
        await session.flush()
        await audit_service.record(
            session,
            activity="compliance_policy.update",
            category="policy",
            operation="update",
            target_type="compliance_policy",
            target_id=policy.id,
            target_name=policy.name,
            changes=changes,
        )
        if asks_changed:
            # What the devices must report changed (their desired state), and every verdict may have.
            await engine.bump_versions(session, [policy.id])
            await self.evaluate_objects(session, [policy.id])
        return await self.get(session, principal, policy.id)

    async def delete(self, session: AsyncSession, principal: Principal, policy_id: uuid.UUID) -> None:
        policy = await self.get(session, principal, policy_id, P.compliance_write, for_update=True)
        await engine.release_objects(session, [policy.id])  # the targets listener re-evaluates its devices
        # Its results go with it (no foreign key cascades: derived data, see DeviceCompliancePolicy).
        await session.execute(
            delete(DeviceCompliancePolicy).where(DeviceCompliancePolicy.policy_id == policy.id)
        )
        await audit_service.record(
            session,
            activity="compliance_policy.delete",
            category="policy",
            operation="delete",
            target_type="compliance_policy",
            target_id=policy.id,
            target_name=policy.name,
            changes=[("name", policy.name, None), ("settings", policy.settings, None)],
        )
        await session.delete(policy)
        await session.flush()

    async def _check_templates(self, session: AsyncSession, actions: list[dict[str, Any]]) -> None:
        from corral.models import NotificationTemplate

        ids = {uuid.UUID(a["template_id"]) for a in actions if a.get("template_id")}
        if not ids:
            return
        found = set(
            (
                await session.scalars(select(NotificationTemplate.id).where(NotificationTemplate.id.in_(ids)))
            ).all()
        )
        if found != ids:
            index = next(
                i
                for i, a in enumerate(actions)
                if a.get("template_id") and uuid.UUID(a["template_id"]) not in found
            )
            raise ValidationFailed(f"actions.{index}.template_id: no such notification template.")

    # ---------------------------------------------------------------- evaluation
    async def evaluate_objects(self, session: AsyncSession, policy_ids: Sequence[uuid.UUID]) -> None:
        """Every device these policies reach (after a change of what they ask)."""
        device_ids = list(
            (
                await session.scalars(
                    select(device_targets.c.device_id)
                    .where(device_targets.c.assignable_id.in_(policy_ids))
                    .distinct()
                )
            ).all()
        )
        await self.evaluate_soon(session, device_ids)

    async def evaluate_soon(self, session: AsyncSession, device_ids: Sequence[uuid.UUID]) -> None:
        """Evaluate now when few, else in the worker (queued in this transaction)."""
        if not device_ids:
            return
        if len(device_ids) <= INLINE_DEVICES:
            await self.evaluate(session, device_ids)
            return
        from corral.compliance.jobs import defer_evaluation

        await defer_evaluation(session, device_ids)

    async def evaluate(
        self,
        session: AsyncSession,
        device_ids: Sequence[uuid.UUID],
        now: datetime | None = None,
        *,
        reason: str = "",
    ) -> list[Evaluated]:
        """Evaluate these devices against the compliance policies that reach them; store the results; return
        the devices whose state changed."""
        now = now or utcnow()
        changed: list[Evaluated] = []
        ids = sorted(set(device_ids))
        await session.flush()  # evaluation reads columns, not objects: what the caller changed (a check-in's)
        tenant = await session.get(TenantSettings, 1)
        no_policy_compliant = tenant.no_policy_compliant if tenant else True
        validity_days = tenant.compliance_validity_days if tenant else 30
        # A prepared statement turns to a generic plan after five runs; planned for an array of unknown
        # length, evaluation of thousands of devices then loops over whole tables (8 x slower, measured).
        # Batches of many devices are planned for their own parameters (for this transaction, then set back:
        # the caller may have its own setting); a device's own evaluation keeps the cached plan. On an error
        # the transaction's rollback undoes the setting.
        previous = None
        if len(ids) > CUSTOM_PLANS_ABOVE:
            previous = await session.scalar(text("SELECT current_setting('plan_cache_mode')"))
            await session.execute(text("SELECT set_config('plan_cache_mode', 'force_custom_plan', true)"))
        for start in range(0, len(ids), BATCH):
            changed += await self._evaluate_batch(
                session, ids[start : start + BATCH], now, no_policy_compliant, validity_days, reason
            )
        if previous is not None:
            restore = text("SELECT set_config('plan_cache_mode', :mode, true)")
            await session.execute(restore, {"mode": previous})
        return changed

    async def _evaluate_batch(
        self,
        session: AsyncSession,
        ids: list[uuid.UUID],
        now: datetime,
        no_policy_compliant: bool,
        validity_days: int,
        reason: str,
    ) -> list[Evaluated]:
        # Locked in id order: an evaluation of the same devices elsewhere (a check-in, another job) waits,
        # then reads what that one wrote.
        await session.execute(
            select(func.count()).select_from(
                select(Device.id)
                .where(effective.in_ids(Device.id, ids))
                .order_by(Device.id)
                .with_for_update(key_share=True)
                .subquery()
            )
        )
        moved = (
            await session.execute(
                evaluation.EVALUATE,
                {
                    "ids": ids,
                    "now": now,
                    "validity_days": validity_days,
                    "no_policy_compliant": no_policy_compliant,
                    "reason": reason,
                },
            )
        ).all()
        moves = [
            Evaluated(row.id, ComplianceState(row.old), ComplianceState(row.state), row.why, row.history)
            for row in moved
        ]
        # Devices this session holds (a check-in's) are told their new state without being marked changed.
        for m in moves:
            held = session.identity_map.get(identity_key(Device, m.device_id))
            if held is not None:
                set_committed_value(held, "compliance_state", m.new)
        return moves

    async def due_devices(self, session: AsyncSession, now: datetime) -> list[uuid.UUID]:
        """Devices whose state may have changed with time alone: a grace period ended, an override ran out,
        the validity period or a policy's maximum days since check-in passed."""
        tenant = await session.get(TenantSettings, 1)
        validity = timedelta(days=tenant.compliance_validity_days if tenant else 30)
        last = func.coalesce(Device.last_checkin_at, Device.enrolled_at)
        active = Device.management_state.not_in(ENDED_STATES)
        grace = select(DeviceCompliancePolicy.device_id).where(
            DeviceCompliancePolicy.state == ComplianceState.in_grace_period,
            DeviceCompliancePolicy.grace_ends_at <= now,
        )
        overrides = select(ComplianceOverride.device_id).where(ComplianceOverride.until <= now)
        stale = select(Device.id).where(
            active, last < now - validity, Device.compliance_state != ComplianceState.noncompliant
        )
        checkin = DeviceCompliancePolicy.settings["checkin.max_days"]
        checkin_days = (
            select(DeviceCompliancePolicy.device_id)
            .join(Device, Device.id == DeviceCompliancePolicy.device_id)
            .where(
                checkin["state"].astext == ComplianceState.compliant.value,
                last < now - func.make_interval(0, 0, 0, sa_cast(checkin["expected"].astext, Integer)),
            )
        )
        result = await session.scalars(grace.union(overrides, stale, checkin_days))
        return sorted(set(result.all()))

    async def evaluate_due(self, session: AsyncSession, now: datetime | None = None) -> list[Evaluated]:
        """The time-driven part of evaluation (the worker runs it every few minutes): re-evaluate the devices
        whose state may have changed with time, and drop overrides that ran out."""
        now = now or utcnow()
        devices = await self.due_devices(session, now)
        expired = (
            (
                await session.execute(
                    delete(ComplianceOverride)
                    .where(ComplianceOverride.until <= now)
                    .returning(ComplianceOverride.device_id)
                )
            )
            .scalars()
            .all()
        )
        changed = await self.evaluate(session, devices, now, reason="time")
        if expired:
            await audit_service.record_many(
                session,
                [
                    {
                        "activity": "device.compliance_override_expired",
                        "category": "policy",
                        "operation": "update",
                        "target_type": "device",
                        "target_id": device_id,
                    }
                    for device_id in expired
                ],
            )
        return changed

    # ---------------------------------------------------------------- device side
    async def device_compliance(
        self, session: AsyncSession, principal: Principal, device_id: uuid.UUID
    ) -> DeviceCompliance:
        device = await device_service.get(session, principal, device_id)
        states = (
            await session.execute(
                select(DeviceCompliancePolicy, CompliancePolicy)
                .join(CompliancePolicy, CompliancePolicy.id == DeviceCompliancePolicy.policy_id)
                .where(DeviceCompliancePolicy.device_id == device.id)
                .options(selectinload(CompliancePolicy.scope_tags))
                .order_by(func.lower(CompliancePolicy.name))
            )
        ).all()
        steps = (
            await session.scalars(
                select(ComplianceActionRun)
                .where(ComplianceActionRun.device_id == device.id)
                .order_by(ComplianceActionRun.ran_at)
            )
        ).all()
        override = await session.get(ComplianceOverride, device.id)
        results = []
        for state, policy in states:
            if not self._visible(principal, policy):
                continue
            results.append(
                PolicyResult(
                    policy_id=policy.id,
                    policy_name=policy.name,
                    policy_version=state.policy_version,
                    state=state.state,
                    failing_since=state.failing_since,
                    grace_ends_at=state.grace_ends_at,
                    evaluated_at=state.evaluated_at,
                    settings=[
                        SettingResult(
                            setting_id=sid,
                            name=catalog.BY_ID[sid].name if sid in catalog.BY_ID else sid,
                            state=r["state"],
                            expected=r.get("expected"),
                            observed=r.get("observed"),
                            message=r.get("message", ""),
                        )
                        for sid, r in sorted(state.settings.items())
                    ],
                    steps_taken=[
                        StepTaken(step=r.step, action=r.action, ran_at=r.ran_at, result=r.result)
                        for r in steps
                        if r.policy_id == policy.id and r.episode_started_at == state.failing_since
                    ],
                )
            )
        last = (
            await session.scalars(
                select(DeviceComplianceChange)
                .where(DeviceComplianceChange.device_id == device.id)
                .order_by(DeviceComplianceChange.id.desc())
                .limit(1)
            )
        ).first()
        return DeviceCompliance(
            device_id=device.id,
            state=device.compliance_state,
            reason=last.reason if last else "not evaluated yet",
            override=OverrideOut(
                until=override.until,
                reason=override.reason,
                created_by=override.created_by_name,
                created_at=override.created_at,
            )
            if override
            else None,
            policies=results,
        )

    async def history(
        self, session: AsyncSession, principal: Principal, device_id: uuid.UUID, limit: int = 200
    ) -> list[HistoryEntry]:
        device = await device_service.get(session, principal, device_id)
        rows = (
            await session.scalars(
                select(DeviceComplianceChange)
                .where(DeviceComplianceChange.device_id == device.id)
                .order_by(DeviceComplianceChange.id.desc())
                .limit(limit)
            )
        ).all()
        return [
            HistoryEntry(at=r.at, old_state=r.old_state, new_state=r.new_state, reason=r.reason) for r in rows
        ]

    async def set_override(
        self, session: AsyncSession, principal: Principal, device_id: uuid.UUID, data: OverrideIn
    ) -> DeviceCompliance:
        device = await device_service.get(session, principal, device_id, P.compliance_write, for_update=True)
        now = utcnow()
        until = data.until if data.until.tzinfo else data.until.replace(tzinfo=now.tzinfo)
        if until <= now:
            raise ValidationFailed("until: must be in the future.")
        if until > now + MAX_OVERRIDE:
            raise ValidationFailed("until: at most 90 days ahead.")
        current = await session.get(ComplianceOverride, device.id)
        old = {"until": current.until.isoformat(), "reason": current.reason} if current else None
        if current is None:
            current = ComplianceOverride(device_id=device.id, until=until, reason=data.reason, created_at=now)
            session.add(current)
        current.until, current.reason, current.created_at = until, data.reason, now
        current.created_by_id = principal.user_id
        current.created_by_name = principal.display_name or principal.user_principal_name or ""
        await session.flush()
        await audit_service.record(
            session,
            activity="device.compliance_override",
            category="policy",
            operation="update",
            target_type="device",
            target_id=device.id,
            target_name=device.name,
            changes=[("compliance_override", old, {"until": until.isoformat(), "reason": data.reason})],
        )
        await self.evaluate(session, [device.id], now, reason="override")
        return await self.device_compliance(session, principal, device.id)

    async def clear_override(self, session: AsyncSession, principal: Principal, device_id: uuid.UUID) -> None:
        device = await device_service.get(session, principal, device_id, P.compliance_write, for_update=True)
        current = await session.get(ComplianceOverride, device.id)
        if current is None:
            raise NotFound("The device has no compliance override.")
        old = {"until": current.until.isoformat(), "reason": current.reason}
        await session.delete(current)
        await session.flush()
        await audit_service.record(
            session,
            activity="device.compliance_override",
            category="policy",
            operation="delete",
            target_type="device",
            target_id=device.id,
            target_name=device.name,
            changes=[("compliance_override", old, None)],
        )
        await self.evaluate(session, [device.id], reason="override removed")

    # ---------------------------------------------------------------- tenant settings
    async def tenant_settings(self, session: AsyncSession) -> ComplianceTenantSettings:
        tenant = await session.get(TenantSettings, 1)
        if tenant is None:
            return ComplianceTenantSettings(no_policy_compliant=True, compliance_validity_days=30)
        return ComplianceTenantSettings.model_validate(tenant)

    async def update_tenant_settings(
        self, session: AsyncSession, data: ComplianceTenantSettingsUpdate
    ) -> ComplianceTenantSettings:
        tenant = await session.get(TenantSettings, 1, with_for_update=True)
        if tenant is None:
            tenant = TenantSettings(id=1)
            session.add(tenant)
            await session.flush()
        changes = []
        for field in ("no_policy_compliant", "compliance_validity_days"):
            value = getattr(data, field)
            if value is not None and value != getattr(tenant, field):
                changes.append((field, getattr(tenant, field), value))
                setattr(tenant, field, value)
        if changes:
            await session.flush()
            await audit_service.record(
                session,
                activity="tenant.compliance_settings",
                category="policy",
                operation="update",
                target_type="tenant",
                target_name="Compliance settings",
                changes=changes,
            )
            # Every device may change: no-policy devices and the validity rule.
            device_ids = list(
                (
                    await session.scalars(
                        select(Device.id).where(Device.management_state.not_in(ENDED_STATES))
                    )
                ).all()
            )
            await self.evaluate_soon(session, device_ids)
        return ComplianceTenantSettings.model_validate(tenant)

    # ---------------------------------------------------------------- reports
    async def status(self, session: AsyncSession, principal: Principal, policy_id: uuid.UUID) -> PolicyStatus:
        policy = await self.get(session, principal, policy_id)
        scope = principal.scope_for(P.devices_read)
        in_scope = devices_repository.scoped(select(Device.id), scope).scalar_subquery()
        counts = dict(
            (
                await session.execute(
                    select(DeviceCompliancePolicy.state, func.count())
                    .where(
                        DeviceCompliancePolicy.policy_id == policy.id,
                        DeviceCompliancePolicy.device_id.in_(in_scope),
                    )
                    .group_by(DeviceCompliancePolicy.state)
                )
            ).all()
        )
        per_setting: dict[str, dict[str, int]] = {}
        each = setting_results()
        setting_state = each.c.value["state"].astext
        for setting_id, state, count in (
            await session.execute(
                select(each.c.key, setting_state, func.count())
                .select_from(DeviceCompliancePolicy)
                .join(each, true())
                .where(
                    DeviceCompliancePolicy.policy_id == policy.id,
                    DeviceCompliancePolicy.device_id.in_(in_scope),
                )
                .group_by(each.c.key, setting_state)
            )
        ).all():
            per_setting.setdefault(setting_id, {})[str(state)] = count
        return PolicyStatus(
            policy_id=policy.id,
            counts={str(s): int(counts.get(s, 0)) for s in RANK},
            settings=[
                SettingCount(
                    setting_id=sid,
                    name=catalog.BY_ID[sid].name if sid in catalog.BY_ID else sid,
                    compliant=per_setting.get(sid, {}).get("compliant", 0),
                    noncompliant=per_setting.get(sid, {}).get("noncompliant", 0),
                    error=per_setting.get(sid, {}).get("error", 0),
                )
                for sid in (policy.settings or {})
            ],
        )

    async def status_devices(
        self,
        session: AsyncSession,
        principal: Principal,
        policy_id: uuid.UUID,
        state: ComplianceState | None,
        setting_id: str | None = None,
        limit: int = 500,
    ) -> StatusDevicePage:
        policy = await self.get(session, principal, policy_id)
        scope = principal.scope_for(P.devices_read)
        stmt = (
            devices_repository.scoped(
                cast(
                    "Select[Any]",
                    select(
                        Device.id,
                        Device.name,
                        DeviceCompliancePolicy.state,
                        DeviceCompliancePolicy.grace_ends_at,
                        DeviceCompliancePolicy.evaluated_at,
                    ),
                ),
                scope,
            )
            .join(DeviceCompliancePolicy, DeviceCompliancePolicy.device_id == Device.id)
            .where(DeviceCompliancePolicy.policy_id == policy.id)
        )
        if state is not None and setting_id is None:
            stmt = stmt.where(DeviceCompliancePolicy.state == state)
        if setting_id is not None:
            result = DeviceCompliancePolicy.settings[setting_id]
            stmt = stmt.where(result.is_not(None))
            if state is not None:
                stmt = stmt.where(result["state"].astext == ComplianceState(state).value)
        total = int(await session.scalar(select(func.count()).select_from(stmt.subquery())) or 0)
        rows = (await session.execute(stmt.order_by(func.lower(Device.name), Device.id).limit(limit))).all()
        return StatusDevicePage(
            items=[
                StatusDevice(
                    device_id=r[0], device_name=r[1], state=r[2], grace_ends_at=r[3], evaluated_at=r[4]
                )
                for r in rows
            ],
            total=total,
        )


compliance_service = ComplianceService()


async def on_targets_changed(session: AsyncSession, device_ids: set[uuid.UUID]) -> None:
    """The assignment engine's listener: devices whose targets changed are evaluated again."""
    await compliance_service.evaluate_soon(session, sorted(device_ids))


engine.LISTENERS.append(on_targets_changed)
