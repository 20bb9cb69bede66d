"""The agent version, sent as `agent_version` in every check-in."""

__version__ = "0.1.0"
