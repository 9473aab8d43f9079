"""Protocol-level simulated stations: what a gateway says on MQTT, without a gateway.

Each `SimStation` is one MQTT 5 client under the station's own client id
(`stationgw-STATION`), as a gateway connects:

- a Last Will, the retained `offline` status, and a retained `online` at connect; a clean
  stop publishes `offline` before it disconnects (so the Will is not needed then);
- its own outbox seq (1, 2, ... over every event it publishes), events rendered by
  `gateway.uplink.topics.Topics.render` exactly as a gateway renders them, published at QoS 1 one
  after the other, each after the PUBACK of the one before (the gateway's order);
- a retained health report at connect and then every `health_interval_s` (a valid
  `HealthReport`);
- a publish that fails (the broker gone, refusing or silent) ends its sending: the rest is
  counted (`unsent`), `failure` says why, and the fleet reports it as a problem of the run.

- dispatch's commands on its `commands` topic, checked and applied by the gateway's own
  protocol core (`gateway.core.commands.parse_command` and `gateway.core.alerts.AlertBook`,
  with the default `[dispatch]` limits): an applied one is announced as
  `alert.acknowledged` / `assigned` / `resolved` / `cancelled` and answered `applied` on
  `replies`, a refused one answered `rejected` with the gateway's reason, and one that
  breaks the handling answered `internal_error` (counted in health) while the next goes on.

A request plays as a help point would report it: the press (`help_point.press`, or for an
emergency the press and then `help_point.hold` after `hold_s`, as a real help point held
past its hold time reports it, unless dispatch closed the request first: a gateway has then
forgotten it). The fleet's own dispatcher then acknowledges, assigns (team,
ETA) and resolves it after the request's compressed dispatcher timings, through the same
command path; once a dispatcher at the console has answered a request (or closed it), the
fleet leaves it to them (counted in `overtaken`). Bodies are the gateway's (`alert_body`
of the book's record).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
import uuid
from dataclasses import dataclass
from typing import Any, cast

import aiomqtt

from dispatch.analysis.simulate import LOCATIONS
from dispatch.fleet.schedule import Request
from dispatch.outbound import make_command
from gateway import __version__
from gateway.config.models import DispatchConfig
from gateway.core.alerts import AlertBook
from gateway.core.commands import Action, Command, Rejection, Reply, Team, parse_command
from gateway.core.model import CLASS_NAMES, AlertRecord, Event, Priority
from gateway.station.lifecycle import alert_body
from gateway.uplink.topics import Topics

log = logging.getLogger(__name__)

#: How long a simulated rider holds the button for an emergency (the daemons' hold_time_s).
HOLD_S = 0.5
PUBLISH_TIMEOUT_S = 30.0
#: The command checks of a gateway with the default `[dispatch]` section.
LIMITS = DispatchConfig()
#: The fleet's own dispatcher, as its commands name it.
FLEET_DISPATCHER = "fleet"


def help_point(request: Request) -> str:
    """The help point a request is made at: `hp-N` for crisis and emergency requests at
    location N, `info-N` (an assistance point, class P2 by rule) for an ambassador."""
    return f"{'info' if request.response == 'ambassador' else 'hp'}-{request.location + 1}"


def platform(location: str) -> str:
    """The platform of a location ("platform 2, lifts" -> "2"), or "" off the platforms."""
    if not location.startswith("platform"):
        return ""
    return location.split(",", maxsplit=1)[0].removeprefix("platform ").strip()


@dataclass
class Sent:
    """A request as it was made: when (wall and monotonic clocks) and its opening event."""

    request: Request
    wall: float
    mono_ns: int
    event_id: str = ""
    alert_id: str = ""
    late_s: float = 0.0  # how far behind its scheduled time it was made


class SimStation:
    """One simulated station on its own MQTT connection (an async context manager)."""

    def __init__(self, station: str, host: str, port: int, *, prefix: str = "stationgw/v1",
                 health_interval_s: float = 30.0, hold_s: float = HOLD_S) -> None:
        self.station = station
        self.hold_s = hold_s
        self.topics = Topics(prefix, station)
        self.broker = f"mqtt://{host}:{port}"
        self.health_interval_s = health_interval_s
        self.seq = 0
        self.published = 0
        self.started = time.monotonic()
        # Alerts as a gateway keeps them; no escalation (the fleet's dispatcher answers).
        self.book = AlertBook(ack_timeout_s=float("inf"), escalate_to=Priority.P0)
        self.applied: set[str] = set()  # command ids applied (a replay is refused)
        self.replies = 0  # answers to dispatch's commands (applied or rejected)
        self.overtaken = 0  # requests a dispatcher at the console took over from the fleet
        self.handling_errors = 0  # commands (answered internal_error) or plays that broke
        self.failure: str | None = None  # why it lost the broker (it then sends nothing)
        self.unsent = 0  # events and replies it could not send after that
        self._queue: asyncio.Queue[tuple[str, bytes, bool]] = asyncio.Queue()
        self._tasks: set[asyncio.Task[None]] = set()
        self._client = aiomqtt.Client(
            host, port, identifier=f"stationgw-{station}",
            protocol=aiomqtt.ProtocolVersion.V5, keepalive=30,
            will=aiomqtt.Will(self.topics.status, self._status("offline"), qos=1, retain=True),
        )
        self._sender: asyncio.Task[None] | None = None
        self._health: asyncio.Task[None] | None = None
        self._commands: asyncio.Task[None] | None = None

    async def __aenter__(self) -> SimStation:
        await self._client.__aenter__()
        await self._client.subscribe(self.topics.commands, qos=1)
        await self._client.publish(self.topics.status, self._status("online"), qos=1,
                                   retain=True)
        self._sender = asyncio.create_task(self._send(), name=f"fleet.sim.{self.station}.send")
        self._commands = asyncio.create_task(self._listen(),
                                             name=f"fleet.sim.{self.station}.commands")
        self._health = asyncio.create_task(self._report(),
                                           name=f"fleet.sim.{self.station}.health")
        return self

    async def __aexit__(self, *exc: object) -> None:
        """A clean stop: the requests in play finish, then `offline`, then DISCONNECT. With
        the broker lost, the queue still empties (counted in `unsent`), so it always ends."""
        try:
            if self._tasks:  # (an abandoned one ends cancelled: no answer to wait for)
                for result in await asyncio.gather(*self._tasks, return_exceptions=True):
                    if isinstance(result, Exception):
                        log.error("%s: a request's play failed: %r", self.station, result)
                        self.handling_errors += 1
            await _cancel(self._health)
            await self._queue.join()
            if self.failure is None:
                try:
                    await self._client.publish(self.topics.status, self._status("offline"),
                                               qos=1, retain=True, timeout=PUBLISH_TIMEOUT_S)
                except aiomqtt.MqttError as error:
                    self._lost(f"the offline status was not sent: {error}")
        finally:
            await _cancel(self._commands)
            await _cancel(self._health)
            await _cancel(self._sender)
            with contextlib.suppress(aiomqtt.MqttError):  # a lost connection is said above
                await self._client.__aexit__(None, None, None)

    def abandon(self) -> None:
        """Stop the requests in play (an interrupted run does not wait for their answers)."""
        for task in list(self._tasks):
            task.cancel()

    def _lost(self, why: str) -> None:
        """The broker is lost: say so once, and stop a publish waiting for a PUBACK that
        cannot come (up to PUBLISH_TIMEOUT_S, station after station, at the stop)."""
        if self.failure is not None:
            return
        self.failure = why
        log.error("%s: %s; the station sends nothing more", self.station, why)
        sender = self._sender
        if sender is not None and sender is not asyncio.current_task() and not sender.done():
            sender.cancel()
            self._sender = asyncio.create_task(self._send(),  # drains, counting unsent
                                               name=f"fleet.sim.{self.station}.send")

    def request(self, request: Request, late_s: float) -> Sent:
        """Make a request now; its later events follow on their own."""
        sent = Sent(request, time.time(), time.monotonic_ns(), late_s=late_s)
        task = asyncio.create_task(self._play(sent), name=f"fleet.sim.{self.station}.request")
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return sent

    async def _play(self, sent: Sent) -> None:
        request = sent.request
        hp = help_point(request)
        location = LOCATIONS[request.location]
        at = round(sent.wall, 3)
        alert_id = str(uuid.uuid4())
        details: dict[str, Any] = {
            "help_point": hp, "location": location, "platform": platform(location),
            "press_count": 1, "first_press": at, "last_press": at, "held": False,
            "escalated": False, "evidence": ["button pressed"]}
        priority = Priority.P2 if request.response == "ambassador" else Priority.P1
        sent.alert_id = alert_id
        record = self.book.raised(alert_id, hp, priority, details, time.monotonic())
        sent.event_id = self._announce("help_point.press", record, sent.wall)
        if request.response == "emergency_services":
            await asyncio.sleep(self.hold_s)
            if alert_id not in self.book.open:  # dispatch closed it within the hold: a
                self.overtaken += 1  # gateway has forgotten the request, so has the rider
                return
            record = self.book.raised(alert_id, hp, Priority.P0, {
                **details, "held": True,
                "evidence": ["button pressed", f"held for {self.hold_s:g}s"]},
                time.monotonic())
            self._announce("help_point.hold", record, time.time())
        steps: tuple[tuple[float, Action], ...] = (
            (request.ack_s, "acknowledge"), (request.assign_s, "assign"),
            (request.close_s, "resolve"))
        for delay, action in steps:
            await asyncio.sleep(delay)
            now = self.book.open.get(alert_id)
            if now is None or now.details.get("dispatcher", FLEET_DISPATCHER) != FLEET_DISPATCHER:
                self.overtaken += 1  # a dispatcher at the console took it over, or closed it
                return
            assign = action == "assign"
            command = make_command(self.station, alert_id, action,
                                   team=cast("Team", request.team) if assign else None,
                                   eta_s=request.eta_s if assign else None,
                                   dispatcher=FLEET_DISPATCHER)
            self._decide(command)

    def _decide(self, command: Command) -> AlertRecord | Rejection:
        """Apply a checked command as a gateway does: announce the alert's new record."""
        decision = self.book.decide(command, replay=command.command_id in self.applied)
        if isinstance(decision, AlertRecord):
            self._announce(f"alert.{decision.state}", decision, time.time())
            self.book.apply(decision)
            self.applied.add(command.command_id)
        return decision

    async def _listen(self) -> None:
        """Dispatch's commands: checked, applied, and each one answered on `replies`. A
        command never ends this: one that breaks the handling (the gateway's pure core
        should never raise) is answered `internal_error`, logged and counted
        (`handling_errors`, in health as `command_handling_errors`), as a gateway does."""
        try:
            async for message in self._client.messages:
                self._take(message)
        except aiomqtt.MqttError as exc:
            self._lost(f"the connection was lost: {exc}")

    def _take(self, message: aiomqtt.Message) -> None:
        """One command: answered on `replies` whatever it holds."""
        payload = message.payload if isinstance(message.payload, bytes) else b""
        try:
            reply = self._answer(payload)
        except Exception as exc:
            log.exception("%s: command handling failed (%d bytes)", self.station,
                          len(payload))
            self.handling_errors += 1
            reply = Reply(command_id=None, status="rejected", reason="internal_error",
                          detail="the simulated station could not handle it: "
                                 f"{type(exc).__name__}",
                          station=self.station, wall_time=time.time())
        # After the event it answers: the queue sends in order, the reply last.
        self._queue.put_nowait((self.topics.replies, json.dumps(reply.wire()).encode(),
                                False))
        self.replies += 1

    def _answer(self, payload: bytes) -> Reply:
        """Check one command, apply it if it holds, and say so."""
        parsed = parse_command(payload, station=self.station, now=time.time(),
                               max_age_s=LIMITS.command_max_age_s,
                               max_bytes=LIMITS.max_command_bytes)
        decision = self._decide(parsed) if isinstance(parsed, Command) else parsed
        if isinstance(decision, Rejection):
            return Reply(command_id=decision.command_id, alert_id=decision.alert_id,
                         status="rejected", reason=decision.reason, detail=decision.detail,
                         station=self.station, wall_time=time.time())
        return Reply(command_id=decision.command_id, alert_id=decision.alert_id,
                     status="applied", station=self.station, wall_time=time.time())

    def _announce(self, kind: str, record: AlertRecord, wall: float) -> str:
        """Accept the event announcing `record` (the gateway's body for it)."""
        return self._event(kind, record.source, record.priority, dict(alert_body(record)),
                           wall)

    def _event(self, kind: str, source: str, priority: Priority, body: dict[str, Any],
               wall: float) -> str:
        """Accept an event into the outbox: the next seq, rendered, queued to send."""
        self.seq += 1
        event = Event(kind, source, priority, dict(body))
        topic, payload = self.topics.render(event, self.seq, wall)
        self._queue.put_nowait((topic, payload, False))
        return event.event_id

    async def _send(self) -> None:
        """Drain the outbox in order, one QoS 1 publish confirmed before the next. A publish
        that fails (the broker gone, refusing, or silent for PUBLISH_TIMEOUT_S) ends the
        sending, not the draining: the rest is counted `unsent`, for the fleet to report."""
        while True:
            topic, payload, retain = await self._queue.get()
            try:
                if self.failure is None:
                    await self._client.publish(topic, payload, qos=1, retain=retain,
                                               timeout=PUBLISH_TIMEOUT_S)
                    self.published += 1
                else:
                    self.unsent += 1
            except aiomqtt.MqttError as exc:
                self._lost(f"a publish to {topic} failed: {exc}")
                self.unsent += 1
            except asyncio.CancelledError:
                self.unsent += 1  # the one in flight when the broker was lost, or at the end
                raise
            finally:
                self._queue.task_done()

    async def _report(self) -> None:
        """Health at connect, then every `health_interval_s` (as a gateway reports it)."""
        while True:
            self._queue.put_nowait((self.topics.health, self._health_report(), True))
            await asyncio.sleep(self.health_interval_s)

    def _status(self, state: str) -> bytes:
        return json.dumps({"state": state, "station": self.station, "version": __version__,
                           "wall_time": round(time.time(), 3)}).encode()

    def _health_report(self) -> bytes:
        waiting = self._queue.qsize()
        return json.dumps({
            "station": self.station, "version": __version__,
            "uptime_s": round(time.monotonic() - self.started, 1),
            "wall_time": round(time.time(), 3),
            "outbox": {"by_class": {name: {} for name in CLASS_NAMES}, "rows": waiting,
                       "bytes": 0, "memory_rows": 0, "in_flight": 0,
                       "oldest_unsent_age_s": None},
            "faults": [], "links": {f"broker:{self.broker}": "up"},
            "counters": {"published": self.published, "seq": self.seq,
                         "command_handling_errors": self.handling_errors}, "boards": {},
        }).encode()


async def _cancel(task: asyncio.Task[None] | None) -> None:
    if task is not None and not task.done():
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
