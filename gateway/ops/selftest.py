"""`stationgw selftest`: commissioning, for a technician alone at a station.

Run it with the daemon stopped (it needs the pins). It walks through the station and prints
a pass/fail table, writes a JSON report, and exits non-zero if anything failed:

- lamp walk: every lamp (and sounder) through every state;
- each help point pressed within a timeout;
- each serial board's HELLO, a heartbeat, and its self-test result (ACK, then no failed
  FAULT frames within a second); then the lamp walk (each state a LAMP command the board
  ACKs) and a press (a BTN frame) for each help point wired to it;
- broker connect and a round trip of its own test message;
- certificate expiry (warn under 30 days), the clock's NTP sync, free disk, database integrity.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import json
import operator
import shutil
import subprocess
import time
import uuid
from collections.abc import Callable, Coroutine, Mapping
from dataclasses import asdict, dataclass
from functools import partial
from pathlib import Path
from typing import Any, Literal, TypeVar

import aiomqtt
from cryptography import x509

from firmware_bridge import Button, Fault, Hello, Nak
from firmware_bridge.errors import CommandError
from firmware_bridge.link import BoardEvent, BoardLink, LinkEvents
from firmware_bridge.protocol import HEARTBEAT_INTERVAL_S
from gateway.config.models import HelpPoint, Sensor, StationConfig
from gateway.core.lamp import LampState
from gateway.errors import StoreDamagedError, StoreError
from gateway.inputs.gpio import PinUnit, is_mock, make_pin_factory, opened_pins
from gateway.outbox.files import WHAT_HAPPENS, check, kept_files
from gateway.station.status import status_path
from gateway.uplink.client import make_client
from gateway.uplink.topics import Topics

Outcome = Literal["pass", "warn", "fail", "skip"]
CERT_WARN_DAYS = 30
MIN_FREE_BYTES = 200 * 1024 * 1024
WALK: tuple[LampState, ...] = ("accepted", "sent", "acknowledged", "fault", "idle")


@dataclass(frozen=True)
class Check:
    """One line of the report."""

    name: str
    outcome: Outcome
    detail: str


Say = Callable[[str], None]
T = TypeVar("T")


async def lamp_walk(units: Mapping[str, PinUnit], step_s: float, say: Say) -> list[Check]:
    """Show every lamp state in turn on every help point."""
    checks = []
    for hp_id, unit in units.items():
        say(f"lamp walk {hp_id}: watch (and listen to) the lamp at {unit.config.location!r}")
        shown = []
        for state in WALK:
            if state == "fault":
                unit.lamp.set_fault(True)
            elif state == "idle":
                unit.lamp.set_fault(False)
                unit.lamp.follow(None, "idle")
            else:
                unit.lamp.follow("selftest", state)
            shown.append(unit.lamp.state)
            say(f"  {hp_id}: {unit.lamp.state}")
            await asyncio.sleep(step_s)
        ok = shown == list(WALK)
        checks.append(Check(f"lamp {hp_id}", "pass" if ok else "fail",
                            "states shown: " + ", ".join(shown)))
    return checks


async def presses(units: Mapping[str, PinUnit], timeout_s: float, say: Say) -> list[Check]:
    """Ask for a press on each help point and wait for it."""
    return [
        await _wait_for_press(unit.config, unit.bridge.queue, lambda item: item[0] == "press",
                              timeout_s, say)
        for unit in units.values()
    ]


async def _wait_for_press(
    hp: HelpPoint, queue: asyncio.Queue[T], is_press: Callable[[T], bool], timeout_s: float,
    say: Say,
) -> Check:
    """Ask the technician to press `hp`, then wait for an item of `queue` that is its press
    (what was queued before the request does not count)."""
    say(f"press the help point {hp.id} at {hp.location!r} within {timeout_s:g}s")
    while not queue.empty():
        queue.get_nowait()
    started = time.monotonic()
    try:
        async with asyncio.timeout(timeout_s):
            while not is_press(await queue.get()):
                pass
    except TimeoutError:
        return Check(f"press {hp.id}", "fail", f"no press within {timeout_s:g}s")
    return Check(f"press {hp.id}", "pass", f"pressed after {time.monotonic() - started:.1f}s")


async def broker_round_trip(config: StationConfig, timeout_s: float) -> list[Check]:
    """Connect to each configured broker and see our own test message come back."""
    topics = Topics(config.mqtt.topic_prefix, config.station_id)
    topic = f"{topics.root}/selftest"
    checks = []
    for endpoint in config.brokers:
        name = f"broker {endpoint.url}"
        token = uuid.uuid4().hex
        started = time.monotonic()
        try:
            client = make_client(
                config, endpoint, identifier=f"{config.client_id}-selftest", persistent=False
            )
            async with asyncio.timeout(timeout_s), client:
                await client.subscribe(topic, qos=1)
                rc = await client.publish_confirmed(topic, token.encode())
                if rc.is_failure:
                    checks.append(Check(name, "fail", f"publish refused: {rc.getName()}"))
                    continue
                async for message in client.messages:
                    if message.payload == token.encode():
                        break
        except TimeoutError:
            checks.append(Check(name, "fail", f"no round trip within {timeout_s:g}s"))
            continue
        except aiomqtt.MqttError as exc:
            checks.append(Check(name, "fail", f"cannot connect: {exc}"))
            continue
        checks.append(Check(name, "pass",
                            f"round trip {1000 * (time.monotonic() - started):.0f} ms"))
    return checks


def certificates(config: StationConfig, now: datetime.datetime) -> list[Check]:
    """Days left on the CA and client certificates."""
    checks = []
    tls = config.mqtt.tls
    for label, path in (("CA certificate", tls.ca_file), ("client certificate", tls.cert_file)):
        if path is None:
            continue
        try:
            cert = x509.load_pem_x509_certificate(path.read_bytes())
        except (OSError, ValueError) as exc:
            checks.append(Check(label, "fail", f"{path}: cannot read: {exc}"))
            continue
        left = cert.not_valid_after_utc - now
        detail = f"{path}: expires {cert.not_valid_after_utc:%Y-%m-%d} ({left.days} days)"
        if left.total_seconds() <= 0:
            checks.append(Check(label, "fail", detail + ": EXPIRED"))
        elif left.days < CERT_WARN_DAYS:
            checks.append(Check(label, "warn", detail + f": renew (under {CERT_WARN_DAYS} days)"))
        else:
            checks.append(Check(label, "pass", detail))
    return checks


def clock() -> Check:
    """NTP sync state, from systemd-timesyncd (timedatectl)."""
    try:
        done = subprocess.run(
            ["timedatectl", "show", "-p", "NTPSynchronized", "--value"],
            capture_output=True, text=True, timeout=5, check=False,
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        return Check("clock", "warn", f"cannot ask timedatectl: {exc}")
    value = done.stdout.strip()
    if value == "yes":
        return Check("clock", "pass", "NTP synchronized")
    if value == "no":
        return Check("clock", "fail",
                     "not NTP synchronized: event times and command staleness are unreliable")
    return Check("clock", "warn", f"NTP state unknown ({done.stderr.strip() or value!r})")


def storage(config: StationConfig) -> list[Check]:
    """Free disk where the outbox lives, and the database's integrity."""
    path = config.store.path
    folder = path.parent if path.parent.exists() else Path("/")
    free = shutil.disk_usage(folder).free
    checks = [Check("free disk", "pass" if free >= MIN_FREE_BYTES else "fail",
                    f"{free / 2**20:.0f} MiB free in {folder}")]
    kept = kept_files(path)
    if kept:
        checks.append(Check("stores moved aside", "warn", "kept for a technician: "
                            + ", ".join(str(p) for p in kept)))
    try:
        found = check(path)
    except StoreDamagedError as exc:
        what = WHAT_HAPPENS.format(name=path.name)
        return [*checks, Check("database", "fail", f"{path}: {exc.reason}; {what}")]
    except (StoreError, OSError) as exc:
        return [*checks, Check("database", "fail", str(exc))]
    return [*checks, Check("database", "pass", f"{path}: intact, the gateway's store"
                           if found else f"{path}: not created yet")]


