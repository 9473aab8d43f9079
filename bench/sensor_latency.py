"""Sensor frame to alert at a subscriber over a pty, at 115200 and 921600 baud; daemon CPU.

Latency: two simulated boards (`firmware_bridge.simulator.BoardSimulator`), each on its own
pty behind a symlink (a stand-in for /dev/serial/by-id/...), are two `[[sensors]]` of one
in-process `Gateway`, configured at 115200 and 921600 baud. Each has one threshold rule on
channel `beam`: above 1, clear_at 0.5, min_duration_s 0, class P0. A sample is timed from
`time.monotonic_ns()` just before the simulator encodes and writes the READ frame that
crosses the threshold (`board.reading("beam", 1, "bool")`, one os.write to the pty master)
to `monotonic_ns()` first thing in the subscriber's `on_message` for the `sensor.threshold`
event it raises. The clearing reading follows (beam 0, timed the same way to its
`sensor.cleared` event, class P3), so every threshold reading is a new alert. The simulator
runs on the gateway's event loop, as in tests/test_boards.py; its writes are synchronous.

A pty does not pace bytes at the baud rate: the gateway sets the speed (the pty records it,
checked with tcgetattr) and the bytes arrive at memory speed whatever it is. The two baud
figures therefore measure the same software path; the wire time a frame would take on a
real UART is printed beside them for reference (8N1: 10 bits a byte). A USB serial adapter
adds its own buffering on top, which neither a pty nor the baud rate shows.

Baseline (as in `bench.pin_latency`): one SQLite commit (WAL, synchronous=FULL) then one raw
paho-mqtt QoS 1 publish of a P0 event on the same station's topic, to the same subscriber
process and broker, in rounds alternating with the two boards.

CPU: `python -m gateway.ops.cli run --config FILE` runs as a subprocess (config defaults, logging
to a file) with one `[[sensors]]` board; the simulator runs in this process. First the board
only sends its heartbeats (one a second, the protocol's rate): the idle baseline. Then it
sends 50 frames/s: 10 heartbeats and 40 READ frames a second over four channels (sound level
20/s, platform-edge beam 10/s, temperature 5/s, crowd count 5/s), with telemetry rules
(deadband and min interval) and two threshold rules that trip now and then (a beam break
every 10 s, a passing train's noise every 20 s). CPU is utime+stime of the daemon from
/proc/PID/stat over the span, as % of one core.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import math
import os
import random
import subprocess
import termios
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from decimal import Decimal
from pathlib import Path
from typing import Any

from bench import REPO
from bench.baselines import CommitBaseline, raw_latency
from bench.clients import RawClient, Subscriber
from bench.figures import Figure, Samples, median, print_table, write_json
from bench.machine import print_machine, workdir
from bench.procs import proc_cpu_s
from bench.station import done, log_to_file, make_config, raw_config, wait_until
from firmware_bridge.codec import REJECT_REASONS, encode
from firmware_bridge.frames import Reading, Unit
from firmware_bridge.simulator import BoardSimulator
from gateway.core.model import Priority
from gateway.daemon import Gateway
from gateway.outbox.sqlite import Row
from gateway.station.status import status_path
from gateway.testing.config import write_config
from gateway.testing.daemon import StationDaemon, running
from gateway.testing.mosquitto import Mosquitto
from gateway.uplink.topics import Topics

BAUDS = (115200, 921600)
SPEED_NAMES = {termios.B115200: 115200, termios.B921600: 921600}
CHANNEL = "beam"
FRAME_BYTES = 40  # the reference frame size the wire time is quoted for
BITS_PER_BYTE = 10  # 8N1: start bit, 8 data bits, stop bit
BASELINE_NAME = "commit + raw QoS 1 publish"
# CPU phase
READINGS_PER_S = 40
LOAD_HEARTBEAT_S = 0.1  # 10 heartbeats a second: with the readings, 50 frames/s
IDLE_HEARTBEAT_S = 1.0  # the protocol's heartbeat interval
CPU_SENSOR = "platform-1"


def wire_ms(n_bytes: int, baud: int) -> float:
    """Milliseconds `n_bytes` take on a UART at `baud`, 8N1."""
    return n_bytes * BITS_PER_BYTE / baud * 1000


def sensor_id(baud: int) -> str:
    """The latency phase's sensor id for a baud rate."""
    return f"edge-{baud}"


