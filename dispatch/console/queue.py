"""The alert queue, with no I/O: events from every station in, one row per open alert out.

Re-sends are folded once (de-duplicated on `event_id`), each alert keeps the state its
newest event gives it, and rows come most urgent class first, then oldest first. A station's
retained open-alerts snapshot seeds the queue with alerts raised before the console started.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Mapping
from dataclasses import dataclass, replace
from typing import Any, Literal

from dispatch.console.events import DEDUP_WINDOW, Dedup, as_number, as_text
from dispatch.console.options import PREFIX
from dispatch.inbound import Dropped, DropReason, read
from gateway.core.model import AlertState, Priority

CLOSED_MEMORY = 10_000  # closed alerts remembered, so a late event does not reopen one

Change = Literal[
    "new", "updated", "closed", "duplicate", "stale", "fault", "fault_cleared", "ignored",
    "malformed", "seeded", "gone", "wrong_station",
]
SNAPSHOT_KIND = "snapshot"  # the `kind` of a row known only from a station's snapshot
_STATES: dict[str, AlertState] = {
    "open": "open", "acknowledged": "acknowledged", "assigned": "assigned",
    "resolved": "resolved", "cancelled": "cancelled",
}
_STATE_OF_KIND: dict[str, AlertState] = {
    "alert.acknowledged": "acknowledged", "alert.assigned": "assigned",
    "alert.resolved": "resolved", "alert.cancelled": "cancelled",
}


@dataclass(frozen=True, slots=True)
class AlertRow:
    """One rider's request as dispatch sees it: the newest event's view of the alert."""

    station: str
    alert_id: str
    priority: Priority
    state: AlertState
    kind: str  # the newest event's kind
    source: str
    location: str
    press_count: int
    raised_at: float  # the rider's first press (gateway wall time): the queue's age
    escalated: bool
    team: str | None
    eta_s: int | None
    requested_response: str
    updated_at: float  # wall time of the newest event
    seq: int  # the newest event's seq (orders one gateway's events)

    @property
    def key(self) -> tuple[str, str]:
        """(station, alert_id): alert ids are only promised unique per station."""
        return (self.station, self.alert_id)


@dataclass(frozen=True, slots=True)
class Fault:
    """A help point reported stuck (no alert id: dispatch cannot command it)."""

    station: str
    source: str
    location: str
    since: float


class AlertQueue:
    """Folds event payloads from every station into one row per open alert.

    - Re-sends (same `event_id`) change nothing.
    - Events of one alert can arrive out of order (the outbox drains P0 before P1), so a row
      takes an event only if its `seq` is newer than the row's; the body carries the whole
      alert record, so the newest event is the truth.
    - Resolved and cancelled alerts leave the queue and are remembered, so a late event
      does not bring them back.
    - `help_point.stuck` / `unstuck` (no alert id) raise and clear a `Fault`; other events
      without an alert id are ignored here (`watch --json` still prints them).
    - A station's open-alerts snapshot adds the open alerts the queue does not know yet
      (seq 0, so their next event updates them), and closes the station's rows that a
      snapshot made after their newest event no longer lists.
    """

    def __init__(self, dedup_window: int = DEDUP_WINDOW, prefix: str = PREFIX) -> None:
        self.prefix = prefix
        self.dedup = Dedup(dedup_window)
        self.dropped: dict[DropReason, int] = {}  # messages `dispatch.inbound.read` refused
        self._open: dict[tuple[str, str], AlertRow] = {}
        self._closed: set[tuple[str, str]] = set()
        self._closed_order: deque[tuple[str, str]] = deque()
        self._faults: dict[tuple[str, str], Fault] = {}
        self.counts: dict[Change, int] = {}

    def feed_message(self, topic: str, payload: bytes | bytearray) -> list[Change]:
        """Fold one raw message from a station's events or alerts topic, once
        `dispatch.inbound.read` has checked it: the station is the topic's, never the
        payload's. Other topics change nothing here."""
        inbound = read(topic, payload, self.prefix)
        if isinstance(inbound, Dropped):
            self.count_dropped(inbound)
            return [self._count("wrong_station" if inbound.reason == "wrong_station"
                                else "malformed")]
        if inbound.channel == "event":
            return [self.feed(inbound.message)]
        if inbound.channel == "alerts":
            return self.feed_snapshot(inbound.message)
        return []

    def count_dropped(self, dropped: Dropped) -> None:
        """Count a message `dispatch.inbound.read` refused (on any topic the console reads)."""
        self.dropped[dropped.reason] = self.dropped.get(dropped.reason, 0) + 1

    def feed(self, event: Mapping[str, Any]) -> Change:
        """Fold one event that `dispatch.inbound.read` passed; says what it changed."""
        event_id = event.get("event_id")
        if not isinstance(event_id, str) or not event_id:
            return self._count("malformed")
        if not self.dedup.first_time(event_id):
            return self._count("duplicate")
        try:
            priority = Priority.parse(as_text(event.get("class")))
        except ValueError:
            return self._count("malformed")
        body = event.get("body")
        body = body if isinstance(body, dict) else {}
        station, kind = as_text(event.get("station")), as_text(event.get("kind"))
        source = as_text(event.get("source"), as_text(body.get("help_point")))
        wall_time = as_number(event.get("wall_time")) or 0.0
        alert_id = body.get("alert_id")
        if not isinstance(alert_id, str) or not alert_id:
            return self._count(self._fault(kind, station, source, body, wall_time))
        key = (station, alert_id)
        row = self._open.get(key)
        given_seq = as_number(event.get("seq"))
        if key in self._closed or (row is not None and given_seq is not None
                                   and given_seq <= row.seq):
            return self._count("stale")
        seq = int(given_seq) if given_seq is not None else (row.seq if row else 0)
        state = _STATES.get(as_text(body.get("state"))) or _STATE_OF_KIND.get(kind, "open")
        if state in ("resolved", "cancelled"):
            self._close(key)
            return self._count("closed")
        fresh = _row(
            station, alert_id, body, priority=priority, state=state, kind=kind, source=source,
            requested_response=as_text(event.get("requested_response")), wall_time=wall_time,
            seq=seq,
        )
        if row is not None:  # keep what only earlier events said
            fresh = replace(
                fresh, raised_at=min(row.raised_at, fresh.raised_at),
                location=fresh.location or row.location,
            )
        self._open[key] = fresh
        return self._count("new" if row is None else "updated")

    def feed_snapshot(self, snapshot: Mapping[str, Any]) -> list[Change]:
        """Fold a station's open alerts (a snapshot `dispatch.inbound.read` passed): add the
        unknown ones, close the ones it lacks."""
        station = as_text(snapshot.get("station"))
        wall_time = as_number(snapshot.get("wall_time")) or 0.0
        alerts = snapshot.get("alerts")
        if not station or not isinstance(alerts, list):
            return [self._count("malformed")]
        changes: list[Change] = []
        listed: set[tuple[str, str]] = set()
        for alert in alerts:
            body = alert.get("body") if isinstance(alert, dict) else None
            alert_id = as_text(alert.get("alert_id")) if isinstance(alert, dict) else ""
            if not isinstance(alert, dict) or not alert_id or not isinstance(body, dict):
                changes.append(self._count("malformed"))
                continue
            key = (station, alert_id)
            listed.add(key)
            state = _STATES.get(as_text(alert.get("state")))
            name = as_text(alert.get("class"))
            if state is None or state in ("resolved", "cancelled") or (
                name not in Priority.__members__
            ):
                changes.append(self._count("malformed"))
                continue
            if key in self._open or key in self._closed:
                changes.append(self._count("stale"))  # its events are newer news
                continue
            self._open[key] = _row(
                station, alert_id, body, priority=Priority[name], state=state,
                kind=SNAPSHOT_KIND,
                source=as_text(alert.get("source"), as_text(body.get("help_point"))),
                requested_response=as_text(alert.get("requested_response")),
                wall_time=wall_time, seq=0,
            )
            changes.append(self._count("seeded"))
        for key, row in list(self._open.items()):
            # Only a snapshot made after the row's newest event knows it was closed since.
            if key[0] == station and key not in listed and row.updated_at <= wall_time:
                self._close(key)
                changes.append(self._count("gone"))
        return changes

    def _close(self, key: tuple[str, str]) -> None:
        self._open.pop(key, None)
        self._closed.add(key)
        self._closed_order.append(key)
        if len(self._closed_order) > CLOSED_MEMORY:
            self._closed.discard(self._closed_order.popleft())

    def _fault(
        self, kind: str, station: str, source: str, body: Mapping[str, Any], wall_time: float
    ) -> Change:
        if kind == "help_point.stuck":
            self._faults.setdefault(
                (station, source),
                Fault(station, source, as_text(body.get("location")), wall_time),
            )
            return "fault"
        if kind == "help_point.unstuck":
            self._faults.pop((station, source), None)
            return "fault_cleared"
        return "ignored"

    def _count(self, change: Change) -> Change:
        self.counts[change] = self.counts.get(change, 0) + 1
        return change

    def rows(self) -> list[AlertRow]:
        """Open alerts: most urgent class first, then oldest first."""
        return sorted(
            self._open.values(), key=lambda r: (r.priority, r.raised_at, r.station, r.alert_id)
        )

    def get(self, station: str, alert_id: str) -> AlertRow | None:
        """An open alert, if it is in the queue."""
        return self._open.get((station, alert_id))

    def faults(self) -> list[Fault]:
        """Stuck help points, oldest first."""
        return sorted(self._faults.values(), key=lambda f: (f.since, f.station, f.source))

    def __len__(self) -> int:
        return len(self._open)


def _row(
    station: str, alert_id: str, body: Mapping[str, Any], *, priority: Priority,
    state: AlertState, kind: str, source: str, requested_response: str, wall_time: float,
    seq: int,
) -> AlertRow:
    """A row from an alert body, as events and snapshots carry it."""
    first_press = as_number(body.get("first_press"))
    eta = as_number(body.get("eta_s"))
    team = body.get("team")
    return AlertRow(
        station=station, alert_id=alert_id, priority=priority, state=state, kind=kind,
        source=source, location=as_text(body.get("location")),
        press_count=int(as_number(body.get("press_count")) or 0),
        raised_at=first_press or wall_time,
        escalated=body.get("escalated") is True,
        team=team if isinstance(team, str) else None,
        eta_s=None if eta is None else int(eta),
        requested_response=requested_response,
        updated_at=wall_time, seq=seq,
    )
