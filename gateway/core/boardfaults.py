"""FAULT frames from a board, coalesced per source, with no I/O.

A failing sensor, a loose connector or a hostile board can chatter FAULT set/clear many
thousand times a second. Each change of one (code, source) is reported at once when that
source has been quiet for `hold_s`; changes within `hold_s` of the last report are held, and
only the newest is reported when the hold ends, with how many frames it stands for
(`coalesced`). So one source makes at most one event per `hold_s`, and nothing it said is
hidden: its last state always goes out. At most `max_sources` sources are tracked; beyond
that the longest-quiet one is forgotten (and counted). Times are monotonic seconds.
"""

from __future__ import annotations

from dataclasses import dataclass

from firmware_bridge import Fault

HOLD_S = 5.0
MAX_SOURCES = 64

Key = tuple[str, str]  # (code, source)


@dataclass
class _Source:
    reported_at: float
    held: Fault | None = None  # the newest change not yet reported
    folded: int = 0  # frames since the last report


class FaultDebounce:
    """Per-source debounce of a board's FAULT frames."""

    def __init__(self, hold_s: float = HOLD_S, max_sources: int = MAX_SOURCES) -> None:
        self.hold_s = hold_s
        self.max_sources = max_sources
        self.coalesced = 0  # frames folded into later reports, in total
        self.forgotten = 0  # sources dropped to stay within max_sources
        self._sources: dict[Key, _Source] = {}

    def offer(self, fault: Fault, now: float) -> list[tuple[Fault, int]]:
        """Take a frame; returns what to report now: (fault, frames it stands for - 1)."""
        key = (fault.code, fault.source)
        source = self._sources.get(key)
        if source is None:
            self._make_room()
            self._sources[key] = _Source(reported_at=now)
            return [(fault, 0)]
        if source.held is None and now - source.reported_at >= self.hold_s:
            source.reported_at = now
            return [(fault, 0)]
        source.held = fault
        source.folded += 1
        return []

    def deadline(self) -> float | None:
        """When the next held change is due, if any."""
        due = [s.reported_at + self.hold_s for s in self._sources.values() if s.held]
        return min(due) if due else None

    def due(self, now: float) -> list[tuple[Fault, int]]:
        """Held changes whose hold is over: the newest of each, with the frames folded in."""
        out = []
        for source in self._sources.values():
            if source.held is not None and now >= source.reported_at + self.hold_s:
                out.append((source.held, source.folded - 1))
                self.coalesced += source.folded - 1
                source.held, source.folded, source.reported_at = None, 0, now
        return out

    def _make_room(self) -> None:
        while len(self._sources) >= self.max_sources:
            quiet = min(self._sources, key=lambda k: (self._sources[k].held is not None,
                                                       self._sources[k].reported_at))
            del self._sources[quiet]
            self.forgotten += 1
