"""Fleet scale: the fleet twin at 500 stations, 50 of them real daemons, for 10 minutes.

`dispatch.fleet` runs the simulated metro (five districts, 50 lines, 500 stations; a week of
requests in 10 minutes, seed 14) into one Mosquitto and `stationgw hub run` on PostgreSQL
(`gateway.testing.postgres`; `--db sqlite` for SQLite). A raw paho subscriber in its own
process (`bench.subscriber`, QoS 1, clean session) takes the same events from the same broker
in the same run: the baseline.

Reported:
- end-to-end losses: the hub's seq audit (`HubStore.gaps`), and the simulated stations'
  last seqs that never arrived (target 0);
- press to committed: for real daemons from the moment the fleet writes the press (or
  hold) to the daemon's simulate socket to the hub's `received_at` of the request's first
  event; for simulated stations from the moment the station accepts the press (then
  publishes it) to `received_at`; p50 and p99, beside the raw subscriber's receipt of the
  same events (its monotonic clock against the fleet's);
- the hub's CPU (utime + stime from /proc/PID/stat over the run, as a share of one core)
  and peak RSS (VmHWM); the daemons' RSS; the machine's load.

    python -m bench.fleet_scale [--stations 500] [--daemons 50] [--duration 600]
                                [--db postgresql|sqlite] [--quick] [--json F]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import re
import threading
import time
from pathlib import Path
from typing import Any

from bench.clients import Subscriber
from bench.figures import Figure, median, percentile, print_table, write_json
from bench.machine import machine_info, print_machine, workdir
from bench.procs import proc_cpu_s, proc_memory_kib
from dispatch.fleet.run import Fleet, FleetOptions, latencies
from dispatch.fleet.schedule import DEFAULT_SPEED
from gateway.testing.mosquitto import Mosquitto
from gateway.testing.postgres import PostgreSQL


class Sampler:
    """Every few seconds: the machine's available memory and the daemons' total RSS."""

    def __init__(self, pids: list[int], every_s: float = 5.0) -> None:
        self.pids = pids
        self.every_s = every_s
        self.min_available_mib = float("inf")
        self.max_daemons_rss_mib = 0.0
        self.loads: list[float] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="bench.sampler", daemon=True)

    def __enter__(self) -> Sampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()

    def _run(self) -> None:
        while not self._stop.wait(self.every_s):
            meminfo = Path("/proc/meminfo").read_text()
            found = re.search(r"MemAvailable:\s*(\d+)", meminfo)
            if found:
                self.min_available_mib = min(self.min_available_mib, int(found[1]) / 1024)
            rss = 0
            for pid in self.pids:
                try:
                    rss += proc_memory_kib(pid)["VmRSS"]
                except OSError:
                    continue
            self.max_daemons_rss_mib = max(self.max_daemons_rss_mib, rss / 1024)
            self.loads.append(os.getloadavg()[0])


async def measure(args: argparse.Namespace, folder: Path, db_url: str,
                  broker: Mosquitto) -> dict[str, Any]:
    """Run the fleet once and collect what the figures need."""
    options = FleetOptions(stations=args.stations, daemons=args.daemons,
                           duration_s=args.duration, speed=args.speed, seed=args.seed)
    prefix = options.prefix
    with Subscriber(broker.port, [f"{prefix}/+/events/#"], report="/events/") as raw:
        async with Fleet(options, folder / "fleet", db_url, broker_url=broker.url) as fleet:
            assert fleet.hub_pid is not None
            assert fleet.engine is not None
            assert raw.proc is not None
            assert broker.process is not None
            hub_pid = fleet.hub_pid
            daemon_pids = [d.pid for d in fleet.real.values() if d.pid is not None]
            daemon_rss = [proc_memory_kib(p)["VmRSS"] / 1024 for p in daemon_pids]
            cpu0 = {name: proc_cpu_s(pid) for name, pid in (
                ("hub", hub_pid), ("broker", broker.process.pid), ("raw", raw.proc.pid),
                ("fleet", os.getpid()))}
            daemons0 = sum(proc_cpu_s(p) for p in daemon_pids)
            wall0 = time.monotonic()
            with Sampler(daemon_pids) as sampler:
                await fleet.play()
                result = await fleet.finish()
            span = time.monotonic() - wall0
            cpu = {name: proc_cpu_s(pid) - cpu0[name] for name, pid in (
                ("hub", hub_pid), ("broker", broker.process.pid), ("raw", raw.proc.pid),
                ("fleet", os.getpid()))}
            hub_memory = proc_memory_kib(hub_pid)
            delays = latencies(fleet.engine, result.sent)
        # The daemons have stopped: their CPU is in the sampler's span only as RSS.
    real = set(result.schedule.daemons)
    out: dict[str, dict[str, list[float]]] = {"real": {"hub": [], "raw": []},
                                              "sim": {"hub": [], "raw": []}}
    missing_raw = 0
    for sent in result.sent:
        group = out["real" if sent.request.station in real else "sim"]
        if sent.event_id in delays:
            group["hub"].append(delays[sent.event_id])
        t_ns = raw.receipts.get(sent.event_id)
        if t_ns is None:
            missing_raw += 1
        else:
            group["raw"].append((t_ns - sent.mono_ns) / 1e9)
    late = sorted(s.late_s for s in result.sent)
    return {
        "result": result, "latency": out, "missing_raw": missing_raw, "cpu": cpu,
        "daemons_cpu_start": daemons0, "span_s": span, "hub_memory_kib": hub_memory,
        "daemon_rss_mib": daemon_rss, "sampler": sampler, "late": late,
    }


def figures(m: dict[str, Any], args: argparse.Namespace) -> list[Figure]:
    """The results table."""
    result = m["result"]
    lat = m["latency"]
    span = m["span_s"]
    hub_cpu = m["cpu"]["hub"]
    out = [
        Figure("end-to-end lost (hub seq audit + missing tails)",
               result.hub.lost + result.hub.lost_tail, " events", target="0",
               met=result.hub.lost + result.hub.lost_tail == 0,
               note=f"{result.hub.events} events, {sum(result.hub.alerts.values())} alerts of "
               f"{len(result.schedule.requests)} requests, {result.hub.resolved} resolved; raw "
               f"subscriber missed {m['missing_raw']} opening events"),
    ]
    for group, name in (("real", f"{args.daemons} real daemons: press"),
                        ("sim", f"{args.stations - args.daemons} simulated stations: accept")):
        hub, raw = lat[group]["hub"], lat[group]["raw"]
        for p in (50, 99):
            out.append(Figure(
                f"{name} to committed in the hub, p{p} (n={len(hub)})",
                percentile(hub, p) * 1000, " ms", percentile(raw, p) * 1000,
                "raw paho receipt"))
    out += [
        Figure("hub CPU over the run", 100 * hub_cpu / span, " % of a core",
               note=f"{hub_cpu:.1f} s CPU in {span:.0f} s; broker {m['cpu']['broker']:.1f} s, "
               f"raw subscriber {m['cpu']['raw']:.1f} s, fleet process (450 clients, "
               f"dispatcher, schedule) {m['cpu']['fleet']:.1f} s"),
        Figure("hub peak RSS (VmHWM)", m["hub_memory_kib"]["VmHWM"] / 1024, " MiB"),
        Figure("daemon RSS at start, median", median(m["daemon_rss_mib"]), " MiB",
               note=f"all daemons together at most {m['sampler'].max_daemons_rss_mib:.0f} MiB "
               f"during the run; machine's MemAvailable at least "
               f"{m['sampler'].min_available_mib:.0f} MiB; load average median "
               f"{median(m['sampler'].loads):.1f}"),
        Figure("requests made late (behind schedule), p99", percentile(m["late"], 99) * 1000,
               " ms", note=f"max {max(m['late'], default=0) * 1000:.0f} ms (a real help point "
               "waits for its previous request's acknowledgement)"),
    ]
    return out


def main() -> None:
    """Run once and print the table."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--stations", type=int, default=500)
    parser.add_argument("--daemons", type=int, default=50)
    parser.add_argument("--duration", type=float, default=600.0, help="seconds (default 600)")
    parser.add_argument("--speed", type=float, help="default: a week in --duration")
    parser.add_argument("--seed", type=int, default=14)
    parser.add_argument("--db", choices=["postgresql", "sqlite"], default="postgresql")
    parser.add_argument("--quick", action="store_true",
                        help="100 stations, 10 daemons, 60 s")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    if args.quick:
        args.stations, args.daemons, args.duration = 100, 10, 60.0
    if args.speed is None:
        args.speed = DEFAULT_SPEED * 600 / args.duration
    print_machine()
    with workdir("fleet") as folder, Mosquitto(workdir=folder) as broker:
        if args.db == "sqlite":
            m = asyncio.run(measure(args, folder, f"sqlite:///{folder / 'hub.db'}", broker))
        else:
            with PostgreSQL() as pg:
                m = asyncio.run(measure(args, folder, pg.new_database("fleet"), broker))
    result = m["result"]
    print(f"\n{args.stations} stations ({args.daemons} real daemons), {args.duration:g} s at "
          f"x{args.speed:g} (a simulated week in {7 * 86400 / args.speed:.0f} s), seed "
          f"{args.seed}, hub on {args.db}; {len(result.schedule.requests)} requests")
    for problem in result.problems:
        print(f"PROBLEM: {problem}")
    table = figures(m, args)
    print_table("Fleet scale", table)
    write_json(args.json, "fleet_scale", table, {
        "machine": machine_info(), "problems": result.problems,
        "requests": len(result.schedule.requests), "events": result.hub.events})


if __name__ == "__main__":
    main()
