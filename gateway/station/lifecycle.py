"""Closes the loop with dispatch: commands in, alert state out, escalation on silence.

Each applied change is an event (`alert.acknowledged`, `alert.assigned`, `alert.resolved`,
`alert.cancelled`, `alert.escalated`) accepted into the outbox together with the alert's
new record, so the published state and the stored state never disagree.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from collections.abc import Callable, Mapping, Sequence
from typing import NoReturn, cast

import aiomqtt

from gateway.config.models import StationConfig
from gateway.core.alerts import AlertBook
from gateway.core.clock import SYSTEM, Clock, DispatchClock, SteadyWall
from gateway.core.commands import Command, Rejection, Reply, parse_command
from gateway.core.flood import ReplyLimiter
from gateway.core.model import AlertBody, AlertRecord, Event, JSONValue, Priority
from gateway.health import Health
from gateway.outbox.store import AsyncOutbox
from gateway.uplink.client import GatewayClient, json_properties
from gateway.uplink.topics import Topics

log = logging.getLogger(__name__)

HANDLER_FAULT_S = 300.0  # command_handling stays up this long after the last failure
CLOCK_CHECK_S = 10.0  # how often the escalation loop looks for a wall-clock step


def alert_body(record: AlertRecord) -> AlertBody:
    """The event body that announces an alert's record (its details are a help point's
    `AlertDetails` and what dispatch and the escalations added, as the book keeps them)."""
    return cast("AlertBody", {**record.details, "alert_id": record.alert_id,
                              "state": record.state})


class Lifecycle:
    """Alert lifecycle service: owns the `AlertBook`, handles commands, escalates."""

    def __init__(
        self, config: StationConfig, outbox: AsyncOutbox, health: Health,
        clock: Clock = SYSTEM,
    ) -> None:
        self.config = config
        self.clock = clock
        self.steady = SteadyWall(clock)  # command ages; a wall-clock step cannot move it
        self.dispatch_clock = DispatchClock()
        self.outbox = outbox
        self.health = health
        self.topics = Topics(config.mqtt.topic_prefix, config.station_id)
        self.book = AlertBook(
            config.dispatch.ack_timeout_s, Priority.parse(config.dispatch.escalate_to)
        )
        self._changed = asyncio.Event()
        # Set whenever the set or state of open alerts may have changed (the snapshot).
        self.alerts_changed = asyncio.Event()
        self._properties = json_properties(config.mqtt.protocol)
        self.replies = ReplyLimiter(
            burst=config.dispatch.reject_reply_burst,
            rate_per_s=config.dispatch.reject_replies_per_s,
        )
        self._handler_failed_at = 0.0

    async def restore(self) -> list[AlertRecord]:
        """Load open alerts after a restart into the book (with how far each got); returns
        them."""
        found = await self.outbox.call(lambda box: box.open_alerts())
        announced = await self.outbox.call(lambda box: box.announced_at())
        mono, wall = self.clock.monotonic(), self.clock.wall()
        timeout = self.config.dispatch.ack_timeout_s
        for record, sent in found:
            # The timer runs from the stored last announcement, so restarts cannot hold off
            # an escalation; a clock that went back restarts it, one far ahead escalates now.
            waited = min(max(wall - announced.get(record.alert_id, wall), 0.0), timeout)
            self.book.restore(record, mono - waited, sent=sent)
        if found:
            log.info("restored %d open alert(s) from the database", len(found))
        self._changed.set()
        self.alerts_changed.set()
        return [record for record, _sent in found]

    def raised(
        self, alert_id: str, source: str, priority: Priority, details: Mapping[str, JSONValue]
    ) -> AlertRecord:
        """A source raised or updated an alert; returns its record for the event."""
        record = self.book.raised(alert_id, source, priority, details, self.clock.monotonic())
        self._changed.set()
        self.alerts_changed.set()
        return record

    def corroborated(
        self, alert_id: str, priority: Priority, evidence: Sequence[str]
    ) -> AlertRecord | None:
        """Something at the alert's source corroborates it (`AlertBook.corroborated`);
        returns the raised record to announce, or None if that adds nothing."""
        record = self.book.corroborated(alert_id, priority, evidence)
        if record is not None:
            self.alerts_changed.set()
        return record

    def open_alerts(self) -> list[AlertRecord]:
        """Every open alert (not resolved or cancelled), most urgent class first."""
        return sorted(self.book.open.values(), key=lambda record: record.priority)

    # ------------------------------------------------------------------ escalation

    async def escalate_forever(self) -> NoReturn:
        """Re-announce and escalate alerts that wait too long for an acknowledgement."""
        while True:
            deadline = self.book.deadline()
            self._changed.clear()
            timeout = CLOCK_CHECK_S if deadline is None else min(
                CLOCK_CHECK_S, max(0.0, deadline - self.clock.monotonic()))
            self.check_clock()
            try:
                async with asyncio.timeout(timeout):
                    await self._changed.wait()
                continue  # something changed: recompute the deadline
            except TimeoutError:
                pass
            for record in self.book.escalate_due(self.clock.monotonic()):
                log.warning(
                    "escalated alert_id=%s class=%s escalations=%s: no acknowledgement",
                    record.alert_id, record.priority.name, record.details.get("escalations"),
                )
                self.health.count("alerts_escalated")
                await self._announce("alert.escalated", record)

    async def _announce(self, kind: str, record: AlertRecord) -> None:
        event = Event(kind, record.source, record.priority, alert_body(record), alert=record)
        await self.outbox.accept(event)
        self.alerts_changed.set()  # the retained snapshot follows every applied change
        self.book.apply(record)

    # ------------------------------------------------------------------ commands

    async def on_message(self, client: GatewayClient, message: aiomqtt.Message) -> None:
        """Handle one message from the command topic. Never raises: a command that breaks
        the handler is answered `internal_error` and shown as a fault, and the next one is
        handled as usual."""
        payload = message.payload if isinstance(message.payload, bytes) else b""
        try:
            await self._handle(client, payload)
        except aiomqtt.MqttError:
            raise  # the link, not the command: the session ends and reconnects
        except Exception as exc:
            log.exception("command handling failed (%d bytes)", len(payload))
            self.health.count("command_handling_errors")
            self._handler_failed_at = time.monotonic()
            self._fault_until_quiet(
                "command_handling",
                f"a command broke the handler ({type(exc).__name__}: {str(exc)[:120]}); "
                "it was answered internal_error and the gateway goes on",
                last=lambda: self._handler_failed_at, quiet_s=HANDLER_FAULT_S,
            )
            with contextlib.suppress(Exception):
                await self._reject(client, Rejection(
                    "internal_error", f"the gateway could not handle it: {type(exc).__name__}",
                ))

    def check_clock(self) -> None:
        """Raise `clock_skew` while the wall clock has stepped from the steady one, or
        dispatch's clock is off from the station's, by more than the bound; else clear it."""
        bound = self.config.dispatch.clock_skew_max_s
        problems = []
        step = self.steady.stepped_by()
        if abs(step) > bound:
            problems.append(f"the wall clock stepped {step:+.0f}s since the gateway started "
                            "(ages and TTLs are measured on the steady clock)")
        offset = self.dispatch_clock.offset
        if abs(offset) > bound:
            problems.append(f"dispatch's clock is {offset:+.0f}s from this station's (commands "
                            "are judged by dispatch's clock)")
        if problems:
            self.health.raise_fault(
                "clock_skew", "; ".join(problems) + f" (bound {bound:g}s; check NTP here and "
                "at dispatch)")
        else:
            self.health.clear_fault("clock_skew")

    def _fault_until_quiet(
        self, code: str, message: str, *, last: Callable[[], float], quiet_s: float
    ) -> None:
        """Raise `code`, and clear it once `quiet_s` have passed since `last()` (the newest
        occurrence), however often it recurs meanwhile."""
        if code not in self.health.faults:
            loop = asyncio.get_running_loop()

            def over() -> None:
                left = last() + quiet_s - time.monotonic()
                if left > 0:
                    loop.call_later(left, over)
                else:
                    self.health.clear_fault(code)

            loop.call_later(quiet_s, over)
        self.health.raise_fault(code, message)

    async def _handle(self, client: GatewayClient, payload: bytes) -> None:
        parsed = parse_command(
            payload,
            station=self.config.station_id,
            now=self.steady.now(),
            max_age_s=self.config.dispatch.command_max_age_s,
            max_bytes=self.config.dispatch.max_command_bytes,
            dispatch_clock=self.dispatch_clock,
            # Junk for alerts that are not open here must not teach dispatch's clock.
            teaches=lambda command: command.alert_id in self.book.open,
        )
        self.check_clock()
        if isinstance(parsed, Command):
            command_id = parsed.command_id
            replay = await self.outbox.call(lambda box: box.command_seen(command_id))
            decision = self.book.decide(parsed, replay=replay)
            if isinstance(decision, AlertRecord):
                await self._announce(f"alert.{decision.state}", decision)
                self.health.count(f"commands_applied_{parsed.action}")
                log.info(
                    "command applied command_id=%s alert_id=%s action=%s state=%s",
                    parsed.command_id, parsed.alert_id, parsed.action, decision.state,
                )
                await self._reply(client, Reply(
                    command_id=parsed.command_id, alert_id=parsed.alert_id, status="applied",
                    station=self.config.station_id, wall_time=time.time(),
                ))
                return
            parsed = decision
        await self._reject(client, parsed)

    async def _reject(self, client: GatewayClient, rejection: Rejection) -> None:
        self.health.count(f"commands_rejected_{rejection.reason}")
        now = time.monotonic()
        held_back = self.replies.admit(rejection.reason, now)
        if held_back is None:  # a flood of this reason: counted, answered later in one line
            self.health.count("command_replies_suppressed")
            self._fault_until_quiet(
                "command_flood",
                "rejected commands arrive faster than they are answered: replies are "
                "coalesced per reason (see counter command_replies_suppressed)",
                last=lambda: self.replies.last_suppressed_at or 0.0,
                quiet_s=self.replies.quiet_s,
            )
            return
        detail = rejection.detail
        if held_back:
            detail = f"{detail} (and {held_back} more {rejection.reason} not answered singly)"
        log.warning(
            "command rejected command_id=%s alert_id=%s reason=%s detail=%s",
            rejection.command_id, rejection.alert_id, rejection.reason, detail[:300],
        )
        await self._reply(client, Reply(
            command_id=rejection.command_id, alert_id=rejection.alert_id, status="rejected",
            reason=rejection.reason, detail=detail, station=self.config.station_id,
            wall_time=time.time(),
        ))

    async def _reply(self, client: GatewayClient, reply: Reply) -> None:
        payload = json.dumps(reply.wire()).encode()
        rc = await client.publish_confirmed(
            self.topics.replies, payload, properties=self._properties
        )
        if rc.is_failure:
            self.health.count("replies_refused")
            log.warning("reply to %s refused by broker: %s", reply.command_id, rc.getName())
