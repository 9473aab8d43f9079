"""The loop with dispatch, end to end: commands, lamp, escalation, restarts, bad commands."""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import aiomqtt
import pytest

from dispatch.outbound import make_command, send_command
from gateway.daemon import Gateway
from gateway.testing.daemon import running
from gateway.testing.mosquitto import Mosquitto
from tests.helpers import (
    Subscriber,
    lamp_becomes,
    lifecycle_config,
    raise_alert,
    replies,
    subscribe,
    tap,
    unit,
)

Station = tuple[Gateway, Subscriber, aiomqtt.Client]


@pytest.fixture
async def dispatcher(broker: Mosquitto) -> AsyncIterator[aiomqtt.Client]:
    async with aiomqtt.Client("127.0.0.1", broker.port,
                              protocol=aiomqtt.ProtocolVersion.V5) as client:
        yield client


@pytest.fixture
async def station(
    broker: Mosquitto, tmp_path: Path, dispatcher: aiomqtt.Client
) -> AsyncIterator[Station]:
    config = lifecycle_config(tmp_path, broker.url)
    root = f"stationgw/v1/{config.station_id}"
    async with subscribe(broker.port, [f"{root}/events/#", f"{root}/replies"]) as sub:
        async with running(Gateway(config)) as gw:
            await asyncio.wait_for(gw.publisher.connected.wait(), 10)
            yield gw, sub, dispatcher


def states(sub: Subscriber, alert_id: str) -> list[str]:
    return [p["body"]["state"] for p in sub.events() if p["body"].get("alert_id") == alert_id]


async def test_ack_makes_the_lamp_solid_and_resolve_turns_it_off(station: Station) -> None:
    gw, sub, dispatcher = station
    station_id = gw.config.station_id
    alert_id = await raise_alert(gw, sub)
    await send_command(dispatcher, "stationgw/v1", make_command(station_id, alert_id,
                                                                "acknowledge"))
    await lamp_becomes(gw, "hp-1", "acknowledged")
    assert unit(gw, "hp-1").devices[1].pin.state == 1  # the lamp pin: solid
    await send_command(dispatcher, "stationgw/v1", make_command(
        station_id, alert_id, "assign", team="co_response", eta_s=300))
    await send_command(dispatcher, "stationgw/v1", make_command(station_id, alert_id, "resolve"))
    await lamp_becomes(gw, "hp-1", "idle")
    await sub.wait_for(lambda m: "resolved" in states(sub, alert_id))
    assert states(sub, alert_id) == ["open", "acknowledged", "assigned", "resolved"]
    assigned = next(p for p in sub.events() if p["kind"] == "alert.assigned")
    assert assigned["body"]["team"] == "co_response" and assigned["body"]["eta_s"] == 300
    await sub.wait_for(lambda m: len(replies(sub)) >= 3)
    assert [r["status"] for r in replies(sub)] == ["applied"] * 3
    # a press after the resolve is a new request
    await tap(gw, "hp-1")
    await sub.wait_for(lambda m: sum(p.get("kind") == "help_point.press" for _, p in m) == 2)
    new = [p for p in sub.events() if p["kind"] == "help_point.press"][-1]
    assert new["body"]["alert_id"] != alert_id


async def test_unacknowledged_alert_escalates_after_the_timeout(
    broker: Mosquitto, tmp_path: Path
) -> None:
    config = lifecycle_config(tmp_path, broker.url, ack_timeout_s=1.0)
    async with subscribe(broker.port, f"stationgw/v1/{config.station_id}/events/#") as sub:
        async with running(Gateway(config)) as gw:
            started = time.monotonic()
            alert_id = await raise_alert(gw, sub)
            await tap(gw, "hp-1")  # a press while it waits joins the same alert
            await sub.wait_for(lambda m: any(p["kind"] == "alert.escalated" for _, p in m))
            waited = time.monotonic() - started
    escalated = next(p for p in sub.events() if p["kind"] == "alert.escalated")
    assert escalated["body"]["alert_id"] == alert_id
    assert escalated["class"] == "P0"  # raised from P1 as the config says (escalate_to)
    assert escalated["body"]["escalated"] is True and escalated["body"]["escalations"] == 1
    assert escalated["body"]["press_count"] == 2
    assert waited >= 1.0
    assert len({p["body"]["alert_id"] for p in sub.events()}) == 1


