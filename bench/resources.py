"""The daemon's memory (RSS) in steady state and its idle CPU, beside a minimal paho process.

`python -m gateway.ops.cli run --config FILE` runs as a subprocess against a real Mosquitto, with
the config's defaults (health every 30 s, keepalive 30 s) and logging to a file, as journald
would take it. The load is fed two ways. First as an outage feeds it: rows are put in its
outbox before it starts (`Outbox.accept`), and it publishes them all to a subscriber on
start. Then four help points
on gpiozero's mock pins (`gpio_pin_factory = "mock"`) are pressed through the daemon's
simulate socket, as `stationgw simulate press` does. Then it idles.
RSS is VmRSS from /proc/PID/status after the load (VmHWM is the peak); idle CPU is
utime+stime from /proc/PID/stat over the idle span, as % of one core, also per window.
Baseline, measured the same way over the same span: a python process that imports paho-mqtt,
connects (keepalive 30 s) and sits in `loop_forever()`.
"""

from __future__ import annotations

import argparse
import signal
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bench import REPO
from bench.clients import Subscriber
from bench.figures import Figure, median, print_table, write_json
from bench.machine import print_machine, workdir
from bench.procs import proc_cpu_s, proc_memory_kib
from bench.station import PREFIX, raw_config
from gateway.config.loading import parse_config
from gateway.core.model import Event, Priority
from gateway.inputs.simulate import send
from gateway.outbox.sqlite import Outbox
from gateway.testing.config import write_config
from gateway.testing.daemon import StationDaemon
from gateway.testing.mosquitto import Mosquitto
from gateway.uplink.topics import Topics

BASELINE = """
import sys
import paho.mqtt.client as mqtt
client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, protocol=mqtt.MQTTv5)
client.connect("127.0.0.1", int(sys.argv[1]), keepalive=30)
client.loop_forever()
"""


HELP_POINTS = (("hp-1", 17, 27), ("hp-2", 22, 23), ("hp-3", 5, 6), ("hp-4", 13, 19))


def station(folder: Path, broker_url: str) -> dict[str, Any]:
    """Config data: defaults, plus four help points on gpiozero's mock pins."""
    return raw_config(
        folder, broker_url, gpio_pin_factory="mock",
        help_points=[{"id": hp, "pin": pin, "lamp_pin": lamp} for hp, pin, lamp in HELP_POINTS],
        mqtt={},  # the defaults: health every 30 s, keepalive 30 s
    )


def press_all(raw: dict[str, Any], presses: int) -> int:
    """Press every help point `presses` times through the simulate socket (one thread per
    help point); returns the presses the daemon confirmed."""
    config = parse_config(raw)

    def press(hp: str) -> int:
        done = 0
        for _ in range(presses):
            reply = send(config, {"cmd": "press", "help_point": hp})
            done += bool(reply.get("ok"))
        return done

    with ThreadPoolExecutor(max_workers=len(HELP_POINTS)) as pool:
        return sum(pool.map(press, [hp for hp, _, _ in HELP_POINTS]))


def prefill(raw: dict[str, Any], rows: int) -> None:
    """Put `rows` events (a P1 in ten, the rest P3) in the outbox before the daemon starts."""
    config = parse_config(raw)
    topics = Topics(config.mqtt.topic_prefix, config.station_id)
    with Outbox(config.store.path, topics.render) as outbox:
        outbox.accept([
            Event("help_point.press", "hp-1", Priority.P1, {"presses": 1}) if i % 10 == 0
            else Event("sensor.reading", "s-1", Priority.P3, {"value": i})
            for i in range(rows)
        ])


