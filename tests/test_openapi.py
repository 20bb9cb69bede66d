"""The OpenAPI document describes what the server answers: every error as Problem Details
(``application/problem+json``, one Problem schema), with the statuses that follow from each route; and the
server refuses what the document says is invalid. (tests/test_openapi_conformance.py runs schemathesis.)"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import httpx
import pytest

from corral.config import Settings
from corral.kit.openapi import PROBLEM_MEDIA_TYPE, Problem
from corral.main import create_app
from tests.conftest import Admin, Factory

DOCUMENT: dict[str, Any] = create_app(
    Settings(
        secret_key="openapi-secret-" + "o" * 40,
        base_url="https://testserver",
        database_url="postgresql://unused/unused",
        data_dir=Path("/nonexistent-corral-data-dir"),
    )
).openapi()
PROBLEM_CONTENT = {PROBLEM_MEDIA_TYPE: {"schema": {"$ref": "#/components/schemas/Problem"}}}
OPERATIONS = [
    (method.upper(), path, operation)
    for path, item in sorted(DOCUMENT["paths"].items())
    for method, operation in item.items()
]
IDS = [f"{method} {path}" for method, path, _ in OPERATIONS]


def errors_of(operation: dict[str, Any]) -> dict[int, dict[str, Any]]:
    return {int(code): r for code, r in operation["responses"].items() if int(code) >= 400}


@pytest.mark.parametrize(("method", "path", "operation"), OPERATIONS, ids=IDS)
def test_every_error_response_is_problem_details(method: str, path: str, operation: dict[str, Any]) -> None:
    for status, response in errors_of(operation).items():
        if (method, path, status) == ("GET", "/readyz", 503):  # not an error body: the readiness report
            assert "application/json" in response["content"]
            continue
        assert response["content"] == PROBLEM_CONTENT, (status, response)
        assert response["description"]


@pytest.mark.parametrize(("method", "path", "operation"), OPERATIONS, ids=IDS)
def test_statuses_follow_from_the_route(method: str, path: str, operation: dict[str, Any]) -> None:
    statuses = set(errors_of(operation))
    parameters = operation.get("parameters", [])
    public = path in {"/healthz", "/readyz"}
    if not public:  # every other operation has a guard: Require or Authenticated
        assert {401, 403} <= statuses
        assert operation["security"] == [{"bearer": []}]
        assert operation["responses"]["401"]["headers"]["WWW-Authenticate"]["required"] is True
    if any(p["in"] == "path" for p in parameters):
        assert 404 in statuses
    if "requestBody" in operation:
        assert {400, 413, 422} <= statuses
    if any(p["name"] == "cursor" for p in parameters):
        assert 400 in statuses


def test_fastapis_own_validation_schema_is_gone_and_problem_is_shared() -> None:
    schemas = DOCUMENT["components"]["schemas"]
    assert "HTTPValidationError" not in schemas and "ValidationError" not in schemas
    assert set(schemas["Problem"]["required"]) == {"type", "title", "status", "detail", "correlation_id"}
    assert DOCUMENT["components"]["securitySchemes"]["bearer"] == {
        "type": "http",
        "scheme": "bearer",
        "description": DOCUMENT["components"]["securitySchemes"]["bearer"]["description"],
    }


def test_statuses_a_route_declares_keep_their_meaning() -> None:
    delete_role = DOCUMENT["paths"]["/api/v1/roles/{role_id}"]["delete"]["responses"]
    assert delete_role["409"] == {"description": "Still assigned", "content": PROBLEM_CONTENT}
    unassign = DOCUMENT["paths"]["/api/v1/role-assignments/{assignment_id}"]["delete"]["responses"]
    assert "Global administrator" in unassign["409"]["description"]
    metrics = DOCUMENT["paths"]["/metrics"]["get"]["responses"]["200"]
    assert list(metrics["content"]) == ["text/plain"]


# ------------------------------------------------------------------------------------------- over HTTP
def _problem(response: httpx.Response, status: int) -> Problem:
    assert response.status_code == status, response.text
    assert response.headers["content-type"] == PROBLEM_MEDIA_TYPE
    return Problem.model_validate_json(response.content)


async def test_error_bodies_match_the_problem_schema(client: httpx.AsyncClient, factory: Factory) -> None:
    admin = await factory.admin()
    _problem(await client.get("/api/v1/users"), 401)
    _problem(
        await client.get("/api/v1/users/00000000-0000-0000-0000-000000000000", headers=admin.headers), 404
    )
    invalid = _problem(await client.post("/api/v1/users", json={}, headers=admin.headers), 422)
    assert invalid.errors and {e.location for e in invalid.errors} >= {"user_principal_name", "display_name"}
    _problem(await client.get("/api/v1/users", params={"cursor": "%%%"}, headers=admin.headers), 400)


@pytest.fixture
async def glob(factory: Factory) -> Admin:
    return await factory.admin()


async def test_a_boolean_is_not_a_seat_count(client: httpx.AsyncClient, glob: Admin) -> None:
    body = {"name": "Suite", "sku": "SUITE", "seats": True}
    _problem(await client.post("/api/v1/licences", json=body, headers=glob.headers), 422)
    created = await client.post("/api/v1/licences", json={**body, "seats": 3}, headers=glob.headers)
    assert created.status_code == 201, created.text
    update = {"seats": False}
    path = f"/api/v1/licences/{created.json()['id']}"
    _problem(await client.patch(path, json=update, headers=glob.headers), 422)
    assert (await client.get(path, headers=glob.headers)).json()["seats"] == 3


async def test_a_number_is_not_a_boolean(client: httpx.AsyncClient, factory: Factory, glob: Admin) -> None:
    user_id = await factory.user()
    path = f"/api/v1/users/{user_id}"
    _problem(await client.patch(path, json={"enabled": 0}, headers=glob.headers), 422)
    assert (await client.get(path, headers=glob.headers)).json()["enabled"] is True
    token = {"name": "T", "platforms": ["linux"], "expires_in_days": True}
    _problem(await client.post("/api/v1/enrollment-tokens", json=token, headers=glob.headers), 422)


@pytest.mark.parametrize("value", ["0.5", "1700000000", "-1"])
async def test_audit_times_are_iso_8601_not_unix_seconds(
    client: httpx.AsyncClient, glob: Admin, value: str
) -> None:
    response = await client.get("/api/v1/audit-events", params={"until": value}, headers=glob.headers)
    problem = _problem(response, 422)
    assert problem.errors and problem.errors[0].location == "query.until"
    fine = await client.get(
        "/api/v1/audit-events", params={"until": "2026-12-03T10:00:00Z"}, headers=glob.headers
    )
    assert fine.status_code == 200


async def test_an_issuer_host_idna_refuses_is_a_validation_error(
    client: httpx.AsyncClient, glob: Admin
) -> None:
    body = {"name": "Odd", "issuer": "https://\U000ad76b", "client_id": "c", "client_secret": "s"}
    response = await client.post("/api/v1/identity-connections", json=body, headers=glob.headers)
    assert response.status_code == 422, response.text  # was a 500 (httpx.InvalidURL)


async def test_a_blank_email_means_none_as_the_document_says(client: httpx.AsyncClient, glob: Admin) -> None:
    schema = DOCUMENT["components"]["schemas"]["UserCreate"]["properties"]["email"]
    assert any(branch.get("pattern", "").startswith(r"^\s*$|") for branch in schema["anyOf"])
    body = {"user_principal_name": "blank@example.com", "display_name": "Blank", "email": "  "}
    created = await client.post("/api/v1/users", json=body, headers=glob.headers)
    assert created.status_code == 201, created.text
    assert created.json()["email"] is None
