"""Command flood: a real acknowledge's round trip, and the daemon's memory, under junk.

The daemon runs as `stationgw run` in its own process (mock help points, a real Mosquitto).
Each round presses hp-1 through the simulate socket, waits for the `help_point.press` event,
then times from just before a raw paho-mqtt QoS 1 publish of `acknowledge` to the arrival
of its `applied` reply at a paho subscriber (both on network threads of their own), and
resolves the alert. Rounds run idle, then under a flood (`gateway.testing.cmdflood`) of
`--rate` junk commands a second at QoS 0 plus `--rate-qos1` at QoS 1.

Baseline, in the same phases: the same payload published raw (QoS 1) to a topic only the
bench's subscriber reads, one hop dispatcher -> broker -> subscriber, timed the same way.
Memory: the daemon's VmRSS idle, and its VmHWM (peak) after the flood.

    python -m bench.command_flood [--rounds 15] [--rate 10000] [--rate-qos1 500] [--quick]
"""

from __future__ import annotations

import argparse
import json
import queue
import threading
import time
import uuid
from pathlib import Path
from typing import Any

import paho.mqtt.client as paho
from paho.mqtt.enums import CallbackAPIVersion

from bench import REPO
from bench.figures import Figure, median, print_table, write_json
from bench.machine import print_machine, workdir
from bench.procs import proc_memory_kib
from dispatch.outbound import make_command
from gateway.config.loading import load_config
from gateway.inputs.simulate import send
from gateway.testing.cmdflood import CommandFlood
from gateway.testing.config import station_data, write_config
from gateway.testing.daemon import StationDaemon
from gateway.testing.mosquitto import Mosquitto

WAIT = 30.0


class Listener:
    """A paho subscriber that hands each message's arrival time to whoever waits for it."""

    def __init__(self, port: int, topics: list[str]) -> None:
        self._waiting: dict[str, queue.Queue[int]] = {}
        self._lock = threading.Lock()
        self.events: queue.Queue[dict[str, Any]] = queue.Queue()
        self.client = paho.Client(CallbackAPIVersion.VERSION2, protocol=paho.MQTTv5)
        self.client.on_message = self._on_message
        subscribed = threading.Event()
        self.client.on_subscribe = lambda *a: subscribed.set()
        self.client.connect("127.0.0.1", port)
        self.client.loop_start()
        self.client.subscribe([(t, 1) for t in topics])
        subscribed.wait(WAIT)

    def expect(self, key: str) -> queue.Queue[int]:
        with self._lock:
            waiter = self._waiting[key] = queue.Queue()
        return waiter

    def _on_message(self, client: paho.Client, userdata: Any, message: paho.MQTTMessage) -> None:
        now = time.monotonic_ns()
        body = json.loads(message.payload)
        if "/events/" in message.topic:
            self.events.put(body)
            return
        key = body.get("command_id") if body.get("status") == "applied" else body.get("probe")
        with self._lock:
            waiter = self._waiting.pop(key, None) if isinstance(key, str) else None
        if waiter is not None:
            waiter.put(now)

    def close(self) -> None:
        self.client.loop_stop()
        self.client.disconnect()


def one_round(config_path: Path, station: str, root: str, sender: paho.Client,
              listener: Listener) -> tuple[float, float]:
    """(gateway ack round trip, raw hop), in ms."""
    config = load_config(config_path)
    assert send(config, {"cmd": "press", "help_point": "hp-1"})["ok"]
    while True:
        event = listener.events.get(timeout=WAIT)
        if event.get("kind") == "help_point.press":
            alert_id = event["body"]["alert_id"]
            break
    command = make_command(station, alert_id, "acknowledge")
    payload = json.dumps(command.wire()).encode()
    waiter = listener.expect(command.command_id)
    start = time.monotonic_ns()
    sender.publish(f"{root}/commands", payload, qos=1)
    gateway_ms = (waiter.get(timeout=WAIT) - start) / 1e6

    probe = uuid.uuid4().hex
    waiter = listener.expect(probe)
    raw = json.dumps({**command.wire(), "probe": probe}).encode()
    start = time.monotonic_ns()
    sender.publish(f"bench/{station}/probe", raw, qos=1)
    raw_ms = (waiter.get(timeout=WAIT) - start) / 1e6

    resolve = make_command(station, alert_id, "resolve")
    waiter = listener.expect(resolve.command_id)
    sender.publish(f"{root}/commands", json.dumps(resolve.wire()).encode(), qos=1)
    waiter.get(timeout=WAIT)
    time.sleep(0.3)  # the press settles before the next one
    return gateway_ms, raw_ms


