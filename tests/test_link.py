"""Board links end to end over real pseudo-terminals: what the gateway relies on.

A simulated board (firmware_bridge.simulator) sits behind a pty whose path is a symlink, as a
USB board sits behind /dev/serial/by-id/...; the link opens it with pyserial like a real port.
Unplugging closes the pty and removes the symlink; plugging in makes a new pty and repoints
the symlink. Heartbeats are 0.2 s here so that offline takes 0.6 s, not 3 s. Waits are
generous and assertions are about order and counts, never about how fast a machine is.
"""

from __future__ import annotations

import asyncio
import contextlib
import sys
from collections.abc import AsyncIterator, Callable
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest

from firmware_bridge import (
    Ack,
    BridgeError,
    Button,
    Fault,
    Heartbeat,
    Hello,
    Lamp,
    Nak,
    Reading,
    Refuse,
    TimeSync,
    Welcome,
    encode,
)
from firmware_bridge.errors import (
    CommandTimeoutError,
    CommandUnsupportedError,
    DeviceOfflineError,
    PortUnavailableError,
)
from firmware_bridge.link import (
    BoardEvent,
    BoardLink,
    LinkEvents,
    LinkState,
)
from firmware_bridge.simulator import BoardSimulator
from firmware_bridge.transport import open_serial

HB = 0.2  # heartbeat interval, both sides
WAIT = 10.0  # for anything that should happen; only a broken link takes this long
BAUD = 115200
UNIX = 1767225600


class Recorder(LinkEvents):
    """Keeps every event a link reports, in order, and lets a test wait for them."""

    def __init__(self) -> None:
        self.order: list[str] = []
        self.states: list[tuple[LinkState, str]] = []
        self.onlines: list[Hello] = []
        self.offlines: list[tuple[str, str, float]] = []  # device, reason, loop time
        self.refusals: list[tuple[Hello, str]] = []
        self.frames: list[tuple[str, BoardEvent]] = []
        self._changed = asyncio.Event()

    def _note(self, kind: str) -> None:
        self.order.append(kind)
        self._changed.set()

    def state(self, link: BoardLink, state: LinkState, detail: str) -> None:
        self.states.append((state, detail))
        self._note("state")

    def online(self, link: BoardLink, hello: Hello) -> None:
        self.onlines.append(hello)
        self._note("online")

    def offline(self, link: BoardLink, device_id: str, reason: str) -> None:
        self.offlines.append((device_id, reason, asyncio.get_running_loop().time()))
        self._note("offline")

    def refused(self, link: BoardLink, hello: Hello, reason: str) -> None:
        self.refusals.append((hello, reason))
        self._note("refused")

    def frame(self, link: BoardLink, device_id: str, frame: BoardEvent) -> None:
        self.frames.append((device_id, frame))
        self._note("frame")

    def transitions(self) -> list[str]:
        """online/offline/refused, in order."""
        return [k for k in self.order if k in ("online", "offline", "refused")]

    async def until(self, condition: Callable[[], bool], timeout_s: float = WAIT) -> None:
        """Wait until `condition()` holds; checked after every event."""
        async with asyncio.timeout(timeout_s):
            while not condition():
                self._changed.clear()
                await self._changed.wait()


async def eventually(condition: Callable[[], bool], timeout_s: float = WAIT) -> None:
    """Wait until `condition()` holds, for state with no event to wait on (counters)."""
    async with asyncio.timeout(timeout_s):
        while not condition():
            await asyncio.sleep(0.02)


@pytest.fixture
def link_path(tmp_path: Path) -> Path:
    """Where the board's port appears, like /dev/serial/by-id/usb-...-if00."""
    return tmp_path / "usb-station-board-if00"


def board(path: Path, **kwargs: Any) -> BoardSimulator:
    return BoardSimulator(path, heartbeat_interval_s=HB, hello_retry_s=HB, **kwargs)


