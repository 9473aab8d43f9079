"""Sustained durable throughput, accept to PUBACK, beside raw paho-mqtt QoS 1 throughput.

Gateway: N events submitted by many concurrent producer tasks (so group commit applies);
timed from the first submit until every row has had a successful PUBACK and the outbox is
empty again. Baseline: one raw paho-mqtt client publishing the same N topics and payloads
at QoS 1 with the same in-flight window (32), timed from the first publish to the last
PUBACK. Both run in alternating repetitions on the same broker, with the same subscriber
(its own process, QoS 1 on the events) attached, so the broker does the same fan-out work.
"""

from __future__ import annotations

import argparse
import asyncio
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from bench.baselines import remove_db, rendered
from bench.clients import RawClient, Subscriber
from bench.figures import Figure, median, print_table, write_json
from bench.machine import print_machine, workdir
from bench.procs import CpuMeter
from bench.station import (
    PREFIX,
    delivered,
    done,
    log_to_file,
    make_config,
    outbox_empty,
    wait_until,
)
from gateway.core.model import Priority
from gateway.daemon import Gateway
from gateway.testing.daemon import running
from gateway.testing.mosquitto import Mosquitto
from gateway.uplink.topics import Topics

A = TypeVar("A")
R = TypeVar("R")
MIX = (Priority.P1, Priority.P2, Priority.P3, Priority.P3)
KIND = {Priority.P1: "help_point.press", Priority.P2: "sensor.threshold",
        Priority.P3: "sensor.reading"}


@dataclass
class Calls:
    """How often an `Outbox` method ran on the store thread, and with how many rows."""

    calls: int = 0
    rows: int = 0
    seconds: float = 0.0

    def wrap(self, fn: Callable[[A], R]) -> Callable[[A], R]:
        """Count calls of `fn(list)` and time them."""
        def counted(arg: A) -> R:
            start = time.perf_counter()
            try:
                return fn(arg)
            finally:
                self.seconds += time.perf_counter() - start
                self.calls += 1
                self.rows += len(arg) if isinstance(arg, list) else 0
        return counted


@dataclass
class GatewayRun:
    """One gateway repetition."""

    seconds: float
    accept_seconds: float
    accepts: Calls = field(default_factory=Calls)
    deletes: Calls = field(default_factory=Calls)
    cpu: dict[str, float] = field(default_factory=dict)


async def gateway_run(
    folder: Path, broker: Mosquitto, n: int, producers: int, pids: dict[str, int]
) -> GatewayRun:
    """Submit n events from `producers` tasks; time until all are confirmed and removed."""
    config = make_config(folder, broker.url)
    accepts, deletes = Calls(), Calls()
    async with running(Gateway(config), connected_within_s=30) as gw:
        store = gw.outbox.outbox
        # Instrumentation only: count the store thread's commits and their batch sizes.
        store.accept = accepts.wrap(store.accept)  # type: ignore[method-assign,assignment]
        store.delivered = deletes.wrap(store.delivered)  # type: ignore[method-assign,assignment]

        async def produce(k: int) -> None:
            for i in range(k, n, producers):
                priority = MIX[i % len(MIX)]
                await gw.submit(KIND[priority], f"s-{k}", priority, {"value": i})

        with CpuMeter(**pids) as cpu:
            start = time.perf_counter()
            async with asyncio.TaskGroup() as tg:
                for k in range(producers):
                    tg.create_task(produce(k))
            accepted = time.perf_counter()
            async with asyncio.timeout(300):
                await wait_until(lambda: done(delivered(gw) >= n))
                await wait_until(lambda: outbox_empty(gw))
            end = time.perf_counter()
    remove_db(config.store.path)
    return GatewayRun(end - start, accepted - start, accepts, deletes, cpu.used)


def raw_run(
    broker: Mosquitto, topics: Topics, n: int, pids: dict[str, int]
) -> tuple[float, dict[str, float]]:
    """Seconds for a raw paho client to get n QoS 1 publishes acknowledged (window 32)."""
    messages = []
    for i in range(n):
        _, topic, payload = rendered(topics, MIX[i % len(MIX)], i)
        messages.append((topic, payload))
    with RawClient(broker.port, inflight=32) as raw, CpuMeter(**pids) as cpu:
        seconds = raw.publish_all(messages)
        if raw.failures:
            raise RuntimeError(f"{raw.failures} raw publishes refused")
    return seconds, cpu.used


