"""corral-agent: the reference device agent for Corral's device protocol v1 (docs/device-protocol.md).

Programmatic use::

    from corral_agent import Agent, AgentConfig

    async with Agent("/tmp/agent-state", config=AgentConfig(simulate=True)) as agent:
        await agent.enroll("https://corral.example.com/device/v1/enroll?token=cet_…&ca=sha256:…")
        summary = await agent.checkin()
"""

from __future__ import annotations

from corral_agent._version import __version__
from corral_agent.actions import CommandResult, Executor
from corral_agent.client import Agent, CheckinSummary, EnrollmentTarget, parse_enrollment_url
from corral_agent.config import AgentConfig
from corral_agent.errors import (
    AgentError,
    AuthenticationError,
    ConfigError,
    NotEnrolledError,
    PinningError,
    ProtocolError,
)
from corral_agent.state import AgentState, StateStore, default_state_dir

__all__ = [
    "Agent",
    "AgentConfig",
    "AgentError",
    "AgentState",
    "AuthenticationError",
    "CheckinSummary",
    "CommandResult",
    "ConfigError",
    "EnrollmentTarget",
    "Executor",
    "NotEnrolledError",
    "PinningError",
    "ProtocolError",
    "StateStore",
    "__version__",
    "default_state_dir",
    "parse_enrollment_url",
]