class _BoardWatch(LinkEvents):
    """Collects what one board's link reports during the selftest."""

    def __init__(self) -> None:
        self.hello: Hello | None = None
        self.welcomed = asyncio.Event()
        self.faults: list[Fault] = []
        self.presses: asyncio.Queue[str] = asyncio.Queue()  # button ids, as pressed

    def online(self, link: BoardLink, hello: Hello) -> None:
        self.hello = hello
        self.welcomed.set()

    def frame(self, link: BoardLink, device_id: str, frame: BoardEvent) -> None:
        if isinstance(frame, Fault):
            self.faults.append(frame)
        elif isinstance(frame, Button) and frame.event == "press":
            self.presses.put_nowait(frame.button)


async def _board_lamp_walk(link: BoardLink, hp: HelpPoint, step_s: float, say: Say) -> Check:
    """Every lamp state in turn on a board's lamp, each ACKed by the board."""
    say(f"lamp walk {hp.id}: watch (and listen to) the lamp at {hp.location!r}")
    shown: list[str] = []
    for state in WALK:
        try:
            answer = await link.set_lamp(hp.board_lamp, state)
        except CommandError as exc:
            return Check(f"lamp {hp.id}", "fail", f"{state}: {exc}")
        if isinstance(answer, Nak):
            return Check(f"lamp {hp.id}", "fail",
                         f"board refused {state}: {answer.code} {answer.detail}".strip())
        shown.append(state)
        say(f"  {hp.id}: {state}")
        await asyncio.sleep(step_s)
    return Check(f"lamp {hp.id}", "pass", "states shown (ACKed by the board): " + ", ".join(shown))