async def measure(n: int, reps: int, producers: int) -> tuple[list[Figure], dict[str, Any]]:
    """Alternate gateway and raw repetitions; return the figures and details."""
    gw_rates: list[float] = []
    accept_rates: list[float] = []
    raw_rates: list[float] = []
    gw_cpu: list[float] = []
    raw_cpu: list[float] = []
    details: list[dict[str, Any]] = []
    with workdir("throughput") as folder, Mosquitto() as broker:
        log_to_file(folder / "gateway.log")
        station = make_config(folder, broker.url).station_id
        # Every gateway run has a fresh station id; the subscriber takes all stations' events.
        topics = Topics(PREFIX, station)
        with Subscriber(broker.port, [f"{PREFIX}/+/events/#"], report="^$") as sub:
            assert broker.process is not None
            assert sub.proc is not None
            pids = {"broker": broker.process.pid, "subscriber": sub.proc.pid}
            for _ in range(reps):
                run = await gateway_run(folder, broker, n, producers, pids)
                raw_s, raw_used = await asyncio.to_thread(raw_run, broker, topics, n, pids)
                gw_rates.append(n / run.seconds)
                accept_rates.append(n / run.accept_seconds)
                raw_rates.append(n / raw_s)
                gw_cpu.append(run.cpu["self"] / n * 1e6)
                raw_cpu.append(raw_used["self"] / n * 1e6)
                per_commit = run.accepts.rows / max(1, run.accepts.calls)
                per_delete = run.deletes.rows / max(1, run.deletes.calls)
                details.append({
                    "gateway_s": run.seconds, "accept_s": run.accept_seconds, "raw_s": raw_s,
                    "commits": run.accepts.calls, "rows_per_commit": per_commit,
                    "accept_thread_s": run.accepts.seconds,
                    "deletes": run.deletes.calls, "rows_per_delete": per_delete,
                    "delete_thread_s": run.deletes.seconds,
                    "gateway_cpu_s": run.cpu, "raw_cpu_s": raw_used,
                })
                print(
                    f"  rep: gateway {n / run.seconds:,.0f}/s, {gw_cpu[-1]:.0f} us CPU/msg "
                    f"(broker {run.cpu['broker'] / n * 1e6:.0f}); {run.accepts.calls} commits "
                    f"of {per_commit:.1f} rows, {run.deletes.calls} deletes of {per_delete:.1f} | "
                    f"raw {n / raw_s:,.0f}/s, {raw_cpu[-1]:.0f} us CPU/msg "
                    f"(broker {raw_used['broker'] / n * 1e6:.0f})",
                    flush=True,
                )
            got = await asyncio.to_thread(sub.wait_count, 2 * n * reps)
            if got < 2 * n * reps:
                raise RuntimeError(f"subscriber got {got} of {2 * n * reps} messages")
    gw_rate, raw_rate = median(gw_rates), median(raw_rates)
    note = (
        f"N={n}, {producers} producers, median of {reps} alternating reps; gateway reps "
        + ", ".join(f"{r:,.0f}" for r in gw_rates) + "/s; raw reps "
        + ", ".join(f"{r:,.0f}" for r in raw_rates) + "/s; all messages reached the subscriber; "
        f"median {median([d['rows_per_commit'] for d in details]):.1f} rows per accept commit, "
        f"{median([d['rows_per_delete'] for d in details]):.1f} per delete commit"
    )
    figures = [
        Figure("durable throughput, accept to PUBACK", gw_rate, "msg/s", raw_rate,
               "raw paho QoS 1, window 32", ">= 0.8x baseline", gw_rate >= 0.8 * raw_rate, note),
        Figure("accept rate (submits returned)", median(accept_rates), "msg/s", raw_rate,
               "raw paho QoS 1, window 32"),
        Figure("CPU of the publishing process per message", median(gw_cpu), "us", median(raw_cpu),
               "raw paho process", note="user+system, all threads, from /proc/self/stat"),
    ]
    return figures, {"n": n, "reps": reps, "producers": producers, "runs": details}


def main() -> None:
    """Command line."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="short run (a smoke test)")
    parser.add_argument("-n", type=int, default=20_000, help="events per repetition")
    parser.add_argument("--reps", type=int, default=3, help="alternating repetitions")
    parser.add_argument("--producers", type=int, default=64, help="concurrent producer tasks")
    parser.add_argument("--json", type=Path, help="also write results here")
    args = parser.parse_args()
    n, reps = (2000, 1) if args.quick else (args.n, args.reps)
    print_machine()
    figures, extra = asyncio.run(measure(n, reps, args.producers))
    print_table("Sustained durable throughput", figures)
    write_json(args.json, "throughput", figures, extra)


if __name__ == "__main__":
    main()
