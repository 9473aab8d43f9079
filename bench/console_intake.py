"""Console intake: events per second `stationgw dispatch watch --json` takes in from many
stations publishing at once, beside a raw paho-mqtt and a raw aiomqtt subscriber.

    python -m bench.console_intake            # 50 stations, 200,000 events, 3 repetitions
    python -m bench.console_intake --quick    # 50 stations, 20,000 events, 1 repetition

Every repetition runs each subscriber alone, in rotating order, against the same Mosquitto:

- console: `watch_json` in its own process (QoS 1, the dispatch filter, JSON parse, de-dup
  on `event_id`, one flushed line per new event on a pipe this process counts);
- paho: a raw paho-mqtt 2 client with its own network thread (`loop_start`) that only counts;
- aiomqtt: a raw aiomqtt 2 client (`async for message in client.messages`) that only counts.

The stations are paho-mqtt clients in `--procs` publisher processes (QoS 1, 20 in flight
each, distinct station ids). Each publishes a realistic stream rendered by `EventMessage`:
presses, repeats, holds, acknowledgements, assignments, resolutions, stuck buttons, and 2 %
re-sends of one of the station's last 32 events with the same `event_id` (what a gateway
re-sends after a reconnect: its in-flight window).
Intake is messages received / (last receipt - first receipt); the publishers start together
after every subscriber said it is subscribed, and enqueue everything at once, so the broker
holds a backlog and the subscriber is the bottleneck whenever it is slower than them (the
table prints the publish rate too). Memory is the subscriber process's peak RSS (VmHWM).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import math
import os
import random
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import paho.mqtt.client as paho
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode

from bench import REPO
from bench.figures import Figure, fmt, median, write_json
from bench.machine import print_machine
from bench.procs import proc_cpu_s, proc_memory_kib
from bench.station import PREFIX
from gateway.contract.asyncapi import EventMessage
from gateway.core.model import REQUESTED_RESPONSE, Priority
from gateway.testing.mosquitto import Mosquitto
from gateway.uplink.client import json_properties

FILTER = f"{PREFIX}/+/events/#"
KINDS = ("console", "paho", "aiomqtt")
RESEND = 0.02  # share of events sent twice with the same event_id
GATEWAY_WINDOW = 32  # mqtt.inflight_window: how far back a re-send reaches
INFLIGHT = 20


# ---------------------------------------------------------------------------- the stream


def _event(
    station: str, seq: int, kind: str, priority: Priority, *, source: str, body: dict[str, Any]
) -> tuple[str, str, bytes]:
    """(event_id, topic, payload) as a gateway renders it."""
    event_id = str(uuid.uuid4())
    message = EventMessage(
        event_id=event_id, station=station, priority=priority.name,
        requested_response=REQUESTED_RESPONSE[priority], kind=kind, source=source, seq=seq,
        wall_time=round(time.time(), 6), body=body,
    )
    topic = f"{PREFIX}/{station}/events/{priority.name}"
    return event_id, topic, message.model_dump_json(by_alias=True).encode()


def station_stream(station: str, count: int, rng: random.Random) -> list[tuple[str, bytes]]:
    """`count` messages of one station: alert lifecycles, stuck buttons and a few re-sends."""
    out: list[tuple[str, bytes]] = []
    sent: list[tuple[str, bytes]] = []
    seq = 0
    while len(out) < count:
        hp = f"hp-{rng.randrange(8)}"
        if rng.random() < 0.05:
            seq += 1
            place = {"help_point": hp, "location": f"platform {hp[-1]}", "platform": hp[-1]}
            _, topic, payload = _event(station, seq, "help_point.stuck", Priority.P2, source=hp,
                                     body=place)
            sent.append((topic, payload))
            out.append((topic, payload))
            continue
        alert_id = uuid.uuid4().hex
        first = time.time()
        body: dict[str, Any] = {
            "help_point": hp, "location": f"platform {hp[-1]}, north stairs",
            "platform": hp[-1], "alert_id": alert_id, "press_count": 1,
            "first_press": first, "last_press": first, "held": False, "escalated": False,
            "evidence": ["button pressed"], "state": "open",
        }
        steps: list[tuple[str, Priority, dict[str, Any]]] = [
            ("help_point.press", Priority.P1, {})
        ]
        if rng.random() < 0.3:
            steps.append(("help_point.repeat", Priority.P1, {"press_count": 2}))
        if rng.random() < 0.2:
            steps.append(("help_point.hold", Priority.P0, {"held": True}))
        steps += [
            ("alert.acknowledged", Priority.P1, {"state": "acknowledged",
                                                 "dispatcher": "desk-3"}),
            ("alert.assigned", Priority.P1, {"state": "assigned", "team": "crisis_team",
                                             "eta_s": 420}),
            ("alert.resolved", Priority.P1, {"state": "resolved"}),
        ]
        for kind, priority, change in steps:
            seq += 1
            body = {**body, **change}
            _, topic, payload = _event(station, seq, kind, priority, source=hp, body=body)
            sent.append((topic, payload))
            out.append((topic, payload))
            if rng.random() < RESEND:
                # After a reconnect a gateway re-sends what was in flight (its window, 32 by
                # default) with the same event_id.
                out.append(rng.choice(sent[-GATEWAY_WINDOW:]))
    return out[:count]


def unique_events(streams: Sequence[Sequence[tuple[str, bytes]]]) -> int:
    """Distinct event_ids across the streams (what the console prints once each)."""
    return len({json.loads(p)["event_id"] for stream in streams for _, p in stream})


# ---------------------------------------------------------------------------- roles (children)


def role_publish(port: int, stations: list[str], per_station: int, seed: int) -> int:
    """Connect one paho client per station, say `ready`, publish on `go`, report `done`."""
    rng = random.Random(seed)
    streams = [station_stream(s, per_station, rng) for s in stations]
    print(f"unique {unique_events(streams)}", flush=True)
    props = json_properties("5")
    acked = 0
    total = sum(len(s) for s in streams)
    lock = threading.Lock()
    all_acked = threading.Event()

    def on_publish(
        client: paho.Client, userdata: Any, mid: int, rc: ReasonCode, p: Properties
    ) -> None:
        nonlocal acked
        with lock:
            acked += 1
            if acked == total:
                all_acked.set()

    clients = []
    for station in stations:
        client = paho.Client(CallbackAPIVersion.VERSION2, client_id=f"gw-{station}",
                             protocol=paho.MQTTv5)
        client.max_inflight_messages_set(INFLIGHT)
        client.max_queued_messages_set(0)
        client.on_publish = on_publish
        client.connect("127.0.0.1", port, keepalive=60)
        client.loop_start()
        clients.append(client)
    print("ready", flush=True)
    if sys.stdin.readline().strip() != "go":
        return 1
    start = time.monotonic_ns()
    for i in range(max(len(s) for s in streams)):  # interleaved: all stations at once
        for client, stream in zip(clients, streams, strict=True):
            if i < len(stream):
                topic, payload = stream[i]
                client.publish(topic, payload, 1, properties=props)
    ok = all_acked.wait(600)
    end = time.monotonic_ns()
    for client in clients:
        client.disconnect()
        client.loop_stop()
    print(f"done {start} {end} {acked if not ok else total}", flush=True)
    return 0 if ok else 1


def role_paho(port: int, expect: int) -> int:
    """Raw paho-mqtt subscriber: count messages; `done N FIRST_NS LAST_NS` at `expect`."""
    count = 0
    first = last = 0
    subscribed = threading.Event()
    finished = threading.Event()

    def on_connect(
        client: paho.Client, userdata: Any, flags: Any, rc: ReasonCode, p: Properties | None
    ) -> None:
        client.subscribe(FILTER, qos=1)

    def on_subscribe(client: paho.Client, userdata: Any, mid: int, rcs: Any, p: Any) -> None:
        subscribed.set()

    def on_message(client: paho.Client, userdata: Any, msg: paho.MQTTMessage) -> None:
        nonlocal count, first, last
        last = time.monotonic_ns()
        if count == 0:
            first = last
        count += 1
        if count == expect:
            finished.set()

    client = paho.Client(CallbackAPIVersion.VERSION2, client_id=f"bench-paho-{os.getpid()}",
                         protocol=paho.MQTTv5)
    client.on_connect = on_connect
    client.on_subscribe = on_subscribe
    client.on_message = on_message
    client.connect("127.0.0.1", port, keepalive=60)
    client.loop_start()
    if not subscribed.wait(10):
        return 1
    print("ready", flush=True)
    eof = threading.Event()

    def wait_eof() -> None:
        sys.stdin.read()
        eof.set()
        finished.set()

    threading.Thread(target=wait_eof, daemon=True).start()
    finished.wait()
    print(f"done {count} {first} {last}", flush=True)
    eof.wait()
    client.disconnect()
    client.loop_stop()
    return 0


def role_aiomqtt(port: int, expect: int) -> int:
    """Raw aiomqtt subscriber: count messages; `done N FIRST_NS LAST_NS` at `expect`."""
    import aiomqtt  # noqa: PLC0415 - only this child needs it

    count = 0
    first = last = 0

    async def take(client: aiomqtt.Client) -> None:
        nonlocal count, first, last
        async for _message in client.messages:
            last = time.monotonic_ns()
            if count == 0:
                first = last
            count += 1
            if count == expect:
                return

    async def main() -> None:
        async with aiomqtt.Client("127.0.0.1", port, identifier=f"bench-aio-{os.getpid()}",
                                  protocol=aiomqtt.ProtocolVersion.V5) as client:
            await client.subscribe(FILTER, qos=1)
            print("ready", flush=True)
            eof = asyncio.get_running_loop().run_in_executor(None, sys.stdin.read)
            taking = asyncio.create_task(take(client), name="bench.aiomqtt.take")
            await asyncio.wait({taking, eof}, return_when=asyncio.FIRST_COMPLETED)
            taking.cancel()
            print(f"done {count} {first} {last}", flush=True)
            await eof

    asyncio.run(main())
    return 0


CONSOLE = (
    "import sys; from dispatch.console import watch_json; "
    "sys.exit(watch_json('127.0.0.1', {port}, share=None, prefix='stationgw/v1', "
    "client_id=None))"
)


# ---------------------------------------------------------------------------- the parent


@dataclass
class Run:
    """One subscriber's repetition."""

    kind: str
    received: int
    seconds: float
    peak_rss_mib: float
    cpu_s: float  # the subscriber process's CPU time (all threads) from subscribed to done
    publish_rate: float
    complete: bool

    @property
    def cpu_us_per_msg(self) -> float:
        """CPU microseconds the subscriber spent per message."""
        return self.cpu_s / self.received * 1e6 if self.received else math.nan

    @property
    def rate(self) -> float:
        """Messages per second."""
        return self.received / self.seconds if self.seconds > 0 else math.nan


