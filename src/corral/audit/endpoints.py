from __future__ import annotations

import json
from typing import Annotated

from fastapi import Depends, Query, Response

from corral.audit.schemas import AuditEventOut, AuditFilter, AuditPage
from corral.audit.service import audit_service
from corral.auth.dependencies import Require
from corral.kit.csvexport import to_csv
from corral.kit.db import SessionDep
from corral.kit.routing import APIRouter
from corral.models import AuditEvent
from corral.rbac.permissions import P
from corral.rbac.principal import Principal

router = APIRouter(prefix="/audit-events", tags=["audit"])

AuditRead = Annotated[Principal, Depends(Require(P.audit_read))]

CSV_HEADER = [
    "occurred_at",
    "category",
    "activity",
    "result",
    "actor_type",
    "actor",
    "target_type",
    "target_id",
    "target",
    "changes",
    "detail",
    "correlation_id",
    "ip_address",
]


def csv_row(event: AuditEvent) -> list[object]:
    return [
        event.occurred_at.isoformat(),
        event.category,
        event.activity,
        event.result,
        event.actor_type,
        event.actor_name,
        event.target_type,
        event.target_id,
        event.target_name,
        json.dumps(event.modified_properties, ensure_ascii=False) if event.modified_properties else "",
        event.detail,
        event.correlation_id,
        event.ip_address,
    ]


@router.get("", response_model=AuditPage)
async def list_audit_events(
    session: SessionDep, principal: AuditRead, filters: Annotated[AuditFilter, Query()]
) -> AuditPage:
    """Audit events, newest first (licence events only for holders of licences:read)."""
    page = await audit_service.search(session, filters, principal)
    return AuditPage(
        items=[AuditEventOut.model_validate(e) for e in page.items], next_cursor=page.next_cursor
    )


@router.get(
    "/export.csv",
    response_class=Response,
    responses={200: {"content": {"text/csv": {}}, "description": "CSV of the filtered events"}},
)
async def export_audit_events(
    session: SessionDep, principal: AuditRead, filters: Annotated[AuditFilter, Query()]
) -> Response:
    events = await audit_service.export(session, filters, principal=principal)
    return Response(
        to_csv(CSV_HEADER, (csv_row(e) for e in events)),
        media_type="text/csv; charset=utf-8",
        headers={"Content-Disposition": 'attachment; filename="corral-audit.csv"'},
    )
