"""Real gateway daemons on mock pins, pressed as a technician would, and their dispatcher.

Each `RealStation` is `stationgw run --config F` in its own process (its own session, so a
Ctrl-C in the terminal reaches only the fleet, which stops it), configured as the demo's
station is: `gpio_pin_factory = "mock"`, eight help points (`hp-1`..`hp-4`, one per
location, and the assistance points `info-1`..`info-4`, whose press a rule makes P2, as
an ambassador request), its outbox in its own folder. A request is pressed through the
daemon's simulate socket (`gateway.inputs.simulate`, as `stationgw simulate press` does): `press`,
or `hold` for an emergency (held past `hold_time_s`).

A press while its help point's request waits for acknowledgement joins that request (the
press logic), so the `Dispatcher` plays dispatch for the real daemons: it sees each opening
event on MQTT, and sends `acknowledge`, `assign` and `resolve` (`dispatch.outbound`) after the
request's compressed timings; the next request at the same help point waits until the
daemon has announced the acknowledgement (counted as lateness if it had to wait).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import aiomqtt

from dispatch.analysis.simulate import LOCATIONS
from dispatch.errors import FleetError
from dispatch.fleet.schedule import Request
from dispatch.fleet.stations import HOLD_S, Sent, help_point, platform
from dispatch.outbound import make_command, send_command
from gateway.config.models import StationConfig
from gateway.errors import DaemonStartError
from gateway.inputs.simulate import socket_path
from gateway.testing.config import to_toml
from gateway.testing.daemon import StationDaemon

log = logging.getLogger(__name__)

START_TIMEOUT_S = 120.0
EVENT_TIMEOUT_S = 30.0
_PINS = (4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 16, 17, 18, 19, 20, 21)


def daemon_config(station: str, folder: Path, broker_url: str, *, prefix: str,
                  health_interval_s: float) -> str:
    """The TOML config of a fleet daemon (mock pins, eight help points). Written by
    `to_toml`, so any `--folder` path (quotes, backslashes) is a valid TOML string."""
    pins = iter(_PINS)
    help_points = [{"id": f"{kind}-{number}", "location": location,
                    "platform": platform(location), "pin": next(pins),
                    "lamp_pin": next(pins), "hold_time_s": HOLD_S}
                   for kind in ("hp", "info")
                   for number, location in enumerate(LOCATIONS, start=1)]
    return to_toml({
        "station_id": station, "gpio_pin_factory": "mock",
        "brokers": [{"url": broker_url}],
        "mqtt": {"topic_prefix": prefix, "health_interval_s": health_interval_s,
                 "reconnect_initial_s": 0.2, "reconnect_max_s": 2.0},
        "store": {"path": str(folder / "outbox.db")},
        # Requests come seconds apart on a compressed clock: a later press joins only an
        # unacknowledged request, never a resolved one.
        "press": {"repeat_window_s": 0.05},
        "dispatch": {"ack_timeout_s": 3600},  # the fleet's dispatcher answers within seconds
        # Slow blinks: 400 lamps blinking at the default 0.15 s would cost CPU for nothing.
        "lamp": {"accepted": {"on_s": 1.0, "off_s": 3.0}, "sent": {"on_s": 2.0, "off_s": 2.0},
                 "fault": {"on_s": 0.5, "off_s": 5.0}},
        "help_points": help_points,
        "rules": [{"input": "help_point.press", "source": f"info-{number}", "class": "P2"}
                  for number in range(1, len(LOCATIONS) + 1)],
    })


class RealStation:
    """One `stationgw run` process on mock pins."""

    def __init__(self, station: str, folder: Path, broker_url: str, *, prefix: str,
                 health_interval_s: float) -> None:
        self.station = station
        self.folder = folder
        folder.mkdir(parents=True, exist_ok=True)
        self.config_path = folder / "station.toml"
        self.config_path.write_text(daemon_config(
            station, folder, broker_url, prefix=prefix, health_interval_s=health_interval_s))
        self.daemon = StationDaemon(self.config_path, folder / "daemon.log", new_session=True)
        self.config: StationConfig = self.daemon.config
        self.log_path = self.daemon.log_path
        self.locks: dict[str, asyncio.Lock] = {}

    @property
    def pid(self) -> int | None:
        """The daemon's process id while it runs."""
        return self.daemon.pid

    def start(self) -> None:
        """Start the daemon, logging to its folder."""
        self.daemon.start()

    async def wait_ready(self, limit_s: float = START_TIMEOUT_S) -> None:
        """Wait for the daemon's simulate socket; FleetError with its log if it exits."""
        try:
            await self.daemon.wait_up(limit_s)
        except DaemonStartError as exc:
            raise FleetError(str(exc)) from exc

    def stop(self) -> None:
        """SIGTERM (the daemon publishes `offline`), SIGKILL after 15 s."""
        self.daemon.stop(timeout_s=15)

    async def simulate(self, cmd: str, hp: str) -> dict[str, Any]:
        """One command on the daemon's simulate socket (gateway.inputs.simulate's protocol)."""
        reader, writer = await asyncio.open_unix_connection(str(socket_path(self.config)))
        try:
            writer.write(json.dumps({"cmd": cmd, "help_point": hp}).encode() + b"\n")
            await writer.drain()
            reply: dict[str, Any] = json.loads(await reader.readline())
        finally:
            writer.close()
            with contextlib.suppress(ConnectionError):
                await writer.wait_closed()
        if not reply.get("ok"):
            raise FleetError(f"{self.station}: simulate {cmd} {hp}: {reply.get('error')}")
        return reply