@dataclass
class Child:
    """A child process speaking the line protocol on stdin/stdout."""

    proc: subprocess.Popen[str]
    lines: list[tuple[str, int]] = field(default_factory=list)  # (line, monotonic_ns)
    cond: threading.Condition = field(default_factory=threading.Condition)
    count_lines: bool = False  # the console: count JSON lines instead of keeping them
    target: int = 0  # wake the waiter when this many JSON lines have come
    json_lines: int = 0
    first_ns: int = 0
    last_ns: int = 0

    def start_reader(self) -> None:
        """Read the child's stdout (and stderr, if piped) in threads."""
        threading.Thread(target=self._read, daemon=True, name="bench.child").start()
        if self.proc.stderr is not None:
            threading.Thread(target=self._read_err, daemon=True, name="bench.child.err").start()

    def _read_err(self) -> None:
        assert self.proc.stderr is not None
        for line in self.proc.stderr:
            with self.cond:
                self.lines.append(("err " + line.strip(), time.monotonic_ns()))
                self.cond.notify_all()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            now = time.monotonic_ns()
            with self.cond:
                if self.count_lines and line.startswith("{"):
                    if self.json_lines == 0:
                        self.first_ns = now
                    self.last_ns = now
                    self.json_lines += 1
                    if self.json_lines >= self.target:
                        self.cond.notify_all()
                    continue
                self.lines.append((line.strip(), now))
                self.cond.notify_all()
        with self.cond:
            self.lines.append(("eof", time.monotonic_ns()))
            self.cond.notify_all()

    def expect(self, prefix: str, timeout: float) -> str:
        """Wait for a line starting with `prefix`."""
        with self.cond:
            if not self.cond.wait_for(
                lambda: any(x.startswith((prefix, "eof")) for x, _ in self.lines), timeout
            ):
                raise TimeoutError(f"no {prefix!r} line within {timeout}s")
            line = next(x for x, _ in self.lines if x.startswith((prefix, "eof")))
            self.lines = [(x, t) for x, t in self.lines if x != line]
        if line == "eof":
            raise RuntimeError(f"child exited before {prefix!r} (code {self.proc.wait()})")
        return line

    def send(self, text: str) -> None:
        """Write a line to the child's stdin."""
        assert self.proc.stdin is not None
        self.proc.stdin.write(text + "\n")
        self.proc.stdin.flush()

    def stop(self) -> None:
        """Close stdin (the children exit on EOF), then make sure it is gone."""
        with contextlib.suppress(OSError, ValueError):
            if self.proc.stdin is not None:
                self.proc.stdin.close()
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        if self.proc.stdout is not None:
            with contextlib.suppress(OSError, ValueError):
                self.proc.stdout.close()


