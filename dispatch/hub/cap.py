"""Alerts as OASIS CAP 1.2 messages, for a computer-aided dispatch (CAD) system. No I/O.

Each alert's lifecycle, as the hub recorded it (`alert_transitions`), becomes a chain of
messages: `Alert` when it was raised, `Update` on each acknowledgement, assignment and
escalation, `Cancel` when it was resolved or cancelled. Every message after the first
`references` all the earlier ones (`sender,identifier,sent`), so a CAD can follow one
incident. The priority class maps to urgency, severity and certainty; the requested response
to `responseType` and to parameters; the station and location to the `area`.

`status` is `Actual`, or `Test` for test traffic (a hub fed by the demo or a simulator).
"""

from __future__ import annotations

import datetime
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

from lxml import etree

CAP_NS = "urn:oasis:names:tc:emergency:cap:1.2"
Status = Literal["Actual", "Test", "Exercise"]

#: class -> (urgency, severity, certainty)
_GRADING = {
    "P0": ("Immediate", "Extreme", "Observed"),
    "P1": ("Immediate", "Severe", "Observed"),
    "P2": ("Expected", "Moderate", "Likely"),
    "P3": ("Future", "Minor", "Possible"),
}
#: requested response -> CAP responseType (what the receiving dispatcher should do)
_RESPONSE_TYPE = {
    "emergency_services": "Execute",
    "crisis_team": "Execute",
    "co_response": "Execute",
    "ambassador": "Assess",
    "none": "Monitor",
}
_IDENT = re.compile(r"[^A-Za-z0-9._:-]")  # CAP: no spaces, commas or XML-reserved characters
_CLOSED = ("resolved", "cancelled")


@dataclass(frozen=True)
class CapMessage:
    """One CAP message: its identifier, sent time and XML."""

    identifier: str
    sent: str
    msg_type: Literal["Alert", "Update", "Cancel"]
    xml: bytes


def cap_time(unix: float) -> str:
    """CAP's dateTime: seconds, and an explicit offset (`+00:00`, never `Z`)."""
    return datetime.datetime.fromtimestamp(int(unix), datetime.UTC).strftime(
        "%Y-%m-%dT%H:%M:%S+00:00")


def _text(value: object, limit: int | None = 500) -> str:
    """Text safe for XML 1.0 (no control characters a station might have sent), cut at
    `limit` characters (None: whole)."""
    text = str(value)[:limit]
    return "".join(ch if ch in "\t\n\r" or (ch >= " " and ch not in "\ufffe\uffff"
                                             and not "\ud800" <= ch <= "\udfff")
                   else "\ufffd" for ch in text)


def lifecycle(
    alert: dict[str, Any], history: Sequence[tuple[str, float]], *, sender: str,
    status: Status = "Actual",
) -> list[CapMessage]:
    """The CAP messages of one alert: its row from `alerts` and its transitions in order."""
    messages: list[CapMessage] = []
    for state, at in history:
        message = follow_up(alert, state, at, messages, sender=sender, status=status)
        if message is None:
            break
        messages.append(message)
    return messages


def follow_up(
    alert: dict[str, Any], state: str, at: float, earlier: Sequence[CapMessage], *,
    sender: str, status: Status = "Actual",
) -> CapMessage | None:
    """The message for an alert's next transition, given the ones sent for it before:
    `Alert` first, `Cancel` when it closed, otherwise `Update`; None after its `Cancel`."""
    if earlier and earlier[-1].msg_type == "Cancel":
        return None
    kind: Literal["Alert", "Update", "Cancel"] = (
        "Alert" if not earlier else "Cancel" if state in _CLOSED else "Update")
    identifier = _IDENT.sub(
        "_", f"stationgw-{alert['station']}-{alert['alert_id']}-{len(earlier)}")[:200]
    sent = cap_time(at)
    xml = _message(alert, state, kind, identifier=identifier, sent=sent, sender=sender,
                   status=status, references=earlier)
    return CapMessage(identifier, sent, kind, xml)


def _message(
    alert: dict[str, Any], state: str, kind: str, *, identifier: str, sent: str,
    sender: str, status: Status, references: Sequence[CapMessage],
) -> bytes:
    def sub(parent: etree._Element, name: str, text: object | None = None, *,
            limit: int | None = 500) -> etree._Element:
        element = etree.SubElement(parent, f"{{{CAP_NS}}}{name}")
        if text is not None:
            element.text = _text(text, limit)
        return element

    root = etree.Element(f"{{{CAP_NS}}}alert", nsmap={None: CAP_NS})  # type: ignore[dict-item]
    sub(root, "identifier", identifier)
    sub(root, "sender", sender)
    sub(root, "sent", sent)
    sub(root, "status", status)
    sub(root, "msgType", kind)
    sub(root, "source", f"station gateway {alert['station']}")
    sub(root, "scope", "Restricted")
    sub(root, "restriction", "dispatch centre and its CAD only")
    if kind == "Cancel":
        sub(root, "note", f"the alert was {state} at the station")
    if references:
        # Whole, however long the chain: a reference cut short names no message.
        sub(root, "references", " ".join(f"{sender},{m.identifier},{m.sent}"
                                         for m in references), limit=None)
    sub(root, "incidents", f"{alert['station']}:{alert['alert_id']}")
    cls = str(alert["class"])
    urgency, severity, certainty = _GRADING.get(cls, _GRADING["P1"])
    response = str(alert.get("requested_response") or "none")
    info = sub(root, "info")
    sub(info, "language", "en")
    sub(info, "category", "Health")
    sub(info, "category", "Safety")
    sub(info, "event", "metro crisis request")
    sub(info, "responseType", "AllClear" if kind == "Cancel" else
        _RESPONSE_TYPE.get(response, "Monitor"))
    sub(info, "urgency", "Past" if kind == "Cancel" else urgency)
    sub(info, "severity", severity)
    sub(info, "certainty", certainty)
    sub(info, "senderName", "station-gateway hub")
    place = alert.get("location") or alert.get("source")
    sub(info, "headline", f"{cls} crisis request at {alert['station']}: {place} ({state})")
    for name, value in (
        ("class", cls), ("requestedResponse", response), ("state", state),
        ("source", alert.get("source")), ("team", alert.get("team")),
        ("etaSeconds", alert.get("eta_s")), ("escalations", alert.get("escalations")),
    ):
        if value is not None and value != "":
            parameter = sub(info, "parameter")
            sub(parameter, "valueName", name)
            sub(parameter, "value", value)
    area = sub(info, "area")
    sub(area, "areaDesc", f"station {alert['station']}" + (
        f", {alert['location']}" if alert.get("location") else ""))
    geocode = sub(area, "geocode")
    sub(geocode, "valueName", "stationgw:station")
    sub(geocode, "value", alert["station"])
    return bytes(etree.tostring(root, xml_declaration=True, encoding="UTF-8"))
