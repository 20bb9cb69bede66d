"""Request body limits, enforced while the body streams (pure ASGI).

The limit of a request is known from its method and path before the application runs (:class:`BodyLimits`).
A declared ``Content-Length`` over it is answered 413 before anything of the body is read. A body without a
declared length (``Transfer-Encoding: chunked``) is counted as it arrives: the read that would take it over
the limit raises :class:`BodyTooLarge` instead of handing the bytes on, so the application never holds more
than the limit, and every later read raises again. The application's error handler renders that 413 like its
other errors; should the application answer anything else once the limit was crossed, or not answer, the
middleware answers 413 itself (when the response has not started).

Every 413, and every answer to a chunked body the application did not read to its end (a 401 before the
body, say), closes the connection (``Connection: close``): otherwise the server would go on reading and
discarding whatever the client keeps sending.
"""

from __future__ import annotations

import re
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass

from starlette.datastructures import MutableHeaders
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import compile_path
from starlette.types import ASGIApp, Message, Receive, Scope, Send

KiB = 1024
MiB = 1024 * KiB


def describe_size(size: int) -> str:
    if size % MiB == 0:
        return f"{size // MiB} MiB"
    if size % KiB == 0:
        return f"{size // KiB} KiB"
    return f"{size} bytes"


class BodyTooLarge(HTTPException):
    """413: the request body is (or was declared) larger than its limit."""

    def __init__(self, detail: str) -> None:
        super().__init__(status_code=413, detail=detail)


@dataclass(frozen=True)
class Limit:
    size: int  # bytes
    label: str  # who is limited, for the message: "Device requests"

    @property
    def detail(self) -> str:
        return f"{self.label} carry at most {describe_size(self.size)} ({self.size} bytes) of body."


class BodyLimits:
    """The limit of each request: a route's own (method and path template, e.g. an upload), else its family's
    (the longest matching path prefix), else the default."""

    def __init__(
        self,
        *,
        default: Limit,
        prefixes: Sequence[tuple[str, Limit]] = (),
        routes: Sequence[tuple[str, str, Limit]] = (),
    ) -> None:
        self.default = default
        self.prefixes = sorted(((p.rstrip("/"), limit) for p, limit in prefixes), key=lambda p: -len(p[0]))
        self.routes = [
            (method.upper(), compile_path(template)[0], limit) for method, template, limit in routes
        ]

    def limit_for(self, method: str, path: str) -> Limit:
        for route_method, pattern, limit in self.routes:
            if route_method == method and pattern.match(path):
                return limit
        for prefix, limit in self.prefixes:
            if path == prefix or path.startswith(prefix + "/"):
                return limit
        return self.default


Render = Callable[[Request, Exception], Awaitable[Response]]

_CONTENT_LENGTH = re.compile(rb"^\s*[0-9]+\s*$")


def _framing(scope: Scope) -> tuple[int | None, bool]:
    """The declared Content-Length (None: not declared, or not a number) and whether the body is chunked."""
    declared: int | None = None
    chunked = False
    for name, value in scope["headers"]:
        if name == b"content-length" and _CONTENT_LENGTH.match(value):
            declared = int(value)
        elif name == b"transfer-encoding":
            chunked = True
    return declared, chunked and declared is None


async def _no_body() -> Message:
    return {"type": "http.disconnect"}


class BodyLimitMiddleware:
    def __init__(self, app: ASGIApp, *, limits: BodyLimits, render: Render) -> None:
        self.app = app
        self.limits = limits
        self.render = render  # the application's renderer of an HTTPException (its error handler)

    async def refuse(self, scope: Scope, limit: Limit, send: Send) -> None:
        response = await self.render(Request(scope), BodyTooLarge(limit.detail))
        response.headers["Connection"] = "close"
        await response(scope, _no_body, send)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        limit = self.limits.limit_for(scope["method"], scope["path"])
        declared, chunked = _framing(scope)
        if declared is not None and declared > limit.size:
            await self.refuse(scope, limit, send)
            return
        received = 0
        crossed = False  # the body went over the limit: nothing more is read
        body_done = not chunked  # a declared length bounds what the server drains after the response
        started = replaced = False

        async def limited_receive() -> Message:
            nonlocal received, crossed, body_done
            if crossed:
                raise BodyTooLarge(limit.detail)
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > limit.size:
                    crossed = True
                    raise BodyTooLarge(limit.detail)
                if not message.get("more_body", False):
                    body_done = True
            return message

        async def limited_send(message: Message) -> None:
            nonlocal started, replaced
            if replaced:
                return  # the application's own answer, after ours
            if message["type"] == "http.response.start":
                started = True
                if crossed and message["status"] != 413:
                    replaced = True
                    await self.refuse(scope, limit, send)
                    return
                if crossed or not body_done:
                    MutableHeaders(scope=message)["Connection"] = "close"
            await send(message)

        try:
            await self.app(scope, limited_receive, limited_send)
        except BodyTooLarge:
            if started:
                raise
            await self.refuse(scope, limit, send)