def station_raw(folder: Path, broker_url: str) -> dict[str, Any]:
    """The daemon's config data: mock pins, help point hp-1, the bench broker, the outbox in
    `folder` (the config's own reconnect timing)."""
    return station_data(
        folder, broker_url, id_prefix="bench", fast_reconnect=False, gpio_pin_factory="mock",
        help_points=[{"id": "hp-1", "pin": 17, "lamp_pin": 27, "hold_time_s": 0.5}],
    )


def round_trip_figures(results: dict[str, list[tuple[float, float]]],
                       rounds: int) -> list[Figure]:
    """The median ack round trip and raw hop of each phase."""
    figures = []
    for phase in ("idle", "flood"):
        gateway_ms = median([g for g, _ in results[phase]])
        raw_ms = median([r for _, r in results[phase]])
        figures.append(Figure(f"ack -> applied reply, {phase} (median of {rounds})", gateway_ms,
                              "ms", raw_ms, "raw paho hop"))
    return figures


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=15)
    parser.add_argument("--rate", type=float, default=10000)
    parser.add_argument("--rate-qos1", type=float, default=500)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    rounds = 5 if args.quick else args.rounds
    print_machine()
    with workdir("cmdflood") as folder, Mosquitto() as broker:
        raw = station_raw(folder, broker.url)
        station: str = raw["station_id"]
        root = f"stationgw/v1/{station}"
        config_path = write_config(folder / "station.toml", raw)
        daemon = StationDaemon(config_path, folder / "daemon.log", cwd=REPO)
        proc = daemon.start()
        listener = Listener(broker.port, [f"{root}/events/#", f"{root}/replies",
                                          f"bench/{station}/probe"])
        sender = paho.Client(CallbackAPIVersion.VERSION2, protocol=paho.MQTTv5)
        sender.connect("127.0.0.1", broker.port)
        sender.loop_start()
        try:
            daemon.wait_up_blocking(WAIT)
            time.sleep(1.0)  # connected and settled
            results: dict[str, list[tuple[float, float]]] = {"idle": [], "flood": []}
            for _ in range(rounds):
                results["idle"].append(one_round(config_path, station, root, sender, listener))
            idle_kib = proc_memory_kib(proc.pid)["VmRSS"]
            with (
                CommandFlood(broker.port, station, rate=args.rate, qos=0) as flood0,
                CommandFlood(broker.port, station, rate=args.rate_qos1, qos=1) as flood1,
            ):
                time.sleep(1.0)
                started = time.monotonic()
                for _ in range(rounds):
                    results["flood"].append(
                        one_round(config_path, station, root, sender, listener))
                flood_s = time.monotonic() - started + 1.0
            memory = proc_memory_kib(proc.pid)
            alive = proc.poll() is None
        finally:
            sender.loop_stop()
            sender.disconnect()
            listener.close()
            daemon.stop(timeout_s=20)
    sent = flood0.sent + flood1.sent
    figures = round_trip_figures(results, rounds)
    figures.append(Figure("RSS idle -> peak under the flood", memory["VmHWM"] / 1024, "MiB",
                          idle_kib / 1024, "idle", target="<= 40 MiB + small margin",
                          met=memory["VmHWM"] <= 48 * 1024))
    figures.append(Figure("junk commands sent", sent / flood_s, "/s", note=(
        f"{sent} in {flood_s:.1f} s ({flood0.sent} QoS 0, {flood1.sent} QoS 1); "
        f"daemon alive after: {alive}")))
    print_table("Command flood", figures)
    write_json(args.json, "command_flood", figures, {"rounds": rounds, "sent": sent})


if __name__ == "__main__":
    main()