def stop(proc: subprocess.Popen[bytes]) -> int:
    """SIGTERM, then SIGKILL after 10 s; returns the exit code."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    return proc.returncode


@dataclass
class Proc:
    """One measured process."""

    name: str
    popen: subprocess.Popen[bytes]
    idle: dict[str, float] = field(default_factory=dict)
    windows: dict[str, list[float]] = field(default_factory=dict)
    memory: dict[str, int] = field(default_factory=dict)


def daemon(folder: Path, raw: dict[str, Any]) -> subprocess.Popen[bytes]:
    """Start `python -m gateway.ops.cli run --config FILE` for this config."""
    conf = write_config(folder / f"{raw['station_id']}.toml", raw)
    return StationDaemon(conf, folder / "daemon.log", cwd=REPO).start()


def sample_idle(procs: list[Proc], phase: str, span_s: float, window_s: float) -> float:
    """CPU % of one core of each process over `span_s`, total and per window."""
    start = {p.name: proc_cpu_s(p.popen.pid) for p in procs}
    last = dict(start)
    for p in procs:
        p.windows[phase] = []
    t0 = time.monotonic()
    while (left := span_s - (time.monotonic() - t0)) > 0.01:
        step = min(window_s, left)
        time.sleep(step)
        for p in procs:
            now = proc_cpu_s(p.popen.pid)
            p.windows[phase].append(100 * (now - last[p.name]) / step)
            last[p.name] = now
    span = time.monotonic() - t0
    for p in procs:
        p.idle[phase] = 100 * (last[p.name] - start[p.name]) / span
    return span


def measure(
    rows: int, presses: int, idle_s: float, window_s: float
) -> tuple[list[Figure], dict[str, Any]]:
    """Start the processes, feed the daemons, then measure idle CPU and steady RSS."""
    procs: list[Proc] = []
    with workdir("resources") as folder, Mosquitto() as broker:
        raw = station(folder, broker.url)
        bare = raw_config(folder / "bare", broker.url, gpio_pin_factory="auto", help_points=[])
        for config in (raw, bare):
            prefill(config, rows)
        try:
            with Subscriber(broker.port, [f"{PREFIX}/+/events/#"], report="^$") as sub:
                procs.append(Proc("gateway", daemon(folder, raw)))
                procs.append(Proc("gateway without help points", daemon(folder, bare)))
                procs.append(Proc("python + paho, connected", subprocess.Popen(
                    [sys.executable, "-c", BASELINE, str(broker.port)], cwd=REPO,
                    stdin=subprocess.DEVNULL,
                )))
                start = time.monotonic()
                got = sub.wait_count(2 * rows, timeout=120)
                if got < 2 * rows or any(p.popen.poll() is not None for p in procs):
                    raise RuntimeError(f"daemons delivered {got} of {2 * rows} rows")
                loaded_s = time.monotonic() - start
                time.sleep(2)  # let the last deletes and log lines settle
                span = sample_idle(procs, "idle", idle_s, window_s)
                pressed = press_all(raw, presses)
                time.sleep(1)
                events = sub.count() - got
                if events < 1:
                    raise RuntimeError(f"{pressed} presses published no event")
                blink_span = sample_idle(procs, "blinking", idle_s / 3, window_s)
                for p in procs:
                    p.memory = proc_memory_kib(p.popen.pid)
        finally:
            codes = [stop(p.popen) for p in procs]
    gw, no_hp, base = procs
    mem, bmem = gw.memory, base.memory
    figures = [
        Figure("RSS, steady state after load", mem["VmRSS"] / 1024, "MiB",
               bmem["VmRSS"] / 1024, base.name, "<= 40 MB", mem["VmRSS"] * 1024 <= 40e6,
               f"{mem['VmRSS'] * 1024 / 1e6:.1f} MB; anon {mem['RssAnon'] / 1024:.1f} + file "
               f"{mem['RssFile'] / 1024:.1f} MiB; peak (VmHWM) {mem['VmHWM'] / 1024:.1f} MiB; "
               f"without help points {no_hp.memory['VmRSS'] / 1024:.1f} MiB; load: {rows:,} "
               f"backlog rows each (delivered in {loaded_s:.1f} s), then {pressed} presses "
               f"on 4 mock help points ({events} event messages)"),
        Figure(f"idle CPU over {span:.0f} s, lamps idle", gw.idle["idle"], "% of a core",
               base.idle["idle"], base.name, "<= 0.5%", gw.idle["idle"] <= 0.5,
               f"median {window_s:.0f} s window {median(gw.windows['idle']):.2f}% (baseline "
               f"{median(base.windows['idle']):.2f}%); without help points "
               f"{no_hp.idle['idle']:.2f}%; a window's resolution is "
               f"{100 * 0.01 / window_s:.2f}% (10 ms CPU ticks)"),
        Figure(f"idle CPU over {blink_span:.0f} s, lamps blinking 'sent'", gw.idle["blinking"],
               "% of a core", base.idle["blinking"], base.name,
               note="after the presses, until dispatch acknowledges (no dispatcher in the "
               f"benchmark); without help points {no_hp.idle['blinking']:.2f}%"),
    ]
    extra = {
        "rows": rows, "presses": pressed, "exit_codes": codes,
        "procs": {p.name: {"idle": p.idle, "windows": p.windows, "memory_kib": p.memory}
                  for p in procs},
    }
    return figures, extra


def main() -> None:
    """Command line."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="short run (a smoke test)")
    parser.add_argument("--rows", type=int, default=5000, help="rows fed through the daemon")
    parser.add_argument("--presses", type=int, default=10, help="presses per help point")
    parser.add_argument("--idle", type=float, default=60, help="idle seconds measured")
    parser.add_argument("--window", type=float, default=10, help="seconds per CPU window")
    parser.add_argument("--json", type=Path, help="also write results here")
    args = parser.parse_args()
    rows, presses, idle = (1000, 2, 10.0) if args.quick else (args.rows, args.presses, args.idle)
    print_machine()
    figures, extra = measure(rows, presses, idle, min(args.window, idle))
    print_table("Daemon resources (python -m gateway.ops.cli run)", figures)
    write_json(args.json, "resources", figures, extra)


if __name__ == "__main__":
    main()
