"""Evaluation at the size of a worker job: a full batch of devices each reached by many policies (once more
rows than one statement could carry as parameters; evaluation now sends the devices as one array)."""

from __future__ import annotations

import httpx
from sqlalchemy import func, select, text
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from corral.compliance.service import BATCH, compliance_service
from corral.kit import context
from corral.models import Device, DeviceCompliancePolicy
from tests.compliance.test_compliance_api import assign_all, create_policy
from tests.conftest import Factory

DEVICES = """
INSERT INTO devices (id, name, serial_number, platform, os_version, ownership, management_state,
                     compliance_state, enrolled_at, firewall_enabled, inventory, inventory_updated_at)
SELECT gen_random_uuid(), 'bulk-' || g, 'SN-BULK-' || g, 'linux', '12.5', 'company', 'managed', 'unknown',
       now(), g % 2 = 0, '{}'::jsonb, now()
FROM generate_series(1, :n) AS g
"""


async def test_a_full_batch_of_devices_under_many_policies_is_evaluated(
    client: httpx.AsyncClient, factory: Factory, sessionmaker: async_sessionmaker[AsyncSession]
) -> None:
    admin = await factory.admin()
    async with sessionmaker() as session:
        await session.execute(text(DEVICES), {"n": BATCH})
        await session.commit()
    policies = 5
    made = [
        await create_policy(
            client,
            admin,
            name=f"Firewall {index}",
            settings={"firewall.required": True},
            actions=[{"action": "mark_noncompliant", "delay_hours": 0}],
        )
        for index in range(policies)
    ]
    async with sessionmaker() as session:  # the first four reach every device already
        await session.execute(
            text(
                "INSERT INTO device_targets (assignable_id, device_id) "
                "SELECT p, d.id FROM devices d, unnest(CAST(:p AS uuid[])) AS p"
            ),
            {"p": [m["id"] for m in made[:-1]]},
        )
        await session.commit()
    await assign_all(client, admin, made[-1]["id"])  # evaluated in the request (≤ 2,000 devices)
    # And as the worker's job does, again.
    context.set_current(context.RequestContext(correlation_id="test", actor=context.SYSTEM))
    async with sessionmaker() as session:
        ids = list((await session.scalars(select(Device.id))).all())
        assert len(ids) == BATCH
        await compliance_service.evaluate(session, ids)
        await session.commit()
    async with sessionmaker() as session:
        rows = await session.scalar(select(func.count()).select_from(DeviceCompliancePolicy))
        settings = await session.scalar(
            select(func.count())
            .select_from(DeviceCompliancePolicy)
            .where(DeviceCompliancePolicy.settings.has_key("firewall.required"))
        )
        states = dict(
            (await session.execute(text("SELECT compliance_state, count(*) FROM devices GROUP BY 1"))).all()
        )
    assert rows == settings == BATCH * policies
    assert states == {"compliant": BATCH // 2, "noncompliant": BATCH // 2}
