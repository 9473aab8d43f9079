"""A fleet run: the metro's stations live on one broker, recorded by the hub.

`Fleet` (an async context manager) builds the metro and the schedule, opens the hub's
persistent session and starts `stationgw hub run` on the database (its own process, as a
dispatch centre runs it), starts the real daemons (a few at a time: each checks its config
in a child process first), and connects the simulated stations. `play()` makes every
request at its time; `finish()` waits for the last request to be resolved, stops every
station (cleanly: each says `offline`), waits until the hub has recorded all of it, and reads
the hub's record back: alerts and events per station, the seq audit (`HubStore.gaps`) and,
for the simulated stations, any tail of seqs that never arrived (which the audit cannot see).
Leaving the block stops whatever is still running: daemons, hub, and a broker it started.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import signal
import subprocess
import sys
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType

from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from sqlalchemy import Engine, func, select
from sqlalchemy.exc import SQLAlchemyError

from dispatch.analysis.period import WEEK_S
from dispatch.analysis.progress import progress
from dispatch.analysis.simulate import DEFAULT_RATE, DEFAULT_SEED
from dispatch.errors import FleetError
from dispatch.fleet.daemons import Dispatcher, RealStation
from dispatch.fleet.network import FleetMetro, fleet_metro
from dispatch.fleet.schedule import DEFAULT_SPEED, Schedule, make_schedule
from dispatch.fleet.stations import Sent, SimStation
from dispatch.hub.schema import alerts, events, stations
from dispatch.hub.store import HubStore, migrate, open_engine
from gateway.testing.mosquitto import Mosquitto

log = logging.getLogger(__name__)

HUB_CLIENT_ID = "stationgw-fleet-hub"
PREFIX = "stationgw/v1"
CONNECT_AT_ONCE = 50  # simulated stations connecting at the same time
DAEMONS_AT_ONCE = 4  # real daemons starting at the same time (2 cores: each checks its config)
MAX_SIMULATED_S = 52 * WEEK_S  # a year of requests is the most a live run schedules


@dataclass(frozen=True)
class FleetOptions:
    """What to run."""

    stations: int = 500
    daemons: int = 50
    duration_s: float = 600.0
    speed: float = DEFAULT_SPEED
    seed: int = DEFAULT_SEED
    rate: float = DEFAULT_RATE
    hotspots: bool = True
    health_interval_s: float = 30.0
    prefix: str = PREFIX
    settle_s: float = 120.0  # how long the hub may take to catch up at the end

    def __post_init__(self) -> None:
        """FleetError naming the option (as `stationgw hub fleet` spells it) and the fix."""
        def number(option: str, value: float, low: float, high: float) -> None:
            if not (math.isfinite(value) and low < value <= high):
                raise FleetError(f"{option} {value}: give a number above {low:g}, at most "
                                 f"{high:g}")

        number("--duration", self.duration_s, 0, 7 * 86400)
        number("--speed", self.speed, 0, 1e7)
        number("--rate", self.rate, 0, 1000)
        number("--health-interval", self.health_interval_s, 0, 3600)  # the gateway's bound
        if self.duration_s * self.speed > MAX_SIMULATED_S:
            raise FleetError(f"--duration {self.duration_s:g} x --speed {self.speed:g}: at "
                             f"most {MAX_SIMULATED_S / WEEK_S:g} simulated weeks; for the "
                             "analysis of a long history use `stationgw hub simulate-history`")
        if not 0 <= self.seed < 2**63:
            raise FleetError(f"--seed {self.seed}: give 0 or more")


@dataclass
class HubRecord:
    """What the hub's database holds after the run."""

    alerts: Counter[str]  # per station
    resolved: int
    events: int
    lost: int  # the seq audit: seqs missing between the first and last received
    lost_tail: int  # simulated stations' last seqs that never arrived
    offline: int  # stations whose last status is offline
    gaps: dict[str, list[int]] = field(default_factory=dict)


