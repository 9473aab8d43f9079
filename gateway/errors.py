"""One error hierarchy for the gateway: `GatewayError` and a family per subsystem."""

from __future__ import annotations


class GatewayError(Exception):
    """Root of every error the gateway raises on purpose."""


class ConfigError(GatewayError, ValueError):
    """The station config is invalid; `problems` lists every problem found."""

    def __init__(self, problems: list[str]) -> None:
        self.problems = problems
        super().__init__("\n".join(problems))


class StoreError(GatewayError):
    """The outbox database cannot be opened, read or written."""
