"""Test helpers: station configs, a running gateway, and a subscriber on the real broker."""

from __future__ import annotations

import asyncio
import contextlib
import json
import uuid
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import aiomqtt

from gateway.config import StationConfig, parse_config
from gateway.daemon import Gateway


def station_config(
    tmp_path: Path, broker_urls: list[str], **overrides: Any
) -> StationConfig:
    """A valid config with a unique station id, so topics never collide between tests."""
    raw: dict[str, Any] = {
        "station_id": f"t-{uuid.uuid4().hex[:12]}",
        "brokers": [{"url": url} for url in broker_urls],
        "store": {"path": str(tmp_path / "outbox.db")},
        "mqtt": {"reconnect_initial_s": 0.05, "reconnect_max_s": 0.5, "health_interval_s": 60},
    }
    for key, value in overrides.items():
        if isinstance(value, dict) and isinstance(raw.get(key), dict):
            raw[key] = {**raw[key], **value}
        else:
            raw[key] = value
    return parse_config(raw)


@contextlib.asynccontextmanager
async def running(gateway: Gateway) -> AsyncIterator[Gateway]:
    """Open a gateway and run it in the background until the block ends."""
    async with gateway:
        task = asyncio.create_task(gateway.run(), name="test.gateway")
        try:
            yield gateway
        finally:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task


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
