"""One error hierarchy for the dispatch side: `DispatchError` and a family per subsystem."""

from __future__ import annotations


class DispatchError(Exception):
    """Root of every error the dispatch side raises on purpose."""


class CommandError(DispatchError):
    """A command could not be sent, or no reply came in time (the message says which)."""


class FleetError(DispatchError):
    """Root of every error of the fleet twin (the message names the problem and the fix)."""


class AnalysisError(DispatchError):
    """Root of every error the analysis raises."""


class InputError(AnalysisError, ValueError):
    """A file or option the planner supplied is unusable (the message names it and the fix)."""


class NetworkError(InputError):
    """The GTFS feed or the station mapping does not describe a usable network."""


class ConsoleError(DispatchError):
    """The dispatch console cannot do what was asked."""


class ConsoleUsageError(ConsoleError, ValueError):
    """A bad argument: broker URL, share group, action."""


class ConsoleConnectionError(ConsoleError, ConnectionError):
    """The broker could not be reached, refused us, or the link dropped."""
