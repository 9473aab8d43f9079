"""The alert lifecycle, with no I/O: open -> acknowledged/assigned -> resolved/cancelled.

`AlertBook` is the one owner of every open alert: its record (state, class, press count,
evidence, dispatcher, team) and how far its announcement got (`Delivery`: raised, accepted
into the outbox, confirmed by the broker). It decides what a dispatch command does to an
alert, and says which unacknowledged alerts are due to be re-announced and escalated. Its
records travel with the events that announce them, so the database always agrees with what
was published; the rider's lamp is a projection of it (`gateway.core.lamp.projected`).
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable, Mapping, Sequence
from dataclasses import replace
from typing import Literal

from gateway.core.commands import Command, Rejection
from gateway.core.model import AlertRecord, AlertState, JSONValue, Priority, cite

RECENTLY_CLOSED = 1000  # closed alerts remembered, so late commands get a precise answer

_NEXT_STATE: dict[str, AlertState] = {
    "acknowledge": "acknowledged",
    "assign": "assigned",
    "resolve": "resolved",
    "cancel": "cancelled",
}
_ALLOWED_FROM: dict[str, tuple[AlertState, ...]] = {
    "acknowledge": ("open",),
    "assign": ("open", "acknowledged", "assigned"),
    "resolve": ("open", "acknowledged", "assigned"),
    "cancel": ("open", "acknowledged", "assigned"),
}

Listener = Callable[[AlertRecord], None]
#: How far an open alert's announcement got; it only moves forward. "accepted": an event
#: about it is committed to the outbox; "sent": the broker confirmed one.
Delivery = Literal["raised", "accepted", "sent"]
_DELIVERY_RANK: dict[Delivery, int] = {"raised": 0, "accepted": 1, "sent": 2}


class AlertBook:
    """Open alerts and their timers. Times are monotonic seconds given by the caller."""

    def __init__(self, ack_timeout_s: float, escalate_to: Priority) -> None:
        self.ack_timeout_s = ack_timeout_s
        self.escalate_to = escalate_to
        self.open: dict[str, AlertRecord] = {}
        self.recently_closed: OrderedDict[str, AlertRecord] = OrderedDict()
        self._announced: dict[str, float] = {}  # awaiting ack since (re-)announcement
        self.delivery: dict[str, Delivery] = {}  # of every open alert
        self.listeners: list[Listener] = []  # told of every state change that was applied

    def raised(
        self, alert_id: str, source: str, priority: Priority, details: Mapping[str, JSONValue],
        now: float,
    ) -> AlertRecord:
        """A source raised or updated an alert; returns the record to store with its event.

        An update never lowers the class or drops what the book has: its evidence is cited
        after the book's, and an alert once held or escalated stays so.
        """
        known = self.open.get(alert_id)
        if known is None:
            record = AlertRecord(alert_id, source, "open", priority, dict(details))
            self._announced[alert_id] = now
            self.delivery[alert_id] = "raised"
        else:
            record = _merged(known, priority, details)
        self.open[alert_id] = record
        return record

    def corroborated(
        self, alert_id: str, priority: Priority, evidence: Sequence[str]
    ) -> AlertRecord | None:
        """Something at the alert's source (a sensor's correlation rule) corroborates it:
        raise it to `priority` and cite `evidence`. The new record to announce, or None if
        the alert is not open or that adds nothing."""
        known = self.open.get(alert_id)
        if known is None:
            return None
        record = _merged(known, priority, {"evidence": list(evidence)})
        if record.priority == known.priority and record.details == known.details:
            return None
        self.open[alert_id] = record
        return record

    def decide(self, command: Command, *, replay: bool) -> AlertRecord | Rejection:
        """What a checked command would do: the alert's new record, or why it is refused."""
        ids = {"command_id": command.command_id, "alert_id": command.alert_id}
        if replay:
            return Rejection("replay", "this command id was already applied", **ids)
        record = self.open.get(command.alert_id)
        if record is None:
            closed = self.recently_closed.get(command.alert_id)
            if closed is not None:
                return Rejection("invalid_transition", f"alert is already {closed.state}", **ids)
            return Rejection("unknown_alert", "no open alert with this id at this station", **ids)
        if record.state not in _ALLOWED_FROM[command.action]:
            return Rejection(
                "invalid_transition", f"cannot {command.action} an alert that is {record.state}",
                **ids,
            )
        details = dict(record.details)
        details["dispatcher"] = command.dispatcher
        if command.action == "assign":
            details |= {"team": command.team, "eta_s": command.eta_s}
        return replace(
            record, state=_NEXT_STATE[command.action], details=details,
            command_id=command.command_id,
        )

    def apply(self, record: AlertRecord) -> None:
        """Make a decided change current (after its event was accepted)."""
        if record.closed:
            self.open.pop(record.alert_id, None)
            self._announced.pop(record.alert_id, None)
            self.delivery.pop(record.alert_id, None)
            self.recently_closed[record.alert_id] = record
            while len(self.recently_closed) > RECENTLY_CLOSED:
                self.recently_closed.popitem(last=False)
        else:
            self.open[record.alert_id] = record
            if record.state != "open":
                self._announced.pop(record.alert_id, None)
        for listener in self.listeners:
            listener(record)

    def restore(self, record: AlertRecord, now: float, *, sent: bool) -> None:
        """Re-open an alert loaded from the database after a restart (its events were
        accepted; `sent`: the broker confirmed them all)."""
        self.open[record.alert_id] = record
        self.delivery[record.alert_id] = "sent" if sent else "accepted"
        if record.state == "open":
            self._announced[record.alert_id] = now

    def announced(self, alert_id: str, delivery: Delivery) -> AlertRecord | None:
        """An event about this alert was committed ("accepted") or confirmed by the broker
        ("sent"). Returns its record if that moved it on (a closed alert, or one that got
        further already, is left as it is)."""
        record = self.open.get(alert_id)
        known = self.delivery.get(alert_id)
        if record is None or known is None or _DELIVERY_RANK[delivery] <= _DELIVERY_RANK[known]:
            return None
        self.delivery[alert_id] = delivery
        return record

    def deadline(self) -> float | None:
        """When the next unacknowledged alert is due to be re-announced."""
        if not self._announced:
            return None
        return min(self._announced.values()) + self.ack_timeout_s

    def escalate_due(self, now: float) -> list[AlertRecord]:
        """Records for every alert unacknowledged past the timeout: re-announced, escalated."""
        due = []
        for alert_id, since in list(self._announced.items()):
            if now < since + self.ack_timeout_s:
                continue
            record = self.open[alert_id]
            count = int(record.details.get("escalations", 0)) + 1
            evidence = list(cite(record.details.get("evidence", []),
                                 f"not acknowledged within {self.ack_timeout_s:g}s"))
            record = replace(
                record,
                priority=min(record.priority, self.escalate_to),
                details={**record.details, "escalated": True, "escalations": count,
                         "evidence": evidence},
                command_id=None,
            )
            self.open[alert_id] = record
            self._announced[alert_id] = now
            due.append(record)
        return due


def _merged(
    known: AlertRecord, priority: Priority, details: Mapping[str, JSONValue]
) -> AlertRecord:
    """`known` raised to `priority` and updated by `details` (a re-announcement, so no
    command caused it): evidence is cited after the known, and held and escalated stick."""
    merged = {**known.details, **details}
    evidence: tuple[str, ...] = tuple(known.details.get("evidence", ()))
    for reason in details.get("evidence", ()):
        evidence = cite(evidence, reason)
    if evidence:
        merged["evidence"] = list(evidence)
    for flag in ("held", "escalated"):
        if known.details.get(flag):
            merged[flag] = True
    return replace(known, priority=min(known.priority, priority), details=merged,
                   command_id=None)
