"""Sensor rules, with no I/O: readings in, alerts, correlations and telemetry out.

- Threshold: a channel at/above (or at/below) a value for `min_duration_s` raises an alert of
  the rule's class (`sensor.threshold`); it clears, with hysteresis, once the value is back
  past `clear_at` (`sensor.cleared`, P3).
- Correlation: a threshold rule with `correlate = true` raises no alert of its own; while it
  holds, it raises concurrent requests at the sensor's help points to its class, and the
  reading travels with them as evidence.
- Telemetry: readings as P3 events, at most one per `min_interval_s`, and only once the value
  has moved by `deadband`.
Times are monotonic seconds given by the caller.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from gateway.config.models import Sensor, ThresholdRule
from gateway.core.model import Priority

Kind = Literal["sensor.threshold", "sensor.cleared", "sensor.reading"]


@dataclass(frozen=True)
class SensorHappening:
    """Something to publish about a sensor."""

    kind: Kind
    sensor: str
    channel: str
    priority: Priority
    value: float
    unit: str
    label: str = ""


@dataclass
class _Threshold:
    rule: ThresholdRule
    past_since: float | None = None  # value has been past the threshold since
    active: bool = False
    value: float = 0.0
    unit: str = ""

    def past(self, value: float) -> bool:
        rule = self.rule
        return value >= rule.above if rule.above is not None else value <= float(rule.below or 0)

    def cleared(self, value: float) -> bool:
        rule = self.rule
        return value < rule.clear_at if rule.above is not None else value > rule.clear_at


@dataclass
class _Telemetry:
    min_interval_s: float
    deadband: float
    last_at: float | None = None
    last_value: float | None = None
    pending: tuple[float, str] | None = None  # moved enough, but too soon: sent when due


@dataclass
class SensorRules:
    """Rules of one sensor board."""

    sensor: Sensor
    thresholds: list[_Threshold] = field(default_factory=list)
    telemetry: dict[str, _Telemetry] = field(default_factory=dict)

    @classmethod
    def from_config(cls, sensor: Sensor) -> SensorRules:
        """Rules as configured for a sensor."""
        return cls(
            sensor,
            [_Threshold(rule) for rule in sensor.thresholds],
            {t.channel: _Telemetry(t.min_interval_s, t.deadband) for t in sensor.telemetry},
        )

    def reading(self, channel: str, value: float, unit: str, now: float) -> list[SensorHappening]:
        """A reading arrived."""
        out: list[SensorHappening] = []
        for state in self.thresholds:
            if state.rule.channel != channel:
                continue
            state.value, state.unit = value, unit
            if state.active:
                if state.cleared(value):
                    state.active, state.past_since = False, None
                    if not state.rule.correlate:
                        out.append(self._happening("sensor.cleared", state, Priority.P3))
            elif state.past(value):
                if state.past_since is None:
                    state.past_since = now
            else:
                state.past_since = None
        tele = self.telemetry.get(channel)
        if tele is not None:
            moved = tele.last_value is None or abs(value - tele.last_value) >= tele.deadband
            tele.pending = (value, unit) if moved else None
        out += self.tick(now)
        return out

    def deadline(self) -> float | None:
        """When a pending threshold's minimum duration, or a held-back reading, is due."""
        times = [s.past_since + s.rule.min_duration_s for s in self.thresholds
                 if s.past_since is not None and not s.active]
        times += [t.last_at + t.min_interval_s for t in self.telemetry.values()
                  if t.pending is not None and t.last_at is not None]
        return min(times) if times else None

    def tick(self, now: float) -> list[SensorHappening]:
        """Let time pass: thresholds held long enough trigger, held-back readings go out."""
        out = []
        for channel, tele in self.telemetry.items():
            if tele.pending is None:
                continue
            if tele.last_at is None or now >= tele.last_at + tele.min_interval_s:
                (value, unit), tele.pending = tele.pending, None
                tele.last_at, tele.last_value = now, value
                out.append(SensorHappening("sensor.reading", self.sensor.id, channel,
                                           Priority.P3, value, unit))
        for state in self.thresholds:
            if state.active or state.past_since is None:
                continue
            if now >= state.past_since + state.rule.min_duration_s:
                state.active = True
                if not state.rule.correlate:
                    out.append(self._happening(
                        "sensor.threshold", state, Priority.parse(state.rule.priority)
                    ))
        return out

    def correlations(self) -> list[tuple[Priority, str]]:
        """Active correlation rules: the class they raise requests to, and the evidence."""
        return [
            (Priority.parse(s.rule.priority),
             f"{s.rule.label or s.rule.channel} {s.value:g} {s.unit} at "
             f"{self.sensor.location or self.sensor.id}")
            for s in self.thresholds if s.active and s.rule.correlate
        ]

    def correlating(self) -> frozenset[int]:
        """Which correlation rules are active now (indexes into `thresholds`)."""
        return frozenset(
            i for i, s in enumerate(self.thresholds) if s.active and s.rule.correlate
        )

    def _happening(self, kind: Kind, state: _Threshold, priority: Priority) -> SensorHappening:
        return SensorHappening(kind, self.sensor.id, state.rule.channel, priority, state.value,
                               state.unit, state.rule.label)
