"""Per-client rate limits, kept in this process's memory: sliding-window counters from the ``limits``
package, keyed by the client address the request-context middleware computed (trusting only configured
proxies). An IPv6 client is keyed by its /64, the block one subscriber usually holds, so that rotating
addresses within it does not escape the limit."""

from __future__ import annotations

import ipaddress
import math
import time

import limits
from limits.aio.storage import MemoryStorage
from limits.aio.strategies import SlidingWindowCounterRateLimiter
from prometheus_client import Counter

RATE_LIMITED = Counter("corral_rate_limited_total", "Requests answered 429 by a per-client limit", ["limit"])

IPV6_PREFIX = 64


def client_key(address: str | None) -> str:
    """The key a client is counted under: its IPv4 address, its IPv6 /64, or "unknown"."""
    try:
        ip = ipaddress.ip_address(address or "")
    except ValueError:
        return "unknown"
    if isinstance(ip, ipaddress.IPv6Address):
        if ip.ipv4_mapped is not None:
            return str(ip.ipv4_mapped)
        return str(ipaddress.ip_network(f"{ip}/{IPV6_PREFIX}", strict=False))
    return str(ip)


def parse_limit(spec: str) -> limits.RateLimitItem:
    """One rate limit in the ``limits`` notation, e.g. ``30/minute`` or ``100 per 10 minutes``."""
    items = limits.parse_many(spec)
    if len(items) != 1:
        raise ValueError(f"expected one limit such as '30/minute', got {spec!r}")
    return items[0]


class ClientRateLimit:
    """At most ``spec`` counted events per client; the caller decides what counts (e.g. refusals)."""

    def __init__(self, name: str, spec: str) -> None:
        self.name = name
        self.item = parse_limit(spec)
        self._limiter = SlidingWindowCounterRateLimiter(MemoryStorage())

    async def _refused(self, key: str) -> int:
        RATE_LIMITED.labels(self.name).inc()
        stats = await self._limiter.get_window_stats(self.item, self.name, key)
        return max(1, math.ceil(stats.reset_time - time.time()))

    async def retry_after(self, address: str | None) -> int | None:
        """Seconds to wait when the client has used up its limit (it is then refused), else None. Counts
        nothing."""
        key = client_key(address)
        if await self._limiter.test(self.item, self.name, key):
            return None
        return await self._refused(key)

    async def hit(self, address: str | None) -> int | None:
        """Count one event against the client: None while within the limit, else the seconds to wait (the
        event is then refused)."""
        key = client_key(address)
        if await self._limiter.hit(self.item, self.name, key):
            return None
        return await self._refused(key)

    async def count(self, address: str | None) -> None:
        """Count one event against the client (what happens past the limit is :meth:`retry_after`'s)."""
        await self._limiter.hit(self.item, self.name, client_key(address))
