"""Accept-to-subscriber latency of the gateway, beside a commit + raw publish baseline.

Gateway: `await gw.submit(...)` of one P1 help-point press, then wait until the subscriber
has it. Baseline: one SQLite commit (WAL, synchronous=FULL, a fresh file in the gateway's
folder) then one raw paho-mqtt QoS 1 publish of the same topic and payload. Both are timed
the same way: `time.monotonic_ns()` in this process before the call, and `monotonic_ns()` in
the subscriber process (`bench.subscriber`, its own paho client) when the message arrives.
Submits are sequential; the two run in alternating rounds on the same broker and subscriber,
so machine noise falls on both.

Two pacings: `paced` leaves a short pause after each receipt (inputs arrive apart, as at a
station), `back-to-back` submits the next event as soon as the last one arrived.
"""

from __future__ import annotations

import argparse
import asyncio
import time
from pathlib import Path

from bench.baselines import CommitBaseline, raw_latency
from bench.clients import RawClient, Subscriber
from bench.figures import Figure, Samples, median, percentile, print_table, write_json
from bench.machine import print_machine, workdir
from bench.station import PREFIX, log_to_file, make_config
from gateway.core.model import Priority
from gateway.daemon import Gateway
from gateway.testing.daemon import running
from gateway.testing.mosquitto import Mosquitto
from gateway.uplink.topics import Topics


async def gateway_latency(gw: Gateway, sub: Subscriber, n: int, gap_s: float) -> Samples:
    """Sequential submits, each timed from the call to the subscriber's receipt."""
    samples = Samples()
    for _ in range(n):
        start = time.monotonic_ns()
        row = await gw.submit("help_point.press", "hp-1", Priority.P1, {"presses": 1})
        samples.add_ns(start, await sub.wait_async(row.event_id))
        if gap_s:
            await asyncio.sleep(gap_s)
    return samples


async def measure(n: int, rounds: int, warmup: int, gap_s: float) -> list[Figure]:
    """Run both pacings and return the figures."""
    figures: list[Figure] = []
    with workdir("latency") as folder, Mosquitto() as broker:
        log_to_file(folder / "gateway.log")
        config = make_config(folder, broker.url)
        topics = Topics(PREFIX, config.station_id)
        events = f"{PREFIX}/{config.station_id}/events/#"
        commit = CommitBaseline(folder / "baseline.db")
        try:
            with Subscriber(broker.port, [events], report="/events/") as sub, \
                    RawClient(broker.port) as raw:
                async with running(Gateway(config), connected_within_s=30) as gw:
                    await gateway_latency(gw, sub, warmup, gap_s)
                    await asyncio.to_thread(
                        raw_latency, raw, sub, topics, warmup, commit=commit, gap_s=gap_s
                    )
                    for pacing, gap in (("paced", gap_s), ("back-to-back", 0.0)):
                        figures += await _pacing(gw, sub, raw, topics, commit, n=n,
                                                 rounds=rounds, gap_s=gap, pacing=pacing)
        finally:
            commit.close()
    return figures


async def _pacing(
    gw: Gateway, sub: Subscriber, raw: RawClient, topics: Topics, commit: CommitBaseline, *,
    n: int, rounds: int, gap_s: float, pacing: str,
) -> list[Figure]:
    per_round = max(1, n // rounds)
    gw_all, base_all = Samples(), Samples()
    gw_p99s, base_p99s = [], []
    for _ in range(rounds):
        g = await gateway_latency(gw, sub, per_round, gap_s)
        b = await asyncio.to_thread(
            raw_latency, raw, sub, topics, per_round, commit=commit, gap_s=gap_s
        )
        gw_all.ms += g.ms
        base_all.ms += b.ms
        gw_p99s.append(g.p99)
        base_p99s.append(b.p99)
    label = f"{pacing}, {gap_s * 1000:.0f} ms pause" if gap_s else pacing
    base_name = "commit + raw QoS 1 publish"
    spread = (
        f"{len(gw_all.ms)} samples each in {rounds} alternating rounds; per-round p99 medians "
        f"{median(gw_p99s):.2f} vs {median(base_p99s):.2f} ms; gateway max "
        f"{max(gw_all.ms):.1f} ms, p99.9 {percentile(gw_all.ms, 99.9):.1f} ms"
    )
    p99 = Figure(
        f"latency p99 ({label})", gw_all.p99, "ms", base_all.p99, base_name,
        "<= 2x baseline", gw_all.p99 <= 2 * base_all.p99, spread,
    )
    p50 = Figure(f"latency p50 ({label})", gw_all.p50, "ms", base_all.p50, base_name)
    return [p50, p99]


def main() -> None:
    """Command line."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="short run (a smoke test)")
    parser.add_argument("-n", type=int, default=2000, help="samples per pacing and side")
    parser.add_argument("--rounds", type=int, default=4, help="alternating rounds")
    parser.add_argument("--gap-ms", type=float, default=5.0, help="pause of the paced runs")
    parser.add_argument("--json", type=Path, help="also write results here")
    args = parser.parse_args()
    n, rounds, warmup = (200, 2, 50) if args.quick else (args.n, args.rounds, 200)
    print_machine()
    figures = asyncio.run(measure(n, rounds, warmup, args.gap_ms / 1000))
    print_table("Accept-to-subscriber latency (sequential submits)", figures)
    write_json(args.json, "latency", figures, {"n": n, "rounds": rounds})


if __name__ == "__main__":
    main()
