"""The benchmarks' MQTT clients: the handle of `bench.subscriber` (the receiver whose
receipt times the figures use), and plain paho-mqtt publishers, the raw baseline."""

from __future__ import annotations

import asyncio
import contextlib
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Sequence
from types import TracebackType
from typing import Any, Self

import paho.mqtt.client as paho
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode

from bench import REPO


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
