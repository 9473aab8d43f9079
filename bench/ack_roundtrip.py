"""Ack round trip: dispatcher ack to lamp solid, beside one raw MQTT hop.

Gateway: in-process, help points on gpiozero mock pins, a real Mosquitto. Each round raises
a new request and acknowledges it:

1. Press a help point (`pin.drive_low()`, released once its row is committed) and wait for
   its `help_point.press` event at the dispatch subscriber (`bench.subscriber`, its own
   process) and for the lamp to show "sent" (the gateway has its PUBACK).
2. Timed: from `time.monotonic_ns()` just before `dispatch.outbound.send_command(acknowledge)`
   to the moment the lamp shows "acknowledged" (solid). The dispatcher is an aiomqtt client
   on a thread and event loop of its own, so that, as in a station, its work is not on the
   gateway's loop. The end is taken by a listener appended to the gateway's alert book
   (`gw.lifecycle.book.listeners`) after the help points' own listener: it runs in the same
   call, right after `Lamp.advance` has switched the LED on, so nothing is polled. The bench
   checks that the lamp state is "acknowledged" and the LED lit at that moment.
   Two kinds of round alternate. Paced: the dispatcher acknowledges `--think-ms` (100 ms)
   after the lamp showed "sent", as a person would (200 ms gave the same in a probe). At
   once: the command reaches the broker within a few ms of the broker's PUBACK to the
   gateway, whose kernel delays its TCP ACK of that PUBACK (delayed ACK, ~40 ms); Mosquitto
   leaves Nagle's algorithm on by default (`set_tcp_nodelay false`), so it holds the
   command back until that ACK arrives. `--broker-nodelay` runs the broker with
   `set_tcp_nodelay true` to show the difference.
3. Resolve (lamp back to idle, LED off, `alert.resolved` at the subscriber) before the next
   round; help points are cycled and each is pressed again only after its release settled.

On the timed path: dispatcher -> broker -> gateway, the command's checks, a replay lookup on
the store thread, and the `alert.acknowledged` event committed durably (WAL,
synchronous=FULL) before the lamp changes (the lamp never claims more than has happened).
The reply to dispatch and the event's publish come after the lamp.

Baseline, in rounds alternating with the gateway's: a raw paho-mqtt QoS 1 publish of the
same command payload (`bench.clients.RawClient`, its own network thread) to a topic that a
paho client in this process subscribes to (its own network thread): one MQTT hop each way,
dispatcher -> broker -> subscriber, timed from just before the publish to `monotonic_ns()`
first thing in `on_message`. A context row does the same with one SQLite commit (WAL,
synchronous=FULL) in `on_message` before the time is taken: the floor of a hop that must be
made durable before it is shown.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import math
import os
import threading
import time
import uuid
from collections.abc import Coroutine
from pathlib import Path
from types import TracebackType
from typing import Any, Literal, TypeVar

import aiomqtt
import paho.mqtt.client as paho
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode

from bench.baselines import CommitBaseline
from bench.clients import RawClient, Subscriber, ThreadedPaho
from bench.figures import Figure, Samples, median, print_table, write_json
from bench.machine import print_machine, workdir
from bench.station import PREFIX, log_to_file, make_config
from dispatch.outbound import make_command, send_command
from gateway.config.models import StationConfig
from gateway.core.commands import Action, Command
from gateway.core.model import AlertRecord
from gateway.daemon import Gateway
from gateway.outbox.sqlite import Row
from gateway.station.helppoints import HelpPointUnit
from gateway.testing.config import mock_help_points
from gateway.testing.daemon import running
from gateway.testing.mosquitto import Mosquitto
from gateway.uplink.topics import Topics

T = TypeVar("T")

HELP_POINTS = 4
SETTLE_MARGIN_S = 0.01
BASELINE_NAME = "raw paho QoS 1, one hop"
COMMIT_NAME = "raw paho QoS 1, one hop + one commit"


def bench_config(folder: Path, broker_url: str) -> StationConfig:
    """Mock pins, HELP_POINTS help points, no escalation during the run."""
    return make_config(
        folder, broker_url, gpio_pin_factory="mock", help_points=mock_help_points(HELP_POINTS),
        dispatch={"ack_timeout_s": 3600, "command_max_age_s": 600},
    )


def command_payload(command: Command) -> bytes:
    """A command as `send_command` puts it on the wire."""
    return json.dumps(command.wire()).encode()


# ---------------------------------------------------------------------------- dispatcher


class Dispatcher:
    """An aiomqtt client on its own thread and event loop: dispatch, off the gateway's loop."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self.loop.run_forever, name="bench.dispatcher",
                                        daemon=True)
        self._stack = contextlib.AsyncExitStack()
        self._client: aiomqtt.Client | None = None

    async def _on_own_loop(self, coro: Coroutine[Any, Any, T]) -> T:
        return await asyncio.wrap_future(asyncio.run_coroutine_threadsafe(coro, self.loop))

    async def __aenter__(self) -> Dispatcher:
        self._thread.start()
        try:
            await self._on_own_loop(self._connect())
        except BaseException:
            await self._stop()
            raise
        return self

    async def __aexit__(
        self, et: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self._stop()

    async def _connect(self) -> None:
        self._client = await self._stack.enter_async_context(aiomqtt.Client(
            "127.0.0.1", self.port, identifier=f"bench-dispatch-{uuid.uuid4().hex[:8]}",
            protocol=aiomqtt.ProtocolVersion.V5,
        ))

    async def _stop(self) -> None:
        with contextlib.suppress(aiomqtt.MqttError):
            await self._on_own_loop(self._stack.aclose())
        self.loop.call_soon_threadsafe(self.loop.stop)
        await asyncio.to_thread(self._thread.join, 10)
        self.loop.close()

    async def send(self, command: Command) -> int:
        """Send `command` from the dispatcher's loop; returns monotonic_ns() taken there just
        before `send_command` (which returns once the broker's PUBACK is in)."""
        return await self._on_own_loop(self._send(command))

    async def _send(self, command: Command) -> int:
        assert self._client is not None
        start = time.monotonic_ns()
        await send_command(self._client, PREFIX, command)
        return start


# ---------------------------------------------------------------------------- baseline


class LoopbackSubscriber(ThreadedPaho):
    """A paho client in this process with its own network thread; records when each command
    arrives (by command_id). On `commit_topic` it first commits the command to SQLite."""

    READY = "SUBACK"

    def __init__(self, port: int, topic: str, commit_topic: str, commit: CommitBaseline) -> None:
        super().__init__(port, "bench-loop")
        self.topic = topic
        self.commit_topic = commit_topic
        self.commit = commit
        self.receipts: dict[str, int] = {}
        self._cond = threading.Condition()
        self.client.on_connect = self._on_connect
        self.client.on_subscribe = self._on_subscribe
        self.client.on_message = self._on_message

    def _on_connect(
        self, client: paho.Client, userdata: Any, flags: Any, rc: ReasonCode,
        props: Properties | None,
    ) -> None:
        client.subscribe([(self.topic, 1), (self.commit_topic, 1)])

    def _on_subscribe(
        self, client: paho.Client, userdata: Any, mid: int, rcs: list[ReasonCode], props: Any
    ) -> None:
        self._ready.set()

    def _on_message(self, client: paho.Client, userdata: Any, msg: paho.MQTTMessage) -> None:
        t_ns = time.monotonic_ns()
        command_id = str(json.loads(msg.payload)["command_id"])
        if msg.topic == self.commit_topic:
            self.commit.commit(command_id, msg.topic, bytes(msg.payload))
            t_ns = time.monotonic_ns()
        with self._cond:
            self.receipts[command_id] = t_ns
            self._cond.notify_all()

    def wait(self, command_id: str, timeout: float = 30.0) -> int:
        """Receipt time (monotonic ns) of a command."""
        with self._cond:
            if not self._cond.wait_for(lambda: command_id in self.receipts, timeout):
                raise TimeoutError(f"loopback subscriber did not receive {command_id}")
            return self.receipts.pop(command_id)


def hop_latency(
    raw: RawClient, loop_sub: LoopbackSubscriber, station: str, topic: str, n: int, *,
    gap_s: float,
) -> Samples:
    """Baseline: one raw QoS 1 publish of a command payload, start to receipt (in a thread)."""
    samples = Samples()
    for _ in range(n):
        command = make_command(station, str(uuid.uuid4()), "acknowledge", dispatcher="bench")
        payload = command_payload(command)
        start = time.monotonic_ns()
        raw.publish_confirmed(topic, payload)
        samples.add_ns(start, loop_sub.wait(command.command_id))
        if gap_s:
            time.sleep(gap_s)
    return samples


# ---------------------------------------------------------------------------- gateway rounds


class AckRounds:
    """Raises a request, acknowledges it (timed), resolves it; one help point at a time."""

    def __init__(self, gw: Gateway, sub: Subscriber, dispatcher: Dispatcher, gap_s: float) -> None:
        assert gw.help_points is not None
        self.units = gw.help_points.units
        self.station = gw.config.station_id
        self.sub = sub
        self.dispatcher = dispatcher
        self.gap_s = gap_s
        self.order = list(self.units)
        self.bounce_s = {hp: unit.config.bounce_time_s for hp, unit in self.units.items()}
        self.ready_at = dict.fromkeys(self.order, 0.0)  # monotonic time of the next press
        self.alert_ids: set[str] = set()
        self.rounds = 0
        self._next = 0
        self._row_kind: str | None = None
        self._row: asyncio.Future[Row] | None = None
        self._lamp_alert: str | None = None
        self._lamp_want: Literal["acknowledged", "idle"] | None = None
        self._lamp: asyncio.Future[int] | None = None
        gw.outbox.listeners.append(self._on_accept)
        # After the help points' listener: the lamp has already been advanced when this runs.
        gw.lifecycle.book.listeners.append(self._on_alert_change)

    # ---------------------------------------------------------------- hooks (on the loop)

    def _on_accept(self, row: Row) -> None:
        if self._row is not None and not self._row.done() and row.kind == self._row_kind:
            self._row.set_result(row)

    def _on_alert_change(self, record: AlertRecord) -> None:
        t_ns = time.monotonic_ns()
        future, want = self._lamp, self._lamp_want
        if future is None or future.done() or record.alert_id != self._lamp_alert:
            return
        reached = record.closed if want == "idle" else record.state == want
        if not reached:
            return
        unit = self.units[record.source]
        lit = bool(unit.devices[1].is_lit)  # the lamp's gpiozero LED
        if unit.lamp.state != want or lit != (want == "acknowledged"):
            future.set_exception(RuntimeError(
                f"{record.source}: alert {record.alert_id} is {record.state} but the lamp "
                f"shows {unit.lamp.state} (LED lit: {lit})"))
            return
        future.set_result(t_ns)

    # ---------------------------------------------------------------- rounds

    async def run(self, n: int, think_s: float) -> Samples:
        """`n` rounds, cycling over the help points; the dispatcher acknowledges `think_s`
        after the lamp showed "sent"."""
        samples = Samples()
        for _ in range(n):
            hp = self.order[self._next % len(self.order)]
            self._next += 1
            samples.add_ns(*await self._round(hp, think_s))
            if self.gap_s:
                await asyncio.sleep(self.gap_s)
        return samples

    def _expect_row(self, kind: str) -> asyncio.Future[Row]:
        self._row_kind = kind
        self._row = asyncio.get_running_loop().create_future()
        return self._row

    def _expect_lamp(self, alert_id: str, want: Literal["acknowledged", "idle"]) -> (
        asyncio.Future[int]
    ):
        self._lamp_alert, self._lamp_want = alert_id, want
        self._lamp = asyncio.get_running_loop().create_future()
        return self._lamp

    async def _command(self, alert_id: str, action: Action) -> tuple[int, int]:
        """Send a command; (start, time the lamp reached the action's state)."""
        want: Literal["acknowledged", "idle"] = "acknowledged" if action == "acknowledge" \
            else "idle"
        lamp = self._expect_lamp(alert_id, want)
        command = make_command(self.station, alert_id, action, dispatcher="bench")
        start = await self.dispatcher.send(command)
        try:
            end = await asyncio.wait_for(lamp, 30)
        except TimeoutError:
            raise RuntimeError(f"{action} of {alert_id}: lamp not {want} within 30 s") from None
        return start, end

    async def _round(self, hp: str, think_s: float) -> tuple[int, int]:
        unit = self.units[hp]
        wait = self.ready_at[hp] - time.monotonic()
        if wait > 0:
            await asyncio.sleep(wait)
        alert_id = await self._press(hp, unit)
        if think_s:
            await asyncio.sleep(think_s)
        start, end = await self._command(alert_id, "acknowledge")
        resolved = self._expect_row("alert.resolved")
        await self._command(alert_id, "resolve")
        row = await asyncio.wait_for(resolved, 30)
        async with asyncio.timeout(30):
            await self.sub.wait_async(row.event_id)
        self.rounds += 1
        return start, end

    async def _press(self, hp: str, unit: HelpPointUnit) -> str:
        """A new request at `hp`, seen by dispatch, lamp "sent"; returns its alert id."""
        pin = unit.button.pin
        pressed = self._expect_row("help_point.press")
        pin.drive_low()
        try:
            row = await asyncio.wait_for(pressed, 30)
        except TimeoutError:
            raise RuntimeError(f"press of {hp} raised no event within 30 s") from None
        pin.drive_high()
        self.ready_at[hp] = time.monotonic() + self.bounce_s[hp] + SETTLE_MARGIN_S
        body = json.loads(row.payload)["body"]
        alert_id = str(body.get("alert_id"))
        if body.get("help_point") != hp or body.get("press_count") != 1 \
                or alert_id in self.alert_ids:
            raise RuntimeError(f"press of {hp} did not raise a new request: {body}")
        self.alert_ids.add(alert_id)
        async with asyncio.timeout(30):
            await self.sub.wait_async(row.event_id)
            while unit.lamp.state != "sent":  # noqa: ASYNC110 - untimed; the PUBACK is in flight
                await asyncio.sleep(0.001)
        return alert_id


VARIANTS = ("ack, paced", "ack, at once", "hop", "hop+commit")


async def measure(
    n: int, rounds: int, warmup: int, gap_s: float, *, think_s: float, broker_nodelay: bool
) -> tuple[list[Figure], dict[str, Any]]:
    """Ack rounds (paced and at once) and the two baselines in rotating rounds."""
    extra = "set_tcp_nodelay true\n" if broker_nodelay else ""
    with workdir("ack") as folder, Mosquitto(extra=extra) as broker:
        log_to_file(folder / "gateway.log")
        config = bench_config(folder, broker.url)
        topics = Topics(config.mqtt.topic_prefix, config.station_id)
        hop_topic = f"{PREFIX}/bench-{config.station_id}/hop"
        commit_topic = f"{hop_topic}-commit"
        commit = CommitBaseline(folder / "baseline.db")
        samples = {v: Samples() for v in VARIANTS}
        p99s: dict[str, list[float]] = {v: [] for v in VARIANTS}
        try:
            with Subscriber(broker.port, [f"{topics.root}/events/#"], report="/events/") as sub, \
                    RawClient(broker.port) as raw, \
                    LoopbackSubscriber(broker.port, hop_topic, commit_topic, commit) as loop_sub:
                async with Dispatcher(broker.port) as dispatcher, \
                        running(Gateway(config), connected_within_s=30) as gw:
                    bench = AckRounds(gw, sub, dispatcher, gap_s)
                    station = config.station_id

                    async def one(what: str, count: int) -> Samples:
                        if what.startswith("ack"):
                            return await bench.run(count, think_s if what == VARIANTS[0] else 0)
                        topic = hop_topic if what == "hop" else commit_topic
                        return await asyncio.to_thread(
                            hop_latency, raw, loop_sub, station, topic, count, gap_s=gap_s)

                    for what in VARIANTS:
                        await one(what, warmup)
                    per_round = max(1, n // rounds)
                    for r in range(rounds):
                        k = r % len(VARIANTS)
                        for what in VARIANTS[k:] + VARIANTS[:k]:
                            got = await one(what, per_round)
                            samples[what].ms += got.ms
                            p99s[what].append(got.p99)
        finally:
            commit.close()
    if len(bench.alert_ids) != bench.rounds:
        raise RuntimeError(f"{bench.rounds} rounds but {len(bench.alert_ids)} requests")
    figures = _figures(samples, p99s, rounds, think_s, broker_nodelay)
    details = {
        "n": len(samples[VARIANTS[0]].ms), "rounds": rounds, "warmup": warmup,
        "gap_ms": gap_s * 1000, "think_ms": think_s * 1000, "broker_nodelay": broker_nodelay,
        "help_points": HELP_POINTS, "requests": len(bench.alert_ids), "round_p99_ms": p99s,
        "p50_ms": {v: s.p50 for v, s in samples.items()},
        "p99_ms": {v: s.p99 for v, s in samples.items()},
        "max_ms": {v: max(s.ms) for v, s in samples.items()},
    }
    return figures, details


def _figures(
    samples: dict[str, Samples], p99s: dict[str, list[float]], rounds: int, think_s: float,
    broker_nodelay: bool,
) -> list[Figure]:
    paced, at_once = samples["ack, paced"], samples["ack, at once"]
    hop, hop_commit = samples["hop"], samples["hop+commit"]
    think = f"{think_s * 1000:g} ms"
    spread = (
        f"{len(paced.ms)} + {len(at_once.ms)} acks over {HELP_POINTS} help points, "
        f"{len(hop.ms)} + {len(hop_commit.ms)} baseline publishes, {rounds} rotating rounds; "
        f"per-round p99 medians: paced {median(p99s['ack, paced']):.2f}, at once "
        f"{median(p99s['ack, at once']):.2f}, hop {median(p99s['hop']):.2f} ms; max: paced "
        f"{max(paced.ms):.1f}, at once {max(at_once.ms):.1f} ms"
    )
    nagle = "the ack sent as soon as the lamp shows 'sent', within a few ms of the broker's " \
        "PUBACK to the gateway: "
    if broker_nodelay:
        nagle += "this run's broker has set_tcp_nodelay true, so nothing holds the command back"
    else:
        nagle += (
            "the gateway's kernel delays its TCP ACK of that PUBACK (delayed ACK, ~40 ms) and "
            "Mosquitto, without set_tcp_nodelay, holds the command until it comes (Nagle); "
            "--broker-nodelay shows the difference"
        )
    return [
        Figure(f"ack to lamp solid p50, ack {think} after the alert", paced.p50, "ms",
               hop.p50, BASELINE_NAME),
        Figure(f"ack to lamp solid p99, ack {think} after the alert", paced.p99, "ms",
               hop.p99, BASELINE_NAME, note=spread),
        Figure("ack to lamp solid p50, ack at once", at_once.p50, "ms", hop.p50, BASELINE_NAME,
               note=nagle),
        Figure("ack to lamp solid p99, ack at once", at_once.p99, "ms", hop.p99, BASELINE_NAME),
        Figure(f"ack {think} after, p50 (vs hop + commit)", paced.p50, "ms", hop_commit.p50,
               COMMIT_NAME, note="context: the ack path commits alert.acknowledged durably "
               "before the lamp changes"),
        Figure(f"ack {think} after, p99 (vs hop + commit)", paced.p99, "ms", hop_commit.p99,
               COMMIT_NAME),
    ]


def main() -> None:
    """Command line."""
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="short run: 40 acks of each kind")
    parser.add_argument("-n", type=int, default=300,
                        help="acks of each kind (and baseline publishes)")
    parser.add_argument("--rounds", type=int, default=3, help="rotating rounds")
    parser.add_argument("--gap-ms", type=float, default=5.0, help="pause after each round")
    parser.add_argument("--think-ms", type=float, default=100.0,
                        help="the paced dispatcher acks this long after the lamp shows 'sent'")
    parser.add_argument("--broker-nodelay", action="store_true",
                        help="run Mosquitto with set_tcp_nodelay true")
    parser.add_argument("--json", type=Path, help="also write results here")
    args = parser.parse_args()
    n, rounds, warmup = (40, 2, 10) if args.quick else (args.n, args.rounds, 30)
    print_machine()
    figures, details = asyncio.run(measure(
        n, rounds, warmup, args.gap_ms / 1000, think_s=args.think_ms / 1000,
        broker_nodelay=args.broker_nodelay,
    ))
    print_table("Dispatcher ack to lamp solid (sequential rounds)", figures)
    print(
        f"\n{details['requests']} requests raised, acknowledged and resolved "
        f"({details['warmup']} warm-up rounds of each kind); dispatcher: aiomqtt on its own "
        f"thread; broker set_tcp_nodelay: {'true' if args.broker_nodelay else 'false (default)'}"
        "; load avg after: " + " ".join(f"{x:.2f}" for x in os.getloadavg())
    )
    if any(math.isnan(f.value) for f in figures):
        raise SystemExit("no samples")
    write_json(args.json, "ack_roundtrip", figures, details)


if __name__ == "__main__":
    main()
