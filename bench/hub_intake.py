"""Hub intake: events committed per second, to PostgreSQL and to SQLite, beside a raw
paho-mqtt subscriber's intake of the same messages in the same run.

`--stations` simulated stations (protocol level: their events rendered as gateways render
them) publish `--events` events each at QoS 1 to one Mosquitto, as fast as one paho client
can. Timed from the first publish to the moment the last event is committed (the hub:
`stationgw hub run` in its own process, the count polled in its database) or received (the
baseline: a raw paho subscriber at QoS 1 on its own network thread, counting in on_message).
Each figure is the median of `--reps` runs; the hub gets a fresh database each run.

    python -m bench.hub_intake [--stations 50] [--events 400] [--reps 3] [--quick]
"""

from __future__ import annotations

import argparse
import threading
import time
import uuid
from pathlib import Path

import paho.mqtt.client as paho
from paho.mqtt.enums import CallbackAPIVersion
from sqlalchemy import create_engine, func, select, text

from bench.figures import Figure, median, print_table, write_json
from bench.hubkit import HubProcess
from bench.machine import print_machine, workdir
from dispatch.hub.schema import events
from dispatch.hub.store import migrate, open_engine
from gateway.core.model import Event, Priority
from gateway.testing.mosquitto import Mosquitto
from gateway.testing.postgres import PostgreSQL
from gateway.uplink.topics import Topics

WAIT_S = 600.0


def messages(stations: int, per_station: int, prefix: str) -> list[tuple[str, bytes]]:
    out = []
    for s in range(stations):
        topics = Topics(prefix, f"st-{s:03d}")
        for seq in range(1, per_station + 1):
            event = Event("sensor.reading", "s-1", Priority.P3, {"value": seq})
            out.append(topics.render(event, seq, 1_800_000_000.0 + seq))
    return out


def publish(port: int, batch: list[tuple[str, bytes]]) -> float:
    """Publish everything at QoS 1; returns the monotonic start time."""
    client = paho.Client(CallbackAPIVersion.VERSION2, protocol=paho.MQTTv5)
    client.max_inflight_messages_set(1000)
    client.max_queued_messages_set(0)
    client.connect("127.0.0.1", port)
    client.loop_start()
    start = time.monotonic()
    infos = [client.publish(t, p, qos=1) for t, p in batch]
    for info in infos:
        info.wait_for_publish(WAIT_S)
    client.disconnect()
    client.loop_stop()
    return start


def raw_intake(port: int, batch: list[tuple[str, bytes]], prefix: str) -> float:
    """Seconds for a raw paho subscriber to receive every message."""
    done = threading.Event()
    count = [0]
    last = [0.0]

    def on_message(client: paho.Client, userdata: object, message: paho.MQTTMessage) -> None:
        count[0] += 1
        if count[0] == len(batch):
            last[0] = time.monotonic()
            done.set()

    subscribed = threading.Event()
    sub = paho.Client(CallbackAPIVersion.VERSION2, protocol=paho.MQTTv5)
    sub.on_message = on_message
    sub.on_subscribe = lambda *a: subscribed.set()
    sub.connect("127.0.0.1", port)
    sub.loop_start()
    sub.subscribe(f"{prefix}/+/events/#", qos=1)
    subscribed.wait(30)
    start = publish(port, batch)
    assert done.wait(WAIT_S), f"raw subscriber got {count[0]} of {len(batch)}"
    sub.disconnect()
    sub.loop_stop()
    return last[0] - start


def hub_intake(port: int, batch: list[tuple[str, bytes]], prefix: str, url: str,
               folder: Path) -> float:
    """Seconds for `stationgw hub run` to commit every message to the database at `url`."""
    engine = open_engine(url)
    migrate(engine)
    client_id = f"bench-hub-{uuid.uuid4().hex[:8]}"
    # Started, then waited for until it says it is connected and subscribed (a fixed sleep
    # was too short on a loaded machine: what was published before the subscription was
    # dropped by the broker, and the count never came).
    hub = HubProcess(url, port, prefix, client_id, folder / f"hub-{client_id}.log")
    try:
        hub.start()
        start = publish(port, batch)
        deadline = time.monotonic() + WAIT_S
        with engine.connect() as conn:
            while True:
                (n,) = conn.execute(select(func.count()).select_from(events)).one()
                if n >= len(batch):
                    return time.monotonic() - start
                assert hub.alive(), f"the hub exited:\n{hub.tail()}"
                assert time.monotonic() < deadline, f"the hub stored {n} of {len(batch)}"
                time.sleep(0.02)
                conn.rollback()
    finally:
        hub.stop()
        engine.dispose()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--stations", type=int, default=50)
    parser.add_argument("--events", type=int, default=400)
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    if args.quick:
        args.stations, args.events, args.reps = 10, 100, 1
    print_machine()
    total = args.stations * args.events
    results: dict[str, list[float]] = {"raw": [], "sqlite": [], "postgresql": []}
    with workdir("hub") as folder, Mosquitto() as broker, PostgreSQL() as pg:
        admin = create_engine(pg.url, isolation_level="AUTOCOMMIT")
        for rep in range(args.reps):
            prefix = f"b{rep}{uuid.uuid4().hex[:6]}/v1"
            batch = messages(args.stations, args.events, prefix)
            results["raw"].append(total / raw_intake(broker.port, batch, prefix))
            results["sqlite"].append(total / hub_intake(
                broker.port, batch, prefix, f"sqlite:///{folder / f'hub{rep}.db'}", folder))
            name = f"hub_{rep}_{uuid.uuid4().hex[:6]}"
            with admin.connect() as conn:
                conn.execute(text(f"CREATE DATABASE {name}"))
            results["postgresql"].append(total / hub_intake(
                broker.port, batch, prefix, pg.url.rsplit("/", 1)[0] + f"/{name}", folder))
        admin.dispose()
    raw = median(results["raw"])
    figures = [
        Figure(f"hub -> {backend}, events committed/s ({args.stations} stations x "
               f"{args.events})", median(results[backend]), "/s", raw, "raw paho intake",
               target=">= 0.8x raw", met=median(results[backend]) >= 0.8 * raw)
        for backend in ("postgresql", "sqlite")
    ]
    print_table("Hub intake", figures)
    write_json(args.json, "hub_intake", figures, dict(results))


if __name__ == "__main__":
    main()
