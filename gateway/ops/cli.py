"""`stationgw`: the command line for operators and technicians."""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import signal
import sqlite3
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TextIO

from gateway import __version__
from gateway.config.loading import config_schema, load_config, load_config_isolated
from gateway.config.models import EX_CONFIG, StationConfig
from gateway.errors import ConfigError, GatewayError, StoreDamagedError, StoreError
from gateway.ops.install import PACKAGE_ROOT
from gateway.outbox.files import WHAT_HAPPENS, check, kept_files
from gateway.outbox.sqlite import Depth, backup, connect, read_depth
from gateway.station.status import status_path

log = logging.getLogger("gateway")

Command = Callable[[argparse.Namespace], int]


class LineFormatter(logging.Formatter):
    """`%(asctime)s %(levelname)s %(name)s: %(message)s`, the same text as logging's own
    formatter, with the date and time of day rendered once a second rather than per line."""

    def __init__(self) -> None:
        super().__init__("%(asctime)s %(levelname)s %(name)s: %(message)s")
        self._second: tuple[int, str] = (-1, "")

    def formatTime(self, record: logging.LogRecord, datefmt: str | None = None) -> str:  # noqa: N802
        """`2026-11-26 17:40:13,211`, as `logging.Formatter.formatTime`."""
        second, text = self._second
        if int(record.created) != second:
            text = time.strftime(self.default_time_format, self.converter(record.created))
            self._second = (int(record.created), text)
        return f"{text},{int(record.msecs):03d}"


def setup_logging(level: str = "INFO", stream: TextIO | None = None) -> None:
    """One line per event on stdout (or `stream`), for journald."""
    # The line carries none of the caller's file, thread or process: skip looking them up
    # for every record (the logging HOWTO's "Optimization"). A few microseconds a line, at
    # one line per event.
    logging._srcfile = None
    logging.logThreads = False
    logging.logProcesses = False
    logging.logMultiprocessing = False
    handler = logging.StreamHandler(sys.stdout if stream is None else stream)
    handler.setFormatter(LineFormatter())
    logging.basicConfig(level=level, handlers=[handler], force=True)
    logging.getLogger("gateway.uplink.client.paho").setLevel(logging.WARNING)


def load_with_overrides(
    path: Path, broker: str | None = None, store: Path | None = None
) -> StationConfig:
    """Load the config and apply a technician's command-line overrides.

    Checked in a child process, so that pydantic stays out of a long-running command's
    memory (`gateway.config.load_config_isolated`).
    """
    return load_config_isolated(path, broker=broker, store=store)


def _print_problems(path: Path, err: ConfigError) -> int:
    print(f"{path}: {len(err.problems)} problem(s) in the station config:", file=sys.stderr)
    for problem in err.problems:
        print(f"  - {problem}", file=sys.stderr)
    return EX_CONFIG


# ---------------------------------------------------------------------------- commands


def cmd_check_config(args: argparse.Namespace) -> int:
    """Validate a config file; exit 0 when valid, 78 with every problem otherwise."""
    try:
        config = load_config(args.file)
    except ConfigError as err:
        return _print_problems(args.file, err)
    print(
        f"{args.file}: ok (station {config.station_id}, {len(config.brokers)} broker endpoint(s), "
        f"{len(config.help_points)} help point(s), {len(config.sensors)} sensor(s))"
    )
    return 0


def cmd_config_schema(args: argparse.Namespace) -> int:
    """Print the JSON Schema of the station config."""
    print(json.dumps(config_schema(), indent=2))
    return 0