@dataclass
class FleetResult:
    """The schedule, each request as it was made, and the hub's record."""

    schedule: Schedule
    sent: list[Sent]
    hub: HubRecord
    joined: int  # real presses that joined an open request (0 when dispatch kept up)
    failures: list[str]
    elapsed_s: float
    overtaken: int = 0  # simulated requests a dispatcher at the console took over
    handling_errors: int = 0  # commands that broke a simulated station's handling

    @property
    def problems(self) -> list[str]:
        """Why the run is not a clean one, or [] (what a test or benchmark asserts)."""
        seen = Counter(self.failures)  # the same failure of many requests said once
        out = [text if n == 1 else f"{text} ({n} times)" for text, n in seen.items()]
        wanted = self.schedule.counts()
        if len(self.sent) != len(self.schedule.requests):
            out.append(f"{len(self.sent)} of {len(self.schedule.requests)} requests were made")
        if self.hub.alerts != wanted:
            off = sorted(s for s in wanted | self.hub.alerts
                         if wanted[s] != self.hub.alerts[s])
            out.append(f"the hub's alerts differ from the schedule at {len(off)} stations "
                       f"(e.g. {off[0]}: {self.hub.alerts[off[0]]} of {wanted[off[0]]})")
        if self.hub.resolved != len(self.schedule.requests):
            out.append(f"{self.hub.resolved} of {len(self.schedule.requests)} requests "
                       "resolved in the hub")
        if self.hub.lost or self.hub.lost_tail:
            out.append(f"the hub's seq audit: {self.hub.lost} lost, {self.hub.lost_tail} "
                       "missing at the end")
        if self.hub.offline != len(self.schedule.stations):
            out.append(f"{self.hub.offline} of {len(self.schedule.stations)} stations offline "
                       "in the hub after the stop")
        if self.joined:
            out.append(f"{self.joined} presses joined an open request")
        if self.handling_errors:
            out.append(f"{self.handling_errors} commands or requests broke a simulated "
                       "station's handling (see the fleet's log)")
        return out