def spawn(args: list[str], *, count_lines: bool = False) -> Child:
    """Start a child with pipes and reader threads (stderr too, for the console)."""
    proc = subprocess.Popen(
        [sys.executable, *args], cwd=REPO, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
        stderr=subprocess.PIPE if count_lines else None, text=True, bufsize=1,
    )
    child = Child(proc, count_lines=count_lines)
    child.start_reader()
    return child


@contextlib.contextmanager
def children() -> Iterator[list[Child]]:
    """Every child started in the block is stopped at its end, whatever happens."""
    started: list[Child] = []
    try:
        yield started
    finally:
        for child in started:
            child.stop()


def one_run(
    kind: str, port: int, stations: list[str], *, per_station: int, procs: int, seed: int,
    timeout: float,
) -> Run:
    """Start the publishers, then one subscriber; publish everything; measure the intake."""
    with children() as started:
        groups = [stations[i::procs] for i in range(procs)]
        pubs = []
        for i, group in enumerate(groups):
            pub = spawn(["-m", "bench.console_intake", "_publish", "--port", str(port),
                         "--stations", ",".join(group), "--per-station", str(per_station),
                         "--seed", str(seed * 1000 + i)])
            started.append(pub)
            pubs.append(pub)
        unique = sum(int(p.expect("unique", 300).split()[1]) for p in pubs)
        for pub in pubs:
            pub.expect("ready", 60)
        total = per_station * len(stations)
        if kind == "console":
            sub = spawn(["-c", CONSOLE.format(port=port)], count_lines=True)
            sub.target = unique
        else:
            sub = spawn(["-m", "bench.console_intake", f"_{kind}", "--port", str(port),
                         "--expect", str(total)])
        started.append(sub)
        sub.expect("err stationgw dispatch: connected" if kind == "console" else "ready", 30)
        cpu_start = proc_cpu_s(sub.proc.pid)
        for pub in pubs:
            pub.send("go")
        spans = [p.expect("done", timeout).split() for p in pubs]
        pub_start = min(int(s[1]) for s in spans)
        pub_end = max(int(s[2]) for s in spans)
        publish_rate = total / ((pub_end - pub_start) / 1e9)
        deadline = time.monotonic() + timeout
        if kind == "console":
            with sub.cond:
                sub.cond.wait_for(
                    lambda: sub.json_lines >= unique or time.monotonic() > deadline,
                    timeout,
                )
                received, first, last = sub.json_lines, sub.first_ns, sub.last_ns
            complete = received == unique
            if not complete:
                print(f"  console printed {received} lines for {unique} distinct events")
            received = round(received * total / unique)  # messages taken in, re-sends too
        else:
            try:
                line = sub.expect("done", timeout)
            except TimeoutError:
                if sub.proc.stdin is not None:
                    sub.proc.stdin.close()  # the child reports what it has on EOF
                line = sub.expect("done", 30)
            _, n, f, la = line.split()
            received, first, last = int(n), int(f), int(la)
            complete = received == total
            if not complete:
                print(f"  {kind} received {received} of {total} messages")
        peak = proc_memory_kib(sub.proc.pid)["VmHWM"] / 1024
        cpu = proc_cpu_s(sub.proc.pid) - cpu_start
        return Run(kind, received, (last - first) / 1e9, peak, cpu, publish_rate, complete)


