"""Issue 9 end to end, through the API and the real agent against a live server: a compliance policy assigned
to a dynamic group with a filter, excluded for a static group; the violating device goes into grace, then
noncompliant on a moved clock; its user gets the e-mail on a real SMTP server, the ladder locks it; fixed,
it is compliant at its next check-in and the history shows each change. A profile reaches the device and is
applied by the agent's appliers under a temporary root; a second, conflicting profile is a conflict on both;
the server shows applied versus intended; the explanation names the group chain and the filter."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import uuid
from datetime import timedelta
from pathlib import Path
from typing import Any

import httpx
import yaml
from corral_agent import Agent, AgentConfig
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from corral.compliance.ladder import run_due_steps
from corral.compliance.service import compliance_service
from corral.kit.time import utcnow
from corral.models import DeviceCommand
from tests.compliance.test_ladder import Inbox, smtp  # noqa: F401 - the SMTP server fixture
from tests.conftest import Factory, make_settings
from tests.devices.device import inventory
from tests.groups.helpers import add, create_group, dynamic_group
from tests.push.conftest import LiveServer

Sessionmaker = async_sessionmaker[AsyncSession]


async def test_policies_from_assignment_to_lock_and_profiles_to_applied_settings(
    live: LiveServer,
    factory: Factory,
    sessionmaker: Sessionmaker,
    smtp: tuple[Inbox, int],  # noqa: F811
    tmp_path: Path,
    db_url: str,
) -> None:
    inbox, port = smtp
    admin = await factory.admin("Global administrator")
    alice = await factory.user(
        "alice@example.com", email="alice@example.com", display_name="Alice", licence=True
    )
    ran: list[list[str]] = []

    def runner(args: list[str]) -> tuple[int, str]:
        ran.append(args)
        return 0, ""

    async with httpx.AsyncClient(base_url=live.url, timeout=10) as api:
        h = admin.headers
        fleet = await dynamic_group(api, admin, "Linux fleet", 'device.deviceOSType -eq "Linux"')
        top = await create_group(api, admin, "All managed")
        assert (await add(api, admin, top["id"], "group", fleet["id"])).status_code == 201
        exempt = await create_group(api, admin, "Exempt")
        kiosk_filter = (
            await api.post(
                "/api/v1/assignment-filters",
                json={
                    "name": "Kiosks",
                    "platform": "linux",
                    "rule": 'device.displayName -startsWith "kiosk"',
                },
                headers=h,
            )
        ).json()
        policy = (
            await api.post(
                "/api/v1/compliance-policies",
                json={
                    "name": "Disk encrypted",
                    "platform": "linux",
                    "settings": {"disk_encryption.required": True},
                    "actions": [
                        {"action": "mark_noncompliant", "delay_hours": 24},
                        {"action": "email_user", "delay_hours": 0},
                        {"action": "remote_lock", "delay_hours": 25},
                    ],
                },
                headers=h,
            )
        ).json()
        assigned = await api.put(
            f"/api/v1/compliance-policies/{policy['id']}/assignments",
            json={
                "assignments": [
                    {
                        "target": "group",
                        "group_id": top["id"],
                        "filter_id": kiosk_filter["id"],
                        "filter_mode": "exclude",
                    },
                    {"target": "group", "group_id": exempt["id"], "mode": "exclude"},
                ]
            },
            headers=h,
        )
        assert assigned.status_code == 200, assigned.text

        token = (
            await api.post(
                "/api/v1/enrollment-tokens",
                json={"name": "Laptops", "platforms": ["linux"], "user_id": str(alice)},
                headers=h,
            )
        ).json()["enrollment_url"]
        facts: dict[str, Any] = inventory(primary_user="alice")
        facts["security"]["disk_encrypted"] = False
        facts["hardware"]["serial_number"] = "E2E-ALICE"
        root = tmp_path / "root"
        root.mkdir()
        agent = Agent(
            tmp_path / "agent",
            config=AgentConfig(settings_root=root),
            inventory=lambda: facts,
            os_name="linux",
            runner=runner,
        )
        device_id = (await agent.enroll(token, name="alice-laptop")).device_id
        exempt_facts = inventory()
        exempt_facts["hardware"]["serial_number"] = "E2E-LAB"
        kiosk_facts = inventory()
        kiosk_facts["hardware"]["serial_number"] = "E2E-KIOSK"
        exempt_agent = Agent(
            tmp_path / "exempt",
            config=AgentConfig(simulate=True),
            inventory=lambda: exempt_facts,
            os_name="linux",
        )
        exempt_id = (await exempt_agent.enroll(token, name="lab-box")).device_id
        assert (await add(api, admin, exempt["id"], "device", exempt_id)).status_code == 201
        kiosk_agent = Agent(
            tmp_path / "kiosk",
            config=AgentConfig(simulate=True),
            inventory=lambda: kiosk_facts,
            os_name="linux",
        )
        kiosk_id = (await kiosk_agent.enroll(token, name="kiosk-3")).device_id
        for a in (agent, exempt_agent, kiosk_agent):
            await a.checkin()

        async def compliance(of: str) -> dict[str, Any]:
            return dict((await api.get(f"/api/v1/devices/{of}/compliance", headers=h)).json())

        result = await compliance(device_id)
        assert result["state"] == "in_grace_period", result
        # The exempt and the kiosk devices are not targeted: no policy, compliant by the tenant default.
        assert (await compliance(exempt_id))["policies"] == [] and (await compliance(kiosk_id))[
            "policies"
        ] == []
        why = (
            await api.get(f"/api/v1/devices/{device_id}/assignments/{policy['id']}/explain", headers=h)
        ).json()
        include = next(a for a in why["assignments"] if a["assignment"]["mode"] == "include")
        assert [s["display_name"] for s in include["chain"]] == ["Linux fleet", "All managed"]
        assert include["filter"]["matched"] is False and include["filter"]["passed"] is True
        why = (
            await api.get(f"/api/v1/devices/{kiosk_id}/assignments/{policy['id']}/explain", headers=h)
        ).json()
        kiosk_include = next(a for a in why["assignments"] if a["assignment"]["mode"] == "include")
        assert why["verdict"] == "not_targeted" and kiosk_include["filter"]["matched"] is True
        why = (
            await api.get(f"/api/v1/devices/{exempt_id}/assignments/{policy['id']}/explain", headers=h)
        ).json()
        assert why["verdict"] == "excluded"

        # The clock moves past the grace period: noncompliant, the e-mail, the lock.
        started = utcnow()
        mail_settings = make_settings(
            tmp_path, db_url, smtp_host="127.0.0.1", smtp_port=port, smtp_security="none"
        )
        later = started + timedelta(hours=25, minutes=5)
        async with sessionmaker() as session:
            await compliance_service.evaluate_due(session, later)
            await session.commit()
        assert (await compliance(device_id))["state"] == "noncompliant"
        assert await run_due_steps(sessionmaker, mail_settings, later) == 3
        ((recipients, message),) = inbox.messages
        assert recipients == ["alice@example.com"] and "Disk encrypted" in message["Subject"]
        await agent.checkin()  # takes the lock command
        assert ["loginctl", "lock-sessions"] in ran
        async with sessionmaker() as session:
            lock = await session.scalar(
                select(DeviceCommand).where(
                    DeviceCommand.device_id == uuid.UUID(device_id), DeviceCommand.type == "lock"
                )
            )
        assert lock is not None and lock.status == "succeeded"

        # Fixed: compliant at the next check-in; the history shows each change.
        facts["security"]["disk_encrypted"] = True
        await agent.checkin()
        assert (await compliance(device_id))["state"] == "compliant"
        history = (await api.get(f"/api/v1/devices/{device_id}/compliance/history", headers=h)).json()
        assert [x["new_state"] for x in reversed(history)] == [
            "not_evaluated",  # enrolled into the dynamic group, no inventory yet
            "in_grace_period",
            "noncompliant",
            "compliant",
        ]

        # A profile reaches the device: the agent applies it under its root and reports per setting.
        banner = (
            await api.post(
                "/api/v1/configuration-profiles",
                json={
                    "name": "Banner",
                    "platform": "linux",
                    "settings": {
                        "login_banner.text": "Authorised use only",
                        "ssh.password_authentication": False,
                    },
                },
                headers=h,
            )
        ).json()
        await api.put(
            f"/api/v1/configuration-profiles/{banner['id']}/assignments",
            json={"assignments": [{"target": "group", "group_id": fleet["id"]}]},
            headers=h,
        )
        summary = await agent.checkin()
        assert summary.desired_state is not None
        assert (root / "etc/issue").read_text() == "Authorised use only\n"
        assert "PasswordAuthentication no" in (root / "etc/ssh/sshd_config.d/50-corral.conf").read_text()
        view = (await api.get(f"/api/v1/devices/{device_id}/configuration", headers=h)).json()
        (entry,) = view["profiles"]
        assert (entry["intended_version"], entry["applied_version"]) == (1, 1)
        assert {s["setting_id"]: s["state"] for s in entry["settings"]} == {
            "login_banner.text": "succeeded",
            "ssh.password_authentication": "succeeded",
        }

        # A second profile with another banner: a conflict on both, reported by the agent too.
        other = (
            await api.post(
                "/api/v1/configuration-profiles",
                json={
                    "name": "Other banner",
                    "platform": "linux",
                    "settings": {"login_banner.text": "Hello"},
                },
                headers=h,
            )
        ).json()
        await api.put(
            f"/api/v1/configuration-profiles/{other['id']}/assignments",
            json={"assignments": [{"target": "all_devices"}]},
            headers=h,
        )
        await agent.checkin()
        view = (await api.get(f"/api/v1/devices/{device_id}/configuration", headers=h)).json()
        states = {
            p["profile_name"]: {s["setting_id"]: s["state"] for s in p["settings"]} for p in view["profiles"]
        }
        assert states["Banner"]["login_banner.text"] == "conflict"
        assert states["Other banner"]["login_banner.text"] == "conflict"
        assert states["Banner"]["ssh.password_authentication"] == "succeeded"
        assert view["conflicts"] == [
            {"setting_id": "login_banner.text", "profiles": ["Banner", "Other banner"]}
        ]
        # Delivered from neither: the agent removed its banner and put back what was there (nothing).
        assert not (root / "etc/issue").exists()

        # Policy as code: export → edit → apply --dry-run → apply, through the command an operator runs.
        def policies(*args: str) -> subprocess.CompletedProcess[str]:
            env = {k: v for k, v in os.environ.items() if not k.startswith("CORRAL_")}
            env.update({"CORRAL_URL": live.url, "CORRAL_TOKEN": admin.token or ""})
            return subprocess.run(
                [sys.executable, "-m", "corral.cli", "policies", *args],
                env=env,
                capture_output=True,
                text=True,
                timeout=60,
            )

        exported = tmp_path / "tenant.yaml"
        done = await asyncio.to_thread(policies, "export", "--output", str(exported))
        assert done.returncode == 0, done.stderr
        document = yaml.safe_load(exported.read_text())
        assert [p["name"] for p in document["configuration_profiles"]] == ["Banner", "Other banner"]
        assert document["compliance_policies"][0]["assignments"] == [
            {"group": "All managed", "filter": "Kiosks", "filter_mode": "exclude"},
            {"group": "Exempt", "mode": "exclude"},
        ]
        document["configuration_profiles"] = [document["configuration_profiles"][0]]  # drop the conflict
        document["configuration_profiles"][0]["settings"]["login_banner.text"] = "Managed by Corral"
        exported.write_text(yaml.safe_dump(document, sort_keys=False))
        dry = await asyncio.to_thread(policies, "apply", str(exported), "--dry-run")
        assert dry.returncode == 0, dry.stderr
        assert dry.stdout.splitlines() == [
            '~ configuration profile "Banner"',
            "    settings.login_banner.text: Authorised use only → Managed by Corral",
            '- configuration profile "Other banner"',
            "0 to create, 1 to update, 1 to delete, 2 unchanged (dry run: nothing was changed)",
        ]
        summary = await agent.checkin()
        assert summary.desired_state is None  # the dry run changed nothing
        applied = await asyncio.to_thread(policies, "apply", str(exported))
        assert applied.returncode == 0, applied.stderr
        assert applied.stdout.splitlines()[-1] == "0 created, 1 updated, 1 deleted, 2 unchanged"
        await agent.checkin()
        assert (root / "etc/issue").read_text() == "Managed by Corral\n"
        view = (await api.get(f"/api/v1/devices/{device_id}/configuration", headers=h)).json()
        assert view["conflicts"] == []
        again = await asyncio.to_thread(policies, "apply", str(exported), "--dry-run")
        assert again.stdout.splitlines() == [
            "0 to create, 0 to update, 0 to delete, 3 unchanged (dry run: nothing was changed)"
        ]
