"""`stationgw demo`: the whole flow on one machine, with no Pi.

It starts a real Mosquitto on a free port, the daemon (`stationgw run`, as its own process)
for a simulated station on gpiozero mock pins, and a dispatch view that prints each alert as
it arrives. Then it plays a scene through the simulate socket, as a technician would: a press,
a hold, a chattering button, a stuck button, and a broker outage with catch-up. A simulated
serial board on a pseudo-terminal adds a sensor alert, a help point on the board (its lamp
driven by LAMP commands) whose request a loud sound corroborates, and an unplug/replug.

The dispatch hub runs beside it as at a dispatch centre (`stationgw hub run --web`, its own
process), recording the station in an SQLite file in the demo's folder, with its web console
on 127.0.0.1 and an operator whose password is made for the run. At the end the demo reads
the hub's database back (alerts, events, the seq audit) and fails if the hub recorded fewer
alerts or events than dispatch saw. `--hold` keeps everything up after the scene, until
Ctrl-C, to explore the console.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib.util
import json
import os
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import aiomqtt
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from dispatch.outbound import make_command, send_command
from firmware_bridge.simulator import BoardSimulator
from gateway.core.commands import Action
from gateway.inputs.simulate import send
from gateway.testing.daemon import StationDaemon
from gateway.testing.mosquitto import Mosquitto, free_port

if TYPE_CHECKING:
    from dispatch.hub.store import Gap, HubStore

STATION = "demo-central"
HUB_CLIENT_ID = "demo-hub"
OPERATOR = "demo"
HELP_POINTS = {
    "hp-p1-north": ("platform 1, north stairs", 17, 27, 22),
    "hp-p1-south": ("platform 1, south lift", 5, 6, 13),
    "hp-p2-east": ("platform 2, east exit", 19, 26, None),
    "hp-concourse": ("concourse, ticket hall", 23, 24, None),
}
LABELS = {
    "help_point.press": "crisis request",
    "help_point.repeat": "pressed again",
    "help_point.hold": "EMERGENCY (button held)",
    "help_point.stuck": "FAULT: button stuck",
    "help_point.unstuck": "fault cleared: button released",
    "alert.acknowledged": "acknowledged by dispatch",
    "alert.assigned": "team assigned",
    "alert.resolved": "resolved",
    "alert.cancelled": "cancelled",
    "alert.escalated": "ESCALATED: no acknowledgement",
    "alert.correlated": "CORROBORATED by a sensor",
    "sensor.threshold": "SENSOR ALERT",
    "sensor.cleared": "sensor cleared",
    "sensor.reading": "reading",
    "device.online": "board online",
    "device.offline": "BOARD OFFLINE",
    "device.fault": "board fault",
}
RESPONSE = {
    "emergency_services": "send emergency services",
    "crisis_team": "send crisis team",
    "ambassador": "send community ambassador",
    "none": "no response needed",
}


def board_port(folder: Path) -> Path:
    """The stable path of the simulated edge-beam board, as /dev/serial/by-id/ would give."""
    return folder / "serial" / "by-id" / "usb-sim-edge-beam-p1-if00"


def demo_config(folder: Path, broker_url: str) -> Path:
    """Write the simulated station's config and return its path."""
    lines = [
        f'station_id = "{STATION}"',
        'gpio_pin_factory = "mock"',
        "[[brokers]]",
        f'url = "{broker_url}"',
        "[mqtt]",
        "health_interval_s = 5",
        "reconnect_initial_s = 0.2",
        "reconnect_max_s = 1.0",
        "[store]",
        f'path = "{folder / "outbox.db"}"',
        "[press]",
        "repeat_window_s = 6",
        "stuck_after_s = 3",
        "[dispatch]",
        "ack_timeout_s = 12",
    ]
    for hp_id, (location, pin, lamp, sounder) in HELP_POINTS.items():
        lines += [
            "[[help_points]]",
            f'id = "{hp_id}"',
            f'location = "{location}"',
            f"pin = {pin}",
            f"lamp_pin = {lamp}",
            "hold_time_s = 1.5",
        ]
        if sounder is not None:
            lines.append(f"sounder_pin = {sounder}")
    lines += [
        # A help point wired to the edge board, not to GPIO: BTN frames in, LAMP commands out.
        "[[help_points]]",
        'id = "hp-p1-edge"',
        'location = "platform 1, edge panel"',
        'platform = "1"',
        'board = "edge-p1"',
        'button = "hp1"',
        "[[sensors]]",
        'id = "edge-p1"',
        f'port = "{board_port(folder)}"',
        'location = "platform 1 edge"',
        'platform = "1"',
        'help_points = ["hp-p1-edge"]',
        "[[sensors.thresholds]]",
        'channel = "beam"',
        "above = 1",
        "clear_at = 0.5",
        "min_duration_s = 2",
        'class = "P0"',
        'label = "edge intrusion"',
        "[[sensors.thresholds]]",
        'channel = "spl"',
        "above = 85",
        "clear_at = 75",
        'class = "P0"',
        'label = "loud sound"',
        "correlate = true",
    ]
    path = folder / "station.toml"
    path.write_text("\n".join(lines) + "\n")
    return path


