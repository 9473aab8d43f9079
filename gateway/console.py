"""`stationgw dispatch`: the reference dispatch console.

Every alert from every station, once, in a live queue ordered by class and age, with
acknowledge, assign and resolve on a keypress; a plain JSON stream for scripts; one-shot
commands. The layers follow the data:

- `parse_event`, `Dedup`, `AlertQueue`, `KeyReader`, `Screen`: no I/O. Payloads and key
  bytes in; rows, screens and commands to send out.
- `Intake`: one MQTT 5 connection on paho-mqtt's own network thread. Messages reach
  asyncio in batches, and are acknowledged (PUBACK) only after the console has handled them.
  `Link` keeps an `Intake` connected, with capped, jittered backoff and the same client id.
- `watch_json`, `one_shot`, `interactive`: what the CLI calls; each returns an exit code.

Why paho-mqtt directly, not aiomqtt as the gateway uses. `bench/console_intake.py`, 50
stations publishing 200,000 QoS 1 events at once (medians of 3 runs x 3 repetitions, 2
shared cores; paho-mqtt 2.2, aiomqtt 2.5.1, Mosquitto 2.0.11):

    subscriber                     intake msg/s   CPU us/msg   peak RSS
    raw paho, own network thread          8,085           69     40 MiB
    raw aiomqtt                           4,886          154    999 MiB
    this console (paho, watch --json)     5,668          126     60 MiB

aiomqtt acknowledges on receipt and queues without bound; its iterator needs several loop
turns per message while its reader adds one a turn, so the backlog sits in the process
(19,999 of 30,000 messages queued at the peak in one check). The gateway publishes a few
events a second and keeps aiomqtt; the console receives from every station at once.

Delivery: a message is acknowledged only after its line is flushed (watch) or it is folded
into the queue (interactive), and the broker sends at most `RECEIVE_MAXIMUM` unacknowledged
(MQTT 5 flow control). So a console that falls behind holds a bounded window, the backlog
waits in the broker, a crash loses nothing the session holds (it is sent again, and
de-duplicated on `event_id` within a run; scripts de-duplicate across runs), and batches
are large: acknowledging on receipt instead cost 210 rather than 116 CPU us/msg.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import json
import os
import random
import shutil
import signal
import socket
import stat
import sys
import threading
import time
import uuid
from collections import deque
from collections.abc import AsyncGenerator, Awaitable, Callable, Coroutine, Mapping, Sequence
from dataclasses import dataclass, replace
from types import TracebackType
from typing import IO, Any, Literal, NoReturn

import paho.mqtt.client as paho
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode
from paho.mqtt.subscribeoptions import SubscribeOptions
from pydantic import ValidationError

from gateway.commands import Action, Reply, Team
from gateway.config import BrokerEndpoint
from gateway.dispatch import command_topic, make_command, reply_topic
from gateway.errors import GatewayError
from gateway.model import AlertState, Priority
from gateway.mqtt import json_properties

PREFIX = "stationgw/v1"
RECEIVE_MAXIMUM = 1000  # unacknowledged messages in flight to us: bounds memory when behind
PERSISTENT_SESSION_S = 24 * 3600  # a named console's session outlives a day's absence
EPHEMERAL_SESSION_S = 60  # an unnamed one only rides out a short link drop
DEDUP_WINDOW = 100_000  # event ids remembered; a re-send comes within one station's backlog
CLOSED_MEMORY = 10_000  # closed alerts remembered, so a late event does not reopen one
CONNECT_TIMEOUT_S = 10.0
TEAMS: tuple[Team, ...] = ("crisis_team", "co_response", "ambassador", "emergency_services")
ACTIONS: dict[str, Action] = {
    "ack": "acknowledge", "acknowledge": "acknowledge", "assign": "assign",
    "resolve": "resolve", "cancel": "cancel",
}


class ConsoleError(GatewayError):
    """The dispatch console cannot do what was asked."""


class ConsoleUsageError(ConsoleError, ValueError):
    """A bad argument: broker URL, share group, action."""


class ConsoleConnectionError(ConsoleError, ConnectionError):
    """The broker could not be reached, refused us, or the link dropped."""


# ---------------------------------------------------------------------------- arguments


def parse_broker_url(url: str) -> tuple[str, int]:
    """`mqtt://host:port` -> (host, port); the port is 1883 when not given."""
    try:
        endpoint = BrokerEndpoint(url=url)
    except ValidationError as exc:
        msg = "; ".join(str(e["msg"]).removeprefix("Value error, ") for e in exc.errors())
        raise ConsoleUsageError(f"--broker: {msg}") from exc
    if endpoint.tls:
        raise ConsoleUsageError(
            f"--broker: {url!r}: the console speaks plain mqtt:// only (use mqtt://HOST:PORT)"
        )
    return endpoint.host, endpoint.port


def events_filter(prefix: str = PREFIX, share: str | None = None) -> str:
    """Every station's events; `$share/GROUP/...` when workers split the stream."""
    topic = f"{prefix}/+/events/#"
    if share is None:
        return topic
    if not share or any(c in share for c in "/+#"):
        raise ConsoleUsageError(
            f"--share: {share!r} is not a share group name (use letters, digits, - or _; "
            "no /, + or #)"
        )
    return f"$share/{share}/{topic}"


