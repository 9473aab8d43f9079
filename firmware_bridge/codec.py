"""The sans-I/O codec: bytes in gives frames out, frames in gives bytes out.

Nothing here touches a serial port (it never imports pyserial); the transport only moves
bytes. A frame on the wire is one ASCII line (docs/firmware-protocol.md):

    $<TYPE>,<seq>[,<key>=<value>...]*<CRC-16/CCITT-FALSE of the bytes between $ and *, 4 hex>\r\n

`$` never occurs inside a frame, so the decoder resynchronises by scanning to the next `$`,
and a `$` in the middle of a frame (a board that reset mid-frame) drops the partial frame
as `truncated` and starts over there. The decoder holds at most one partial frame, shorter
than `MAX_FRAME_LEN`; garbage is counted and never buffered.
"""

from __future__ import annotations

import binascii
import re
from collections import Counter, deque
from typing import NamedTuple, get_args

from firmware_bridge.errors import FrameError, RejectReason
from firmware_bridge.frames import (
    FRAME_TYPES,
    MAX_FRAME_LEN,
    Direction,
    Frame,
    from_fields,
    parse_seq,
    to_fields,
)

#: The start marker of every frame.
START = b"$"
#: Every rejection reason, in the order health shows them.
REJECT_REASONS: tuple[RejectReason, ...] = get_args(RejectReason)

_START = START[0]
_STAR = ord("*")
_CRLF = b"\r\n"
_HEX4 = re.compile(rb"[0-9A-F]{4}")
_MIN_FRAME_LEN = len(b"$*0000\r\n")
_SAMPLE = 32  # bytes of garbage kept in a Rejection, for the log


def crc16(data: bytes) -> int:
    """CRC-16/CCITT-FALSE (poly 0x1021, init 0xFFFF, no reflection, no final XOR).

    The check value, for b"123456789", is 0x29B1.
    """
    # binascii.crc_hqx is this CRC, table-driven in C.
    return binascii.crc_hqx(data, 0xFFFF)


def encode(frame: Frame) -> bytes:
    """The wire bytes of a frame, from `$` to CR LF."""
    body = ",".join([frame.TYPE, str(frame.seq), *to_fields(frame)]).encode("ascii")
    line = b"$%s*%04X\r\n" % (body, crc16(body))
    if len(line) > MAX_FRAME_LEN:  # pragma: no cover - field limits keep every frame shorter
        raise FrameError(f"{frame.TYPE} frame would be {len(line)} bytes, longer than "
                         f"{MAX_FRAME_LEN}: shorten its text fields", "oversize")
    return line


def parse_frame(line: bytes, direction: Direction | None = None) -> Frame:
    """The frame in one complete line (`$` to CR LF), or `FrameError` with its `reason`.

    With `direction`, a frame type that does not travel that way is `wrong_direction`.
    """
    body = _checked_body(line)
    # A valid CRC over bytes no board may send is a sender bug, not line noise: malformed.
    if not body.isascii():
        raise FrameError("frame has non-ASCII bytes")
    text = body.decode("ascii")
    if not text.isprintable() or "$" in text or "*" in text:
        raise FrameError("frame has a control character, '$' or '*' inside")
    items = text.split(",")
    if len(items) < 2:
        raise FrameError(f"frame {text!r}: expected <TYPE>,<seq> at the start")
    type_, seq_text = items[0], items[1]
    cls = FRAME_TYPES.get(type_)
    if cls is None:
        raise FrameError(f"unknown frame type {type_!r} (protocol 1 types: "
                         f"{', '.join(FRAME_TYPES)})", "unknown_type")
    if direction is not None and direction not in cls.DIRECTIONS:
        raise FrameError(f"{type_} frames do not travel {direction} (a serial adapter echoing "
                         "the gateway's own frames, or two gateways on one link?)",
                         "wrong_direction")
    return from_fields(type_, parse_seq(type_, seq_text), items[2:])


