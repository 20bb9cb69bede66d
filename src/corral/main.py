"""The application factory."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from fastapi import FastAPI
from fastapi.staticfiles import StaticFiles

from corral import error_handlers
from corral.api import api_router
from corral.apple.auth import DeviceEnded
from corral.apple.device_endpoints import device_ended
from corral.apple.device_endpoints import router as apple_device_router
from corral.audit.refusals import RefusalLog
from corral.body_limits import body_limits
from corral.checkin.endpoints import router as device_router
from corral.checkin.last_seen import LastSeenBuffer
from corral.checkin.throttle import DeviceLimits
from corral.config import Settings, get_settings
from corral.health.endpoints import router as health_router
from corral.kit import openapi
from corral.kit.admission import Admission, AdmissionMiddleware
from corral.kit.body_limit import BodyLimitMiddleware
from corral.kit.db import asyncpg_dsn, create_engine, create_sessionmaker
from corral.kit.embedded import resolve_database_url
from corral.kit.middleware import RequestContextMiddleware
from corral.kit.migrations import is_current
from corral.kit.paths import STATIC_DIR
from corral.kit.routes import method_table, route_templates
from corral.portal.router import portal_router
from corral.push.endpoints import router as push_router
from corral.push.hub import PushHub
from corral.push.stream import StreamHandoff
from corral.scim.endpoints import router as scim_router

log = logging.getLogger("corral")


class NotMigrated(RuntimeError):
    pass


def create_app(
    settings: Settings | None = None, *, database_url: str | None = None, check_migrations: bool = True
) -> FastAPI:
    settings = settings or get_settings()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        handle: Any = None
        url = database_url
        if url is None:
            handle, url = resolve_database_url(settings)
        engine = create_engine(url, pool_size=settings.db_pool_size, max_overflow=settings.db_max_overflow)
        if check_migrations and not await is_current(engine):
            await engine.dispose()
            raise NotMigrated(
                "The database schema is not current. Run 'corral db upgrade' (or start with 'corral serve "
                "--migrate')."
            )
        app.state.engine = engine
        app.state.sessionmaker = create_sessionmaker(engine)
        app.state.database_handle = handle
        # Wake-ups for devices connected to this process, from any replica (LISTEN), and their heartbeats.
        hub = PushHub(asyncpg_dsn(url), heartbeat_seconds=settings.push_heartbeat_seconds)
        app.state.push_hub = hub
        # Last check-in times of check-ins that change nothing else, written in batches (checkin/last_seen).
        last_seen = LastSeenBuffer(app.state.sessionmaker, settings.last_seen_flush_seconds)
        app.state.last_seen = last_seen
        # Refusals in the audit log, aggregated per kind and window; per-client limits on refused device
        # requests (audit/refusals.py, checkin/throttle.py). Both per process.
        refusals = RefusalLog(
            app.state.sessionmaker, settings.audit_refusal_window_seconds, settings.audit_refusal_max_keys
        )
        app.state.refusals = refusals
        app.state.device_limits = DeviceLimits.from_settings(settings)
        try:
            await hub.start()
            last_seen.start()
            refusals.start()
            yield
        finally:
            await hub.stop()
            await last_seen.stop()
            await refusals.stop()
            await engine.dispose()

    app = FastAPI(
        title="Corral",
        version="0.1.0",
        summary="Device and app management: admin REST API",
        lifespan=lifespan,
        openapi_url="/api/v1/openapi.json",
        docs_url=None,
        redoc_url=None,
    )
    app.state.settings = settings
    error_handlers.install(app)
    app.add_exception_handler(DeviceEnded, device_ended)
    app.include_router(health_router)
    # The device routes first: every device request is matched against them before anything else (the
    # admin API's hundreds of routes would be tried first otherwise); nothing else lives under /device/.
    app.include_router(device_router)
    app.include_router(push_router)
    app.include_router(apple_device_router)
    app.include_router(api_router)
    app.include_router(scim_router)
    app.include_router(portal_router)
    app.mount("/static", StaticFiles(directory=STATIC_DIR), name="static")
    app.state.route_templates = route_templates(app)
    # Innermost: its 413s carry the request context's headers and are logged with their status.
    app.add_middleware(BodyLimitMiddleware, limits=body_limits(settings), render=error_handlers.http_error)
    # Device requests beyond the process's capacity wait briefly, then get 429 + Retry-After (kit/admission).
    # By default as many as the pool keeps open: no overflow connection opened and closed per burst.
    app.state.admission = Admission(settings.device_concurrency or settings.db_pool_size)
    app.add_middleware(
        AdmissionMiddleware,
        admission=app.state.admission,
        prefix="/device/v1/",
        exclude=("/device/v1/events",),
        wait_seconds=settings.device_admission_wait_seconds,
        retry_after_seconds=settings.device_retry_after_seconds,
        render=lambda _request, status, detail, headers: error_handlers.problem(
            status, "Too many requests", detail, headers=headers
        ),
    )
    app.state.method_table = method_table(app)  # the Allow header of 405 answers (error_handlers)
    openapi.install(app)  # every error answer in the document, as Problem Details
    app.add_middleware(
        RequestContextMiddleware,
        trusted_proxies=settings.trusted_proxy_networks,
        hsts=settings.secure_cookies,
    )
    app.add_middleware(StreamHandoff)  # outermost: long-lived wake-up streams continue there (push/stream.py)
    return app
