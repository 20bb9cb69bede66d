"""The OpenAPI document says what the server does: every error answer it can give, as Problem Details.

FastAPI describes success responses and its own 422 (as ``application/json`` with its own schema). Every error
Corral answers on the machine paths is ``application/problem+json`` (error_handlers.problem), and most of them
follow from what a route *is*, so they are derived here from the route table instead of being repeated on
each endpoint:

- a dependency that declares ``openapi_errors`` (the guards ``Require`` and ``Authenticated``: 401, 403)
  adds those statuses, and a 401 makes the operation need the bearer security scheme;
- a path parameter: 404 (unknown, outside your scope, or not an id at all);
- a request body: 400 (not parseable), 413 (too large) and 422 (not valid);
- any parameter or body: 422; a ``cursor`` query parameter: 400 (a cursor the server did not issue).

What depends on the rules of a service (409 conflicts, a 403 or 404 from a rule) is declared on the route
with ``responses={409: {"description": …}}``; such declarations get the Problem media type and schema too,
unless they give their own ``content`` or ``model``. Success responses are left as FastAPI wrote them.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Iterator
from typing import Any

from fastapi import FastAPI
from fastapi.dependencies.models import Dependant
from fastapi.routing import APIRoute, iter_route_contexts
from pydantic import BaseModel, Field

from corral.kit.db import get_db_session

PROBLEM_MEDIA_TYPE = "application/problem+json"
BEARER_SCHEME = "bearer"

# The meaning of each derived status, unless the route says more.
DESCRIPTIONS: dict[int, str] = {
    400: "Malformed request: a body that cannot be parsed, or a pagination cursor this server did not issue",
    401: "Not authenticated: no credentials, or an API token that is invalid, expired or revoked",
    403: "Forbidden: a permission is missing (or, for a browser session, the CSRF token)",
    404: "Not found: no such object, outside your scope, or not an id",
    409: "Conflict with the current state",
    413: "The request body is too large",
    422: "Validation failed: the request does not satisfy the schema or a rule",
    429: "Too many requests: try again after Retry-After seconds",
    503: "The database connection was lost during the request: try again after Retry-After seconds",
}


class ProblemError(BaseModel):
    """One invalid field of a request (422)."""

    location: str = Field(description="Where: `path.id`, `query.limit`, or a body field such as `email`")
    message: str
    type: str = Field(description="A machine-readable reason, e.g. `string_pattern_mismatch`")


class Problem(BaseModel):
    """An error, as Problem Details (RFC 9457)."""

    type: str = Field(description="Always `about:blank`: the status and title say what happened")
    title: str
    status: int
    detail: str = Field(description="What went wrong and what to do, for a person")
    correlation_id: str = Field(description="The X-Request-ID of the request, also in the audit log and logs")
    errors: list[ProblemError] | None = Field(default=None, description="For 422: each invalid field")


def _problem_response(description: str, status: int) -> dict[str, Any]:
    response: dict[str, Any] = {
        "description": description,
        "content": {PROBLEM_MEDIA_TYPE: {"schema": {"$ref": "#/components/schemas/Problem"}}},
    }
    if status == 401:
        response["headers"] = {
            "WWW-Authenticate": {
                "description": "`Bearer`: authenticate with an API token",
                "required": True,
                "schema": {"type": "string"},
            }
        }
    if status in (429, 503):
        response["headers"] = {
            "Retry-After": {"description": "Seconds to wait", "required": True, "schema": {"type": "integer"}}
        }
    return response


def _dependency_calls(dependant: Dependant) -> Iterator[Callable[..., Any]]:
    for sub in dependant.dependencies:
        if sub.call is not None:
            yield sub.call
        yield from _dependency_calls(sub)


def derived_errors(dependant: Dependant, operation: dict[str, Any]) -> set[int]:
    """The error statuses that follow from the route's dependencies, parameters and body."""
    statuses: set[int] = set()
    for call in _dependency_calls(dependant):
        statuses |= set(getattr(call, "openapi_errors", ()))
        if call is get_db_session:  # its connection can be lost (error_handlers.database_unavailable)
            statuses.add(503)
    parameters = operation.get("parameters", [])
    if any(p["in"] == "path" for p in parameters):
        statuses.add(404)
    if any(p["in"] == "query" and p["name"] == "cursor" for p in parameters):
        statuses.add(400)
    if "requestBody" in operation:
        statuses |= {400, 413, 422}
    if parameters:
        statuses.add(422)
    return statuses


def describe_errors(document: dict[str, Any], app: FastAPI) -> dict[str, Any]:
    """Declare every error response of every operation in ``document`` (the app's generated schema)."""
    document = copy.deepcopy(document)
    components = document.setdefault("components", {})
    schemas = components.setdefault("schemas", {})
    for name, schema in (
        Problem.model_json_schema(ref_template="#/components/schemas/{model}").pop("$defs", {}).items()
    ):
        schemas[name] = schema
    schemas["Problem"] = {
        k: v
        for k, v in Problem.model_json_schema(ref_template="#/components/schemas/{model}").items()
        if k != "$defs"
    }
    components.setdefault("securitySchemes", {})[BEARER_SCHEME] = {
        "type": "http",
        "scheme": "bearer",
        "description": "An API token (`corral_pat_…`). A browser session of the admin center also works, "
        "with its CSRF token in `X-CSRF-Token` on state-changing requests.",
    }

    for context in iter_route_contexts(app.routes):
        route = context.original_route
        if not isinstance(route, APIRoute) or not context.include_in_schema:
            continue
        path_item = document["paths"].get(context.path_format, {})
        for method in context.methods or ():
            operation = path_item.get(method.lower())
            if operation is None:
                continue
            responses: dict[str, Any] = operation.setdefault("responses", {})
            declared = {
                int(code): response
                for code, response in responses.items()
                if code.isdigit() and int(code) >= 400
            }
            for status in derived_errors(context.dependant, operation) | set(declared):
                given = declared.get(status, {})
                route_declared = route.responses.get(status) or route.responses.get(str(status)) or {}
                if "content" in route_declared or "model" in route_declared:
                    continue  # the route describes this answer itself
                description = route_declared.get("description") or DESCRIPTIONS.get(
                    status, given.get("description") or "Error"
                )
                responses[str(status)] = _problem_response(description, status)
            if "401" in responses:
                operation["security"] = [{BEARER_SCHEME: []}]
            operation["responses"] = dict(sorted(responses.items()))

    # FastAPI's own 422 schemas are no longer referenced.
    text = repr(document["paths"])
    for unused in ("HTTPValidationError", "ValidationError"):
        if f"#/components/schemas/{unused}'" not in text:
            schemas.pop(unused, None)
    return document


def install(app: FastAPI) -> None:
    """Serve the described document (generated once, on first use)."""
    generate = app.openapi
    described: dict[str, Any] = {}

    def openapi() -> dict[str, Any]:
        if not described:
            described.update(describe_errors(generate(), app))
        return described

    app.openapi = openapi  # type: ignore[method-assign]
