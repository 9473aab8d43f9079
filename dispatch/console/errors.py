"""The dispatch console's errors: one family under `GatewayError`, raised at every stage."""

from __future__ import annotations

from gateway.errors import GatewayError


class ConsoleError(GatewayError):
    """The dispatch console cannot do what was asked."""


class ConsoleUsageError(ConsoleError, ValueError):
    """A bad argument: broker URL, share group, action."""


class ConsoleConnectionError(ConsoleError, ConnectionError):
    """The broker could not be reached, refused us, or the link dropped."""
