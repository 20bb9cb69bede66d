"""The effective route table (full paths after router inclusion), for metrics labels, route audits and the
``Allow`` header of 405 answers."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from fastapi import FastAPI
from fastapi.routing import APIRoute, iter_route_contexts
from starlette.routing import Match
from starlette.types import Scope


@dataclass(frozen=True)
class RouteInfo:
    path: str
    methods: frozenset[str]
    route: APIRoute


def api_routes(app: FastAPI) -> list[RouteInfo]:
    out = []
    for context in iter_route_contexts(app.routes):
        route = context.original_route
        if isinstance(route, APIRoute) and context.path_format:
            # The template as clients see it: `{device_id}`, not the converter's `{device_id:uuid}`.
            out.append(RouteInfo(context.path_format, frozenset(context.methods or ()), route))
    return out


def route_templates(app: FastAPI) -> dict[int, str]:
    return {id(info.route): info.path for info in api_routes(app)}


class MethodTable:
    """Which methods each path serves, over every route that shares its template.

    Starlette answers 405 from the first route whose path matched and lists only that route's methods in
    ``Allow``; a path served by several routes (GET and DELETE on ``/users/{user_id}``) supports them all."""

    def __init__(self, contexts: Iterable[object]) -> None:
        self._routes = [
            (context, frozenset(methods))
            for context in contexts
            if (methods := getattr(context, "methods", None))
        ]

    def allowed(self, scope: Scope) -> list[str]:
        found: set[str] = set()
        for context, methods in self._routes:
            match, _ = context.matches(scope)  # type: ignore[attr-defined]
            if match is not Match.NONE:
                found |= methods
        return sorted(found)


def method_table(app: FastAPI) -> MethodTable:
    return MethodTable(iter_route_contexts(app.routes))
