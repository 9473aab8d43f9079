"""The station's help points: press logic, alerts and lamps, on GPIO or on serial boards.

The pins are `gateway.inputs.gpio`'s and the boards `gateway.inputs.boards`'s; both hand
button events to an `EdgeBridge`. Everything after that runs on the loop and is the same for
both: the press logic (`gateway.core.presses`), the outbox, and the lamp (`gateway.core.lamp`).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, NoReturn

from gateway.config.models import HelpPoint, StationConfig
from gateway.core.lamp import Lamp, projected
from gateway.core.model import AlertDetails, AlertRecord, Event, HelpPointPlace, Priority
from gateway.core.presses import Happening, HelpPointLogic, PressRules, Request
from gateway.errors import PinFactoryError
from gateway.inputs.gpio import EdgeBridge, open_pins
from gateway.outbox.sqlite import Row
from gateway.station.lifecycle import Lifecycle, alert_body

if TYPE_CHECKING:  # the serial stack is imported only where boards are configured
    from gateway.inputs.boards import Boards

log = logging.getLogger(__name__)

Accept = Callable[[Event], Awaitable[Row]]
FaultHook = Callable[[str, str | None], None]  # (code, message or None to clear)
# Active sensor correlations at a help point: (class to raise its request to, evidence).
Correlate = Callable[[str], list[tuple[Priority, str]]]


def press_rules(config: StationConfig, hp: HelpPoint) -> PressRules:
    """The press rules of one help point, classes taken from the config's rules.

    A board debounces its buttons itself, so its releases count at once.
    """
    return PressRules(
        bounce_time_s=0.0 if hp.on_board else hp.bounce_time_s,
        hold_time_s=hp.hold_time_s,
        repeat_window_s=config.press.repeat_window_s,
        escalate_after_presses=config.press.escalate_after_presses,
        stuck_after_s=config.press.stuck_after_s,
        press_class=config.priority_for("help_point.press", hp.id, Priority.P1),
        hold_class=config.priority_for("help_point.hold", hp.id, Priority.P0),
        repeat_class=config.priority_for("help_point.repeat", hp.id, Priority.P0),
        stuck_class=config.priority_for("help_point.stuck", hp.id, Priority.P2),
    )


def _place(hp: HelpPoint) -> HelpPointPlace:
    return {"help_point": hp.id, "location": hp.location, "platform": hp.platform}


@dataclass
class HelpPointUnit:
    """One help point: its gpiozero devices, press logic and lamp."""

    config: HelpPoint
    logic: HelpPointLogic
    lamp: Lamp
    bridge: EdgeBridge
    devices: list[Any] = field(default_factory=list)
    button: Any = None


class HelpPoints:
    """All help points of the station. Use as an async context manager, then `run()`."""

    def __init__(
        self,
        config: StationConfig,
        accept: Accept,
        lifecycle: Lifecycle,
        fault: FaultHook,
        *,
        pin_factory: Any,
        correlate: Correlate | None = None,
        boards: Boards | None = None,
    ) -> None:
        self.config = config
        self._correlate = correlate
        self._boards = boards
        self._accept_event = accept
        self._lifecycle = lifecycle
        self._fault = fault
        self.pin_factory = pin_factory
        self.units: dict[str, HelpPointUnit] = {}

    async def __aenter__(self) -> HelpPoints:
        loop = asyncio.get_running_loop()
        try:
            for hp in self.config.help_points:
                if hp.on_board:
                    self.units[hp.id] = self._board_unit(hp, loop)
            self._gpio_units([hp for hp in self.config.help_points if not hp.on_board], loop)
        except BaseException:
            self._close()
            raise
        log.info("help points ready: %s", ", ".join(self.units) or "none")
        return self

    def _board_unit(self, hp: HelpPoint, loop: asyncio.AbstractEventLoop) -> HelpPointUnit:
        boards = self._boards
        if boards is None or hp.board not in boards.boards or hp.button is None:
            raise PinFactoryError(f"help point {hp.id}: board {hp.board!r} is not running")
        bridge = EdgeBridge(loop)
        output = boards.help_point(hp.id, hp.board, hp.button, hp.board_lamp, bridge.put)
        logic = HelpPointLogic(press_rules(self.config, hp))
        lamp = Lamp(hp.id, output)
        lamp.set_fault(True, "board_offline")  # until the board says HELLO
        return HelpPointUnit(hp, logic, lamp, bridge)

    def _gpio_units(self, help_points: list[HelpPoint], loop: asyncio.AbstractEventLoop) -> None:
        for hp in help_points:
            bridge = EdgeBridge(loop)
            pins = open_pins(hp, self.config.lamp, self.config.sounder, self.pin_factory, bridge)
            self.units[hp.id] = HelpPointUnit(
                hp, HelpPointLogic(press_rules(self.config, hp)), Lamp(hp.id, pins.output),
                bridge, pins.devices, pins.button,
            )

    async def __aexit__(self, *exc: object) -> None:
        self._close()

    def _close(self) -> None:
        for unit in self.units.values():
            for device in unit.devices:
                device.close()

    async def run(self) -> NoReturn:
        """Drive every help point until cancelled."""
        async with asyncio.TaskGroup() as tg:
            for unit in self.units.values():
                tg.create_task(self._drive(unit), name=f"helppoint.{unit.config.id}")
        raise AssertionError("unreachable")  # pragma: no cover

    async def _drive(self, unit: HelpPointUnit) -> NoReturn:
        while True:
            deadline = unit.logic.deadline()
            timeout = None if deadline is None else max(0.0, deadline - time.monotonic())
            try:
                async with asyncio.timeout(timeout):
                    event, at = await unit.bridge.queue.get()
            except TimeoutError:
                happenings = unit.logic.tick(time.monotonic())
            else:
                if event == "correlated":
                    await self._corroborated(unit)
                    continue
                happenings = unit.logic.button(event, at, debounced=unit.config.on_board)
            for happening in happenings:
                await self._raise(unit, happening)

    def on_board_offline(self, hp_id: str, offline: bool) -> None:
        """Boards listener: while its board is offline a help point cannot take calls."""
        unit = self.units.get(hp_id)
        if unit is not None:
            unit.lamp.set_fault(offline, "board_offline")

    def on_correlation(self, help_points: list[str]) -> None:
        """Boards listener: a sensor at these help points started to corroborate requests."""
        for hp_id in help_points:
            unit = self.units.get(hp_id)
            if unit is not None:
                unit.bridge.put("correlated", time.monotonic())

    async def _raise(self, unit: HelpPointUnit, happening: Happening) -> None:
        hp = unit.config
        rules = unit.logic.rules
        place = _place(hp)
        if happening.kind == "help_point.stuck":
            self._fault(
                f"help_point_stuck:{hp.id}",
                f"help point {hp.id} ({hp.location or 'no location'}) held for over "
                f"{rules.stuck_after_s:g}s: button stuck?",
            )
            unit.lamp.set_fault(True)
            await self._accept_event(Event(happening.kind, hp.id, rules.stuck_class, place))
            return
        if happening.kind == "help_point.unstuck":
            self._fault(f"help_point_stuck:{hp.id}", None)
            unit.lamp.set_fault(False)
            await self._accept_event(Event(happening.kind, hp.id, Priority.P3, place))
            return
        request = happening.request
        assert request is not None
        await self._announce(unit, happening.kind, self._raised(unit, request))

    def _correlations(self, unit: HelpPointUnit) -> tuple[Priority | None, list[str]]:
        """The most urgent class the sensors' active correlation rules at this help point
        raise its request to (None if none is active), and their evidence."""
        active = self._correlate(unit.config.id) if self._correlate else []
        return min((p for p, _ in active), default=None), [evidence for _, evidence in active]

    def _raised(self, unit: HelpPointUnit, request: Request) -> AlertRecord:
        """Hand what the rider did, and the sensors' corroboration, to the alert book; its
        record (the alert's one owner) is what is announced."""
        hp = unit.config
        now_wall, now_mono = time.time(), time.monotonic()
        priority, corroboration = self._correlations(unit)
        details: AlertDetails = {
            **_place(hp),
            "press_count": request.press_count,
            "first_press": round(now_wall - (now_mono - request.first_press), 3),
            "last_press": round(now_wall - (now_mono - request.last_press), 3),
            "held": request.held,
            "escalated": request.escalated,
            "evidence": [*request.evidence, *corroboration],
        }
        return self._lifecycle.raised(
            request.alert_id, hp.id, min(request.priority, priority or request.priority),
            details,
        )

    async def _corroborated(self, unit: HelpPointUnit) -> None:
        """A correlation started while a request is open: re-announce it, raised."""
        request = unit.logic.request
        priority, corroboration = self._correlations(unit)
        if request is None or priority is None:
            return  # no open request: the next press picks the correlation up
        record = self._lifecycle.corroborated(request.alert_id, priority, corroboration)
        if record is not None:
            log.info("help point %s: request alert_id=%s corroborated: %s", unit.config.id,
                     request.alert_id, "; ".join(corroboration))
            await self._announce(unit, "alert.correlated", record)

    async def _announce(self, unit: HelpPointUnit, kind: str, record: AlertRecord) -> None:
        event = Event(kind, unit.config.id, record.priority, alert_body(record), alert=record)
        row = await self._accept_event(event)
        if row.durable:  # held in memory only, it is not accepted yet: the lamp waits
            self._lifecycle.book.announced(record.alert_id, "accepted")
        self._project(unit)

    def _project(self, unit: HelpPointUnit) -> None:
        """Show the help point's current request on its lamp, as the alert book has it."""
        request = unit.logic.request
        if request is None:
            unit.lamp.follow(None, "idle")
            return
        book = self._lifecycle.book
        record = book.open.get(request.alert_id)
        unit.lamp.follow(request.alert_id,
                         projected(record, book.delivery.get(request.alert_id)))

    def show(self, record: AlertRecord) -> None:
        """The alert's delivery moved on (the broker confirmed an event about it)."""
        unit = self.units.get(record.source)
        if unit is not None:
            self._project(unit)

    def on_alert_change(self, record: AlertRecord) -> None:
        """Alert book listener: dispatch acted on an alert, or it was escalated. The press
        logic hears only what changes how the rider's next press counts."""
        unit = self.units.get(record.source)
        if unit is None:
            return
        if record.closed:
            unit.logic.close(record.alert_id)
        elif record.state in ("acknowledged", "assigned"):
            unit.logic.acknowledged(record.alert_id)
        self._project(unit)

    def restore(self, record: AlertRecord) -> None:
        """After a restart: reopen a help point's alert (the book has it again) and show its
        lamp state again."""
        unit = self.units.get(record.source)
        if unit is None:
            return
        details = record.details
        now_wall, now_mono = time.time(), time.monotonic()

        def mono(key: str) -> float:
            return now_mono - (now_wall - float(details.get(key, now_wall)))

        unit.logic.restore(
            record.alert_id,
            press_count=int(details.get("press_count", 1)),
            first_press=mono("first_press"),
            last_press=mono("last_press"),
            held=bool(details.get("held", False)),
            awaiting_ack=record.state == "open",
        )
        self._project(unit)
