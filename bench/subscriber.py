"""The benchmarks' subscriber: a paho-mqtt client in its own process.

It subscribes at QoS 1 and, for each message whose topic matches `--report`, prints one line
`m KEY T_NS` where T_NS is `time.monotonic_ns()` taken first thing in `on_message`, and KEY is
the payload's `event_id`. CLOCK_MONOTONIC is shared by every process on the machine, so the
benchmark compares T_NS with its own `monotonic_ns()` taken before the submit or publish.

Running it in its own process keeps its work (parsing, acking) off the measured process's GIL,
the way a dispatch consumer on another machine would be. Commands on stdin: `count` prints
`c N` (messages received so far, all topics); end of input prints `c N` and exits. After a
reconnect (the broker was restarted) it subscribes again and prints `s`.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
import threading
import time
from typing import Any

import paho.mqtt.client as paho
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode


def main() -> int:
    """Subscribe, print `ready`, then report receipts until stdin closes."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--topic", action="append", required=True, help="filter (repeatable)")
    parser.add_argument("--report", default=".*", help="regex: report receipts on these topics")
    args = parser.parse_args()
    report = re.compile(args.report)
    out = sys.stdout
    lock = threading.Lock()
    received = 0
    subscribed = threading.Event()

    def on_connect(
        client: paho.Client, userdata: Any, flags: Any, rc: ReasonCode, props: Properties | None
    ) -> None:
        client.subscribe([(t, 1) for t in args.topic])

    def on_subscribe(
        client: paho.Client, userdata: Any, mid: int, rcs: list[ReasonCode], props: Any
    ) -> None:
        if subscribed.is_set():
            with lock:
                out.write("s\n")  # subscribed again after a reconnect
                out.flush()
        subscribed.set()

    def on_message(client: paho.Client, userdata: Any, msg: paho.MQTTMessage) -> None:
        t_ns = time.monotonic_ns()
        nonlocal received
        received += 1
        if report.search(msg.topic):
            key = json.loads(msg.payload)["event_id"]
            with lock:
                out.write(f"m {key} {t_ns}\n")
                out.flush()

    client = paho.Client(
        CallbackAPIVersion.VERSION2, client_id=f"bench-sub-{time.monotonic_ns()}",
        protocol=paho.MQTTv5,
    )
    client.on_connect = on_connect
    client.on_subscribe = on_subscribe
    client.on_message = on_message
    client.reconnect_delay_set(1, 1)
    client.connect("127.0.0.1", args.port, keepalive=60)
    client.loop_start()
    if not subscribed.wait(10):
        print("error: no SUBACK within 10 s", file=sys.stderr)
        return 1
    with lock:
        out.write("ready\n")
        out.flush()
    for line in sys.stdin:
        if line.strip() == "count":
            with lock:
                out.write(f"c {received}\n")
                out.flush()
    client.disconnect()
    client.loop_stop()
    with lock:
        out.write(f"c {received}\n")
        out.flush()
    return 0


if __name__ == "__main__":
    sys.exit(main())
