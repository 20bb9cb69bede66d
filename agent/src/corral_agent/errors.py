"""The agent's exceptions: one base class, so callers can catch everything the agent raises on purpose."""

from __future__ import annotations

from typing import Any


class AgentError(Exception):
    """Something the agent cannot do; the message is meant for a person."""


class NotEnrolledError(AgentError):
    """The agent has no enrollment state in its state directory."""


class ConfigError(AgentError):
    """The configuration file or a command-line value is invalid."""


class PinningError(AgentError):
    """The server's TLS chain does not end in the pinned certificate authority (fail closed)."""


class ProtocolError(AgentError):
    """The server answered with an error (a Problem Details document when it sent one)."""

    def __init__(
        self, status: int, title: str, detail: str | None = None, problem: dict[str, Any] | None = None
    ):
        self.status = status
        self.title = title
        self.detail = detail
        self.problem = problem or {}
        text = f"{status} {title}"
        if detail:
            text += f": {detail}"
        correlation = self.problem.get("correlation_id")
        if correlation:
            text += f" (correlation id {correlation})"
        super().__init__(text)


class AuthenticationError(ProtocolError):
    """401 on a signed request: revoked/expired certificate, retired/wiped/deleted device, clock or nonce."""