def clock(ts: float) -> str:
    """HH:MM:SS.mmm of a Unix time."""
    return time.strftime("%H:%M:%S", time.localtime(ts)) + f".{int(ts % 1 * 1000):03d}"


def say(text: str) -> None:
    """Narration."""
    print(f"\n== {text}", flush=True)


class DispatchView:
    """A dispatcher's screen: every alert once, readably, as it arrives."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.seen: dict[str, dict[str, Any]] = {}
        self.alerts: set[str] = set()
        self.changed = asyncio.Event()
        self.client: aiomqtt.Client | None = None

    async def run(self) -> None:
        """Stay subscribed (persistent session) through broker outages."""
        props = Properties(PacketTypes.CONNECT)  # type: ignore[no-untyped-call]
        props.SessionExpiryInterval = 3600
        while True:
            try:
                async with aiomqtt.Client(
                    "127.0.0.1", self.port, identifier="demo-dispatch",
                    protocol=aiomqtt.ProtocolVersion.V5, clean_start=False, properties=props,
                ) as client:
                    await client.subscribe(f"stationgw/v1/{STATION}/events/#", qos=1)
                    self.client = client
                    async for message in client.messages:
                        if isinstance(message.payload, bytes):
                            self.show(json.loads(message.payload))
            except aiomqtt.MqttError:
                self.client = None
                await asyncio.sleep(0.3)

    def show(self, event: dict[str, Any]) -> None:
        """Print one event, once (re-sends carry the same event_id)."""
        if event["event_id"] in self.seen:
            return
        self.seen[event["event_id"]] = event
        body = event.get("body", {})
        if "alert_id" in body:
            self.alerts.add(body["alert_id"])
        label = LABELS.get(event["kind"], event["kind"])
        line = (
            f"   [dispatch {clock(time.time())}] {event['class']} {label:<30} "
            f"{event['source']} ({body.get('location', '')})"
        )
        if event["kind"].startswith(("sensor.", "device.")):
            detail = {k: body[k] for k in ("value", "unit", "label", "reason", "device_id")
                      if body.get(k) not in (None, "")}
            line += f"\n{'':27}" + " ".join(f"{k}={v}" for k, v in detail.items())
        elif "press_count" in body and event["kind"] in ("help_point.press", "help_point.repeat",
                                                        "help_point.hold"):
            line += (
                f"\n{'':27}presses={body['press_count']} alert={body['alert_id'][:8]} "
                f"first={clock(body['first_press'])} last={clock(body['last_press'])} "
                f"-> {RESPONSE.get(event['requested_response'], '')}"
            )
        elif event["kind"] == "alert.assigned":
            line += f"\n{'':27}team={body.get('team')} eta={body.get('eta_s')}s"
        elif event["kind"] == "alert.correlated":
            line += f"\n{'':27}evidence: " + "; ".join(map(str, body.get("evidence", [])))
        print(line, flush=True)
        self.changed.set()

    async def wait(self, predicate: Callable[[], bool], limit_s: float = 15) -> None:
        """Wait until `predicate()` holds, or give up after `limit_s` seconds."""
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(limit_s):
                while not predicate():
                    self.changed.clear()
                    await self.changed.wait()

    async def command(self, alert_id: str, action: Action, **kw: Any) -> None:
        """Act as the dispatcher: send a command about an alert."""
        assert self.client is not None, "dispatch view is not connected"
        print(f"   [dispatcher] {action} alert {alert_id[:8]}", flush=True)
        await send_command(self.client, "stationgw/v1",
                           make_command(STATION, alert_id, action, dispatcher="demo", **kw))

    def alert_of(self, source: str) -> str:
        """The newest alert id a help point raised."""
        ids = [str(e["body"]["alert_id"]) for e in self.seen.values()
               if e["source"] == source and "alert_id" in e.get("body", {})]
        return ids[-1]

    def count(self, kind: str, source: str) -> int:
        """How many distinct events of a kind a help point raised."""
        return sum(1 for e in self.seen.values() if e["kind"] == kind and e["source"] == source)


def hub_missing() -> str | None:
    """Why the hub cannot run here (the `dispatch` extra is not installed), or None."""
    needed = ("sqlalchemy", "alembic", "starlette", "uvicorn", "argon2")
    absent = [name for name in needed if importlib.util.find_spec(name) is None]
    return ", ".join(absent) + " not installed" if absent else None


class DemoHub:
    """The dispatch hub as a dispatch centre runs it (`stationgw hub run --web`, a process of
    its own), recording the demo's station in an SQLite file in the demo's folder."""

    def __init__(self, folder: Path, broker_url: str) -> None:
        self.folder = folder
        self.broker_url = broker_url
        self.db_url = f"sqlite:///{folder / 'hub.db'}"
        self.log_path = folder / "hub.log"
        self.url = f"http://127.0.0.1:{free_port()}/"
        self.password = secrets.token_urlsafe(12)  # made for this run, never a default
        self.process: subprocess.Popen[bytes] | None = None
        self.store: HubStore | None = None

    def prepare(self) -> None:
        """Make the database with the demo's operator, and the console's cookie secret."""
        from dispatch.hub.store import HubStore, migrate, open_engine  # noqa: PLC0415
        from dispatch.web.app import hash_password  # noqa: PLC0415

        engine = open_engine(self.db_url)
        migrate(engine)  # before the hub starts: two first migrations would race
        self.store = HubStore(engine)
        self.store.add_operator(OPERATOR, hash_password(self.password))
        secret = self.folder / "web-secret"
        secret.touch(mode=0o600)
        secret.write_text(secrets.token_hex(32))

    async def open_session(self, port: int) -> None:
        """Make the hub's persistent session before any station speaks, as an earlier run of
        the hub would have left it: the broker queues the station's first events for the hub
        however long the hub takes to start."""
        from dispatch.hub.service import hub_topics  # noqa: PLC0415

        props = Properties(PacketTypes.CONNECT)  # type: ignore[no-untyped-call]
        props.SessionExpiryInterval = 3600
        async with aiomqtt.Client(
            "127.0.0.1", port, identifier=HUB_CLIENT_ID, protocol=aiomqtt.ProtocolVersion.V5,
            clean_start=False, properties=props,
        ) as client:
            for topic in hub_topics():
                await client.subscribe(topic, qos=1)

    def start(self) -> None:
        """Start `stationgw hub run --web` on 127.0.0.1, logging to a file."""
        host_port = self.url.removeprefix("http://").rstrip("/")
        log = self.log_path.open("ab")
        self.process = subprocess.Popen(
            [sys.executable, "-m", "gateway.ops.cli", "hub", "run", "--db", self.db_url,
             "--broker", self.broker_url, "--client-id", HUB_CLIENT_ID, "--web", host_port,
             "--web-secret-file", str(self.folder / "web-secret"), "--cap-test"],
            stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        log.close()

    async def wait_ready(self, limit_s: float = 30) -> None:
        """Wait until the web console takes connections."""
        host, _, port = self.url.removeprefix("http://").rstrip("/").rpartition(":")
        async with asyncio.timeout(limit_s):
            while True:
                if self.exit_code() is not None:
                    raise RuntimeError("the hub exited; its log:\n" + self.log_path.read_text())
                try:
                    _, writer = await asyncio.open_connection(host, int(port))
                except OSError:
                    await asyncio.sleep(0.05)
                    continue
                writer.close()
                await writer.wait_closed()
                return

    def stop(self) -> None:
        """SIGTERM the hub and wait for it; close the demo's own connections to its database."""
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self.process = None
        if self.store is not None:
            self.store.engine.dispose()

    def exit_code(self) -> int | None:
        """The hub process's exit code if it has ended, else None."""
        return None if self.process is None else self.process.poll()

    def recorded(self) -> tuple[list[dict[str, Any]], set[str]]:
        """The station's alerts and event ids, as the hub's database holds them."""
        assert self.store is not None, "prepare() first"
        return ([a for a in self.store.alerts() if a["station"] == STATION],
                self.store.event_ids(STATION))

    async def report(self, view: DispatchView, limit_s: float = 30) -> bool:
        """Print what the hub's database holds about the scene; True if it holds every alert
        and event dispatch saw (it may still be catching up after the outage: wait)."""
        alerts, ids = await self._caught_up(view, limit_s)
        assert self.store is not None
        gaps = [g for g in await asyncio.to_thread(self.store.gaps) if g.station == STATION]
        say(f"The hub's record, read back from its database ({self.db_url})")
        _print_record(view, alerts, ids, gaps)
        problems = self._problems(view, alerts, ids, gaps)
        for problem in problems:
            print(f"   HUB INCOMPLETE: {problem}")
        if problems and self.log_path.exists():  # the folder goes at the end: show the log
            tail = self.log_path.read_text(errors="replace").splitlines()[-10:]
            print("   the hub's log ends:\n" + "\n".join(f"     {line}" for line in tail))
        return not problems

    async def _caught_up(
        self, view: DispatchView, limit_s: float
    ) -> tuple[list[dict[str, Any]], set[str]]:
        """The record, once it holds all dispatch saw (or after `limit_s`, or the hub ends)."""
        alerts, ids = await asyncio.to_thread(self.recorded)
        deadline = time.monotonic() + limit_s
        while (view.alerts - {a["alert_id"] for a in alerts} or set(view.seen) - ids) and (
                time.monotonic() < deadline and self.exit_code() is None):
            await asyncio.sleep(0.2)
            alerts, ids = await asyncio.to_thread(self.recorded)
        return alerts, ids

    def _problems(
        self, view: DispatchView, alerts: list[dict[str, Any]], ids: set[str], gaps: list[Gap]
    ) -> list[str]:
        """What the record lacks against what dispatch saw, in words."""
        problems = []
        if self.exit_code() is not None:
            problems.append(f"the hub exited during the demo (exit code {self.exit_code()})")
        unrecorded = view.alerts - {a["alert_id"] for a in alerts}
        if unrecorded:
            problems.append(f"the hub recorded {len(view.alerts) - len(unrecorded)} of the "
                            f"{len(view.alerts)} alerts the scene raised (not in its database: "
                            f"{', '.join(sorted(a[:8] for a in unrecorded))})")
        if set(view.seen) - ids:
            problems.append(f"{len(set(view.seen) - ids)} of the {len(view.seen)} events "
                            "dispatch saw are not in the hub's database")
        gone = sum(len(g.missing) for g in gaps)
        if gone:
            problems.append(f"the seq audit counts {gone} event(s) lost on the way to the hub")
        return problems