# ---------------------------------------------------------------------------- events (no I/O)


def parse_event(payload: bytes | bytearray) -> dict[str, Any] | None:
    """The event in a payload, or None unless it is a JSON object with a string event_id."""
    try:
        event = json.loads(payload)
    except (ValueError, RecursionError):  # JSONDecodeError and UnicodeDecodeError too
        return None
    if not isinstance(event, dict):
        return None
    event_id = event.get("event_id")
    if not isinstance(event_id, str) or not event_id:
        return None
    return event


class Dedup:
    """Remembers the last `window` event ids: `first_time` is False for a re-send."""

    def __init__(self, window: int = DEDUP_WINDOW) -> None:
        self.window = window
        self._seen: set[str] = set()
        self._order: deque[str] = deque()

    def first_time(self, event_id: str) -> bool:
        """True the first time an id is seen (within the window), then False."""
        if event_id in self._seen:
            return False
        self._seen.add(event_id)
        self._order.append(event_id)
        if len(self._order) > self.window:
            self._seen.discard(self._order.popleft())
        return True


Change = Literal[
    "new", "updated", "closed", "duplicate", "stale", "fault", "fault_cleared", "ignored",
    "malformed",
]
_STATES: dict[str, AlertState] = {
    "open": "open", "acknowledged": "acknowledged", "assigned": "assigned",
    "resolved": "resolved", "cancelled": "cancelled",
}
_STATE_OF_KIND: dict[str, AlertState] = {
    "alert.acknowledged": "acknowledged", "alert.assigned": "assigned",
    "alert.resolved": "resolved", "alert.cancelled": "cancelled",
}


def _text(value: object, default: str = "") -> str:
    return value if isinstance(value, str) else default


def _number(value: object) -> float | None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return float(value)


@dataclass(frozen=True, slots=True)
class AlertRow:
    """One rider's request as dispatch sees it: the newest event's view of the alert."""

    station: str
    alert_id: str
    priority: Priority
    state: AlertState
    kind: str  # the newest event's kind
    source: str
    location: str
    press_count: int
    raised_at: float  # the rider's first press (gateway wall time): the queue's age
    escalated: bool
    team: str | None
    eta_s: int | None
    requested_response: str
    updated_at: float  # wall time of the newest event
    seq: int  # the newest event's seq (orders one gateway's events)

    @property
    def key(self) -> tuple[str, str]:
        """(station, alert_id): alert ids are only promised unique per station."""
        return (self.station, self.alert_id)


@dataclass(frozen=True, slots=True)
class Fault:
    """A help point reported stuck (no alert id: dispatch cannot command it)."""

    station: str
    source: str
    location: str
    since: float


