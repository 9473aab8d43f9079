"""What a station says, checked before anyone at dispatch believes it. No I/O.

Every message the dispatch side reads from a station goes through `read` first, in the
console today and in the hub: a station is only who the broker let publish on its topics,
so a payload can be anything. `read`:

- takes the station from the topic (`{prefix}/{station}/events/{class}`, `/status`,
  `/health`, `/alerts`, `/replies`), never from the payload, and drops a payload that names
  another station (`wrong_station`): the ACL lets a station publish only on its own topics,
  so this is what stops station "evil" from closing, forging or hiding station "victim"'s
  alerts;
- parses strict JSON only (no NaN or Infinity, bounded nesting and numbers, valid Unicode:
  `gateway.core.commands.decode_strict`, the gateway's own reader), so nothing downstream meets a
  value it cannot print, compare or write back as JSON;
- validates the message against the contract's model for its topic (the models
  docs/asyncapi.yaml is generated from);
- never raises, whatever the bytes: a message it refuses is a `Dropped` with a reason, to be
  counted and logged.

`printable` is for display: it removes control characters (C0, C1, DEL) and the Unicode
marks that reorder or hide text, so a station's text cannot move the cursor, erase
another station's row or disguise itself on a dispatcher's screen.
"""

from __future__ import annotations

import re
import unicodedata
from dataclasses import dataclass
from typing import Any, Literal

from pydantic import TypeAdapter, ValidationError

from gateway.contract.asyncapi import EventMessage
from gateway.contract.spec import adapter
from gateway.core.commands import Reply, decode_strict
from gateway.core.model import CLASS_NAMES
from gateway.uplink.reports import HealthReport, OpenAlertsMessage, StatusMessage

Channel = Literal["event", "status", "health", "alerts", "reply"]
DropReason = Literal["topic", "oversized", "malformed", "schema", "wrong_station"]
DROP_REASONS: tuple[DropReason, ...] = (
    "topic", "oversized", "malformed", "schema", "wrong_station",
)
MAX_PAYLOAD_BYTES = 256 * 1024  # a health report with many boards is a few KiB
STATION_ID = re.compile(r"[a-z0-9][a-z0-9_-]{0,62}")  # as gateway.config checks station_id
_CLASSES = frozenset(CLASS_NAMES)
_CHANNELS: dict[str, Channel] = {
    "status": "status", "health": "health", "alerts": "alerts", "replies": "reply",
}


@dataclass(frozen=True)
class Inbound:
    """A message that passed: its station (from the topic), channel and checked JSON."""

    station: str
    channel: Channel
    message: dict[str, Any]


@dataclass(frozen=True)
class Dropped:
    """A message refused, and why (`station` when the topic named one)."""

    reason: DropReason
    detail: str
    station: str | None = None


def _models() -> dict[Channel, TypeAdapter[Any]]:
    return {
        "event": adapter(EventMessage),
        "status": adapter(StatusMessage),
        "health": adapter(HealthReport),
        "alerts": adapter(OpenAlertsMessage),
        "reply": adapter(Reply),
    }


_MODELS: dict[Channel, TypeAdapter[Any]] | None = None


def parse_topic(topic: str, prefix: str) -> tuple[str, Channel] | str:
    """(station, channel) of a station topic, or why it is not one."""
    head = prefix.rstrip("/") + "/"
    if not topic.startswith(head):
        return f"not under {head}"
    parts = topic[len(head):].split("/")
    if len(parts) < 2 or not STATION_ID.fullmatch(parts[0]):
        return "no station id in the topic"
    station, rest = parts[0], parts[1:]
    if rest[0] == "events" and len(rest) == 2 and rest[1] in _CLASSES:
        return station, "event"
    channel = _CHANNELS.get(rest[0]) if len(rest) == 1 else None
    if channel is None:
        return f"not a station topic: {'/'.join(rest)[:80]}"
    return station, channel


def read(topic: str, payload: bytes | bytearray, prefix: str) -> Inbound | Dropped:
    """Check one message from a station's topics; never raises."""
    global _MODELS  # noqa: PLW0603 - built on first use: pydantic schemas cost to build
    where = parse_topic(topic, prefix)
    if isinstance(where, str):
        return Dropped("topic", f"{printable(topic)[:120]}: {where}")
    station, channel = where
    if len(payload) > MAX_PAYLOAD_BYTES:
        return Dropped("oversized", f"{len(payload)} bytes, limit {MAX_PAYLOAD_BYTES}", station)
    try:
        raw = decode_strict(bytes(payload))
    except ValueError as exc:
        return Dropped("malformed", f"not strict JSON: {printable(str(exc))[:200]}", station)
    if not isinstance(raw, dict):
        return Dropped("schema", f"a {type(raw).__name__}, not a JSON object", station)
    if _MODELS is None:
        _MODELS = _models()
    try:
        if channel == "reply":  # a pydantic dataclass: strict mode takes no dict, only JSON
            _MODELS[channel].validate_json(bytes(payload), strict=True)
        else:  # the JSON is parsed already: validate the value, not the bytes again
            _MODELS[channel].validate_python(raw, strict=True)
    except ValidationError as exc:
        first = exc.errors()[0]
        at = ".".join(str(p) for p in first["loc"]) or "(top)"
        return Dropped("schema", printable(f"{at}: {first['msg']}")[:200], station)
    named = raw.get("station")
    if named != station:
        return Dropped(
            "wrong_station",
            f"published on {station}'s topic but names station {printable(str(named))[:64]!r}",
            station,
        )
    return Inbound(station, channel, raw)


_HIDDEN = frozenset({
    "\u200b", "\u200c", "\u200d", "\u2060", "\ufeff",  # zero-width
    "\u202a", "\u202b", "\u202c", "\u202d", "\u202e",  # bidi embeddings and overrides
    "\u2066", "\u2067", "\u2068", "\u2069", "\u061c", "\u200e", "\u200f",  # isolates, marks
})


def printable(text: str) -> str:
    """`text` safe for a terminal or a web page: control characters (C0, C1, DEL), the
    marks that reorder or hide text, and unpaired surrogates are shown as U+FFFD."""
    if text.isprintable():
        return text
    return "".join(
        "\ufffd" if (ch in _HIDDEN or unicodedata.category(ch) in ("Cc", "Cs")) else ch
        for ch in text
    )
