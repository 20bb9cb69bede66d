"""A real Corral server on loopback for tests that need real connections (a browser, a long-lived event
stream, the agent): uvicorn in a thread of the test process, over HTTPS or plain HTTP, against the test's
database. Also :func:`free_port` for tests that start ``corral serve`` processes."""

from __future__ import annotations

import asyncio
import socket
import ssl
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TypeVar

import uvicorn
from fastapi import FastAPI

from corral.config import Settings
from corral.kit import context
from corral.kit.db import create_engine, create_sessionmaker
from corral.main import create_app
from corral.pki import certs
from corral.pki.service import pki_service
from tests.conftest import make_settings

T = TypeVar("T")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass(frozen=True)
class Tls:
    cert_file: Path  # the server certificate followed by its CA
    key_file: Path
    ca_file: Path

    def client_context(self) -> ssl.SSLContext:
        return ssl.create_default_context(cafile=str(self.ca_file))


def throwaway_ca_tls(directory: Path) -> Tls:
    """A server certificate for 127.0.0.1 from a throwaway CA (Corral's certificate code, not its
    database)."""
    now = datetime.now(UTC)
    ca_cert, ca_key = certs.build_ca("Corral test CA", now)
    cert, key = certs.issue_server_certificate(ca_cert, ca_key, ["127.0.0.1", "localhost"], now)
    tls = Tls(directory / "server.crt", directory / "server.key", directory / "ca.crt")
    tls.cert_file.write_bytes(certs.cert_pem(cert) + certs.cert_pem(ca_cert))
    tls.key_file.write_bytes(certs.key_pem(key))
    tls.ca_file.write_bytes(certs.cert_pem(ca_cert))
    return tls


async def corral_ca_tls(settings: Settings, db_url: str, directory: Path) -> Tls:
    """A server certificate from Corral's own CA in the database, as ``corral serve --https`` issues it: the
    enrollment URLs then carry that CA's fingerprint (``ca=sha256:…``) for the agent to pin."""
    context.set_current(context.RequestContext(correlation_id="test-arrange", actor=context.SYSTEM))
    engine = create_engine(db_url, pool_size=1, max_overflow=0)
    try:
        async with create_sessionmaker(engine)() as session:
            issued = await pki_service.issue_server_certificate(session, settings, ["127.0.0.1", "localhost"])
            await session.commit()
    finally:
        await engine.dispose()
    cert, key = pki_service.write_server_certificate(issued, directory)
    return Tls(cert, key, directory / "ca.crt")


class LiveServer:
    """uvicorn serving a Corral app in a daemon thread; ``url`` is its base URL (also its CORRAL_BASE_URL)."""

    def __init__(self, url: str, app: FastAPI, server: uvicorn.Server) -> None:
        self.url = url
        self.app = app
        self.tls: Tls | None = None
        self.loop: asyncio.AbstractEventLoop | None = None
        self._server = server
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        """What ``uvicorn.Server.run`` does (same event loop factory), keeping the loop for :meth:`call`."""

        async def serve() -> None:
            self.loop = asyncio.get_running_loop()
            await self._server.serve()

        with asyncio.Runner(loop_factory=self._server.config.get_loop_factory()) as runner:
            runner.run(serve())

    def start(self) -> None:
        self._thread.start()
        deadline = time.monotonic() + 20
        while not self._server.started:
            if not self._thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError("the live server did not start")
            time.sleep(0.05)

    async def call(self, fn: Callable[[], T]) -> T:
        """Run ``fn`` in the server's event loop (its objects are not thread-safe) and return its result."""
        assert self.loop is not None

        async def run() -> T:
            return fn()

        return await asyncio.wrap_future(asyncio.run_coroutine_threadsafe(run(), self.loop))

    @property
    def settings(self) -> Settings:
        settings: Settings = self.app.state.settings
        return settings

    def stop(self) -> None:
        self._server.should_exit = True
        self._thread.join(timeout=15)


def start_live_server(
    tmp_path: Path,
    db_url: str,
    *,
    tls: Tls | None = None,
    port: int | None = None,
    settings: Settings | None = None,
    **overrides: Any,
) -> LiveServer:
    """Start and wait until it serves. Pass ``port`` and ``settings`` together when the settings had to
    be made first (a certificate from Corral's CA needs them); otherwise they are made here from
    ``overrides``."""
    port = port or free_port()
    scheme = "https" if tls else "http"
    url = f"{scheme}://127.0.0.1:{port}"
    if settings is None:
        settings = make_settings(tmp_path, db_url, base_url=url, tls=tls is not None, **overrides)
    assert settings.base_url == url, "the base URL must be the one the server listens on"
    app = create_app(settings, database_url=db_url)
    ssl_options = {"ssl_certfile": str(tls.cert_file), "ssl_keyfile": str(tls.key_file)} if tls else {}
    config = uvicorn.Config(
        app,
        host="127.0.0.1",
        port=port,
        log_config=None,
        lifespan="on",
        # Connections still open at the end of a test (a browser page's keep-alive or event stream: pages
        # are closed after the server stops) are cut after this long.
        timeout_graceful_shutdown=1,
        **ssl_options,
    )
    live = LiveServer(url, app, uvicorn.Server(config))
    live.tls = tls
    live.start()
    return live