class Fleet:
    """The running fleet (see the module's doc)."""

    def __init__(self, options: FleetOptions, folder: Path, db_url: str, *,
                 broker_url: str | None = None, show_progress: bool | None = None) -> None:
        self.options = options
        self.folder = folder
        self.db_url = db_url
        self.show_progress = sys.stderr.isatty() if show_progress is None else show_progress
        self.broker: Mosquitto | None = None
        if broker_url is None:
            self.broker = Mosquitto(workdir=_mkdir(folder / "broker"))
            broker_url = self.broker.url
        self.broker_url = broker_url
        host, _, port = broker_url.removeprefix("mqtt://").partition(":")
        if not broker_url.startswith("mqtt://") or not port.isdigit():
            raise FleetError(f"--broker {broker_url}: give mqtt://HOST:PORT")
        self.host, self.port = host, int(port)
        self.metro: FleetMetro | None = None
        self.schedule: Schedule | None = None
        self.engine: Engine | None = None
        self.hub: subprocess.Popen[bytes] | None = None
        self.hub_log = folder / "hub.log"
        self.real: dict[str, RealStation] = {}
        self.sims: dict[str, SimStation] = {}
        self.dispatcher: Dispatcher | None = None
        self.sent: list[Sent] = []
        self.failures: list[str] = []
        self._stack = contextlib.AsyncExitStack()
        self._presses: set[asyncio.Task[Sent]] = set()
        self._started = 0.0

    @property
    def hub_pid(self) -> int | None:
        """The hub's process id while it runs."""
        return None if self.hub is None else self.hub.pid

    def say(self, text: str) -> None:
        """A line of progress on a terminal; nothing otherwise."""
        if self.show_progress:
            print(f"fleet: {text}", file=sys.stderr, flush=True)

    async def __aenter__(self) -> Fleet:
        try:
            await self._start()
        except BaseException:
            await self._stop()
            raise
        return self

    async def __aexit__(self, et: type[BaseException] | None, e: BaseException | None,
                        tb: TracebackType | None) -> None:
        await self._stop()

    async def _start(self) -> None:
        options = self.options
        self.metro = await asyncio.to_thread(fleet_metro, options.stations,
                                             self.folder / "metro")
        self.schedule = make_schedule(
            self.metro.network, self.metro.ridership, daemons=options.daemons,
            duration_s=options.duration_s, speed=options.speed, seed=options.seed,
            rate=options.rate, hotspots=options.hotspots)
        self.say(f"{len(self.schedule.stations)} stations on {len(self.metro.network.lines)} "
                 f"lines ({self.metro.districts} districts), {len(self.schedule.daemons)} real "
                 f"daemons; {len(self.schedule.requests)} requests over "
                 f"{options.duration_s:g} s (x{options.speed:g}); feed {self.metro.feed}")
        if self.broker is not None:
            self.broker.start()
        try:
            self.engine = open_engine(self.db_url)
            await asyncio.to_thread(self._empty_database)
        except SQLAlchemyError as exc:
            raise FleetError(f"--db {self.db_url}: cannot open the database: {exc}") from exc
        await self._hub_session()
        self._start_hub()
        self._started = time.monotonic()
        await self._start_daemons()
        self.dispatcher = await self._stack.enter_async_context(Dispatcher(
            self.host, self.port, self.real, prefix=options.prefix))
        await self._connect_sims()
        self.say(f"all {len(self.schedule.stations)} stations online")

    def _empty_database(self) -> None:
        assert self.engine is not None
        migrate(self.engine)
        with self.engine.connect() as conn:
            held = conn.execute(select(func.count()).select_from(events)).scalar_one()
        if held:
            raise FleetError(f"{self.db_url} already holds {held} events: run the fleet into "
                             "an empty database (its seqs would mix with the earlier ones)")

    async def _hub_session(self) -> None:
        """Make the hub's persistent session before any station speaks (as a hub that ran
        before would have left it), so the broker keeps everything for it."""
        import aiomqtt  # noqa: PLC0415 - the hub's topics are the hub's own

        from dispatch.hub.service import hub_topics  # noqa: PLC0415

        props = Properties(PacketTypes.CONNECT)  # type: ignore[no-untyped-call]
        props.SessionExpiryInterval = 3600
        try:
            async with aiomqtt.Client(self.host, self.port, identifier=HUB_CLIENT_ID,
                                      protocol=aiomqtt.ProtocolVersion.V5, clean_start=False,
                                      properties=props) as client:
                for topic in hub_topics(self.options.prefix):
                    await client.subscribe(topic, qos=1)
        except aiomqtt.MqttError as exc:
            raise FleetError(f"--broker {self.broker_url}: cannot connect and subscribe: {exc}"
                             " (is the broker running, and does it let this client in?)"
                             ) from exc

    def _start_hub(self) -> None:
        with self.hub_log.open("ab") as out:
            self.hub = subprocess.Popen(
                [sys.executable, "-m", "gateway.ops.cli", "hub", "run", "--db", self.db_url,
                 "--broker", self.broker_url, "--prefix", self.options.prefix,
                 "--client-id", HUB_CLIENT_ID, "--log-level", "WARNING"],
                stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
                start_new_session=True)

    async def _start_daemons(self) -> None:
        assert self.schedule is not None
        for number, station in enumerate(self.schedule.daemons):
            self.real[station] = RealStation(
                station, self.folder / "d" / f"{number:03d}", self.broker_url,
                prefix=self.options.prefix, health_interval_s=self.options.health_interval_s)
        pending = list(self.real.values())
        with progress("starting daemons", len(pending), enabled=self.show_progress) as advance:
            for start in range(0, len(pending), DAEMONS_AT_ONCE):
                batch = pending[start:start + DAEMONS_AT_ONCE]
                for daemon in batch:
                    daemon.start()
                await asyncio.gather(*(d.wait_ready() for d in batch))
                advance(len(batch))

    async def _connect_sims(self) -> None:
        assert self.schedule is not None
        gate = asyncio.Semaphore(CONNECT_AT_ONCE)

        async def connect(station: str) -> None:
            async with gate:
                sim = SimStation(station, self.host, self.port, prefix=self.options.prefix,
                                 health_interval_s=self.options.health_interval_s)
                await self._stack.enter_async_context(sim)
                self.sims[station] = sim

        await asyncio.gather(*(connect(s) for s in self.schedule.stations
                               if s not in self.real))

    async def play(self) -> None:
        """Make every request of the schedule at its time (real seconds from now)."""
        schedule, dispatcher = self.schedule, self.dispatcher
        assert schedule is not None
        assert dispatcher is not None
        loop = asyncio.get_running_loop()
        start = loop.time()
        with progress(f"requests (x{schedule.speed:g})", len(schedule.requests),
                      enabled=self.show_progress) as advance:
            for request in schedule.requests:
                delay = start + request.at - loop.time()
                if delay > 0:
                    await asyncio.sleep(delay)
                late = max(0.0, loop.time() - start - request.at)
                real = self.real.get(request.station)
                if real is None:
                    self.sent.append(self.sims[request.station].request(request, late))
                else:
                    task = asyncio.create_task(dispatcher.press(real, request, late),
                                               name=f"fleet.press.{request.station}")
                    self._presses.add(task)
                    task.add_done_callback(self._pressed)
                advance(1)

    def _pressed(self, task: asyncio.Task[Sent]) -> None:
        self._presses.discard(task)
        if task.cancelled():
            return
        if task.exception() is not None:
            self.failures.append(f"{task.get_name()}: {task.exception()!r}")
        else:
            self.sent.append(task.result())

    async def finish(self) -> FleetResult:
        """Wait for every request to be resolved, stop the stations, read the hub's record."""
        assert self.schedule is not None
        assert self.dispatcher is not None
        while self._presses:
            await asyncio.wait(set(self._presses))
        await self.dispatcher.settle()
        last_seq = {s: sim.seq for s, sim in self.sims.items()}
        overtaken = sum(sim.overtaken for sim in self.sims.values())
        handling_errors = sum(sim.handling_errors for sim in self.sims.values())
        self.say("stopping the stations")
        await self._stack.aclose()  # simulated stations: offline, then DISCONNECT
        for daemon in self.real.values():
            await asyncio.to_thread(daemon.stop)
        lost = [sim for sim in self.sims.values() if sim.failure is not None]
        if lost:
            self.failures.append(
                f"{len(lost)} simulated stations lost the broker (e.g. {lost[0].station}: "
                f"{lost[0].failure}); {sum(sim.unsent for sim in lost)} of their events and "
                "replies were never sent")
        record = await self._recorded(last_seq)
        self.failures += self.dispatcher.failures
        return FleetResult(schedule=self.schedule, sent=sorted(self.sent, key=_order),
                           hub=record, joined=self.dispatcher.joined,
                           failures=self.failures, elapsed_s=time.monotonic() - self._started,
                           overtaken=overtaken, handling_errors=handling_errors)

    async def _recorded(self, last_seq: dict[str, int]) -> HubRecord:
        """The hub's record once it holds every request resolved and every station offline
        (or after `settle_s`)."""
        assert self.schedule is not None
        want = len(self.schedule.requests)
        deadline = time.monotonic() + self.options.settle_s
        while True:
            record = await asyncio.to_thread(self._read_hub, last_seq)
            done = (record.resolved == want and record.offline == len(self.schedule.stations)
                    and not record.lost_tail)
            if done or time.monotonic() > deadline:
                return record
            if self.hub is not None and self.hub.poll() is not None:
                self.failures.append(f"the hub exited with {self.hub.returncode} (log "
                                     f"{self.hub_log})")
                return record
            broker = None if self.broker is None else self.broker.process
            if broker is not None and broker.poll() is not None:
                self.failures.append(f"the fleet's Mosquitto exited with {broker.returncode}:"
                                     " the hub can record nothing more")
                return record
            await asyncio.sleep(0.5)

    def _read_hub(self, last_seq: dict[str, int]) -> HubRecord:
        """The fleet's stations' record: on a shared --broker the hub also records others'
        (their retained statuses, say), which are neither counted nor audited."""
        assert self.engine is not None
        assert self.schedule is not None
        mine = self.schedule.stations
        with self.engine.connect() as conn:
            per_station = Counter({s: int(n) for s, n in conn.execute(
                select(alerts.c.station, func.count()).where(alerts.c.station.in_(mine))
                .group_by(alerts.c.station))})
            resolved = conn.execute(select(func.count()).select_from(alerts).where(
                alerts.c.station.in_(mine) & (alerts.c.state == "resolved"))).scalar_one()
            total = conn.execute(select(func.count()).select_from(events).where(
                events.c.station.in_(mine))).scalar_one()
            offline = conn.execute(select(func.count()).select_from(stations).where(
                stations.c.station.in_(mine) & (stations.c.status == "offline"))).scalar_one()
            top = {s: int(n) for s, n in conn.execute(
                select(events.c.station, func.max(events.c.seq))
                .where(events.c.station.in_(mine)).group_by(events.c.station))}
        wanted = set(mine)
        gaps = {g.station: g.missing for g in HubStore(self.engine).gaps()
                if g.missing and g.station in wanted}
        tail = sum(max(0, seq - top.get(s, 0)) for s, seq in last_seq.items())
        return HubRecord(alerts=per_station, resolved=int(resolved), events=int(total),
                         lost=sum(len(m) for m in gaps.values()), lost_tail=tail,
                         offline=int(offline), gaps=gaps)

    async def _stop(self) -> None:
        """Stop whatever runs, in the order that loses nothing: stations, hub, broker. (After
        `finish` the stations are stopped already; before it, as on an interrupt, their
        requests in play are not waited for.)"""
        for sim in self.sims.values():
            sim.abandon()
        with contextlib.suppress(Exception):
            await self._stack.aclose()
        for task in list(self._presses):
            task.cancel()
        for daemon in self.real.values():
            await asyncio.to_thread(daemon.stop)
        if self.hub is not None and self.hub.poll() is None:
            self.hub.send_signal(signal.SIGTERM)
            try:
                await asyncio.to_thread(self.hub.wait, 15)
            except subprocess.TimeoutExpired:
                self.hub.kill()
                self.hub.wait()
        self.hub = None
        if self.engine is not None:
            self.engine.dispose()
        if self.broker is not None:
            self.broker.close()


async def run_fleet(options: FleetOptions, folder: Path, db_url: str, *,
                    broker_url: str | None = None,
                    show_progress: bool | None = None) -> FleetResult:
    """Run the fleet for `options.duration_s` and return what happened."""
    async with Fleet(options, folder, db_url, broker_url=broker_url,
                     show_progress=show_progress) as fleet:
        await fleet.play()
        return await fleet.finish()


def latencies(engine: Engine, sent: list[Sent]) -> dict[str, float]:
    """Press (or publish) to the hub's commit, per opening event id, in seconds."""
    ids = [s.event_id for s in sent if s.event_id]
    received: dict[str, float] = {}
    with engine.connect() as conn:
        for start in range(0, len(ids), 500):
            chunk = ids[start:start + 500]
            received.update((e, float(t)) for e, t in conn.execute(
                select(events.c.event_id, events.c.received_at)
                .where(events.c.event_id.in_(chunk))))
    return {s.event_id: received[s.event_id] - s.wall for s in sent
            if s.event_id in received and math.isfinite(received[s.event_id])}


def _order(sent: Sent) -> float:
    return sent.request.at


def _mkdir(path: Path) -> Path:
    path.mkdir(parents=True, exist_ok=True)
    return path
