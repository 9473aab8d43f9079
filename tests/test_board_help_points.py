"""Help points wired to a serial board, end to end: a simulated help-point controller on a
real pty, the gateway, a real Mosquitto, and dispatch commands over it.

The board's BTN frames must follow the same press semantics as a GPIO button, and the
rider's lamp on the board must follow the call (LAMP commands, ACKed), through a replug.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiomqtt
import pytest

from dispatch.outbound import make_command, send_command
from firmware_bridge import Lamp
from firmware_bridge.simulator import BoardSimulator
from gateway.core.presses import HelpPointLogic, PressRules
from gateway.daemon import Gateway
from gateway.testing.daemon import running
from gateway.testing.mosquitto import Mosquitto
from tests.helpers import Subscriber, station_config, subscribe

Station = tuple[Gateway, Subscriber, BoardSimulator, aiomqtt.Client]
PREFIX = "stationgw/v1"


@pytest.fixture
async def station(broker: Mosquitto, tmp_path: Path) -> AsyncIterator[Station]:
    port = tmp_path / "by-id" / "usb-sim-panel-if00"
    port.parent.mkdir()
    config = station_config(
        tmp_path, [broker.url],
        sensors=[{
            "id": "panel-p2", "port": str(port), "location": "platform 2", "platform": "2",
            "help_points": ["hp-north"],
            "thresholds": [{"channel": "spl", "above": 85, "clear_at": 75, "class": "P0",
                            "correlate": True, "label": "loud"}],
        }],
        help_points=[
            {"id": "hp-north", "board": "panel-p2", "button": "hp1",
             "location": "platform 2 north", "platform": "2", "hold_time_s": 5},
            {"id": "hp-south", "board": "panel-p2", "button": "b2", "lamp": "l2",
             "location": "platform 2 south", "platform": "2"},
        ],
    )
    root = f"{PREFIX}/{config.station_id}/events/#"
    async with (
        subscribe(broker.port, root) as sub,
        aiomqtt.Client("127.0.0.1", broker.port,
                       protocol=aiomqtt.ProtocolVersion.V5) as dispatcher,
        BoardSimulator(port, device_id="panel-p2-01", lamps=("hp1", "l2")) as board,
        running(Gateway(config)) as gw,
    ):
        await sub.wait_for(lambda m: any(p["kind"] == "device.online" for _, p in m))
        # After WELCOME the gateway tells the board what each lamp shows: no call, so idle.
        await board.wait_until(lambda: board.lamps == {"hp1": "idle", "l2": "idle"})
        yield gw, sub, board, dispatcher


def events(sub: Subscriber, kind: str) -> list[dict[str, Any]]:
    return [p for p in sub.events() if p["kind"] == kind]


def lamp_frames(board: BoardSimulator, lamp: str) -> list[str]:
    """The states the gateway sent to one of the board's lamps, in order."""
    return [f.state for f in board.frames_of(Lamp) if f.lamp == lamp]


async def test_board_button_raises_a_request_and_the_board_lamp_follows_it(
    station: Station,
) -> None:
    gw, sub, board, dispatcher = station
    board.press("hp1")
    board.release("hp1")
    await sub.wait_for(lambda m: bool(events(sub, "help_point.press")))
    (press,) = events(sub, "help_point.press")
    assert press["class"] == "P1" and press["source"] == "hp-north"
    assert press["body"]["help_point"] == "hp-north"
    assert press["body"]["location"] == "platform 2 north"
    assert press["body"]["press_count"] == 1
    # accepted (committed), then sent (PUBACK): the board is told each, in order.
    await board.wait_until(lambda: board.lamps["hp1"] == "sent")
    assert lamp_frames(board, "hp1")[-2:] == ["accepted", "sent"]
    assert board.lamps["l2"] == "idle"  # the other help point's lamp is untouched
    alert_id = press["body"]["alert_id"]
    await send_command(dispatcher, PREFIX, make_command(gw.config.station_id, alert_id,
                                                        "acknowledge"))
    await board.wait_until(lambda: board.lamps["hp1"] == "acknowledged")
    await send_command(dispatcher, PREFIX, make_command(gw.config.station_id, alert_id,
                                                        "resolve"))
    await board.wait_until(lambda: board.lamps["hp1"] == "idle")
    assert gw.help_points is not None
    assert gw.help_points.units["hp-north"].lamp.state == "idle"
    assert not [f for f in gw.health.faults if f.startswith("board_lamp")]


async def test_board_hold_upgrades_the_same_request_to_an_emergency(station: Station) -> None:
    _gw, sub, board, _dispatcher = station
    board.press("hp1")
    board.hold("hp1")  # the board's own hold time, well before the gateway's 5 s
    board.release("hp1")
    await sub.wait_for(lambda m: bool(events(sub, "help_point.hold")), timeout=4)
    (press,), (hold,) = events(sub, "help_point.press"), events(sub, "help_point.hold")
    assert hold["class"] == "P0" and hold["requested_response"] == "emergency_services"
    assert hold["body"]["alert_id"] == press["body"]["alert_id"]
    assert hold["body"]["held"] is True
    assert "held (reported by its board)" in hold["body"]["evidence"]


