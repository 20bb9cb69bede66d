"""The effective route table (full paths after router inclusion), for metrics labels and route audits."""

from __future__ import annotations

from dataclasses import dataclass

from fastapi import FastAPI
from fastapi.routing import APIRoute, iter_route_contexts


@dataclass(frozen=True)
class RouteInfo:
    path: str
    methods: frozenset[str]
    route: APIRoute


def api_routes(app: FastAPI) -> list[RouteInfo]:
    out = []
    for context in iter_route_contexts(app.routes):
        route = context.original_route
        if isinstance(route, APIRoute) and context.path:
            out.append(RouteInfo(context.path, frozenset(context.methods or ()), route))
    return out


def route_templates(app: FastAPI) -> dict[int, str]:
    return {id(info.route): info.path for info in api_routes(app)}
