"""Payloads in, values out: what the console reads from the broker, with no I/O.

Events (schema `stationgw/event/1`), their de-duplication on `event_id`, a gateway's reply
to a command, and field readers. Every message is first checked by `dispatch.inbound.read`.
"""

from __future__ import annotations

import json
from collections import deque
from typing import Any

from pydantic import ValidationError

from gateway.contract.spec import adapter
from gateway.core.commands import Reply

DEDUP_WINDOW = 100_000  # event ids remembered; a re-send comes within one station's backlog


def parse_event(payload: bytes | bytearray) -> dict[str, Any] | None:
    """The event in a payload, or None unless it is a JSON object with a string event_id."""
    try:
        event = json.loads(payload)
    except (ValueError, RecursionError):  # JSONDecodeError and UnicodeDecodeError too
        return None
    if not isinstance(event, dict):
        return None
    event_id = event.get("event_id")
    if not isinstance(event_id, str) or not event_id:
        return None
    return event


class Dedup:
    """Remembers the last `window` event ids: `first_time` is False for a re-send."""

    def __init__(self, window: int = DEDUP_WINDOW) -> None:
        self.window = window
        self._seen: set[str] = set()
        self._order: deque[str] = deque()

    def first_time(self, event_id: str) -> bool:
        """True the first time an id is seen (within the window), then False."""
        if event_id in self._seen:
            return False
        self._seen.add(event_id)
        self._order.append(event_id)
        if len(self._order) > self.window:
            self._seen.discard(self._order.popleft())
        return True


def parse_reply(payload: bytes | bytearray) -> Reply | None:
    """A gateway's reply, or None when the payload is not one."""
    try:
        reply: Reply = adapter(Reply).validate_json(payload)
    except ValidationError:
        return None
    return reply


def as_text(value: object, default: str = "") -> str:
    """A JSON field that should be a string, or `default`."""
    return value if isinstance(value, str) else default


def as_number(value: object) -> float | None:
    """A JSON field that should be a number (not a bool), or None."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return float(value)