def _print_record(
    view: DispatchView, alerts: list[dict[str, Any]], ids: set[str], gaps: list[Gap]
) -> None:
    """The hub's alerts by class and state, each alert's times, the events, the seq audit."""
    print(f"   alerts: {len(alerts)} recorded; the scene raised {len(view.alerts)}")
    by_class: dict[str, Counter[str]] = {}
    for alert in alerts:
        by_class.setdefault(alert["class"], Counter())[alert["state"]] += 1
    for cls, states in sorted(by_class.items()):
        print(f"     {cls}: " + ", ".join(f"{n} {s}" for s, n in sorted(states.items())))
    for alert in alerts:
        print(f"     {alert['alert_id'][:8]} {alert['class']} {alert['state']:<12} "
              f"{alert['source']:<13} {_times(alert)}".rstrip())
    print(f"   events: {len(ids)} stored, each once by event_id; dispatch saw {len(view.seen)}")
    print("   seq audit (stationgw hub audit):")
    for gap in gaps:
        lost = ", ".join(map(str, gap.missing[:20])) or "none"
        print(f"     {gap.station}: seq {gap.first}..{gap.last}, {len(gap.missing)} lost "
              f"({lost}), {len(gap.dropped)} evicted or expired at the station")


def _times(alert: dict[str, Any]) -> str:
    """Time to acknowledge and to close, and escalations, as facts from the hub's record."""
    parts = []
    for column, name in (("acknowledged_at", "acknowledged"), ("closed_at", "closed")):
        if alert[column] is not None:
            took = alert[column] - alert["opened_at"]
            parts.append(f"{name} after " + (f"{took:.1f} s" if took >= 1 else
                                              f"{took * 1000:.0f} ms"))
    if alert["team"]:
        parts.append(f"team {alert['team']}")
    if alert["escalations"]:
        parts.append(f"escalated {alert['escalations']}x")
    return ", ".join(parts)


