"""The route table routes every request to the route written for it: no literal path (``/api-tokens/all``) is
taken by a parameter route (``/api-tokens/{token_id}``) for a method the literal path does not serve, and a
method a path does not serve is answered 405 with every method it does serve in ``Allow``."""

from __future__ import annotations

import re
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi.routing import iter_route_contexts
from starlette.convertors import UUIDConvertor
from starlette.routing import Match

from corral.config import Settings
from corral.error_handlers import MACHINE_PREFIXES
from corral.kit.routes import RouteInfo, api_routes
from corral.main import create_app
from tests.conftest import Factory, make_settings, new_client, running_app

_TABLE_APP = create_app(
    Settings(
        secret_key="route-table-secret-" + "r" * 40,
        base_url="https://testserver",
        database_url="postgresql://unused/unused",
        data_dir=Path("/nonexistent-corral-data-dir"),
    )
)
ROUTES: list[RouteInfo] = api_routes(_TABLE_APP)
CONTEXTS = list(iter_route_contexts(_TABLE_APP.routes))
METHODS = ("GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS")
SAMPLE_ID = uuid.UUID("0b8f1c3e-5d2a-4f6b-9e7c-1a2b3c4d5e6f")


def concrete(info: RouteInfo) -> str:
    """A path this route's own template matches (every parameter given a value its converter takes)."""
    convertors = info.route.param_convertors

    def value(match: re.Match[str]) -> str:
        convertor = convertors[match.group(1)]
        return str(convertor.to_string(SAMPLE_ID if isinstance(convertor, UUIDConvertor) else "sample"))

    return re.sub(r"\{(\w+)(?::\w+)?\}", value, info.path)


def template_of(context: Any) -> str:
    return str(context.path_format)


def dispatch(method: str, path: str) -> tuple[Match, Any]:
    """What Starlette's router does: the first full match handles it, else the first partial one (405)."""
    scope = {"type": "http", "method": method, "path": path, "root_path": "", "path_params": {}}
    partial = None
    for context in CONTEXTS:
        match, _ = context.matches(scope)
        if match is Match.FULL:
            return match, context
        if match is Match.PARTIAL and partial is None:
            partial = context
    return (Match.PARTIAL, partial) if partial is not None else (Match.NONE, None)


def test_no_request_is_handled_by_a_route_of_another_path_template() -> None:
    """A request for a route's path, with any method, is handled by a route of that same template or
    refused with 405: never handed to a parameter route that takes the literal segment for an id."""
    wrong = []
    for info in ROUTES:
        path = concrete(info)
        own_template = next(template_of(c) for c in CONTEXTS if c.original_route is info.route)
        for method in METHODS:
            match, context = dispatch(method, path)
            if match is Match.FULL and template_of(context) != own_template:
                wrong.append(f"{method} {path} -> {template_of(context)} (not {own_template})")
    assert not wrong, "\n".join(wrong)


def test_every_uuid_path_parameter_uses_the_uuid_converter() -> None:
    """`{device_id:uuid}`: an id-shaped segment only, so `/devices/approvals` can never be a device id (and
    a malformed id names nothing: 404)."""
    untyped = [
        f"{info.path}: {param.name}"
        for info in ROUTES
        for param in info.route.dependant.path_params
        if param.field_info.annotation is uuid.UUID
        and not isinstance(info.route.param_convertors.get(param.name), UUIDConvertor)
    ]
    assert not untyped, untyped


# ------------------------------------------------------------------------------------------------ over HTTP
@pytest.fixture(scope="module")
async def anonymous(
    module_db_url: str, tmp_path_factory: pytest.TempPathFactory
) -> AsyncIterator[httpx.AsyncClient]:
    settings = make_settings(tmp_path_factory.mktemp("routing"), module_db_url)
    async with running_app(settings, module_db_url) as application, new_client(application) as c:
        yield c


def _paths() -> dict[str, set[str]]:
    """Each concrete path and every method some route serves there."""
    out: dict[str, set[str]] = {}
    for info in ROUTES:
        out.setdefault(concrete(info), set()).update(info.methods)
    return out


PATHS = sorted(_paths().items())


@pytest.mark.parametrize(("path", "methods"), PATHS, ids=[p for p, _ in PATHS])
async def test_unserved_method_is_405_with_every_method_of_the_path(
    anonymous: httpx.AsyncClient, path: str, methods: set[str]
) -> None:
    for method in sorted({"POST", "PUT", "PATCH", "DELETE", "OPTIONS"} - methods):
        response = await anonymous.request(method, path)
        assert response.status_code == 405, (method, response.text)
        assert response.headers["allow"] == ", ".join(sorted(methods)), method
        if path.startswith("/scim/"):
            assert response.headers["content-type"].startswith("application/scim+json")
        elif path.startswith(MACHINE_PREFIXES):
            assert response.headers["content-type"] == "application/problem+json"
            assert response.json()["status"] == 405
        else:
            assert response.headers["content-type"].startswith("text/html")


async def test_delete_on_the_all_tokens_list_is_405_not_a_token_id(
    client: httpx.AsyncClient, factory: Factory
) -> None:
    admin = await factory.admin()
    response = await client.delete("/api/v1/api-tokens/all", headers=admin.headers)
    assert response.status_code == 405, response.text
    assert response.headers["allow"] == "GET"
    assert response.headers["content-type"] == "application/problem+json"


async def test_a_malformed_id_names_nothing(client: httpx.AsyncClient, factory: Factory) -> None:
    admin = await factory.admin()
    response = await client.get("/api/v1/devices/not-a-device-id", headers=admin.headers)
    assert response.status_code == 404, response.text
    assert response.json()["detail"] == "There is nothing at this address."