async def _check_board(
    config: StationConfig, sensor: Sensor, timeouts: tuple[float, float, float], say: Say
) -> list[Check]:
    """HELLO, heartbeat and self-test of one board, then a lamp walk and a press on each of
    its help points. `timeouts`: (board, press, lamp step) seconds."""
    timeout_s, press_timeout_s, lamp_step_s = timeouts
    watch = _BoardWatch()
    link = BoardLink(sensor.port, sensor.baud, watch)
    name = f"board {sensor.id}"
    say(f"{name}: waiting for HELLO on {sensor.port}")
    task = asyncio.create_task(link.run(), name=f"selftest.{sensor.id}")
    try:
        try:
            async with asyncio.timeout(timeout_s):
                await watch.welcomed.wait()
        except TimeoutError:
            return [Check(f"{name} hello", "fail",
                          f"no HELLO within {timeout_s:g}s ({link.state}: {link.detail})")]
        hello = watch.hello
        assert hello is not None
        checks = [Check(f"{name} hello", "pass", f"{hello.device_id} firmware {hello.firmware} "
                        f"protocol {hello.protocol}")]
        seen = link.counters()["frames"]
        try:
            async with asyncio.timeout(3 * HEARTBEAT_INTERVAL_S + 1):
                # The link offers counters, not an event; a short one-off wait.
                while link.counters()["frames"] == seen:  # noqa: ASYNC110
                    await asyncio.sleep(0.05)
            checks.append(Check(f"{name} heartbeat", "pass", "heartbeat received"))
        except TimeoutError:
            checks.append(Check(f"{name} heartbeat", "fail",
                                f"no heartbeat within {3 * HEARTBEAT_INTERVAL_S + 1:g}s"))
        try:
            answer = await link.self_test()
        except CommandError as exc:
            checks.append(Check(f"{name} self-test", "fail", str(exc)))
            return checks
        if isinstance(answer, Nak):
            checks.append(Check(f"{name} self-test", "fail",
                                f"refused: {answer.code} {answer.detail}".strip()))
            return checks
        await asyncio.sleep(1.0)  # results arrive as FAULT frames (pass/fail)
        failed = [f for f in watch.faults if f.state in ("fail", "set")]
        checks.append(Check(
            f"{name} self-test", "fail" if failed else "pass",
            "; ".join(f"{f.code} {f.source} {f.state} {f.detail}".strip() for f in failed)
            or "acknowledged, no failures reported",
        ))
        for hp in config.help_points:
            if hp.board == sensor.id:
                checks.append(await _board_lamp_walk(link, hp, lamp_step_s, say))
                checks.append(await _wait_for_press(
                    hp, watch.presses, partial(operator.eq, hp.button), press_timeout_s, say))
        return checks
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


