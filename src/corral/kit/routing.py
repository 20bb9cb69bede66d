"""The application's router: every route authenticates its caller before FastAPI reads the request body.

FastAPI reads and parses a route's body (a JSON model, form fields) before it solves the route's dependencies,
the guard among them, so an anonymous caller's body would be read and parsed before the 401. A
:class:`GuardFirstRoute` with a body solves its guard first (the dependency that is a :class:`HeaderGuard`,
with the guard's own dependencies) and only then hands the request to FastAPI's handler, which reads the
body and solves the dependencies as usual: the guard again, which a HeaderGuard makes cheap (the caller is
cached on the request; the request's database session is the one the guard used, see kit/db.py).

Routes without a body, and routes whose guard is not a HeaderGuard (``Public()``: nothing to check; the
device signature, which covers the body), run FastAPI's handler unchanged. Every router of the application
is a :class:`APIRouter` from this module (tests/test_route_guards.py checks the route table).
"""

from __future__ import annotations

from collections.abc import Callable, Coroutine
from typing import Any

import fastapi
from fastapi import Request, Response
from fastapi.dependencies.models import Dependant
from fastapi.dependencies.utils import solve_dependencies
from fastapi.routing import APIRoute


class HeaderGuard:
    """Base of the route guards that decide from the request's headers (and the database), never from its
    body, so they can run before the body is read. A subclass must give the same answer when called again
    within a request, without another database round trip (cache the caller on ``request.state``)."""


def header_guard(dependant: Dependant) -> Dependant | None:
    """The dependency of a route (at any depth) whose callable is a HeaderGuard, if any."""
    for sub in dependant.dependencies:
        if isinstance(sub.call, HeaderGuard):
            return sub
        found = header_guard(sub)
        if found is not None:
            return found
    return None


class GuardFirstRoute(APIRoute):
    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        handler = super().get_route_handler()
        guard = header_guard(self.dependant) if self.body_field is not None else None
        if guard is None:
            return handler
        # A dependant of its own holding only the guard (the route's tree may be shared: never modify it).
        first = Dependant(dependencies=[guard], path=self.path_format)
        overrides = self.dependency_overrides_provider

        async def guard_first(request: Request) -> Response:
            await solve_dependencies(
                request=request,
                dependant=first,
                dependency_overrides_provider=overrides,
                async_exit_stack=request.scope["fastapi_inner_astack"],
                embed_body_fields=False,
            )
            return await handler(request)

        return guard_first


class APIRouter(fastapi.APIRouter):
    """``fastapi.APIRouter`` whose routes are :class:`GuardFirstRoute`."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs.setdefault("route_class", GuardFirstRoute)
        super().__init__(*args, **kwargs)
