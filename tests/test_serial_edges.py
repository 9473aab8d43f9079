"""The serial line is hostile: an echoing line, a chattering board and a flooding board
cannot make a dead board look alive, bury dispatch in events, or grow the daemon's memory.

Each runs a simulated board on a real pty against the gateway and a real Mosquitto; the
coalescing rules are also swept with hypothesis, without I/O.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
from collections.abc import AsyncIterator
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from firmware_bridge import Button, Fault, Reading
from firmware_bridge.simulator import BoardSimulator
from gateway.core.boardfaults import FaultDebounce
from gateway.core.model import Event
from gateway.daemon import Gateway
from gateway.health import Health
from gateway.inputs.boards import BOARD_QUEUE_LIMIT, Boards
from gateway.outbox.sqlite import Row
from gateway.testing.daemon import running
from gateway.testing.mosquitto import Mosquitto
from tests.helpers import Subscriber, station_config, subscribe, unit

Station = tuple[Gateway, Subscriber, BoardSimulator]
WAIT = 20.0


@pytest.fixture
async def station(broker: Mosquitto, tmp_path: Path) -> AsyncIterator[Station]:
    port = tmp_path / "by-id" / "usb-sim-panel-if00"
    port.parent.mkdir()
    config = station_config(
        tmp_path, [broker.url],
        sensors=[{"id": "panel", "port": str(port), "location": "platform 2",
                  "telemetry": [{"channel": "spl", "min_interval_s": 0.01, "deadband": 0}]}],
        help_points=[{"id": "hp-1", "board": "panel", "button": "hp1"}],
    )
    async with (
        subscribe(broker.port, f"stationgw/v1/{config.station_id}/events/#") as sub,
        BoardSimulator(port, device_id="panel-01", lamps=("hp1",)) as board,
        running(Gateway(config)) as gw,
    ):
        await sub.wait_for(lambda m: any(p["kind"] == "device.online" for _, p in m), WAIT)
        await board.wait_until(lambda: board.lamps == {"hp1": "idle"})
        yield gw, sub, board


def counters(gw: Gateway) -> dict[str, int]:
    assert gw.boards is not None
    return gw.boards.counters()["panel"]


async def until(check: Any, timeout: float = WAIT) -> None:
    async with asyncio.timeout(timeout):
        while not check():
            await asyncio.sleep(0.05)


# ----------------------------------------------------------------------------------- echo


async def test_a_dead_board_on_an_echoing_line_goes_offline_and_the_echo_is_a_fault(
    station: Station,
) -> None:
    gw, sub, board = station
    board.dead, board.echo = True, True  # the MCU is gone; the transceiver echoes
    await until(lambda: "device_offline:panel" in gw.health.faults)
    # The echo of what the gateway writes to the dead board is named too (it may be seen
    # just after the board is given up, on a slow machine).
    await until(lambda: "device_echo:panel" in gw.health.faults)
    assert counters(gw)["echoes"] >= 1
    # The rider's help point no longer claims to take calls.
    await until(lambda: unit(gw, "hp-1").lamp.state == "fault")
    # The event goes through the outbox and the broker: it may land after the lamp changed.
    with contextlib.suppress(TimeoutError):
        await until(lambda: any(p["kind"] == "device.offline" for p in sub.events()))
    offline = [p for p in sub.events() if p["kind"] == "device.offline"]
    assert offline, "dispatch was not told"


async def test_a_live_board_on_an_echoing_line_stays_online_and_takes_presses(
    station: Station,
) -> None:
    gw, sub, board = station
    board.echo = True
    await until(lambda: "device_echo:panel" in gw.health.faults)
    echoes = counters(gw)["echoes"]
    board.press("hp1")
    await sub.wait_for(lambda m: any(p["kind"] == "help_point.press" for _, p in m), WAIT)
    await asyncio.sleep(3.5)  # past the offline deadline (3 heartbeats)
    assert "device_offline:panel" not in gw.health.faults
    assert counters(gw)["echoes"] > echoes
    board.echo = False


# ------------------------------------------------------------------------ fault chatter


async def test_fault_chatter_is_coalesced_and_its_last_state_goes_out(station: Station) -> None:
    _gw, sub, board = station
    frames = 2000
    for i in range(frames):
        board.fault("tamper", "door", "set" if i % 2 == 0 else "clear", f"n{i}")
        if i % 40 == 0:
            await asyncio.sleep(0.005)  # let the pty drain: a UART loses what it cannot take
    board.fault("tamper", "door", "set", "final")
    assert board.dropped_bytes == 0, "the pty dropped frames: the count below would not hold"
    await sub.wait_for(lambda m: any(
        p["kind"] == "device.fault" and p["body"]["detail"] == "final" for _, p in m), WAIT)
    faults = [p for p in sub.events() if p["kind"] == "device.fault"]
    assert len(faults) <= 4, [f["body"] for f in faults]  # one at once, then one per 5 s hold
    assert faults[-1]["body"]["state"] == "set"
    # Every frame is accounted for: reported, or counted in the report that followed it.
    assert sum(1 + f["body"]["coalesced"] for f in faults) == frames + 1
    assert faults[-1]["body"]["coalesced"] > 100


# ------------------------------------------------------------------------ a reading flood


async def test_a_reading_flood_over_the_pty_lets_a_press_through(station: Station) -> None:
    gw, sub, board = station
    for i in range(6000):
        board.reading("spl", 50 + i % 40, "dB")
        if i == 3000:
            board.press("hp1")
        if i % 20 == 0:
            await asyncio.sleep(0.002)  # as fast as the pty takes it, and no faster
    assert board.dropped_bytes == 0, "the pty dropped frames (the line, not the gateway)"
    await sub.wait_for(lambda m: any(p["kind"] == "help_point.press" for _, p in m), WAIT)
    assert gw.boards is not None
    await until(lambda: gw.boards is not None and gw.boards.boards["panel"].queue.empty())


def test_the_board_queue_is_bounded_and_never_drops_a_button(tmp_path: Path) -> None:
    """Frames faster than the rules task runs (here: it does not run at all) fill the
    queue to its bound; the rest are counted; a button in the middle still reaches its help
    point."""
    config = station_config(tmp_path, ["mqtt://127.0.0.1:1"], sensors=[
        {"id": "panel", "port": str(tmp_path / "tty")}])
    health = Health()

    async def accept(event: Event) -> Row:
        raise AssertionError("nothing may be accepted while the rules task is stopped")

    boards = Boards(config, accept, health)
    board = boards.boards["panel"]
    presses: list[str] = []
    board.buttons["hp1"] = lambda event, now: presses.append(event)
    sent = 10 * BOARD_QUEUE_LIMIT
    for i in range(sent):
        if i == sent // 2:
            boards.frame(board.link, "dev", Button(seq=0, button="hp1", event="press"))
        if i % 2:
            boards.frame(board.link, "dev", Reading(seq=0, sensor="spl", value=Decimal(i),
                                                    unit="dB"))
        else:
            boards.frame(board.link, "dev", Fault(seq=0, code="sensor", source=f"s{(i // 2) % 50}",
                                                  state="set"))
    assert board.queue.qsize() <= BOARD_QUEUE_LIMIT
    assert presses == ["press"]
    dropped = health.counters["board_frames_dropped:panel"]
    # Queued or counted: every reading, and the first report of each of the 50 fault
    # sources (their later frames are held by the debounce, not queued).
    assert board.queue.qsize() + dropped == sent // 2 + 50
    assert dropped > 0
    boards.offline(board.link, "dev", "test")  # control items are never dropped
    assert board.queue.qsize() == BOARD_QUEUE_LIMIT + 1


# ------------------------------------------------------------- the coalescing rules, swept


def _fault(source: str, state: str) -> Fault:
    return Fault(seq=0, code="tamper", source=source, state=state)  # type: ignore[arg-type]


@settings(max_examples=300, deadline=None)
@given(st.lists(st.tuples(st.sampled_from(["a", "b", "c"]), st.sampled_from(["set", "clear"]),
                          st.floats(min_value=0, max_value=3)), min_size=1, max_size=300))
def test_debounce_reports_at_most_once_per_hold_and_never_hides_the_last_state(
    frames: list[tuple[str, str, float]],
) -> None:
    debounce = FaultDebounce(hold_s=5.0)
    now = 0.0
    reports: list[tuple[float, Fault, int]] = []
    last: dict[str, str] = {}
    for source, state, gap in frames:
        now += gap
        reports += [(now, f, n) for f, n in debounce.due(now)]
        reports += [(now, f, n) for f, n in debounce.offer(_fault(source, state), now)]
        last[source] = state
    now += 5.0
    reports += [(now, f, n) for f, n in debounce.due(now)]
    assert debounce.deadline() is None
    for source, state in last.items():
        times = [t for t, f, _ in reports if f.source == source]
        assert all(b - a >= 5.0 - 1e-9 for a, b in itertools.pairwise(times)), times
        told = [f.state for _, f, _ in reports if f.source == source]
        assert told[-1] == state
    assert sum(1 + n for _, _, n in reports) == len(frames)  # every frame is accounted for
