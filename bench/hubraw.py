"""The hub benchmarks' raw baseline: a plain paho-mqtt subscriber in its own process.

It subscribes at QoS 1 (paho acknowledges each message on receipt), counts the distinct
messages it receives (by `event_id`, or by topic for a message without one, such as a
retained status) and notes `time.monotonic()` at the last new one. Prints `ready`
after the SUBACK; then each line on stdin is a timeout in seconds: it waits until `--expect`
distinct events have arrived (or the timeout passes) and prints `GOT LAST DUPLICATES`.

    python -m bench.hubraw --port PORT --topic 'PREFIX/+/events/#' --expect N
"""

from __future__ import annotations

import argparse
import json
import sys
import threading
import time
from typing import Any

import paho.mqtt.client as paho
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode


def main() -> int:
    """Subscribe, print `ready`, answer each timeout line on stdin."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--topic", required=True)
    parser.add_argument("--expect", type=int, required=True)
    args = parser.parse_args()
    seen: set[str] = set()
    dup = [0]
    last = [0.0]
    cond = threading.Condition()
    subscribed = threading.Event()

    def on_connect(client: paho.Client, userdata: Any, flags: Any, rc: ReasonCode,
                   props: Properties | None) -> None:
        client.subscribe(args.topic, qos=1)

    def on_subscribe(client: paho.Client, userdata: Any, mid: int, rcs: list[ReasonCode],
                     props: Any) -> None:
        subscribed.set()

    def on_message(client: paho.Client, userdata: Any, msg: paho.MQTTMessage) -> None:
        data = json.loads(msg.payload)
        key = data.get("event_id") if isinstance(data, dict) else None
        key = key if isinstance(key, str) else msg.topic
        with cond:
            if key in seen:
                dup[0] += 1
            else:
                seen.add(key)
                last[0] = time.monotonic()
                if len(seen) >= args.expect:
                    cond.notify_all()

    client = paho.Client(CallbackAPIVersion.VERSION2, protocol=paho.MQTTv5,
                         client_id=f"bench-raw-{time.monotonic_ns()}")
    client.on_connect = on_connect
    client.on_subscribe = on_subscribe
    client.on_message = on_message
    client.connect("127.0.0.1", args.port, keepalive=60)
    client.loop_start()
    if not subscribed.wait(10):
        print("error: no SUBACK within 10 s", file=sys.stderr)
        return 1
    print("ready", flush=True)
    for line in sys.stdin:
        timeout = float(line)
        with cond:
            cond.wait_for(lambda: len(seen) >= args.expect, timeout)
            print(f"{len(seen)} {last[0]} {dup[0]}", flush=True)
    client.disconnect()
    client.loop_stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