class AlertQueue:
    """Folds event payloads from every station into one row per open alert.

    - Re-sends (same `event_id`) change nothing.
    - Events of one alert can arrive out of order (the outbox drains P0 before P1), so a row
      takes an event only if its `seq` is newer than the row's; the body carries the whole
      alert record, so the newest event is the truth.
    - Resolved and cancelled alerts leave the queue and are remembered, so a late event
      does not bring them back.
    - `help_point.stuck` / `unstuck` (no alert id) raise and clear a `Fault`; other events
      without an alert id are ignored here (`watch --json` still prints them).
    """

    def __init__(self, dedup_window: int = DEDUP_WINDOW) -> None:
        self.dedup = Dedup(dedup_window)
        self._open: dict[tuple[str, str], AlertRow] = {}
        self._closed: set[tuple[str, str]] = set()
        self._closed_order: deque[tuple[str, str]] = deque()
        self._faults: dict[tuple[str, str], Fault] = {}
        self.counts: dict[Change, int] = {}

    def feed_payload(self, payload: bytes | bytearray) -> Change:
        """Fold one raw message payload."""
        event = parse_event(payload)
        if event is None:
            return self._count("malformed")
        return self.feed(event)

    def feed(self, event: Mapping[str, Any]) -> Change:
        """Fold one parsed event; says what it changed."""
        event_id = event.get("event_id")
        if not isinstance(event_id, str) or not event_id:
            return self._count("malformed")
        if not self.dedup.first_time(event_id):
            return self._count("duplicate")
        try:
            priority = Priority.parse(_text(event.get("class")))
        except ValueError:
            return self._count("malformed")
        body = event.get("body")
        body = body if isinstance(body, dict) else {}
        station, kind = _text(event.get("station")), _text(event.get("kind"))
        source = _text(event.get("source"), _text(body.get("help_point")))
        wall_time = _number(event.get("wall_time")) or 0.0
        alert_id = body.get("alert_id")
        if not isinstance(alert_id, str) or not alert_id:
            return self._count(self._fault(kind, station, source, body, wall_time))
        key = (station, alert_id)
        row = self._open.get(key)
        given_seq = _number(event.get("seq"))
        if key in self._closed or (row is not None and given_seq is not None
                                   and given_seq <= row.seq):
            return self._count("stale")
        seq = int(given_seq) if given_seq is not None else (row.seq if row else 0)
        state = _STATES.get(_text(body.get("state"))) or _STATE_OF_KIND.get(kind, "open")
        if state in ("resolved", "cancelled"):
            self._open.pop(key, None)
            self._closed.add(key)
            self._closed_order.append(key)
            if len(self._closed_order) > CLOSED_MEMORY:
                self._closed.discard(self._closed_order.popleft())
            return self._count("closed")
        first_press = _number(body.get("first_press"))
        eta = _number(body.get("eta_s"))
        team = body.get("team")
        fresh = AlertRow(
            station=station, alert_id=alert_id, priority=priority, state=state, kind=kind,
            source=source, location=_text(body.get("location")),
            press_count=int(_number(body.get("press_count")) or 0),
            raised_at=first_press or wall_time,
            escalated=body.get("escalated") is True,
            team=team if isinstance(team, str) else None,
            eta_s=None if eta is None else int(eta),
            requested_response=_text(event.get("requested_response")),
            updated_at=wall_time, seq=seq,
        )
        if row is not None:  # keep what only earlier events said
            fresh = replace(
                fresh, raised_at=min(row.raised_at, fresh.raised_at),
                location=fresh.location or row.location,
            )
        self._open[key] = fresh
        return self._count("new" if row is None else "updated")

    def _fault(
        self, kind: str, station: str, source: str, body: Mapping[str, Any], wall_time: float
    ) -> Change:
        if kind == "help_point.stuck":
            self._faults.setdefault(
                (station, source),
                Fault(station, source, _text(body.get("location")), wall_time),
            )
            return "fault"
        if kind == "help_point.unstuck":
            self._faults.pop((station, source), None)
            return "fault_cleared"
        return "ignored"

    def _count(self, change: Change) -> Change:
        self.counts[change] = self.counts.get(change, 0) + 1
        return change

    def rows(self) -> list[AlertRow]:
        """Open alerts: most urgent class first, then oldest first."""
        return sorted(
            self._open.values(), key=lambda r: (r.priority, r.raised_at, r.station, r.alert_id)
        )

    def get(self, station: str, alert_id: str) -> AlertRow | None:
        """An open alert, if it is in the queue."""
        return self._open.get((station, alert_id))

    def faults(self) -> list[Fault]:
        """Stuck help points, oldest first."""
        return sorted(self._faults.values(), key=lambda f: (f.since, f.station, f.source))

    def __len__(self) -> int:
        return len(self._open)


# ---------------------------------------------------------------------------- keys and screen


_SEQUENCES = {b"\x1b[A": "up", b"\x1b[B": "down", b"\x1bOA": "up", b"\x1bOB": "down"}
_CONTROL = {0x0D: "enter", 0x0A: "enter", 0x7F: "backspace", 0x08: "backspace"}


class KeyReader:
    """Terminal bytes in, key names out: `up`, `down`, `enter`, `esc`, `backspace`, or the
    character typed. Incomplete sequences wait for the next `feed`; `flush` ends a lone ESC."""

    def __init__(self) -> None:
        self._buf = b""

    def feed(self, data: bytes) -> list[str]:
        """Keys completed by `data`."""
        self._buf += data
        keys: list[str] = []
        while self._buf:
            buf = self._buf
            if buf[0] == 0x1B:
                if len(buf) == 1:
                    break  # ESC alone, or the start of an arrow key: wait for more
                if buf[1] in b"[O":
                    end = _sequence_end(buf)
                    if end is None:
                        break
                    if end > 0:
                        self._buf = buf[end:]
                        name = _SEQUENCES.get(buf[:end])
                        if name is not None:
                            keys.append(name)
                        continue
                keys.append("esc")
                self._buf = buf[1:]
                continue
            if buf[0] < 0x80:
                self._buf = buf[1:]
                if buf[0] in _CONTROL:
                    keys.append(_CONTROL[buf[0]])
                elif buf[0] >= 0x20:
                    keys.append(chr(buf[0]))
                continue
            size = 2 if buf[0] >= 0xC0 else 1
            size = 3 if buf[0] >= 0xE0 else size
            size = 4 if buf[0] >= 0xF0 else size
            if len(buf) < size:
                break
            self._buf = buf[size:]
            with contextlib.suppress(UnicodeDecodeError):
                keys.append(buf[:size].decode())
        return keys

    @property
    def pending(self) -> bool:
        """Bytes wait for the rest of a sequence (or for `flush`)."""
        return bool(self._buf)

    def flush(self) -> list[str]:
        """No more bytes came: a pending lone ESC is the Escape key."""
        pending, self._buf = self._buf, b""
        return ["esc"] if pending == b"\x1b" else []


