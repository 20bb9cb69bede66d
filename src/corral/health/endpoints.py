from __future__ import annotations

import datetime as dt
from typing import Annotated, Literal

from fastapi import Depends, Request, Response
from fastapi.responses import JSONResponse
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from pydantic import BaseModel, Field
from sqlalchemy import select, text

from corral.apple.push_certificate import expiry, in_use
from corral.auth.dependencies import PUBLIC, Require
from corral.kit.migrations import is_current
from corral.kit.routing import APIRouter
from corral.kit.time import utcnow
from corral.models import ApplePushCertificate
from corral.rbac.permissions import P
from corral.rbac.principal import Principal
from corral.worker import metrics as worker_metrics

router = APIRouter(tags=["operations"])


@router.get("/healthz", dependencies=[PUBLIC])
async def healthz() -> dict[str, str]:
    """The process is up."""
    return {"status": "ok"}


class Readiness(BaseModel):
    status: Literal["ready", "not ready"]
    checks: dict[str, str] = Field(description="database, migrations: `ok` or what is wrong")
    warnings: dict[str, str] = Field(
        default_factory=dict,
        description="What needs an operator soon without making the process unready: "
        "`apple_push_certificate` 30 days before it expires",
    )


_PUSH_EXPIRY = in_use(select(ApplePushCertificate.not_after))


def _push_warning(not_after: dt.datetime | None) -> str | None:
    if not_after is None:
        return None
    state = expiry(not_after, utcnow())
    if state.state == "expired":
        return f"expired on {not_after.date().isoformat()}: Apple devices cannot be woken"
    if state.state != "valid":
        return f"expires in {state.days_left} days ({not_after.date().isoformat()}): renew it"
    return None


@router.get(
    "/readyz",
    dependencies=[PUBLIC],
    response_model=Readiness,
    responses={503: {"model": Readiness, "description": "Not ready"}},
)
async def readyz(request: Request) -> JSONResponse:
    """The database is reachable and its schema is current."""
    engine = request.app.state.engine
    checks: dict[str, str] = {}
    warnings: dict[str, str] = {}
    try:
        async with engine.connect() as connection:
            await connection.execute(text("SELECT 1"))
            checks["database"] = "ok"
            current = await is_current(engine)
            checks["migrations"] = "ok" if current else "pending: run 'corral db upgrade'"
            push = _push_warning(await connection.scalar(_PUSH_EXPIRY)) if current else None
        if push:
            warnings["apple_push_certificate"] = push
    except Exception as exc:  # any failure means not ready
        checks.setdefault("database", f"unreachable: {type(exc).__name__}")
    ready = all(value == "ok" for value in checks.values())
    body = {"status": "ready" if ready else "not ready", "checks": checks, "warnings": warnings}
    return JSONResponse(body, status_code=200 if ready else 503)


@router.get(
    "/metrics",
    response_class=Response,
    responses={
        200: {
            "description": "The Prometheus text exposition format",
            "content": {CONTENT_TYPE_LATEST.partition(";")[0]: {"schema": {"type": "string"}}},
        }
    },
)
async def metrics(request: Request, _: Annotated[Principal, Depends(Require(P.system_metrics))]) -> Response:
    """Prometheus metrics; scrape with an API token holding system:metrics."""
    await worker_metrics.refresh(request.app.state.engine)  # job queue depth, shared by all replicas
    return Response(generate_latest(), media_type=CONTENT_TYPE_LATEST)
