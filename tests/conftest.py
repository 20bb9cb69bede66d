"""Test harness: real PostgreSQL (embedded unless CORRAL_TEST_DATABASE_URL names a server), migrated once by
Alembic into a template database; every test gets its own database cloned from that template, so tests commit
for real (as production does) and still never see each other's data."""

from __future__ import annotations

import asyncio
import dataclasses
import itertools
import os
import re
import tempfile
import uuid
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
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
from corral.users.schemas import AdminCreate, UserCreate
from corral.users.service import user_service

# One template per xdist worker, so workers can share an external server (CORRAL_TEST_DATABASE_URL).
TEMPLATE_DB = f"corral_template_{os.environ.get('PYTEST_XDIST_WORKER', 'main')}"
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


@pytest.fixture(scope="session", autouse=True)
def fast_password_hashing() -> Iterator[Any]:
    """Argon2id with the library's cheapest parameters while testing: the same code paths and hash format,
    without ~0.1-0.5 s of deliberate slowness per password. (tests/test_config.py checks the real one.)"""
    from argon2 import PasswordHasher
    from argon2.profiles import CHEAPEST

    from corral.kit import security

    real = (security._hasher, security._DUMMY_HASH)
    security._hasher = PasswordHasher.from_parameters(CHEAPEST)
    security._DUMMY_HASH = security._hasher.hash(uuid.uuid4().hex)
    yield real[0]  # the production hasher, for the test that checks its parameters
    security._hasher, security._DUMMY_HASH = real


@pytest.fixture(scope="session", autouse=True)
def shared_dependency_trees() -> Iterator[None]:
    """Most tests start an application of their own, and FastAPI builds every route's dependency tree again
    for each one (signatures, pydantic adapters: ~0.5 s of CPU per application, most of a short test). A
    route's tree depends only on its path and endpoint, never on the application, so the worker builds each
    tree once and every application gets its own copy of the top level (which FastAPI then extends with the
    router-level dependencies). Routing, response models and request handlers are still built per
    application."""
    from fastapi import routing

    build = routing.get_dependant
    trees: dict[tuple[str, int, Any], Any] = {}

    def get_dependant(*, path: str, call: Any, scope: Any = None, **other: Any) -> Any:
        if other:  # a call this cache does not know: build as usual
            return build(path=path, call=call, scope=scope, **other)
        key = (path, id(call), scope)
        tree = trees.get(key)
        if tree is None or tree.call is not call:  # (the tree keeps `call` alive: its id stays its own)
            tree = trees[key] = build(path=path, call=call, scope=scope)
        return dataclasses.replace(tree, dependencies=list(tree.dependencies))

    routing.get_dependant = get_dependant  # type: ignore[assignment]
    yield
    routing.get_dependant = build


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
            created = await user_service.create_admin(
                session,
                AdminCreate(
                    email=email, display_name=email.split("@")[0], password=password, role_id=role_id
                ),
            )
            secret = None
            if token and role:
                permissions = BUILTIN_BY_NAME[role.lower()].permissions
                _t, secret = await token_service.create(
                    session, created.user, ApiTokenCreate(name="tests"), owner_permissions=permissions
                )
            await session.commit()
        return Admin(created.user.id, email, password, role, secret)

    async def user(
        self,
        upn: str | None = None,
        *,
        display_name: str | None = None,
        licence: bool = False,
        **properties: Any,
    ) -> uuid.UUID:
        """A local end user (no password, no role); with ``licence``, holding a licence of their own."""
        from corral.licensing.schemas import LicenceCreate
        from corral.licensing.service import licence_service
        from corral.rbac.principal import system_principal

        upn = upn or f"user-{uuid.uuid4().hex[:8]}@example.com"
        context.set_current(context.RequestContext(correlation_id="test-arrange", actor=context.SYSTEM))
        arranger = system_principal("tests", frozenset())
        async with self.sessionmaker() as session:
            user = await user_service.create_user(
                session,
                arranger,
                UserCreate(
                    user_principal_name=upn, display_name=display_name or upn.split("@")[0], **properties
                ),
            )
            if licence:
                sku = f"T-{uuid.uuid4().hex[:8]}"
                made = await licence_service.create(session, LicenceCreate(name=sku, sku=sku, seats=1))
                await licence_service.assign(session, arranger, user, made.id)
            await session.commit()
            return user.id


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
        data={"username": email, "password": password, "form_token": match.group(1), "next": next_url},
    )