def _sequence_end(buf: bytes) -> int | None:
    """Length of the CSI/SS3 sequence at the start of `buf`; None if incomplete, 0 if not one."""
    if buf[1:2] == b"O":
        return 3 if len(buf) >= 3 else None
    for i in range(2, len(buf)):
        if 0x40 <= buf[i] <= 0x7E:
            return i + 1
        if not 0x20 <= buf[i] <= 0x3F:
            return 0
    return None


@dataclass(frozen=True)
class Send:
    """A command the dispatcher asked for."""

    station: str
    alert_id: str
    action: Action
    team: Team | None = None
    eta_s: int | None = None


Mode = Literal["browse", "team", "eta"]
_LABEL: dict[Action, str] = {
    "acknowledge": "acknowledge", "assign": "assign", "resolve": "resolve", "cancel": "cancel",
}
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
        rows = self.rows()
        if key in ("up", "k", "down", "j"):
            if rows:
                step = -1 if key in ("up", "k") else 1
                self._index = max(0, min(self._index + step, len(rows) - 1))
                self._selected = rows[self._index].key
            return None
        if key == "q":
            return "quit"
        row = rows[self._index] if rows else None
        if key in ("a", "r", "s") and row is None:
            self.note("no alert selected")
            return None
        if row is None:
            return None
        if key == "a":
            return Send(row.station, row.alert_id, "acknowledge")
        if key == "r":
            return Send(row.station, row.alert_id, "resolve")
        if key == "s":
            self.mode, self._target, self._team, self._eta = "team", row, None, ""
        return None

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
        )[:width]
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


# ---------------------------------------------------------------------------- the MQTT edge


