"""Faults, counters and link states: what the health report and `stationgw status` show."""

from __future__ import annotations

import asyncio
import logging
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass

log = logging.getLogger(__name__)

FaultListener = Callable[[str, bool, str], None]


@dataclass(frozen=True)
class Fault:
    """An active fault: a condition a technician must know about."""

    code: str
    message: str
    since: float


class Health:
    """The gateway's live health state. Used from the event loop only."""

    def __init__(self) -> None:
        self.started = time.monotonic()
        self.faults: dict[str, Fault] = {}
        self.counters: Counter[str] = Counter()
        self.links: dict[str, str] = {}
        # Link quality counters of each serial board, by board id (set by gateway.inputs.boards).
        self.board_counters: Callable[[], dict[str, dict[str, int]]] = dict
        self.listeners: list[FaultListener] = []
        self.changed = asyncio.Event()  # set on every fault or link change

    def raise_fault(self, code: str, message: str) -> None:
        """Raise (or update the message of) a fault; logged once when it first appears."""
        new = code not in self.faults
        if new or self.faults[code].message != message:
            since = time.time() if new else self.faults[code].since
            self.faults[code] = Fault(code, message, since)
            log.error("fault raised code=%s %s", code, message)
            self.changed.set()
            for listener in self.listeners:
                listener(code, True, message)

    def clear_fault(self, code: str) -> None:
        """Clear a fault if it is active."""
        if self.faults.pop(code, None) is not None:
            log.warning("fault cleared code=%s", code)
            self.changed.set()
            for listener in self.listeners:
                listener(code, False, "cleared")

    def count(self, name: str, n: int = 1) -> None:
        """Add to a counter."""
        self.counters[name] += n

    def link(self, name: str, state: str) -> None:
        """Record a link state (broker endpoint, serial device)."""
        if self.links.get(name) != state:
            log.info("link %s state=%s", name, state)
            self.changed.set()
        self.links[name] = state

    @property
    def uptime_s(self) -> float:
        """Seconds since start."""
        return time.monotonic() - self.started
