"""Rejection replies under a flood: a token bucket per reason, with no I/O.

A buggy dispatch script or an attacker on the commands topic can send thousands of bad
commands a second. Answering each one would flood the replies topic and the uplink that
P0/P1 events share, so rejections are limited per reason code: a burst, then a steady
rate. What is held back is counted and told in the next reply of that reason ("and N more
like it"), in health (`command_replies_suppressed`) and by the `command_flood` fault while
it lasts. Applied commands are never limited.
"""

from __future__ import annotations

from dataclasses import dataclass, field

REPLY_BURST = 20  # rejections of one reason answered back to back
REPLY_RATE_PER_S = 5.0  # then this many a second, per reason
QUIET_S = 30.0  # the flood is over after this long without a suppressed reply


@dataclass
class _Bucket:
    tokens: float
    at: float
    held_back: int = 0  # suppressed since the last reply of this reason


@dataclass
class ReplyLimiter:
    """Decides, per reason, whether a rejection gets its own reply."""

    burst: int = REPLY_BURST
    rate_per_s: float = REPLY_RATE_PER_S
    quiet_s: float = QUIET_S
    last_suppressed_at: float | None = None
    _buckets: dict[str, _Bucket] = field(default_factory=dict)

    def admit(self, reason: str, now: float) -> int | None:
        """None: suppress this reply. Otherwise the number of replies of this reason held
        back since the last one, which this reply should mention."""
        bucket = self._buckets.get(reason)
        if bucket is None:
            bucket = self._buckets[reason] = _Bucket(float(self.burst), now)
        elapsed = max(0.0, now - bucket.at)  # a clock that steps back refills nothing
        bucket.tokens = min(float(self.burst), bucket.tokens + elapsed * self.rate_per_s)
        bucket.at = now
        if bucket.tokens < 1.0:
            bucket.held_back += 1
            self.last_suppressed_at = now
            return None
        bucket.tokens -= 1.0
        held_back, bucket.held_back = bucket.held_back, 0
        return held_back