def _checked_body(line: bytes) -> bytes:
    """The bytes between `$` and `*` of a line whose length, framing and CRC are right."""
    if len(line) > MAX_FRAME_LEN:
        raise FrameError(f"frame is {len(line)} bytes, longer than {MAX_FRAME_LEN}", "oversize")
    if line[-2:] != _CRLF or not line.startswith(START):
        raise FrameError("a frame starts with '$' and ends with CR LF (is the board sending "
                         "LF alone?)")
    if len(line) < _MIN_FRAME_LEN or line[-7] != _STAR:
        raise FrameError("a frame ends with '*', 4 hex digits of CRC, then CR LF")
    body = line[1:-7]
    sent = line[-6:-2]
    crc = crc16(body)
    if sent != b"%04X" % crc:
        if _HEX4.fullmatch(sent) is None:
            raise FrameError(f"CRC {sent!r}: expected 4 upper-case hex digits")
        raise FrameError(f"CRC {sent.decode()} does not match the frame's {crc:04X} "
                         "(corrupted on the line)", "bad_crc")
    return body


class Rejection(NamedTuple):
    """Bytes the decoder did not accept: why, in words, and (a sample of) the bytes."""

    reason: RejectReason
    detail: str
    data: bytes


class Decoder:
    """Turns a stream of bytes from one serial link into frames; never raises.

    `feed()` returns the frames completed by the bytes given. Every byte that does not end
    up in a frame is counted in `counters` under its `REJECT_REASONS` reason; the most recent
    rejections, with a readable detail, wait in `take_rejections()` for the log.
    """

    #: How many recent rejections are kept for `take_rejections()` (older ones are dropped,
    #: but always counted).
    KEEP_REJECTIONS = 64

    def __init__(self, direction: Direction = "uplink") -> None:
        self.direction: Direction = direction
        self.counters: Counter[str] = Counter(dict.fromkeys(REJECT_REASONS, 0))
        self.decoded = 0
        self._partial = b""  # a frame start seen, its end not yet; always < MAX_FRAME_LEN
        self._rejections: deque[Rejection] = deque(maxlen=self.KEEP_REJECTIONS)

    @property
    def buffered(self) -> int:
        """Bytes held back as the start of a frame not yet complete (< MAX_FRAME_LEN)."""
        return len(self._partial)

    def feed(self, data: bytes) -> list[Frame]:
        """Take the next bytes from the link; return the frames they complete, in order."""
        if self._partial:
            data = self._partial + data
            self._partial = b""
        frames: list[Frame] = []
        find = data.find
        n = len(data)
        i = 0
        while i < n:
            if data[i] != _START:
                j = find(START, i)
                if j < 0:
                    self._garbage(data, i, n)
                    break
                self._garbage(data, i, j)
                i = j
            # data[i] is a frame start: its end is the first LF, unless a new start comes first.
            limit = min(n, i + MAX_FRAME_LEN)
            lf = find(b"\n", i + 1, limit)
            restart = find(START, i + 1, lf if lf >= 0 else limit)
            if restart >= 0:
                self._reject("truncated", f"frame cut short by a new '$' after "
                             f"{restart - i} bytes (board reset mid-frame?)", data[i:restart])
                i = restart
            elif lf >= 0:
                line = data[i:lf + 1]
                i = lf + 1
                try:
                    frames.append(parse_frame(line, self.direction))
                except FrameError as exc:
                    self._reject(exc.reason, str(exc), line)
                else:
                    self.decoded += 1
            elif limit - i >= MAX_FRAME_LEN:
                # Drop it; what follows, up to the next '$', is counted as garbage.
                self._reject("oversize", f"no end of frame within {MAX_FRAME_LEN} bytes",
                             data[i:limit])
                i = limit
            else:
                self._partial = data[i:]
                break
        return frames

    def reset(self) -> None:
        """Drop a partial frame (say, the link was reopened); it counts as truncated."""
        if self._partial:
            self._reject("truncated", "partial frame dropped: link reset", self._partial)
            self._partial = b""

    def take_rejections(self) -> list[Rejection]:
        """The rejections since the last call (at most `KEEP_REJECTIONS`), oldest first."""
        taken = list(self._rejections)
        self._rejections.clear()
        return taken

    def _garbage(self, data: bytes, start: int, end: int) -> None:
        if end > start:
            self.counters["garbage_bytes"] += end - start
            self._rejections.append(Rejection(
                "garbage_bytes", f"{end - start} bytes outside any frame (no '$' before them)",
                data[start:min(end, start + _SAMPLE)]))

    def _reject(self, reason: RejectReason, detail: str, data: bytes) -> None:
        self.counters[reason] += 1
        self._rejections.append(Rejection(reason, detail, data))
