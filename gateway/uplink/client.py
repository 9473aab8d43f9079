"""The MQTT client edge: aiomqtt, plus the PUBACK reason code that aiomqtt does not expose.

aiomqtt 2.x resolves a QoS 1 publish on any PUBACK, success or refusal. The gateway must
never count a refusal (0x87 Not authorized) as delivered, so `GatewayClient` chains paho's
`on_publish` callback to hand each PUBACK's reason code to the waiting publisher.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import socket
import ssl
from collections.abc import Callable
from typing import Any, cast

import aiomqtt
import paho.mqtt.client as paho
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode

from gateway.config.models import BrokerEndpoint, StationConfig

log = logging.getLogger(__name__)

NO_MATCHING_SUBSCRIBERS = 0x10
#: MQTT 5 DISCONNECT reason: another connection with this client id took the session over.
SESSION_TAKEN_OVER = 0x8E
# Called from the event loop with a PUBACK's reason code, or with the error that ended the
# connection before one came.
AckCallback = Callable[[ReasonCode | None, aiomqtt.MqttError | None], None]


class _ErrorMemo(logging.Logger):
    """paho's logger for one client: passes records on, and remembers the last error.

    paho reports a TLS alert from the broker (expired, revoked or unknown client
    certificate) only as a log line, with the exception among its arguments; the publisher
    needs both to say why a connect failed, and to tell a TLS failure by its type.
    """

    def __init__(self) -> None:
        super().__init__("gateway.uplink.client.paho")
        self.parent = logging.getLogger("gateway.uplink.client.paho")
        self.last_error: str | None = None
        self.last_exception: BaseException | None = None

    def handle(self, record: logging.LogRecord) -> None:
        if record.levelno >= logging.ERROR:
            self.last_error = record.getMessage()
            args = record.args if isinstance(record.args, tuple) else ()
            self.last_exception = next(
                (a for a in args if isinstance(a, BaseException)), None)
        super().handle(record)


RECEIVE_MAXIMUM = 32
MAXIMUM_PACKET_SIZE = 128 * 1024  # above dispatch.max_command_bytes' ceiling
QOS0_QUEUE_LIMIT = 64  # QoS 0 messages waiting beyond this are dropped (and counted)


class IntakeQueue(asyncio.PriorityQueue):  # type: ignore[type-arg]
    """Incoming messages, QoS 1 before QoS 0, each kind in arrival order.

    Dispatch sends commands at QoS 1, under the broker's flow control (Receive Maximum);
    QoS 0 has none, so a QoS 0 flood would otherwise fill the queue ahead of every QoS 1
    command the broker lets through, and a real acknowledge would wait behind ~64 junk
    messages per slot. `qos0_waiting` is what `QOS0_QUEUE_LIMIT` bounds.
    """

    def _init(self, maxsize: int) -> None:
        super()._init(maxsize)
        self._order = itertools.count()
        self.qos0_waiting = 0

    def _put(self, item: aiomqtt.Message) -> None:
        if item.qos == 0:
            self.qos0_waiting += 1
        super()._put((item.qos == 0, next(self._order), item))

    def _get(self) -> aiomqtt.Message:
        item: aiomqtt.Message = super()._get()[2]
        if item.qos == 0:
            self.qos0_waiting -= 1
        return item


class GatewayClient(aiomqtt.Client):
    """aiomqtt client whose `publish_confirmed` returns the broker's PUBACK reason code."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self._errors = _ErrorMemo()
        kwargs.setdefault("logger", self._errors)
        kwargs.setdefault("queue_type", IntakeQueue)
        super().__init__(*args, **kwargs)
        self._acks: dict[int, AckCallback] = {}
        #: How the last connection ended: the broker's DISCONNECT reason code (MQTT 5), or
        #: None while connected, after a plain socket close, or after `abort`.
        self.disconnect_reason: ReasonCode | None = None
        self.closed_by_peer = False  # the broker (or the path) ended it, not this client
        self._aborting = False
        self._on_qos0_dropped: Callable[[], None] | None = None
        # aiomqtt owns these callbacks; wrap them rather than replace them.
        paho_client = self._client
        self._aiomqtt_on_publish: Callable[..., None] | None = paho_client.on_publish
        self._aiomqtt_on_disconnect: Callable[..., None] | None = paho_client.on_disconnect
        paho_client.on_publish = self._on_puback
        paho_client.on_disconnect = self._on_lost

    def acknowledge_manually(self, on_dropped: Callable[[], None] | None = None) -> None:
        """Send each QoS 1 PUBACK only when `ack` says so (set before connecting).

        With MQTT 5's Receive Maximum (or the broker's in-flight limit on 3.1.1) this is the
        back-pressure: a slow or flooded reader holds at most that many messages, the broker
        the rest. QoS 0 messages have no such bound, so those beyond `QOS0_QUEUE_LIMIT`
        waiting are dropped, and `on_dropped` counts each one; the rest wait behind QoS 1
        (`IntakeQueue`).
        """
        self._client.manual_ack_set(True)
        self._on_qos0_dropped = on_dropped
        paho_client = self._client
        aiomqtt_on_message = paho_client.on_message

        def on_message(client: paho.Client, userdata: Any, message: paho.MQTTMessage) -> None:
            if message.qos == 0 and cast(IntakeQueue, self._queue).qos0_waiting >= QOS0_QUEUE_LIMIT:
                if self._on_qos0_dropped is not None:
                    self._on_qos0_dropped()
                return
            if aiomqtt_on_message is not None:
                aiomqtt_on_message(client, userdata, message)

        paho_client.on_message = on_message

    def ack(self, message: aiomqtt.Message) -> None:
        """Acknowledge a message handled under `acknowledge_manually` (QoS 0: nothing)."""
        if message.qos > 0:
            self._client.ack(message.mid, message.qos)

    def _on_puback(
        self, client: paho.Client, userdata: Any, mid: int, rc: ReasonCode, props: Properties
    ) -> None:
        callback = self._acks.pop(mid, None)
        if callback is not None:
            callback(rc, None)
        elif self._aiomqtt_on_publish is not None:  # a publish through aiomqtt's own API
            self._aiomqtt_on_publish(client, userdata, mid, rc, props)

    def _on_lost(self, *args: Any) -> None:
        # paho's VERSION2 on_disconnect: (client, userdata, flags, reason_code, properties)
        flags = args[2] if len(args) > 2 else None
        reason = args[3] if len(args) > 3 else None
        from_broker = bool(getattr(flags, "is_disconnect_packet_from_server", False))
        self.disconnect_reason = reason if from_broker and isinstance(reason, ReasonCode) else None
        # A plain close of the socket reaches paho as a lost connection ("Unspecified
        # error"); its own keepalive timeout and our clean DISCONNECT have their own names.
        self.closed_by_peer = not self._aborting and (
            from_broker
            or (isinstance(reason, ReasonCode) and reason.getName() == "Unspecified error")
        )
        if not self._connected.done() and not self._aborting:
            # aiomqtt would wait out its timeout: fail the connect now, saying why.
            reason = self._errors.last_error or "connection closed before CONNACK"
            error = aiomqtt.MqttError(reason)
            error.__cause__ = self._errors.last_exception  # an ssl.SSLError, say
            self._connected.set_exception(error)
        acks, self._acks = self._acks, {}
        lost = aiomqtt.MqttError("disconnected before PUBACK")
        for callback in acks.values():
            callback(None, lost)
        if self._aiomqtt_on_disconnect is not None:
            self._aiomqtt_on_disconnect(*args)

    def abort(self) -> None:
        """Drop the connection at once, without a DISCONNECT packet.

        The broker then treats the session as lost and publishes the Will (retained
        "offline"). paho notices the closed socket as a lost connection, so waiting
        publishes fail, `messages` ends with an error, and leaving `async with` sends nothing.
        """
        sock = self._client.socket()
        if sock is None:
            return
        self._aborting = True
        try:
            with contextlib.suppress(OSError):
                # A TCP (or TLS) socket: paho's SocketLike also covers its WebSocket wrapper.
                cast("socket.socket", sock).shutdown(socket.SHUT_RDWR)
            # Let paho read the end of the stream now, so its state says "lost" before
            # anyone leaves the client context (which would otherwise try a DISCONNECT).
            self._client.loop_read()
        finally:
            self._aborting = False
        if self._disconnected.done() and not self._disconnected.cancelled():
            self._disconnected.exception()  # seen: we caused it

    async def publish_confirmed(
        self,
        topic: str,
        payload: bytes,
        *,
        retain: bool = False,
        properties: Properties | None = None,
    ) -> ReasonCode:
        """Publish at QoS 1 and return the PUBACK's reason code (success or refusal)."""
        future: asyncio.Future[ReasonCode] = asyncio.get_running_loop().create_future()

        def settle(rc: ReasonCode | None, error: aiomqtt.MqttError | None) -> None:
            if future.done():
                return
            if rc is None:
                future.set_exception(error or aiomqtt.MqttError("no PUBACK"))
            else:
                future.set_result(rc)

        mid = self.publish_nowait(topic, payload, settle, retain=retain, properties=properties)
        try:
            return await future
        finally:
            self._acks.pop(mid, None)

    def publish_nowait(
        self,
        topic: str,
        payload: bytes,
        on_ack: AckCallback,
        *,
        retain: bool = False,
        properties: Properties | None = None,
    ) -> int:
        """Publish at QoS 1; `on_ack` gets the PUBACK's reason code, or the error if the
        connection ends first. Cheaper than `publish_confirmed`: no future, no task.

        Returns the packet id. Raises `aiomqtt.MqttCodeError` if paho cannot send at all.
        """
        info = self._client.publish(topic, payload, 1, retain, properties)
        if info.rc != paho.MQTT_ERR_SUCCESS:
            raise aiomqtt.MqttCodeError(info.rc, "could not publish")
        self._acks[info.mid] = on_ack
        return info.mid


