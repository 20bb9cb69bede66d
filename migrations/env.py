"""Alembic environment: async engine over asyncpg; the URL from Corral's settings unless given by the caller."""

from __future__ import annotations

import asyncio
from logging.config import fileConfig
from typing import Any

from alembic import context
from sqlalchemy import Connection, pool
from sqlalchemy.ext.asyncio import create_async_engine

from corral import models  # noqa: F401 - registers every table on the metadata
from corral.kit.db import Model, async_url
from corral.worker import JOB_QUEUE_SCHEMA

config = context.config
if config.config_file_name is not None and not config.attributes.get("database_url"):
    fileConfig(config.config_file_name, disable_existing_loggers=False)

target_metadata = Model.metadata
_handle: Any = None


def database_url() -> str:
    global _handle
    url = config.attributes.get("database_url")
    if url:
        return str(url)
    from corral.config import get_settings
    from corral.kit.embedded import resolve_database_url

    _handle, url = resolve_database_url(get_settings())
    return str(url)


def include_name(name: str | None, type_: str, parent_names: Any) -> bool:
    """Leave the job queue (procrastinate's objects, created by their own migration) out of autogenerate and
    `alembic check`: its schema, and any procrastinate_* object that ended up elsewhere."""
    if type_ == "schema":
        return name != JOB_QUEUE_SCHEMA
    return not (name or "").startswith("procrastinate_")


def run_migrations_offline() -> None:
    context.configure(
        url=async_url(database_url()),
        target_metadata=target_metadata,
        literal_binds=True,
        compare_type=True,
        include_name=include_name,
    )
    with context.begin_transaction():
        context.run_migrations()


def do_run_migrations(connection: Connection) -> None:
    context.configure(
        connection=connection,
        target_metadata=target_metadata,
        compare_type=True,
        include_name=include_name,
        transaction_per_migration=True,
    )
    with context.begin_transaction():
        context.run_migrations()


async def run_async_migrations() -> None:
    engine = create_async_engine(async_url(database_url()), poolclass=pool.NullPool)
    async with engine.connect() as connection:
        await connection.run_sync(do_run_migrations)
    await engine.dispose()


def run_migrations_online() -> None:
    connection = config.attributes.get("connection")
    if connection is not None:
        do_run_migrations(connection)
        return
    asyncio.run(run_async_migrations())


if context.is_offline_mode():
    run_migrations_offline()
else:
    run_migrations_online()