async def serial_boards(
    config: StationConfig,
    timeout_s: float,
    say: Say,
    *,
    press_timeout_s: float = 30.0,
    lamp_step_s: float = 1.0,
) -> list[Check]:
    """Each board's HELLO, a heartbeat, its self-test result, and its help points."""
    checks = []
    for sensor in config.sensors:
        checks += await _check_board(
            config, sensor, (timeout_s, press_timeout_s, lamp_step_s), say
        )
    return checks


async def run_selftest(
    config: StationConfig,
    *,
    press_timeout_s: float = 30.0,
    lamp_step_s: float = 1.0,
    broker_timeout_s: float = 10.0,
    board_timeout_s: float = 10.0,
    say: Say = print,
    during_presses: Callable[[Mapping[str, PinUnit]], Coroutine[Any, Any, None]] | None = None,
) -> list[Check]:
    """Run every check and return the results."""
    if status_path(config).exists():
        return [Check("daemon stopped", "fail",
                      f"the daemon is running ({status_path(config)}); stop it first: "
                      "systemctl stop stationgw")]
    checks: list[Check] = []
    on_gpio = [hp for hp in config.help_points if not hp.on_board]
    if on_gpio:  # help points on boards are checked with their board
        # The pins and lamps alone: the selftest raises no alerts.
        factory = make_pin_factory(config)
        with opened_pins(config, factory, asyncio.get_running_loop()) as units:
            checks += await lamp_walk(units, lamp_step_s, say)
            helper: asyncio.Task[None] | None = None
            if during_presses is not None and is_mock(factory):
                helper = asyncio.create_task(during_presses(units))
            checks += await presses(units, press_timeout_s, say)
            if helper is not None:
                helper.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await helper
    checks += await serial_boards(config, board_timeout_s, say,
                                  press_timeout_s=press_timeout_s, lamp_step_s=lamp_step_s)
    checks += await broker_round_trip(config, broker_timeout_s)
    checks += certificates(config, datetime.datetime.now(datetime.UTC))
    checks.append(clock())
    checks += storage(config)
    return checks


def table(checks: list[Check]) -> str:
    """The pass/fail table."""
    width = max((len(c.name) for c in checks), default=10)
    lines = [f"{'check':<{width}}  result  detail", f"{'-' * width}  ------  ------"]
    lines += [f"{c.name:<{width}}  {c.outcome.upper():<6}  {c.detail}" for c in checks]
    failed = sum(c.outcome == "fail" for c in checks)
    lines.append(f"{len(checks)} checks, {failed} failed, "
                 f"{sum(c.outcome == 'warn' for c in checks)} warnings")
    return "\n".join(lines)


def write_report(path: Path, config: StationConfig, checks: list[Check]) -> None:
    """The JSON report a technician files."""
    path.write_text(json.dumps({
        "station": config.station_id,
        "wall_time": time.time(),
        "passed": not any(c.outcome == "fail" for c in checks),
        "checks": [asdict(c) for c in checks],
    }, indent=2))