class Demo:
    """The running pieces of the demo."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.broker = Mosquitto(persistence=True, workdir=folder)
        self.config_path = demo_config(folder, self.broker.url)
        self.daemon = StationDaemon(self.config_path, folder / "daemon.log", new_session=True)
        self.config = self.daemon.config
        self.view = DispatchView(self.broker.port)
        self.hub_missing = hub_missing()
        self.hub = DemoHub(folder, self.broker.url) if self.hub_missing is None else None
        board_port(folder).parent.mkdir(parents=True)
        self.board = BoardSimulator(board_port(folder), device_id="edge-beam-7f3a")

    def start_daemon(self) -> None:
        """Start `stationgw run` as its own process, logging to a file."""
        self.daemon.start()

    def stop_daemon(self) -> None:
        """SIGTERM the daemon and wait for it."""
        self.daemon.stop()

    async def simulate(self, cmd: str, hp: str | None = None) -> dict[str, Any]:
        """Drive the daemon's mock pins through its simulate socket."""
        return await asyncio.to_thread(send, self.config, {"cmd": cmd, "help_point": hp})

    async def lamps(self) -> str:
        """The lamps, as the rider sees them."""
        reply = await self.simulate("status")
        return ", ".join(f"{hp}={state}" for hp, state in reply["lamps"].items())

    async def wait_ready(self, limit_s: float = 20) -> None:
        """Wait for the daemon's simulate socket."""
        await self.daemon.wait_up(limit_s)


