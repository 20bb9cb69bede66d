"""The actions for noncompliance: each policy's ordered steps, run for a device once its delay has passed
since the device first failed the policy (the start of its noncompliance *episode*), each step at most once
per episode, while the device still fails.

A step is first claimed (a row in ``compliance_action_runs``, inserted with ON CONFLICT DO NOTHING and
committed), then carried out, then its result recorded: two workers never take the same step, and a step is
never repeated, even when sending fails (the failure is recorded on the step and in the audit log).
Commands (notification, lock, retire) go through the commands path as Corral's own requests; e-mail goes to
the device's user and the step's extra recipients through the configured SMTP relay.
"""

from __future__ import annotations

import logging
import uuid
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from jinja2.sandbox import SandboxedEnvironment
from sqlalchemy import select
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from corral import mail
from corral.audit.service import audit_service
from corral.commands.service import CommandRequest, System, command_service
from corral.compliance import catalog
from corral.config import Settings
from corral.errors import CorralError
from corral.groups.membership import ENDED_STATES
from corral.kit.time import utcnow
from corral.models import (
    ComplianceActionRun,
    CompliancePolicy,
    ComplianceState,
    Device,
    DeviceCompliancePolicy,
    NotificationTemplate,
    TenantSettings,
    User,
)

log = logging.getLogger("corral.compliance")

DEFAULT_SUBJECT = "Action needed: {{ device.name }} does not meet {{ policy.name }}"
DEFAULT_BODY = """Hello {{ user.name }},

your device {{ device.name }} does not meet the compliance policy "{{ policy.name }}" of {{ organization }}.
{% for s in failing %}
- {{ s.name }}: required {{ s.expected }}, found {{ s.observed }}
{%- endfor %}

Please fix this{% if grace_ends_at %} before {{ grace_ends_at }}{% endif %}; until then the device may lose
access to company resources.
{% if support %}
Need help? {{ support }}
{% endif %}"""

_templates = SandboxedEnvironment(autoescape=False, keep_trailing_newline=True)


@dataclass(frozen=True)
class Claimed:
    device_id: uuid.UUID
    policy_id: uuid.UUID
    episode: datetime
    step: int
    action: dict[str, Any]


def render(template: str, values: dict[str, Any]) -> str:
    return _templates.from_string(template).render(**values)


async def _claim(session: AsyncSession, now: datetime) -> list[Claimed]:
    """The steps due now that no one took yet, claimed (rows inserted) in the caller's transaction."""
    rows = (
        await session.execute(
            select(DeviceCompliancePolicy, CompliancePolicy.actions)
            .join(CompliancePolicy, CompliancePolicy.id == DeviceCompliancePolicy.policy_id)
            .join(Device, Device.id == DeviceCompliancePolicy.device_id)
            .where(
                DeviceCompliancePolicy.failing_since.is_not(None),
                DeviceCompliancePolicy.state.in_(
                    [ComplianceState.in_grace_period, ComplianceState.noncompliant]
                ),
                Device.management_state.not_in(ENDED_STATES),
            )
        )
    ).all()
    wanted = []
    for state, actions in rows:
        assert state.failing_since is not None
        for index, action in enumerate(actions or []):
            if now >= state.failing_since + timedelta(hours=int(action.get("delay_hours") or 0)):
                wanted.append(
                    {
                        "device_id": state.device_id,
                        "policy_id": state.policy_id,
                        "episode_started_at": state.failing_since,
                        "step": index,
                        "action": str(action.get("action")),
                        "ran_at": now,
                        "result": "taken",
                    }
                )
    if not wanted:
        return []
    actions_of = {(state.device_id, state.policy_id): actions for state, actions in rows}
    inserted = (
        await session.execute(
            pg_insert(ComplianceActionRun)
            .values(wanted)
            .on_conflict_do_nothing()
            .returning(
                ComplianceActionRun.device_id,
                ComplianceActionRun.policy_id,
                ComplianceActionRun.episode_started_at,
                ComplianceActionRun.step,
            )
        )
    ).all()
    return [
        Claimed(d, p, e, s, dict(actions_of[(d, p)][s]))
        for d, p, e, s in sorted(inserted, key=lambda r: (r[0], r[1], r[3]))
    ]


