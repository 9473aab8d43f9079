"""The frames of firmware protocol 1: one frozen dataclass per frame type, checked when built.

Every frame has a type, a sequence number and its fields, in a fixed order. A frame that
exists is valid: constructors raise `FrameError` for a bad field, so the encoder never puts
an invalid frame on the wire and the decoder never hands one out. docs/firmware-protocol.md
is the wire reference for firmware authors; `WIRE` below is its single source in code.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from decimal import Decimal, InvalidOperation
from typing import Any, ClassVar, Literal, get_args

from firmware_bridge.errors import FrameError

#: Longest frame on the wire, counting the `$` and the closing CR LF.
MAX_FRAME_LEN = 256
#: Sequence numbers run 0..MAX_SEQ and then wrap to 0.
MAX_SEQ = 0xFFFF
#: Largest 32-bit unsigned value (uptime seconds, unix time).
MAX_U32 = 0xFFFF_FFFF

Direction = Literal["uplink", "downlink"]
ButtonEvent = Literal["press", "hold", "release"]
Unit = Literal["dB", "count", "bool", "mm", "C", "%", "V"]
FaultCode = Literal["tamper", "line", "sensor", "spkmic"]
FaultState = Literal["set", "clear", "pass", "fail"]
NakCode = Literal["unsupported", "invalid", "busy", "failed"]
LampState = Literal["idle", "accepted", "sent", "acknowledged", "fault"]
TestTarget = Literal["all", "spkmic", "sensor"]

#: Capabilities a protocol-1 board may list in HELLO (others are kept, and ignored).
KNOWN_CAPABILITIES = ("btn", "read", "fault", "lamp", "test", "time")

#: Which fault states each fault code may report: set/clear for a condition that starts
#: and ends, pass/fail for the result of a self-test.
FAULT_STATES: dict[FaultCode, tuple[FaultState, ...]] = {
    "tamper": ("set", "clear"),
    "line": ("set", "clear"),
    "sensor": ("set", "clear", "pass", "fail"),
    "spkmic": ("pass", "fail"),
}


class _BadValueError(Exception):
    """Internal: a field value is wrong; the message says what was expected."""


# ------------------------------------------------------------------------------ field kinds


class Kind:
    """How one field's value looks on the wire and in Python."""

    expected: str = ""

    def parse(self, text: str) -> Any:
        """The Python value of wire text, or `_BadValueError`."""
        raise NotImplementedError

    def check(self, value: object) -> None:
        """Raise `_BadValueError` unless `value` is a valid Python value for this field."""
        raise NotImplementedError

    def format(self, value: Any) -> str:
        """The wire text of a (checked) value."""
        return str(value)


class Pattern(Kind):
    """A string matching a regular expression."""

    def __init__(self, pattern: str, expected: str) -> None:
        self._match = re.compile(pattern).fullmatch
        self.expected = expected

    def parse(self, text: str) -> str:
        """The text itself, when it matches."""
        if self._match(text) is None:
            raise _BadValueError(self.expected)
        return text

    def check(self, value: object) -> None:
        """A `str` that matches."""
        if not isinstance(value, str) or self._match(value) is None:
            raise _BadValueError(self.expected)


class Uint(Kind):
    """A decimal integer in [minimum, maximum], without sign or leading zeros."""

    def __init__(self, maximum: int, minimum: int = 0) -> None:
        self.minimum, self.maximum = minimum, maximum
        self._digits = len(str(maximum))
        self.expected = f"a decimal integer {minimum}..{maximum} without leading zeros"

    def parse(self, text: str) -> int:
        """The integer; only canonical decimal text is accepted."""
        # isascii() first: str.isdigit() (and int()) also accept non-ASCII digits.
        if (not text.isascii() or not text.isdigit() or len(text) > self._digits
                or (text[0] == "0" and text != "0")):
            raise _BadValueError(self.expected)
        value = int(text)
        if not self.minimum <= value <= self.maximum:
            raise _BadValueError(self.expected)
        return value

    def check(self, value: object) -> None:
        """An `int` (not a bool) in range."""
        if type(value) is not int or not self.minimum <= value <= self.maximum:
            raise _BadValueError(self.expected)