def cmd_run(args: argparse.Namespace) -> int:
    """Run the daemon."""
    try:
        config = load_with_overrides(args.config, args.broker, args.store)
    except ConfigError as err:
        return _print_problems(args.config, err)
    from gateway.ops.install import permission_problems  # noqa: PLC0415

    tls = config.mqtt.tls
    secrets = {key: path for key, path in (
        ("mqtt.password_file", config.mqtt.password_file), ("mqtt.tls.key_file", tls.key_file),
    ) if path}
    trusted = {key: path for key, path in (
        ("mqtt.tls.ca_file", tls.ca_file), ("mqtt.tls.cert_file", tls.cert_file),
    ) if path}
    too_open = permission_problems(args.config, secrets, trusted)
    if too_open:
        return _print_problems(args.config, ConfigError(too_open))
    setup_logging(args.log_level)
    from gateway.daemon import Gateway  # noqa: PLC0415 - keep `check-config` light

    async def main() -> None:
        task = asyncio.current_task()
        assert task is not None
        loop = asyncio.get_running_loop()
        loop.add_signal_handler(signal.SIGTERM, task.cancel)
        log.info(
            "stationgw %s starting station=%s brokers=%s",
            __version__, config.station_id, ",".join(b.url for b in config.brokers),
        )
        for endpoint in config.brokers:
            if not endpoint.tls:
                log.log(
                    logging.INFO if endpoint.loopback else logging.WARNING,
                    "broker %s is plaintext: alerts and credentials are not encrypted%s",
                    endpoint.url, " (on this machine only)" if endpoint.loopback else "",
                )
        async with Gateway(config) as gateway:
            await gateway.run()

    try:
        asyncio.run(main())
    except (KeyboardInterrupt, asyncio.CancelledError):
        log.info("stopped")
    except GatewayError as err:
        log.critical("cannot run: %s", err)
        return 1
    return 0


def cmd_simulate(args: argparse.Namespace) -> int:
    """Drive a mock-mode daemon's help-point pins, or read its lamps."""
    from gateway.errors import SimulateError  # noqa: PLC0415
    from gateway.inputs.simulate import send  # noqa: PLC0415

    try:
        config = load_with_overrides(args.config, store=args.store)
    except ConfigError as err:
        return _print_problems(args.config, err)
    if args.action not in ("status",) and not args.help_point:
        print(f"stationgw simulate {args.action}: name the help point", file=sys.stderr)
        return 2
    request: dict[str, object] = {"cmd": args.action, "help_point": args.help_point}
    try:
        reply = send(config, request)
    except SimulateError as err:
        print(err, file=sys.stderr)
        return 1
    if not reply.get("ok"):
        print(f"refused: {reply.get('error')}", file=sys.stderr)
        return 1
    if args.action == "status":
        for hp, state in reply["lamps"].items():
            print(f"{hp}: {state}")
    elif args.action == "lamp":
        print(reply["lamp"])
    else:
        print(f"{args.action} {args.help_point}: lamp now {reply['lamp']}")
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    """Run the whole flow on this machine: Mosquitto, a simulated station, a dispatch view."""
    from gateway.ops.demo import run_demo  # noqa: PLC0415

    try:
        return asyncio.run(run_demo(args.interactive, args.hold, args.fleet))
    except KeyboardInterrupt:
        print("\ninterrupted: broker, daemon, hub and dispatch view stopped", file=sys.stderr)
        return 130


def cmd_status(args: argparse.Namespace) -> int:
    """Show the running daemon's health: links, outbox, faults, lamps (exit 0 ok, 1 faults,
    3 not running)."""
    from gateway.station.status import EXIT_NOT_RUNNING, render, status_path  # noqa: PLC0415

    try:
        config = load_with_overrides(args.config, store=args.store)
    except ConfigError as err:
        return _print_problems(args.config, err)
    path = status_path(config)
    try:
        report = json.loads(path.read_text())
        age = time.time() - path.stat().st_mtime
    except FileNotFoundError:
        print(f"station {config.station_id}: not running (no {path})")
        return EXIT_NOT_RUNNING
    except (OSError, json.JSONDecodeError) as exc:
        print(f"{path}: cannot read status: {exc}", file=sys.stderr)
        return EXIT_NOT_RUNNING
    if args.json:
        print(json.dumps(report, indent=2))
    text, code = render(report, age)
    if not args.json:
        print(text)
    return code


def cmd_selftest(args: argparse.Namespace) -> int:
    """Commission the station: lamp walk, a press on every help point, broker round trip,
    certificates, clock, disk and database; a pass/fail table and a JSON report. Run it with
    the daemon stopped."""
    from gateway.ops.selftest import run_selftest, table, write_report  # noqa: PLC0415

    try:
        config = load_with_overrides(args.config, args.broker, args.store)
    except ConfigError as err:
        return _print_problems(args.config, err)
    try:
        checks = asyncio.run(run_selftest(
            config, press_timeout_s=args.press_timeout, lamp_step_s=args.lamp_step,
            say=lambda text: print(text, flush=True),
        ))
    except GatewayError as err:
        print(f"selftest cannot run: {err}", file=sys.stderr)
        return 1
    print()
    print(table(checks))
    report = args.report or Path(
        f"stationgw-selftest-{config.station_id}-{time.strftime('%Y%m%d-%H%M%S')}.json"
    )
    write_report(report, config, checks)
    print(f"report: {report}")
    return 1 if any(c.outcome == "fail" for c in checks) else 0