@contextlib.asynccontextmanager
async def running(path: Path, **kwargs: Any) -> AsyncIterator[tuple[BoardLink, Recorder]]:
    """A link on `path` running in the background until the block ends."""
    recorder = Recorder()
    options: dict[str, Any] = {
        "heartbeat_interval_s": HB, "answer_timeout_s": 1.0, "reopen_initial_s": 0.05,
        "reopen_max_s": 0.4, "wall_clock": lambda: float(UNIX), **kwargs,
    }
    link = BoardLink(str(path), BAUD, recorder, **options)
    task = asyncio.create_task(link.run(), name="test.link")
    try:
        yield link, recorder
    finally:
        if task.done():
            task.result()  # run() ends only by raising: show why
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


def present(path: Path) -> bool:
    """Whether the symlink is there (dangling or not)."""
    return path.is_symlink() or path.exists()


def collapse(kinds: list[str]) -> list[str]:
    """Transitions with repeats merged: a board whose HELLO repeat crossed our WELCOME is
    welcomed twice (each HELLO starts a session), which is one `online` to the eye."""
    return [k for i, k in enumerate(kinds) if i == 0 or kinds[i - 1] != k]


async def welcomed(sim: BoardSimulator, events: Recorder) -> Hello:
    """Wait until the board runs and the link welcomed its latest HELLO (no repeat in flight)."""
    await events.until(lambda: bool(events.onlines) and events.onlines[-1].seq == sim.hello_seq)
    await sim.wait_until(lambda: sim.state == "running")
    return events.onlines[-1]


# ----------------------------------------------------------------------------- session


async def test_hello_is_welcomed_and_the_board_is_online(link_path: Path) -> None:
    async with board(link_path, device_id="hp-north-2", firmware="1.4.2") as sim, \
            running(link_path) as (link, events):
        hello = await welcomed(sim, events)
        assert (hello.device_id, hello.firmware, hello.protocol) == ("hp-north-2", "1.4.2", 1)
        assert link.state == "online"
        assert link.device == hello
        assert sim.frames_of(Welcome)[0].protocol == 1
        # After WELCOME: the time (the board lists `time`), and heartbeats both ways.
        await sim.wait_until(lambda: sim.clock_unix_s == UNIX)
        await sim.wait_until(lambda: len(sim.frames_of(Heartbeat)) >= 2)
        assert collapse([s for s, _ in events.states]) == ["open", "online"]
    # Cancelling the link is the gateway stopping, not the board going offline.
    assert collapse(events.transitions()) == ["online"]


async def test_newer_protocol_is_refused_with_a_reason(link_path: Path) -> None:
    async with board(link_path, protocol=2) as sim, running(link_path) as (link, events):
        await events.until(lambda: bool(events.refusals))
        hello, reason = events.refusals[0]
        assert hello.protocol == 2
        assert "protocol 2 is newer than this gateway speaks (1)" in reason
        await sim.wait_until(lambda: sim.state == "refused")
        refuse = sim.frames_of(Refuse)[0]
        assert (refuse.protocol, refuse.reason) == (1, reason)
        assert link.state == "refused"
        assert link.device is None
        # A refused board is not listened to.
        sim.send_raw(encode(Button(seq=40, button="hp1", event="press")))
        await eventually(lambda: link.counters()["unwelcomed"] == 1)
        assert link.counters()["refusals"] >= 1
        assert events.frames == []
        with pytest.raises(DeviceOfflineError):
            await link.set_lamp("hp1", "accepted")
    assert collapse(events.transitions()) == ["refused"]