async def run_due_steps(
    sessionmaker: async_sessionmaker[AsyncSession], settings: Settings, now: datetime | None = None
) -> int:
    """Claim and carry out every step due; returns how many were taken."""
    now = now or utcnow()
    async with sessionmaker() as session:
        claimed = await _claim(session, now)
        await session.commit()
    for step in claimed:
        try:
            result = await _carry_out(sessionmaker, settings, step, now)
        except Exception as exc:  # one step's failure must not stop the others; it is recorded
            log.exception(
                "compliance: step %d of policy %s for device %s failed",
                step.step,
                step.policy_id,
                step.device_id,
            )
            result = f"failed: {type(exc).__name__}: {exc}"
        async with sessionmaker() as session:
            run = await session.get(
                ComplianceActionRun, (step.device_id, step.policy_id, step.episode, step.step)
            )
            if run is not None:
                run.result = result[:2000]
            policy = await session.get(CompliancePolicy, step.policy_id)
            device = await session.get(Device, step.device_id)
            await audit_service.record(
                session,
                activity="compliance.action",
                category="policy",
                operation="update",
                result="failure" if result.startswith("failed") else "success",
                target_type="device",
                target_id=step.device_id,
                target_name=device.name if device else None,
                detail=f"{policy.name if policy else step.policy_id}: step {step.step + 1} "
                f"({step.action.get('action')}): {result}"[:2000],
            )
            await session.commit()
    return len(claimed)


async def _carry_out(
    sessionmaker: async_sessionmaker[AsyncSession], settings: Settings, step: Claimed, now: datetime
) -> str:
    action = step.action.get("action")
    async with sessionmaker() as session:
        policy = await session.get(CompliancePolicy, step.policy_id)
        device = await session.get(Device, step.device_id)
        if policy is None or device is None:
            return "skipped: the policy or the device is gone"
        if action == "mark_noncompliant":
            return "marked noncompliant"
        if action == "email_user":
            message = await _email(session, settings, step, policy, device)
            await session.commit()
            return await _send(settings, message)
        requester = System(f"Corral (compliance: {policy.name})")
        reason = f"Compliance policy {policy.name!r}: noncompliant since {step.episode:%Y-%m-%d %H:%M} UTC"
        key = f"compliance:{step.device_id}:{step.policy_id}:{step.episode.isoformat()}:{step.step}"
        if action == "push_message":
            request = CommandRequest(
                type="notify",
                params={"message": step.action.get("message") or "", "title": policy.name[:120]},
                reason=reason,
                idempotency_key=key,
            )
        elif action == "remote_lock":
            request = CommandRequest(
                type="lock",
                params={
                    "message": f"Locked by {policy.name}: this device does not meet company policy."[:256]
                },
                reason=reason,
                idempotency_key=key,
            )
        elif action == "retire":
            request = CommandRequest(type="retire", params={}, reason=reason, idempotency_key=key)
        else:
            return f"skipped: unknown action {action!r}"
        try:
            command, _new = await command_service.queue(session, requester, device.id, request)
        except CorralError as exc:
            await session.rollback()
            return f"failed: {exc.detail}"
        await session.commit()
        return f"queued {command.type} command {command.id}"


async def _email(
    session: AsyncSession, settings: Settings, step: Claimed, policy: CompliancePolicy, device: Device
) -> mail.Mail:
    user = await session.get(User, device.user_id) if device.user_id else None
    recipients = [user.email] if user is not None and user.email else []
    recipients += [r for r in step.action.get("recipients") or [] if r not in recipients]
    template = None
    if step.action.get("template_id"):
        template = await session.get(NotificationTemplate, uuid.UUID(str(step.action["template_id"])))
    tenant = await session.get(TenantSettings, 1)
    state = await session.get(DeviceCompliancePolicy, (device.id, policy.id))
    failing = sorted(
        (sid, r)
        for sid, r in (state.settings if state else {}).items()
        if r.get("state") != ComplianceState.compliant.value
    )
    values = {
        "device": {
            "name": device.name,
            "serial_number": device.serial_number,
            "platform": str(device.platform),
        },
        "user": {
            "name": (user.display_name or user.user_principal_name) if user else "there",
            "email": user.email if user else "",
        },
        "policy": {"name": policy.name},
        "failing": [
            {
                "name": catalog.BY_ID[sid].name if sid in catalog.BY_ID else sid,
                "expected": r.get("expected"),
                "observed": "not reported" if r.get("observed") is None else r["observed"],
            }
            for sid, r in failing
        ],
        "grace_ends_at": f"{state.grace_ends_at:%Y-%m-%d %H:%M} UTC" if state and state.grace_ends_at else "",
        "organization": tenant.organization_name if tenant else "your organisation",
        "support": " · ".join(
            v
            for v in ((tenant.support_email, tenant.support_phone, tenant.support_url) if tenant else ())
            if v
        ),
    }
    subject = render(template.subject if template else DEFAULT_SUBJECT, values)
    body = render(template.body if template else DEFAULT_BODY, values)
    return mail.Mail(to=tuple(recipients), subject=subject, body=body)


async def _send(settings: Settings, message: mail.Mail) -> str:
    if not message.to:
        return "failed: the device has no user with an e-mail address and the step names no recipient"
    try:
        answer = await mail.send(settings, message)
    except mail.MailNotConfigured as exc:
        return f"failed: {exc}"
    return f"e-mailed {', '.join(message.to)} ({answer.strip()[:80]})"
