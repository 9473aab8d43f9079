"""The topic tree and the rendering of events into MQTT messages.

    {prefix}/{station}/events/{class}   every accepted event, QoS 1 (dispatch subscribes by class)
    {prefix}/{station}/status           retained birth ("online") and Last Will ("offline")
    {prefix}/{station}/health           retained periodic health report
    {prefix}/{station}/alerts           retained snapshot of the open alerts
    {prefix}/{station}/commands         dispatch's commands to the station, QoS 1
    {prefix}/{station}/replies          the station's answers to them, QoS 1
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from typing import Any

from gateway.core.model import CLASS_NAMES, EVENT_SCHEMA, REQUESTED_RESPONSE, Event, Priority

_RESPONSES = tuple(REQUESTED_RESPONSE[p] for p in Priority)
# Compact UTF-8, as pydantic writes JSON. Strict: NaN and infinities are not JSON. Payloads
# are trees the gateway builds, never cyclic, so the cycle check is skipped (~10 % faster).
_ENCODER = json.JSONEncoder(
    ensure_ascii=False, allow_nan=False, check_circular=False, separators=(",", ":")
)


def _finite(value: Any) -> Any:
    """`value` with every NaN or infinite float (at any depth) replaced by None."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {key: _finite(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [_finite(item) for item in value]
    return value


def json_payload(value: Any) -> bytes:
    """Compact UTF-8 JSON of `value`, with NaN and infinities as null (as pydantic does)."""
    try:
        text = _ENCODER.encode(value)
    except ValueError:  # a non-finite float: rare, so the common case is not walked twice
        text = _ENCODER.encode(_finite(value))
    return text.encode()


@dataclass(frozen=True)
class Topics:
    """Topic names for one station."""

    prefix: str
    station: str

    @property
    def root(self) -> str:
        """Topic root of this station."""
        return f"{self.prefix}/{self.station}"

    def events(self, priority: Priority) -> str:
        """Topic of events of one class."""
        return f"{self.root}/events/{priority.name}"

    @property
    def status(self) -> str:
        """Retained birth / Last Will topic."""
        return f"{self.root}/status"

    @property
    def health(self) -> str:
        """Retained health report topic."""
        return f"{self.root}/health"

    @property
    def alerts(self) -> str:
        """Retained open-alerts snapshot topic."""
        return f"{self.root}/alerts"

    @property
    def commands(self) -> str:
        """Where dispatch sends commands for this station."""
        return f"{self.root}/commands"

    @property
    def replies(self) -> str:
        """Where the gateway answers commands."""
        return f"{self.root}/replies"

    def render(self, event: Event, seq: int, wall_time: float) -> tuple[str, bytes]:
        """Topic and JSON payload (`gateway.contract.asyncapi.EventMessage`) of an accepted event.

        The payload is the JSON value `EventMessage(...).model_dump(mode="json",
        by_alias=True)` gives, keys in the same order (NaN and infinities as null), written
        without pydantic, which the daemon does not load (tests compare the two).
        """
        cls = int(event.priority)
        name = CLASS_NAMES[cls]
        payload = json_payload({
            "schema": EVENT_SCHEMA,
            "event_id": event.event_id,
            "station": self.station,
            "class": name,
            "requested_response": _RESPONSES[cls],
            "kind": event.kind,
            "source": event.source,
            "seq": seq,
            "wall_time": round(wall_time, 6),
            "body": event.body,
        })
        return f"{self.prefix}/{self.station}/events/{name}", payload