def main() -> int:
    """Command line (and the hidden child roles)."""
    if len(sys.argv) > 1 and sys.argv[1].startswith("_"):
        return child_main(sys.argv[1:])
    # SIGTERM unwinds like Ctrl-C, so the children and the broker are stopped on the way out
    signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(128 + signum))
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="20,000 events, 1 repetition")
    parser.add_argument("--stations", type=int, default=50, help="simulated stations")
    parser.add_argument("--events", type=int, help="events in total per run")
    parser.add_argument("--reps", type=int, help="repetitions of each subscriber")
    parser.add_argument("--procs", type=int, default=4, help="publisher processes")
    parser.add_argument("--only", nargs="+", choices=KINDS, default=list(KINDS))
    parser.add_argument("--json", type=Path, metavar="PATH", help="write results here")
    args = parser.parse_args()
    events = args.events or (20_000 if args.quick else 200_000)
    reps = args.reps or (1 if args.quick else 3)
    per_station = max(1, events // args.stations)
    stations = [f"st-{i:03d}-{uuid.uuid4().hex[:6]}" for i in range(args.stations)]
    print_machine()
    print(f"{args.stations} stations x {per_station} events ({per_station * args.stations} "
          f"messages, {RESEND:.0%} re-sends) from {args.procs} publisher processes, "
          f"{reps} repetition(s), QoS 1")
    runs: list[Run] = []
    with Mosquitto() as broker:
        for rep in range(reps):
            order = args.only[rep % len(args.only):] + args.only[:rep % len(args.only)]
            for kind in order:
                run = one_run(kind, broker.port, stations, per_station=per_station,
                              procs=args.procs, seed=rep, timeout=300)
                runs.append(run)
                print(f"  rep {rep + 1} {kind:<8} {fmt(run.rate):>8} msg/s "
                      f"{fmt(run.cpu_us_per_msg):>5} CPU us/msg "
                      f"peak RSS {run.peak_rss_mib:6.1f} MiB  publishers "
                      f"{fmt(run.publish_rate)} msg/s"
                      + ("" if run.complete else "  INCOMPLETE"), flush=True)
    figures = report(runs, args.only)
    write_json(args.json, "console_intake", figures, {"runs": [r.__dict__ for r in runs]})
    return 0 if all(r.complete for r in runs) else 1


def report(runs: list[Run], kinds: Sequence[str]) -> list[Figure]:
    """Print the medians with ratios to raw paho; return them as figures."""
    rate = {k: median([r.rate for r in runs if r.kind == k]) for k in kinds}
    rss = {k: median([r.peak_rss_mib for r in runs if r.kind == k]) for k in kinds}
    cpu = {k: median([r.cpu_us_per_msg for r in runs if r.kind == k]) for k in kinds}
    pub = median([r.publish_rate for r in runs])
    base = rate.get("paho", math.nan)
    print("\n## Console intake (medians)\n")
    print("| subscriber | intake msg/s | vs raw paho | CPU us/msg | peak RSS MiB |")
    print("|---|---|---|---|---|")
    for k in kinds:
        print(f"| {k} | {fmt(rate[k])} | {fmt(rate[k] / base)}x | {fmt(cpu[k])} | "
              f"{rss[k]:.1f} |")
    print(f"\npublishers together: {fmt(pub)} msg/s (a subscriber near this rate kept up)")
    return [
        Figure(f"{k} intake", rate[k], "msg/s", base, "raw paho",
               note=f"{fmt(cpu[k])} CPU us/msg, peak RSS {rss[k]:.1f} MiB")
        for k in kinds
    ]


def child_main(argv: list[str]) -> int:
    """Hidden roles run by the parent: `_publish`, `_paho`, `_aiomqtt`."""
    parser = argparse.ArgumentParser()
    parser.add_argument("role", choices=["_publish", "_paho", "_aiomqtt"])
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--stations", default="")
    parser.add_argument("--per-station", type=int, default=0)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--expect", type=int, default=0)
    args = parser.parse_args(argv)
    if args.role == "_publish":
        return role_publish(args.port, args.stations.split(","), args.per_station, args.seed)
    if args.role == "_paho":
        return role_paho(args.port, args.expect)
    return role_aiomqtt(args.port, args.expect)


if __name__ == "__main__":
    sys.exit(main())