class Intake:
    """One MQTT 5 connection on paho-mqtt's network thread, feeding asyncio in batches.

    Threads meet asyncio here only: paho calls `_on_*` from its network thread, which hand
    over with `loop.call_soon_threadsafe`. Messages queue in a deque and the loop is woken
    once per batch, not once per message. Nothing is acknowledged until `ack` is called.
    """

    def __init__(
        self,
        host: str,
        port: int,
        topics: Sequence[str],
        *,
        client_id: str,
        session_expiry_s: int,
        receive_maximum: int = RECEIVE_MAXIMUM,
    ) -> None:
        self.host, self.port, self.topics = host, port, list(topics)
        self.client_id = client_id
        self.session_expiry_s = session_expiry_s
        self.receive_maximum = receive_maximum
        self.session_present = False
        self._client = paho.Client(
            CallbackAPIVersion.VERSION2, client_id=client_id, protocol=paho.MQTTv5,
            manual_ack=True,
        )
        self._client.on_connect = self._on_connect
        self._client.on_subscribe = self._on_subscribe
        self._client.on_message = self._on_message
        self._client.on_publish = self._on_publish
        self._client.on_disconnect = self._on_disconnect
        self._pending: deque[paho.MQTTMessage] = deque()
        self._scheduled = False  # a wake-up is already on its way to the loop
        self._wake = asyncio.Event()
        self._lost: ConsoleConnectionError | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._ready: asyncio.Future[None] | None = None
        self._acks: dict[int, asyncio.Future[ReasonCode]] = {}
        self._early: dict[int, ReasonCode] = {}  # PUBACKs that beat their future
        self._properties = json_properties("5")

    # -- called from paho's network thread ------------------------------------------

    def _threadsafe(self, fn: Callable[..., None], *args: Any) -> None:
        """Run `fn(*args)` on the event loop; called from any thread."""
        if self._loop is not None:
            with contextlib.suppress(RuntimeError):  # the loop is already closed
                self._loop.call_soon_threadsafe(fn, *args)

    def _on_connect(
        self, client: paho.Client, userdata: Any, flags: paho.ConnectFlags, rc: ReasonCode,
        props: Properties | None,
    ) -> None:
        if rc.is_failure:
            self._threadsafe(self._fail, f"the broker refused the connection: {rc.getName()}")
            return
        self.session_present = flags.session_present
        client.subscribe([(t, SubscribeOptions(qos=1)) for t in self.topics])

    def _on_subscribe(
        self, client: paho.Client, userdata: Any, mid: int, rcs: list[ReasonCode],
        props: Properties | None,
    ) -> None:
        refused = [f"{t}: {rc.getName()}" for t, rc in zip(self.topics, rcs, strict=False)
                   if rc.is_failure]
        if refused:
            self._threadsafe(self._fail, "the broker refused the subscription: "
                             + "; ".join(refused))
        else:
            self._threadsafe(self._subscribed)

    def _on_message(self, client: paho.Client, userdata: Any, message: paho.MQTTMessage) -> None:
        self._pending.append(message)
        if not self._scheduled:
            self._scheduled = True
            self._threadsafe(self._wake.set)

    def _on_publish(
        self, client: paho.Client, userdata: Any, mid: int, rc: ReasonCode, props: Properties
    ) -> None:
        self._threadsafe(self._puback, mid, rc)

    def _on_disconnect(
        self, client: paho.Client, userdata: Any, flags: paho.DisconnectFlags, rc: ReasonCode,
        props: Properties | None,
    ) -> None:
        self._threadsafe(self._fail, f"connection lost: {rc.getName()}")

    # -- on the event loop ------------------------------------------------------------

    def _subscribed(self) -> None:
        if self._ready is not None and not self._ready.done():
            self._ready.set_result(None)

    def _fail(self, reason: str) -> None:
        error = ConsoleConnectionError(f"{self.host}:{self.port}: {reason}")
        if self._ready is not None and not self._ready.done():
            self._ready.set_exception(error)
        if self._lost is None:
            self._lost = error
        for future in self._acks.values():
            if not future.done():
                future.set_exception(error)
        self._wake.set()

    def _puback(self, mid: int, rc: ReasonCode) -> None:
        future = self._acks.pop(mid, None)
        if future is None:
            self._early[mid] = rc
        elif not future.done():
            future.set_result(rc)

    async def __aenter__(self) -> Intake:
        self._loop = asyncio.get_running_loop()
        self._ready = self._loop.create_future()
        props = Properties(PacketTypes.CONNECT)  # type: ignore[no-untyped-call]
        props.SessionExpiryInterval = self.session_expiry_s
        props.ReceiveMaximum = self.receive_maximum
        connect = functools.partial(
            self._client.connect, self.host, self.port, keepalive=30, clean_start=False,
            properties=props,
        )
        try:
            await self._loop.run_in_executor(None, connect)
        except (OSError, ValueError) as exc:
            raise ConsoleConnectionError(
                f"cannot connect to the broker at {self.host}:{self.port}: {exc}"
            ) from exc
        self._client.loop_start()
        try:
            async with asyncio.timeout(CONNECT_TIMEOUT_S):
                await self._ready
        except TimeoutError:
            self._stop(forget=False)
            raise ConsoleConnectionError(
                f"{self.host}:{self.port}: no CONNACK/SUBACK within {CONNECT_TIMEOUT_S:g}s"
            ) from None
        except BaseException:
            self._stop(forget=False)
            raise
        return self

    async def __aexit__(
        self, et: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        self._stop(forget=0 < self.session_expiry_s <= EPHEMERAL_SESSION_S)

    def _stop(self, *, forget: bool) -> None:
        props = None
        if forget:  # an unnamed console's session is of no use to anyone once it leaves
            props = Properties(PacketTypes.DISCONNECT)  # type: ignore[no-untyped-call]
            props.SessionExpiryInterval = 0
        self._client.disconnect(properties=props)
        self._client.loop_stop()  # joins the network thread: no callback runs after this

    async def batches(self) -> AsyncGenerator[list[paho.MQTTMessage], None]:
        """Received messages, in order, as they come; raises when the link drops."""
        while True:
            if self._pending:
                n = len(self._pending)
                yield [self._pending.popleft() for _ in range(n)]
                continue
            if self._lost is not None:
                raise self._lost
            self._wake.clear()
            self._scheduled = False
            if self._pending or self._lost is not None:
                continue  # arrived between the check and the reset: no wake-up is coming
            await self._wake.wait()

    def ack(self, messages: Sequence[paho.MQTTMessage]) -> None:
        """Acknowledge handled messages (in the order received, as MQTT requires)."""
        for message in messages:
            if message.qos:
                self._client.ack(message.mid, message.qos)

    async def publish(self, topic: str, payload: bytes) -> ReasonCode:
        """Publish JSON at QoS 1 and return the PUBACK's reason code."""
        if self._lost is not None:
            raise self._lost
        info = self._client.publish(topic, payload, qos=1, properties=self._properties)
        if info.rc != paho.MQTT_ERR_SUCCESS:
            raise ConsoleConnectionError(f"could not publish to {topic}: {info.rc.name}")
        early = self._early.pop(info.mid, None)
        if early is not None:
            return early
        assert self._loop is not None
        future: asyncio.Future[ReasonCode] = self._loop.create_future()
        self._acks[info.mid] = future
        try:
            return await future
        finally:
            self._acks.pop(info.mid, None)


def backoff(attempt: int) -> float:
    """Capped, jittered reconnect delay: uniform(0, 1.5 ** min(10, attempt)) seconds."""
    return random.uniform(0, 1.5 ** min(10, attempt))


Handler = Callable[["Intake", list[paho.MQTTMessage]], Awaitable[None]]


class Link:
    """Keeps an `Intake` connected: reconnects with backoff under the same client id, so a
    persistent session carries on where it left off."""

    def __init__(
        self, host: str, port: int, topics: Sequence[str], *, client_id: str | None,
        on_state: Callable[[str], None],
    ) -> None:
        self.host, self.port, self.topics = host, port, list(topics)
        self.named = client_id is not None
        self.client_id = client_id or f"stationgw-console-{uuid.uuid4().hex[:12]}"
        self.on_state = on_state
        self.current: Intake | None = None

    async def run(self, handle: Handler) -> NoReturn:
        """Connect, hand every batch to `handle`, reconnect; forever (cancel to stop)."""
        attempt = 0
        had_session = False
        while True:
            intake = Intake(
                self.host, self.port, self.topics, client_id=self.client_id,
                session_expiry_s=PERSISTENT_SESSION_S if self.named else EPHEMERAL_SESSION_S,
            )
            try:
                async with intake:
                    self.current = intake
                    attempt = 0
                    session = "resumed session" if intake.session_present else "new session"
                    if had_session and not intake.session_present:
                        session += ": events published while disconnected were lost"
                    had_session = True
                    self.on_state(f"connected to {self.host}:{self.port} as {self.client_id} "
                                  f"({session}), subscribed to {', '.join(self.topics)}")
                    async with contextlib.aclosing(intake.batches()) as batches:
                        async for batch in batches:
                            await handle(intake, batch)
            except ConsoleConnectionError as exc:
                delay = backoff(attempt)
                attempt += 1
                self.on_state(f"{exc}; reconnecting in {delay:.1f}s")
                self.current = None
                await asyncio.sleep(delay)
            finally:
                self.current = None


# ---------------------------------------------------------------------------- running


def _say(text: str) -> None:
    print(f"stationgw dispatch: {text}", file=sys.stderr, flush=True)


def _is_pipe(fd: int) -> bool:
    with contextlib.suppress(OSError):
        return stat.S_ISFIFO(os.fstat(fd).st_mode) or stat.S_ISSOCK(os.fstat(fd).st_mode)
    return False


def _run(main: Coroutine[Any, Any, int], *, stop_on_stdin_eof: bool) -> int:
    """Run until `main` returns, SIGINT/SIGTERM, or (if asked and stdin is a pipe) its EOF."""

    async def runner() -> int:
        loop = asyncio.get_running_loop()
        task = asyncio.ensure_future(main)
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGINT, signal.SIGTERM):
                loop.add_signal_handler(sig, task.cancel)
        watching = stop_on_stdin_eof and _is_pipe(0)
        if watching:  # a supervising process stops us by closing the pipe

            def on_stdin() -> None:
                try:
                    data = os.read(0, 4096)
                except OSError:
                    data = b""
                if not data:
                    loop.remove_reader(0)
                    task.cancel()

            loop.add_reader(0, on_stdin)
        try:
            return await task
        except asyncio.CancelledError:
            return 0
        finally:
            if watching:
                loop.remove_reader(0)

    try:
        return asyncio.run(runner())
    except ConsoleError as exc:
        _say(str(exc))
        return 1