async def test_buttons_readings_and_faults_arrive_in_order(link_path: Path) -> None:
    async with board(link_path, device_id="hp-2") as sim, running(link_path) as (_, events):
        await welcomed(sim, events)
        sim.press("hp1")
        sim.hold("hp1")
        sim.release("hp1")
        sim.reading("snd1", "71.20", "dB")
        sim.fault("tamper", "door1", "set", "lid open")
        await events.until(lambda: len(events.frames) == 5)
        assert {device for device, _ in events.frames} == {"hp-2"}
        btn = [(f.button, f.event) for _, f in events.frames if isinstance(f, Button)]
        assert btn == [("hp1", "press"), ("hp1", "hold"), ("hp1", "release")]
        reading = events.frames[3][1]
        assert isinstance(reading, Reading)
        assert (reading.sensor, reading.value, reading.unit) == ("snd1", Decimal("71.20"), "dB")
        fault = events.frames[4][1]
        assert isinstance(fault, Fault)
        assert (fault.code, fault.source, fault.state, fault.detail) == (
            "tamper", "door1", "set", "lid open")


async def test_events_before_welcome_are_sent_after_it(link_path: Path) -> None:
    async with board(link_path) as sim:
        sim.press("hp1")  # the board is still saying HELLO: it keeps the press
        async with running(link_path) as (_, events):
            await events.until(lambda: len(events.frames) == 1)
            assert events.order.index("online") < events.order.index("frame")


# -------------------------------------------------------------------- offline and back


async def test_silent_board_goes_offline_and_is_reported_back(link_path: Path) -> None:
    async with board(link_path) as sim, running(link_path, sync_time=False) as (link, events):
        await welcomed(sim, events)
        silenced_at = asyncio.get_running_loop().time()
        sim.heartbeats = False
        await events.until(lambda: bool(events.offlines))
        device, reason, offline_at = events.offlines[0]
        assert device == "sim-board-1"
        assert "no frame from board sim-board-1" in reason
        # Offline comes three intervals after its last frame, which was at most one interval
        # (plus whatever a busy machine adds) before they stopped: never at once.
        assert offline_at - silenced_at >= HB
        assert link.device is None
        assert link.state == "open"
        # The gateway goes silent too; the board notices, says HELLO and is back.
        sim.heartbeats = True
        await events.until(lambda: events.order[-1] == "online")
        assert collapse(events.transitions())[:3] == ["online", "offline", "online"]
        assert link.counters()["offline"] >= 1


async def test_unplug_and_replug_reopens_the_stable_path(link_path: Path) -> None:
    async with board(link_path) as sim, running(link_path) as (link, events):
        await welcomed(sim, events)
        await sim.unplug()
        assert not present(link_path)
        await events.until(lambda: bool(events.offlines))
        assert "port lost" in events.offlines[0][1]
        await eventually(lambda: link.counters()["open_failures"] >= 1)
        assert link.state == "missing"
        sim.plug()  # a new pty behind the same symlink: the device re-enumerated
        await welcomed(sim, events)
        assert collapse(events.transitions()) == ["online", "offline", "online"]
        counters = link.counters()
        assert (counters["opens"], counters["reopens"], counters["port_lost"]) == (2, 1, 1)
        # The board rebooted on replug, but frames lost while unplugged are no gap or reset.
        assert (counters["gaps"], counters["resets"]) == (0, 0)
        sim.press()
        await events.until(lambda: len(events.frames) == 1)


async def test_board_reset_mid_frame_starts_a_new_session(link_path: Path) -> None:
    async with board(link_path) as sim, running(link_path) as (link, events):
        await welcomed(sim, events)
        sim.reset(mid_frame=True)
        hello = await welcomed(sim, events)
        assert hello.seq == 0
        counters = link.counters()
        assert counters["truncated"] == 1
        assert counters["resets"] == 1
        assert "offline" not in events.order  # restarted, never offline
        sim.press()
        await events.until(lambda: len(events.frames) == 1)


async def test_gateway_restart_finds_a_running_board(link_path: Path) -> None:
    async with board(link_path) as sim:
        async with running(link_path) as (_, first):
            await welcomed(sim, first)
        before = len(sim.received)
        # A new gateway process: silent until HELLO, ignoring the board's heartbeats; the
        # board misses the gateway's, says HELLO again, and is welcomed.
        async with running(link_path) as (_, events):
            hello = await welcomed(sim, events)
            assert hello.seq > 0  # the board did not restart
            assert collapse(events.transitions()) == ["online"]
            # The new link's first frame is the WELCOME.
            assert isinstance(sim.received[before], Welcome)


