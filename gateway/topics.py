"""The topic tree and the rendering of events into MQTT messages.

    {prefix}/{station}/events/{class}   every accepted event, QoS 1 (dispatch subscribes by class)
    {prefix}/{station}/status           retained birth ("online") and Last Will ("offline")
    {prefix}/{station}/health           retained periodic health report
    {prefix}/{station}/alerts           retained snapshot of the open alerts
"""

from __future__ import annotations

from dataclasses import dataclass

from pydantic_core import to_json

from gateway.model import EVENT_SCHEMA, REQUESTED_RESPONSE, Event, Priority

_CLASS_NAMES = tuple(p.name for p in Priority)  # indexed by class: no enum lookup per event
_RESPONSES = tuple(REQUESTED_RESPONSE[p] for p in Priority)


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

    def render(self, event: Event, seq: int, wall_time: float) -> tuple[str, bytes]:
        """Topic and JSON payload (`gateway.model.EventMessage`) of an accepted event.

        The payload is the bytes `EventMessage(...).model_dump_json(by_alias=True)` gives:
        the same keys in the same order, through the same pydantic-core serializer, so that
        `body` values come out alike (NaN as null, 1e-05 as 0.00001). It skips building and
        validating a model per event, at less than half the CPU (tests compare the two).
        """
        cls = int(event.priority)
        name = _CLASS_NAMES[cls]
        payload = to_json({
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
        }, inf_nan_mode="null")  # EventMessage's default (ser_json_inf_nan)
        return f"{self.prefix}/{self.station}/events/{name}", payload
