"""SCIM errors (RFC 7644 §3.12): an HTTP status, a ``scimType`` and a detail, rendered as
``urn:ietf:params:scim:api:messages:2.0:Error`` with the content type ``application/scim+json``."""

from __future__ import annotations

from typing import Any

from fastapi.responses import JSONResponse

from corral.errors import CorralError

ERROR_SCHEMA = "urn:ietf:params:scim:api:messages:2.0:Error"
MEDIA_TYPE = "application/scim+json"


class ScimError(CorralError):
    def __init__(self, status: int, detail: str, scim_type: str | None = None) -> None:
        super().__init__(detail)
        self.status_code = status
        self.scim_type = scim_type


def scim_error_response(
    status: int, detail: str, scim_type: str | None = None, headers: dict[str, str] | None = None
) -> JSONResponse:
    body: dict[str, Any] = {"schemas": [ERROR_SCHEMA], "status": str(status), "detail": detail}
    if scim_type:
        body["scimType"] = scim_type
    return JSONResponse(body, status_code=status, media_type=MEDIA_TYPE, headers=headers)