def csrf_of(html: str) -> str:
    match = re.search(r'name="csrf_token" value="([^"]+)"', html)
    assert match, "page has no CSRF token"
    return match.group(1)


# ------------------------------------------------------------------------------------------- shared helpers
# (API and security suites; see tests/test_*.py)


async def owner_permissions(
    sessionmaker: async_sessionmaker[AsyncSession], user_id: uuid.UUID
) -> frozenset[Any]:
    """Every permission a user holds right now, through any of their role assignments."""
    from corral.auth.service import auth_service

    async with sessionmaker() as session:
        grants = await auth_service.grants_of(session, user_id)
    return frozenset(p for grant in grants for p in grant.permissions)


async def issue_token(
    sessionmaker: async_sessionmaker[AsyncSession],
    user_id: uuid.UUID,
    *,
    permissions: list[str] | None = None,
    name: str = "tests",
) -> str:
    """An API token for an existing user, through the token service (optionally narrowed)."""
    from corral.models import User

    context.set_current(context.RequestContext(correlation_id="test-arrange", actor=context.SYSTEM))
    held = await owner_permissions(sessionmaker, user_id)
    async with sessionmaker() as session:
        owner = await session.get(User, user_id)
        assert owner is not None
        _t, secret = await token_service.create(
            session, owner, ApiTokenCreate(name=name, permissions=permissions), owner_permissions=held
        )
        await session.commit()
    return secret


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


async def portal_csrf(client: httpx.AsyncClient, email: str, password: str = PASSWORD) -> str:
    """Sign ``client`` in through the portal form; return the session's CSRF token (for X-CSRF-Token)."""
    response = await sign_in(client, email, password)
    assert response.status_code == 303, response.text
    page = await client.get("/portal/account")
    assert page.status_code == 200, page.text
    return csrf_of(page.text)


async def audit_rows(sessionmaker: async_sessionmaker[AsyncSession], **where: Any) -> list[Any]:
    """Audit events straight from the table (oldest first), filtered by column equality."""
    from sqlalchemy import select

    from corral.models import AuditEvent

    stmt = select(AuditEvent).order_by(AuditEvent.seq)
    for column, value in where.items():
        stmt = stmt.where(getattr(AuditEvent, column) == value)
    async with sessionmaker() as session:
        return list((await session.scalars(stmt)).all())


async def count_rows(sessionmaker: async_sessionmaker[AsyncSession], table: str) -> int:
    from sqlalchemy import text

    assert re.fullmatch(r"[a-z_]+", table)
    async with sessionmaker() as session:
        query = text(f"SELECT count(*) FROM {table}")  # noqa: S608 - a checked identifier
        return int(await session.scalar(query) or 0)


@asynccontextmanager
async def running_app(settings: Settings, db_url: str, **kwargs: Any) -> AsyncIterator[FastAPI]:
    """An application with its own settings, started (lifespan) for the duration of the block."""
    application = create_app(settings, database_url=db_url, **kwargs)
    async with application.router.lifespan_context(application):
        yield application


@asynccontextmanager
async def scratch_database(cluster: Cluster, *, template: str | None = TEMPLATE_DB) -> AsyncIterator[str]:
    """A database of its own for the block: a clone of the migrated template, or empty (template=None)."""
    name = f"s_{os.getpid()}_{uuid.uuid4().hex[:12]}"
    clause = f" TEMPLATE {template} STRATEGY FILE_COPY" if template else ""
    conn = await asyncpg.connect(_asyncpg_url(cluster.admin_url))
    try:
        await conn.execute(f"CREATE DATABASE {name}{clause}")
    finally:
        await conn.close()
    try:
        yield with_database(cluster.admin_url, name)
    finally:
        conn = await asyncpg.connect(_asyncpg_url(cluster.admin_url))
        try:
            await conn.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")
        finally:
            await conn.close()


@pytest.fixture(scope="module")
async def module_db_url(cluster: Cluster, template_url: str) -> AsyncIterator[str]:
    """One migrated database shared by a module's tests: only for tests that change nothing they depend on."""
    async with scratch_database(cluster) as url:
        yield url
