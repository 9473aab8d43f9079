"""Capped, full-jitter exponential backoff: the one retry delay of the station and dispatch.

Every retry loop (a serial port reopened, a broker reconnected, a database write, a CAD
push, a board's lamp command) waits `backoff_delay(attempt, initial, cap)` seconds before
attempt `attempt + 1`: uniform in [0, min(cap, initial * 2**attempt)] ("full jitter", as in
the AWS architecture blog's analysis), so a fleet that lost one broker does not come back in
lockstep.
"""

from __future__ import annotations

import random


def backoff_delay(attempt: int, initial: float, cap: float) -> float:
    """Full-jitter exponential backoff: uniform in [0, min(cap, initial * 2**attempt)]."""
    return random.uniform(0, min(cap, initial * 2 ** min(attempt, 32)))
