"""Sensor boards on serial links, wired into the gateway.

Each configured sensor gets a `firmware_bridge.BoardLink` that keeps its port open (reopening
it by its stable path when the adapter vanishes) and speaks the protocol. The link's callbacks
run on the loop and must not await, so they queue what happened; one task per board turns it
into events: sensor alerts, telemetry, faults, and the board going offline (a device-offline
fault is published, in the spirit of Sparkplug's DDEATH) and coming back.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, NoReturn

from firmware_bridge import Fault, Hello, Reading
from firmware_bridge.link import BoardEvent, BoardLink, LinkEvents, LinkState
from gateway.config import Sensor, StationConfig
from gateway.health import Health
from gateway.model import Event, Priority
from gateway.outbox import Row
from gateway.sensors import SensorHappening, SensorRules

log = logging.getLogger(__name__)

Accept = Callable[[Event], Awaitable[Row]]


@dataclass
class Board:
    """One sensor board: its link, its rules, and what its link reported."""

    sensor: Sensor
    link: BoardLink
    rules: SensorRules
    queue: asyncio.Queue[tuple[str, Any]] = field(default_factory=asyncio.Queue)
    device_id: str | None = None


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
        raise AssertionError("unreachable")  # pragma: no cover

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
        """A board said HELLO and was welcomed."""
        self._board(link).queue.put_nowait(("online", hello))

    def offline(self, link: BoardLink, device_id: str, reason: str) -> None:
        """A board went silent or its port went away."""
        self._board(link).queue.put_nowait(("offline", (device_id, reason)))

    def refused(self, link: BoardLink, hello: Hello, reason: str) -> None:
        """A board speaks a protocol version this gateway does not."""
        sensor = self._board(link).sensor
        self.health.raise_fault(
            f"device_refused:{sensor.id}",
            f"board {hello.device_id} on {sensor.port} refused: {reason}",
        )

    def frame(self, link: BoardLink, device_id: str, frame: BoardEvent) -> None:
        """A reading, button event or fault."""
        self._board(link).queue.put_nowait(("frame", frame))

    # ------------------------------------------------------------ turning it into events

    async def _drive(self, board: Board) -> NoReturn:
        while True:
            deadline = board.rules.deadline()
            timeout = None if deadline is None else max(0.0, deadline - time.monotonic())
            try:
                async with asyncio.timeout(timeout):
                    what, item = await board.queue.get()
            except TimeoutError:
                for happening in board.rules.tick(time.monotonic()):
                    await self._sensor_event(board, happening)
                continue
            if what == "online":
                await self._online(board, item)
            elif what == "offline":
                await self._offline(board, *item)
            elif isinstance(item, Reading):
                for happening in board.rules.reading(
                    item.sensor, float(item.value), item.unit, time.monotonic()
                ):
                    await self._sensor_event(board, happening)
            elif isinstance(item, Fault):
                await self._fault(board, item)
            else:
                log.info("board %s: button frames are not wired to help points yet: %s",
                         board.sensor.id, item)
                self.health.count("board_buttons_ignored")

    def _place(self, board: Board) -> dict[str, Any]:
        sensor = board.sensor
        return {"sensor": sensor.id, "device_id": board.device_id, "location": sensor.location,
                "platform": sensor.platform}

    async def _emit(self, board: Board, kind: str, default: Priority, body: dict[str, Any]) -> None:
        priority = self.config.priority_for(kind, board.sensor.id, default)
        await self._accept(Event(kind, board.sensor.id, priority, self._place(board) | body))

    async def _online(self, board: Board, hello: Hello) -> None:
        was_offline = f"device_offline:{board.sensor.id}" in self.health.faults
        board.device_id = hello.device_id
        self.health.clear_fault(f"device_offline:{board.sensor.id}")
        self.health.clear_fault(f"device_refused:{board.sensor.id}")
        log.info("board %s online: %s firmware %s", board.sensor.id, hello.device_id,
                 hello.firmware)
        await self._emit(board, "device.online", Priority.P3, {
            "firmware": hello.firmware, "capabilities": list(hello.capabilities),
            "back": was_offline,
        })

    async def _offline(self, board: Board, device_id: str, reason: str) -> None:
        self.health.raise_fault(
            f"device_offline:{board.sensor.id}",
            f"board {device_id} ({board.sensor.location or board.sensor.port}) offline: {reason}",
        )
        self.health.count("device_offline")
        await self._emit(board, "device.offline", Priority.P2, {"reason": reason})

    async def _fault(self, board: Board, fault: Fault) -> None:
        await self._emit(board, "device.fault", Priority.P2, {
            "code": fault.code, "fault_source": fault.source, "state": fault.state,
            "detail": fault.detail,
        })

    async def _sensor_event(self, board: Board, happening: SensorHappening) -> None:
        await self._accept(Event(happening.kind, board.sensor.id, happening.priority,
                                 self._place(board) | {
                                     "channel": happening.channel, "value": happening.value,
                                     "unit": happening.unit, "label": happening.label,
                                 }))
