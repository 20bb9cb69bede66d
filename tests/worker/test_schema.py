"""procrastinate's schema comes from the Alembic chain: it matches what the installed library expects, goes
down and up with its revision, and stays out of `alembic check`."""

from __future__ import annotations

import asyncio

import asyncpg
from alembic import command
from procrastinate.schema import SchemaManager

from corral.kit.migrations import alembic_config, downgrade, upgrade
from corral.worker import JOB_QUEUE_SCHEMA
from tests.conftest import Cluster, _asyncpg_url, scratch_database

JOB_QUEUE_REVISION = "29052b06cad0"
BEFORE_JOB_QUEUE = "1137dd312450"

# Everything procrastinate creates, described in a way that does not depend on how it was created.
CATALOG = {
    "columns": """
        SELECT table_name, column_name, data_type, udt_name, is_nullable, column_default
        FROM information_schema.columns WHERE table_schema = $1""",
    "indexes": "SELECT indexname, indexdef FROM pg_indexes WHERE schemaname = $1",
    "constraints": """
        SELECT c.conrelid::regclass::text, c.conname, pg_get_constraintdef(c.oid)
        FROM pg_constraint c JOIN pg_namespace n ON n.oid = c.connamespace WHERE n.nspname = $1""",
    "functions": """
        SELECT p.proname, pg_get_function_identity_arguments(p.oid), pg_get_function_result(p.oid),
               md5(p.prosrc)
        FROM pg_proc p JOIN pg_namespace n ON n.oid = p.pronamespace WHERE n.nspname = $1""",
    "triggers": """
        SELECT t.tgname, pg_get_triggerdef(t.oid)
        FROM pg_trigger t JOIN pg_class c ON c.oid = t.tgrelid JOIN pg_namespace n ON n.oid = c.relnamespace
        WHERE n.nspname = $1 AND NOT t.tgisinternal""",
    "types": """
        SELECT t.typname, t.typtype,
               (SELECT array_agg(e.enumlabel ORDER BY e.enumsortorder)
                  FROM pg_enum e WHERE e.enumtypid = t.oid),
               (SELECT array_agg(a.attname || ' ' || format_type(a.atttypid, a.atttypmod) ORDER BY a.attnum)
                  FROM pg_attribute a WHERE a.attrelid = t.typrelid AND t.typtype = 'c')
        FROM pg_type t JOIN pg_namespace n ON n.oid = t.typnamespace
        WHERE n.nspname = $1 AND t.typtype IN ('e', 'c') AND NOT EXISTS (
            SELECT 1 FROM pg_class r WHERE r.oid = t.typrelid AND r.relkind <> 'c')""",
}


async def catalog(url: str) -> dict[str, list[tuple[object, ...]]]:
    conn = await asyncpg.connect(_asyncpg_url(url))
    try:
        await conn.execute(f"SET search_path TO {JOB_QUEUE_SCHEMA}")
        return {
            name: sorted(tuple(row) for row in await conn.fetch(query, JOB_QUEUE_SCHEMA))
            for name, query in CATALOG.items()
        }
    finally:
        await conn.close()


async def test_the_migrated_job_queue_is_the_installed_procrastinates_schema(
    cluster: Cluster, db_url: str
) -> None:
    """Fails after upgrading procrastinate until a revision applies its migrations (see the job queue
    revision's docstring)."""
    async with scratch_database(cluster, template=None) as reference:
        conn = await asyncpg.connect(_asyncpg_url(reference))
        try:
            await conn.execute(f"CREATE SCHEMA {JOB_QUEUE_SCHEMA}; SET search_path TO {JOB_QUEUE_SCHEMA}")
            await conn.execute(SchemaManager.get_schema())
        finally:
            await conn.close()
        expected = await catalog(reference)
    migrated = await catalog(db_url)
    assert all(expected.values()) and {k: len(v) for k, v in expected.items()}["functions"] > 10
    assert migrated == expected


async def _schemas(url: str) -> set[str]:
    conn = await asyncpg.connect(_asyncpg_url(url))
    try:
        return {row[0] for row in await conn.fetch("SELECT nspname FROM pg_namespace")}
    finally:
        await conn.close()


async def test_the_job_queue_revision_goes_down_and_up(cluster: Cluster) -> None:
    async with scratch_database(cluster) as url:
        before = await catalog(url)
        await asyncio.to_thread(downgrade, url, BEFORE_JOB_QUEUE)
        assert JOB_QUEUE_SCHEMA not in await _schemas(url)
        conn = await asyncpg.connect(_asyncpg_url(url))
        try:
            leftovers = await conn.fetch(
                "SELECT proname FROM pg_proc WHERE proname LIKE 'procrastinate%' "
                "UNION ALL SELECT typname FROM pg_type WHERE typname LIKE 'procrastinate%' "
                "UNION ALL SELECT relname FROM pg_class WHERE relname LIKE 'procrastinate%'"
            )
            assert await conn.fetchval("SELECT version_num FROM alembic_version") == BEFORE_JOB_QUEUE
        finally:
            await conn.close()
        assert leftovers == []

        await asyncio.to_thread(upgrade, url)
        assert await catalog(url) == before
        await asyncio.to_thread(command.check, alembic_config(url))


async def test_alembic_check_leaves_procrastinate_objects_alone(db_url: str) -> None:
    conn = await asyncpg.connect(_asyncpg_url(db_url))
    try:
        # Even one created outside its schema (e.g. by hand with procrastinate's own CLI) is not Corral's.
        await conn.execute("CREATE TABLE public.procrastinate_stray (id int)")
    finally:
        await conn.close()
    await asyncio.to_thread(command.check, alembic_config(db_url))