def cmd_install(args: argparse.Namespace) -> int:
    """Set up this machine (or --root): user, /etc/stationgw, /var/lib/stationgw, the venv
    in /opt/stationgw and the systemd unit. Safe to run again."""
    from gateway.ops.install import Installer  # noqa: PLC0415

    installer = Installer(
        root=args.root, source=args.source, extras=args.extras, config_source=args.config
    )
    try:
        done = installer.install(with_venv=not args.no_venv)
    except (GatewayError, OSError) as err:
        print(f"install failed: {err}", file=sys.stderr)
        return 1
    for step in done or ["nothing to do: already installed"]:
        print(step)
    return 0


def cmd_uninstall(args: argparse.Namespace) -> int:
    """Remove the unit and the venv; keep config and data unless --purge."""
    from gateway.ops.install import Installer  # noqa: PLC0415

    try:
        done = Installer(root=args.root).uninstall(purge=args.purge)
    except (GatewayError, OSError) as err:
        print(f"uninstall failed: {err}", file=sys.stderr)
        return 1
    for step in done:
        print(step)
    return 0


def cmd_simulate_device(args: argparse.Namespace) -> int:
    """Run a simulated sensor board on a pseudo-terminal, at a stable path (--link) that a
    gateway's [[sensors]] port points to. Its options follow `--`; `-- --help` lists them."""
    from firmware_bridge.simulator import main as simulator  # noqa: PLC0415

    rest = args.options[1:] if args.options[:1] == ["--"] else args.options
    return simulator(rest)


OLDEST = ("event_id", "class", "kind", "wall_time", "attempts", "state", "last_error")
FAULT = ("wall_time", "code", "active", "message")


@dataclass(frozen=True)
class OutboxView:
    """What `stationgw outbox` shows: depth, the next row to send, the recent faults."""

    path: Path
    depth: Depth
    oldest: tuple[Any, ...] | None
    faults: list[tuple[Any, ...]]

    def json(self) -> str:
        return json.dumps({
            "depth": self.depth.by_class, "rows": self.depth.rows, "bytes": self.depth.bytes,
            "oldest_unsent": self.oldest and dict(zip(OLDEST, self.oldest, strict=True)),
            "faults": [dict(zip(FAULT, f, strict=True)) for f in self.faults],
        }, indent=2)

    def print(self) -> None:
        print(f"outbox {self.path}: {self.depth.rows} row(s), {self.depth.bytes} bytes")
        for cls, states in self.depth.by_class.items():
            detail = ", ".join(f"{n} {state}" for state, n in sorted(states.items())) or "empty"
            print(f"  {cls}: {detail}")
        if self.oldest is not None:
            event_id, cls, kind, wall_time, attempts, state, error = self.oldest
            print(
                f"next to send: {event_id} P{cls} {kind} age {time.time() - wall_time:.1f}s "
                f"attempts {attempts} state {state}" + (f" last error: {error}" if error else "")
            )
        print(f"recent faults ({len(self.faults)}):" if self.faults else "no faults recorded")
        for wall_time, code, active, message in self.faults:
            stamp = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(wall_time))
            print(f"  {stamp} {'RAISED ' if active else 'cleared'} {code}: {message}")


class _OutboxUnreadableError(GatewayError):
    """The outbox cannot be shown; the message says why (on stderr unless `to_stdout`)."""

    def __init__(self, message: str, *, to_stdout: bool = False) -> None:
        super().__init__(message)
        self.to_stdout = to_stdout


def _read_outbox(config: StationConfig, faults: int) -> OutboxView:
    path = config.store.path
    try:
        # While the daemon runs, its -wal is its own: never tidy it away.
        exists = check(path, tidy=not status_path(config).exists())
    except StoreDamagedError as exc:
        raise _OutboxUnreadableError(
            f"outbox {path} is damaged or not the gateway's: {exc.reason}\n  "
            + WHAT_HAPPENS.format(name=path.name)) from exc
    except (StoreError, OSError) as exc:
        raise _OutboxUnreadableError(f"cannot read outbox: {exc}") from exc
    if not exists:
        raise _OutboxUnreadableError(
            f"{path}: no outbox database yet (the daemon creates it on first start)",
            to_stdout=True)
    try:
        conn = connect(path, readonly=True)
    except StoreError as exc:
        raise _OutboxUnreadableError(f"cannot read outbox: {exc}") from exc
    try:
        return OutboxView(path, read_depth(conn), conn.execute(
            f"SELECT {', '.join(OLDEST)} FROM outbox ORDER BY class, seq LIMIT 1"  # noqa: S608
        ).fetchone(), conn.execute(
            f"SELECT {', '.join(FAULT)} FROM faults ORDER BY id DESC LIMIT ?",  # noqa: S608
            (faults,),
        ).fetchall())
    except sqlite3.Error as exc:
        raise _OutboxUnreadableError(f"{path}: cannot read outbox: {exc}") from exc
    finally:
        conn.close()


