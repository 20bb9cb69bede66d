"""The `corral` command: server, database and administration."""

from __future__ import annotations

import asyncio
import getpass
import logging
import signal
import sys
import time
import uuid
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Annotated, Any, TypeVar
from urllib.parse import urlsplit

import typer
from pydantic import ValidationError
from sqlalchemy.ext.asyncio import AsyncSession

from corral.config import Settings, get_settings
from corral.errors import CorralError
from corral.kit import context
from corral.kit.db import create_engine, create_sessionmaker
from corral.kit.embedded import resolve_database_url
from corral.kit.logging import configure_logging
from corral.policy_code.cli import policies_app

app = typer.Typer(help="Corral: device and app management.", no_args_is_help=True, add_completion=False)
db_app = typer.Typer(help="Database schema.", no_args_is_help=True)
admin_app = typer.Typer(help="Administrator accounts.", no_args_is_help=True)
token_app = typer.Typer(help="API tokens for automation.", no_args_is_help=True)
app.add_typer(db_app, name="db")
app.add_typer(admin_app, name="admin")
app.add_typer(token_app, name="token")
app.add_typer(policies_app, name="policies")

T = TypeVar("T")


def _settings() -> Settings:
    try:
        return get_settings()
    except ValidationError as exc:
        for error in exc.errors():
            typer.secho(f"configuration error: {error['msg']}", fg="red", err=True)
        raise typer.Exit(2) from exc


def _fail(message: str) -> typer.Exit:
    typer.secho(message, fg="red", err=True)
    return typer.Exit(1)


def _run_in_session(url: str, fn: Callable[[AsyncSession], Awaitable[T]]) -> T:
    async def runner() -> T:
        engine = create_engine(url, pool_size=1, max_overflow=0)
        try:
            async with create_sessionmaker(engine)() as session:
                result = await fn(session)
                await session.commit()
                return result
        finally:
            await engine.dispose()

    context.set_current(
        context.RequestContext(
            correlation_id=uuid.uuid4().hex,
            actor=context.Actor(type="system", name=f"cli:{getpass.getuser()}"),
        )
    )
    try:
        return asyncio.run(runner())
    finally:
        context._current.set(None)


# ------------------------------------------------------------------------------------------- db
@db_app.command("upgrade")
def db_upgrade(revision: str = "head") -> None:
    """Apply migrations (to the latest by default)."""
    from corral.kit.migrations import upgrade

    settings = _settings()
    _handle, url = resolve_database_url(settings)
    upgrade(url, revision)
    typer.echo(f"database at {revision}")


@db_app.command("downgrade")
def db_downgrade(revision: str) -> None:
    """Revert migrations down to REVISION (e.g. -1, or base)."""
    from corral.kit.migrations import downgrade

    settings = _settings()
    _handle, url = resolve_database_url(settings)
    downgrade(url, revision)
    typer.echo(f"database at {revision}")


@db_app.command("current")
def db_current() -> None:
    """Show the database's revision and whether it is current."""
    from corral.kit.migrations import current_revisions, head_revisions

    settings = _settings()
    _handle, url = resolve_database_url(settings)

    async def check() -> set[str]:
        engine = create_engine(url, pool_size=1, max_overflow=0)
        try:
            return await current_revisions(engine)
        finally:
            await engine.dispose()

    current = asyncio.run(check())
    heads = head_revisions()
    typer.echo(f"current: {', '.join(sorted(current)) or 'empty'}; head: {', '.join(sorted(heads))}")
    if current != heads:
        raise typer.Exit(1)


# ------------------------------------------------------------------------------------------- admins
def _read_password(from_stdin: bool) -> str:
    if from_stdin:
        return sys.stdin.readline().rstrip("\n")
    first = typer.prompt("Password", hide_input=True)
    second = typer.prompt("Repeat password", hide_input=True)
    if first != second:
        raise _fail("The passwords differ.")
    return str(first)


