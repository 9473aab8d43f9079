"""The GPIO edge: gpiozero Buttons, LEDs and Buzzers, and the bridge from their threads.

gpiozero calls back from its own threads; `EdgeBridge.post` is the one place where those
threads meet the event loop. A help point on a serial board gets its button events from
`gateway.inputs.boards` on the loop (`EdgeBridge.put`). What follows on the loop (the press
logic, the alert, the lamp) is the station's (`gateway.station.helppoints`).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any, Literal

from gateway.config.models import BeepCue, HelpPoint, LampConfig, SounderConfig, StationConfig
from gateway.core.lamp import Cue, Lamp, LampState, Pattern, PatternOutput
from gateway.core.presses import ButtonEvent
from gateway.errors import PinFactoryError


def make_pin_factory(config: StationConfig) -> Any:
    """The gpiozero pin factory the config asks for (None: gpiozero's default)."""
    name: str = config.gpio_pin_factory
    if name == "auto":
        name = (os.environ.get("GPIOZERO_PIN_FACTORY") or "auto").lower()
    if name == "mock":
        from gpiozero.pins.mock import MockFactory, MockPWMPin  # noqa: PLC0415

        return MockFactory(pin_class=MockPWMPin)  # PWM-capable, so PWMLED lamps work too
    if name == "auto":
        return None
    try:
        if name == "lgpio":
            from gpiozero.pins.lgpio import LGPIOFactory  # noqa: PLC0415

            return LGPIOFactory()
        if name == "rpigpio":
            from gpiozero.pins.rpigpio import RPiGPIOFactory  # noqa: PLC0415

            return RPiGPIOFactory()
        if name == "pigpio":
            from gpiozero.pins.pigpio import PiGPIOFactory  # noqa: PLC0415

            return PiGPIOFactory()
    except (ImportError, OSError, RuntimeError) as exc:
        raise PinFactoryError(
            f"gpio_pin_factory {name!r} cannot be loaded: {exc} (on a Pi install the [pi] "
            "extra; elsewhere use gpio_pin_factory = 'mock')"
        ) from exc
    raise PinFactoryError(f"unknown pin factory {name!r} (use mock, lgpio, rpigpio or pigpio)")


def is_mock(factory: Any) -> bool:
    """True for gpiozero's MockFactory."""
    from gpiozero.pins.mock import MockFactory  # noqa: PLC0415

    return isinstance(factory, MockFactory)


#: What a help point's task is told: a button event, or that a sensor at its place started
#: corroborating its request.
Signal = ButtonEvent | Literal["correlated"]


class EdgeBridge:
    """Hands button events (press, release, hold) to the help point's task on the loop."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self.queue: asyncio.Queue[tuple[Signal, float]] = asyncio.Queue()

    def post(self, pressed: bool) -> None:
        """Called from any thread (gpiozero's): timestamp the edge now, process it on the loop."""
        event: ButtonEvent = "press" if pressed else "release"
        self.loop.call_soon_threadsafe(self.queue.put_nowait, (event, time.monotonic()))

    def put(self, event: Signal, at: float) -> None:
        """Called on the loop (a board's BTN frame, a correlation): process it in turn."""
        self.queue.put_nowait((event, at))


def _patterns(lamp: LampConfig) -> dict[LampState, Pattern]:
    return {
        "idle": Pattern(lamp.idle.on_s, lamp.idle.off_s),
        "accepted": Pattern(lamp.accepted.on_s, lamp.accepted.off_s),
        "sent": Pattern(lamp.sent.on_s, lamp.sent.off_s),
        "acknowledged": Pattern(lamp.acknowledged.on_s, lamp.acknowledged.off_s),
        "fault": Pattern(lamp.fault.on_s, lamp.fault.off_s),
    }


def _cues(sounder: SounderConfig) -> dict[LampState, Cue]:
    def cue(c: BeepCue) -> Cue:
        return Cue(c.beeps, c.on_s, c.off_s)

    return {
        "idle": cue(sounder.idle),
        "accepted": cue(sounder.accepted),
        "sent": cue(sounder.sent),
        "acknowledged": cue(sounder.acknowledged),
        "fault": cue(sounder.fault),
    }


@dataclass
class GpioPins:
    """The gpiozero devices of one help point, and its lamp and sounder as one output."""

    button: Any
    output: PatternOutput
    devices: list[Any] = field(default_factory=list)


def open_pins(
    hp: HelpPoint, lamp: LampConfig, sounder: SounderConfig, pin_factory: Any, bridge: EdgeBridge
) -> GpioPins:
    """Open one help point's pins; its button's edges go to `bridge`."""
    from gpiozero import LED, PWMLED, Button, Buzzer  # noqa: PLC0415 - only where GPIO is used
    from gpiozero.exc import BadPinFactory, GPIOZeroError  # noqa: PLC0415

    if hp.pin is None or hp.lamp_pin is None:  # the config's cross_check said so
        raise PinFactoryError(f"help point {hp.id}: needs pin and lamp_pin")
    devices: list[Any] = []
    try:
        # No driver debounce: lgpio and pigpio report an edge only once the level has been
        # stable for the debounce time, which would delay every press by bounce_time_s.
        # The press logic counts a press on its leading edge and debounces the release
        # itself, the same on every pin factory.
        button = Button(
            hp.pin, pull_up=True, bounce_time=None, hold_time=hp.hold_time_s,
            pin_factory=pin_factory,
        )
        devices.append(button)
        light = (PWMLED if hp.lamp_pwm else LED)(hp.lamp_pin, pin_factory=pin_factory)
        devices.append(light)
        buzzer = None
        if hp.sounder_pin is not None:
            buzzer = Buzzer(hp.sounder_pin, pin_factory=pin_factory)
            devices.append(buzzer)
    except BadPinFactory as exc:
        _close(devices)
        raise PinFactoryError(
            f"no GPIO pin factory could be loaded ({exc}); on a Pi install the [pi] extra "
            "(lgpio), elsewhere set gpio_pin_factory = 'mock'"
        ) from exc
    except GPIOZeroError as exc:
        _close(devices)
        raise PinFactoryError(f"help point {hp.id}: cannot set up its pins: {exc}") from exc
    button.when_pressed = lambda _d=None, b=bridge: b.post(True)
    button.when_released = lambda _d=None, b=bridge: b.post(False)
    output = PatternOutput(light, _patterns(lamp), buzzer, _cues(sounder))
    return GpioPins(button, output, devices)


def _close(devices: list[Any]) -> None:
    for device in devices:
        device.close()


@dataclass
class PinUnit:
    """One help point's pins with their lamp, and nothing behind them: what commissioning
    drives (`stationgw selftest` walks the lamp and waits for a press on the bridge)."""

    config: HelpPoint
    pins: GpioPins
    lamp: Lamp
    bridge: EdgeBridge

    @property
    def button(self) -> Any:
        return self.pins.button


@contextlib.contextmanager
def opened_pins(
    config: StationConfig, pin_factory: Any, loop: asyncio.AbstractEventLoop
) -> Iterator[dict[str, PinUnit]]:
    """Open the pins of every GPIO help point of `config`; closed again at the end."""
    units: dict[str, PinUnit] = {}
    try:
        for hp in config.help_points:
            if hp.on_board:
                continue
            bridge = EdgeBridge(loop)
            pins = open_pins(hp, config.lamp, config.sounder, pin_factory, bridge)
            units[hp.id] = PinUnit(hp, pins, Lamp(hp.id, pins.output), bridge)
        yield units
    finally:
        for unit in units.values():
            _close(unit.pins.devices)