class Choice(Kind):
    """One of a fixed set of words."""

    def __init__(self, values: tuple[str, ...]) -> None:
        self.values = frozenset(values)
        self.expected = "one of " + ", ".join(values)

    def parse(self, text: str) -> str:
        """The word, when it is one of the set."""
        if text not in self.values:
            raise _BadValueError(self.expected)
        return text

    def check(self, value: object) -> None:
        """A word of the set."""
        if value not in self.values:
            raise _BadValueError(self.expected)


_TEXT_FORBIDDEN = frozenset("$*,")


class Text(Kind):
    """Free text: 1..maxlen printable ASCII characters except `$`, `*` and `,`."""

    def __init__(self, maxlen: int) -> None:
        self.maxlen = maxlen
        self.expected = (f"1..{maxlen} printable ASCII characters without '$', '*' or ',' "
                         "(use ';' instead of a comma)")

    def parse(self, text: str) -> str:
        """The text, when it is allowed."""
        self.check(text)
        return text

    def check(self, value: object) -> None:
        """A `str` of allowed characters and length."""
        if (not isinstance(value, str) or not 1 <= len(value) <= self.maxlen
                or not value.isascii() or not value.isprintable()
                or not _TEXT_FORBIDDEN.isdisjoint(value)):
            raise _BadValueError(self.expected)


_DECIMAL = re.compile(r"-?(?:0|[1-9][0-9]*)(?:\.[0-9]+)?")
DECIMAL_MAX_LEN = 20


class Number(Kind):
    """A decimal number such as `-3`, `0.5` or `71.20` (kept exactly, as a `Decimal`)."""

    expected = (f"a decimal number like 71.2, -3 or 0.05: optional '-', digits without "
                f"leading zeros, optional '.' and digits, at most {DECIMAL_MAX_LEN} characters "
                "(no exponent, no '+')")

    def parse(self, text: str) -> Decimal:
        """The exact value; trailing fraction zeros are kept (`71.20` stays `71.20`)."""
        if len(text) > DECIMAL_MAX_LEN or _DECIMAL.fullmatch(text) is None:
            raise _BadValueError(self.expected)
        return Decimal(text)

    def check(self, value: object) -> None:
        """A finite `Decimal` whose plain notation fits."""
        if not isinstance(value, Decimal) or not value.is_finite():
            raise _BadValueError(self.expected)
        try:
            text = format(value, "f")
        except (ValueError, InvalidOperation) as exc:  # pragma: no cover - finite always formats
            raise _BadValueError(self.expected) from exc
        if len(text) > DECIMAL_MAX_LEN or _DECIMAL.fullmatch(text) is None:
            raise _BadValueError(self.expected)

    def format(self, value: Any) -> str:
        """Plain notation, never an exponent."""
        return format(value, "f")


_CAP = re.compile(r"[a-z][a-z0-9]{0,11}")
MAX_CAPABILITIES = 8


class Capabilities(Kind):
    """A `+`-separated list of distinct lower-case words, such as `btn+lamp+test`."""

    expected = (f"1..{MAX_CAPABILITIES} distinct words of a-z 0-9 (each 1..12 characters, "
                "starting with a letter) joined by '+', such as btn+lamp+test")

    def parse(self, text: str) -> tuple[str, ...]:
        """The words in the order sent."""
        caps = tuple(text.split("+"))
        self.check(caps)
        return caps

    def check(self, value: object) -> None:
        """A tuple of distinct words."""
        if (not isinstance(value, tuple) or not 1 <= len(value) <= MAX_CAPABILITIES
                or len(set(value)) != len(value)
                or not all(isinstance(c, str) and _CAP.fullmatch(c) for c in value)):
            raise _BadValueError(self.expected)

    def format(self, value: Any) -> str:
        """Joined with `+`."""
        return "+".join(value)


