"""One pure-ASGI middleware: correlation id, client address (trusting only configured proxies), security
headers, metrics and an access log line."""

from __future__ import annotations

import ipaddress
import logging
import re
import time
import uuid
from collections.abc import Sequence

from prometheus_client import Counter, Histogram
from starlette.datastructures import MutableHeaders
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from corral.kit import context

log = logging.getLogger("corral.access")

REQUESTS = Counter("corral_http_requests_total", "HTTP requests", ["method", "route", "status"])
LATENCY = Histogram(
    "corral_http_request_duration_seconds",
    "HTTP request duration",
    ["method", "route"],
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
)

_REQUEST_ID = re.compile(r"^[A-Za-z0-9._-]{1,64}$")

CSP = (
    "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; font-src 'self'; "
    "connect-src 'self'; object-src 'none'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'"
)

Network = ipaddress.IPv4Network | ipaddress.IPv6Network


def is_trusted_proxy(address: str | None, trusted: Sequence[Network]) -> bool:
    """Whether ``address`` (a peer or a hop) is one of the configured trusted proxies."""
    try:
        ip = ipaddress.ip_address(address or "")
    except ValueError:
        return False
    return any(ip in network for network in trusted)


def client_address(peer: str | None, forwarded_for: str | None, trusted: Sequence[Network]) -> str | None:
    """The client's address: the peer, unless the peer is a trusted proxy, then the right-most address in
    X-Forwarded-For that is not itself a trusted proxy."""

    def is_trusted(address: str) -> bool:
        return is_trusted_proxy(address, trusted)

    if peer is None or not forwarded_for or not is_trusted(peer):
        return peer
    hops = [hop.strip() for hop in forwarded_for.split(",") if hop.strip()]
    for hop in reversed(hops):
        try:
            ipaddress.ip_address(hop)
        except ValueError:
            return peer  # a malformed chain is not believed
        if not is_trusted(hop):
            return hop
    return hops[0] if hops else peer


class RequestContextMiddleware:
    def __init__(self, app: ASGIApp, *, trusted_proxies: Sequence[Network], hsts: bool) -> None:
        self.app = app
        self.trusted = list(trusted_proxies)
        self.hsts = hsts

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = {k.decode("latin-1"): v.decode("latin-1") for k, v in scope["headers"]}
        peer = scope["client"][0] if scope.get("client") else None
        client_ip = client_address(peer, headers.get("x-forwarded-for"), self.trusted)
        if client_ip != peer and headers.get("x-forwarded-proto") in {"http", "https"}:
            scope["scheme"] = headers["x-forwarded-proto"]
        sent_id = headers.get("x-request-id", "")
        correlation_id = sent_id if _REQUEST_ID.match(sent_id) else uuid.uuid4().hex
        context.set_current(
            context.RequestContext(
                correlation_id=correlation_id,
                client_ip=client_ip,
                user_agent=headers.get("user-agent"),
                actor=context.Actor(type="anonymous"),
            )
        )
        path = scope["path"]
        started = time.perf_counter()
        status_code = 500

        async def send_wrapper(message: Message) -> None:
            nonlocal status_code
            if message["type"] == "http.response.start":
                status_code = message["status"]
                out = MutableHeaders(scope=message)
                out["X-Request-ID"] = correlation_id
                out["X-Content-Type-Options"] = "nosniff"
                out["Referrer-Policy"] = "same-origin"
                out["X-Frame-Options"] = "DENY"
                out["Cross-Origin-Opener-Policy"] = "same-origin"
                out["Permissions-Policy"] = "camera=(), microphone=(), geolocation=(), payment=()"
                out.setdefault("Content-Security-Policy", CSP)
                if self.hsts or scope.get("scheme") == "https":
                    out["Strict-Transport-Security"] = "max-age=31536000; includeSubDomains"
                if not path.startswith("/static/"):
                    out.setdefault("Cache-Control", "no-store")
            await send(message)

        try:
            await self.app(scope, receive, send_wrapper)
        finally:
            route = scope.get("route")
            app = scope.get("app")
            templates = getattr(getattr(app, "state", None), "route_templates", None) or {}
            template = templates.get(id(route)) or ("/static" if path.startswith("/static/") else "unmatched")
            elapsed = time.perf_counter() - started
            REQUESTS.labels(scope["method"], template, str(status_code)).inc()
            LATENCY.labels(scope["method"], template).observe(elapsed)
            log.info(
                "%s %s %s",
                scope["method"],
                path,
                status_code,
                extra={
                    "method": scope["method"],
                    "path": path,
                    "status": status_code,
                    "duration_ms": round(elapsed * 1000, 1),
                    "client_ip": client_ip,
                },
            )
