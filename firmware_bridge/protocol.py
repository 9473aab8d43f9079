"""Version negotiation and the timing rules of protocol 1 (sans-I/O: decisions, no clocks).

A board opens with HELLO, naming the one protocol version it will speak. The gateway
answers WELCOME when it speaks that version, or REFUSE with its own highest version and a
reason a technician can act on. A board that also speaks an older version may send HELLO
again with that version.
"""

from __future__ import annotations

from firmware_bridge.errors import ProtocolVersionError
from firmware_bridge.frames import Hello, Refuse, Welcome

#: The protocol version this gateway speaks best, and every version it speaks.
PROTOCOL_VERSION = 1
SUPPORTED_VERSIONS = frozenset({1})

#: Each side sends HB this often while the link is up.
HEARTBEAT_INTERVAL_S = 1.0
#: A side is offline after this many heartbeat intervals without a valid frame from it.
OFFLINE_AFTER_MISSED = 3
#: A board repeats HELLO this often until it gets WELCOME or REFUSE.
HELLO_RETRY_S = 1.0
#: A refused board repeats HELLO this seldom (so it is found after a gateway update).
REFUSED_HELLO_RETRY_S = 60.0
#: The gateway waits this long for ACK or NAK before it repeats a command (same seq) ...
ANSWER_TIMEOUT_S = 1.0
#: ... and sends a command at most this many times in all.
COMMAND_ATTEMPTS = 3


def check_protocol_version(version: int) -> None:
    """Raise `ProtocolVersionError`, saying what to update, unless this gateway speaks it."""
    if version in SUPPORTED_VERSIONS:
        return
    spoken = " or ".join(str(v) for v in sorted(SUPPORTED_VERSIONS))
    if version > max(SUPPORTED_VERSIONS):
        message = (f"protocol {version} is newer than this gateway speaks ({spoken}): update "
                   f"the station gateway or flash board firmware that speaks protocol "
                   f"{max(SUPPORTED_VERSIONS)}")
    else:
        message = (f"protocol {version} is not spoken by this gateway ({spoken}): update the "
                   f"board firmware to protocol {max(SUPPORTED_VERSIONS)}")
    raise ProtocolVersionError(message, version)


def negotiate(hello: Hello, seq: int) -> Welcome | Refuse:
    """The gateway's answer to `hello`, to be sent with downlink sequence number `seq`."""
    try:
        check_protocol_version(hello.protocol)
    except ProtocolVersionError as exc:
        return Refuse(seq=seq, protocol=max(SUPPORTED_VERSIONS), reason=str(exc))
    return Welcome(seq=seq, protocol=hello.protocol)