IDENT_MAX_LEN = 16
DEVICE_ID_MAX_LEN = 32
SEQ = Uint(MAX_SEQ)
_IDENT = Pattern(rf"[A-Za-z0-9._-]{{1,{IDENT_MAX_LEN}}}",
                 f"1..{IDENT_MAX_LEN} characters of A-Z a-z 0-9 . _ -")
_DEVICE_ID = Pattern(rf"[A-Za-z0-9._-]{{1,{DEVICE_ID_MAX_LEN}}}",
                     f"1..{DEVICE_ID_MAX_LEN} characters of A-Z a-z 0-9 . _ -")
_FIRMWARE = Pattern(r"[A-Za-z0-9._+-]{1,32}", "1..32 characters of A-Z a-z 0-9 . _ + -")
_U32 = Uint(MAX_U32)
_PROTO = Uint(MAX_SEQ, minimum=1)


@dataclass(frozen=True)
class WireField:
    """One `key=value` field: its wire key, dataclass attribute and kind."""

    key: str
    attr: str
    kind: Kind
    optional: bool = False  # an optional field is omitted when its value is ""


# ----------------------------------------------------------------------------------- frames


@dataclass(frozen=True, kw_only=True)
class Frame:
    """A frame of any type: `TYPE`, the directions it travels, its fields, and `seq`."""

    TYPE: ClassVar[str]
    DIRECTIONS: ClassVar[frozenset[Direction]]
    WIRE: ClassVar[tuple[WireField, ...]]

    seq: int

    def __post_init__(self) -> None:
        if not hasattr(self, "TYPE"):
            raise TypeError("Frame is the base class: build a Hello, Heartbeat, Button, ... "
                            "(see FRAME_TYPES)")
        _check(self.TYPE, "seq", SEQ, self.seq)
        for field in self.WIRE:
            value = getattr(self, field.attr)
            if field.optional and value == "":
                continue
            _check(self.TYPE, field.key, field.kind, value)
        self._check_together()

    def _check_together(self) -> None:
        """Rules that involve more than one field (raise `FrameError`)."""


def _check(type_: str, key: str, kind: Kind, value: object) -> None:
    try:
        kind.check(value)
    except _BadValueError as exc:
        raise FrameError(f"{type_} {key}={value!r}: expected {exc}") from None


_UP = frozenset[Direction](("uplink",))
_DOWN = frozenset[Direction](("downlink",))
_BOTH = frozenset[Direction](("uplink", "downlink"))


@dataclass(frozen=True, kw_only=True)
class Hello(Frame):
    """Board to gateway, first after boot: who it is and which protocol version it speaks."""

    TYPE: ClassVar[str] = "HELLO"
    DIRECTIONS: ClassVar[frozenset[Direction]] = _UP
    WIRE: ClassVar[tuple[WireField, ...]] = (
        WireField("id", "device_id", _DEVICE_ID),
        WireField("fw", "firmware", _FIRMWARE),
        WireField("proto", "protocol", _PROTO),
        WireField("caps", "capabilities", Capabilities()),
    )

    device_id: str
    firmware: str
    protocol: int
    capabilities: tuple[str, ...]


@dataclass(frozen=True, kw_only=True)
class Heartbeat(Frame):
    """Either direction, every second: the sender is alive, and has been for `uptime_s`."""

    TYPE: ClassVar[str] = "HB"
    DIRECTIONS: ClassVar[frozenset[Direction]] = _BOTH
    WIRE: ClassVar[tuple[WireField, ...]] = (WireField("up", "uptime_s", _U32),)

    uptime_s: int


@dataclass(frozen=True, kw_only=True)
class Button(Frame):
    """Board to gateway: a help-point button was pressed, held (emergency) or released."""

    TYPE: ClassVar[str] = "BTN"
    DIRECTIONS: ClassVar[frozenset[Direction]] = _UP
    WIRE: ClassVar[tuple[WireField, ...]] = (
        WireField("btn", "button", _IDENT),
        WireField("ev", "event", Choice(get_args(ButtonEvent))),
    )

    button: str
    event: ButtonEvent