async def test_a_press_after_an_escalation_keeps_the_escalation(
    broker: Mosquitto, tmp_path: Path
) -> None:
    """The press logic knows what the rider did; the escalation is the alert book's. A press
    that re-announces an escalated alert must not take the class, the flag or the reason
    back: the book owns them."""
    config = lifecycle_config(tmp_path, broker.url, ack_timeout_s=1.0)
    async with subscribe(broker.port, f"stationgw/v1/{config.station_id}/events/#") as sub:
        async with running(Gateway(config)) as gw:
            alert_id = await raise_alert(gw, sub)
            await sub.wait_for(lambda m: any(p["kind"] == "alert.escalated" for _, p in m))
            await tap(gw, "hp-1")
            await sub.wait_for(lambda m: any(p["kind"] == "help_point.repeat" for _, p in m))
    repeat = next(p for p in sub.events() if p["kind"] == "help_point.repeat")
    assert repeat["body"]["alert_id"] == alert_id and repeat["body"]["press_count"] == 2
    assert repeat["class"] == "P0"  # not back to the press's P1
    assert repeat["body"]["escalated"] is True and repeat["body"]["escalations"] >= 1
    assert repeat["body"]["evidence"][0] == "button pressed"
    assert "not acknowledged within 1s" in repeat["body"]["evidence"]


async def _command(dispatcher: aiomqtt.Client, station: str, payload: bytes) -> None:
    await dispatcher.publish(f"stationgw/v1/{station}/commands", payload, qos=1)


async def test_bad_commands_are_rejected_with_a_reason_and_change_nothing(
    station: Station,
) -> None:
    gw, sub, dispatcher = station
    sid = gw.config.station_id
    alert_id = await raise_alert(gw, sub)
    good = make_command(sid, alert_id, "acknowledge").wire()
    cases: list[tuple[str, bytes]] = [
        ("malformed", b"{not json"),
        ("malformed", b"\xff\xfe\x00garbage"),
        ("oversized", json.dumps({**good, "note": "x" * 10_000}).encode()),
        ("schema", json.dumps({**good, "action": "explode"}).encode()),
        ("schema", json.dumps({**good, "command_id": None}).encode()),
        ("schema", json.dumps([1, 2, 3]).encode()),
        ("wrong_station", json.dumps({**good, "command_id": uuid.uuid4().hex,
                                      "station": "elsewhere"}).encode()),
        ("stale", json.dumps({**good, "command_id": uuid.uuid4().hex,
                              "issued_at": time.time() - 3600}).encode()),
        ("unknown_alert", json.dumps({**good, "command_id": uuid.uuid4().hex,
                                      "alert_id": "no-such-alert"}).encode()),
    ]
    for _, payload in cases:
        await _command(dispatcher, sid, payload)
    await sub.wait_for(lambda m: len(replies(sub)) >= len(cases))
    assert [r["reason"] for r in replies(sub)] == [reason for reason, _ in cases]
    assert all(r["status"] == "rejected" and r["detail"] for r in replies(sub))
    assert unit(gw, "hp-1").lamp.state == "sent"  # nothing changed
    assert states(sub, alert_id) == ["open"]
    # the real command works, and its replay is a no-op answered "replay"
    await _command(dispatcher, sid, json.dumps(good).encode())
    await _command(dispatcher, sid, json.dumps(good).encode())
    await sub.wait_for(lambda m: len(replies(sub)) >= len(cases) + 2)
    assert [r["status"] for r in replies(sub)[-2:]] == ["applied", "rejected"]
    assert replies(sub)[-1]["reason"] == "replay"
    await asyncio.sleep(0.3)
    assert states(sub, alert_id) == ["open", "acknowledged"]
    assert gw.health.counters["commands_rejected_replay"] == 1
    assert gw.health.counters["commands_rejected_malformed"] == 2


async def test_restart_keeps_open_alerts_and_lamp_states(
    broker: Mosquitto, tmp_path: Path, dispatcher: aiomqtt.Client
) -> None:
    config = lifecycle_config(tmp_path, broker.url)
    sid = config.station_id
    async with subscribe(broker.port, f"stationgw/v1/{sid}/events/#") as sub:
        async with running(Gateway(config)) as gw:
            await asyncio.wait_for(gw.publisher.connected.wait(), 10)
            acked = await raise_alert(gw, sub, "hp-1")
            waiting = await raise_alert(gw, sub, "hp-2")
            await send_command(dispatcher, "stationgw/v1", make_command(sid, acked,
                                                                        "acknowledge"))
            await lamp_becomes(gw, "hp-1", "acknowledged")
        async with running(Gateway(config)) as gw:
            assert unit(gw, "hp-1").lamp.state == "acknowledged"
            assert unit(gw, "hp-2").lamp.state == "sent"
            await asyncio.wait_for(gw.publisher.connected.wait(), 10)
            # still open: a press on hp-2 joins its waiting alert, and dispatch can resolve it
            await tap(gw, "hp-2")
            await sub.wait_for(lambda m: any(p["kind"] == "help_point.repeat" for _, p in m))
            repeat = next(p for p in sub.events() if p["kind"] == "help_point.repeat")
            assert repeat["body"]["alert_id"] == waiting
            assert repeat["body"]["press_count"] == 2
            await send_command(dispatcher, "stationgw/v1", make_command(sid, acked, "resolve"))
            await lamp_becomes(gw, "hp-1", "idle")