def cmd_outbox(args: argparse.Namespace) -> int:
    """Show the outbox: depth by class and state, the oldest unsent row, recent faults."""
    try:
        config = load_with_overrides(args.config, store=args.store)
    except ConfigError as err:
        return _print_problems(args.config, err)
    for one in kept_files(config.store.path):
        print(f"moved aside, kept for a technician: {one}", file=sys.stderr)
    try:
        view = _read_outbox(config, args.faults)
    except _OutboxUnreadableError as exc:
        print(exc, file=sys.stdout if exc.to_stdout else sys.stderr)
        return 1
    if args.json:
        print(view.json())
    else:
        view.print()
    return 0


def cmd_backup(args: argparse.Namespace) -> int:
    """Copy the outbox database to one file, safely while the daemon runs (SQLite's online
    backup), and check the copy with quick_check."""
    try:
        config = load_with_overrides(args.config, store=args.store)
    except ConfigError as err:
        return _print_problems(args.config, err)
    path = config.store.path
    if not path.exists():
        print(f"{path}: no outbox database yet (the daemon creates it on first start)",
              file=sys.stderr)
        return 1
    try:
        rows = backup(path, args.out)
    except StoreError as exc:
        print(f"backup failed: {exc}", file=sys.stderr)
        return 1
    print(f"backed up {rows} row(s) from {path} to {args.out}; quick_check ok")
    return 0


# ---------------------------------------------------------------------------- parser