@dataclass(frozen=True, kw_only=True)
class Reading(Frame):
    """Board to gateway: a sensor's value in a unit (`bool` is 0/1, `count` a whole number)."""

    TYPE: ClassVar[str] = "READ"
    DIRECTIONS: ClassVar[frozenset[Direction]] = _UP
    WIRE: ClassVar[tuple[WireField, ...]] = (
        WireField("sensor", "sensor", _IDENT),
        WireField("value", "value", Number()),
        WireField("unit", "unit", Choice(get_args(Unit))),
    )

    sensor: str
    value: Decimal
    unit: Unit

    def _check_together(self) -> None:
        text = format(self.value, "f")
        if self.unit == "bool" and text not in ("0", "1"):
            raise FrameError(f"READ value={text!r} with unit=bool: expected 0 or 1")
        if self.unit == "count" and not (text.isdigit() and (text == "0" or text[0] != "0")):
            raise FrameError(f"READ value={text!r} with unit=count: expected a whole number "
                             "0 or more, without a fraction")


@dataclass(frozen=True, kw_only=True)
class Fault(Frame):
    """Board to gateway: a fault set or cleared, or a self-test passed or failed."""

    TYPE: ClassVar[str] = "FAULT"
    DIRECTIONS: ClassVar[frozenset[Direction]] = _UP
    WIRE: ClassVar[tuple[WireField, ...]] = (
        WireField("code", "code", Choice(get_args(FaultCode))),
        WireField("src", "source", _IDENT),
        WireField("state", "state", Choice(get_args(FaultState))),
        WireField("detail", "detail", Text(100), optional=True),
    )

    code: FaultCode
    source: str
    state: FaultState
    detail: str = ""

    def _check_together(self) -> None:
        allowed = FAULT_STATES[self.code]
        if self.state not in allowed:
            raise FrameError(f"FAULT code={self.code} state={self.state}: expected state "
                             f"{' or '.join(allowed)} for code {self.code}")


@dataclass(frozen=True, kw_only=True)
class Ack(Frame):
    """Board to gateway: the command with downlink seq `ref` was carried out."""

    TYPE: ClassVar[str] = "ACK"
    DIRECTIONS: ClassVar[frozenset[Direction]] = _UP
    WIRE: ClassVar[tuple[WireField, ...]] = (WireField("ref", "ref", SEQ),)

    ref: int


@dataclass(frozen=True, kw_only=True)
class Nak(Frame):
    """Board to gateway: the command with downlink seq `ref` was refused, and why."""

    TYPE: ClassVar[str] = "NAK"
    DIRECTIONS: ClassVar[frozenset[Direction]] = _UP
    WIRE: ClassVar[tuple[WireField, ...]] = (
        WireField("ref", "ref", SEQ),
        WireField("code", "code", Choice(get_args(NakCode))),
        WireField("detail", "detail", Text(100), optional=True),
    )

    ref: int
    code: NakCode
    detail: str = ""


@dataclass(frozen=True, kw_only=True)
class Welcome(Frame):
    """Gateway to board, answering HELLO: the protocol version is accepted."""

    TYPE: ClassVar[str] = "WELCOME"
    DIRECTIONS: ClassVar[frozenset[Direction]] = _DOWN
    WIRE: ClassVar[tuple[WireField, ...]] = (WireField("proto", "protocol", _PROTO),)

    protocol: int


@dataclass(frozen=True, kw_only=True)
class Refuse(Frame):
    """Gateway to board, answering HELLO: the version is refused; `protocol` is the gateway's."""

    TYPE: ClassVar[str] = "REFUSE"
    DIRECTIONS: ClassVar[frozenset[Direction]] = _DOWN
    WIRE: ClassVar[tuple[WireField, ...]] = (
        WireField("proto", "protocol", _PROTO),
        WireField("reason", "reason", Text(160)),
    )

    protocol: int
    reason: str


