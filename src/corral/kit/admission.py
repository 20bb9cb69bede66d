"""Admission control for device requests (pure ASGI): at most ``limit`` device requests run at once in this
process; one that finds no free place within ``wait`` seconds is answered ``429`` with ``Retry-After`` before
anything else is done for it. A fleet coming back all at once (after an outage, or woken by a change reaching
every device) then degrades into delay — devices retry after ``Retry-After`` plus their own jitter — never
into errors or a database pool whose waiters time out.

The limit defaults to the connections the process's pool keeps open (its pool size): beyond that, device
requests would open and close overflow connections all the time (a new PostgreSQL backend each, its prepared
statements prepared again: in the S1 benchmark, one check-in in 14 opened one and PostgreSQL's CPU per
check-in doubled), or queue for a connection. The overflow stays for everything else (the admin API, the
batched writers). Long-lived requests that hold no connection while they wait (the wake-up
stream) are not counted.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence

from prometheus_client import Counter
from starlette.requests import Request
from starlette.responses import Response
from starlette.types import ASGIApp, Receive, Scope, Send

REFUSED = Counter(
    "corral_admission_refused_total", "Device requests answered 429 because the process was at its limit"
)

Render = Callable[[Request, int, str, dict[str, str]], Response]


async def take_place(places: asyncio.Semaphore, wait: float) -> bool:
    """Take a place of ``places``: at once (without suspending) when one is free, else the first that frees
    within ``wait`` seconds. False when none did (nothing taken)."""
    if not places.locked():
        await places.acquire()
        return True
    try:
        await asyncio.wait_for(places.acquire(), timeout=wait)
    except TimeoutError:
        return False
    return True


class Admission:
    """The places of one process (its own event loop's semaphore, made on first use)."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self._places: asyncio.Semaphore | None = None

    @property
    def places(self) -> asyncio.Semaphore:
        if self._places is None:
            self._places = asyncio.Semaphore(self.limit)
        return self._places

    @property
    def busy(self) -> int:
        return self.limit - self.places._value


class AdmissionMiddleware:
    def __init__(
        self,
        app: ASGIApp,
        *,
        admission: Admission,
        prefix: str,
        exclude: Sequence[str],
        wait_seconds: float,
        retry_after_seconds: int,
        render: Render,
    ) -> None:
        self.app = app
        self.admission = admission
        self.prefix = prefix
        self.exclude = frozenset(exclude)
        self.wait_seconds = wait_seconds
        self.retry_after = str(retry_after_seconds)
        self.render = render

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        path = scope.get("path", "") if scope["type"] == "http" else ""
        if not path.startswith(self.prefix) or path in self.exclude:
            await self.app(scope, receive, send)
            return
        places = self.admission.places
        if not await take_place(places, self.wait_seconds):
            REFUSED.inc()
            response = self.render(
                Request(scope, receive),
                429,
                "The server is busy: retry after the time in Retry-After.",
                {"Retry-After": self.retry_after},
            )
            await response(scope, receive, send)
            return
        try:
            await self.app(scope, receive, send)
        finally:
            places.release()
