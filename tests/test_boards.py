"""Sensor boards end to end: a simulated board on a real pty, the gateway, a real Mosquitto."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from firmware_bridge.simulator import BoardSimulator
from gateway.daemon import Gateway
from gateway.testing.daemon import running
from gateway.testing.mosquitto import Mosquitto
from tests.helpers import Subscriber, station_config, subscribe

Station = tuple[Gateway, Subscriber, BoardSimulator]


@pytest.fixture
async def station(broker: Mosquitto, tmp_path: Path) -> AsyncIterator[Station]:
    port = tmp_path / "by-id" / "usb-sim-edge-if00"
    port.parent.mkdir()
    config = station_config(tmp_path, [broker.url], sensors=[{
        "id": "edge-p1", "port": str(port), "location": "platform 1 edge", "platform": "1",
        "thresholds": [{"channel": "beam", "above": 1, "clear_at": 0.5, "min_duration_s": 0.3,
                        "class": "P0", "label": "edge intrusion"}],
        "telemetry": [{"channel": "spl", "min_interval_s": 0.01, "deadband": 5}],
    }])
    root = f"stationgw/v1/{config.station_id}/events/#"
    async with subscribe(broker.port, root) as sub, BoardSimulator(port) as board:
        async with running(Gateway(config)) as gw:
            await sub.wait_for(lambda m: any(p["kind"] == "device.online" for _, p in m))
            yield gw, sub, board


def kinds(sub: Subscriber) -> list[str]:
    return [p["kind"] for p in sub.events()]


async def test_sensor_readings_become_alerts_and_telemetry(station: Station) -> None:
    _gw, sub, board = station
    board.reading("spl", 62, "dB")
    board.reading("spl", 64, "dB")  # inside the deadband: not published
    board.reading("spl", 75, "dB")
    board.reading("beam", 1, "bool")
    await sub.wait_for(lambda m: "sensor.threshold" in kinds(sub))
    alert = next(p for p in sub.events() if p["kind"] == "sensor.threshold")
    assert alert["class"] == "P0" and alert["requested_response"] == "emergency_services"
    assert alert["body"]["label"] == "edge intrusion" and alert["body"]["sensor"] == "edge-p1"
    assert alert["body"]["device_id"] == board.device_id
    board.reading("beam", 0, "bool")
    await sub.wait_for(lambda m: "sensor.cleared" in kinds(sub))
    await sub.wait_for(lambda m: kinds(sub).count("sensor.reading") >= 2)
    readings = [p["body"]["value"] for p in sub.events() if p["kind"] == "sensor.reading"]
    assert readings == [62, 75]  # 64 is inside the deadband; 75 is sent once it is due
    assert all(p["class"] == "P3" for p in sub.events() if p["kind"] == "sensor.reading")


async def test_unplug_and_replug_publishes_offline_then_back(station: Station) -> None:
    gw, sub, board = station
    await board.unplug()
    await sub.wait_for(lambda m: "device.offline" in kinds(sub), timeout=20)
    offline = next(p for p in sub.events() if p["kind"] == "device.offline")
    assert offline["class"] == "P2" and offline["body"]["reason"]
    assert "device_offline:edge-p1" in gw.health.faults
    board.plug()  # a new pty behind the same stable path, as a re-enumerated USB adapter
    await sub.wait_for(lambda m: kinds(sub).count("device.online") >= 2, timeout=30)
    back = [p for p in sub.events() if p["kind"] == "device.online"][-1]
    assert back["body"]["back"] is True
    assert "device_offline:edge-p1" not in gw.health.faults
    assert gw.boards is not None and gw.boards.counters()["edge-p1"]["reopens"] >= 1


async def test_silent_board_goes_offline(station: Station) -> None:
    gw, sub, board = station
    board.heartbeats = False
    await sub.wait_for(lambda m: "device.offline" in kinds(sub), timeout=20)
    assert "device_offline:edge-p1" in gw.health.faults


async def test_board_reset_mid_frame_recovers(station: Station) -> None:
    gw, sub, board = station
    board.reset(mid_frame=True)
    board.reading("spl", 90, "dB")
    await sub.wait_for(lambda m: any(p["kind"] == "sensor.reading" and p["body"]["value"] == 90
                                     for _, p in m), timeout=20)
    assert gw.boards is not None
    counters = gw.boards.counters()["edge-p1"]
    assert counters["resets"] >= 1


async def test_link_quality_goes_out_in_the_retained_health_report(
    broker: Mosquitto, tmp_path: Path
) -> None:
    port = tmp_path / "by-id" / "usb-sim-crowd-if00"
    port.parent.mkdir()
    config = station_config(tmp_path, [broker.url], mqtt={"health_interval_s": 0.3},
                            sensors=[{"id": "crowd-p2", "port": str(port)}])
    health = f"stationgw/v1/{config.station_id}/health"
    async with (
        subscribe(broker.port, health) as sub,
        BoardSimulator(port) as board,
        running(Gateway(config)),
    ):
        await board.wait_until(lambda: board.state == "running")
        board.lose(2)  # two frames lost on the line: a gap
        board.reading("count", 40, "count")
        board.send_raw(b"$READ,99,sensor=count,value=41,unit=count*0000\r\n")  # bad CRC
        board.reset(mid_frame=True)  # the board restarts half-way through a frame

        def quality() -> dict[str, int]:
            boards = sub.messages[-1][1]["boards"] if sub.messages else {}
            return dict(boards.get("crowd-p2", {}))

        await sub.wait_for(lambda m: quality().get("resets", 0) >= 1
                           and quality().get("bad_crc", 0) >= 1, timeout=20)
    counters = quality()
    assert counters["gaps"] == 1 and counters["lost"] == 2
    assert counters["frames"] >= 3 and counters["online"] >= 2
