"""The actions for noncompliance against a real SMTP server on loopback (aiosmtpd) and the real commands
path: each step when its delay has passed, at most once per episode, audited, visible on the device."""

from __future__ import annotations

import socket
import uuid
from collections.abc import Iterator
from datetime import datetime, timedelta
from email import message_from_bytes
from email.message import Message
from pathlib import Path
from typing import Any

import httpx
import pytest
from aiosmtpd.controller import Controller
from sqlalchemy import select, update
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from corral.compliance.ladder import run_due_steps
from corral.config import Settings
from corral.models import Device, DeviceCommand
from tests.compliance.test_compliance_api import assign_all, create_policy, report, state_of
from tests.conftest import Factory, audit_rows, make_settings
from tests.devices.test_enrollment_and_checkin import enrolled

Sessionmaker = async_sessionmaker[AsyncSession]


class Inbox:
    def __init__(self) -> None:
        self.messages: list[tuple[list[str], Message]] = []

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        self.messages.append((list(envelope.rcpt_tos), message_from_bytes(envelope.content)))
        return "250 Message accepted for delivery"


@pytest.fixture
def smtp() -> Iterator[tuple[Inbox, int]]:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    inbox = Inbox()
    controller = Controller(inbox, hostname="127.0.0.1", port=port)
    controller.start()
    yield inbox, port
    controller.stop()


@pytest.fixture
def mail_settings(tmp_path: Path, db_url: str, smtp: tuple[Inbox, int]) -> Settings:
    return make_settings(
        tmp_path,
        db_url,
        smtp_host="127.0.0.1",
        smtp_port=smtp[1],
        smtp_security="none",
        smtp_from="it@example.com",
    )


async def test_ladder_mails_the_user_notifies_and_locks_each_step_once(
    client: httpx.AsyncClient,
    factory: Factory,
    sessionmaker: Sessionmaker,
    smtp: tuple[Inbox, int],
    mail_settings: Settings,
) -> None:
    inbox, _port = smtp
    admin = await factory.admin()
    alice = await factory.user("alice@example.com", email="alice@example.com", display_name="Alice Martin")
    device = await enrolled(client, admin)
    async with sessionmaker() as session:
        await session.execute(
            update(Device).where(Device.id == uuid.UUID(str(device.device_id))).values(user_id=alice)
        )
        await session.commit()
    template = await client.post(
        "/api/v1/notification-templates",
        json={
            "name": "Firewall off",
            "subject": "{{ device.name }}: {{ policy.name }} not met",
            "body": "Hi {{ user.name }},\n"
            "{% for s in failing %}{{ s.name }}: {{ s.observed }}\n{% endfor %}{{ organization }}",
        },
        headers=admin.headers,
    )
    assert template.status_code == 201, template.text
    bad_template = await client.post(
        "/api/v1/notification-templates",
        json={"name": "Broken", "subject": "x", "body": "{% for %}"},
        headers=admin.headers,
    )
    assert bad_template.status_code == 422 and "body: line 1" in bad_template.json()["detail"]
    policy = await create_policy(
        client,
        admin,
        name="Firewall on",
        settings={"firewall.required": True},
        actions=[
            {"action": "mark_noncompliant", "delay_hours": 0},
            {
                "action": "email_user",
                "delay_hours": 0,
                "template_id": template.json()["id"],
                "recipients": ["helpdesk@example.com"],
            },
            {"action": "push_message", "delay_hours": 1, "message": "Turn your firewall back on"},
            {"action": "remote_lock", "delay_hours": 2},
        ],
    )
    await assign_all(client, admin, policy["id"])
    await report(device, firewall_enabled=False)
    result = await state_of(client, admin, device)
    assert result["state"] == "noncompliant"
    started = datetime.fromisoformat(result["policies"][0]["failing_since"])

    # At once: marked noncompliant and the e-mail, through the real SMTP server.
    assert await run_due_steps(sessionmaker, mail_settings, started + timedelta(minutes=1)) == 2
    ((recipients, message),) = inbox.messages
    assert sorted(recipients) == ["alice@example.com", "helpdesk@example.com"]
    assert message["Subject"] == f"{device.name}: Firewall on not met"
    assert message["From"] == "it@example.com"
    body = message.get_payload(decode=True).decode()  # type: ignore[union-attr]
    assert "Hi Alice Martin" in body and "Require firewall: False" in body
    # Again before the next delay: nothing (each step once per episode).
    assert await run_due_steps(sessionmaker, mail_settings, started + timedelta(minutes=30)) == 0
    assert len(inbox.messages) == 1

    assert await run_due_steps(sessionmaker, mail_settings, started + timedelta(hours=1, minutes=1)) == 1
    assert await run_due_steps(sessionmaker, mail_settings, started + timedelta(hours=2, minutes=1)) == 1
    assert await run_due_steps(sessionmaker, mail_settings, started + timedelta(hours=5)) == 0
    async with sessionmaker() as session:
        commands = (
            await session.scalars(
                select(DeviceCommand)
                .where(DeviceCommand.device_id == uuid.UUID(str(device.device_id)))
                .order_by(DeviceCommand.created_at)
            )
        ).all()
    assert [c.type for c in commands] == ["notify", "lock"]
    assert commands[0].params["message"] == "Turn your firewall back on"
    assert commands[1].requested_by_name.startswith("Corral (compliance: Firewall on)")

    steps = (await state_of(client, admin, device))["policies"][0]["steps_taken"]
    assert [s["action"] for s in steps] == ["mark_noncompliant", "email_user", "push_message", "remote_lock"]
    assert steps[1]["result"].startswith("e-mailed alice@example.com, helpdesk@example.com")
    events = await audit_rows(sessionmaker, activity="compliance.action")
    assert len(events) == 4 and all(e.result == "success" for e in events)

    # Fixed, then failing again: a new episode, the steps run again.
    await report(device, firewall_enabled=True)
    await report(device, firewall_enabled=False)
    again = datetime.fromisoformat((await state_of(client, admin, device))["policies"][0]["failing_since"])
    assert again > started
    assert await run_due_steps(sessionmaker, mail_settings, again + timedelta(minutes=1)) == 2
    assert len(inbox.messages) == 2


async def test_a_step_that_cannot_be_sent_is_recorded_as_failed_not_repeated(
    client: httpx.AsyncClient, factory: Factory, sessionmaker: Sessionmaker, tmp_path: Path, db_url: str
) -> None:
    no_mail = make_settings(tmp_path, db_url, smtp_host="")
    admin = await factory.admin()
    device = await enrolled(client, admin)  # no user: only the extra recipient
    policy = await create_policy(
        client,
        admin,
        settings={"firewall.required": True},
        actions=[{"action": "mark_noncompliant"}, {"action": "email_user", "recipients": ["it@example.com"]}],
    )
    await assign_all(client, admin, policy["id"])
    await report(device, firewall_enabled=False)
    started = datetime.fromisoformat((await state_of(client, admin, device))["policies"][0]["failing_since"])
    assert await run_due_steps(sessionmaker, no_mail, started + timedelta(minutes=1)) == 2
    assert await run_due_steps(sessionmaker, no_mail, started + timedelta(minutes=2)) == 0
    steps = (await state_of(client, admin, device))["policies"][0]["steps_taken"]
    assert steps[1]["result"] == "failed: no SMTP server is configured (CORRAL_SMTP_HOST)"
    failed = [
        e for e in await audit_rows(sessionmaker, activity="compliance.action") if e.result == "failure"
    ]
    assert len(failed) == 1
