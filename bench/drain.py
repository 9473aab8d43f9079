"""Drain of a backlog after an outage, and P1 latency while it drains.

The outbox is pre-filled while the broker is down: `gateway.outbox.sqlite.Outbox.accept` with large
batches straight on the database file (90% P3 telemetry, 10% P2, as after a long outage).
Then the broker, two subscribers (own processes: a sink for all events, and a timed one
for P1 only) and the gateway start; the drain rate is
rows / seconds from the gateway's connection until the outbox is empty and every row had a
successful PUBACK. While it drains, P1 help-point presses are submitted at a fixed interval,
each timed from `submit` until the subscriber receives it (`time.monotonic_ns()` in both
processes). Baselines in the same run, same broker and subscriber: raw paho-mqtt QoS 1
latency (one publish at a time) and raw QoS 1 throughput with the same window (32).
"""

from __future__ import annotations

import argparse
import asyncio
import threading
import time
from functools import partial
from pathlib import Path
from typing import Any

from bench.baselines import CommitBaseline, raw_latency, remove_db, rendered
from bench.clients import RawClient, Subscriber
from bench.figures import Figure, Samples, median, print_table, write_json
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
from gateway.config.models import StationConfig
from gateway.core.model import Event, Priority
from gateway.daemon import Gateway
from gateway.outbox.sqlite import Outbox
from gateway.testing.daemon import running
from gateway.testing.mosquitto import Mosquitto
from gateway.uplink.topics import Topics

FILL_BATCH = 5000


def fill(config: StationConfig, rows: int) -> float:
    """Pre-fill the outbox with `rows` P2/P3 rows; returns seconds taken."""
    topics = Topics(config.mqtt.topic_prefix, config.station_id)
    start = time.perf_counter()
    with Outbox(config.store.path, topics.render, max_rows=config.store.max_rows,
                max_bytes=config.store.max_bytes) as outbox:
        for first in range(0, rows, FILL_BATCH):
            events = [
                Event("sensor.threshold", "s-1", Priority.P2, {"level": i}) if i % 10 == 0
                else Event("sensor.reading", "s-1", Priority.P3, {"value": i})
                for i in range(first, min(rows, first + FILL_BATCH))
            ]
            result = outbox.accept(events)
            if result.error is not None or result.evicted:
                raise RuntimeError(f"pre-fill failed: {result.error or 'rows evicted'}")
    return time.perf_counter() - start


async def drain_once(
    folder: Path, broker: Mosquitto, subs: list[Subscriber], *, rows: int, alerts: int,
    interval: float,
) -> dict[str, Any]:
    """One outage: stop the broker, fill, start it and the gateway, drain while submitting
    P1 alerts."""
    config = make_config(
        folder, broker.url, store={"max_rows": 4 * rows + 1000, "max_bytes": 1 << 30},
    )
    before = [s.resubscribed for s in subs]
    broker.stop()
    fill_s = fill(config, rows)
    broker.start()
    for s, n in zip(subs, before, strict=True):
        await asyncio.to_thread(s.wait_resubscribed, n)
    sub = subs[-1]
    total = rows + alerts
    latencies = Samples()
    accepts = Samples()  # submit until it returned (the commit)
    during = Samples()  # alerts submitted and received while the backlog was still draining
    assert broker.process is not None
    async with running(Gateway(config), connected_within_s=30) as gw:
        connected = time.perf_counter()

        async def alert(i: int) -> None:
            await asyncio.sleep(i * interval)
            start = time.monotonic_ns()
            row = await gw.submit("help_point.press", "hp-1", Priority.P1, {"presses": 1})
            accepts.add_ns(start, time.monotonic_ns())
            async with asyncio.timeout(120):
                got = await sub.wait_async(row.event_id)
            latencies.add_ns(start, got)
            if delivered(gw) < rows:
                during.add_ns(start, got)

        with CpuMeter(broker=broker.process.pid) as cpu:
            async with asyncio.TaskGroup() as tg:
                for i in range(alerts):
                    tg.create_task(alert(i))
            async with asyncio.timeout(600):
                await wait_until(lambda: done(delivered(gw) >= total), 0.005)
                await wait_until(lambda: outbox_empty(gw), 0.005)
            seconds = time.perf_counter() - connected
    remove_db(config.store.path)
    return {
        "rows": rows, "fill_s": fill_s, "drain_s": seconds, "rate": total / seconds,
        "p1_ms": latencies.ms, "p1_during_ms": during.ms, "p1_accept_ms": accepts.ms,
        "cpu_s": cpu.used,
    }


