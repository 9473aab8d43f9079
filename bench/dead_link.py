"""Time for a P1 to get through when the primary broker's path dies, beside a healthy link.

Two real Mosquitto brokers: the primary behind a TCP fault proxy (gateway.testing.faultproxy),
the standby direct. For each case a fresh gateway connects to the primary through the proxy,
the proxy is switched to a fault, and one P1 press is submitted; the figure is the time from
`submit` to the event's arrival at a subscriber on the standby (noticing the fault, dropping
the link, failing over, sending again). Faults: `blackhole` (the path stops forwarding and
never closes: half-open) and `drop_puback` (CONNACK and PINGRESP flow, PUBACKs do not). Each
at the default keepalive (30 s) and a short one (5 s), with the PUBACK deadline at its
default (5 s) and "off" (300 s, its maximum: today's main had none). The baseline is the same
P1 on a healthy link (proxy passing), submit to arrival, measured in the same run.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import math
import tempfile
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiomqtt

from bench.figures import Figure, median, print_table, write_json
from bench.machine import print_machine
from bench.station import log_to_file, make_config
from gateway.core.model import Priority
from gateway.daemon import Gateway
from gateway.testing.faultproxy import FaultProxy, Mode
from gateway.testing.mosquitto import Mosquitto

DEFAULT_KEEPALIVE = 30
SHORT_KEEPALIVE = 5
DEADLINE_OFF = 300.0  # the key's maximum: never reached within a case's cap


class Arrivals:
    """event_id -> monotonic arrival time."""

    def __init__(self) -> None:
        self.at: dict[str, float] = {}
        self.changed = asyncio.Event()

    async def wait(self, event_id: str) -> None:
        while event_id not in self.at:
            self.changed.clear()
            await self.changed.wait()


@contextlib.asynccontextmanager
async def arrivals(port: int, topic: str) -> AsyncIterator[Arrivals]:
    """Every event on `topic` at the broker, as it arrives."""
    seen = Arrivals()
    async with aiomqtt.Client("127.0.0.1", port) as client:
        await client.subscribe(topic, qos=1)

        async def collect() -> None:
            async for message in client.messages:
                assert isinstance(message.payload, bytes)
                seen.at[json.loads(message.payload)["event_id"]] = time.monotonic()
                seen.changed.set()

        task = asyncio.create_task(collect())
        try:
            yield seen
        finally:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError, aiomqtt.MqttError):
                await task


async def one_case(
    folder: Path, primary: Mosquitto, standby: Mosquitto, *, mode: Mode | None,
    keepalive: int, deadline: float, cap_s: float,
) -> float:
    """Seconds from submit to arrival (on the standby, or on the primary for mode None);
    inf if it did not arrive within `cap_s`."""
    async with FaultProxy(primary.port) as proxy:
        folder = Path(tempfile.mkdtemp(dir=folder))  # a fresh store for each case
        config = make_config(
            folder, proxy.url,
            brokers=[{"url": proxy.url}, {"url": standby.url}],
            mqtt={"keepalive_s": keepalive, "puback_deadline_s": deadline,
                  "reconnect_initial_s": 0.05, "reconnect_max_s": 0.5,
                  "health_interval_s": 3600},
        )
        target = primary if mode is None else standby
        topic = f"stationgw/v1/{config.station_id}/events/#"
        async with Gateway(config) as gw, arrivals(target.port, topic) as seen:
            task = asyncio.create_task(gw.run())
            try:
                await asyncio.wait_for(gw.publisher.connected.wait(), 10)
                await asyncio.sleep(1.0)  # settled: the first health and alerts are out
                if mode is not None:
                    proxy.mode = mode
                started = time.monotonic()
                row = await gw.submit("help_point.press", "hp-1", Priority.P1, {"presses": 1})
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(cap_s):
                        await seen.wait(row.event_id)
                return seen.at[row.event_id] - started if row.event_id in seen.at else math.inf
            finally:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task


async def measure(reps: int, cap_s: float, quick: bool) -> list[Figure]:
    figures: list[Figure] = []
    with tempfile.TemporaryDirectory(prefix="bench-dead-link-") as tmp, \
            Mosquitto() as primary, Mosquitto() as standby:
        folder = Path(tmp)
        log_to_file(folder / "gateway.log")

        async def case(mode: Mode | None, keepalive: int, deadline: float, n: int) -> float:
            times = [await one_case(folder, primary, standby, mode=mode, keepalive=keepalive,
                                    deadline=deadline, cap_s=cap_s) for _ in range(n)]
            return median(times)

        base = await case(None, DEFAULT_KEEPALIVE, 5.0, max(reps, 5))
        print(f"healthy link: {base * 1000:.1f} ms", flush=True)
        keepalives = [SHORT_KEEPALIVE] if quick else [DEFAULT_KEEPALIVE, SHORT_KEEPALIVE]
        for mode in ("blackhole", "drop_puback"):
            for keepalive in keepalives:
                for deadline, label in ((DEADLINE_OFF, "no deadline"), (5.0, "deadline 5 s")):
                    # A case that never arrives is run once: it only shows "never".
                    n = 1 if mode == "drop_puback" and deadline == DEADLINE_OFF else reps
                    took = await case(mode, keepalive, deadline, n)
                    name = f"P1 via standby, {mode}, keepalive {keepalive} s, {label}"
                    note = f"not delivered within {cap_s:g} s" if math.isinf(took) else ""
                    print(f"{name}: {took:.2f} s", flush=True)
                    figures.append(Figure(
                        name, took * 1000 if not math.isinf(took) else math.inf, "ms",
                        base * 1000, "same P1, healthy link",
                        "<= deadline + 1 s" if deadline != DEADLINE_OFF else "",
                        (took <= deadline + 1) if deadline != DEADLINE_OFF else None, note,
                    ))
    return figures


def main() -> None:
    """Command line."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="short keepalive only, 1 rep")
    parser.add_argument("--reps", type=int, default=3, help="repetitions per case (median)")
    parser.add_argument("--cap", type=float, default=90.0, help="give up on a case after (s)")
    parser.add_argument("--json", type=Path, help="also write results here")
    args = parser.parse_args()
    reps, cap = (1, 30.0) if args.quick else (args.reps, args.cap)
    print_machine()
    figures = asyncio.run(measure(reps, cap, args.quick))
    print_table("Dead links: submit to delivery via the standby broker", figures)
    extra: dict[str, Any] = {"reps": reps, "cap_s": cap}
    write_json(args.json, "dead_link", figures, extra)


if __name__ == "__main__":
    main()
