"""Per-request context (correlation id, client address, actor), kept in a context variable so that logs and
audit events carry it without threading it through every call."""

from __future__ import annotations

import uuid
from contextvars import ContextVar
from dataclasses import dataclass


@dataclass
class Actor:
    type: str  # "user", "token", "system", "anonymous", "device"
    id: uuid.UUID | None = None
    name: str | None = None
    token_id: uuid.UUID | None = None


@dataclass
class RequestContext:
    correlation_id: str
    client_ip: str | None = None
    user_agent: str | None = None
    actor: Actor | None = None


SYSTEM = Actor(type="system", name="corral")

_current: ContextVar[RequestContext | None] = ContextVar("corral_request_context", default=None)


def current() -> RequestContext:
    ctx = _current.get()
    if ctx is None:
        ctx = RequestContext(correlation_id=uuid.uuid4().hex, actor=SYSTEM)
        _current.set(ctx)
    return ctx


def set_current(ctx: RequestContext) -> None:
    _current.set(ctx)


def set_actor(actor: Actor) -> None:
    current().actor = actor
