"""A clock whose wall time a test can step, as NTP, a technician or a dead RTC would.

    clock = SteppedClock()
    gateway = Gateway(config, clock=clock)
    clock.step(365 * 86400)   # the wall clock jumps a year ahead; monotonic time does not

The machine's own clock is never touched.
"""

from __future__ import annotations

import time


class SteppedClock:
    """The system's clocks, with an offset on wall time that `step` changes."""

    def __init__(self, offset_s: float = 0.0) -> None:
        self.offset_s = offset_s

    def step(self, seconds: float) -> None:
        """Move the wall clock by `seconds` (negative: back)."""
        self.offset_s += seconds

    def wall(self) -> float:
        """`time.time()` plus the steps so far."""
        return time.time() + self.offset_s

    def monotonic(self) -> float:
        """`time.monotonic()`: no step moves it."""
        return time.monotonic()