@contextlib.asynccontextmanager
async def demo_station(interactive_mode: bool = False) -> AsyncIterator[Demo]:
    """Start broker, daemon and dispatch view; stop all of them however the block ends."""
    folder = Path(tempfile.mkdtemp(prefix="stationgw-demo-"))
    demo = Demo(folder)
    view_task: asyncio.Task[None] | None = None
    stack = contextlib.AsyncExitStack()
    hub = demo.hub
    try:
        say(f"Starting a real Mosquitto on port {demo.broker.port}")
        demo.broker.start()
        if hub is not None:  # before the station, so the hub's session has every event
            await hub.open_session(demo.broker.port)
            await asyncio.to_thread(hub.prepare)
            hub.start()
        view_task = asyncio.create_task(demo.view.run(), name="demo.dispatch_view")
        await stack.enter_async_context(demo.board)
        print(f"   a simulated edge-beam board on a pseudo-terminal at {board_port(folder)}")
        say(f"Starting the gateway daemon for station {STATION!r} (mock GPIO pins)")
        demo.start_daemon()
        await demo.wait_ready()
        # The board's help point takes calls once the gateway has welcomed the board.
        await demo.board.wait_until(lambda: demo.board.state == "running", timeout_s=20)
        print(f"   config {demo.config_path}, daemon log {folder / 'daemon.log'}")
        print(f"   help points: {', '.join(HELP_POINTS)} on GPIO; hp-p1-edge on the edge board")
        if hub is None:
            say(f"No dispatch hub: {demo.hub_missing} "
                "(install station-gateway[dispatch], as ./dev does)")
        else:
            await hub.wait_ready()
            say("The dispatch hub records the station in SQLite; its web console is live")
            print(f"   web console  {hub.url}\n"
                  f"   log in as    {OPERATOR}, password {hub.password} (made for this run)\n"
                  f"   database {hub.db_url}, hub log {hub.log_path}")
            if not interactive_mode:
                print("   The scene plays its own dispatcher, so watch the queue; to act in the "
                      "page yourself,\n   run with --hold (everything stays up after the scene) "
                      "or --interactive.")
        yield demo
    finally:
        if view_task is not None:
            view_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await view_task
        demo.stop_daemon()  # before the hub, so that it records the station going offline
        if hub is not None:
            hub.stop()
        await stack.aclose()
        demo.broker.close()
        if os.environ.get("STATIONGW_DEMO_KEEP"):
            print(f"kept {folder}")
        else:
            shutil.rmtree(folder, ignore_errors=True)


