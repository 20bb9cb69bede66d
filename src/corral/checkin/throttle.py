"""Per-client limits on refused device requests (docs/operations.md, security notes), in process memory.

Only refusals are counted, so a successful check-in never pays for them and devices that share an address
with a misbehaving one keep working: refused device authentications past
``CORRAL_DEVICE_AUTH_REFUSAL_LIMIT`` are answered 429 instead of 401 (checkin/auth.py); once an address has
had ``CORRAL_DEVICE_ENROLL_REFUSAL_LIMIT`` refused enrollments, its enrollments are answered 429 until the
window has passed (``enroll_throttle``, before anything else is read).
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass

from fastapi import Depends, Request

from corral.audit.refusals import Refusal, get_refusals
from corral.config import Settings
from corral.errors import CorralError, TooManyRequests
from corral.kit import context
from corral.kit.rate_limit import ClientRateLimit

#: The actor of refusals whose caller the server could not identify.
UNKNOWN_DEVICE = "unauthenticated device"
UNKNOWN_TOKEN = "unknown enrollment token"  # noqa: S105 - a name, not a secret


@dataclass
class DeviceLimits:
    auth: ClientRateLimit
    enroll: ClientRateLimit

    @classmethod
    def from_settings(cls, settings: Settings) -> DeviceLimits:
        return cls(
            auth=ClientRateLimit("device_auth", settings.device_auth_refusal_limit),
            enroll=ClientRateLimit("device_enroll", settings.device_enroll_refusal_limit),
        )


def endpoint_of(request: Request) -> str:
    """The route template (bounded, unlike the path)."""
    return str(getattr(request.scope.get("route"), "path", "unmatched"))


async def enroll_throttle(request: Request) -> AsyncIterator[None]:
    """Refuse an address that has had too many enrollments refused; count each refused enrollment."""
    limit: ClientRateLimit = request.app.state.device_limits.enroll
    client = context.current().client_ip
    wait = await limit.retry_after(client)
    if wait is not None:
        await (await get_refusals(request)).record(
            Refusal(
                activity="device.enroll",
                category="device",
                operation="create",
                endpoint=endpoint_of(request),
                reason="rate_limited",
                text="too many refused enrollments from this address",
                source=client,
                actor=context.Actor(type="device", name=UNKNOWN_TOKEN),
            )
        )
        raise TooManyRequests(
            f"Too many refused enrollments from this address: try again in {wait} s.",
            headers={"Retry-After": str(wait)},
        )
    try:
        yield
    except CorralError as exc:
        if 400 <= exc.status_code < 500:
            await limit.count(client)
        raise


ENROLL_THROTTLE = Depends(enroll_throttle)
