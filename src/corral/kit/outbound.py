"""Outbound HTTP to URLs an administrator (or a document fetched from one) names, such as an identity
provider's issuer and the endpoints its discovery document lists — without turning Corral into a way to
reach its own network (server-side request forgery).

- Only http(s) URLs, no credentials in them, no redirects (a redirect is an answer like any other non-200).
- The host is resolved here and **every** address it resolves to must be public: loopback, private,
  link-local, shared (CGNAT), multicast, reserved, unspecified and documentation addresses are refused, IPv4
  and IPv6 alike, also when embedded in an IPv6 address (IPv4-mapped, 6to4, Teredo). ``allow_private``
  lifts this (CORRAL_OIDC_ALLOW_PRIVATE_ISSUERS, for a provider on the organisation's own network).
- The connection goes to an address that was checked, never to a second resolution of the name, so a DNS
  answer that changes between the check and the connection (DNS rebinding) cannot swap in an internal
  address. TLS still verifies the certificate against the host name (SNI and hostname check), and the Host
  header keeps the name.
- Short timeouts (connect, each read, and a deadline for the whole exchange the caller applies), proxies
  from the environment ignored (a proxy would pick the address itself), and responses read up to a cap.
"""

from __future__ import annotations

import asyncio
import ipaddress
import socket
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import httpx

CONNECT_TIMEOUT = 3.0
READ_TIMEOUT = 5.0
DEADLINE = 10.0  # seconds for a whole exchange (a trickling answer cannot hold a request for longer)
MAX_RESPONSE_BYTES = 1024 * 1024
TIMEOUT = httpx.Timeout(READ_TIMEOUT, connect=CONNECT_TIMEOUT)

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address


class OutboundRefused(httpx.TransportError):
    """The URL or the address it resolves to may not be fetched (raised before any connection is made)."""


def is_public(address: IPAddress) -> bool:
    """Whether ``address`` is a public unicast address (and so is every IPv4 address it embeds)."""
    candidates: list[IPAddress] = [address]
    if isinstance(address, ipaddress.IPv6Address):
        if address.ipv4_mapped is not None:
            candidates.append(address.ipv4_mapped)
        if address.sixtofour is not None:
            candidates.append(address.sixtofour)
        if address.teredo is not None:
            candidates.extend(address.teredo)
    return all(
        a.is_global
        and not (a.is_multicast or a.is_reserved or a.is_loopback or a.is_link_local or a.is_unspecified)
        and not (isinstance(a, ipaddress.IPv6Address) and a.is_site_local)
        for a in candidates
    )


def check_url(url: httpx.URL) -> None:
    """The shape every fetched URL must have (the address is checked at connect time)."""
    if url.scheme not in ("http", "https"):
        raise OutboundRefused(f"only http and https URLs are fetched, not {url.scheme or 'none'}")
    if not url.host:
        raise OutboundRefused("the URL has no host")
    if url.userinfo:
        raise OutboundRefused("the URL carries credentials")


async def resolve(host: str, port: int, *, allow_private: bool) -> list[IPAddress]:
    """Every address ``host`` resolves to, all of them checked; refused if any may not be reached."""
    try:
        literal: IPAddress | None = ipaddress.ip_address(host)
    except ValueError:
        literal = None
    if literal is not None:
        found = [literal]
    else:
        loop = asyncio.get_running_loop()
        try:
            infos = await asyncio.wait_for(
                loop.getaddrinfo(host, port, type=socket.SOCK_STREAM, proto=socket.IPPROTO_TCP),
                CONNECT_TIMEOUT,
            )
        except (OSError, UnicodeError, TimeoutError) as exc:
            raise OutboundRefused(f"{host} does not resolve ({type(exc).__name__})") from exc
        found = []
        for info in infos:
            try:
                address = ipaddress.ip_address(str(info[4][0]).split("%", 1)[0])
            except ValueError:
                continue
            if address not in found:
                found.append(address)
        if not found:
            raise OutboundRefused(f"{host} does not resolve to an IP address")
    if not allow_private:
        refused = [str(a) for a in found if not is_public(a)]
        if refused:
            raise OutboundRefused(f"{host} resolves to a non-public address ({', '.join(refused)})")
    return found


class GuardedTransport(httpx.AsyncBaseTransport):
    """Checks each request's URL and addresses, then connects to a checked address (see the module)."""

    def __init__(self, *, allow_private: bool) -> None:
        self.allow_private = allow_private
        self._inner = httpx.AsyncHTTPTransport(retries=0)

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        url = request.url
        check_url(url)
        port = url.port or (443 if url.scheme == "https" else 80)
        addresses = await resolve(url.host, port, allow_private=self.allow_private)
        failure: httpx.ConnectError | None = None
        for address in addresses:
            pinned = httpx.Request(
                request.method,
                url.copy_with(host=str(address)),
                headers=request.headers,  # Host: still the name
                stream=request.stream,
                extensions={**request.extensions, "sni_hostname": url.host},
            )
            try:
                return await self._inner.handle_async_request(pinned)
            except httpx.ConnectError as exc:  # the next checked address, as a resolver's client would
                failure = exc
        assert failure is not None
        raise failure

    async def aclose(self) -> None:
        await self._inner.aclose()


@asynccontextmanager
async def guarded_client(*, allow_private: bool) -> AsyncIterator[httpx.AsyncClient]:
    """A client for one exchange: guarded transport, short timeouts, no redirects, no proxies from the
    environment. (Authlib's OAuth client takes the same keyword arguments: see identity.oidc.)"""
    async with httpx.AsyncClient(
        transport=GuardedTransport(allow_private=allow_private),
        timeout=TIMEOUT,
        follow_redirects=False,
        trust_env=False,
    ) as client:
        yield client


async def read_capped(response: httpx.Response, limit: int = MAX_RESPONSE_BYTES) -> bytes:
    """A streamed response's body, refused past ``limit`` bytes."""
    body = bytearray()
    async for chunk in response.aiter_bytes():
        body += chunk
        if len(body) > limit:
            raise OutboundRefused(f"the answer is larger than {limit} bytes")
    return bytes(body)
