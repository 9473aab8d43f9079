"""The interactive console's screen, with no I/O: key names in, commands to send out, and
each frame rendered as text with ANSI attributes from the alert queue."""

from __future__ import annotations

import time
from collections import deque
from dataclasses import dataclass
from typing import Literal

from dispatch.console.options import TEAMS
from dispatch.console.queue import AlertQueue, AlertRow, Fault
from dispatch.inbound import printable
from gateway.core.commands import Action, Team
from gateway.core.model import Priority


@dataclass(frozen=True)
class Send:
    """A command the dispatcher asked for."""

    station: str
    alert_id: str
    action: Action
    team: Team | None = None
    eta_s: int | None = None


Mode = Literal["browse", "team", "eta"]
ANSI_CLEAR = "\x1b[H\x1b[2J"
_REVERSE, _RED, _RESET = "\x1b[7m", "\x1b[1;31m", "\x1b[0m"


def age(seconds: float) -> str:
    """`42s`, `3m05s`, `2h07m`."""
    s = max(0, int(seconds))
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m{s % 60:02d}s"
    return f"{s // 3600}h{s % 3600 // 60:02d}m"


class Screen:
    """The interactive console's state, keys and rendering, with no I/O."""

    def __init__(self, queue: AlertQueue, title: str = "") -> None:
        self.queue = queue
        self.title = title
        self.link = "connecting"
        self.mode: Mode = "browse"
        self.notes: deque[str] = deque(maxlen=3)
        self.stations: dict[str, str] = {}  # station -> "online" / "offline"
        self._index = 0
        self._selected: tuple[str, str] | None = None
        self._target: AlertRow | None = None  # the alert an assign prompt is about
        self._team: Team | None = None
        self._eta = ""

    def note(self, text: str) -> None:
        """Show a line in the message area (the newest three stay)."""
        self.notes.append(text)

    def rows(self) -> list[AlertRow]:
        """The queue, with the selection kept on the same alert as rows move."""
        rows = self.queue.rows()
        keys = [r.key for r in rows]
        if self._selected in keys:
            self._index = keys.index(self._selected)
        self._index = max(0, min(self._index, len(rows) - 1))
        self._selected = keys[self._index] if rows else None
        return rows

    def selected(self) -> AlertRow | None:
        """The highlighted alert."""
        rows = self.rows()
        return rows[self._index] if rows else None

    def key(self, key: str) -> Send | Literal["quit"] | None:
        """Handle one key; returns a command to send, "quit", or None."""
        if self.mode == "team":
            self._team_key(key)
            return None
        if self.mode == "eta":
            return self._eta_key(key)
        return self._browse_key(key)

    def _browse_key(self, key: str) -> Send | Literal["quit"] | None:
        rows = self.rows()
        if key in ("up", "k", "down", "j"):
            self._move(rows, -1 if key in ("up", "k") else 1)
            return None
        if key == "q":
            return "quit"
        if key not in ("a", "r", "s"):
            return None
        row = rows[self._index] if rows else None
        if row is None:
            self.note("no alert selected")
            return None
        if key == "a":
            return Send(row.station, row.alert_id, "acknowledge")
        if key == "r":
            return Send(row.station, row.alert_id, "resolve")
        self.mode, self._target, self._team, self._eta = "team", row, None, ""
        return None

    def _move(self, rows: list[AlertRow], step: int) -> None:
        if rows:
            self._index = max(0, min(self._index + step, len(rows) - 1))
            self._selected = rows[self._index].key

    def _team_key(self, key: str) -> None:
        if key == "esc":
            self.mode = "browse"
        elif key.isdigit() and 1 <= int(key) <= len(TEAMS):
            self._team = TEAMS[int(key) - 1]
            self.mode = "eta"

    def _eta_key(self, key: str) -> Send | None:
        if key == "esc":
            self.mode = "browse"
        elif key == "backspace":
            self._eta = self._eta[:-1]
        elif key.isdigit() and len(key) == 1 and len(self._eta) < 4:
            self._eta += key
        elif key == "enter" and self._target is not None:
            minutes = int(self._eta) if self._eta else None
            if minutes is not None and minutes > 1440:
                self.note("ETA must be 0 to 1440 minutes")
                return None
            self.mode = "browse"
            return Send(
                self._target.station, self._target.alert_id, "assign", team=self._team,
                eta_s=None if minutes is None else minutes * 60,
            )
        return None

    def render(self, now: float, width: int = 120, height: int = 30) -> str:
        """The whole screen as text with ANSI attributes (one frame)."""
        rows = self.rows()
        faults = self.queue.faults()
        offline = sorted(s for s, state in self.stations.items() if state != "online")
        head = (
            f"stationgw dispatch {self.title} | {len(rows)} open alert(s), {len(faults)} "
            f"fault(s), {len(self.stations) - len(offline)}/{len(self.stations)} station(s) "
            f"online | {self.link} | {time.strftime('%H:%M:%S', time.localtime(now))}"
        )
        lines = [head[:width], ""]
        lines.append(f"  {'CLS':<4}{'AGE':<8}{'STATE':<14}{'STATION':<16}"
                     f"{'HELP POINT, LOCATION':<34}{'PRESS':<6}{'TEAM, ETA':<22}ALERT"[:width])
        footer = self._footer(faults, offline, now, width)
        room = max(1, height - len(lines) - len(footer))
        first = max(0, min(self._index - room + 1, len(rows) - room)) if rows else 0
        for i, row in enumerate(rows[first:first + room], start=first):
            lines.append(self._row_line(row, i == self._index, now, width))
        if len(rows) > first + room:
            lines[-1] = f"  ... {len(rows) - first - room + 1} more"
        if not rows:
            lines.append("  (no open alerts)")
        # Station text is shown through `printable`: no byte of it reaches the terminal
        # as a control (the attributes are added after, by this screen only).
        lines[0] = printable(lines[0])
        footer = [printable(line) for line in footer]
        return ANSI_CLEAR + "\n".join(lines + footer) + "\n"

    def _row_line(self, row: AlertRow, selected: bool, now: float, width: int) -> str:
        state = row.state + (" ESC" if row.escalated else "")
        team = "-" if row.team is None else row.team
        if row.eta_s is not None:
            team += f", {row.eta_s // 60}min"
        place = f"{row.source}, {row.location}" if row.location else row.source
        text = (
            f"{'>' if selected else ' '} {row.priority.name:<4}{age(now - row.raised_at):<8}"
            f"{state:<14}{row.station[:15]:<16}{place[:33]:<34}{row.press_count:<6}"
            f"{team[:21]:<22}{row.alert_id[:8]}"
        )
        text = printable(text)[:width]
        if selected:
            return _REVERSE + text + _RESET
        return _RED + text + _RESET if row.priority == Priority.P0 else text

    def _footer(self, faults: list[Fault], offline: list[str], now: float, width: int) -> (
        list[str]
    ):
        lines = [""]
        for fault in faults[:3]:
            lines.append(f"FAULT {fault.station} {fault.source} ({fault.location}): button "
                         f"stuck for {age(now - fault.since)}"[:width])
        if offline:
            lines.append(f"offline: {', '.join(offline)}"[:width])
        if self.mode == "team" and self._target is not None:
            choices = "  ".join(f"[{i}] {t}" for i, t in enumerate(TEAMS, start=1))
            lines.append(f"assign {self._target.alert_id[:8]}: team? {choices}  [esc] cancel"
                         [:width])
        elif self.mode == "eta" and self._target is not None:
            lines.append(f"assign {self._target.alert_id[:8]} to {self._team}: ETA minutes? "
                         f"{self._eta}_  [enter] send (empty: none)  [esc] cancel"[:width])
        else:
            lines.append("[up/down, j/k] select  [a] acknowledge  [s] assign  [r] resolve  "
                         "[q] quit"[:width])
        lines += [f"> {n}"[:width] for n in self.notes]
        return lines
