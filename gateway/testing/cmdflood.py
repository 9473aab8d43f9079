"""A flood of junk on a station's commands topic, at a fixed rate, from its own thread.

The junk sweeps what a buggy dispatch script or an attacker sends: deep nesting, a
5,000-digit integer, NaN, text that is not JSON, JSON that is not a command, a command for
another station, a stale one. Used by tests/test_command_intake.py and bench/command_flood.py;
by hand:

    python -m gateway.testing.cmdflood --port 1883 --station st-1 --rate 10000 --seconds 10
"""

from __future__ import annotations

import argparse
import itertools
import json
import threading
import time
import uuid
from collections.abc import Iterator
from types import TracebackType

import paho.mqtt.client as paho
from paho.mqtt.enums import CallbackAPIVersion

from gateway.uplink.topics import Topics

JUNK: tuple[bytes, ...] = (
    b"[" * 4000,
    b'{"command_id": "x", "eta_s": ' + b"9" * 5000 + b"}",
    b'{"schema": "stationgw/command/1", "eta_s": NaN}',
    b"\xff\xfe not json",
    b'{"schema": "stationgw/command/1"}',
    b'{"a": "\\ud800"}',
    b"",
)


def stale_command(station: str) -> bytes:
    """A well-formed acknowledge, issued an hour ago, for an alert that does not exist."""
    return json.dumps({
        "schema": "stationgw/command/1", "command_id": uuid.uuid4().hex, "station": station,
        "alert_id": "nope", "action": "acknowledge", "dispatcher": "flood",
        "issued_at": time.time() - 3600,
    }).encode()


def junk(station: str) -> Iterator[bytes]:
    """Junk payloads, cycling through every kind."""
    for n in itertools.count():
        kind = n % (len(JUNK) + 1)
        yield stale_command(station) if kind == len(JUNK) else JUNK[kind]


class CommandFlood:
    """Publishes junk to `{prefix}/{station}/commands` at `rate` a second until stopped, or
    until `total` have been sent.

    QoS 0 by default (the broker passes it on at once, with no flow control), or QoS 1
    (which the broker queues for the station under its Receive Maximum).
    """

    def __init__(
        self, port: int, station: str, *, rate: float = 10000, qos: int = 0,
        host: str = "127.0.0.1", prefix: str = "stationgw/v1", total: int | None = None,
    ) -> None:
        self.topic = Topics(prefix, station).commands
        self.station = station
        self.rate = rate
        self.qos = qos
        self.total = total
        self.sent = 0
        self._stop = threading.Event()
        self._client = paho.Client(
            CallbackAPIVersion.VERSION2, client_id=f"flood-{uuid.uuid4().hex[:8]}",
            protocol=paho.MQTTv5,
        )
        self._client.max_queued_messages_set(10000)
        self._client.max_inflight_messages_set(1000)
        self._client.connect(host, port)
        self._thread = threading.Thread(target=self._run, name="cmdflood", daemon=True)

    def __enter__(self) -> CommandFlood:
        self._client.loop_start()
        self._thread.start()
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._stop.set()
        self._thread.join()
        self._client.disconnect()
        self._client.loop_stop()

    def _run(self) -> None:
        payloads = junk(self.station)
        tick = 0.01
        per_tick = max(1, round(self.rate * tick))
        due = time.monotonic()
        while not self._stop.is_set():
            if self.total is not None and self.sent >= self.total:
                return
            for _ in range(per_tick):
                info = self._client.publish(self.topic, next(payloads), qos=self.qos)
                if info.rc == paho.MQTT_ERR_SUCCESS:
                    self.sent += 1
            due += tick
            pause = due - time.monotonic()
            if pause > 0:
                time.sleep(pause)
            else:
                due = time.monotonic()  # behind: no burst to catch up


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=1883)
    parser.add_argument("--station", required=True)
    parser.add_argument("--rate", type=float, default=10000)
    parser.add_argument("--seconds", type=float, default=10)
    parser.add_argument("--qos", type=int, choices=(0, 1), default=0)
    args = parser.parse_args()
    with CommandFlood(args.port, args.station, rate=args.rate, qos=args.qos,
                      host=args.host) as flood:
        time.sleep(args.seconds)
    print(f"sent {flood.sent} junk commands to {flood.topic}")


if __name__ == "__main__":
    main()