async def test_repeated_board_presses_coalesce_even_when_a_release_is_lost(
    station: Station,
) -> None:
    gw, sub, board, _dispatcher = station
    board.press("b2")
    board.lose(1)  # the release frame is lost on the line: the gateway counts a gap
    board.press("b2")  # ... and this press must not be taken for a bounce of the first
    board.release("b2")
    board.press("b2")  # queued right behind a release: a new press, not a bounce
    board.release("b2")
    await sub.wait_for(lambda m: len(events(sub, "help_point.repeat")) == 2)
    (press,), repeats = events(sub, "help_point.press"), events(sub, "help_point.repeat")
    assert press["source"] == "hp-south"
    assert {r["body"]["alert_id"] for r in repeats} == {press["body"]["alert_id"]}
    assert [r["body"]["press_count"] for r in repeats] == [2, 3]
    await board.wait_until(lambda: board.lamps["l2"] == "sent")
    assert gw.boards is not None and gw.boards.counters()["panel-p2"]["lost"] == 1
    assert "help_point_stuck:hp-south" not in gw.health.faults


async def test_replugged_board_is_told_its_lamp_states_again(station: Station) -> None:
    gw, sub, board, _dispatcher = station
    board.press("hp1")
    board.release("hp1")
    await board.wait_until(lambda: board.lamps["hp1"] == "sent")
    await board.unplug()
    await sub.wait_for(lambda m: bool(events(sub, "device.offline")), timeout=20)
    # While the board is away its help points cannot take calls: the status says so too.
    assert gw.help_points is not None
    lamps = {hp: u.lamp.state for hp, u in gw.help_points.units.items()}
    assert lamps == {"hp-north": "fault", "hp-south": "fault"}
    board.plug()  # boots showing "fault" on every lamp until the gateway says otherwise
    assert board.lamps == {"hp1": "fault", "l2": "fault"}
    await board.wait_until(lambda: board.lamps == {"hp1": "sent", "l2": "idle"}, timeout_s=30)
    assert gw.help_points.units["hp-north"].lamp.state == "sent"
    board.press("hp1")  # the request is still open: this press joins it
    board.release("hp1")
    await sub.wait_for(lambda m: bool(events(sub, "help_point.repeat")))
    (press,), (repeat,) = events(sub, "help_point.press"), events(sub, "help_point.repeat")
    assert repeat["body"]["alert_id"] == press["body"]["alert_id"]


async def test_a_lamp_the_board_refuses_is_a_fault_until_it_is_shown(station: Station) -> None:
    gw, _sub, board, _dispatcher = station
    board.nak = ("failed", "lamp driver open circuit")
    board.press("hp1")
    board.release("hp1")
    await board.wait_until(lambda: "board_lamp:hp-north" in gw.health.faults)
    assert "open circuit" in gw.health.faults["board_lamp:hp-north"].message
    assert board.lamps["hp1"] == "idle"
    assert gw.health.counters["board_lamp_naks"] >= 1
    board.nak = None  # the lamp driver is repaired: the next retry shows the current state
    await board.wait_until(lambda: board.lamps["hp1"] == "sent")
    await board.wait_until(lambda: "board_lamp:hp-north" not in gw.health.faults)


async def test_a_correlation_that_starts_later_re_announces_the_open_request(
    station: Station,
) -> None:
    _gw, sub, board, _dispatcher = station
    board.press("hp1")
    board.release("hp1")
    await sub.wait_for(lambda m: bool(events(sub, "help_point.press")))
    (press,) = events(sub, "help_point.press")
    assert press["class"] == "P1"
    board.reading("spl", 92, "dB")  # a loud signal at the same place, after the press
    await sub.wait_for(lambda m: bool(events(sub, "alert.correlated")))
    (correlated,) = events(sub, "alert.correlated")
    assert correlated["body"]["alert_id"] == press["body"]["alert_id"]
    assert correlated["class"] == "P0"
    assert "loud 92 dB at platform 2" in correlated["body"]["evidence"]
    board.reading("spl", 95, "dB")  # the same correlation going on: nothing new to say
    board.reading("spl", 60, "dB")
    board.press("b2")  # hp-south is not at the sensor: its request is not raised
    board.release("b2")
    await sub.wait_for(lambda m: bool(events(sub, "help_point.press")[1:]))
    assert events(sub, "help_point.press")[1]["class"] == "P1"
    assert len(events(sub, "alert.correlated")) == 1


async def test_a_button_no_help_point_is_wired_to_is_counted_not_raised(
    station: Station,
) -> None:
    gw, sub, board, _dispatcher = station
    board.press("b9")
    board.release("b9")
    board.press("hp1")
    await sub.wait_for(lambda m: bool(events(sub, "help_point.press")))
    assert [p["source"] for p in events(sub, "help_point.press")] == ["hp-north"]
    assert gw.health.counters["board_buttons_unknown"] == 2


def test_a_board_hold_before_the_hold_time_upgrades_at_once() -> None:
    logic = HelpPointLogic(PressRules(bounce_time_s=0, hold_time_s=5))
    (press,) = logic.edge(True, 10.0)
    assert press.request is not None and press.request.priority.name == "P1"
    (hold,) = logic.hold()
    assert hold.kind == "help_point.hold" and hold.request is not None
    assert hold.request.held and hold.request.priority.name == "P0"
    assert logic.hold() == []  # held once
    assert logic.tick(15.0) == []  # and the hold timer has nothing left to do
    logic.edge(False, 16.0)
    logic.tick(16.0)
    assert logic.hold() == []  # released: a late hold frame changes nothing