async def test_another_board_on_the_same_port_replaces_the_first(link_path: Path) -> None:
    async with board(link_path, device_id="board-a") as sim, \
            running(link_path) as (_, events):
        await welcomed(sim, events)
        sim.device_id = "board-b"
        sim.reset(mid_frame=False)
        hello = await welcomed(sim, events)
        assert hello.device_id == "board-b"
        assert collapse(events.transitions()) == ["online", "offline", "online"]
        assert events.offlines[0][:2] == ("board-a", f"replaced by board board-b on {link_path}")


async def test_port_missing_at_start_is_retried_until_it_appears(link_path: Path) -> None:
    async with board(link_path, plugged=False) as sim, running(link_path) as (link, events):
        await eventually(lambda: link.counters()["open_failures"] >= 3)
        assert link.state == "missing"
        assert str(link_path) in link.detail
        sim.plug()
        await welcomed(sim, events)
        assert link.counters()["reopens"] == 0


async def test_open_serial_raises_port_unavailable_for_a_missing_port(tmp_path: Path) -> None:
    with pytest.raises(PortUnavailableError, match="no-such-board") as caught:
        await open_serial(tmp_path / "no-such-board", BAUD)
    assert isinstance(caught.value, BridgeError)
    assert isinstance(caught.value, OSError)
    assert caught.value.__cause__ is not None


# ------------------------------------------------------------------------ line quality


async def test_garbage_is_counted_and_the_next_frames_get_through(link_path: Path) -> None:
    async with board(link_path) as sim, running(link_path) as (link, events):
        await welcomed(sim, events)
        sim.send_raw(b"boot v1.4.2 ok\r\n$HB,7,up=3605*61EE\r\n$PING,3*D6D0\r\n\x00\xff$HB,")
        sim.press()
        await events.until(lambda: len(events.frames) == 1)
        counters = link.counters()
        assert counters["garbage_bytes"] >= len(b"boot v1.4.2 ok\r\n")
        assert (counters["bad_crc"], counters["unknown_type"], counters["truncated"]) == (1, 1, 1)
        assert "offline" not in events.order


async def test_gaps_and_duplicates_are_counted(link_path: Path) -> None:
    async with board(link_path) as sim, running(link_path) as (link, events):
        await welcomed(sim, events)
        sim.lose(3)
        sim.press()
        sim.repeat_last()  # the same press again: dropped
        sim.release()
        await events.until(lambda: len(events.frames) == 2)
        assert [f.event for _, f in events.frames if isinstance(f, Button)] == [
            "press", "release"]
        counters = link.counters()
        assert (counters["gaps"], counters["lost"], counters["duplicates"]) == (1, 3, 1)


# ---------------------------------------------------------------------------- commands


async def test_lamp_command_is_acked(link_path: Path) -> None:
    async with board(link_path) as sim, running(link_path, sync_time=False) as (link, events):
        await welcomed(sim, events)
        answer = await link.command(Lamp(seq=0, lamp="hp1", state="accepted"))
        assert isinstance(answer, Ack)
        assert answer.ref == sim.frames_of(Lamp)[0].seq
        assert sim.lamps["hp1"] == "accepted"
        assert link.counters()["acks"] == 1


async def test_nak_is_returned(link_path: Path) -> None:
    async with board(link_path) as sim, running(link_path, sync_time=False) as (link, events):
        await welcomed(sim, events)
        answer = await link.set_lamp("hp9", "accepted")
        assert isinstance(answer, Nak)
        assert (answer.code, answer.detail) == ("invalid", "no lamp hp9")
        sim.nak = ("busy", "self-test running")
        answer = await link.self_test("spkmic")
        assert isinstance(answer, Nak)
        assert answer.code == "busy"
        assert link.counters()["naks"] == 2