async def _a_rider_presses_and_dispatch_answers(demo: Demo, view: DispatchView) -> None:
    """Press, acknowledge, assign, resolve: the lamp follows each step."""
    await demo.simulate("press", "hp-p1-north")
    await view.wait(lambda: view.count("help_point.press", "hp-p1-north") == 1)
    await asyncio.sleep(0.3)
    print(f"   lamps: {await demo.lamps()}")
    north = view.alert_of("hp-p1-north")
    await view.command(north, "acknowledge")
    await view.wait(lambda: view.count("alert.acknowledged", "hp-p1-north") == 1)
    await asyncio.sleep(0.2)
    print(f"   lamps: {await demo.lamps()}  (solid: the rider knows help is coming)")
    await view.command(north, "assign", team="crisis_team", eta_s=360)
    await view.wait(lambda: view.count("alert.assigned", "hp-p1-north") == 1)
    await view.command(north, "resolve")
    await view.wait(lambda: view.count("alert.resolved", "hp-p1-north") == 1)
    await asyncio.sleep(0.2)
    print(f"   lamps: {await demo.lamps()}  (resolved: lamp off)")


async def _a_held_button_is_an_emergency(demo: Demo, view: DispatchView) -> None:
    """A hold upgrades the same request to P0."""
    await demo.simulate("hold", "hp-p1-south")
    await view.wait(lambda: view.count("help_point.hold", "hp-p1-south") == 1)
    print("   the same request was upgraded to P0; no second request was raised")


async def _chattering_wiring_is_one_press(demo: Demo, view: DispatchView) -> None:
    """Bounce is debounced into one press."""
    await demo.simulate("chatter", "hp-p2-east")
    await view.wait(lambda: view.count("help_point.press", "hp-p2-east") == 1)
    await asyncio.sleep(0.5)
    print(f"   requests from hp-p2-east: {view.count('help_point.press', 'hp-p2-east')} "
          "(bounce is debounced into one press)")


async def _a_jammed_button_is_a_fault(demo: Demo, view: DispatchView) -> None:
    """A stuck button is one fault, not a flood of requests."""
    await demo.simulate("stuck", "hp-concourse")
    await view.wait(lambda: view.count("help_point.stuck", "hp-concourse") == 1)
    print("   held past 1.5 s it first looks like an emergency; held past 3 s it is reported")
    print(f"   stuck: one fault, no flood of requests. lamps: {await demo.lamps()}")
    print("   a technician frees the button:")
    await demo.simulate("release", "hp-concourse")
    await view.wait(lambda: view.count("help_point.unstuck", "hp-concourse") == 1)


async def _the_broker_goes_down(demo: Demo, view: DispatchView) -> None:
    """Presses while the broker is down wait on disk and go first when it returns."""
    demo.broker.stop()
    await asyncio.sleep(0.5)
    print("   a rider presses on platform 1 north (a new request: the last one was resolved),")
    print("   and the rider on platform 2, still waiting for dispatch, presses again:")
    await demo.simulate("press", "hp-p1-north")
    await demo.simulate("press", "hp-p2-east")
    await asyncio.sleep(0.3)
    print(f"   lamps: {await demo.lamps()}  (accepted = safely on disk, not yet sent)")
    say("The broker comes back: the gateway catches up, alerts first")
    demo.broker.start()
    await view.wait(
        lambda: view.count("help_point.press", "hp-p1-north") == 2
        and view.count("help_point.repeat", "hp-p2-east") == 1,
        limit_s=20,
    )
    await asyncio.sleep(0.5)
    print(f"   lamps: {await demo.lamps()}")


async def _nobody_acknowledges(demo: Demo, view: DispatchView) -> None:
    """An unacknowledged emergency is re-announced, escalated."""
    await view.wait(lambda: view.count("alert.escalated", "hp-p1-south") >= 1, limit_s=15)
    print("   it was re-announced with an escalation flag; it repeats until dispatch answers")


async def _someone_on_the_track_edge(demo: Demo, view: DispatchView) -> None:
    """A sensor threshold and its clearing."""
    demo.board.reading("beam", 1, "bool")
    await view.wait(lambda: view.count("sensor.threshold", "edge-p1") == 1, limit_s=10)
    demo.board.reading("beam", 0, "bool")
    await view.wait(lambda: view.count("sensor.cleared", "edge-p1") == 1)


