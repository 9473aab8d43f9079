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
    """The outbox database cannot be read or written."""


class StoreUnwritable(StoreError, OSError):
    """A write to the outbox failed (disk full, I/O error, read-only file system)."""


class PublishError(GatewayError):
    """A message could not be handed to the broker."""


class PublishRefused(PublishError):
    """The broker answered a publish with a failure reason code (for example 0x87)."""

    def __init__(self, reason: str, code: int) -> None:
        self.reason = reason
        self.code = code
        super().__init__(f"broker refused publish: {reason} (0x{code:02x})")


class BrokerUnavailable(PublishError, ConnectionError):
    """No configured broker endpoint accepted a connection."""
