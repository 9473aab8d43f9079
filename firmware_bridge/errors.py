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


class CommandError(BridgeError):
    """A command could not be carried out over the link (see the subclasses)."""


class DeviceOfflineError(CommandError):
    """No board is online on the link, or it went away before it answered."""


class CommandUnsupportedError(CommandError, ValueError):
    """The board did not list the capability the command needs in its HELLO (not sent)."""


class CommandTimeoutError(CommandError, TimeoutError):
    """The board answered none of the attempts of a command (no ACK, no NAK)."""


class PortError(BridgeError, OSError):
    """A serial port cannot be used; the message names the port and what to check."""


class PortUnavailableError(PortError):
    """A serial port cannot be opened: it is missing (unplugged), busy, or not permitted."""


class PortLostError(PortError):
    """An open serial port failed or was closed under us (the device was unplugged)."""

