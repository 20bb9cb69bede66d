"""Database: declarative base with a naming convention, engine and session factories, the request session."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from datetime import datetime
from enum import StrEnum
from typing import Annotated, Any

from fastapi import Depends, Request
from sqlalchemy import DateTime, Enum, Index, MetaData, event, func, literal_column
from sqlalchemy.dialects.postgresql import UUID
from sqlalchemy.exc import DisconnectionError
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker, create_async_engine
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

NAMING_CONVENTION = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}


# 1970-01-01 as SQL text, not a bound value: a sort key written coalesce(column, EPOCH_SQL) is then the same
# expression as its index's, which PostgreSQL can only match against constants.
EPOCH_SQL = literal_column("'1970-01-01 00:00:00+00'::timestamptz", DateTime(timezone=True))


def trigram_index(name: str, column: Any) -> Index:
    """A GIN trigram index: ``column ILIKE '%needle%'`` (a list's search) reads it instead of every row."""
    return Index(name, column, postgresql_using="gin", postgresql_ops={column.key: "gin_trgm_ops"})


class Model(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING_CONVENTION)
    type_annotation_map = {
        datetime: DateTime(timezone=True),
        uuid.UUID: UUID(as_uuid=True),
    }


class IdMixin:
    id: Mapped[uuid.UUID] = mapped_column(primary_key=True, default=uuid.uuid4)


class TimestampMixin:
    created_at: Mapped[datetime] = mapped_column(server_default=func.now())
    updated_at: Mapped[datetime] = mapped_column(server_default=func.now(), onupdate=func.now())


def str_enum(enum_class: type[StrEnum], length: int = 16) -> Enum:
    """A StrEnum stored as VARCHAR (no database enum type to migrate), loaded back as the enum member."""
    return Enum(
        enum_class,
        native_enum=False,
        create_constraint=False,
        length=length,
        values_callable=lambda members: [m.value for m in members],
        validate_strings=True,
    )


def async_url(url: str) -> str:
    """Turn any PostgreSQL URL (libpq URI, psycopg or asyncpg) into the asyncpg form SQLAlchemy uses."""
    for prefix in ("postgresql+asyncpg://", "postgresql+psycopg://", "postgresql://", "postgres://"):
        if url.startswith(prefix):
            return "postgresql+asyncpg://" + url[len(prefix) :]
    raise ValueError(f"not a PostgreSQL URL: {url.split('://')[0]}://…")


def asyncpg_dsn(url: str) -> str:
    """The same URL for ``asyncpg.connect`` (a connection of its own, outside the SQLAlchemy pool)."""
    return "postgresql://" + async_url(url)[len("postgresql+asyncpg://") :]


def discard_closed(dbapi_connection: Any, record: Any, proxy: Any) -> None:
    """Pool checkout: a connection the server has closed (a restart, a failover, an administrator's
    ``pg_terminate_backend``) is discarded and another taken, before any request uses it. asyncpg notices
    the close when the server says so (it sends the reason, then closes the socket), so this costs no
    round trip, unlike SQLAlchemy's ``pool_pre_ping`` (``BEGIN``, an empty statement, ``ROLLBACK`` on
    every checkout: three round trips per request). A connection lost without a word (a network cut) is
    found out by its first statement, which fails its request; SQLAlchemy then invalidates the pool's older
    connections."""
    driver = record.driver_connection
    if driver is not None and driver.is_closed():
        raise DisconnectionError("the database closed this connection")  # the pool takes another


def create_engine(url: str, *, pool_size: int = 10, max_overflow: int = 10) -> AsyncEngine:
    engine = create_async_engine(
        async_url(url),
        pool_size=pool_size,
        max_overflow=max_overflow,
        connect_args={"server_settings": {"application_name": "corral"}},
    )
    event.listen(engine.sync_engine.pool, "checkout", discard_closed)
    return engine


def create_sessionmaker(engine: AsyncEngine) -> async_sessionmaker[AsyncSession]:
    return async_sessionmaker(engine, expire_on_commit=False, autoflush=False)


_REQUEST_SESSION = "corral.db_session"


async def get_db_session(request: Request) -> AsyncIterator[AsyncSession]:
    """One transaction per request: committed when the handler succeeds, rolled back when it raises. The
    route guard may have opened it before the body was read (kit/routing.py): later uses get the same one."""
    opened: AsyncSession | None = request.scope.get(_REQUEST_SESSION)
    if opened is not None:
        yield opened
        return
    sessionmaker: async_sessionmaker[AsyncSession] = request.app.state.sessionmaker
    async with sessionmaker() as session:
        request.scope[_REQUEST_SESSION] = session
        try:
            yield session
        except BaseException:
            await session.rollback()
            raise
        else:
            await session.commit()
        finally:
            del request.scope[_REQUEST_SESSION]


SessionDep = Annotated[AsyncSession, Depends(get_db_session, scope="function")]