def raw_drain(
    folder: Path, broker: Mosquitto, sub: Subscriber, topics: Topics, *, n: int, alerts: int,
    interval: float,
) -> tuple[Samples, float]:
    """Baseline under the same load: one raw client publishes n backlog messages (window 32)
    while another commits and publishes P1 alerts one at a time; returns the P1 latencies
    (those sent while the backlog was still going) and the backlog's rate."""
    messages = [rendered(topics, Priority.P3, i, "sensor.reading")[1:] for i in range(n)]
    result: list[float] = []
    commit = CommitBaseline(folder / "baseline.db")
    try:
        with RawClient(broker.port) as bulk, RawClient(broker.port) as alert:
            thread = threading.Thread(
                target=lambda: result.append(bulk.publish_all(messages)), name="bench.bulk"
            )
            start = time.perf_counter()
            thread.start()
            samples = Samples()
            for i in range(alerts):
                time.sleep(max(0.0, start + (i + 1) * interval - time.perf_counter()))
                one = raw_latency(alert, sub, topics, 1, commit=commit)
                if thread.is_alive():
                    samples.ms += one.ms
            thread.join()
    finally:
        commit.close()
    return samples, n / result[0]


async def measure(
    rows: int, alerts: int, interval: float, *, reps: int, raw_n: int
) -> tuple[list[Figure], dict[str, Any]]:
    """Baselines, then `reps` outages; figures pool the P1 samples of all reps."""
    runs: list[dict[str, Any]] = []
    with workdir("drain") as folder:
        broker = Mosquitto()
        try:
            log_to_file(folder / "gateway.log")
            broker.start()
            station = make_config(folder, broker.url).station_id
            topics = Topics(PREFIX, station)
            # Two consumers, as at dispatch: a sink for everything, and the timed one for P1
            # only, so that the sink's own queue at the broker never delays a timed P1.
            with Subscriber(broker.port, [f"{PREFIX}/+/events/#"], report="^$") as sink, \
                    Subscriber(broker.port, [f"{PREFIX}/+/events/P1"]) as sub:
                with RawClient(broker.port) as raw:
                    raw_latency(raw, sub, topics, 50)  # warm-up
                    base = await asyncio.to_thread(raw_latency, raw, sub, topics, 300)
                loaded, raw_rate = await asyncio.to_thread(
                    partial(raw_drain, folder, broker, sub, topics, n=raw_n, alerts=alerts,
                            interval=interval)
                )
                for _ in range(reps):
                    run = await drain_once(
                        folder, broker, [sink, sub], rows=rows, alerts=alerts, interval=interval
                    )
                    runs.append(run)
                    print(
                        f"  rep: filled {rows:,} rows in {run['fill_s']:.1f} s, drained at "
                        f"{run['rate']:,.0f} rows/s; P1 p50 "
                        f"{Samples(run['p1_ms']).p50:.1f} ms p99 {Samples(run['p1_ms']).p99:.1f}"
                        f" ms ({len(run['p1_during_ms'])} of {alerts} during the drain); of which"
                        f" submit() p50 {Samples(run['p1_accept_ms']).p50:.1f} ms p99 "
                        f"{Samples(run['p1_accept_ms']).p99:.1f} ms",
                        flush=True,
                    )
        finally:
            broker.close()
    p1 = Samples([ms for run in runs for ms in run["p1_ms"]])
    rate = median([run["rate"] for run in runs])
    figures = [
        Figure(f"drain of {rows:,}-row backlog", rate, "rows/s", raw_rate,
               "raw paho QoS 1 throughput, window 32",
               note=f"median of {reps} outages: " + ", ".join(f"{r['rate']:,.0f}" for r in runs)),
        Figure("P1 latency during drain, p50", p1.p50, "ms", loaded.p50,
               "commit + raw publish during a raw backlog"),
        Figure("P1 latency during drain, p99", p1.p99, "ms", loaded.p99,
               "commit + raw publish during a raw backlog", "<= 50 ms", p1.p99 <= 50,
               f"{len(p1.ms)} alerts, one every {interval * 1000:.0f} ms, {reps} outage(s); "
               f"max {max(p1.ms):.1f} ms; "
               f"{sum(len(r['p1_during_ms']) for r in runs)} were received before the "
               "backlog was gone"),
        Figure("raw QoS 1 latency, idle broker, p99", base.p99, "ms",
               note=f"p50 {base.p50:.2f} ms; {len(base.ms)} sequential raw publishes"),
    ]
    return figures, {"rows": rows, "alerts": alerts, "reps": reps, "runs": runs,
                     "raw_latency_ms": base.ms, "raw_loaded_ms": loaded.ms, "raw_rate": raw_rate}


def main() -> None:
    """Command line."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="short run (a smoke test)")
    parser.add_argument("--rows", type=int, default=100_000, help="backlog rows")
    parser.add_argument("--alerts", type=int, default=50, help="P1 alerts during the drain")
    parser.add_argument("--interval-ms", type=float, default=100, help="between P1 alerts")
    parser.add_argument("--reps", type=int, default=2, help="outages")
    parser.add_argument("--json", type=Path, help="also write results here")
    args = parser.parse_args()
    rows, alerts, reps = (10_000, 20, 1) if args.quick else (args.rows, args.alerts, args.reps)
    print_machine()
    figures, extra = asyncio.run(
        measure(rows, alerts, args.interval_ms / 1000, reps=reps, raw_n=rows)
    )
    print_table("Backlog drain after an outage", figures)
    write_json(args.json, "drain", figures, extra)


if __name__ == "__main__":
    main()