async def test_unanswered_command_is_repeated_with_the_same_seq(link_path: Path) -> None:
    async with board(link_path) as sim, running(link_path, sync_time=False) as (link, events):
        await welcomed(sim, events)
        sim.ignore_commands = 1
        answer = await link.set_lamp("hp1", "sent")
        assert isinstance(answer, Ack)
        first, second = sim.frames_of(Lamp)[:2]
        assert first == second  # same seq, same fields
        assert answer.ref == first.seq
        assert [c for c in sim.carried_out if isinstance(c, Lamp)] == [first]
        assert link.counters()["command_retries"] >= 1


async def test_command_without_answer_raises_after_every_attempt(link_path: Path) -> None:
    async with board(link_path) as sim, \
            running(link_path, sync_time=False, answer_timeout_s=0.3) as (link, events):
        await welcomed(sim, events)
        sim.ignore_commands = 99
        with pytest.raises(CommandTimeoutError, match="none of 3 attempts") as caught:
            await link.set_lamp("hp1", "acknowledged")
        assert isinstance(caught.value, BridgeError)
        await sim.wait_until(lambda: len(sim.frames_of(Lamp)) == 3)
        assert len({frame.seq for frame in sim.frames_of(Lamp)}) == 1
        assert link.counters()["command_timeouts"] == 1
        # The link is fine: the next command goes through.
        sim.ignore_commands = 0
        assert isinstance(await link.set_lamp("hp1", "idle"), Ack)


async def test_commands_need_an_online_board_that_listed_them(link_path: Path) -> None:
    async with board(link_path, capabilities=("btn", "time"), plugged=False) as sim, \
            running(link_path) as (link, events):
        with pytest.raises(DeviceOfflineError, match="no board online"):
            await link.set_lamp("hp1", "accepted")
        sim.plug()
        await welcomed(sim, events)
        with pytest.raises(CommandUnsupportedError, match="'lamp'"):
            await link.set_lamp("hp1", "accepted")
        assert sim.frames_of(Lamp) == []
        await sim.wait_until(lambda: bool(sim.frames_of(TimeSync)))


async def test_command_in_flight_fails_when_the_board_is_unplugged(link_path: Path) -> None:
    async with board(link_path) as sim, \
            running(link_path, sync_time=False, answer_timeout_s=5.0) as (link, events):
        await welcomed(sim, events)
        sim.ignore_commands = 1
        command = asyncio.create_task(link.set_lamp("hp1", "accepted"))
        await sim.wait_until(lambda: bool(sim.frames_of(Lamp)))
        await sim.unplug()
        with pytest.raises(DeviceOfflineError, match="went away"):
            await command


# ------------------------------------------------------------------------- command line


async def test_simulator_runs_from_the_command_line(link_path: Path) -> None:
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "firmware_bridge.simulator", "--link", str(link_path),
        "--device-id", "bench-1", "--heartbeat", str(HB),
        stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    try:
        async with running(link_path) as (_, events):
            await events.until(lambda: bool(events.onlines), timeout_s=20)
            assert events.onlines[0].device_id == "bench-1"
            assert proc.stdin is not None
            proc.stdin.write(b"press hp1\n")
            await events.until(lambda: len(events.frames) == 1)
            async with asyncio.timeout(WAIT):
                out, err = await proc.communicate(b"quit\n")
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.communicate()
    assert proc.returncode == 0, err.decode()
    assert b"< $WELCOME," in out
    assert not present(link_path)


def test_simulator_help_lists_its_commands() -> None:
    import subprocess

    result = subprocess.run(
        [sys.executable, "-m", "firmware_bridge.simulator", "--help"],
        capture_output=True, text=True, check=True, timeout=30,
    )
    assert "--link" in result.stdout
    assert "press|hold|release" in result.stdout