def welcomed(board: BoardSimulator) -> Callable[[], bool]:
    """A check for `BoardSimulator.wait_until`: the gateway has welcomed the board."""
    return lambda: board.state == "running"


def port_speed(path: Path) -> int:
    """The output speed the pty behind `path` is set to, in baud (0 if not a known one)."""
    fd = os.open(path, os.O_RDONLY | os.O_NOCTTY | os.O_NONBLOCK)
    try:
        return SPEED_NAMES.get(termios.tcgetattr(fd)[5], 0)
    finally:
        os.close(fd)


# ---------------------------------------------------------------------------- latency


class SensorDriver:
    """Sends threshold and clearing readings one at a time and times each to the subscriber."""

    def __init__(
        self, gw: Gateway, sub: Subscriber, boards: dict[str, BoardSimulator], gap_s: float
    ) -> None:
        self.sub = sub
        self.boards = boards
        self.gap_s = gap_s
        self.alert_ids: set[str] = set()
        self._want: tuple[str, str] | None = None  # (kind, sensor id)
        self._pending: asyncio.Future[Row] | None = None
        gw.outbox.listeners.append(self._on_accept)

    def _on_accept(self, row: Row) -> None:
        """Outbox listener (on the loop): the reading's event is committed; its id is known."""
        if self._pending is None or self._pending.done() or self._want is None:
            return
        kind, sensor = self._want
        if row.kind == kind and json.loads(row.payload)["body"].get("sensor") == sensor:
            self._pending.set_result(row)

    async def run(self, sensor: str, n: int) -> tuple[Samples, Samples]:
        """`n` threshold crossings of one board, each followed by its clearing reading."""
        alerts, clears = Samples(), Samples()
        for _ in range(n):
            start, end, row = await self._reading(sensor, 1, "sensor.threshold")
            if row.priority != Priority.P0 or row.event_id in self.alert_ids:
                raise RuntimeError(f"{sensor}: threshold event {row.event_id} is "
                                   f"{row.priority.name}, expected a new P0")
            self.alert_ids.add(row.event_id)
            alerts.add_ns(start, end)
            if self.gap_s:
                await asyncio.sleep(self.gap_s)
            start, end, row = await self._reading(sensor, 0, "sensor.cleared")
            clears.add_ns(start, end)
            if self.gap_s:
                await asyncio.sleep(self.gap_s)
        return alerts, clears

    async def _reading(self, sensor: str, value: int, kind: str) -> tuple[int, int, Row]:
        self._want = (kind, sensor)
        self._pending = asyncio.get_running_loop().create_future()
        board = self.boards[sensor]
        start = time.monotonic_ns()
        board.reading(CHANNEL, value, "bool")
        try:
            row = await asyncio.wait_for(self._pending, 30)
            async with asyncio.timeout(30):
                end = await self.sub.wait_async(row.event_id)
        except TimeoutError:
            raise RuntimeError(f"{sensor}: {CHANNEL}={value} gave no {kind} within 30 s") from None
        return start, end, row


def latency_sensor(baud: int, port: Path) -> dict[str, Any]:
    """A `[[sensors]]` entry with one P0 threshold rule that triggers at once."""
    return {
        "id": sensor_id(baud), "port": str(port), "baud": baud, "location": f"bench {baud}",
        "thresholds": [{"channel": CHANNEL, "above": 1, "clear_at": 0.5, "min_duration_s": 0,
                        "class": "P0", "label": "edge intrusion"}],
    }


@dataclass
class LatencyResult:
    """Samples of the latency phase."""

    alerts: dict[int, Samples] = field(default_factory=dict)
    clears: dict[int, Samples] = field(default_factory=dict)
    base: Samples = field(default_factory=Samples)
    round_p99: dict[str, list[float]] = field(default_factory=dict)
    speeds: dict[int, int] = field(default_factory=dict)
    frame_bytes: int = 0


