"""Bounded growth: how many bytes each history table takes per device and month, and what the retention
defaults hold steady at 100k devices.

    .venv/bin/python bench/history_sizes.py [--devices 2000]

One month of history for ``--devices`` generated devices is written with rows shaped like the ones Corral
writes (the activity per device and month below is an assumption, printed with the result; change it to your
fleet's), then each table is measured with its indexes and TOAST (``pg_total_relation_size``, after VACUUM).
Sizes, not times: the figures hold on a loaded machine.
"""

from __future__ import annotations

import argparse
import asyncio

from common import database
from groups_dynamic import GENERATE_DEVICES
from sqlalchemy import text

from corral.config import Settings
from corral.kit.db import create_engine, create_sessionmaker

#: Rows per device and month (a device checking in every 8 hours, a quiet month): table → (rows, how).
ACTIVITY: dict[str, tuple[int, str]] = {
    "device_checkin_days": (30, "one per day it checked in"),
    "device_inventory_changes": (12, "changed inventory fields (OS build, IP, disk free, apps…)"),
    "device_commands": (3, "finished commands (sync, lock, a compliance notification)"),
    "device_compliance_history": (1, "compliance state changes"),
    "audit_events": (4, "events about it (its commands, its compliance steps, an admin edit)"),
}

FILL = {
    "device_checkin_days": """
        INSERT INTO device_checkin_days (day, device_id)
        SELECT current_date - g, d.id FROM devices d, generate_series(0, :n - 1) AS g""",
    "device_inventory_changes": """
        INSERT INTO device_inventory_changes (device_id, changed_at, field, old_value, new_value)
        SELECT d.id, now() - make_interval(hours => g * 53),
               (ARRAY['os_build', 'network.ip_address', 'storage.free_bytes', 'apps'])[1 + g % 4],
               to_jsonb('10.0.22631.' || (4000 + g)), to_jsonb('10.0.22631.' || (4001 + g))
        FROM devices d, generate_series(1, :n) AS g""",
    "device_commands": """
        INSERT INTO device_commands (id, device_id, type, params, status, reason, requested_by_name,
                                     created_at, expires_at, sent_at, acknowledged_at, completed_at,
                                     delivery_count, result)
        SELECT gen_random_uuid(), d.id, (ARRAY['sync', 'lock', 'notify'])[1 + g % 3],
               '{"message": "Your device must be encrypted"}'::jsonb, 'succeeded',
               'Lost device reported by the user', 'helpdesk@example.com',
               now() - make_interval(days => g * 9), now() + interval '7 days', now(), now(), now(), 1,
               '{"ok": true}'::jsonb
        FROM devices d, generate_series(1, :n) AS g""",
    "device_compliance_history": """
        INSERT INTO device_compliance_history (device_id, at, old_state, new_state, reason)
        SELECT d.id, now() - make_interval(days => g * 20), 'compliant', 'in_grace_period',
               'Disk encrypted: policy "Windows baseline" requires true, the device reports false'
        FROM devices d, generate_series(1, :n) AS g""",
    "audit_events": """
        INSERT INTO audit_events (id, category, activity, operation, result, actor_type, actor_id,
                                  actor_name, target_type, target_id, target_name, modified_properties,
                                  correlation_id, ip_address, user_agent, occurred_at)
        SELECT gen_random_uuid(), 'device', 'device.action.lock', 'action', 'success', 'user',
               gen_random_uuid(), 'helpdesk@example.com', 'device', d.id::text, d.name,
               '[{"name": "status", "old": "queued", "new": "succeeded"}]'::jsonb,
               md5(random()::text), '203.0.113.7', 'Mozilla/5.0 (X11; Linux x86_64) Chrome/131.0',
               now() - make_interval(days => g * 7)
        FROM devices d, generate_series(1, :n) AS g""",
}


async def run(args: argparse.Namespace) -> None:
    db = await database("corral_bench_history")
    engine = create_engine(db.url, pool_size=2, max_overflow=0)
    maker = create_sessionmaker(engine)
    defaults = Settings.model_fields
    retention = {
        "device_checkin_days": defaults["checkin_days_retention_days"].default,
        "device_inventory_changes": defaults["inventory_history_retention_days"].default,
        "device_commands": defaults["command_retention_days"].default,
        "device_compliance_history": defaults["compliance_history_retention_days"].default,
        "audit_events": defaults["audit_retention_days"].default,
    }
    try:
        async with maker() as session:
            await session.execute(text(GENERATE_DEVICES), {"n": args.devices})
            for table, (rows, _) in ACTIVITY.items():
                await session.execute(text(FILL[table]), {"n": rows})
            await session.commit()
        async with engine.connect() as connection:
            autocommit = await connection.execution_options(isolation_level="AUTOCOMMIT")
            await autocommit.execute(text("VACUUM ANALYZE"))
        print(f"{args.devices:,} devices, one month of history each\n")
        header = (
            f"{'table':<28}{'rows/device·month':>18}{'bytes/row':>11}{'KiB/device·month':>18}"
            f"{'retention (days)':>18}{'at 100k devices':>17}"
        )
        print(header)
        total = 0.0
        async with maker() as session:
            for table, (rows, how) in ACTIVITY.items():
                size = int(await session.scalar(text(f"SELECT pg_total_relation_size('{table}')")) or 0)
                count = int(await session.scalar(text(f"SELECT count(*) FROM {table}")) or 0)  # noqa: S608
                per_row = size / count
                per_device_month = size / args.devices
                months = retention[table] / 30
                steady = per_device_month * months * 100_000
                total += steady
                print(
                    f"{table:<28}{rows:>18}{per_row:>11,.0f}{per_device_month / 1024:>18,.1f}"
                    f"{retention[table]:>18}{steady / 2**30:>14,.2f} GiB"
                )
                print(f"  ({how})")
        print(f"\nsteady state at 100k devices with the default retention: {total / 2**30:,.1f} GiB")
    finally:
        await engine.dispose()
        if db.handle is not None:
            db.handle.cleanup()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--devices", type=int, default=2000)
    asyncio.run(run(parser.parse_args()))


if __name__ == "__main__":
    main()
