"""Press semantics of one help point, as a sans-I/O state machine.

Feed it raw button edges (`edge`) and the passing of time (`tick`, whenever `deadline`
says); it returns what happened. It never reads a clock or touches a pin, so every rule
is testable with plain numbers.

- Debounce: a press counts on its leading edge (no added latency); it ends only once the
  line has stayed released for `bounce_time_s`. Chatter and bounce are one press.
- A press with no open request raises a crisis request (P1 by default).
- Presses while the request waits for dispatch's acknowledgement, or within
  `repeat_window_s` of its last press, coalesce into it: the press count rises, and at
  `escalate_after_presses` the class is raised (P0 by default).
- Holding past `hold_time_s` upgrades the same request to an emergency (P0); no new request.
  A board that times holds itself reports them with `hold`, to the same effect.
- Held past `stuck_after_s`, the button is reported stuck once; the fault clears on release.

The machine keeps only what the rider did (`Request`: the presses, their times, the hold)
and the class and evidence its rules give that. The alert itself, with everything else that
raises it (sensors, escalation) and dispatch's part, is `gateway.core.alerts.AlertBook`'s.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field, replace
from typing import Literal

from gateway.core.model import Priority, cite

#: A button event: from a GPIO pin's edges, or a serial board's BTN frame (same words).
ButtonEvent = Literal["press", "hold", "release"]

Kind = Literal[
    "help_point.press",
    "help_point.repeat",
    "help_point.hold",
    "help_point.stuck",
    "help_point.unstuck",
]


@dataclass(frozen=True)
class PressRules:
    """Timing and class rules for one help point."""

    bounce_time_s: float = 0.05
    hold_time_s: float = 2.0
    repeat_window_s: float = 60.0
    escalate_after_presses: int = 3
    stuck_after_s: float = 30.0
    press_class: Priority = Priority.P1
    hold_class: Priority = Priority.P0
    repeat_class: Priority = Priority.P0
    stuck_class: Priority = Priority.P2


@dataclass(frozen=True)
class Request:
    """What the rider did about the request a help point has open.

    `priority` and `evidence` are what the press rules make of it (a press, repeated presses,
    a hold); the alert book raises the alert by them and keeps its class and evidence.
    """

    alert_id: str
    priority: Priority
    press_count: int
    first_press: float  # the caller's clock (monotonic in the daemon)
    last_press: float
    held: bool = False
    escalated: bool = False  # pressed `escalate_after_presses` times
    evidence: tuple[str, ...] = ()


@dataclass(frozen=True)
class Happening:
    """Something to publish: a new or updated request, or a stuck fault raised or cleared."""

    kind: Kind
    request: Request | None = None


@dataclass
class HelpPointLogic:
    """The state machine. Times are seconds on one monotonic clock chosen by the caller."""

    rules: PressRules
    request: Request | None = None
    pressed: bool = False  # debounced state
    stuck: bool = False
    raw_pressed: bool = False
    awaiting_ack: bool = False  # dispatch has not acknowledged the open request yet
    _press_at: float = 0.0
    _release_at: float | None = None  # line went high here; release once stable
    chatter_edges: int = field(default=0)

    def edge(self, pressed: bool, now: float) -> list[Happening]:
        """A raw edge from the pin (pressed = line low on a pulled-up button)."""
        if pressed == self.raw_pressed:
            return []
        self.raw_pressed = pressed
        if pressed:
            if self.pressed:  # bounce while pressed: the press goes on
                self.chatter_edges += 1
                self._release_at = None
                return []
            return self._press(now)
        if self.pressed:
            self._release_at = now
        return []

    def deadline(self) -> float | None:
        """When `tick` must next be called, or None if nothing is pending."""
        times = []
        if self._release_at is not None:
            times.append(self._release_at + self.rules.bounce_time_s)
        if self.pressed and self._release_at is None:
            if self.request is not None and not self.request.held:
                times.append(self._press_at + self.rules.hold_time_s)
            if not self.stuck:
                times.append(self._press_at + self.rules.stuck_after_s)
        return min(times) if times else None

    def tick(self, now: float) -> list[Happening]:
        """Let time pass: releases settle, holds and stuck buttons are detected."""
        out: list[Happening] = []
        if self._release_at is not None:
            # Compare with the same sums `deadline` returns, so a tick at it always fires.
            if now >= self._release_at + self.rules.bounce_time_s:
                self._release_at = None
                self.pressed = False
                if self.stuck:
                    self.stuck = False
                    out.append(Happening("help_point.unstuck", self.request))
            return out
        if not self.pressed:
            return out
        if now >= self._press_at + self.rules.hold_time_s:
            out += self._held(f"held for {self.rules.hold_time_s:g}s")
        if not self.stuck and now >= self._press_at + self.rules.stuck_after_s:
            self.stuck = True
            out.append(Happening("help_point.stuck", self.request))
        return out

    def button(
        self, event: ButtonEvent, now: float, *, debounced: bool = False
    ) -> list[Happening]:
        """A button event taken off a queue, stamped `now` when it happened.

        What fell due before it happens first (`tick(now)`): a release that settled before
        this press makes it a new press even when both waited in the queue. A `debounced`
        source (a serial board, which debounces and reports press, hold, release) may lose a
        frame on the line: a press while the button is still down means the release was
        lost, so it ends the old press and starts a new one instead of counting as a bounce.
        """
        out: list[Happening] = []
        due = self.deadline()
        if due is not None and due <= now:
            out += self.tick(now)
        if event == "hold":
            return out + self.hold()
        if event == "press" and debounced and self.raw_pressed:
            out += self.edge(False, now) + self.tick(now + self.rules.bounce_time_s)
        return out + self.edge(event == "press", now)

    def hold(self) -> list[Happening]:
        """The button's own controller says it is held (a serial board's BTN hold).

        Upgrades the open request at once, as the hold timer would; nothing happens unless
        the button is down and its request is not held already.
        """
        if not self.pressed or self._release_at is not None:
            return []
        return self._held("held (reported by its board)")

    def _held(self, evidence: str) -> list[Happening]:
        if self.request is None or self.request.held:
            return []
        self.request = replace(
            self.request,
            held=True,
            priority=min(self.request.priority, self.rules.hold_class),
            evidence=cite(self.request.evidence, evidence),
        )
        return [Happening("help_point.hold", self.request)]

    def _press(self, now: float) -> list[Happening]:
        self.pressed = True
        self._press_at = now
        self._release_at = None
        request = self.request
        joins = request is not None and (
            self.awaiting_ack or now - request.last_press <= self.rules.repeat_window_s
        )
        if request is None or not joins:
            self.awaiting_ack = True
            self.request = Request(
                alert_id=str(uuid.uuid4()),
                priority=self.rules.press_class,
                press_count=1,
                first_press=now,
                last_press=now,
                evidence=("button pressed",),
            )
            return [Happening("help_point.press", self.request)]
        self.request = self._counted(replace(request, press_count=request.press_count + 1,
                                             last_press=now))
        return [Happening("help_point.repeat", self.request)]

    def _counted(self, request: Request) -> Request:
        """`request` escalated by its press count, once it reaches `escalate_after_presses`."""
        count = request.press_count
        if count < self.rules.escalate_after_presses or request.escalated:
            return request
        return replace(
            request,
            escalated=True,
            priority=min(request.priority, self.rules.repeat_class),
            evidence=cite(request.evidence, f"pressed {count} times"),
        )

    # Named transitions for what dispatch does to the open request: every change of the
    # state machine's fields is made here (h11's rule), never from outside.

    def acknowledged(self, alert_id: str) -> None:
        """Dispatch acknowledged (or assigned) the request: presses no longer join it for
        want of an acknowledgement, only within the repeat window."""
        if self.request is not None and self.request.alert_id == alert_id:
            self.awaiting_ack = False

    def restore(
        self, alert_id: str, *, press_count: int, first_press: float, last_press: float,
        held: bool, awaiting_ack: bool,
    ) -> Request:
        """After a restart: what the rider had done about the request that was open, as the
        outbox kept it. Its class and evidence follow from that by the rules again."""
        request = Request(alert_id, self.rules.press_class, max(press_count, 1), first_press,
                          last_press, evidence=("button pressed",))
        if held:
            request = replace(request, held=True,
                              priority=min(request.priority, self.rules.hold_class))
        self.request = self._counted(request)
        self.awaiting_ack = awaiting_ack
        return self.request

    def close(self, alert_id: str | None = None) -> None:
        """Forget the open request (dispatch resolved or cancelled it); with `alert_id`,
        only if it is that one."""
        if alert_id is None or (self.request is not None and self.request.alert_id == alert_id):
            self.request = None
            self.awaiting_ack = False
