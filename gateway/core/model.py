"""Core vocabulary: priority classes, events handed to the outbox, and the event bodies.

No pydantic here: the daemon imports this module (see gateway.contract.spec). The wire message,
`EventMessage`, is in gateway.contract.asyncapi.
"""

from __future__ import annotations

import os
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from enum import IntEnum
from typing import TYPE_CHECKING, Annotated, Any, Literal, NotRequired, TypeVar

from typing_extensions import TypedDict  # pydantic needs it before Python 3.12

from gateway.core.commands import Team

if TYPE_CHECKING:
    from pydantic import Field  # the contract's markers; gateway.contract.spec resolves them

PriorityName = Literal["P0", "P1", "P2", "P3"]
JSONValue = Any  # a JSON-serialisable value (tests check the payloads against the contract)
_Spec = TypeVar("_Spec")


def forbid_extra(spec: _Spec) -> _Spec:
    """Refuse unknown keys when pydantic validates this TypedDict (it reads the attribute).

    What `pydantic.with_config(ConfigDict(extra="forbid"))` does, without importing pydantic.
    """
    spec.__pydantic_config__ = {"extra": "forbid"}  # type: ignore[attr-defined]
    return spec


class Priority(IntEnum):
    """Priority class; a lower number is more urgent and drains first."""

    P0 = 0  # life safety
    P1 = 1  # crisis request
    P2 = 2  # assistance / outreach
    P3 = 3  # telemetry and health

    @classmethod
    def parse(cls, name: str) -> Priority:
        """`Priority.parse("P1")` -> `Priority.P1`; raises ValueError with the valid names."""
        try:
            return cls[name]
        except KeyError:
            raise ValueError(
                f"unknown priority class {name!r} (use one of P0, P1, P2, P3)"
            ) from None

    @property
    def evictable(self) -> bool:
        """P0 and P1 are never evicted from the outbox and never expire."""
        return self >= Priority.P2


#: The class names, indexed by class (`CLASS_NAMES[priority]`: no enum lookup per event).
CLASS_NAMES: tuple[str, ...] = tuple(p.name for p in Priority)


EVENT_SCHEMA = "stationgw/event/1"  # the `schema` value of every event payload

REQUESTED_RESPONSE: dict[Priority, str] = {
    Priority.P0: "emergency_services",
    Priority.P1: "crisis_team",
    Priority.P2: "ambassador",
    Priority.P3: "none",
}


def uuid7() -> str:
    """A UUIDv7 string: 48-bit Unix milliseconds, then 74 random bits (RFC 9562)."""
    ms = time.time_ns() // 1_000_000
    rand = int.from_bytes(os.urandom(10), "big")
    value = (ms & ((1 << 48) - 1)) << 80 | rand & ((1 << 80) - 1)
    value = value & ~(0xF << 76) | (0x7 << 76)  # version 7
    value = value & ~(0x3 << 62) | (0x2 << 62)  # RFC 4122 variant
    # str(uuid.UUID(int=value)), without building the UUID object (one per event).
    h = f"{value:032x}"
    return f"{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:]}"


#: An event's body: one of the bodies below for every kind the gateway raises (JSON objects;
#: the TypedDicts say which keys each kind carries).
EventBody = Mapping[str, JSONValue]


#: An alert cites at most this many reasons for its class: the first (what raised it) and the
#: newest. A reading that keeps changing while a rider presses again and again would
#: otherwise grow every announcement of a long-open alert without bound.
MAX_EVIDENCE = 16


def cite(evidence: Sequence[str], reason: str) -> tuple[str, ...]:
    """`evidence` with `reason` added last, unless it is there already; at most MAX_EVIDENCE."""
    if reason in evidence:
        return tuple(evidence)
    cited = (*evidence, reason)
    if len(cited) > MAX_EVIDENCE:
        cited = (cited[0], *cited[len(cited) - MAX_EVIDENCE + 1:])
    return cited


AlertState = Literal["open", "acknowledged", "assigned", "resolved", "cancelled"]
CLOSED_STATES: tuple[AlertState, ...] = ("resolved", "cancelled")


