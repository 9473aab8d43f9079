"""Shared pieces of the benchmarks: subscriber process, raw paho baselines, stats, tables."""

from __future__ import annotations

import asyncio
import contextlib
import json
import math
import os
import platform
import re
import shutil
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Any, Self

import paho.mqtt.client as paho
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode

from gateway.config.loading import parse_config
from gateway.config.models import StationConfig
from gateway.core.model import Event, Priority
from gateway.daemon import Gateway
from gateway.ops.cli import setup_logging
from gateway.uplink.topics import Topics

REPO = Path(__file__).resolve().parent.parent
PREFIX = "stationgw/v1"


# ---------------------------------------------------------------------------- statistics


def percentile(values: Sequence[float], p: float) -> float:
    """The p-th percentile (0-100), linear interpolation between closest ranks."""
    if not values:
        return math.nan
    data = sorted(values)
    k = (len(data) - 1) * p / 100
    lo, hi = math.floor(k), math.ceil(k)
    return data[lo] + (data[hi] - data[lo]) * (k - lo)


def median(values: Sequence[float]) -> float:
    """Median, or NaN for no values."""
    return statistics.median(values) if values else math.nan


def ratio(value: float, base: float) -> float:
    """value / base, NaN when the base is zero or missing."""
    return value / base if base and not math.isnan(base) else math.nan