async def measure_latency(n: int, rounds: int, warmup: int, gap_s: float) -> LatencyResult:
    """Both boards and the baseline in rotating rounds; return the samples."""
    result = LatencyResult(
        alerts={b: Samples() for b in BAUDS}, clears={b: Samples() for b in BAUDS},
        round_p99={**{str(b): [] for b in BAUDS}, "baseline": []},
    )
    with workdir("sensor") as folder, Mosquitto() as broker:
        log_to_file(folder / "gateway.log")
        by_id = folder / "by-id"
        by_id.mkdir()
        ports = {b: by_id / f"usb-bench-{b}-if00" for b in BAUDS}
        config = make_config(folder, broker.url,
                             sensors=[latency_sensor(b, ports[b]) for b in BAUDS])
        topics = Topics(config.mqtt.topic_prefix, config.station_id)
        commit = CommitBaseline(folder / "baseline.db")
        try:
            async with contextlib.AsyncExitStack() as stack:
                sims = {sensor_id(b): await stack.enter_async_context(
                    BoardSimulator(ports[b], device_id=f"sim-{b}")) for b in BAUDS}
                sub = stack.enter_context(
                    Subscriber(broker.port, [f"{topics.root}/events/#"], report="/events/"))
                raw = stack.enter_context(RawClient(broker.port))
                gw = await stack.enter_async_context(
                    running(Gateway(config), connected_within_s=30))
                for sim in sims.values():
                    await sim.wait_until(welcomed(sim), timeout_s=30)
                assert gw.boards is not None
                links = [b.link for b in gw.boards.boards.values()]
                async with asyncio.timeout(30):
                    await wait_until(lambda: done(all(ln.state == "online" for ln in links)))
                result.speeds = {b: port_speed(ports[b]) for b in BAUDS}
                driver = SensorDriver(gw, sub, sims, gap_s)
                for b in BAUDS:
                    await driver.run(sensor_id(b), warmup)
                await asyncio.to_thread(raw_latency, raw, sub, topics, warmup, commit=commit,
                                        gap_s=gap_s, priority=Priority.P0)
                per_round = max(1, n // rounds)
                order: list[int | None] = [*BAUDS, None]  # None: the baseline
                for r in range(rounds):
                    k = r % len(order)
                    for baud in order[k:] + order[:k]:
                        if baud is None:
                            base = await asyncio.to_thread(
                                raw_latency, raw, sub, topics, per_round, commit=commit,
                                gap_s=gap_s, priority=Priority.P0,
                            )
                            result.base.ms += base.ms
                            result.round_p99["baseline"].append(base.p99)
                            continue
                        alerts, clears = await driver.run(sensor_id(baud), per_round)
                        result.alerts[baud].ms += alerts.ms
                        result.clears[baud].ms += clears.ms
                        result.round_p99[str(baud)].append(alerts.p99)
        finally:
            commit.close()
    result.frame_bytes = len(encode(Reading(seq=255, sensor=CHANNEL, value=Decimal(1),
                                            unit="bool")))
    return result


def latency_figures(res: LatencyResult, rounds: int) -> list[Figure]:
    """Rows of the latency table."""
    figures: list[Figure] = []
    for baud in BAUDS:
        a = res.alerts[baud]
        spread = (
            f"{len(a.ms)} threshold readings and {len(res.base.ms)} baseline events in "
            f"{rounds} rotating rounds; per-round p99 medians "
            f"{median(res.round_p99[str(baud)]):.2f} vs {median(res.round_p99['baseline']):.2f}"
            f" ms; port speed set by the gateway (tcgetattr): {res.speeds.get(baud, 0)} baud"
        )
        figures += [
            Figure(f"READ to subscriber p50, {baud} baud", a.p50, "ms", res.base.p50,
                   BASELINE_NAME),
            Figure(f"READ to subscriber p99, {baud} baud", a.p99, "ms", res.base.p99,
                   BASELINE_NAME, note=spread),
        ]
    clears = Samples([x for b in BAUDS for x in res.clears[b].ms])
    figures += [
        Figure("clearing READ to sensor.cleared (P3) p50", clears.p50, "ms", res.base.p50,
               BASELINE_NAME),
        Figure("clearing READ to sensor.cleared (P3) p99", clears.p99, "ms", res.base.p99,
               BASELINE_NAME, note=f"both boards pooled, {len(clears.ms)} readings"),
    ]
    for baud in BAUDS:
        figures.append(Figure(
            f"wire time of a {FRAME_BYTES}-byte frame at {baud} baud (reference)",
            wire_ms(FRAME_BYTES, baud), "ms",
            note=(f"8N1, not measured: a pty does not pace bytes; this bench's READ frame is "
                  f"{res.frame_bytes} bytes = {wire_ms(res.frame_bytes, baud):.3f} ms"),
        ))
    return figures


# ---------------------------------------------------------------------------- CPU


def cpu_station(folder: Path, broker_url: str, port: Path) -> dict[str, Any]:
    """Config data: defaults, one sensor board with telemetry and two threshold rules."""
    return raw_config(folder, broker_url, sensors=[{
        "id": CPU_SENSOR, "port": str(port), "baud": 115200, "location": "platform 1",
        "platform": "1",
        "thresholds": [
            {"channel": "beam", "above": 1, "clear_at": 0.5, "min_duration_s": 0.3,
             "class": "P0", "label": "edge intrusion"},
            {"channel": "spl", "above": 85, "clear_at": 80, "min_duration_s": 1.0,
             "class": "P2", "label": "noise"},
        ],
        "telemetry": [
            {"channel": "spl", "min_interval_s": 1.0, "deadband": 3},
            {"channel": "temp", "min_interval_s": 10.0, "deadband": 0.5},
            {"channel": "crowd", "min_interval_s": 5.0, "deadband": 5},
        ],
    }])


@dataclass
class Feed:
    """Plausible readings of a platform board, 40 a second over four channels."""

    rng: random.Random
    spl: float = 65.0
    temp: float = 18.0
    crowd: float = 30.0
    readings: int = 0

    def next(self, i: int, t: float) -> tuple[str, Decimal, Unit]:
        """Reading number `i`, `t` seconds into the feed."""
        slot = i % 8  # per 8 readings: 4 sound, 2 beam, 1 temperature, 1 crowd count
        if slot in (0, 2, 4, 6):
            if t % 20 < 3:  # a train passes: loud for 3 s
                return "spl", Decimal(f"{self.rng.gauss(88, 1.5):.1f}"), "dB"
            self.spl += 0.2 * (65 - self.spl) + self.rng.gauss(0, 1.5)
            return "spl", Decimal(f"{self.spl:.1f}"), "dB"
        if slot in (1, 5):
            return "beam", Decimal(1 if 5 <= t % 10 < 6 else 0), "bool"
        if slot == 3:
            self.temp += 0.05 * (18 - self.temp) + self.rng.gauss(0, 0.05)
            return "temp", Decimal(f"{self.temp:.2f}"), "C"
        self.crowd = max(0.0, self.crowd + self.rng.gauss(0, 1))
        return "crowd", Decimal(round(self.crowd)), "count"


async def feed(board: BoardSimulator, source: Feed) -> None:
    """Send READINGS_PER_S readings a second on an absolute schedule until cancelled."""
    loop = asyncio.get_running_loop()
    t0 = loop.time()
    period = 1 / READINGS_PER_S
    i = 0
    while True:
        due = t0 + i * period
        delay = due - loop.time()
        if delay > 0:
            await asyncio.sleep(delay)
        channel, value, unit = source.next(i, due - t0)
        board.reading(channel, value, unit)
        source.readings += 1
        i += 1


@dataclass
class CpuSpan:
    """CPU of the daemon (and of this process) over one span."""

    daemon_pct: float
    self_pct: float
    span_s: float
    windows: list[float]


async def sample_cpu(pid: int, span_s: float, window_s: float) -> CpuSpan:
    """% of one core the process used over `span_s`, total and per window."""
    me = os.getpid()
    start, start_me, t0 = proc_cpu_s(pid), proc_cpu_s(me), time.monotonic()
    last, last_t = start, t0
    windows = []
    while (left := span_s - (time.monotonic() - t0)) > 0.01:
        await asyncio.sleep(min(window_s, left))
        now, now_t = proc_cpu_s(pid), time.monotonic()
        windows.append(100 * (now - last) / (now_t - last_t))
        last, last_t = now, now_t
    span = time.monotonic() - t0
    return CpuSpan(100 * (last - start) / span, 100 * (proc_cpu_s(me) - start_me) / span, span,
                   windows)


def _read_status(path: Path, newer_than: float) -> tuple[dict[str, int], float] | None:
    with contextlib.suppress(OSError, ValueError, KeyError):
        mtime = path.stat().st_mtime
        if mtime > newer_than:
            report = json.loads(path.read_text())
            return dict(report["boards"][CPU_SENSOR]), mtime
    return None


async def board_counters(path: Path, newer_than: float) -> tuple[dict[str, int], float]:
    """The daemon's link counters of the board from its status file, once it was rewritten
    after `newer_than` (wall time; it is rewritten every 5 s); and the file's mtime."""
    async with asyncio.timeout(15):
        while True:
            found = await asyncio.to_thread(_read_status, path, newer_than)
            if found is not None:
                return found
            await asyncio.sleep(0.2)


@dataclass
class CpuResult:
    """The CPU phase's spans and what was sent and received."""

    idle: CpuSpan
    load: CpuSpan
    readings: int
    heartbeats: int
    events: int
    decoded_per_s: float
    counters: dict[str, int]
    exit_code: int


async def measure_cpu(span_s: float, window_s: float, settle_s: float) -> CpuResult:
    """The daemon as a subprocess: idle with heartbeats only, then fed 50 frames/s."""
    with workdir("sensor-cpu") as folder, Mosquitto() as broker:
        by_id = folder / "by-id"
        by_id.mkdir()
        port = by_id / "usb-bench-platform-1-if00"
        raw = cpu_station(folder, broker.url, port)
        conf = folder / "station.toml"
        write_config(conf, raw)
        daemon = StationDaemon(conf, folder / "daemon.log", cwd=REPO)
        config = daemon.config  # as the daemon reads it
        topics = Topics(config.mqtt.topic_prefix, config.station_id)
        status = status_path(config)
        proc: subprocess.Popen[bytes] | None = None
        code = -1
        async with BoardSimulator(port, heartbeat_interval_s=IDLE_HEARTBEAT_S,
                                  gateway_lost_after_s=3.0) as board:
            with Subscriber(broker.port, [f"{topics.root}/events/#"], report="^$") as sub:
                try:
                    proc = daemon.start()
                    try:
                        await board.wait_until(lambda: board.state == "running", timeout_s=30)
                    except TimeoutError:
                        raise RuntimeError(
                            f"the daemon did not welcome the board within 30 s (exit code "
                            f"{proc.poll()}):\n{daemon.log_tail()}"
                        ) from None
                    await asyncio.sleep(settle_s)
                    idle = await sample_cpu(proc.pid, span_s, window_s)
                    before, t_before = await board_counters(status, time.time() - 0.5)
                    events0 = await asyncio.to_thread(sub.count)
                    source = Feed(random.Random(1))
                    board.heartbeat_interval_s = LOAD_HEARTBEAT_S
                    feeder = asyncio.create_task(feed(board, source), name="bench.feed")
                    try:
                        await asyncio.sleep(settle_s)
                        readings0 = source.readings
                        load = await sample_cpu(proc.pid, span_s, window_s)
                        readings = source.readings - readings0
                        events = await asyncio.to_thread(sub.count) - events0
                        after, t_after = await board_counters(status, time.time())
                    finally:
                        feeder.cancel()
                        with contextlib.suppress(asyncio.CancelledError):
                            await feeder
                    if proc.poll() is not None:
                        raise RuntimeError(f"the daemon exited with {proc.returncode}")
                finally:
                    if proc is not None:
                        daemon.stop()
                        code = proc.returncode
    decoded = (after["frames"] - before["frames"]) / max(t_after - t_before, 1e-9)
    return CpuResult(idle, load, readings, round(load.span_s / LOAD_HEARTBEAT_S), events,
                     decoded, after, code)


def cpu_figures(res: CpuResult, window_s: float) -> list[Figure]:
    """Rows of the CPU table."""
    frames = res.readings + res.heartbeats
    rate = frames / res.load.span_s
    extra_pct = res.load.daemon_pct - res.idle.daemon_pct
    bad = {k: res.counters[k] for k in (*REJECT_REASONS, "gaps", "lost", "resets")}
    return [
        Figure(f"daemon CPU at {rate:.0f} frames/s", res.load.daemon_pct, "% of a core",
               res.idle.daemon_pct, "same daemon, heartbeats only (1/s)",
               note=(f"{res.readings} READ + ~{res.heartbeats} HB frames over "
                     f"{res.load.span_s:.0f} s; the daemon decoded {res.decoded_per_s:.0f} "
                     f"frames/s (status-file counters); {res.events} events published "
                     f"({res.events / res.load.span_s:.1f}/s); per-window CPU % "
                     f"{', '.join(f'{w:.1f}' for w in res.load.windows)}; link counters "
                     f"{bad}; the simulator's process used {res.load.self_pct:.1f}%")),
        Figure("daemon CPU per frame (above idle)", extra_pct / 100 / rate * 1e6, "us",
               note="(load % - idle %) / frames per second"),
        Figure(f"daemon CPU idle, board heartbeats only, {res.idle.span_s:.0f} s",
               res.idle.daemon_pct, "% of a core",
               note="per-window CPU % " + ", ".join(f"{w:.2f}" for w in res.idle.windows)
               + f"; a window's resolution is {100 * 0.01 / window_s:.2f}% (10 ms CPU ticks)"),
    ]


# ---------------------------------------------------------------------------- main


def main() -> None:
    """Command line."""
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--quick", action="store_true",
                        help="short run: 40 readings a board, 8 s CPU spans")
    parser.add_argument("-n", type=int, default=300, help="threshold readings per board")
    parser.add_argument("--rounds", type=int, default=3, help="rotating rounds")
    parser.add_argument("--gap-ms", type=float, default=5.0, help="pause after each receipt")
    parser.add_argument("--cpu-span", type=float, default=30.0, help="seconds per CPU span")
    parser.add_argument("--window", type=float, default=5.0, help="seconds per CPU window")
    parser.add_argument("--json", type=Path, help="also write results here")
    args = parser.parse_args()
    if args.quick:
        n, rounds, warmup, span = 40, 2, 10, 8.0
    else:
        n, rounds, warmup, span = args.n, args.rounds, 40, args.cpu_span
    print_machine()
    lat = asyncio.run(measure_latency(n, rounds, warmup, args.gap_ms / 1000))
    lat_figures = latency_figures(lat, rounds)
    print_table("Sensor READ frame to alert at a subscriber (pty, sequential)", lat_figures)
    print(
        "\nA pty moves bytes at memory speed whatever the baud rate: both rows measure the "
        "software path (pty read, decode, rules, durable commit, QoS 1 publish). On a real "
        "UART add the frame's wire time (the reference rows), plus whatever buffering the USB "
        "serial adapter adds."
    )
    cpu = asyncio.run(measure_cpu(span, min(args.window, span), 2.0))
    figures = cpu_figures(cpu, min(args.window, span))
    print_table("Daemon CPU with a sensor board (python -m gateway.ops.cli run)", figures)
    print(f"\ndaemon exit code {cpu.exit_code}; load avg after: "
          + " ".join(f"{x:.2f}" for x in os.getloadavg()))
    all_figures = lat_figures + figures
    if any(math.isnan(f.value) for f in all_figures[:4]):
        raise SystemExit("no samples")
    write_json(args.json, "sensor_latency", all_figures, {
        "n": n, "rounds": rounds, "warmup": warmup, "gap_ms": args.gap_ms,
        "port_speeds": lat.speeds, "frame_bytes": lat.frame_bytes,
        "round_p99_ms": lat.round_p99,
        "cpu": {"idle_windows": cpu.idle.windows, "load_windows": cpu.load.windows,
                "readings": cpu.readings, "events": cpu.events, "counters": cpu.counters,
                "exit_code": cpu.exit_code},
    })


if __name__ == "__main__":
    main()
