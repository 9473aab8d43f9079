"""The topic tree and the rendering of events into MQTT messages.

    {prefix}/{station}/events/{class}   every accepted event, QoS 1 (dispatch subscribes by class)
    {prefix}/{station}/status           retained birth ("online") and Last Will ("offline")
    {prefix}/{station}/health           retained periodic health report
"""

from __future__ import annotations

from dataclasses import dataclass

from gateway.model import REQUESTED_RESPONSE, Event, EventMessage, Priority


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

    def render(self, event: Event, seq: int, wall_time: float) -> tuple[str, bytes]:
        """Topic and JSON payload of an accepted event."""
        message = EventMessage(
            event_id=event.event_id,
            station=self.station,
            priority=event.priority.name,
            requested_response=REQUESTED_RESPONSE[event.priority],
            kind=event.kind,
            source=event.source,
            seq=seq,
            wall_time=round(wall_time, 6),
            body=event.body,
        )
        payload = message.model_dump_json(by_alias=True).encode()
        return self.events(event.priority), payload