async def _a_board_help_point(demo: Demo, view: DispatchView) -> None:
    """A serial board's button and lamp, and sound as corroborating evidence."""
    board = demo.board
    board.press("hp1")
    board.release("hp1")
    await view.wait(lambda: view.count("help_point.press", "hp-p1-edge") == 1)
    await board.wait_until(lambda: board.lamps["hp1"] == "sent")
    print(f"   the board's lamp, told by LAMP commands: {board.lamps['hp1']}")
    print("   then the board's microphone hears shouting beside the help point (92 dB):")
    board.reading("spl", 92, "dB")
    await view.wait(lambda: view.count("alert.correlated", "hp-p1-edge") == 1)
    print("   the open request was re-announced at P0 with the sound level as evidence")
    edge = view.alert_of("hp-p1-edge")
    await view.command(edge, "acknowledge")
    await view.wait(lambda: view.count("alert.acknowledged", "hp-p1-edge") == 1)
    await board.wait_until(lambda: board.lamps["hp1"] == "acknowledged")
    print(f"   dispatch acknowledged: the board's lamp shows {board.lamps['hp1']}")


async def _the_board_is_unplugged(demo: Demo, view: DispatchView) -> None:
    """The board goes offline, comes back by its stable path, and its lamp is restored."""
    board = demo.board
    await board.unplug()
    await view.wait(lambda: view.count("device.offline", "edge-p1") == 1, limit_s=15)
    board.plug()
    print(f"   the board boots showing {board.lamps['hp1']} on its lamp (it lost the gateway)")
    await view.wait(lambda: view.count("device.online", "edge-p1") == 2, limit_s=20)
    await board.wait_until(lambda: board.lamps["hp1"] == "acknowledged", timeout_s=20)
    print("   the gateway reopened the port by its stable path; the board is back and its lamp")
    print(f"   shows the call's state again: {board.lamps['hp1']}")


#: The scene, in order: what each part shows, and the part.
SCENES: tuple[tuple[str, Callable[[Demo, DispatchView], Awaitable[None]]], ...] = (
    ("a rider presses the help point on platform 1 (north stairs)",
     _a_rider_presses_and_dispatch_answers),
    ("a rider holds the button on platform 1 south: an emergency",
     _a_held_button_is_an_emergency),
    ("worn wiring on platform 2 chatters: 20 edges in 200 ms",
     _chattering_wiring_is_one_press),
    ("the concourse button jams (vandalism)", _a_jammed_button_is_a_fault),
    ("the dispatch broker goes down", _the_broker_goes_down),
    ("nobody acknowledged the platform 1 south emergency within 12 s",
     _nobody_acknowledges),
    ("someone is on the track edge of platform 1: the beam is broken for 2 s",
     _someone_on_the_track_edge),
    ("a rider presses the help point on the edge board's panel (serial, not GPIO)",
     _a_board_help_point),
    ("the edge board's USB adapter is pulled out, then plugged back in",
     _the_board_is_unplugged),
)

#: What dispatch must have seen by the end: (kind, source) -> count.
EXPECTED: dict[tuple[str, str], int] = {
    ("sensor.threshold", "edge-p1"): 1,
    ("device.offline", "edge-p1"): 1,
    ("device.online", "edge-p1"): 2,
    ("help_point.press", "hp-p1-north"): 2,
    ("alert.acknowledged", "hp-p1-north"): 1,
    ("alert.resolved", "hp-p1-north"): 1,
    ("help_point.hold", "hp-p1-south"): 1,
    ("help_point.press", "hp-p2-east"): 1,
    ("help_point.repeat", "hp-p2-east"): 1,
    ("help_point.stuck", "hp-concourse"): 1,
    ("help_point.unstuck", "hp-concourse"): 1,
    ("help_point.press", "hp-p1-edge"): 1,
    ("alert.correlated", "hp-p1-edge"): 1,
    ("alert.acknowledged", "hp-p1-edge"): 1,
}


async def scene(demo: Demo) -> bool:
    """The scripted scene; returns True if dispatch saw everything it should have."""
    view = demo.view
    for number, (title, part) in enumerate(SCENES, 1):
        say(f"Scene {number}: {title}")
        await part(demo, view)
    missing = {k: v for k, v in EXPECTED.items() if view.count(*k) != v}
    if view.count("alert.escalated", "hp-p1-south") < 1:  # once per 12 s: maybe twice
        missing[("alert.escalated", "hp-p1-south")] = 1
    say(
        f"Done: dispatch received {len(view.seen)} events about {len(view.alerts)} requests"
        + ("" if not missing else f"; MISSING {missing}")
    )
    return not missing


