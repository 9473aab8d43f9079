"""Shared pieces of the hub benchmarks: the hub in its own process, a steady flood of
stations' events, a raw paho subscriber process, and the checks of what the database holds.

The hub is `stationgw hub run` exactly as an operator starts it (its own process, so that a
SIGKILL is a real crash: no `finally`, no DISCONNECT, the socket closed by the kernel).
"""

from __future__ import annotations

import contextlib
import os
import random
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections import Counter
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Any

import paho.mqtt.client as paho
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode
from sqlalchemy import Engine, func, select

from bench import REPO
from dispatch.hub.schema import alerts, events, transitions
from dispatch.hub.store import HubStore, migrate, open_engine
from gateway.core.model import Event, Priority
from gateway.uplink.topics import Topics

CONNECTED = b"hub: connected to "


# ---------------------------------------------------------------------------- databases


def migrated(url: str) -> Engine:
    """An engine on `url` with the hub's schema in place."""
    engine = open_engine(url)
    migrate(engine)
    return engine


def stored_count(engine: Engine) -> int:
    """Events in the hub's database (a fresh transaction each call)."""
    with engine.connect() as conn:
        (n,) = conn.execute(select(func.count()).select_from(events)).one()
        return int(n)


# ---------------------------------------------------------------------------- the hub