@dataclass(frozen=True, kw_only=True)
class Lamp(Frame):
    """Gateway to board: show this state of the rider's call on a help-point lamp."""

    TYPE: ClassVar[str] = "LAMP"
    DIRECTIONS: ClassVar[frozenset[Direction]] = _DOWN
    WIRE: ClassVar[tuple[WireField, ...]] = (
        WireField("lamp", "lamp", _IDENT),
        WireField("state", "state", Choice(get_args(LampState))),
    )

    lamp: str
    state: LampState


@dataclass(frozen=True, kw_only=True)
class SelfTest(Frame):
    """Gateway to board: run a self-test now and report results as FAULT frames."""

    TYPE: ClassVar[str] = "TEST"
    DIRECTIONS: ClassVar[frozenset[Direction]] = _DOWN
    WIRE: ClassVar[tuple[WireField, ...]] = (
        WireField("target", "target", Choice(get_args(TestTarget))),
    )

    target: TestTarget


@dataclass(frozen=True, kw_only=True)
class TimeSync(Frame):
    """Gateway to board: the current time, in whole seconds since 1970-01-01 UTC."""

    TYPE: ClassVar[str] = "TIME"
    DIRECTIONS: ClassVar[frozenset[Direction]] = _DOWN
    WIRE: ClassVar[tuple[WireField, ...]] = (WireField("unix", "unix_s", _U32),)

    unix_s: int


#: Every frame class, by its wire type.
FRAME_TYPES: dict[str, type[Frame]] = {
    cls.TYPE: cls
    for cls in (Hello, Heartbeat, Button, Reading, Fault, Ack, Nak,
                Welcome, Refuse, Lamp, SelfTest, TimeSync)
}
#: Wire types a gateway receives (from boards) and a board receives (from the gateway).
UPLINK_TYPES = frozenset(t for t, c in FRAME_TYPES.items() if "uplink" in c.DIRECTIONS)
DOWNLINK_TYPES = frozenset(t for t, c in FRAME_TYPES.items() if "downlink" in c.DIRECTIONS)


def parse_seq(type_: str, text: str) -> int:
    """The sequence number in wire text, or `FrameError`."""
    try:
        return SEQ.parse(text)
    except _BadValueError as exc:
        raise FrameError(f"{type_} seq={text!r}: expected {exc}") from None


def from_fields(type_: str, seq: int, items: list[str]) -> Frame:
    """Build a frame of wire type `type_` from its `key=value` items, or raise `FrameError`."""
    cls = FRAME_TYPES[type_]
    values: dict[str, Any] = {}
    i, n = 0, len(items)
    for field in cls.WIRE:
        if i < n:
            key, eq, text = items[i].partition("=")
            if key == field.key and eq:
                try:
                    values[field.attr] = field.kind.parse(text)
                except _BadValueError as exc:
                    raise FrameError(f"{type_} {key}={text!r}: expected {exc}") from None
                i += 1
                continue
        if not field.optional:
            got = f"{items[i]!r}" if i < n else "the end of the frame"
            raise FrameError(f"{type_}: expected field {field.key}=... next, got {got} "
                             f"(fields in order: {_layout(cls)})")
    if i < n:
        raise FrameError(f"{type_}: unexpected field {items[i]!r} "
                         f"(fields in order: {_layout(cls)})")
    return cls(seq=seq, **values)


def to_fields(frame: Frame) -> list[str]:
    """The `key=value` items of a frame, in wire order (empty optional fields left out)."""
    items = []
    for field in frame.WIRE:
        value = getattr(frame, field.attr)
        if field.optional and value == "":
            continue
        items.append(f"{field.key}={field.kind.format(value)}")
    return items


def _layout(cls: type[Frame]) -> str:
    return ",".join(f"{f.key}=" + ("(optional)" if f.optional else "") for f in cls.WIRE)