@admin_app.command("create")
def admin_create(
    email: Annotated[
        str, typer.Option(help="Email address; it becomes the sign-in name (user principal name)")
    ],
    role: Annotated[
        str, typer.Option(help="Role name, e.g. 'Global administrator'")
    ] = "Global administrator",
    display_name: Annotated[str, typer.Option(help="Display name")] = "",
    password_stdin: Annotated[
        bool, typer.Option("--password-stdin", help="Read the password from stdin")
    ] = False,
    one_time: Annotated[
        bool,
        typer.Option("--one-time-password", help="Generate a one-time password to change at first sign-in"),
    ] = False,
) -> None:
    """Create a local administrator account with a role over everything."""
    from corral.rbac.service import rbac_service
    from corral.users.schemas import AdminCreate
    from corral.users.service import user_service

    settings = _settings()
    password = None if one_time else _read_password(password_stdin)
    _handle, url = resolve_database_url(settings)

    async def create(session: AsyncSession) -> Any:
        role_row = await rbac_service.role_by_name(session, role)
        data = AdminCreate(email=email, display_name=display_name, password=password, role_id=role_row.id)
        return await user_service.create_admin(session, data)

    try:
        created = _run_in_session(url, create)
    except ValidationError as exc:
        raise _fail(f"invalid input: {exc.errors()[0]['msg']}") from exc
    except CorralError as exc:
        raise _fail(exc.detail) from exc
    typer.echo(f"created {created.user.user_principal_name} ({role})")
    if created.one_time_password:
        typer.echo(
            f"one-time password (shown once; must be changed at first sign-in): {created.one_time_password}"
        )


# ------------------------------------------------------------------------------------------- tokens
@token_app.command("create")
def token_create(
    email: Annotated[
        str,
        typer.Option(
            "--user",
            "--email",
            help="The administrator the token acts as: their sign-in name (or their own email address)",
        ),
    ],
    name: Annotated[str, typer.Option(help="What the token is for")] = "automation",
    days: Annotated[int, typer.Option(help="Days until it expires (1-730)")] = 90,
    permission: Annotated[
        list[str] | None, typer.Option(help="Narrow to this permission (repeatable)")
    ] = None,
) -> None:
    """Create an API token for an administrator; printed once."""
    from corral.auth import repository as auth_repository
    from corral.auth.service import auth_service
    from corral.tokens.schemas import ApiTokenCreate
    from corral.tokens.service import token_service

    settings = _settings()
    _handle, url = resolve_database_url(settings)

    async def create(session: AsyncSession) -> str:
        user = await auth_repository.user_by_sign_in_name(session, email)
        if user is None:
            raise CorralError(f"No account signs in as {email}.")
        principal = await auth_service.principal_for(session, user)
        if not principal.is_admin:
            raise CorralError(f"{email} holds no role; a token would be able to do nothing.")
        data = ApiTokenCreate(name=name, expires_in_days=days, permissions=permission or None)
        _token, secret = await token_service.create(
            session, user, data, owner_permissions=principal.permissions
        )
        return secret

    try:
        secret = _run_in_session(url, create)
    except ValidationError as exc:
        raise _fail(f"invalid input: {exc.errors()[0]['msg']}") from exc
    except CorralError as exc:
        raise _fail(exc.detail) from exc
    typer.echo(secret)


# ------------------------------------------------------------------------------------------- simulate
@app.command()
def simulate(
    url: Annotated[str, typer.Option(help="Corral's URL (as devices reach it), or an enrollment URL")],
    devices: Annotated[int, typer.Option(min=1, max=100_000, help="How many virtual devices")] = 10,
    token: Annotated[
        str | None, typer.Option(help="Enrollment token (not needed in an enrollment URL)")
    ] = None,
    state_dir: Annotated[
        Path, typer.Option(help="Where the virtual devices keep their keys and state")
    ] = Path("./.corral-simulator"),
    ca_fingerprint: Annotated[str | None, typer.Option(help="Pin the server's CA (SHA-256, hex)")] = None,
    duration: Annotated[
        float | None, typer.Option(help="Stop after this many seconds (default: Ctrl-C)")
    ] = None,
    platform: Annotated[
        str | None,
        typer.Option(
            help="ios, ipados or macos: simulate Apple devices enrolling with Apple's MDM protocol "
            "(enrollment profile, SCEP, check-in, commands) instead of agents"
        ),
    ] = None,
    connect_interval: Annotated[
        float,
        typer.Option(min=1, help="Apple devices: seconds between connections (no APNs in a simulation)"),
    ] = 60.0,
) -> None:
    """Run virtual devices that enroll, check in, hold wake-up streams and answer commands."""
    from corral.simulator import print_progress
    from corral.simulator import simulate as run_simulation

    logging.basicConfig(level=logging.WARNING)
    if platform is not None:
        from corral.apple.simulator import KINDS
        from corral.apple.simulator import simulate as run_apple

        if platform not in KINDS:
            raise _fail(f"--platform must be one of {', '.join(KINDS)}")

    async def main() -> Any:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        if platform is not None:
            return await run_apple(
                url,
                token,
                devices,
                platform,
                ca_fingerprint=ca_fingerprint,
                duration=duration,
                interval=connect_interval,
                progress=print_progress,
                stop=stop,
            )
        return await run_simulation(
            url,
            token,
            devices,
            state_dir,
            ca_fingerprint=ca_fingerprint,
            duration=duration,
            progress=print_progress,
            stop=stop,
        )

    stats = asyncio.run(main())
    typer.echo("")
    typer.echo(f"done: {stats.line()}")
    if stats.enrolled == 0:
        raise typer.Exit(1)