class HubProcess:
    """`stationgw hub run` in its own process under a fixed client id: start, SIGKILL, start
    again (the same client id, so the broker resumes its persistent session)."""

    def __init__(self, db_url: str, port: int, prefix: str, client_id: str, log_path: Path,
                 *, share: str | None = None, extra: Sequence[str] = (),
                 log_level: str = "INFO") -> None:
        self.args = [sys.executable, "-m", "gateway.ops.cli", "hub", "run", "--db", db_url,
                     "--broker", f"mqtt://127.0.0.1:{port}", "--prefix", prefix,
                     "--client-id", client_id, "--log-level", log_level, *extra]
        if share is not None:
            self.args += ["--share", share]
        self.client_id = client_id
        self.log_path = log_path
        self.proc: subprocess.Popen[bytes] | None = None
        self.starts = 0
        self.kills = 0
        self.resumed = 0  # connects that found the broker's session ("resumed session")

    @property
    def pid(self) -> int:
        """The running process's id."""
        if self.proc is None:
            raise RuntimeError("the hub is not running")
        return self.proc.pid

    def _connects(self) -> int:
        try:
            return self.log_path.read_bytes().count(CONNECTED)
        except FileNotFoundError:
            return 0

    def start(self, timeout: float = 60.0) -> float:
        """Start the hub and wait until it is connected and subscribed; seconds it took."""
        if self.proc is not None and self.proc.poll() is None:
            raise RuntimeError("the hub is already running")
        before = self._connects()
        began = time.monotonic()
        with self.log_path.open("ab") as log:
            self.proc = subprocess.Popen(self.args, cwd=REPO, stdout=log,
                                         stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        self.starts += 1
        deadline = began + timeout
        while self._connects() <= before:
            if self.proc.poll() is not None:
                code, self.proc = self.proc.returncode, None
                raise RuntimeError(f"the hub exited with {code}; see "
                                   f"{self.log_path}:\n{self.tail()}")
            if time.monotonic() > deadline:
                self.kill()  # never leave it running behind a failed start
                raise TimeoutError(f"the hub did not connect within {timeout:g}s (it "
                                   f"logs its connection at INFO):\n{self.tail()}")
            time.sleep(0.01)
        lines = self.log_path.read_bytes().split(b"\n")
        if any(CONNECTED in line and b"(resumed session" in line for line in lines[-20:]):
            self.resumed += 1
        return time.monotonic() - began

    def tail(self, n: int = 15) -> str:
        """The last lines of the hub's log."""
        try:
            lines = self.log_path.read_text(errors="replace").splitlines()
        except FileNotFoundError:
            return ""
        return "\n".join(lines[-n:])

    def alive(self) -> bool:
        """Whether the process is running."""
        return self.proc is not None and self.proc.poll() is None

    def kill(self) -> None:
        """SIGKILL: a crash (no clean disconnect, nothing flushed)."""
        if self.proc is None:
            return
        if self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGKILL)
            self.kills += 1
        self.proc.wait()
        self.proc = None

    def stop(self) -> None:
        """SIGTERM (a clean stop), SIGKILL after 30 s."""
        if self.proc is None:
            return
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.proc = None

    def __enter__(self) -> HubProcess:
        self.start()
        return self

    def __exit__(self, et: type[BaseException] | None, e: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.stop()


# ---------------------------------------------------------------------------- the flood


def alert_body(alert_id: str, wall: float) -> dict[str, Any]:
    """The body of a help-point press, as a gateway renders it."""
    return {"help_point": "hp-1", "location": "platform 1, north stairs", "platform": "1",
            "alert_id": alert_id, "press_count": 1, "first_press": wall, "last_press": wall,
            "held": False, "escalated": False, "evidence": ["button pressed"],
            "state": "open"}


@dataclass
class Message:
    """One station event as published."""

    event_id: str
    station: str
    seq: int
    topic: str
    payload: bytes
    alert_id: str | None = None


def fleet_events(prefix: str, stations: int, per_station: int, *,
                 alert_every: int = 0, names: str = "st-{:03d}",
                 shuffle: random.Random | None = None) -> list[Message]:
    """`per_station` events from each of `stations` stations, seqs 1.. per station, in the
    order a fleet makes them (every station's seq 1, then every seq 2...). Every
    `alert_every`-th event of a station is a help-point press that raises a new P1 alert;
    the rest are P3 sensor readings. Station ids are `names.format(i)`. With `shuffle`,
    the stations take turns in a random order each round, as a real fleet's messages
    interleave (a fixed rotation, with an even number of stations, gives every station to
    the same member of a two-member shared subscription)."""
    out: list[Message] = []
    ids = [names.format(s) for s in range(stations)]
    renderers = [Topics(prefix, name) for name in ids]
    base = time.time()
    for seq in range(1, per_station + 1):
        turns = list(zip(ids, renderers, strict=True))
        if shuffle is not None:
            shuffle.shuffle(turns)
        for name, topics in turns:
            wall = base + seq * 0.01
            alert_id = None
            if alert_every and seq % alert_every == 0:
                alert_id = uuid.uuid4().hex
                event = Event("help_point.press", "hp-1", Priority.P1,
                              alert_body(alert_id, wall))
            else:
                event = Event("sensor.reading", "s-1", Priority.P3, {"value": seq})
            topic, payload = topics.render(event, seq, wall)
            out.append(Message(event.event_id, name, seq, topic, payload, alert_id))
    return out


@dataclass
class FloodResult:
    """What the broker confirmed."""

    published: int = 0
    refused: Counter[str] = field(default_factory=Counter)  # failure reason codes
    no_subscribers: int = 0  # 0x10: the broker dropped it (nobody's session wanted it)
    started: float = 0.0  # monotonic
    finished: float = 0.0  # monotonic, at the last PUBACK


class Flood:
    """Publishes messages at QoS 1 at a steady `rate` from its own thread (one paho client,
    as many stations behind one broker look to a subscriber), counting PUBACK reason codes.
    """

    def __init__(self, port: int, messages: Sequence[Message], rate: float) -> None:
        self.port, self.messages, self.rate = port, list(messages), rate
        self.result = FloodResult()
        self.sent = 0  # published so far (read from other threads: an int is atomic enough)
        self._thread = threading.Thread(target=self._run, name="bench.flood", daemon=True)
        self._error: Exception | None = None
        self._lock = threading.Lock()
        self._stop = threading.Event()

    def _on_publish(self, client: paho.Client, userdata: object, mid: int, rc: ReasonCode,
                    props: Properties) -> None:
        with self._lock:
            if rc.value == 0x10:
                self.result.no_subscribers += 1
            elif rc.is_failure:
                self.result.refused[rc.getName()] += 1

    def _run(self) -> None:
        try:
            client = paho.Client(CallbackAPIVersion.VERSION2, protocol=paho.MQTTv5,
                                 client_id=f"bench-flood-{uuid.uuid4().hex[:8]}")
            client.max_inflight_messages_set(1000)
            client.max_queued_messages_set(0)
            client.on_publish = self._on_publish
            client.connect("127.0.0.1", self.port)
            client.loop_start()
            try:
                self.result.started = start = time.monotonic()
                infos = []
                for i, m in enumerate(self.messages):
                    if self._stop.is_set():
                        break
                    due = start + i / self.rate
                    delay = due - time.monotonic()
                    if delay > 0.002:
                        time.sleep(delay)
                    infos.append(client.publish(m.topic, m.payload, qos=1))
                    self.sent = i + 1
                for info in infos:
                    info.wait_for_publish(600)
                self.result.finished = time.monotonic()
                self.result.published = sum(info.is_published() for info in infos)
            finally:
                client.disconnect()
                client.loop_stop()
        except Exception as exc:  # noqa: BLE001 - raised again by `join`
            self._error = exc

    def start(self) -> Flood:
        """Begin publishing."""
        self._thread.start()
        return self

    def stop(self) -> None:
        """Publish nothing more (what is published is still confirmed)."""
        self._stop.set()

    def done(self) -> bool:
        """Whether every message is published and confirmed."""
        return not self._thread.is_alive()

    def join(self, timeout: float = 900.0) -> FloodResult:
        """Wait for the last PUBACK."""
        self._thread.join(timeout)
        if self._thread.is_alive():
            raise TimeoutError("the flood did not finish")
        if self._error is not None:
            raise self._error
        return self.result

    @property
    def seconds(self) -> float:
        """The flood's planned length."""
        return len(self.messages) / self.rate


# ---------------------------------------------------------------------------- raw baseline


class RawCounter:
    """A raw paho-mqtt subscriber in its own process (`bench.hubraw`) with a persistent
    session at QoS 1: how many distinct events it received, and when the last arrived."""

    def __init__(self, port: int, topic: str, expect: int) -> None:
        self.args = [sys.executable, "-m", "bench.hubraw", "--port", str(port), "--topic",
                     topic, "--expect", str(expect)]
        self.proc: subprocess.Popen[str] | None = None

    def __enter__(self) -> RawCounter:
        self.proc = subprocess.Popen(self.args, cwd=REPO, stdin=subprocess.PIPE,
                                     stdout=subprocess.PIPE, text=True, bufsize=1)
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline().strip()
        if line != "ready":
            self.close()
            raise RuntimeError(f"raw subscriber did not start: {line!r}")
        return self

    @property
    def pid(self) -> int:
        """The subscriber's process id."""
        if self.proc is None:
            raise RuntimeError("the raw subscriber is not running")
        return self.proc.pid

    def result(self, timeout: float) -> tuple[int, float, int]:
        """(distinct events received, monotonic time of the last, duplicates), waiting up to
        `timeout` for all of them."""
        assert self.proc is not None
        assert self.proc.stdin is not None
        assert self.proc.stdout is not None
        self.proc.stdin.write(f"{timeout}\n")
        self.proc.stdin.flush()
        got, last, dup = self.proc.stdout.readline().split()
        return int(got), float(last), int(dup)

    def close(self) -> None:
        """Stop the process."""
        if self.proc is None:
            return
        with contextlib.suppress(OSError):
            if self.proc.stdin is not None:
                self.proc.stdin.close()
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        if self.proc.stdout is not None:
            self.proc.stdout.close()
        self.proc = None

    def __exit__(self, et: type[BaseException] | None, e: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()


# ---------------------------------------------------------------------------- the checks


@dataclass
class Audit:
    """What the hub's database holds against what the broker confirmed."""

    published: int
    stored: int
    lost: int  # published event ids with no row
    extra: int  # rows whose event id was never published (must be 0)
    duplicate_ids: int  # event ids with more than one row (0 by the primary key)
    duplicate_seqs: int  # (station, seq) with more than one row
    gaps_missing: int  # seqs HubStore.gaps() reports missing, all stations
    ends_missing: int  # stations whose first or last seq is not there (gaps() cannot see)
    alerts_expected: int
    alerts_stored: int
    open_transitions: int  # "open" transitions: one per alert, or alerts were recorded twice
    lost_ids: list[str] = field(default_factory=list)

    @property
    def clean(self) -> bool:
        """0 lost, 0 duplicate, every alert recorded once."""
        return (self.lost == 0 and self.extra == 0 and self.duplicate_ids == 0
                and self.duplicate_seqs == 0 and self.gaps_missing == 0
                and self.ends_missing == 0 and self.alerts_stored == self.alerts_expected
                and self.open_transitions == self.alerts_expected)


def audit(engine: Engine, messages: Sequence[Message], per_station: int) -> Audit:
    """Compare the database with what was published (event ids, seqs, alerts)."""
    published = {m.event_id for m in messages}
    with engine.connect() as conn:
        ids = [e for (e,) in conn.execute(select(events.c.event_id))]
        dup_ids = conn.execute(select(func.count()).select_from(
            select(events.c.event_id).group_by(events.c.event_id)
            .having(func.count() > 1).subquery())).scalar_one()
        dup_seqs = conn.execute(select(func.count()).select_from(
            select(events.c.station, events.c.seq).group_by(events.c.station, events.c.seq)
            .having(func.count() > 1).subquery())).scalar_one()
        ends = conn.execute(select(events.c.station, func.min(events.c.seq),
                                   func.max(events.c.seq)).group_by(events.c.station)).all()
        alerts_stored = conn.execute(select(func.count()).select_from(alerts)).scalar_one()
        opens = conn.execute(select(func.count()).select_from(transitions)
                             .where(transitions.c.state == "open")).scalar_one()
    stations = {m.station for m in messages}
    ok_ends = {s for s, lo, hi in ends if lo == 1 and hi == per_station}
    gaps = HubStore(engine).gaps()
    have = set(ids)
    lost = sorted(published - have)
    return Audit(
        published=len(published), stored=len(ids), lost=len(lost),
        extra=len(have - published), duplicate_ids=int(dup_ids),
        duplicate_seqs=int(dup_seqs), gaps_missing=sum(len(g.missing) for g in gaps),
        ends_missing=len(stations - ok_ends),
        alerts_expected=sum(m.alert_id is not None for m in messages),
        alerts_stored=int(alerts_stored), open_transitions=int(opens), lost_ids=lost[:20],
    )


def wait_stored(engine: Engine, n: int, timeout: float, *, stall_s: float = 0.0,
                poll_s: float = 0.05) -> tuple[int, float]:
    """Poll until `n` events are stored, `timeout` passes, or (with `stall_s`) nothing new
    arrives for that long; returns (stored, monotonic time the last new row was seen)."""
    deadline = time.monotonic() + timeout
    got = stored_count(engine)
    seen = time.monotonic()
    while got < n and time.monotonic() < deadline:
        time.sleep(poll_s)
        now = stored_count(engine)
        if now > got:
            got, seen = now, time.monotonic()
        elif stall_s and time.monotonic() - seen > stall_s:
            break
    return got, seen


@contextlib.contextmanager
def hubs_stopped(*hubs: HubProcess) -> Iterator[None]:
    """Stop (SIGTERM, then SIGKILL) every hub at the end, whatever happened."""
    try:
        yield
    finally:
        for hub in hubs:
            with contextlib.suppress(Exception):
                hub.stop()


def ms(seconds: float) -> float:
    """Seconds to milliseconds."""
    return seconds * 1000.0
