"""What the gateway says about itself: its status, its health and its open alerts.

TypedDicts, so the daemon builds these payloads as plain dicts, without pydantic. Their
string annotations carry pydantic's `Field` for the contract (gateway.contract.spec resolves it):
gateway.contract.asyncapi publishes them in docs/asyncapi.yaml, and the tests validate the payloads
the daemon sends against them.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Annotated, Literal, get_args

from typing_extensions import TypedDict  # pydantic needs it before Python 3.12

from gateway.core.model import (
    REQUESTED_RESPONSE,
    AlertRecord,
    AlertState,
    JSONValue,
    PriorityName,
    forbid_extra,
)
from gateway.outbox.sqlite import State

if TYPE_CHECKING:
    from collections.abc import Iterable

    from pydantic import Field  # the contract's markers; gateway.contract.spec resolves them

ALERTS_SCHEMA: Literal["stationgw/alerts/1"] = "stationgw/alerts/1"  # the snapshot's `schema`

_CLASS_NAMES: tuple[PriorityName, ...] = get_args(PriorityName)  # indexed by Priority

# Rows only in memory are counted under "memory" (see gateway.outbox.sqlite.read_depth).
OutboxState = Literal[State, "memory"]


@forbid_extra
class StatusMessage(TypedDict):
    """The retained status: `online` after each connect, `offline` on shutdown and as the Will."""

    state: Annotated[
        Literal["online", "offline"], Field(description="whether the gateway is connected")
    ]
    station: Annotated[str, Field(description="station id from the gateway's config")]
    version: Annotated[str, Field(description="gateway software version")]
    wall_time: Annotated[float, Field(
        description="Unix time it was made; in the Last Will, the time of the connect that "
        "registered the Will"
    )]


@forbid_extra
class FaultReport(TypedDict):
    """An active fault in the health report."""

    code: Annotated[
        str, Field(description="fault code, e.g. broker_unreachable or help_point_stuck:ID")
    ]
    message: Annotated[str, Field(description="what a technician needs to know")]
    since: Annotated[float, Field(description="Unix time the fault was raised")]


@forbid_extra
class OutboxReport(TypedDict):
    """The outbox part of the health report."""

    by_class: Annotated[dict[PriorityName, dict[OutboxState, int]], Field(
        description="rows by class, then by state (states with no rows are left out)"
    )]
    rows: Annotated[int, Field(ge=0, description="rows in the outbox")]
    bytes: Annotated[
        int, Field(ge=0, description="bytes the rows count against store.max_bytes")
    ]
    memory_rows: Annotated[
        int, Field(ge=0, description="rows held only in memory (database unwritable)")
    ]
    in_flight: Annotated[int, Field(ge=0, description="publishes awaiting their PUBACK")]
    oldest_unsent_age_s: Annotated[float | None, Field(
        description="age of the oldest row not yet confirmed, or null when the outbox is empty"
    )]


@forbid_extra
class HealthReport(TypedDict):
    """The retained health report, published every `mqtt.health_interval_s`."""

    station: Annotated[str, Field(description="station id from the gateway's config")]
    version: Annotated[str, Field(description="gateway software version")]
    uptime_s: Annotated[float, Field(ge=0, description="seconds since the daemon started")]
    wall_time: Annotated[float, Field(description="Unix time of the report")]
    outbox: OutboxReport
    faults: Annotated[list[FaultReport], Field(description="active faults")]
    links: Annotated[dict[str, str], Field(description="link states, e.g. broker:URL -> up")]
    counters: Annotated[dict[str, int], Field(description="event counters since start")]
    boards: Annotated[dict[str, dict[str, int]], Field(
        description="link quality of each serial board, by board id, counted since start: "
        "frames, rejected frames by reason (bad_crc, oversize, unknown_type, malformed...), "
        "sequence gaps and the frames lost in them, duplicates, board resets, port reopens, "
        "online/offline transitions and command outcomes (docs/firmware-protocol.md)"
    )]


# The functional form, because `class` is a key on the wire and a keyword in Python.
OpenAlert = TypedDict("OpenAlert", {
    "alert_id": "Annotated[str, Field(description=\"one rider's request, as in its events\")]",
    "source": "Annotated[str, Field(description=\"help point that raised it\")]",
    "class": "Annotated[PriorityName, Field(description=\"current priority class\")]",
    "requested_response": (
        "Annotated[str, Field(description=\"the response its class asks dispatch for\")]"
    ),
    "state": (
        "Annotated[AlertState, "
        "Field(description=\"lifecycle state: open, acknowledged or assigned\")]"
    ),
    "body": (
        "Annotated[dict[str, JSONValue], "
        "Field(description=\"the alert's body, as its events carry it\")]"
    ),
})
OpenAlert.__doc__ = "One open alert in the snapshot, as the newest event about it describes it."
forbid_extra(OpenAlert)


@forbid_extra
class OpenAlertsMessage(TypedDict):
    """The retained snapshot of a station's open alerts: at each connect and on each change."""

    schema: Annotated[Literal["stationgw/alerts/1"], Field(description="payload schema id")]
    station: Annotated[str, Field(description="station id from the gateway's config")]
    wall_time: Annotated[
        float, Field(description="Unix time it was made; may jump before NTP sync")
    ]
    alerts: Annotated[list[OpenAlert], Field(
        description="every alert open at the station, most urgent class first; a closed "
        "alert is simply absent"
    )]


def open_alert(record: AlertRecord) -> OpenAlert:
    """The snapshot entry of an alert's record (its body is the events' `alert_body`)."""
    return {
        "alert_id": record.alert_id,
        "source": record.source,
        "class": _CLASS_NAMES[record.priority],
        "requested_response": REQUESTED_RESPONSE[record.priority],
        "state": record.state,
        "body": {**record.details, "alert_id": record.alert_id, "state": record.state},
    }


def open_alerts_message(
    station: str, wall_time: float, records: Iterable[AlertRecord]
) -> OpenAlertsMessage:
    """The snapshot of the open alerts `records`, in their order."""
    return {
        "schema": ALERTS_SCHEMA,
        "station": station,
        "wall_time": wall_time,
        "alerts": [open_alert(record) for record in records],
    }