class _JsonProperties(Properties):
    """PUBLISH properties of a JSON payload, packed once.

    paho packs a message's properties again for every publish, and with the same object
    for every event that was a tenth of the event loop's time. The bytes on the wire are
    the same; the object refuses changes, so they cannot go stale.
    """

    def __init__(self) -> None:
        super().__init__(PacketTypes.PUBLISH)  # type: ignore[no-untyped-call]
        self.PayloadFormatIndicator = 1
        self.ContentType = "application/json"
        self._packed: bytes = super().pack()  # type: ignore[no-untyped-call]

    def __setattr__(self, name: str, value: Any) -> None:
        if "_packed" in self.__dict__:
            raise AttributeError("these properties are packed once and cannot change")
        if name == "_packed":
            object.__setattr__(self, name, value)
        else:
            super().__setattr__(name, value)  # type: ignore[no-untyped-call]

    def pack(self) -> bytes:
        """The packed properties (paho calls this for every publish)."""
        return self._packed


def json_properties(protocol: str) -> Properties | None:
    """PUBLISH properties for a JSON payload (MQTT 5 only)."""
    return _JsonProperties() if protocol == "5" else None


def tls_context(config: StationConfig) -> ssl.SSLContext:
    """Server-verifying TLS context with the configured CA and optional client certificate."""
    tls = config.mqtt.tls
    context = ssl.create_default_context(cafile=str(tls.ca_file) if tls.ca_file else None)
    if tls.cert_file is not None:
        context.load_cert_chain(str(tls.cert_file), str(tls.key_file) if tls.key_file else None)
    return context