def watch_json(
    host: str,
    port: int,
    *,
    share: str | None = None,
    prefix: str = PREFIX,
    client_id: str | None = None,
) -> int:
    """One JSON line per new event from every station on stdout, each re-send once only.

    Lines are the events exactly as published (schema `stationgw/event/1`), flushed as they
    come. Runs until SIGINT/SIGTERM, stdout closes, or stdin reaches EOF when stdin is a pipe
    (a terminal or /dev/null never ends it). Status goes to stderr. With `client_id` the
    broker keeps the session for a day, so nothing published while away is missed.
    """
    try:
        topics = [events_filter(prefix, share)]
    except ConsoleUsageError as exc:
        _say(str(exc))
        return 2
    out = sys.stdout.buffer
    dedup = Dedup()

    async def handle(intake: Intake, batch: list[paho.MQTTMessage]) -> None:
        lines: list[bytes] = []
        for message in batch:
            event = parse_event(message.payload)
            if event is None:
                _say(f"skipped a message on {message.topic}: not a stationgw event")
            elif dedup.first_time(event["event_id"]):
                payload = bytes(message.payload)
                if b"\n" in payload or b"\r" in payload:
                    payload = json.dumps(event, separators=(",", ":")).encode()
                lines += (payload, b"\n")
        if lines:
            out.write(b"".join(lines))
            out.flush()
        intake.ack(batch)  # only now: a crash before this gets them sent again

    async def main() -> int:
        link = Link(host, port, topics, client_id=client_id, on_state=_say)
        try:
            await link.run(handle)
        except BrokenPipeError:  # the reader went away (`| head`): a normal end
            with contextlib.suppress(OSError):
                os.dup2(os.open(os.devnull, os.O_WRONLY), out.fileno())
        return 0

    return _run(main(), stop_on_stdin_eof=True)


