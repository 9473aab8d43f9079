"""Sequence numbers: tell lost frames, duplicates and device resets apart (sans-I/O).

Each side numbers the frames it sends 0, 1, 2, ... 65535, 0, ... (one counter per device
and direction). The receiver keeps one `SequenceTracker` per device and direction and
classifies each frame it decoded:

- ``first``: the first frame since the tracker started or `forget()` (nothing to compare).
- ``ok``: the seq after the previous one.
- ``gap``: `lost` frames are missing before this one (seq jumped forward by 2..32768).
- ``duplicate``: the same seq as the previous frame again (a repeat; do not act twice).
- ``reset``: the sender restarted: a HELLO with seq 0, a heartbeat whose uptime went
  backwards, or a seq that went backwards (a reboot whose HELLO was lost). The tracker
  starts over from this frame.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from typing import Literal

from firmware_bridge.frames import MAX_SEQ, Frame, Heartbeat, Hello

SeqKind = Literal["first", "ok", "gap", "duplicate", "reset"]
_MODULUS = MAX_SEQ + 1
_HALF = _MODULUS // 2


def next_seq(seq: int) -> int:
    """The sequence number after `seq` (65535 wraps to 0)."""
    return (seq + 1) % _MODULUS


@dataclass(frozen=True)
class SeqResult:
    """How one frame's seq relates to the previous one; `lost` counts frames in a gap."""

    kind: SeqKind
    lost: int = 0


class SequenceTracker:
    """Classifies the seq of each frame from one device in one direction, and counts them.

    `counts` has one entry per `SeqKind`, and `lost`, the total of frames missing in gaps.
    """

    def __init__(self) -> None:
        self.counts: Counter[str] = Counter(
            {"first": 0, "ok": 0, "gap": 0, "lost": 0, "duplicate": 0, "reset": 0})
        self.last_seq: int | None = None
        self.last_uptime_s: int | None = None

    def observe(self, frame: Frame) -> SeqResult:
        """Classify `frame` (already decoded, from this tracker's device and direction)."""
        result = self._classify(frame)
        self.counts[result.kind] += 1
        self.counts["lost"] += result.lost
        if result.kind == "duplicate":
            return result
        if result.kind == "reset":
            self.last_uptime_s = None
        self.last_seq = frame.seq
        if isinstance(frame, Heartbeat):
            self.last_uptime_s = frame.uptime_s
        return result

    def forget(self) -> None:
        """Start over without counting a reset (say, the link was down: a gap is unknowable)."""
        self.last_seq = None
        self.last_uptime_s = None

    def _classify(self, frame: Frame) -> SeqResult:
        if self.last_seq is None:
            return SeqResult("first")
        # A board sends HELLO with seq 0 only right after it boots, so this is a reset even
        # when the previous frame was also HELLO 0 (a board in a reboot loop).
        if isinstance(frame, Hello) and frame.seq == 0:
            return SeqResult("reset")
        # Before the duplicate check: a true repeat carries the same uptime.
        if (isinstance(frame, Heartbeat) and self.last_uptime_s is not None
                and frame.uptime_s < self.last_uptime_s):
            return SeqResult("reset")
        step = (frame.seq - self.last_seq) % _MODULUS
        if step == 0:
            return SeqResult("duplicate")
        if step == 1:
            return SeqResult("ok")
        if step <= _HALF:
            return SeqResult("gap", lost=step - 1)
        return SeqResult("reset")