@dataclass(frozen=True)
class AlertRecord:
    """An alert's lifecycle state, stored with the event that announces it (atomically)."""

    alert_id: str
    source: str
    state: AlertState
    priority: Priority
    details: dict[str, JSONValue] = field(default_factory=dict)
    command_id: str | None = None  # the dispatch command that caused this change, if any

    @property
    def closed(self) -> bool:
        """Resolved or cancelled."""
        return self.state in CLOSED_STATES


@dataclass(frozen=True)
class Event:
    """An input the rules have classified, ready to be accepted into the outbox."""

    kind: str
    source: str
    priority: Priority
    body: EventBody = field(default_factory=dict)
    event_id: str = field(default_factory=uuid7)
    alert: AlertRecord | None = None  # stored in the same transaction as the event


# TypedDicts, not models: bodies are built and merged as dicts (AlertRecord.details is
# stored as JSON), and NotRequired keys are absent on the wire until something sets them.
# Their docstrings and descriptions are published in docs/asyncapi.yaml.
@forbid_extra
class HelpPointPlace(TypedDict):
    """Body of `help_point.stuck` and `help_point.unstuck`: which help point, and where."""

    help_point: Annotated[str, Field(description="help point id")]
    location: Annotated[str, Field(description="where it is, from the config")]
    platform: Annotated[str, Field(description="platform name or number, from the config")]


@forbid_extra
class AlertBody(HelpPointPlace):
    """Body of every event about an alert: its id, state, presses and what dispatch did."""

    alert_id: Annotated[str, Field(description="one rider's request; updates keep it")]
    state: Annotated[AlertState, Field(description="lifecycle state after this event")]
    press_count: Annotated[int, Field(ge=1, description="presses joined into this request")]
    first_press: Annotated[float, Field(description="Unix time of the first press")]
    last_press: Annotated[float, Field(description="Unix time of the latest press")]
    held: Annotated[bool, Field(description="held past hold_time_s")]
    escalated: Annotated[bool, Field(description="raised by repeats or by dispatch silence")]
    evidence: Annotated[list[str], Field(
        description="why it has its class, oldest first; each reason once, at most 16 (the "
        "first and the newest)"
    )]
    escalations: NotRequired[
        Annotated[int, Field(ge=1, description="re-announcements for want of an ack")]
    ]
    dispatcher: NotRequired[
        Annotated[str, Field(description="desk of the last command applied to it")]
    ]
    team: NotRequired[Annotated[Team, Field(description="the team assigned")]]
    eta_s: NotRequired[
        Annotated[int | None, Field(ge=0, description="expected arrival, if dispatch gave one")]
    ]


@forbid_extra
class AlertDetails(HelpPointPlace):
    """What a help point says of its request when it raises it (`AlertRecord.details`)."""

    press_count: int
    first_press: float
    last_press: float
    held: bool
    escalated: bool
    evidence: list[str]


# The bodies of sensor and device events. The contract leaves them free-form (a board's
# firmware decides its channels and codes); these say what this gateway puts in them.
class SensorPlace(TypedDict):
    """Which sensor board, and where."""

    sensor: str  # the sensor's id in the config
    device_id: str | None  # from the board's HELLO; None until it said one
    location: str
    platform: str


class SensorReadingBody(SensorPlace):
    """Body of `sensor.threshold` and `sensor.reading`."""

    channel: str
    value: float
    unit: str
    label: str


class DeviceOnlineBody(SensorPlace):
    """Body of `device.online`: the board said HELLO (again, if `back`)."""

    firmware: str
    capabilities: list[str]
    back: bool


class DeviceOfflineBody(SensorPlace):
    """Body of `device.offline`."""

    reason: str


class DeviceFaultBody(SensorPlace):
    """Body of `device.fault`: a FAULT frame, with how many like it were coalesced."""

    code: str
    fault_source: str
    state: str
    detail: str
    coalesced: int


class OutboxDroppedBody(TypedDict):
    """Body of `outbox.dropped`: seqs the outbox evicted or expired since the last report."""

    evicted: list[int]
    expired: list[int]
