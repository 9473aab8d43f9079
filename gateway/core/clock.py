"""The gateway's clocks, and dispatch's clock as seen in its commands. No I/O.

The wall clock is untrusted: NTP, a technician or a dead RTC can step it by a year. Wall time
is what the gateway reports (an event's `wall_time`); every interval it measures (a row's age
against its TTL, a command's age) is taken on a steady clock instead: wall time as it was
when the gateway started, advanced by the monotonic clock since, which a step cannot move.
A step is still noticed (`SteadyWall.stepped_by`), and raised as the `clock_skew` fault.

Dispatch's clock is judged from its commands' `issued_at` (`DispatchClock`): a command is
stale or from the future relative to what dispatch's other commands say its clock is, so a
station whose clock is off still takes dispatch's commands (replay protection is by stored
command id, never by time), while a single command dated years away is refused.
"""

from __future__ import annotations

import time
from collections import deque
from dataclasses import dataclass, field
from typing import Literal, Protocol


class Clock(Protocol):
    """Where the gateway reads the time (tests inject a steppable one)."""

    def wall(self) -> float:
        """Seconds since the epoch, as the system says (may step)."""
        ...

    def monotonic(self) -> float:
        """Seconds on a clock that never steps (`time.monotonic`)."""
        ...


class SystemClock:
    """The machine's clocks."""

    def wall(self) -> float:
        """`time.time()`."""
        return time.time()

    def monotonic(self) -> float:
        """`time.monotonic()`."""
        return time.monotonic()


SYSTEM = SystemClock()


class SteadyWall:
    """Wall time as it was at construction, advanced by the monotonic clock since."""

    def __init__(self, clock: Clock = SYSTEM) -> None:
        self.clock = clock
        self._wall0 = clock.wall()
        self._mono0 = clock.monotonic()

    def now(self) -> float:
        """Seconds since the epoch that no step of the wall clock moves."""
        return self._wall0 + (self.clock.monotonic() - self._mono0)

    def stepped_by(self) -> float:
        """How far the wall clock has moved from the steady one since start (+ ahead)."""
        return self.clock.wall() - self.now()


Verdict = Literal["ok", "stale", "future"]


@dataclass
class DispatchClock:
    """Dispatch's clock relative to the gateway's, learned from its commands' `issued_at`.

    `offset` is dispatch's clock minus the gateway's steady clock (plus transit), 0 until
    learned. It moves to a new value only when the last `window` commands agree on one:
    their offsets lie within `tolerance_s` of each other, and they arrived as far apart as
    they were issued (within `tolerance_s`), so the clocks tick together. Commands queued
    while the station was offline arrive together although issued apart, and so never
    teach an offset: they stay stale.
    """

    window: int = 3
    tolerance_s: float = 5.0
    offset: float = 0.0
    _recent: deque[tuple[float, float]] = field(default_factory=deque)  # (issued, arrived)

    def judge(
        self, issued_at: float, arrived: float, max_age_s: float, *, learn: bool = True
    ) -> tuple[Verdict, float]:
        """Learn from this command (unless `learn` is false), then judge it: the verdict
        and its age on dispatch's clock (negative: from the future).

        The commands topic is hostile: the caller lets only commands with some claim to
        come from dispatch (they name an alert that is open here) teach the clock, so a
        flood of consistent, skewed junk cannot make every real command look stale or
        from the future.
        """
        if learn:
            self._recent.append((issued_at, arrived))
            while len(self._recent) > self.window:
                self._recent.popleft()
            self._learn()
        age = (arrived + self.offset) - issued_at
        if age > max_age_s:
            return "stale", age
        if -age > max_age_s:
            return "future", age
        return "ok", age

    def _learn(self) -> None:
        if len(self._recent) < self.window:
            return
        offsets = [issued - arrived for issued, arrived in self._recent]
        if max(offsets) - min(offsets) > self.tolerance_s:
            return
        (first_issued, first_arrived), (last_issued, last_arrived) = (
            self._recent[0], self._recent[-1])
        issued_span, arrived_span = last_issued - first_issued, last_arrived - first_arrived
        if abs(issued_span - arrived_span) > self.tolerance_s or arrived_span < 1.0:
            return  # a burst of queued commands, not a clock
        offsets.sort()
        self.offset = offsets[len(offsets) // 2]  # the window is odd-sized by default
