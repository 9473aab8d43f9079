"""Help points end to end: real gpiozero Button/LED on MockFactory pins, real Mosquitto."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from gateway.config.models import StationConfig
from gateway.daemon import Gateway
from gateway.testing.daemon import running
from gateway.testing.mosquitto import Mosquitto
from tests.helpers import (
    HELP_POINTS,
    Subscriber,
    lamp_becomes,
    station_config,
    subscribe,
    tap,
    unit,
)


def gpio_config(tmp_path: Path, url: str, **press: Any) -> StationConfig:
    return station_config(
        tmp_path, [url], gpio_pin_factory="mock", help_points=HELP_POINTS,
        press={"repeat_window_s": 5, "stuck_after_s": 1.5, **press},
    )


@pytest.fixture
async def station(
    broker: Mosquitto, tmp_path: Path
) -> AsyncIterator[tuple[Gateway, Subscriber]]:
    config = gpio_config(tmp_path, broker.url)
    async with subscribe(broker.port, f"stationgw/v1/{config.station_id}/events/#") as sub:
        async with running(Gateway(config)) as gw:
            await asyncio.wait_for(gw.publisher.connected.wait(), 10)
            yield gw, sub


async def settle(sub: Subscriber, seconds: float = 1.0) -> list[dict[str, Any]]:
    """Wait so that any extra (wrong) message would have arrived, then return events."""
    await asyncio.sleep(seconds)
    return sub.events()


async def test_press_is_exactly_one_crisis_request(station: tuple[Gateway, Subscriber]) -> None:
    gw, sub = station
    await tap(gw, "hp-1")
    await sub.wait_for(lambda m: len(m) >= 1)
    (event,) = await settle(sub)
    assert event["class"] == "P1" and event["kind"] == "help_point.press"
    assert event["source"] == "hp-1" and event["requested_response"] == "crisis_team"
    body = event["body"]
    assert body["press_count"] == 1 and body["location"] == "platform 1" and body["alert_id"]
    assert body["first_press"] <= body["last_press"]
    await lamp_becomes(gw, "hp-1", "sent")
    assert unit(gw, "hp-2").lamp.state == "idle"
    # The pin driver must not debounce: lgpio would delay every press by the bounce time.
    assert unit(gw, "hp-1").button.pin.bounce is None


async def test_hold_upgrades_the_request_to_p0(station: tuple[Gateway, Subscriber]) -> None:
    gw, sub = station
    await tap(gw, "hp-1", length=1.0)
    await sub.wait_for(lambda m: len(m) >= 2)
    events = await settle(sub)
    assert [(e["kind"], e["class"]) for e in events] == [
        ("help_point.press", "P1"), ("help_point.hold", "P0")
    ]
    assert len({e["body"]["alert_id"] for e in events}) == 1  # upgraded, not a second request
    assert events[1]["requested_response"] == "emergency_services"


async def test_chatter_20_edges_in_200ms_is_one_request(
    station: tuple[Gateway, Subscriber],
) -> None:
    gw, sub = station
    pin = unit(gw, "hp-1").button.pin
    for i in range(20):
        pin.drive_low() if i % 2 == 0 else pin.drive_high()
        await asyncio.sleep(0.01)
    pin.drive_high()
    await sub.wait_for(lambda m: len(m) >= 1)
    (event,) = await settle(sub)
    assert event["kind"] == "help_point.press" and event["body"]["press_count"] == 1


async def test_repeated_presses_coalesce_and_escalate(station: tuple[Gateway, Subscriber]) -> None:
    gw, sub = station
    for _ in range(3):
        await tap(gw, "hp-1")
        await asyncio.sleep(0.3)
    await sub.wait_for(lambda m: len(m) >= 3)
    events = await settle(sub)
    assert [e["body"]["press_count"] for e in events] == [1, 2, 3]
    assert len({e["body"]["alert_id"] for e in events}) == 1
    assert [e["class"] for e in events] == ["P1", "P1", "P0"]
    assert events[-1]["body"]["escalated"] is True
    assert "pressed 3 times" in events[-1]["body"]["evidence"]


async def test_stuck_button_is_one_fault_that_clears_on_release(
    station: tuple[Gateway, Subscriber],
) -> None:
    gw, sub = station
    pin = unit(gw, "hp-1").button.pin
    pin.drive_low()
    await sub.wait_for(lambda m: any(p["kind"] == "help_point.stuck" for _, p in m))
    await lamp_becomes(gw, "hp-1", "fault")
    assert "help_point_stuck:hp-1" in gw.health.faults
    events = await settle(sub, 2.0)  # still held: no flood
    assert [e["kind"] for e in events] == [
        "help_point.press", "help_point.hold", "help_point.stuck"
    ]
    # the other help point still works while hp-1 is stuck
    await tap(gw, "hp-2")
    await sub.wait_for(lambda m: any(p["source"] == "hp-2" for _, p in m))
    pin.drive_high()
    await sub.wait_for(lambda m: any(p["kind"] == "help_point.unstuck" for _, p in m))
    assert "help_point_stuck:hp-1" not in gw.health.faults
    assert unit(gw, "hp-1").lamp.state != "fault"


async def test_lamp_never_shows_sent_before_the_puback(
    own_broker: Mosquitto, tmp_path: Path
) -> None:
    config = gpio_config(tmp_path, own_broker.url)
    async with running(Gateway(config)) as gw:
        await tap(gw, "hp-1")
        await lamp_becomes(gw, "hp-1", "accepted")
        for _ in range(50):  # broker down: it must stay "accepted"
            await asyncio.sleep(0.02)
            assert unit(gw, "hp-1").lamp.state == "accepted"
        own_broker.start()
        await lamp_becomes(gw, "hp-1", "sent", timeout=20)


async def test_a_press_taken_before_a_restart_lights_sent_when_it_is_delivered(
    own_broker: Mosquitto, tmp_path: Path
) -> None:
    """Press while the broker is down, restart, let the broker come back: the row read back
    from the store still moves the rider's lamp on to "sent"."""
    config = gpio_config(tmp_path, own_broker.url)
    async with running(Gateway(config)) as gw:
        await tap(gw, "hp-1")
        await lamp_becomes(gw, "hp-1", "accepted")
    async with running(Gateway(config)) as gw:
        await lamp_becomes(gw, "hp-1", "accepted")
        assert (await gw.outbox.depth()).rows == 1
        own_broker.start()
        await lamp_becomes(gw, "hp-1", "sent", timeout=20)
        async with asyncio.timeout(10):  # confirmed rows are deleted in batches
            while (await gw.outbox.depth()).rows:
                await asyncio.sleep(0.05)


async def test_lamp_and_sounder_pins_follow_the_state(broker: Mosquitto, tmp_path: Path) -> None:
    config = gpio_config(tmp_path, broker.url)
    async with running(Gateway(config)) as gw:
        hp = unit(gw, "hp-1")
        lamp_pin = hp.devices[1].pin  # button, lamp, sounder
        sounder_pin = hp.devices[2].pin
        assert lamp_pin.state == 0
        lamp_pin.clear_states()
        sounder_pin.clear_states()
        hp.lamp.follow("a-1", "accepted")
        await asyncio.sleep(2.2)  # slow blink: 0.5 s on, 1.5 s off
        ons = [s.state for s in lamp_pin.states].count(True)
        assert ons == 2, lamp_pin.states
        beeps = [s.state for s in sounder_pin.states].count(True)
        assert beeps == 1  # the "accepted" cue
        hp.lamp.follow("a-1", "acknowledged")
        await asyncio.sleep(0.1)
        assert lamp_pin.state == 1  # solid
        hp.lamp.follow(None, "idle")
        await asyncio.sleep(0.1)
        assert lamp_pin.state == 0