@dataclass
class Figure:
    """One row of a results table."""

    name: str
    value: float
    unit: str
    baseline: float = math.nan
    baseline_name: str = ""
    target: str = ""
    met: bool | None = None
    note: str = ""

    @property
    def ratio(self) -> float:
        """value / baseline."""
        return ratio(self.value, self.baseline)

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready form."""
        return {
            "name": self.name, "value": self.value, "unit": self.unit,
            "baseline": self.baseline, "baseline_name": self.baseline_name,
            "ratio": self.ratio, "target": self.target, "met": self.met, "note": self.note,
        }


def fmt(value: float) -> str:
    """Compact number for tables."""
    if math.isnan(value):
        return "-"
    if abs(value) >= 1000:
        return f"{value:,.0f}"
    if abs(value) >= 100:
        return f"{value:.0f}"
    if abs(value) >= 10:
        return f"{value:.1f}"
    return f"{value:.2f}"


def print_table(title: str, figures: Sequence[Figure]) -> None:
    """Print figures as a Markdown table (readable in a terminal, pasteable into docs)."""
    print(f"\n## {title}\n")
    print("| figure | gateway | baseline | ratio | target | met |")
    print("|---|---|---|---|---|---|")
    for f in figures:
        base = f"{fmt(f.baseline)} {f.unit}" if not math.isnan(f.baseline) else "-"
        if f.baseline_name and not math.isnan(f.baseline):
            base += f" ({f.baseline_name})"
        met = "-" if f.met is None else ("yes" if f.met else "**no**")
        print(
            f"| {f.name} | {fmt(f.value)} {f.unit} | {base} | {fmt(f.ratio)}x | "
            f"{f.target or '-'} | {met} |"
        )
    notes = [f"- {f.name}: {f.note}" for f in figures if f.note]
    if notes:
        print()
        print("\n".join(notes))


def write_json(path: Path | None, bench: str, figures: Sequence[Figure], extra: Any) -> None:
    """Write results for `bench.run_all` (only when --json is given)."""
    if path is None:
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(
        {"bench": bench, "figures": [f.as_dict() for f in figures], "extra": extra}, indent=2
    ))


# ---------------------------------------------------------------------------- machine


def _cmd_version(args: list[str]) -> str:
    with contextlib.suppress(OSError, subprocess.SubprocessError):
        out = subprocess.run(args, capture_output=True, text=True, timeout=5, check=False)
        text = (out.stdout or out.stderr).strip().splitlines()
        return text[0] if text else "?"
    return "?"


def machine_info() -> dict[str, str]:
    """What the figures were measured on."""
    from importlib.metadata import version  # noqa: PLC0415

    cpuinfo = Path("/proc/cpuinfo").read_text()
    model = re.search(r"model name\s*:\s*(.*)", cpuinfo)
    mem = re.search(r"MemTotal:\s*(\d+)", Path("/proc/meminfo").read_text())
    disk = "?"
    with contextlib.suppress(OSError, subprocess.SubprocessError):
        disk = subprocess.run(
            ["findmnt", "-no", "SOURCE,FSTYPE", "-T", tempfile.gettempdir()],
            capture_output=True, text=True, timeout=5, check=False,
        ).stdout.strip()
    return {
        "cpu": model.group(1).strip() if model else platform.processor(),
        "cores": str(os.cpu_count()),
        "ram": f"{int(mem.group(1)) / 1024 / 1024:.1f} GiB" if mem else "?",
        "kernel": platform.release(),
        "python": platform.python_version(),
        "sqlite": sqlite3.sqlite_version,
        "paho-mqtt": version("paho-mqtt"),
        "aiomqtt": version("aiomqtt"),
        "mosquitto": _cmd_version(
            [shutil.which("mosquitto") or "/usr/sbin/mosquitto", "-h"]
        ).removeprefix("mosquitto version "),
        "tmp disk": disk,
        "load avg": " ".join(f"{x:.2f}" for x in os.getloadavg()),
    }


def print_machine() -> None:
    """Print the machine line every benchmark starts with."""
    info = machine_info()
    print("machine: " + "; ".join(f"{k} {v}" for k, v in info.items()))


# ---------------------------------------------------------------------------- setup


@contextlib.contextmanager
def workdir(prefix: str) -> Iterator[Path]:
    """A temporary folder (for the databases and logs), removed at the end."""
    path = Path(tempfile.mkdtemp(prefix=f"stationgw-bench-{prefix}-"))
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


def raw_config(folder: Path, broker_url: str, **overrides: Any) -> dict[str, Any]:
    """Station config data with a unique station id and the outbox in `folder`."""
    raw: dict[str, Any] = {
        "station_id": f"bench-{uuid.uuid4().hex[:10]}",
        "brokers": [{"url": broker_url}],
        "store": {"path": str(folder / "outbox.db")},
        "mqtt": {"reconnect_initial_s": 0.05, "reconnect_max_s": 0.5},
    }
    for key, value in overrides.items():
        if isinstance(value, dict) and isinstance(raw.get(key), dict):
            raw[key] = {**raw[key], **value}
        else:
            raw[key] = value
    return raw


def make_config(folder: Path, broker_url: str, **overrides: Any) -> StationConfig:
    """A validated station config (see `raw_config`)."""
    return parse_config(raw_config(folder, broker_url, **overrides))


def log_to_file(path: Path) -> None:
    """Log as the daemon does (`stationgw run`'s own setup, INFO, one line per event), into
    a file instead of journald."""
    setup_logging("INFO", path.open("a", encoding="utf-8"))


def rendered(topics: Topics, priority: Priority, seq: int, kind: str = "help_point.press") -> (
    tuple[str, str, bytes]
):
    """(event_id, topic, payload) exactly as the gateway would render such an event."""
    event = Event(kind, "hp-1", priority, {"presses": 1})
    topic, payload = topics.render(event, seq, time.time())
    return event.event_id, topic, payload


# ---------------------------------------------------------------------------- subscriber


class Subscriber:
    """`bench.subscriber` in its own process; receipt times arrive here over a pipe.

    A reader thread collects `event_id -> monotonic_ns` receipts; callers wait on them from
    plain threads (`wait`) or from the event loop (`wait_async`).
    """

    def __init__(self, port: int, topics: Sequence[str], report: str = ".*") -> None:
        args = [sys.executable, "-m", "bench.subscriber", "--port", str(port), "--report", report]
        for topic in topics:
            args += ["--topic", topic]
        self._args = args
        self.proc: subprocess.Popen[str] | None = None
        self.receipts: dict[str, int] = {}
        self._counts: list[int] = []
        self.resubscribed = 0
        self._cond = threading.Condition()
        self._waiters: dict[str, tuple[asyncio.AbstractEventLoop, asyncio.Future[int]]] = {}
        self._thread: threading.Thread | None = None

    def __enter__(self) -> Subscriber:
        self.proc = subprocess.Popen(
            self._args, cwd=REPO, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
            bufsize=1,
        )
        if self.proc.stdout is None:
            raise RuntimeError("subscriber has no stdout pipe")
        line = self.proc.stdout.readline()
        if line.strip() != "ready":
            self.close()
            raise RuntimeError(f"subscriber did not start: {line!r}")
        self._thread = threading.Thread(target=self._read, name="bench.subscriber", daemon=True)
        self._thread.start()
        return self

    def __exit__(
        self, et: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    def _read(self) -> None:
        proc = self.proc
        if proc is None or proc.stdout is None:
            return
        for line in proc.stdout:
            kind, *rest = line.split()
            with self._cond:
                if kind == "m":
                    key, t_ns = rest[0], int(rest[1])
                    self.receipts[key] = t_ns
                    waiter = self._waiters.pop(key, None)
                    if waiter is not None:
                        loop, future = waiter
                        loop.call_soon_threadsafe(_resolve, future, t_ns)
                elif kind == "c":
                    self._counts.append(int(rest[0]))
                elif kind == "s":
                    self.resubscribed += 1
                self._cond.notify_all()

    def wait(self, key: str, timeout: float = 30.0) -> int:
        """Receipt time (monotonic ns) of `key`, waiting for it from a plain thread."""
        with self._cond:
            if not self._cond.wait_for(lambda: key in self.receipts, timeout):
                raise TimeoutError(f"subscriber did not receive {key} within {timeout}s")
            return self.receipts[key]

    async def wait_async(self, key: str) -> int:
        """Receipt time (monotonic ns) of `key`, waiting for it on the event loop (callers
        bound the wait with `asyncio.timeout`)."""
        loop = asyncio.get_running_loop()
        with self._cond:
            if key in self.receipts:
                return self.receipts[key]
            future: asyncio.Future[int] = loop.create_future()
            self._waiters[key] = (loop, future)
        return await future

    def wait_resubscribed(self, before: int, timeout: float = 30.0) -> None:
        """Wait until the subscriber has subscribed again since `resubscribed` was `before`."""
        with self._cond:
            if not self._cond.wait_for(lambda: self.resubscribed > before, timeout):
                raise TimeoutError("subscriber did not subscribe again after the restart")

    def count(self, timeout: float = 10.0) -> int:
        """Messages the subscriber has received so far (all topics)."""
        if self.proc is None or self.proc.stdin is None:
            raise RuntimeError("subscriber is not running")
        with self._cond:
            n = len(self._counts)
            self.proc.stdin.write("count\n")
            self.proc.stdin.flush()
            if not self._cond.wait_for(lambda: len(self._counts) > n, timeout):
                raise TimeoutError("subscriber did not answer")
            return self._counts[-1]

    def wait_count(self, n: int, timeout: float = 60.0) -> int:
        """Wait until the subscriber has received at least `n` messages."""
        deadline = time.monotonic() + timeout
        got = self.count()
        while got < n and time.monotonic() < deadline:
            time.sleep(0.05)
            got = self.count()
        return got

    def close(self) -> None:
        """Stop the subscriber process."""
        if self.proc is None:
            return
        with contextlib.suppress(OSError, ValueError):
            if self.proc.stdin is not None:
                self.proc.stdin.close()
        try:
            self.proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        if self._thread is not None:
            self._thread.join(timeout=5)
        if self.proc.stdout is not None:
            self.proc.stdout.close()
        self.proc = None


def _resolve(future: asyncio.Future[int], value: int) -> None:
    if not future.done():
        future.set_result(value)


# ---------------------------------------------------------------------------- raw paho baseline


def plain_json_properties() -> Properties:
    """The PUBLISH properties the gateway sends, as plain paho would (packed per publish).

    The baselines stay plain paho-mqtt: the gateway's packed-once `json_properties` is one
    of the gateway's own optimisations, not the baseline's.
    """
    props = Properties(PacketTypes.PUBLISH)  # type: ignore[no-untyped-call]
    props.PayloadFormatIndicator = 1
    props.ContentType = "application/json"
    return props


class ThreadedPaho:
    """A paho-mqtt MQTT 5 client with its own network thread (`loop_start`), as a context
    manager: entering connects and waits until the subclass sets `_ready` (on CONNACK, or on
    SUBACK for a subscriber)."""

    READY = "CONNACK"  # what `_ready` stands for, for the error message

    def __init__(self, port: int, client_id_prefix: str) -> None:
        self.client = paho.Client(
            CallbackAPIVersion.VERSION2, client_id=f"{client_id_prefix}-{uuid.uuid4().hex[:8]}",
            protocol=paho.MQTTv5,
        )
        self.port = port
        self._ready = threading.Event()

    def __enter__(self) -> Self:
        self.client.connect("127.0.0.1", self.port, keepalive=60)
        self.client.loop_start()
        if not self._ready.wait(10):
            self.close()
            raise RuntimeError(f"{type(self).__name__}: no {self.READY} within 10 s")
        return self

    def __exit__(
        self, et: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    def close(self) -> None:
        """Disconnect and stop the network thread."""
        self.client.disconnect()
        self.client.loop_stop()


def mock_help_points(n: int) -> list[dict[str, Any]]:
    """`n` help points on distinct mock BCM pins (button 2+2i, lamp 3+2i)."""
    return [
        {"id": f"hp-{i + 1}", "location": f"bench {i + 1}", "pin": 2 + 2 * i,
         "lamp_pin": 3 + 2 * i}
        for i in range(n)
    ]


class RawClient(ThreadedPaho):
    """A plain paho-mqtt MQTT 5 client with its own network thread (`loop_start`)."""

    def __init__(self, port: int, *, inflight: int = 32) -> None:
        super().__init__(port, "bench-raw")
        self.client.max_inflight_messages_set(inflight)
        self.client.max_queued_messages_set(0)
        self.properties = plain_json_properties()
        self._lock = threading.Lock()
        self._acked = 0
        self._all_acked = threading.Event()
        self._expect = -1
        self._acks: dict[int, threading.Event] = {}
        self._window = threading.BoundedSemaphore(inflight)
        self.failures = 0
        self.client.on_connect = self._on_connect
        self.client.on_publish = self._on_publish

    def _on_connect(
        self, client: paho.Client, userdata: Any, flags: Any, rc: ReasonCode,
        props: Properties | None,
    ) -> None:
        self._ready.set()

    def _on_publish(
        self, client: paho.Client, userdata: Any, mid: int, rc: ReasonCode, props: Properties
    ) -> None:
        self._window.release()
        with self._lock:
            self._acked += 1
            if rc.is_failure:
                self.failures += 1
            event = self._acks.pop(mid, None)
            if self._acked == self._expect:
                self._all_acked.set()
        if event is not None:
            event.set()

    def publish_confirmed(self, topic: str, payload: bytes, timeout: float = 10.0) -> None:
        """Publish at QoS 1 and wait for its PUBACK."""
        done = threading.Event()
        if not self._window.acquire(timeout=timeout):
            raise TimeoutError("in-flight window stayed full")
        with self._lock:
            info = self.client.publish(topic, payload, 1, properties=self.properties)
            self._acks[info.mid] = done
        if not done.wait(timeout):
            raise TimeoutError("no PUBACK")

    def publish_all(self, messages: Sequence[tuple[str, bytes]], timeout: float = 300.0) -> float:
        """Publish every message at QoS 1, at most `inflight` unacknowledged at once; return
        seconds from the first publish to the last PUBACK.

        The window is ours, not paho's queue: paho would queue every message at once, and
        past 65,535 queued messages its 16-bit packet ids wrap and overwrite each other.
        """
        with self._lock:
            self._acked = 0
            self._expect = len(messages)
            self._all_acked.clear()
        start = time.perf_counter()
        deadline = time.monotonic() + timeout
        for topic, payload in messages:
            if not self._window.acquire(timeout=max(0.0, deadline - time.monotonic())):
                raise TimeoutError(f"only {self._acked} of {len(messages)} PUBACKs")
            self.client.publish(topic, payload, 1, properties=self.properties)
        if not self._all_acked.wait(max(0.0, deadline - time.monotonic())):
            raise TimeoutError(f"only {self._acked} of {len(messages)} PUBACKs")
        elapsed = time.perf_counter() - start
        with self._lock:
            self._expect = -1
        return elapsed


class CommitBaseline:
    """One SQLite commit per event, WAL and synchronous=FULL: the floor of any durable accept."""

    def __init__(self, path: Path) -> None:
        remove_db(path)
        self.conn = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
        mode = self.conn.execute("PRAGMA journal_mode = WAL").fetchone()[0]
        self.conn.execute("PRAGMA synchronous = FULL")
        sync = self.conn.execute("PRAGMA synchronous").fetchone()[0]
        if mode != "wal" or sync != 2:
            raise RuntimeError(f"baseline database is {mode}/{sync}, not wal/FULL")
        self.conn.execute(
            "CREATE TABLE IF NOT EXISTS outbox (seq INTEGER PRIMARY KEY, event_id TEXT, "
            "topic TEXT, payload BLOB)"
        )

    def commit(self, event_id: str, topic: str, payload: bytes) -> None:
        """Insert one row in its own transaction."""
        self.conn.execute("BEGIN IMMEDIATE")
        self.conn.execute(
            "INSERT INTO outbox (event_id, topic, payload) VALUES (?, ?, ?)",
            (event_id, topic, payload),
        )
        self.conn.execute("COMMIT")

    def close(self) -> None:
        """Close the connection."""
        self.conn.close()


@dataclass
class Samples:
    """Latency samples in milliseconds."""

    ms: list[float] = field(default_factory=list)

    def add_ns(self, start_ns: int, end_ns: int) -> None:
        """Record one sample from two monotonic_ns readings."""
        self.ms.append((end_ns - start_ns) / 1e6)

    @property
    def p50(self) -> float:
        """Median."""
        return percentile(self.ms, 50)

    @property
    def p99(self) -> float:
        """99th percentile."""
        return percentile(self.ms, 99)


def raw_latency(
    raw: RawClient,
    sub: Subscriber,
    topics: Topics,
    n: int,
    *,
    commit: CommitBaseline | None = None,
    gap_s: float = 0.0,
    priority: Priority = Priority.P1,
) -> Samples:
    """Baseline latency: [one SQLite commit, then] one raw QoS 1 publish, start to receipt."""
    samples = Samples()
    for i in range(n):
        event_id, topic, payload = rendered(topics, priority, i)
        start = time.monotonic_ns()
        if commit is not None:
            commit.commit(event_id, topic, payload)
        raw.publish_confirmed(topic, payload)
        samples.add_ns(start, sub.wait(event_id))
        if gap_s:
            time.sleep(gap_s)
    return samples


def env_summary(extra: dict[str, str] | None = None) -> dict[str, str]:
    """Machine info plus benchmark parameters, for --json."""
    return {**machine_info(), **(extra or {})}


@contextlib.asynccontextmanager
async def running(gateway: Gateway) -> AsyncIterator[Gateway]:
    """Open a gateway, run it in the background until the block ends, then stop it."""
    async with gateway:
        task = asyncio.create_task(gateway.run(), name="bench.gateway")
        try:
            await asyncio.wait_for(gateway.publisher.connected.wait(), 30)
            yield gateway
        finally:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task


async def wait_until(check: Callable[[], Awaitable[bool]], interval: float = 0.002) -> None:
    """Poll `check` until it holds (the outbox offers no event to wait on)."""
    while not await check():  # noqa: ASYNC110 - polling is the point: no event to wait on
        await asyncio.sleep(interval)


def remove_db(path: Path) -> None:
    """Delete an SQLite database file with its WAL and shared-memory files."""
    for suffix in ("", "-wal", "-shm"):
        Path(f"{path}{suffix}").unlink(missing_ok=True)


def delivered(gateway: Gateway) -> int:
    """Rows the gateway has seen confirmed by a successful PUBACK."""
    counters = gateway.health.counters
    return sum(counters[f"delivered_{p.name}"] for p in Priority)


CLK_TCK = os.sysconf("SC_CLK_TCK")


def proc_cpu_s(pid: int) -> float:
    """CPU seconds (user + system, all threads) a process has used, from /proc/PID/stat."""
    stat = Path(f"/proc/{pid}/stat").read_text()
    fields = stat[stat.rindex(")") + 2:].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK  # utime, stime: fields 14 and 15


def proc_memory_kib(pid: int) -> dict[str, int]:
    """VmRSS, VmHWM, RssAnon, RssFile and RssShmem of a process in KiB (/proc/PID/status)."""
    status = Path(f"/proc/{pid}/status").read_text()
    return {
        key: int(m.group(1)) if (m := re.search(rf"{key}:\s*(\d+)", status)) else 0
        for key in ("VmRSS", "VmHWM", "RssAnon", "RssFile", "RssShmem")
    }


class CpuMeter:
    """CPU seconds used by this process, the broker and the subscriber over a span."""

    def __init__(self, **pids: int) -> None:
        self.pids = {"self": os.getpid(), **pids}
        self._start: dict[str, float] = {}
        self.used: dict[str, float] = {}

    def __enter__(self) -> CpuMeter:
        self._start = {name: proc_cpu_s(pid) for name, pid in self.pids.items()}
        return self

    def __exit__(self, *exc: object) -> None:
        self.used = {
            name: proc_cpu_s(pid) - self._start[name] for name, pid in self.pids.items()
        }


async def done(value: bool) -> bool:
    """`value`, awaitable (for `wait_until` with a check that needs no I/O)."""
    return value


async def outbox_empty(gateway: Gateway) -> bool:
    """True when the gateway's outbox holds no rows."""
    return (await gateway.outbox.depth()).rows == 0
