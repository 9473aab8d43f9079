"""The rider's lamp and sounder: one state machine, shown as light and as sound.

The lamp is a projection of the help point's current alert (`projected`: its record and
delivery, owned by `gateway.core.alerts.AlertBook`) and never claims more than has happened:

    idle ──accepted (row committed)──> accepted ──PUBACK──> sent ──dispatch ack──> acknowledged
      ^                                                                                  │
      └───────────────────────────── resolved / cancelled ──────────────────────────────┘

A fault (stuck button) overlays its own pattern until it clears. States only move forward
for one alert, so a late or out-of-order confirmation can never make the lamp go back.
On GPIO (`PatternOutput`) each displayed state has its own light pattern and, where a
sounder is fitted, its own audible cue (ADA/ABA 708: audible and visual signals). On a serial
board (`gateway.inputs.boards.BoardLamp`) the gateway names the state and the board shows it.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal, Protocol

if TYPE_CHECKING:
    from gateway.core.alerts import Delivery
    from gateway.core.model import AlertRecord

log = logging.getLogger(__name__)

LampState = Literal["idle", "accepted", "sent", "acknowledged", "fault"]
_RANK: dict[LampState, int] = {"idle": 0, "accepted": 1, "sent": 2, "acknowledged": 3}


def projected(record: AlertRecord | None, delivery: Delivery | None) -> LampState:
    """What the lamp shows for an alert: its state as dispatch has it, else how far its
    announcement got. No alert, or a closed one, is idle."""
    if record is None or record.closed:
        return "idle"
    if record.state in ("acknowledged", "assigned"):
        return "acknowledged"
    if delivery == "sent":
        return "sent"
    return "accepted" if delivery == "accepted" else "idle"


@dataclass(frozen=True)
class Pattern:
    """A light pattern: on_s=0 is off, off_s=0 is solid, otherwise a blink."""

    on_s: float
    off_s: float


@dataclass(frozen=True)
class Cue:
    """An audible cue: `beeps` beeps of on_s with off_s gaps (0 beeps: silent)."""

    beeps: int
    on_s: float = 0.1
    off_s: float = 0.1


class LightOutput(Protocol):
    """What a pattern lamp needs of a gpiozero LED or PWMLED."""

    def on(self) -> None: ...
    def off(self) -> None: ...
    def blink(self, on_time: float, off_time: float) -> None: ...


class SoundOutput(Protocol):
    """What a pattern lamp needs of a gpiozero Buzzer."""

    def beep(self, on_time: float, off_time: float, n: int) -> None: ...


class LampOutput(Protocol):
    """Where a lamp's state is shown: GPIO pins (`PatternOutput`) or a serial board's lamp."""

    def show(self, state: LampState) -> None: ...


class PatternOutput:
    """A lamp on GPIO: each state is a light pattern and, with a sounder, an audible cue."""

    def __init__(
        self,
        light: LightOutput,
        patterns: dict[LampState, Pattern],
        sounder: SoundOutput | None = None,
        cues: dict[LampState, Cue] | None = None,
    ) -> None:
        self._light = light
        self._patterns = patterns
        self._sounder = sounder
        self._cues = cues or {}

    def show(self, state: LampState) -> None:
        """Start the state's pattern (and cue)."""
        pattern = self._patterns[state]
        if pattern.on_s == 0:
            self._light.off()
        elif pattern.off_s == 0:
            self._light.on()
        else:
            self._light.blink(on_time=pattern.on_s, off_time=pattern.off_s)
        cue = self._cues.get(state)
        if self._sounder is not None and cue is not None and cue.beeps > 0:
            self._sounder.beep(on_time=cue.on_s, off_time=cue.off_s, n=cue.beeps)


class Lamp:
    """One help point's lamp (and sounder), driven from its alert's state."""

    def __init__(self, name: str, output: LampOutput) -> None:
        self.name = name
        self._output = output
        self.alert_id: str | None = None
        self.alert_state: LampState = "idle"
        self.faults: set[str] = set()  # why the help point cannot take calls now
        self.shown: LampState | None = None
        self._show()

    @property
    def state(self) -> LampState:
        """What the lamp shows now."""
        return "fault" if self.faults else self.alert_state

    def follow(self, alert_id: str | None, state: LampState) -> None:
        """Show the help point's current alert (None: there is none) in `state`, its
        projection. For the same alert it only moves on, so that a late or reordered update
        can never make the lamp go back; idle (the alert closed) always shows."""
        if state == "idle":
            self.alert_id = None
            self.alert_state = "idle"
        elif alert_id != self.alert_id:
            self.alert_id = alert_id
            self.alert_state = state
        elif _RANK[state] > _RANK[self.alert_state]:
            self.alert_state = state
        self._show()

    def set_fault(self, active: bool, reason: str = "stuck") -> None:
        """Overlay (or remove) the fault pattern for one reason (a stuck button, a board that
        went offline); it shows while any reason holds."""
        if active:
            self.faults.add(reason)
        else:
            self.faults.discard(reason)
        self._show()

    def _show(self) -> None:
        state = self.state
        if state == self.shown:
            return
        self.shown = state
        self._output.show(state)
        log.info("lamp help_point=%s state=%s alert_id=%s", self.name, state, self.alert_id)