def _demo_fleet(settings: Settings, url: str, listen: str, devices: int) -> None:
    """Enroll a small simulated fleet against this very server once it answers (``serve --demo``)."""
    import threading

    from corral.enrollment.schemas import EnrollmentTokenCreate
    from corral.enrollment.service import enrollment_service
    from corral.models import Ownership, Platform
    from corral.rbac.roles import GLOBAL_ADMINISTRATOR
    from corral.simulator import simulate as run_simulation

    async def make_token(session: AsyncSession) -> str:
        from corral.auth.service import auth_service
        from corral.rbac import repository as rbac_repository
        from corral.users import repository as users_repository

        holders = await rbac_repository.enabled_members_of_role(session, GLOBAL_ADMINISTRATOR.id)
        user = await users_repository.get(session, holders[0])
        assert user is not None
        principal = await auth_service.principal_for(session, user)
        data = EnrollmentTokenCreate(
            name="Demo fleet (corral serve --demo)",
            platforms=list(Platform),
            ownership=Ownership.company,
            expires_in_days=1,
        )
        _token, secret, _url = await enrollment_service.create_token(session, settings, principal, data)
        return secret

    state_dir = settings.data_dir / "demo-devices"
    token = None if (state_dir / "device-00000").exists() else _run_in_session(url, make_token)

    def run() -> None:
        import httpx

        for _ in range(100):  # wait for the server to answer
            try:
                httpx.get(f"{listen}/healthz", verify=False, timeout=1)  # noqa: S501 - loopback, our own server
                break
            except httpx.HTTPError:
                time.sleep(0.2)
        asyncio.run(run_simulation(settings.base_url, token, devices, state_dir))

    threading.Thread(target=run, name="demo-fleet", daemon=True).start()
    typer.echo(f"Demo: {devices} simulated devices enroll and check in (state in {state_dir}).")


