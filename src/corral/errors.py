"""Domain errors carry their HTTP status. One handler renders them: Problem Details (RFC 9457) for the APIs,
a page for the admin center."""

from __future__ import annotations

from typing import Any


class CorralError(Exception):
    status_code: int = 400
    title: str = "Bad request"
    type_: str = "about:blank"

    def __init__(
        self,
        detail: str,
        *,
        errors: list[dict[str, Any]] | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(detail)
        self.detail = detail
        self.errors = errors
        self.headers = headers or {}


class BadRequest(CorralError):
    status_code = 400
    title = "Bad request"


class ValidationFailed(CorralError):
    status_code = 422
    title = "Validation failed"


class NotAuthenticated(CorralError):
    status_code = 401
    title = "Not authenticated"


class Forbidden(CorralError):
    status_code = 403
    title = "Forbidden"


class NotFound(CorralError):
    status_code = 404
    title = "Not found"


class Conflict(CorralError):
    status_code = 409
    title = "Conflict"


class PayloadTooLarge(CorralError):
    status_code = 413
    title = "Payload too large"


class UnsupportedMediaType(CorralError):
    status_code = 415
    title = "Unsupported media type"


class TooManyRequests(CorralError):
    status_code = 429
    title = "Too many requests"


class ServiceUnavailable(CorralError):
    status_code = 503
    title = "Service unavailable"