class Dispatcher:
    """Dispatch for the real daemons: sees their events, sends their commands."""

    def __init__(self, host: str, port: int, stations: Iterable[str], *,
                 prefix: str = "stationgw/v1") -> None:
        self.prefix = prefix
        self.stations = sorted(stations)
        self._client = aiomqtt.Client(host, port, identifier="stationgw-fleet-dispatch",
                                      protocol=aiomqtt.ProtocolVersion.V5)
        self._opened: dict[tuple[str, str], asyncio.Future[tuple[str, str, str]]] = {}
        self._acked: dict[str, asyncio.Future[None]] = {}
        self._reader: asyncio.Task[None] | None = None
        self.commands = 0
        self.joined = 0  # presses that joined an open request instead of raising one
        self.failures: list[str] = []
        self.lost: str | None = None  # why the dispatcher can see no more events
        self._tasks: set[asyncio.Task[None]] = set()

    async def __aenter__(self) -> Dispatcher:
        await self._client.__aenter__()
        for station in self.stations:
            await self._client.subscribe(f"{self.prefix}/{station}/events/#", qos=1)
        self._reader = asyncio.create_task(self._read(), name="fleet.dispatcher")
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self._reader is not None:
            self._reader.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._reader
        with contextlib.suppress(aiomqtt.MqttError):  # a lost connection is a failure already
            await self._client.__aexit__(None, None, None)

    async def _read(self) -> None:
        try:
            async for message in self._client.messages:
                self._take(message)
        except aiomqtt.MqttError as exc:
            self.lost = f"the fleet's dispatcher lost the broker: {exc}"
            self.failures.append(self.lost)
            log.warning("fleet dispatcher: the connection was lost: %s", exc)
            # What waits on an event can see none now: fail it at once, not one help point's
            # press after another EVENT_TIMEOUT_S each (that was a run that never ended).
            pending: list[asyncio.Future[Any]] = [*self._opened.values(),
                                                  *self._acked.values()]
            for waiting in pending:
                if not waiting.done():
                    waiting.set_exception(FleetError(self.lost))
            self._opened.clear()
            self._acked.clear()

    def _take(self, message: aiomqtt.Message) -> None:
        """One event of a real daemon's: what a waiting press or acknowledgement needs."""
        try:
            event = json.loads(message.payload) if isinstance(message.payload, bytes) else None
        except ValueError:  # not a daemon's (a gateway publishes JSON): nothing to wait on
            return
        body = event.get("body") if isinstance(event, dict) else None
        if not isinstance(event, dict) or not isinstance(body, dict):
            return
        kind = event.get("kind")
        if kind in ("help_point.press", "help_point.repeat"):
            future = self._opened.pop((str(event.get("station")), str(event.get("source"))),
                                      None)
            if future is not None and not future.done():
                future.set_result((kind, str(event.get("event_id")), str(body.get("alert_id"))))
        elif kind == "alert.acknowledged":
            acked = self._acked.pop(str(body.get("alert_id")), None)
            if acked is not None and not acked.done():
                acked.set_result(None)

    async def press(self, station: RealStation, request: Request, late_s: float) -> Sent:
        """Press for `request` at its help point; returns once the daemon raised it, and
        leaves its lifecycle to run (the help point is free again once acknowledged)."""
        hp = help_point(request)
        lock = station.locks.setdefault(hp, asyncio.Lock())
        waited = time.monotonic()
        await lock.acquire()
        if self.lost is not None:
            lock.release()
            raise FleetError(self.lost)
        try:
            late_s += time.monotonic() - waited
            opened = asyncio.get_running_loop().create_future()
            self._opened[(station.station, hp)] = opened
            sent = Sent(request, time.time(), time.monotonic_ns(), late_s=late_s)
            await station.simulate("hold" if request.response == "emergency_services"
                                   else "press", hp)
            kind, sent.event_id, sent.alert_id = await asyncio.wait_for(
                opened, EVENT_TIMEOUT_S)
        except BaseException:
            lock.release()
            raise
        if kind != "help_point.press":
            self.joined += 1
        task = asyncio.create_task(self._answer(station.station, sent, lock),
                                   name=f"fleet.dispatch.{station.station}.{hp}")
        self._tasks.add(task)
        task.add_done_callback(self._done)
        return sent

    async def settle(self) -> None:
        """Wait until every request handed to dispatch is resolved (or failed)."""
        while self._tasks:
            await asyncio.wait(set(self._tasks))

    def _done(self, task: asyncio.Task[None]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            self.failures.append(f"{task.get_name()}: {task.exception()!r}")
            log.error("fleet dispatcher: %s: %r", task.get_name(), task.exception())

    async def _answer(self, station: str, sent: Sent, lock: asyncio.Lock) -> None:
        """Acknowledge, assign, resolve, after the request's timings."""
        request = sent.request
        try:
            acked = asyncio.get_running_loop().create_future()
            self._acked[sent.alert_id] = acked
            await asyncio.sleep(request.ack_s)
            await self._command(station, sent.alert_id, "acknowledge")
            await asyncio.wait_for(acked, EVENT_TIMEOUT_S)
        finally:
            lock.release()
        await asyncio.sleep(request.assign_s)
        await self._command(station, sent.alert_id, "assign", team=request.team,
                            eta_s=request.eta_s)
        await asyncio.sleep(request.close_s)
        await self._command(station, sent.alert_id, "resolve")

    async def _command(self, station: str, alert_id: str, action: Any, **kw: Any) -> None:
        await send_command(self._client, self.prefix,
                           make_command(station, alert_id, action, dispatcher="fleet", **kw))
        self.commands += 1
