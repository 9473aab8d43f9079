"""Sensor rules as plain numbers: thresholds with hysteresis and duration, telemetry."""

from __future__ import annotations

from typing import Any

import pytest

from gateway.config.loading import parse_config
from gateway.config.models import Sensor
from gateway.contract.spec import adapter
from gateway.core.model import Priority
from gateway.core.sensors import SensorHappening, SensorRules
from gateway.errors import ConfigError


def sensor(**kw: Any) -> Sensor:
    sensor: Sensor = adapter(Sensor).validate_python(
        {"id": "edge-p1", "port": "/dev/null", "location": "p1 edge", **kw}
    )
    return sensor


def feed(rules: SensorRules, readings: list[tuple[float, float]], channel: str = "beam",
         until: float | None = None, unit: str = "bool") -> list[SensorHappening]:
    out = []
    for at, value in readings:
        while (deadline := rules.deadline()) is not None and deadline <= at:
            out += rules.tick(deadline)
        out += rules.reading(channel, value, unit, at)
    if until is not None:
        while (deadline := rules.deadline()) is not None and deadline <= until:
            out += rules.tick(deadline)
    return out


EDGE = {"channel": "beam", "above": 1, "clear_at": 0.5, "min_duration_s": 2, "class": "P0",
        "label": "edge intrusion"}


def test_beam_broken_for_over_2s_is_one_p0_then_cleared() -> None:
    rules = SensorRules.from_config(sensor(thresholds=[EDGE]))
    out = feed(rules, [(0, 0), (1, 1)], until=10)
    assert [(h.kind, h.priority) for h in out] == [("sensor.threshold", Priority.P0)]
    assert out[0].label == "edge intrusion"
    out = feed(rules, [(11, 1), (12, 0)])
    assert [(h.kind, h.priority) for h in out] == [("sensor.cleared", Priority.P3)]


def test_brief_break_does_not_trigger() -> None:
    rules = SensorRules.from_config(sensor(thresholds=[EDGE]))
    assert feed(rules, [(1, 1), (2.5, 0), (3, 1), (4.9, 0)], until=20) == []


def test_hysteresis_holds_the_alert_between_the_two_values() -> None:
    rules = SensorRules.from_config(sensor(thresholds=[
        {"channel": "count", "above": 100, "clear_at": 80, "class": "P2", "label": "crowding"}]))
    out = feed(rules, [(0, 120), (1, 95), (2, 101), (3, 85)], channel="count")
    assert [h.kind for h in out] == ["sensor.threshold"]  # no flapping between 80 and 100
    out = feed(rules, [(4, 79)], channel="count")
    assert [h.kind for h in out] == ["sensor.cleared"]


def test_telemetry_is_rate_limited_with_a_deadband() -> None:
    rules = SensorRules.from_config(sensor(telemetry=[
        {"channel": "spl", "min_interval_s": 10, "deadband": 3}]))
    got = list(feed(rules, [(0, 60), (5, 70), (11, 61), (22, 62), (40, 70)],
                           channel="spl", until=100))
    # 70 at 5 s is too soon: held back, and sent when due at 10 s; 61 likewise at 20 s;
    # 62 at 22 s moved less than 3 from 61, so nothing; 70 at 40 s goes out at once.
    assert [h.value for h in got] == [60, 70, 61, 70]


def test_correlation_raises_no_alert_but_gives_evidence() -> None:
    rules = SensorRules.from_config(sensor(thresholds=[
        {"channel": "spl", "above": 85, "clear_at": 75, "class": "P0", "correlate": True,
         "label": "loud"}], help_points=["hp-1"]))
    assert feed(rules, [(0, 92)], channel="spl", unit="dB") == []
    assert rules.correlations() == [(Priority.P0, "loud 92 dB at p1 edge")]
    feed(rules, [(5, 70)], channel="spl", unit="dB")
    assert rules.correlations() == []


@pytest.mark.parametrize(
    ("rule", "problem"),
    [({"channel": "x", "clear_at": 1, "class": "P0"}, "exactly one of"),
     ({"channel": "x", "above": 1, "below": 0, "clear_at": 1, "class": "P0"}, "exactly one of"),
     ({"channel": "x", "above": 1, "clear_at": 2, "class": "P0"}, "clear_at 2.0 must be at most"),
     ({"channel": "x", "above": 1, "clear_at": 0, "class": "P9"}, "class")],
)
def test_bad_threshold_rules_are_config_errors(rule: dict[str, Any], problem: str) -> None:
    with pytest.raises(ConfigError) as err:
        parse_config({"station_id": "s", "brokers": [{"url": "mqtt://127.0.0.1"}],
                      "sensors": [{"id": "b", "port": "/dev/x", "thresholds": [rule]}]})
    assert any(p.startswith("sensors[0].thresholds[0]") and problem in p
               for p in err.value.problems), err.value.problems
