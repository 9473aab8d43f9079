"""Serial boards (sensors and help-point controllers), wired into the gateway.

Each configured board gets a `firmware_bridge.BoardLink` that keeps its port open (reopening
it by its stable path when the adapter vanishes) and speaks the protocol. The link's callbacks
run on the loop and must not await, so they queue what happened; one task per board turns it
into events: sensor alerts, telemetry, faults, and the board going offline (a device-offline
fault is published, in the spirit of Sparkplug's DDEATH) and coming back.

Help points wired to a board: their BTN frames go to the help point's press logic (the same
as a GPIO button's edges, `button_handler`), and their lamps are `BoardLamp`s, which send the
lamp's state as a LAMP command until the board ACKs it, and again after every WELCOME.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, Literal, NoReturn

from firmware_bridge import Button, ButtonEvent, Fault, Hello, Nak, Reading
from firmware_bridge.backoff import backoff_delay
from firmware_bridge.errors import (
    CommandTimeoutError,
    CommandUnsupportedError,
    DeviceOfflineError,
)
from firmware_bridge.link import (
    BoardEvent,
    BoardLink,
    LinkEvents,
    LinkState,
)
from gateway.config.models import Sensor, StationConfig
from gateway.core.boardfaults import FaultDebounce
from gateway.core.lamp import LampState
from gateway.core.model import (
    DeviceFaultBody,
    DeviceOfflineBody,
    DeviceOnlineBody,
    Event,
    EventBody,
    Priority,
    SensorPlace,
    SensorReadingBody,
)
from gateway.core.sensors import SensorHappening, SensorRules
from gateway.health import Health

log = logging.getLogger(__name__)

Accept = Callable[[Event], Awaitable[object]]  # the outbox's accept (its row unused here)
#: Takes a board button's event (press, hold, release) at a `time.monotonic()`.
ButtonHandler = Callable[[ButtonEvent, float], None]
#: Told the ids of help points whose correlation rules just became active.
CorrelationListener = Callable[[list[str]], None]
#: Told (help point id, True) when the board a help point is wired to goes offline, and
#: (help point id, False) when it is back.
BoardStateListener = Callable[[str, bool], None]

#: Waits before sending a lamp state again after a NAK or no answer: doubling, capped.
LAMP_RETRY_S = 1.0
LAMP_RETRY_MAX_S = 30.0
#: Readings and fault reports waiting for a board's rules task: beyond this they are dropped
#: and counted. Button events never wait here (they go straight to their help point), and a
#: board going online or offline is always queued.
BOARD_QUEUE_LIMIT = 256


class BoardLamp:
    """A help point's lamp on a board: the gateway names the state, the board shows it.

    `show()` (the `gateway.core.lamp.LampOutput` the help point's `Lamp` drives) only records the
    state; `run()` sends it as a LAMP command until the board ACKs it. The newest state
    wins: one that changes while a command is in flight is sent next. After every WELCOME
    (`resend`) the state is sent again, as the protocol asks, because a board that restarted
    or lost the gateway shows `fault` on its own. A NAK, no answer, or a board that did not
    list the `lamp` capability is a fault `board_lamp:<help point>` in health until an ACK;
    a NAK or no answer is retried with backoff (`LAMP_RETRY_S` doubling to
    `LAMP_RETRY_MAX_S`), since the rider must not be left with a stale lamp.
    """

    def __init__(self, help_point: str, board: Board, lamp_id: str, health: Health) -> None:
        self.help_point = help_point
        self.board = board
        self.lamp_id = lamp_id
        self.health = health
        self.wanted: LampState = "idle"
        self.acked: LampState | None = None  # what the board ACKed last in this session
        self._wake = asyncio.Event()

    @property
    def fault_code(self) -> str:
        """The health fault this lamp raises when the board will not show its state."""
        return f"board_lamp:{self.help_point}"

    def show(self, state: LampState) -> None:
        """Show `state` (sent as soon as the board can take it)."""
        self.wanted = state
        self._wake.set()

    def resend(self) -> None:
        """A new session: the board forgot what it showed, so send the state again."""
        self.acked = None
        self._wake.set()

    async def run(self) -> NoReturn:
        """Send the wanted state whenever it differs from what the board ACKed."""
        link = self.board.link
        while True:
            await self._wake.wait()
            self._wake.clear()
            failures = 0
            while self.wanted != self.acked and link.device is not None:
                outcome = await self._send(link, self.wanted)
                if outcome == "wait":
                    break
                if outcome == "retry":
                    delay = backoff_delay(failures, LAMP_RETRY_S, LAMP_RETRY_MAX_S)
                    failures += 1
                    # A new state or a new session cuts the wait short.
                    with contextlib.suppress(TimeoutError):
                        async with asyncio.timeout(delay):
                            await self._wake.wait()
                    self._wake.clear()
                else:
                    failures = 0

    async def _send(self, link: BoardLink, state: LampState) -> Literal["ok", "retry", "wait"]:
        """One LAMP command: shown, retry after a while, or wait for the next change."""
        where = f"help point {self.help_point}: lamp {self.lamp_id} on board {self.board.sensor.id}"
        try:
            answer = await link.set_lamp(self.lamp_id, state)
        except DeviceOfflineError:
            return "wait"  # sent again after the next WELCOME
        except CommandUnsupportedError as exc:
            self.health.raise_fault(self.fault_code, f"{where} cannot be lit: {exc}")
            return "wait"  # sent again after the next WELCOME (new firmware, new caps)
        except CommandTimeoutError as exc:
            self.health.count("board_lamp_timeouts")
            self.health.raise_fault(self.fault_code, f"{where}: state {state} not confirmed: {exc}")
            return "retry"
        if isinstance(answer, Nak):
            self.health.count("board_lamp_naks")
            self.health.raise_fault(
                self.fault_code, f"{where} refused state {state}: {answer.code} {answer.detail}"
            )
            return "retry"
        self.acked = state
        self.health.clear_fault(self.fault_code)
        log.info("%s shows %s", where, state)
        return "ok"


@dataclass
class Board:
    """One sensor board: its link, its rules, and what its link reported."""

    sensor: Sensor
    link: BoardLink
    rules: SensorRules
    queue: asyncio.Queue[tuple[str, Any]] = field(default_factory=asyncio.Queue)
    device_id: str | None = None
    buttons: dict[str, ButtonHandler] = field(default_factory=dict)  # by button id
    lamps: list[BoardLamp] = field(default_factory=list)
    faults: FaultDebounce = field(default_factory=FaultDebounce)
    dropped: int = 0  # readings and fault reports dropped because the queue was full


class Boards(LinkEvents):
    """Every configured sensor board. Run `await boards.run()` in the daemon's TaskGroup."""

    def __init__(
        self, config: StationConfig, accept: Accept, health: Health, **link_options: Any
    ) -> None:
        self.config = config
        self._accept = accept
        self.health = health
        self.boards: dict[str, Board] = {}
        self._by_link: dict[int, Board] = {}
        self.correlation_listeners: list[CorrelationListener] = []
        self.offline_listeners: list[BoardStateListener] = []
        for sensor in config.sensors:
            link = BoardLink(sensor.port, sensor.baud, self, **link_options)
            board = Board(sensor, link, SensorRules.from_config(sensor))
            self.boards[sensor.id] = board
            self._by_link[id(link)] = board

    async def run(self) -> NoReturn:
        """Keep every link up and turn what the boards say into events."""
        async with asyncio.TaskGroup() as tg:
            for board in self.boards.values():
                tg.create_task(board.link.run(), name=f"board.{board.sensor.id}.link")
                tg.create_task(self._drive(board), name=f"board.{board.sensor.id}.rules")
                for lamp in board.lamps:
                    tg.create_task(lamp.run(), name=f"board.{board.sensor.id}.lamp.{lamp.lamp_id}")
        raise AssertionError("unreachable")  # pragma: no cover

    def help_point(self, hp_id: str, board_id: str, button: str, lamp: str,
                   handler: ButtonHandler) -> BoardLamp:
        """Wire a help point to a board: its button's events go to `handler`.

        Returns the help point's lamp on the board. Call before `run()`.
        """
        board = self.boards[board_id]
        board.buttons[button] = handler
        board_lamp = BoardLamp(hp_id, board, lamp, self.health)
        board.lamps.append(board_lamp)
        return board_lamp

    def correlations(self, help_point: str) -> list[tuple[Priority, str]]:
        """Active correlation rules of boards at this help point: (class, evidence)."""
        found = []
        for board in self.boards.values():
            if help_point in board.sensor.help_points:
                found += board.rules.correlations()
        return found

    def counters(self) -> dict[str, dict[str, int]]:
        """Each board link's counters (frames, rejections, gaps, resets, reopens...)."""
        return {sensor_id: board.link.counters() for sensor_id, board in self.boards.items()}

    # ------------------------------------------------------------ link callbacks (no await)

    def _board(self, link: BoardLink) -> Board:
        return self._by_link[id(link)]

    def state(self, link: BoardLink, state: LinkState, detail: str) -> None:
        """Link state for health."""
        self.health.link(f"serial:{self._board(link).sensor.id}", f"{state} ({detail})")

    def online(self, link: BoardLink, hello: Hello) -> None:
        """A board said HELLO and was welcomed: it shows its lamps' states again."""
        board = self._board(link)
        board.queue.put_nowait(("online", hello))
        self._tell_offline(board, False)
        for lamp in board.lamps:
            lamp.resend()

    def offline(self, link: BoardLink, device_id: str, reason: str) -> None:
        """A board went silent or its port went away.

        Its buttons count as released: a release sent meanwhile is lost, and the next press
        must start a press, not look like a bounce of the old one.
        """
        board = self._board(link)
        board.queue.put_nowait(("offline", (device_id, reason)))
        now = time.monotonic()
        for handler in board.buttons.values():
            handler("release", now)
        self._tell_offline(board, True)  # the board shows `fault` by itself; so does its status

    def _tell_offline(self, board: Board, offline: bool) -> None:
        for lamp in board.lamps:
            for listener in self.offline_listeners:
                listener(lamp.help_point, offline)

    def refused(self, link: BoardLink, hello: Hello, reason: str) -> None:
        """A board speaks a protocol version this gateway does not."""
        sensor = self._board(link).sensor
        self.health.raise_fault(
            f"device_refused:{sensor.id}",
            f"board {hello.device_id} on {sensor.port} refused: {reason}",
        )

    def frame(self, link: BoardLink, device_id: str, frame: BoardEvent) -> None:
        """A reading, button event or fault. Buttons go straight to their help point."""
        board = self._board(link)
        if isinstance(frame, Button):
            handler = board.buttons.get(frame.button)
            if handler is None:
                log.warning("board %s (%s): button %r is not wired to a help point (add "
                            "board = %r, button = %r to one of the [[help_points]]); %s ignored",
                            board.sensor.id, device_id, frame.button, board.sensor.id,
                            frame.button, frame.event)
                self.health.count("board_buttons_unknown")
                return
            handler(frame.event, time.monotonic())
            return
        if isinstance(frame, Fault):
            reports = board.faults.offer(frame, time.monotonic())
            if not reports and board.queue.empty():
                board.queue.put_nowait(("wake", None))  # a change is held: its deadline counts
            for report in reports:
                self._enqueue(board, ("fault", report))
            return
        self._enqueue(board, ("frame", frame))

    def _enqueue(self, board: Board, item: tuple[str, Any]) -> None:
        if board.queue.qsize() < BOARD_QUEUE_LIMIT:
            board.queue.put_nowait(item)
            return
        board.dropped += 1
        self.health.count(f"board_frames_dropped:{board.sensor.id}")
        if board.dropped == 1 or board.dropped % 1000 == 0:
            log.warning("board %s sends faster than its rules keep up: %d readings or fault "
                        "reports dropped so far (button events are never dropped)",
                        board.sensor.id, board.dropped)

    def echo(self, link: BoardLink, active: bool, detail: str) -> None:
        """The line echoes the gateway's frames: a fault while it lasts."""
        sensor = self._board(link).sensor
        if active:
            self.health.count("device_echo")
            self.health.raise_fault(f"device_echo:{sensor.id}", f"board {sensor.id}: {detail}")
        else:
            self.health.clear_fault(f"device_echo:{sensor.id}")

    # ------------------------------------------------------------ turning it into events

    async def _drive(self, board: Board) -> NoReturn:
        while True:
            deadlines = [d for d in (board.rules.deadline(), board.faults.deadline())
                         if d is not None]
            timeout = max(0.0, min(deadlines) - time.monotonic()) if deadlines else None
            correlating = board.rules.correlating()
            try:
                async with asyncio.timeout(timeout):
                    what, item = await board.queue.get()
            except TimeoutError:
                for happening in board.rules.tick(time.monotonic()):
                    await self._sensor_event(board, happening)
            else:
                await self._handle(board, what, item)
            for report in board.faults.due(time.monotonic()):
                await self._fault(board, *report)
            if board.rules.correlating() - correlating:
                self._correlated(board)

    async def _handle(self, board: Board, what: str, item: Any) -> None:
        """One item off a board's queue: it came online or went offline, a reading, a fault."""
        if what == "online":
            await self._online(board, item)
        elif what == "offline":
            await self._offline(board, *item)
        elif isinstance(item, Reading):
            for happening in board.rules.reading(
                item.sensor, float(item.value), item.unit, time.monotonic()
            ):
                await self._sensor_event(board, happening)
        elif what == "fault":
            await self._fault(board, *item)

    def _correlated(self, board: Board) -> None:
        """A correlation rule became active: requests open at its help points are raised."""
        if board.sensor.help_points:
            for listener in self.correlation_listeners:
                listener(list(board.sensor.help_points))

    def _place(self, board: Board) -> SensorPlace:
        sensor = board.sensor
        return {"sensor": sensor.id, "device_id": board.device_id, "location": sensor.location,
                "platform": sensor.platform}

    async def _emit(self, board: Board, kind: str, default: Priority, body: EventBody) -> None:
        priority = self.config.priority_for(kind, board.sensor.id, default)
        await self._accept(Event(kind, board.sensor.id, priority, body))

    async def _online(self, board: Board, hello: Hello) -> None:
        was_offline = f"device_offline:{board.sensor.id}" in self.health.faults
        board.device_id = hello.device_id
        self.health.clear_fault(f"device_offline:{board.sensor.id}")
        self.health.clear_fault(f"device_refused:{board.sensor.id}")
        log.info("board %s online: %s firmware %s", board.sensor.id, hello.device_id,
                 hello.firmware)
        online: DeviceOnlineBody = {
            **self._place(board), "firmware": hello.firmware,
            "capabilities": list(hello.capabilities), "back": was_offline,
        }
        await self._emit(board, "device.online", Priority.P3, online)

    async def _offline(self, board: Board, device_id: str, reason: str) -> None:
        self.health.raise_fault(
            f"device_offline:{board.sensor.id}",
            f"board {device_id} ({board.sensor.location or board.sensor.port}) offline: {reason}",
        )
        self.health.count("device_offline")
        offline: DeviceOfflineBody = {**self._place(board), "reason": reason}
        await self._emit(board, "device.offline", Priority.P2, offline)

    async def _fault(self, board: Board, fault: Fault, coalesced: int) -> None:
        body: DeviceFaultBody = {
            **self._place(board), "code": fault.code, "fault_source": fault.source,
            "state": fault.state, "detail": fault.detail, "coalesced": coalesced,
        }
        await self._emit(board, "device.fault", Priority.P2, body)

    async def _sensor_event(self, board: Board, happening: SensorHappening) -> None:
        body: SensorReadingBody = {
            **self._place(board), "channel": happening.channel, "value": happening.value,
            "unit": happening.unit, "label": happening.label,
        }
        await self._accept(Event(happening.kind, board.sensor.id, happening.priority, body))
