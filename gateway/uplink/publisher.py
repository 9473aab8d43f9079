"""Drains the outbox to the broker: priority first, bounded in-flight window, PUBACK-gated.

A row leaves the outbox only after a PUBACK with a success reason code. A refusal keeps the
row (state ``refused``, retried every ``mqtt.refused_retry_s``) and raises a fault. On
disconnect, rows in flight simply stay pending and are sent again, with the same event_id,
after the reconnect. Reconnects use capped, jittered exponential backoff and fail over
across the configured endpoints in order.

A broker that takes publishes but stops confirming them, or a path that went quiet without
closing (half-open), is noticed by the PUBACK deadline: a P0/P1 row, or the gateway's own
status or health message, unconfirmed for `mqtt.puback_deadline_s` drops the socket (fault
`broker_stalled`) and the next endpoint is tried. Any session that ends other than by a
clean stop drops the socket without a DISCONNECT, so the broker publishes the Will
("offline"); a clean stop publishes "offline" itself.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import ssl
import time
from collections import deque
from collections.abc import Callable, Coroutine, Sequence
from functools import partial
from typing import Any, Literal, NoReturn

import aiomqtt
from paho.mqtt.reasoncodes import ReasonCode

from firmware_bridge.backoff import backoff_delay
from gateway.config.models import BrokerEndpoint, StationConfig
from gateway.core.drain import PAGE_NEEDED, DrainQueue
from gateway.core.model import CLASS_NAMES, AlertRecord, Priority
from gateway.errors import BrokerStalledError, LinkError
from gateway.health import Health
from gateway.outbox.sqlite import Row, State
from gateway.outbox.store import AsyncOutbox
from gateway.uplink.client import (
    NO_MATCHING_SUBSCRIBERS,
    SESSION_TAKEN_OVER,
    GatewayClient,
    json_properties,
    make_client,
)
from gateway.uplink.retained import Retained
from gateway.uplink.topics import Topics

log = logging.getLogger(__name__)

PAGE = 256  # rows loaded from the database at a time
#: Confirmed rows are deleted in batches, at most this long after their PUBACK. A crash in
#: between only re-sends them with the same event_id (at least once, as the contract says).
DELETE_BATCH_S = 0.05
_DELIVERED = tuple(f"delivered_{name}" for name in CLASS_NAMES)  # health counters by class
#: Twins: this many sessions closed by the broker without a reason within `TWIN_WINDOW_S`
#: count as a client-id clash; a session up this long clears the fault.
TWIN_CLOSES = 3
TWIN_WINDOW_S = 60.0
ClientFactory = Callable[[StationConfig, BrokerEndpoint, aiomqtt.Will], GatewayClient]
Handler = Callable[[GatewayClient, aiomqtt.Message], Coroutine[Any, Any, None]]


def _tls_failure(exc: BaseException) -> bool:
    """Whether an ended session failed in TLS: an `ssl.SSLError` (a handshake refused, a
    certificate not verified, the broker's alert) anywhere in the exception's chain."""
    seen: set[int] = set()
    stack: list[BaseException | None] = [exc]
    while stack:
        current = stack.pop()
        if current is None or id(current) in seen:
            continue
        seen.add(id(current))
        if isinstance(current, ssl.SSLError):
            return True
        stack += [current.__cause__, current.__context__]
    return False


def _cancel_requests() -> int:
    task = asyncio.current_task()
    return 0 if task is None else task.cancelling()


def _honour_lost_cancel(before: int) -> None:
    """Raise CancelledError if this task was cancelled after `before` but the cancel got lost.

    aiomqtt waits for CONNACK and SUBACK with asyncio.wait_for, which on Python 3.11 swallows
    a cancel that lands just as the reply arrives (cpython gh-86296); the daemon would then
    ignore its stop. Counts are compared because on 3.11 a TaskGroup whose child failed
    leaves `cancelling()` raised for good.
    """
    if _cancel_requests() > before:
        raise asyncio.CancelledError


class Publisher:
    """Publishes outbox rows over MQTT and keeps the connection up."""

    def __init__(
        self,
        config: StationConfig,
        outbox: AsyncOutbox,
        health: Health,
        *,
        client_factory: ClientFactory = make_client,
        open_alerts: Callable[[], Sequence[AlertRecord]] = tuple,
        alerts_changed: asyncio.Event | None = None,
        on_delivered: Callable[[Row], None] = lambda _row: None,
    ) -> None:
        self.config = config
        self.outbox = outbox
        self.health = health
        self.topics = Topics(config.mqtt.topic_prefix, config.station_id)
        self._client_factory = client_factory
        self._properties = json_properties(config.mqtt.protocol)
        self.subscriptions: list[tuple[str, Handler]] = []  # (topic filter, handler), QoS 1
        self._on_delivered = on_delivered  # after a success PUBACK: the way back
        self.connected = asyncio.Event()
        # Which row goes next (sans-I/O); the events wake the drain task.
        self.drain: DrainQueue[Row] = DrainQueue(config.mqtt.inflight_window)
        self.retained = Retained(
            config, outbox, health, self._properties, in_flight=lambda: self.drain.in_flight,
            open_alerts=open_alerts, alerts_changed=alerts_changed,
        )
        self._wake = asyncio.Event()  # a row was accepted, or the drain starts over
        self._room = asyncio.Event()  # a window slot freed, or a new row arrived
        # Work for the store, done in batches by `_flush_store`.
        self._acked: list[int] = []  # confirmed: to be removed
        self._marks: list[tuple[int, int, State, str | None]] = []  # attempts and state
        # reason code -> (its name, event_ids), for the log
        self._confirmed: dict[int, tuple[str, list[str]]] = {}
        self._store_wake = asyncio.Event()
        self._refused: set[int] = set()  # last attempt refused: keeps the fault up
        # The PUBACK deadline: send times (monotonic) of what is awaiting its PUBACK.
        self._urgent_sent: dict[int, float] = {}  # P0/P1 seq -> sent, oldest first
        self._own_sent: dict[int, tuple[str, float]] = {}  # packet id -> (what, sent)
        self._armed = asyncio.Event()  # something was added to one of them
        self._peer_closes: deque[float] = deque()  # 3.1.1 twins: when sessions were closed
        self._ended_by: Literal["taken_over", "peer"] | None = None  # the last session's end
        self._peer_close_pending = False  # the broker closed the last session (no reason)

    # ------------------------------------------------------------------ intake

    def offer(self, row: Row) -> None:
        """A row was accepted into the outbox: it may overtake everything queued behind it."""
        if self.connected.is_set() and self.drain.offer(row):
            self._wake.set()
            self._room.set()

    def _reset_drain(self) -> None:
        """Forget queued rows (they are still in the outbox) and reload from the start."""
        self.drain.reset()
        self._wake.set()

    # ------------------------------------------------------------------ running

    async def run(self) -> NoReturn:
        """Connect, drain and reconnect forever (cancel to stop)."""
        async with asyncio.TaskGroup() as tg:
            tg.create_task(self._flush_store(), name="publisher.flush_store")
            tg.create_task(self._retry_refused(), name="publisher.retry_refused")
            await self._connect_forever()
        raise AssertionError("unreachable")  # pragma: no cover

    async def _connect_forever(self) -> NoReturn:
        endpoints = self.config.brokers
        attempt = 0
        index = 0
        while True:
            endpoint = endpoints[index % len(endpoints)]
            started = time.monotonic()
            self._ended_by = None
            try:
                await self._session(endpoint)
            except* (aiomqtt.MqttError, LinkError, OSError) as group:
                reason = "; ".join(str(e) for e in group.exceptions)
                self.health.link(f"broker:{endpoint.url}", f"down ({reason})")
                self.health.count("broker_disconnects")
                if any(_tls_failure(e) for e in group.exceptions):
                    self.health.raise_fault(
                        "broker_tls",
                        f"TLS with {endpoint.url} failed: {reason} (check the broker's name, "
                        "the CA file, and the client certificate's expiry, CA and revocation)",
                    )
            finally:
                self.connected.clear()
            if time.monotonic() - started > 30:
                attempt = 0  # the session was healthy for a while: start backoff afresh
            index += 1
            if not self._twin(endpoint):
                self.health.raise_fault(
                    "broker_unreachable", f"no connection to {endpoint.url}; outbox is buffering"
                )
            if index % len(endpoints) == 0:
                delay = backoff_delay(
                    attempt, self.config.mqtt.reconnect_initial_s, self.config.mqtt.reconnect_max_s
                )
                attempt += 1
                log.info("reconnecting in %.2fs (attempt %d)", delay, attempt)
                await asyncio.sleep(delay)

    def _twin(self, endpoint: BrokerEndpoint) -> bool:
        """After a session ended: was it (probably) taken over by a client with our id?

        MQTT 5 brokers may say so (DISCONNECT 0x8E Session taken over). Others, Mosquitto
        2.0 among them, just close the socket; `TWIN_CLOSES` such closes within
        `TWIN_WINDOW_S`, each followed by a reconnect that worked at once (so the broker
        was there all along), count as the same clash (see `_note_peer_close`).
        """
        if self._ended_by == "taken_over":
            self.health.count("session_taken_over")
            self.health.raise_fault(
                "client_id_in_use",
                f"another client uses this client id ({self.config.client_id}): "
                f"{endpoint.url} handed our session to it (MQTT 5 reason 0x8E Session "
                f"taken over); is a second gateway configured as station "
                f"{self.config.station_id}?",
            )
            return True
        self._peer_close_pending = self._ended_by == "peer"
        return self._peer_close_pending and "client_id_in_use" in self.health.faults

    def _note_peer_close(self, endpoint: BrokerEndpoint) -> None:
        """Connected again right after the broker closed our last session."""
        if not self._peer_close_pending:
            return
        self._peer_close_pending = False
        now = time.monotonic()
        self._peer_closes.append(now)
        while self._peer_closes[0] < now - TWIN_WINDOW_S:
            self._peer_closes.popleft()
        if len(self._peer_closes) >= TWIN_CLOSES:
            self.health.count("session_taken_over")
            self.health.raise_fault(
                "client_id_in_use",
                f"{endpoint.url} closed {len(self._peer_closes)} of our sessions within "
                f"{TWIN_WINDOW_S:g}s and took us back at once each time: another client "
                f"probably uses this client id ({self.config.client_id}); is a second "
                f"gateway configured as station {self.config.station_id}?",
            )

    async def _session(self, endpoint: BrokerEndpoint) -> None:
        will = aiomqtt.Will(
            self.topics.status, self.retained.status("offline"), qos=1, retain=True,
            properties=self._properties,
        )
        client = self._client_factory(self.config, endpoint, will)
        client.acknowledge_manually(lambda: self.health.count("commands_dropped_qos0"))
        # CONNACK and SUBACK: a broker that does not answer is as stalled as one that
        # does not confirm.
        client.timeout = self.config.mqtt.puback_deadline_s
        cancels = _cancel_requests()
        entered = said_offline = False
        try:
            async with client:
                entered = True
                try:
                    await self._serve(client, endpoint, cancels)
                except asyncio.CancelledError:
                    # Clean shutdown: say so (the retained Will only covers a lost connection).
                    said_offline = await self._say_offline(client)
                    raise
                finally:
                    if not said_offline:
                        # A fault in any task, a stall, or a stop that could not say
                        # "offline": leaving `async with client` would send a clean
                        # DISCONNECT, after which the broker drops the Will and "online"
                        # stays retained. Drop the socket instead: the broker fires the Will.
                        client.abort()
                    self._ended(client)
        except BaseException:
            if not entered:
                client.abort()  # a CONNACK that never came leaves paho's socket open
            raise

    def _ended(self, client: GatewayClient) -> None:
        was_up = self.connected.is_set()
        self.connected.clear()
        self.drain.session_ended()  # rows in flight are still pending: re-sent on reconnect
        self._urgent_sent.clear()
        self._own_sent.clear()
        reason = client.disconnect_reason
        if reason is not None and reason.value == SESSION_TAKEN_OVER:
            self._ended_by = "taken_over"
        elif was_up and client.closed_by_peer:
            self._ended_by = "peer"

    async def _serve(self, client: GatewayClient, endpoint: BrokerEndpoint, cancels: int) -> None:
        self.health.link(f"broker:{endpoint.url}", "up")
        self._note_peer_close(endpoint)
        self.health.clear_fault("broker_unreachable")
        self.health.clear_fault("broker_tls")
        try:
            async with asyncio.timeout(self.config.mqtt.puback_deadline_s):
                await client.publish_confirmed(
                    self.topics.status, self.retained.status("online"), retain=True,
                    properties=self._properties,
                )
        except TimeoutError:
            self._stalled(client, endpoint, "the status message")
        self.health.clear_fault("broker_stalled")
        for topic, _handler in self.subscriptions:
            await client.subscribe(topic, qos=1)
        _honour_lost_cancel(cancels)
        self._reset_drain()
        self.connected.set()
        async with asyncio.TaskGroup() as tg:
            tg.create_task(self._watch(client), name="publisher.watch")
            tg.create_task(self._drain(client), name="publisher.drain")
            tg.create_task(
                self.retained.health_loop(client, self._publish_own), name="publisher.health"
            )
            tg.create_task(self.retained.alerts_loop(client), name="publisher.alerts")
            tg.create_task(self._deadline_loop(client, endpoint), name="publisher.deadline")
            tg.create_task(self._settle(), name="publisher.settle")

    async def _say_offline(self, client: GatewayClient) -> bool:
        """Publish the retained "offline" status; True once the broker confirmed it."""
        with contextlib.suppress(aiomqtt.MqttError, TimeoutError):
            async with asyncio.timeout(min(2.0, self.config.mqtt.puback_deadline_s)):
                await client.publish_confirmed(
                    self.topics.status, self.retained.status("offline"), retain=True,
                    properties=self._properties,
                )
                return True
        return False

    async def _settle(self) -> None:
        """A session that stays up a while clears the client-id clash."""
        await asyncio.sleep(TWIN_WINDOW_S)
        self._peer_closes.clear()
        self.health.clear_fault("client_id_in_use")

    # ------------------------------------------------------------------ the PUBACK deadline

    def _oldest_unconfirmed(self) -> tuple[str, float] | None:
        oldest: tuple[str, float] | None = None
        for seq, sent in self._urgent_sent.items():
            row = self.drain.in_flight_row(seq)
            what = f"{row.priority.name} event {row.event_id}" if row else f"row {seq}"
            oldest = (what, sent)
            break
        for what, sent in self._own_sent.values():
            if oldest is None or sent < oldest[1]:
                oldest = (what, sent)
            break
        return oldest

    async def _deadline_loop(self, client: GatewayClient, endpoint: BrokerEndpoint) -> NoReturn:
        """Drop the connection when a P0/P1 row or our own message waits too long."""
        deadline = self.config.mqtt.puback_deadline_s
        while True:
            oldest = self._oldest_unconfirmed()
            if oldest is None:
                self._armed.clear()
                await self._armed.wait()
                continue
            left = oldest[1] + deadline - time.monotonic()
            if left > 0:
                await asyncio.sleep(left)
                continue
            self._stalled(client, endpoint, oldest[0])

    def _stalled(self, client: GatewayClient, endpoint: BrokerEndpoint, what: str) -> NoReturn:
        deadline = self.config.mqtt.puback_deadline_s
        self.health.count("broker_stalls")
        self.health.raise_fault(
            "broker_stalled",
            f"{endpoint.url} did not confirm {what} within {deadline:g}s "
            "(mqtt.puback_deadline_s): connection dropped, trying the next broker",
        )
        client.abort()
        raise BrokerStalledError(f"no PUBACK within {deadline:g}s for {what}")

    def _publish_own(
        self, client: GatewayClient, topic: str, payload: bytes, what: str,
        on_rc: Callable[[ReasonCode], None] | None = None,
    ) -> None:
        """Publish a retained message of our own without waiting; the deadline watches it."""
        mid = 0

        def settle(rc: ReasonCode | None, error: aiomqtt.MqttError | None) -> None:
            self._own_sent.pop(mid, None)
            if rc is not None:
                self.health.clear_fault("broker_stalled")
                if on_rc is not None:
                    on_rc(rc)

        sent = time.monotonic()
        mid = client.publish_nowait(topic, payload, settle, retain=True,
                                    properties=self._properties)
        self._own_sent[mid] = (what, sent)
        self._armed.set()

    async def _watch(self, client: GatewayClient) -> None:
        """Hand incoming messages to their handlers, in order; ends when the link drops."""
        async for message in client.messages:
            try:
                for topic, handler in self.subscriptions:
                    if message.topic.matches(topic):
                        await handler(client, message)
            finally:
                # Only now may the broker send the next one (manual acknowledgement).
                with contextlib.suppress(ValueError, OSError):  # the link is already gone
                    client.ack(message)

    async def _drain(self, client: GatewayClient) -> None:
        while True:
            row = await self._next_row()
            while not self.drain.may_send(row):
                # Put it back and wait for a PUBACK or a new (perhaps more urgent) row.
                self.drain.put_back(row)
                self._room.clear()
                await self._room.wait()
                row = await self._next_row()
            self._send(client, row)

    async def _next_row(self) -> Row:
        while True:
            row = self.drain.next_row()
            if not isinstance(row, str):
                return row
            if row == PAGE_NEEDED:
                self.drain.loaded(await self.outbox.page(self.drain.cursor, PAGE), PAGE)
            else:  # EMPTY: every row is known; wait for the next accept
                self._wake.clear()
                await self._wake.wait()

    def _send(self, client: GatewayClient, row: Row) -> None:
        """Publish a row; `_on_puback` gets the outcome (no task per message)."""
        attempts = row.attempts + 1
        self.drain.sent(row)
        if row.priority <= Priority.P1:
            self._urgent_sent[row.seq] = time.monotonic()
            self._armed.set()
        try:
            client.publish_nowait(
                row.topic, row.payload, partial(self._on_puback, row, attempts),
                properties=self._properties,
            )
        except aiomqtt.MqttError as exc:
            # The connection is gone: end the session (the row is still pending and goes
            # out again, with the same event_id, after the reconnect).
            self._on_puback(row, attempts, None, exc)
            raise

    def _on_puback(
        self, row: Row, attempts: int, rc: ReasonCode | None, error: aiomqtt.MqttError | None
    ) -> None:
        """The broker's answer to one publish (rc), or the connection's end (error)."""
        if self.drain.answered(row):  # not an earlier session's
            self._urgent_sent.pop(row.seq, None)
            self._room.set()
        if rc is None:
            # The row is still pending in the outbox and goes out again after the reconnect.
            log.info("not confirmed event_id=%s seq=%d: %s", row.event_id, row.seq, error)
            self._store_later(marks=[(row.seq, attempts, "pending", str(error))])
            return
        self.health.clear_fault("broker_stalled")  # it answered
        if rc.is_failure:
            self._on_refused(row, attempts, rc.getName(), rc.value)
            self._store_later(marks=[(row.seq, attempts, "refused", rc.getName())])
            return
        if row.priority <= Priority.P2:
            if rc.value == NO_MATCHING_SUBSCRIBERS:
                self.health.count("no_matching_subscribers")
                # A fixed message: the fault is raised once, not re-raised (and logged) per
                # event.
                self.health.raise_fault(
                    "dispatch_not_listening",
                    "the broker had no subscriber for P0-P2 events; alerts stay open",
                )
                log.info("no subscriber event_id=%s topic=%s", row.event_id, row.topic)
            else:
                self.health.clear_fault("dispatch_not_listening")
        self.health.counters[_DELIVERED[row.priority]] += 1
        log.debug(
            "delivered event_id=%s class=%s seq=%d attempts=%d rc=%s",
            row.event_id, CLASS_NAMES[row.priority], row.seq, attempts, rc,
        )
        confirmed = self._confirmed.get(rc.value)
        if confirmed is None:
            confirmed = self._confirmed[rc.value] = (rc.getName(), [])
        confirmed[1].append(row.event_id)
        self._refused.discard(row.seq)
        if not self._refused:
            self.health.clear_fault("publish_refused")
        self._acked.append(row.seq)
        self.drain.confirmed(row.seq)
        self._store_wake.set()
        self._on_delivered(row)

    def _on_refused(self, row: Row, attempts: int, reason: str, code: int) -> None:
        self.health.count("publish_refused")
        self._refused.add(row.seq)
        self.drain.hold(row.seq)
        self.health.raise_fault(
            "publish_refused",
            f"broker refused {len(self._refused)} message(s), last on {row.topic}: {reason} "
            f"(0x{code:02x}); they stay in the outbox",
        )
        log.error(
            "refused event_id=%s class=%s seq=%d attempts=%d rc=%s (0x%02x)",
            row.event_id, row.priority.name, row.seq, attempts, reason, code,
        )

    def _store_later(self, marks: list[tuple[int, int, State, str | None]]) -> None:
        self._marks.extend(marks)
        self._store_wake.set()

    async def _flush_store(self) -> NoReturn:
        """Log and remove confirmed rows, and record attempts, in batches: one delete commit
        covers every PUBACK of up to `DELETE_BATCH_S`, and one log line lists their event_ids."""
        while True:
            await self._store_wake.wait()
            self._store_wake.clear()
            confirmed, self._confirmed = self._confirmed, {}
            for rc, event_ids in confirmed.values():
                # At a station's pace this is one line per event; in a burst, one line per
                # batch. Every event_id is in it, so grepping the journal for one finds both
                # its "accepted" and its "delivered" line.
                log.info(
                    "delivered n=%d rc=%s event_ids=%s", len(event_ids), rc, ",".join(event_ids)
                )
            if self._marks:
                marks, self._marks = self._marks, []
                await self.outbox.mark(marks)
            if self._acked:
                try:
                    # PUBACKs of the next moments join this delete, so a new alert's commit
                    # rarely queues behind a delete commit (and there are fewer commits).
                    await asyncio.sleep(DELETE_BATCH_S)
                finally:
                    # Also when the gateway stops: confirmed rows are not sent again.
                    seqs, self._acked = self._acked, []
                    await self.outbox.delivered(seqs)
                    self.drain.removed(seqs)

    async def _retry_refused(self) -> NoReturn:
        while True:
            await asyncio.sleep(self.config.mqtt.refused_retry_s)
            if self.drain.holding:
                await self.outbox.requeue_refused()
                self.drain.release_held()
                if self.connected.is_set():
                    self._reset_drain()
