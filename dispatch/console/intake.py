"""The MQTT edge: one paho-mqtt connection whose messages reach asyncio in batches.

Why paho-mqtt directly, not aiomqtt as the gateway uses. `bench/console_intake.py`, 50
stations publishing 200,000 QoS 1 events at once (medians of 3 runs x 3 repetitions, 2
shared cores; paho-mqtt 2.2, aiomqtt 2.5.1, Mosquitto 2.0.11):

    subscriber                     intake msg/s   CPU us/msg   peak RSS
    raw paho, own network thread          8,085           69     40 MiB
    raw aiomqtt                           4,886          154    999 MiB
    this console (paho, watch --json)     5,668          126     60 MiB

aiomqtt acknowledges on receipt and queues without bound; its iterator needs several loop
turns per message while its reader adds one a turn, so the backlog sits in the process
(19,999 of 30,000 messages queued at the peak in one check). The gateway publishes a few
events a second and keeps aiomqtt; the console receives from every station at once.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
from collections import deque
from collections.abc import AsyncGenerator, Callable, Sequence
from types import TracebackType
from typing import Any

import paho.mqtt.client as paho
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode
from paho.mqtt.subscribeoptions import SubscribeOptions

from dispatch.console.options import Security
from dispatch.errors import ConsoleConnectionError
from gateway.uplink.client import json_properties

MAX_BATCH = 500  # messages handed over (and committed by the hub) at once
RECEIVE_MAXIMUM = 1000  # unacknowledged messages in flight to us: bounds memory when behind
EPHEMERAL_SESSION_S = 60  # an unnamed console's session only rides out a short link drop
CONNECT_TIMEOUT_S = 10.0


class Intake:
    """One MQTT 5 connection on paho-mqtt's network thread, feeding asyncio in batches.

    Threads meet asyncio here only: paho calls `_on_*` from its network thread, which hand
    over with `loop.call_soon_threadsafe`. Messages queue in a deque and the loop is woken
    once per batch, not once per message. Nothing is acknowledged until `ack` is called.
    """

    def __init__(
        self,
        host: str,
        port: int,
        topics: Sequence[str],
        *,
        client_id: str,
        session_expiry_s: int,
        receive_maximum: int = RECEIVE_MAXIMUM,
        security: Security | None = None,
    ) -> None:
        self.host, self.port, self.topics = host, port, list(topics)
        self.client_id = client_id
        self.session_expiry_s = session_expiry_s
        self.receive_maximum = receive_maximum
        self.session_present = False
        self._client = paho.Client(
            CallbackAPIVersion.VERSION2, client_id=client_id, protocol=paho.MQTTv5,
            manual_ack=True,
        )
        if security is not None:
            security.apply(self._client)
        self._client.on_connect = self._on_connect
        self._client.on_subscribe = self._on_subscribe
        self._client.on_message = self._on_message
        self._client.on_publish = self._on_publish
        self._client.on_disconnect = self._on_disconnect
        self._pending: deque[paho.MQTTMessage] = deque()
        self._scheduled = False  # a wake-up is already on its way to the loop
        self._wake = asyncio.Event()
        self._lost: ConsoleConnectionError | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._ready: asyncio.Future[None] | None = None
        self._acks: dict[int, asyncio.Future[ReasonCode]] = {}
        self._early: dict[int, ReasonCode] = {}  # PUBACKs that beat their future
        self._properties = json_properties("5")

    # -- called from paho's network thread ------------------------------------------

    def _threadsafe(self, fn: Callable[..., None], *args: Any) -> None:
        """Run `fn(*args)` on the event loop; called from any thread."""
        if self._loop is not None:
            with contextlib.suppress(RuntimeError):  # the loop is already closed
                self._loop.call_soon_threadsafe(fn, *args)

    def _on_connect(
        self, client: paho.Client, userdata: Any, flags: paho.ConnectFlags, rc: ReasonCode,
        props: Properties | None,
    ) -> None:
        if rc.is_failure:
            self._threadsafe(self._fail, f"the broker refused the connection: {rc.getName()}")
            return
        self.session_present = flags.session_present
        client.subscribe([(t, SubscribeOptions(qos=1)) for t in self.topics])

    def _on_subscribe(
        self, client: paho.Client, userdata: Any, mid: int, rcs: list[ReasonCode],
        props: Properties | None,
    ) -> None:
        refused = [f"{t}: {rc.getName()}" for t, rc in zip(self.topics, rcs, strict=False)
                   if rc.is_failure]
        if refused:
            self._threadsafe(self._fail, "the broker refused the subscription: "
                             + "; ".join(refused))
        else:
            self._threadsafe(self._subscribed)

    def _on_message(self, client: paho.Client, userdata: Any, message: paho.MQTTMessage) -> None:
        self._pending.append(message)
        if not self._scheduled:
            self._scheduled = True
            self._threadsafe(self._wake.set)

    def _on_publish(
        self, client: paho.Client, userdata: Any, mid: int, rc: ReasonCode, props: Properties
    ) -> None:
        self._threadsafe(self._puback, mid, rc)

    def _on_disconnect(
        self, client: paho.Client, userdata: Any, flags: paho.DisconnectFlags, rc: ReasonCode,
        props: Properties | None,
    ) -> None:
        self._threadsafe(self._fail, f"connection lost: {rc.getName()}")

    # -- on the event loop ------------------------------------------------------------

    def _subscribed(self) -> None:
        if self._ready is not None and not self._ready.done():
            self._ready.set_result(None)

    def _fail(self, reason: str) -> None:
        error = ConsoleConnectionError(f"{self.host}:{self.port}: {reason}")
        if self._ready is not None and not self._ready.done():
            self._ready.set_exception(error)
        if self._lost is None:
            self._lost = error
        for future in self._acks.values():
            if not future.done():
                future.set_exception(error)
        self._wake.set()

    def _puback(self, mid: int, rc: ReasonCode) -> None:
        future = self._acks.pop(mid, None)
        if future is None:
            self._early[mid] = rc
        elif not future.done():
            future.set_result(rc)

    async def __aenter__(self) -> Intake:
        self._loop = asyncio.get_running_loop()
        self._ready = self._loop.create_future()
        props = Properties(PacketTypes.CONNECT)  # type: ignore[no-untyped-call]
        props.SessionExpiryInterval = self.session_expiry_s
        props.ReceiveMaximum = self.receive_maximum
        connect = functools.partial(
            self._client.connect, self.host, self.port, keepalive=30, clean_start=False,
            properties=props,
        )
        try:
            await self._loop.run_in_executor(None, connect)
        except (OSError, ValueError) as exc:
            raise ConsoleConnectionError(
                f"cannot connect to the broker at {self.host}:{self.port}: {exc}"
            ) from exc
        self._client.loop_start()
        try:
            async with asyncio.timeout(CONNECT_TIMEOUT_S):
                await self._ready
        except TimeoutError:
            self._stop(forget=False)
            raise ConsoleConnectionError(
                f"{self.host}:{self.port}: no CONNACK/SUBACK within {CONNECT_TIMEOUT_S:g}s"
            ) from None
        except BaseException:
            self._stop(forget=False)
            raise
        return self

    async def __aexit__(
        self, et: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        self._stop(forget=0 < self.session_expiry_s <= EPHEMERAL_SESSION_S)

    def _stop(self, *, forget: bool) -> None:
        props = None
        if forget:  # an unnamed console's session is of no use to anyone once it leaves
            props = Properties(PacketTypes.DISCONNECT)  # type: ignore[no-untyped-call]
            props.SessionExpiryInterval = 0
        self._client.disconnect(properties=props)
        self._client.loop_stop()  # joins the network thread: no callback runs after this

    async def batches(self) -> AsyncGenerator[list[paho.MQTTMessage], None]:
        """Received messages, in order, as they come; raises when the link drops."""
        while True:
            if self._pending:
                # Capped: Mosquitto 2.0 hands back the whole Receive Maximum quota at each
                # PUBACK, so a backlog can arrive faster than the window says.
                n = min(len(self._pending), MAX_BATCH)
                yield [self._pending.popleft() for _ in range(n)]
                continue
            if self._lost is not None:
                raise self._lost
            self._wake.clear()
            self._scheduled = False
            if self._pending or self._lost is not None:
                continue  # arrived between the check and the reset: no wake-up is coming
            await self._wake.wait()

    def ack(self, messages: Sequence[paho.MQTTMessage]) -> None:
        """Acknowledge handled messages (in the order received, as MQTT requires)."""
        for message in messages:
            if message.qos:
                self._client.ack(message.mid, message.qos)

    async def publish(self, topic: str, payload: bytes) -> ReasonCode:
        """Publish JSON at QoS 1 and return the PUBACK's reason code."""
        if self._lost is not None:
            raise self._lost
        info = self._client.publish(topic, payload, qos=1, properties=self._properties)
        if info.rc != paho.MQTT_ERR_SUCCESS:
            raise ConsoleConnectionError(f"could not publish to {topic}: {info.rc.name}")
        early = self._early.pop(info.mid, None)
        if early is not None:
            return early
        assert self._loop is not None
        future: asyncio.Future[ReasonCode] = self._loop.create_future()
        self._acks[info.mid] = future
        try:
            return await future
        finally:
            self._acks.pop(info.mid, None)