async def interactive(demo: Demo) -> None:
    """Press buttons from the keyboard."""
    names = list(HELP_POINTS)
    keys = "\n".join(f"     {i + 1} = {hp}" for i, hp in enumerate(names))
    print(
        "\nType a command and Enter:  p N (press)  h N (hold)  c N (chatter)  s N (stuck)  "
        f"r N (release)  o (broker off/on)  l (lamps)  q (quit)\n{keys}"
    )
    actions = {"p": "press", "h": "hold", "c": "chatter", "s": "stuck", "r": "release"}
    while True:
        try:
            line = (await asyncio.to_thread(input, "demo> ")).split()
        except EOFError:
            return
        if not line:
            continue
        if line[0] == "q":
            return
        if line[0] == "l":
            print(f"   lamps: {await demo.lamps()}")
        elif line[0] == "o":
            if demo.broker.process is None:
                demo.broker.start()
                print("   broker started")
            else:
                demo.broker.stop()
                print("   broker stopped")
        elif line[0] in actions and len(line) == 2 and line[1].isdigit() and (
            1 <= int(line[1]) <= len(names)
        ):
            reply = await demo.simulate(actions[line[0]], names[int(line[1]) - 1])
            print(f"   lamp now {reply.get('lamp')}")
        else:
            print("   ?")


async def hold(demo: Demo) -> None:
    """Keep everything up until Ctrl-C (or SIGTERM), to explore the web console."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    where = f": the web console at {demo.hub.url}" if demo.hub is not None else ""
    say(f"Holding broker, daemon and hub up{where}; Ctrl-C to stop")
    try:
        await stop.wait()
    finally:
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.remove_signal_handler(sig)


#: The fleet twin's short run for `demo --fleet` (as tests/test_fleet.py runs it).
METRO_STATIONS, METRO_DAEMONS, METRO_S = 20, 3, 20.0


async def metro(folder: Path) -> bool:
    """A short run of the fleet twin: a simulated metro's week in `METRO_S` seconds, into its
    own Mosquitto and hub; True when the hub holds every request, resolved, none lost."""
    from dispatch.fleet.cli import print_result  # noqa: PLC0415 (the dispatch side's)
    from dispatch.fleet.run import FleetOptions, run_fleet  # noqa: PLC0415

    say(f"The fleet twin: a simulated metro of {METRO_STATIONS} stations ({METRO_DAEMONS} of "
        f"them real gateway daemons), a week of requests in {METRO_S:g} s")
    print("   with planted hotspots; every request is acknowledged, assigned and resolved by "
          "a simulated dispatcher (stationgw hub fleet runs it at any size)")
    options = FleetOptions(stations=METRO_STATIONS, daemons=METRO_DAEMONS, duration_s=METRO_S,
                           speed=7 * 86400 / METRO_S, health_interval_s=5.0)
    db_url = f"sqlite:///{folder / 'fleet-hub.db'}"
    result = await run_fleet(options, folder / "fleet", db_url, show_progress=False)
    print_result(result, db_url)
    return not result.problems


async def run_demo(interactive_mode: bool, hold_up: bool = False, fleet: bool = False) -> int:
    """Run the demo; exit code 0 when the scene completed as expected and the hub's database
    holds it (and, with `fleet`, the fleet twin's short run lost nothing). `hold_up` keeps
    everything up after the scene, until Ctrl-C."""
    async with demo_station(interactive_mode) as demo:
        if interactive_mode:
            await interactive(demo)
            if demo.hub is not None:
                await demo.hub.report(demo.view, limit_s=5)
            return 0
        ok = await scene(demo)
        if demo.hub is not None and not await demo.hub.report(demo.view):
            say("FAILED: the hub's database does not hold the scene (see HUB INCOMPLETE above)")
            ok = False
        if hold_up:
            await hold(demo)
        missing = demo.hub_missing
    say("Everything stopped: broker, daemon, hub and dispatch view")
    if fleet and missing is not None:
        say(f"No fleet twin: it needs the dispatch side ({missing})")
        ok = False
    elif fleet:
        folder = Path(tempfile.mkdtemp(prefix="stationgw-demo-fleet-"))
        try:
            if not await metro(folder):
                say("FAILED: the fleet twin's hub does not hold every request (see PROBLEM)")
                ok = False
        finally:
            shutil.rmtree(folder, ignore_errors=True)
    return 0 if ok else 1