def one_shot(
    host: str,
    port: int,
    action: str,
    alert_id: str,
    station: str,
    *,
    team: str | None = None,
    eta_s: int | None = None,
    prefix: str = PREFIX,
    timeout: float = 10.0,
    dispatcher: str | None = None,
) -> int:
    """Send one command and wait for the station's reply: exit 0 applied, 1 rejected,
    2 no reply within `timeout` (or no broker; the message says which).

    The station must be given: commands go to `{prefix}/{station}/commands` and an alert id
    does not say which station raised it (the console shows it on the row; scripts read the
    event's `station`).
    """
    chosen = ACTIONS.get(action)
    if chosen is None:
        _say(f"unknown action {action!r} (use ack, assign or resolve)")
        return 2
    if chosen == "assign" and team not in TEAMS:
        _say(f"assign needs a team: one of {', '.join(TEAMS)} (got {team!r})")
        return 2
    try:
        command = make_command(
            station, alert_id, chosen, team=next((t for t in TEAMS if t == team), None),
            eta_s=eta_s, dispatcher=dispatcher or f"cli-{socket.gethostname()}"[:64],
        )
    except ValidationError as exc:
        _say(f"bad command: {exc.errors()[0]['loc'][0]}: {exc.errors()[0]['msg']}")
        return 2
    replies, status_topic = reply_topic(prefix, station), f"{prefix}/{station}/status"

    async def main() -> int:
        status: dict[str, Any] | None = None
        intake = Intake(host, port, [replies, status_topic],
                        client_id=f"stationgw-cli-{uuid.uuid4().hex[:12]}", session_expiry_s=0)
        async with intake:
            payload = json.dumps(command.model_dump(by_alias=True, mode="json")).encode()
            rc = await intake.publish(command_topic(prefix, station), payload)
            if rc.is_failure:
                _say(f"the broker refused the command: {rc.getName()}")
                return 2
            try:
                async with asyncio.timeout(timeout), \
                        contextlib.aclosing(intake.batches()) as batches:
                    async for batch in batches:
                        intake.ack(batch)
                        for message in batch:
                            if message.topic == status_topic:
                                status = parse_json_object(message.payload)
                                continue
                            reply = parse_reply(message.payload)
                            if reply is not None and reply.command_id == command.command_id:
                                return report_reply(reply, chosen, alert_id, station)
            except TimeoutError:
                pass
        _say(f"no reply from station {station!r} within {timeout:g}s; " + describe(status))
        return 2

    try:
        return asyncio.run(main())
    except ConsoleConnectionError as exc:
        _say(f"{exc}; the command was not sent")
        return 2


def parse_json_object(payload: bytes | bytearray) -> dict[str, Any] | None:
    """A JSON object, or None."""
    with contextlib.suppress(ValueError, RecursionError):
        value = json.loads(payload)
        return value if isinstance(value, dict) else None
    return None


def parse_reply(payload: bytes | bytearray) -> Reply | None:
    """A gateway's reply, or None when the payload is not one."""
    try:
        return Reply.model_validate_json(payload)
    except ValidationError:
        return None


def report_reply(reply: Reply, action: Action, alert_id: str, station: str) -> int:
    """Print the outcome of a command; its exit code."""
    if reply.status == "applied":
        print(f"applied: {action} alert {alert_id} at {station}", flush=True)
        return 0
    print(f"rejected: {reply.reason} ({reply.detail})", file=sys.stderr, flush=True)
    return 1


def describe(status: Mapping[str, Any] | None) -> str:
    """What a station's retained status says about why it did not answer."""
    if status is None:
        return "the broker holds no status for it (is --station right?)"
    state = _text(status.get("state"), "unknown")
    since = _number(status.get("wall_time"))
    when = "" if since is None else f" since {time.strftime('%H:%M:%S', time.localtime(since))}"
    if state == "online":
        return "it is online; the command may still be applied (check with `dispatch watch`)"
    return f"it is {state}{when}; the broker keeps the command for it"


def interactive(
    host: str,
    port: int,
    *,
    share: str | None = None,
    prefix: str = PREFIX,
    client_id: str | None = None,
) -> int:
    """The live queue on the terminal; keys act on the selected alert (see the footer).

    The queue is built from the events received since start (plus, with `client_id`, what
    the persistent session held); an alert last announced before that shows up at its next
    event (unacknowledged alerts are re-announced every `dispatch.ack_timeout_s`).
    """
    try:
        topics = [events_filter(prefix, share), f"{prefix}/+/replies", f"{prefix}/+/status"]
    except ConsoleUsageError as exc:
        _say(str(exc))
        return 2
    infd, out = sys.stdin.fileno(), sys.stdout
    desk = client_id or f"console-{socket.gethostname()}"
    old = None
    if os.isatty(infd):
        import termios  # noqa: PLC0415 - POSIX terminals only
        import tty  # noqa: PLC0415

        old = termios.tcgetattr(infd)
        tty.setcbreak(infd)
    out.write("\x1b[?1049h\x1b[?25l")  # alternate screen, hide the cursor
    try:
        main = _interactive(host, port, topics, prefix=prefix, client_id=client_id,
                            desk=desk[:64], infd=infd, out=out)
        return _run(main, stop_on_stdin_eof=False)
    finally:
        out.write("\x1b[?25h\x1b[?1049l")
        out.flush()
        if old is not None:
            import termios  # noqa: PLC0415

            termios.tcsetattr(infd, termios.TCSADRAIN, old)