# ------------------------------------------------------------------------------------------- serve
@app.command()
def serve(
    host: Annotated[str | None, typer.Option(help="Address to listen on (CORRAL_HOST)")] = None,
    port: Annotated[int | None, typer.Option(help="Port (CORRAL_PORT)")] = None,
    migrate: Annotated[bool, typer.Option("--migrate", help="Apply pending migrations first")] = False,
    https: Annotated[
        bool | None, typer.Option("--https/--http", help="Serve TLS directly (CORRAL_TLS); else plain HTTP")
    ] = None,
    demo: Annotated[int, typer.Option(help="Also run this many simulated devices against this server")] = 0,
) -> None:
    """Serve the admin center, the REST API and the device endpoints."""
    import uvicorn

    from corral.kit.migrations import is_current, upgrade
    from corral.main import create_app
    from corral.pki.service import pki_service
    from corral.users.service import user_service

    settings = _settings()
    configure_logging(settings.log_level, settings.log_json)
    host = host or settings.host
    port = port or settings.port
    use_tls = settings.tls if https is None else https
    handle, url = resolve_database_url(settings)
    if migrate:
        upgrade(url)

    async def current() -> bool:
        engine = create_engine(url, pool_size=1, max_overflow=0)
        try:
            return await is_current(engine)
        finally:
            await engine.dispose()

    if not asyncio.run(current()):
        raise _fail(
            "The database schema is not current: run 'corral db upgrade' first, or 'corral serve --migrate'."
        )

    created = _run_in_session(
        url, lambda s: user_service.ensure_bootstrap_admin(s, settings.bootstrap_admin_email)
    )

    ssl: dict[str, Any] = {}
    ca_fingerprint = None
    if use_tls:
        settings = settings.model_copy(update={"tls": True})
        if settings.tls_cert_file and settings.tls_key_file:
            ssl = {"ssl_certfile": str(settings.tls_cert_file), "ssl_keyfile": str(settings.tls_key_file)}
        else:
            hostnames = list(
                dict.fromkeys([urlsplit(settings.base_url).hostname or "localhost", "localhost", "127.0.0.1"])
            )
            issued = _run_in_session(
                url, lambda s: pki_service.issue_server_certificate(s, settings, hostnames)
            )
            cert, key = pki_service.write_server_certificate(issued, settings.data_dir / "tls")
            ca_fingerprint = issued.ca_fingerprint
            ssl = {"ssl_certfile": str(cert), "ssl_keyfile": str(key)}

    scheme = "https" if use_tls else "http"
    listen = f"{scheme}://{host}:{port}"
    if "base_url" not in settings.model_fields_set:
        settings = settings.model_copy(update={"base_url": listen, "tls": use_tls})
    typer.echo(f"Corral is starting on {listen} (public URL: {settings.base_url})")
    typer.echo(f"Admin center: {settings.base_url}/portal")
    if ca_fingerprint:
        typer.echo(
            f"TLS certificate from Corral's own CA ({settings.data_dir / 'tls' / 'ca.crt'}), "
            f"SHA-256 fingerprint {ca_fingerprint}"
        )
    if created is not None:
        typer.echo("")
        typer.echo("First start: a Global administrator was created. Sign in with")
        typer.echo(f"  sign-in name: {created.user.user_principal_name}")
        typer.echo(
            f"  password:     {created.one_time_password}   (one-time: you choose a new one at first sign-in;"
        )
        typer.echo(
            "                it is not shown again — `corral admin create` makes another administrator)"
        )
        typer.echo("")
    if demo:
        _demo_fleet(settings, url, listen, demo)
    # uvicorn re-raises SIGTERM once it has shut down gracefully; exiting normally instead lets the embedded
    # PostgreSQL (stopped at exit) shut down too.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    application = create_app(settings, database_url=url)
    application.state.database_handle = handle
    if settings.embedded_worker:
        from corral.worker.runner import embed_worker

        embed_worker(application, settings, url)
    uvicorn.run(
        application,
        host=host,
        port=port,
        log_config=None,
        proxy_headers=False,
        server_header=False,
        timeout_graceful_shutdown=15,
        **ssl,
    )


# ------------------------------------------------------------------------------------------- worker
@app.command()
def worker(
    concurrency: Annotated[
        int | None, typer.Option(min=1, max=64, help="Jobs run at the same time (CORRAL_WORKER_CONCURRENCY)")
    ] = None,
) -> None:
    """Run background jobs and housekeeping until SIGTERM or Ctrl-C (then finish running jobs and exit)."""
    from corral.kit.migrations import is_current
    from corral.worker.runner import WorkerStopped, run_worker

    settings = _settings()
    configure_logging(settings.log_level, settings.log_json)
    _handle, url = resolve_database_url(settings)
    concurrency = concurrency or settings.worker_concurrency

    async def main() -> bool:
        engine = create_engine(url, pool_size=concurrency, max_overflow=settings.db_max_overflow)
        try:
            if not await is_current(engine):
                return False
            stop = asyncio.Event()
            loop = asyncio.get_running_loop()
            for sig in (signal.SIGINT, signal.SIGTERM):
                loop.add_signal_handler(sig, stop.set)
            logging.getLogger("corral.worker").info("worker starting (concurrency %d)", concurrency)
            await run_worker(settings, url, create_sessionmaker(engine), stop, concurrency=concurrency)
            return True
        finally:
            await engine.dispose()

    try:
        migrated = asyncio.run(main())
    except WorkerStopped as exc:
        raise _fail(f"worker failed: {exc}") from exc
    except Exception as exc:  # e.g. the database cannot be reached: logged, then exit 1 for the supervisor
        logging.getLogger("corral.worker").exception("worker failed")
        raise _fail(f"worker failed: {type(exc).__name__}: {exc}") from exc
    if not migrated:
        raise _fail("The database schema is not current: run 'corral db upgrade' first.")


def main() -> None:
    app()


if __name__ == "__main__":
    main()