def read_password(config: StationConfig) -> str | None:
    """The broker password from its file, without the trailing newline."""
    path = config.mqtt.password_file
    if path is None:
        return None
    return path.read_text(encoding="utf-8").rstrip("\r\n")


def make_client(
    config: StationConfig,
    endpoint: BrokerEndpoint,
    will: aiomqtt.Will | None = None,
    *,
    identifier: str | None = None,
    persistent: bool = True,
) -> GatewayClient:
    """A client for one endpoint, configured from the station config."""
    v5 = config.mqtt.protocol == "5"
    properties = None
    if v5:
        properties = Properties(PacketTypes.CONNECT)  # type: ignore[no-untyped-call]
        # Bounded intake: at most RECEIVE_MAXIMUM unacknowledged QoS 1 messages (commands)
        # come in at once, the broker holds the rest; nothing larger than a command can be.
        properties.ReceiveMaximum = RECEIVE_MAXIMUM
        properties.MaximumPacketSize = MAXIMUM_PACKET_SIZE
        if persistent:
            # A persistent session: the broker keeps dispatch's commands while the link is
            # down.
            properties.SessionExpiryInterval = config.mqtt.session_expiry_s
    return GatewayClient(
        endpoint.host,
        endpoint.port,
        identifier=identifier or config.client_id,
        protocol=aiomqtt.ProtocolVersion.V5 if v5 else aiomqtt.ProtocolVersion.V311,
        # paho refuses clean_start on 3.1.1, where clean_session=False asks for the same.
        clean_start=(not persistent) if v5 else paho.MQTT_CLEAN_START_FIRST_ONLY,
        clean_session=None if v5 else not persistent,
        properties=properties,
        keepalive=config.mqtt.keepalive_s,
        username=config.mqtt.username,
        password=read_password(config),
        tls_context=tls_context(config) if endpoint.tls else None,
        will=will,
        max_inflight_messages=config.mqtt.inflight_window,
        timeout=10,
    )
