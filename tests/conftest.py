"""Test harness: real PostgreSQL (embedded unless CORRAL_TEST_DATABASE_URL names a server), migrated once by
Alembic into a template database; every test gets its own database cloned from that template, so tests commit
for real (as production does) and still never see each other's data."""

from __future__ import annotations

import asyncio
import itertools
import os
import re
import tempfile
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import asyncpg
import httpx
import pytest
from fastapi import FastAPI
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from corral.config import Settings
from corral.kit import context
from corral.kit.db import create_engine, create_sessionmaker
from corral.kit.embedded import start_embedded
from corral.kit.migrations import upgrade
from corral.main import create_app
from corral.rbac.roles import BUILTIN_BY_NAME
from corral.tokens.schemas import ApiTokenCreate
from corral.tokens.service import token_service
from corral.users.schemas import UserCreate
from corral.users.service import user_service

TEMPLATE_DB = "corral_template"
PASSWORD = "correct horse battery staple"
BASE_URL = "https://testserver"
_counter = itertools.count()


def with_database(url: str, database: str) -> str:
    """The same server, another database (libpq URI, unix socket or TCP)."""
    head, sep, query = url.partition("?")
    head = re.sub(r"/[^/]*$", f"/{database}", head) if head.count("/") > 2 else f"{head}/{database}"
    return head + sep + query


@dataclass
class Cluster:
    admin_url: str
    external: bool


@pytest.fixture(scope="session")
def cluster() -> Iterator[Cluster]:
    external = os.environ.get("CORRAL_TEST_DATABASE_URL")
    if external:
        yield Cluster(external, True)
        return
    root = Path(tempfile.mkdtemp(prefix="corral-test-"))
    handle, url = start_embedded(root / "pgdata", throwaway=True)
    yield Cluster(url, False)
    handle.cleanup()


def _asyncpg_url(url: str) -> str:
    return url.replace("postgresql+asyncpg://", "postgresql://")


@pytest.fixture(scope="session")
async def template_url(cluster: Cluster) -> str:
    conn = await asyncpg.connect(_asyncpg_url(cluster.admin_url))
    try:
        if not cluster.external:
            # A throwaway cluster: durability buys nothing here.
            for setting in ("fsync", "synchronous_commit", "full_page_writes"):
                await conn.execute(f"ALTER SYSTEM SET {setting} = off")
            await conn.execute("SELECT pg_reload_conf()")
        await conn.execute(f"DROP DATABASE IF EXISTS {TEMPLATE_DB} WITH (FORCE)")
        await conn.execute(f"CREATE DATABASE {TEMPLATE_DB}")
    finally:
        await conn.close()
    url = with_database(cluster.admin_url, TEMPLATE_DB)
    await asyncio.to_thread(upgrade, url)
    return url


@pytest.fixture
async def db_url(cluster: Cluster, template_url: str) -> AsyncIterator[str]:
    name = f"t_{os.getpid()}_{next(_counter)}"
    conn = await asyncpg.connect(_asyncpg_url(cluster.admin_url))
    try:
        await conn.execute(f"CREATE DATABASE {name} TEMPLATE {TEMPLATE_DB} STRATEGY FILE_COPY")
    finally:
        await conn.close()
    yield with_database(cluster.admin_url, name)
    conn = await asyncpg.connect(_asyncpg_url(cluster.admin_url))
    try:
        await conn.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")
    finally:
        await conn.close()


def make_settings(tmp_path: Path, db_url: str, **overrides: Any) -> Settings:
    values: dict[str, Any] = {
        "data_dir": tmp_path / "data",
        "secret_key": "test-secret-key-" + "k" * 40,
        "base_url": BASE_URL,
        "database_url": db_url,
        "log_json": False,
    }
    values.update(overrides)
    return Settings(**values)


@pytest.fixture
def settings(tmp_path: Path, db_url: str) -> Settings:
    return make_settings(tmp_path, db_url)


@pytest.fixture
async def app(settings: Settings, db_url: str) -> AsyncIterator[FastAPI]:
    application = create_app(settings, database_url=db_url)
    async with application.router.lifespan_context(application):
        yield application


@pytest.fixture
async def sessionmaker(db_url: str) -> AsyncIterator[async_sessionmaker[AsyncSession]]:
    """A session factory for arranging and checking data directly (outside any request)."""
    engine = create_engine(db_url, pool_size=2, max_overflow=0)
    yield create_sessionmaker(engine)
    await engine.dispose()


def new_client(app: FastAPI, **kwargs: Any) -> httpx.AsyncClient:
    return httpx.AsyncClient(
        transport=httpx.ASGITransport(app=app, client=("203.0.113.7", 50000)), base_url=BASE_URL, **kwargs
    )


@pytest.fixture
async def client(app: FastAPI) -> AsyncIterator[httpx.AsyncClient]:
    async with new_client(app) as c:
        yield c


@dataclass
class Admin:
    id: uuid.UUID
    email: str
    password: str
    role: str | None
    token: str | None = None

    @property
    def headers(self) -> dict[str, str]:
        assert self.token, "created without a token"
        return {"Authorization": f"Bearer {self.token}"}


class Factory:
    """Arranges data through the same services the application uses."""

    def __init__(self, sessionmaker: async_sessionmaker[AsyncSession]) -> None:
        self.sessionmaker = sessionmaker

    async def admin(
        self,
        role: str | None = "Global administrator",
        *,
        email: str | None = None,
        token: bool = True,
        password: str = PASSWORD,
    ) -> Admin:
        email = email or f"{(role or 'user').split()[0].lower()}-{uuid.uuid4().hex[:8]}@example.com"
        context.set_current(context.RequestContext(correlation_id="test-arrange", actor=context.SYSTEM))
        async with self.sessionmaker() as session:
            role_id = BUILTIN_BY_NAME[role.lower()].id if role else None
            created = await user_service.create_local(
                session,
                UserCreate(email=email, display_name=email.split("@")[0], password=password, role_id=role_id),
            )
            secret = None
            if token and role:
                permissions = BUILTIN_BY_NAME[role.lower()].permissions
                _t, secret = await token_service.create(
                    session, created.user, ApiTokenCreate(name="tests"), owner_permissions=permissions
                )
            await session.commit()
        return Admin(created.user.id, email, password, role, secret)


@pytest.fixture
def factory(sessionmaker: async_sessionmaker[AsyncSession]) -> Factory:
    return Factory(sessionmaker)


async def sign_in(
    client: httpx.AsyncClient, email: str, password: str = PASSWORD, next_url: str = "/portal"
) -> httpx.Response:
    """Sign in through the portal form like a browser (login CSRF token included)."""
    page = await client.get("/portal/sign-in")
    match = re.search(r'name="form_token" value="([^"]+)"', page.text)
    assert match, "sign-in form has no form_token"
    return await client.post(
        "/portal/sign-in",
        data={"email": email, "password": password, "form_token": match.group(1), "next": next_url},
    )


def csrf_of(html: str) -> str:
    match = re.search(r'name="csrf_token" value="([^"]+)"', html)
    assert match, "page has no CSRF token"
    return match.group(1)
