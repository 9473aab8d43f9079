"""One error hierarchy for the firmware bridge: `BridgeError` and a family per subsystem."""

from __future__ import annotations

from typing import Literal

#: Why the decoder rejected bytes; each is a key of `Decoder.counters`.
RejectReason = Literal[
    "bad_crc",
    "oversize",
    "unknown_type",
    "wrong_direction",
    "malformed",
    "truncated",
    "garbage_bytes",
]


class BridgeError(Exception):
    """Root of every error the firmware bridge raises on purpose."""


class FrameError(BridgeError, ValueError):
    """A frame, or one of its fields, is invalid; `reason` is the counted rejection reason."""

    def __init__(self, message: str, reason: RejectReason = "malformed") -> None:
        self.reason: RejectReason = reason
        super().__init__(message)


class ProtocolVersionError(BridgeError, ValueError):
    """A board speaks a protocol version this gateway does not; the message says what to do."""

    def __init__(self, message: str, version: int) -> None:
        self.version = version
        super().__init__(message)