def build_parser() -> argparse.ArgumentParser:
    """The `stationgw` argument parser."""
    parser = argparse.ArgumentParser(
        prog="stationgw",
        description="Station gateway: help points and platform sensors to prioritized "
        "crisis requests over MQTT.",
    )
    parser.add_argument("--version", action="version", version=f"stationgw {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    _add_daemon_commands(sub)
    _add_outbox_commands(sub)
    _add_commissioning_commands(sub)
    _add_simulation_commands(sub)

    # The dispatch side's commands; building their parsers imports only argparse.
    from dispatch.cli import add_dispatch, add_hub  # noqa: PLC0415

    add_dispatch(sub)
    add_hub(sub)
    return parser


def _add_daemon_commands(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """The daemon and its config."""
    p = sub.add_parser("run", help="run the daemon", description=cmd_run.__doc__)
    p.add_argument("--config", type=Path, required=True, help="station config (TOML)")
    p.add_argument("--broker", metavar="URL", help="use only this broker (mqtt://host:port)")
    p.add_argument("--store", type=Path, metavar="PATH", help="use this outbox database")
    p.add_argument("--log-level", default="INFO", choices=["DEBUG", "INFO", "WARNING"])
    p.set_defaults(func=cmd_run)

    p = sub.add_parser(
        "check-config", help="validate a station config", description=cmd_check_config.__doc__
    )
    p.add_argument("file", type=Path, help="station config (TOML)")
    p.set_defaults(func=cmd_check_config)

    p = sub.add_parser(
        "config-schema",
        help="print the config's JSON Schema",
        description=cmd_config_schema.__doc__,
    )
    p.set_defaults(func=cmd_config_schema)

    p = sub.add_parser("status", help="the running daemon's health", description=cmd_status.__doc__)
    p.add_argument("--config", type=Path, required=True, help="station config (TOML)")
    p.add_argument("--store", type=Path, metavar="PATH", help="the daemon's --store, if given")
    p.add_argument("--json", action="store_true", help="print the raw report")
    p.set_defaults(func=cmd_status)


def _add_outbox_commands(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """A technician's look at the outbox."""
    p = sub.add_parser("outbox", help="show the outbox", description=cmd_outbox.__doc__)
    p.add_argument("--config", type=Path, required=True, help="station config (TOML)")
    p.add_argument("--store", type=Path, metavar="PATH", help="read this outbox database")
    p.add_argument("--faults", type=int, default=10, help="how many recent faults to show")
    p.add_argument("--json", action="store_true", help="print JSON")
    p.set_defaults(func=cmd_outbox)

    p = sub.add_parser(
        "backup", help="copy the outbox to one file (safe while running)",
        description=cmd_backup.__doc__,
    )
    p.add_argument("--config", type=Path, required=True, help="station config (TOML)")
    p.add_argument("--store", type=Path, metavar="PATH", help="back up this outbox database")
    p.add_argument("--out", type=Path, required=True, metavar="PATH",
                   help="the backup file to write (replaced only by a checked copy)")
    p.set_defaults(func=cmd_backup)


def _add_commissioning_commands(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Setting a station up and proving that it works."""
    p = sub.add_parser("install", help="set up this machine", description=cmd_install.__doc__)
    p.add_argument("--root", type=Path, default=Path("/"), help="install into this root")
    p.add_argument("--config", type=Path, help="initial station config (default: the example)")
    p.add_argument("--extras", default="pi", help="package extras for the venv (default: pi)")
    p.add_argument("--source", type=Path, default=PACKAGE_ROOT,
                   help="checkout to install from (default: this one)")
    p.add_argument("--no-venv", action="store_true", help="skip the virtualenv step")
    p.set_defaults(func=cmd_install)

    p = sub.add_parser("uninstall", help="remove the service", description=cmd_uninstall.__doc__)
    p.add_argument("--root", type=Path, default=Path("/"), help="uninstall from this root")
    p.add_argument("--purge", action="store_true", help="also remove config, data and user")
    p.set_defaults(func=cmd_uninstall)

    p = sub.add_parser(
        "selftest", help="commission the station (daemon stopped)",
        description=cmd_selftest.__doc__,
    )
    p.add_argument("--config", type=Path, required=True, help="station config (TOML)")
    p.add_argument("--broker", metavar="URL", help="test against this broker instead")
    p.add_argument("--store", type=Path, metavar="PATH", help="check this outbox database")
    p.add_argument("--press-timeout", type=float, default=30.0, metavar="S",
                   help="seconds to wait for each help point's press (default 30)")
    p.add_argument("--lamp-step", type=float, default=1.0, metavar="S",
                   help="seconds per lamp state in the walk (default 1)")
    p.add_argument("--report", type=Path, metavar="PATH", help="where to write the JSON report")
    p.set_defaults(func=cmd_selftest)


def _add_simulation_commands(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """No Pi needed: simulated buttons and boards, and the demo."""
    p = sub.add_parser(
        "simulate", help="press simulated buttons (mock pins)", description=cmd_simulate.__doc__
    )
    p.add_argument(
        "action", choices=["press", "hold", "release", "stuck", "chatter", "lamp", "status"],
        help="press: tap; hold: past hold_time; stuck: press and leave; release; chatter: "
        "20 edges in 200 ms; lamp: print the lamp state; status: every lamp",
    )
    p.add_argument("help_point", nargs="?", help="help point id")
    p.add_argument("--config", type=Path, required=True, help="station config (TOML)")
    p.add_argument("--store", type=Path, metavar="PATH", help="the daemon's --store, if given")
    p.set_defaults(func=cmd_simulate)

    p = sub.add_parser(
        "simulate-device", help="a simulated sensor board on a pty",
        description=cmd_simulate_device.__doc__,
    )
    p.add_argument("options", nargs=argparse.REMAINDER,
                   help="simulator options, e.g. -- --link /tmp/by-id/usb-sim --device-id b1")
    p.set_defaults(func=cmd_simulate_device)

    p = sub.add_parser("demo", help="run the demo (no Pi needed)", description=cmd_demo.__doc__)
    p.add_argument("--interactive", action="store_true", help="press buttons from the keyboard")
    p.add_argument("--hold", action="store_true",
                   help="keep broker, daemon and hub up after the scene, until Ctrl-C")
    p.add_argument("--fleet", action="store_true",
                   help="then a short run of the fleet twin: a simulated metro of 20 stations, "
                   "3 of them real daemons, a week in 20 s (about 40 s more)")
    p.set_defaults(func=cmd_demo)


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the `stationgw` console script."""
    args = build_parser().parse_args(argv)
    func: Command = args.func
    return func(args)


if __name__ == "__main__":
    sys.exit(main())