class _Quit(Exception):  # noqa: N818 - control flow, not an error
    pass


async def _interactive(
    host: str, port: int, topics: list[str], *, prefix: str, client_id: str | None,
    desk: str, infd: int, out: IO[str],
) -> int:
    loop = asyncio.get_running_loop()
    queue = AlertQueue()
    screen = Screen(queue, title=f"at {host}:{port}")
    dirty = asyncio.Event()
    pending: dict[str, Send] = {}  # command_id -> what was asked, until the reply comes
    keys_in: asyncio.Queue[bytes] = asyncio.Queue()

    def state(text: str) -> None:
        screen.link = "connected" if text.startswith("connected") else "reconnecting"
        if not text.startswith("connected"):
            screen.note(text)
        dirty.set()

    link = Link(host, port, topics, client_id=client_id, on_state=state)

    async def handle(intake: Intake, batch: list[paho.MQTTMessage]) -> None:
        for message in batch:
            topic = message.topic
            if topic.endswith("/replies"):
                reply = parse_reply(message.payload)
                sent = pending.pop(reply.command_id or "", None) if reply else None
                if reply is not None and sent is not None:
                    outcome = reply.status if reply.status == "applied" else (
                        f"rejected: {reply.reason} ({reply.detail})")
                    screen.note(f"{sent.action} {sent.alert_id[:8]} at {sent.station}: "
                                f"{outcome}")
            elif topic.endswith("/status"):
                status = parse_json_object(message.payload) or {}
                screen.stations[topic.split("/")[-2]] = _text(status.get("state"), "unknown")
            else:
                queue.feed_payload(message.payload)
        intake.ack(batch)
        dirty.set()

    async def send(request: Send) -> None:
        command = make_command(request.station, request.alert_id, request.action,
                               team=request.team, eta_s=request.eta_s, dispatcher=desk)
        intake = link.current
        if intake is None:
            screen.note(f"not connected: {request.action} {request.alert_id[:8]} not sent")
            dirty.set()
            return
        pending[command.command_id] = request
        payload = json.dumps(command.model_dump(by_alias=True, mode="json")).encode()
        screen.note(f"{request.action} {request.alert_id[:8]} at {request.station}: sent")
        dirty.set()
        try:
            rc = await intake.publish(command_topic(prefix, request.station), payload)
        except ConsoleConnectionError as exc:
            rc = None
            screen.note(f"{request.action} {request.alert_id[:8]}: not sent ({exc})")
        if rc is not None and rc.is_failure:
            screen.note(f"{request.action} {request.alert_id[:8]}: refused by the broker "
                        f"({rc.getName()})")
        dirty.set()
        await asyncio.sleep(10)
        if pending.pop(command.command_id, None) is not None:
            screen.note(f"{request.action} {request.alert_id[:8]}: no reply from "
                        f"{request.station} within 10s")
            dirty.set()

    async def keys(tg: asyncio.TaskGroup) -> None:
        reader = KeyReader()
        while True:
            try:
                async with asyncio.timeout(0.05 if reader.pending else None):
                    data = await keys_in.get()
            except TimeoutError:
                found = reader.flush()
            else:
                if not data:
                    raise _Quit
                found = reader.feed(data)
            for key in found:
                action = screen.key(key)
                if action == "quit":
                    raise _Quit
                if action is not None:
                    tg.create_task(send(action), name=f"console.send.{action.alert_id[:8]}")
            dirty.set()

    async def draw() -> NoReturn:
        while True:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(1.0):  # ages tick even when nothing arrives
                    await dirty.wait()
            dirty.clear()
            try:  # the terminal itself, not $COLUMNS: the screen is redrawn on resize
                size = os.get_terminal_size(out.fileno())
            except OSError:
                size = shutil.get_terminal_size((120, 30))
            out.write(screen.render(time.time(), size.columns or 120, size.lines or 30))
            out.flush()
            await asyncio.sleep(0.05)  # at most 20 frames a second under a flood

    def on_key_bytes() -> None:
        try:
            data = os.read(infd, 1024)
        except OSError:
            data = b""
        if not data:
            loop.remove_reader(infd)
        keys_in.put_nowait(data)

    loop.add_reader(infd, on_key_bytes)
    with contextlib.suppress(NotImplementedError, RuntimeError):
        loop.add_signal_handler(signal.SIGWINCH, dirty.set)
    try:
        async with asyncio.TaskGroup() as tg:
            tg.create_task(link.run(handle), name="console.link")
            tg.create_task(draw(), name="console.draw")
            tg.create_task(keys(tg), name="console.keys")
    except* _Quit:
        pass
    finally:
        loop.remove_reader(infd)
    return 0
