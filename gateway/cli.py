"""`stationgw`: the command line for operators and technicians."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import signal
import sqlite3
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, TextIO

from gateway import __version__
from gateway.config import (
    EX_CONFIG,
    StationConfig,
    config_schema,
    load_config,
    load_config_isolated,
)
from gateway.errors import ConfigError, GatewayError, StoreDamagedError, StoreError
from gateway.install import PACKAGE_ROOT
from gateway.outbox import backup, connect, read_depth
from gateway.status import status_path
from gateway.storefile import WHAT_HAPPENS, check, kept_files

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
    logging.getLogger("gateway.mqtt.paho").setLevel(logging.WARNING)


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
    from gateway.install import permission_problems  # noqa: PLC0415

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
    from gateway.simulate import SimulateError, send  # noqa: PLC0415

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
    from gateway.demo import run_demo  # noqa: PLC0415

    try:
        return asyncio.run(run_demo(args.interactive, args.hold))
    except KeyboardInterrupt:
        print("\ninterrupted: broker, daemon, hub and dispatch view stopped", file=sys.stderr)
        return 130


def cmd_status(args: argparse.Namespace) -> int:
    """Show the running daemon's health: links, outbox, faults, lamps (exit 0 ok, 1 faults,
    3 not running)."""
    from gateway.status import EXIT_NOT_RUNNING, render, status_path  # noqa: PLC0415

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
    from gateway.selftest import run_selftest, table, write_report  # noqa: PLC0415

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
    from gateway.install import Installer  # noqa: PLC0415

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
    from gateway.install import Installer  # noqa: PLC0415

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


def cmd_dispatch(args: argparse.Namespace) -> int:
    """The dispatch console: the live queue of every station's alerts (the default), a JSON
    stream for scripts (`watch --json`), or one command (`ack`, `assign`, `resolve`)."""
    from dispatch.console import (  # noqa: PLC0415 - keep the other commands light
        interactive,
        one_shot,
        watch_json,
    )

    access = _broker_access(args, "dispatch")
    if access is None:
        return 2
    host, port, security = access
    if args.action is None:
        return interactive(host, port, share=args.share, prefix=args.prefix,
                           client_id=args.client_id, security=security)
    if args.action == "watch":
        return watch_json(host, port, share=args.share, prefix=args.prefix,
                          client_id=args.client_id, security=security)
    eta_min = getattr(args, "eta_min", None)
    return one_shot(
        host, port, args.action, args.alert_id, args.station,
        team=getattr(args, "team", None),
        eta_s=None if eta_min is None else round(eta_min * 60),
        prefix=args.prefix, timeout=args.timeout, security=security,
    )


def _dispatch_options(p: argparse.ArgumentParser, *, stream: bool, top: bool) -> None:
    """--broker/--prefix (and --share/--client-id for the streams), before or after the
    action: sub-parsers default to SUPPRESS so they keep the top-level value."""

    def default(value: str | None) -> str | None:
        return value if top else argparse.SUPPRESS

    p.add_argument("--broker", metavar="URL", default=default("mqtt://127.0.0.1:1883"),
                   help="dispatch broker, mqtt://HOST[:PORT] or mqtts://HOST[:PORT] (TLS; "
                   "default mqtt://127.0.0.1:1883)")
    p.add_argument("--ca-file", metavar="FILE", default=default(None),
                   help="CA bundle that signed the broker's certificate (mqtts://; default: "
                   "the system's)")
    p.add_argument("--cert-file", metavar="FILE", default=default(None),
                   help="the console's client certificate (mTLS; CN dispatch with the "
                   "documented ACL)")
    p.add_argument("--key-file", metavar="FILE", default=default(None),
                   help="the client certificate's private key")
    p.add_argument("--username", metavar="USER", default=default(None),
                   help="broker user name, if it uses passwords")
    p.add_argument("--password-file", metavar="FILE", default=default(None),
                   help="file holding the broker password (never on the command line)")
    p.add_argument("--prefix", metavar="PREFIX", default=default("stationgw/v1"),
                   help="topic prefix of the gateways (their mqtt.topic_prefix)")
    if stream:
        p.add_argument("--share", metavar="GROUP", default=default(None),
                       help="join the MQTT 5 shared subscription $share/GROUP/...: consoles "
                       "in one group split the events between them")
        p.add_argument("--client-id", metavar="ID", default=default(None),
                       help="stable client id: the broker keeps this console's session for "
                       "a day, so nothing published while it is away is missed")


def _broker_access(args: argparse.Namespace, command: str) -> tuple[str, int, Any] | None:
    """(host, port, `Security`) from the dispatch-side broker options, or None after saying
    what is wrong."""
    from dispatch.console import (  # noqa: PLC0415 - dispatch side only
        ConsoleUsageError,
        broker_security,
        parse_broker_url,
    )

    try:
        host, port = parse_broker_url(args.broker)
        security = broker_security(
            args.broker, ca_file=args.ca_file, cert_file=args.cert_file,
            key_file=args.key_file, username=args.username, password_file=args.password_file,
        )
    except ConsoleUsageError as err:
        print(f"stationgw {command}: {err}", file=sys.stderr)
        return None
    return host, port, security


def cmd_hub(args: argparse.Namespace) -> int:
    """The dispatch hub: a durable record of every station in a database (`run`), and what
    it shows (`audit`: seqs never received, alerts and their times)."""
    from dispatch.hub.service import run_hub  # noqa: PLC0415
    from dispatch.hub.store import HubStore, migrate, open_engine  # noqa: PLC0415

    engine = open_engine(args.db)
    migrate(engine)
    store = HubStore(engine)
    if args.hub_action == "operator":
        from dispatch.web.app import hash_password  # noqa: PLC0415

        try:
            password = args.password_file.read_text(encoding="utf-8").rstrip("\r\n")
        except OSError as exc:
            print(f"stationgw hub: --password-file: {exc}", file=sys.stderr)
            return 2
        if len(password) < 12:
            print("stationgw hub: the password must have at least 12 characters",
                  file=sys.stderr)
            return 2
        store.add_operator(args.username, hash_password(password))
        print(f"operator {args.username} can log in to the web console")
        return 0
    if args.hub_action == "cap":
        from dispatch.hub.cap import lifecycle  # noqa: PLC0415

        args.out.mkdir(parents=True, exist_ok=True)
        written = 0
        for alert in store.alerts():
            history = store.history(alert["station"], alert["alert_id"])
            for message in lifecycle(alert, history, sender=args.sender,
                                     status="Test" if args.test else "Actual"):
                (args.out / f"{message.identifier}.xml").write_bytes(message.xml)
                written += 1
        print(f"{written} CAP 1.2 message(s) in {args.out}")
        return 0
    if args.hub_action == "audit":
        gaps = store.gaps()
        if args.json:
            print(json.dumps([g.__dict__ for g in gaps]))
        for gap in gaps if not args.json else []:
            lost = ", ".join(map(str, gap.missing[:20])) or "none"
            print(f"{gap.station}: seq {gap.first}..{gap.last}, {len(gap.missing)} lost "
                  f"({lost}), {len(gap.dropped)} evicted or expired at the station")
        return 1 if any(g.missing for g in gaps) else 0
    access = _broker_access(args, "hub")
    if access is None:
        return 2
    host, port, security = access
    setup_logging(args.log_level)

    from dispatch.hub.capfeed import Push, issue_and_push  # noqa: PLC0415
    from dispatch.hub.commands import Commander  # noqa: PLC0415
    from dispatch.web.app import ProxyLogin  # noqa: PLC0415

    commander, changed = Commander(args.prefix), asyncio.Event()
    try:
        web = _web_options(args)
        push = None if args.cap_push is None else Push(
            args.cap_push, _secret_file(args.cap_push_token_file, "--cap-push-token-file"))
        cap_token = _secret_file(args.cap_feed_token_file, "--cap-feed-token-file")
    except ValueError as exc:
        print(f"stationgw hub: {exc}", file=sys.stderr)
        return 2
    cap_changed = asyncio.Event()

    def committed() -> None:
        changed.set()
        cap_changed.set()

    async def main() -> None:
        task = asyncio.current_task()
        assert task is not None
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, task.cancel)
        async with asyncio.TaskGroup() as tg:
            tg.create_task(run_hub(
                store, host, port, prefix=args.prefix,
                client_id=args.client_id or "stationgw-hub", share=args.share,
                security=security, on_state=lambda text: log.info("hub: %s", text),
                commander=commander, on_commit=committed))
            tg.create_task(issue_and_push(
                store, cap_changed, sender=args.cap_sender,
                status="Test" if args.cap_test else "Actual", push=push,
                on_state=lambda text: log.warning("hub: %s", text)))
            if web is not None:
                import uvicorn  # noqa: PLC0415

                from dispatch.web.app import create_app  # noqa: PLC0415

                app = create_app(
                    store, commander, changed, secret=web[2], https_only=args.web_https_only,
                    proxy=None if args.web_trusted_header is None else ProxyLogin(
                        args.web_trusted_header,
                        frozenset(args.web_trusted_proxy or ["127.0.0.1", "::1"])),
                    cap_token=cap_token, cap_sender=args.cap_sender,
                    silent_after_s=args.silent_after, cap_push=push is not None)
                server = uvicorn.Server(uvicorn.Config(
                    app, host=web[0], port=web[1], log_level="warning", lifespan="off",
                    timeout_graceful_shutdown=2))  # open event streams end with the hub
                log.info("hub: web console at http://%s:%d/", web[0], web[1])
                tg.create_task(server.serve())

    with contextlib.suppress(asyncio.CancelledError):
        asyncio.run(main())
    return 0


def _secret_file(path: Path | None, option: str) -> str | None:
    """A token read from a file (None without the option); ValueError names the fix."""
    if path is None:
        return None
    try:
        token = path.read_text(encoding="utf-8").strip()
    except OSError as exc:
        raise ValueError(f"{option}: cannot read it: {exc.strerror or exc}") from exc
    if len(token) < 16:
        raise ValueError(f"{option}: the token must have 16 or more characters "
                         "(e.g. `openssl rand -hex 32 > FILE`)")
    return token


def _web_options(args: argparse.Namespace) -> tuple[str, int, str] | None:
    """`--web HOST:PORT` and its secret, or None without --web; ValueError names the fix."""
    if args.web is None:
        return None
    try:
        web_host, _, web_port = args.web.rpartition(":")
        port = int(web_port)
    except ValueError:
        raise ValueError(f"--web {args.web!r}: give HOST:PORT, e.g. 127.0.0.1:8080") from None
    secret = _secret_file(args.web_secret_file, "--web-secret-file") or ""
    if len(secret) < 32:
        raise ValueError("--web needs --web-secret-file, a file of 32 or more random "
                         "characters (e.g. `openssl rand -hex 32 > FILE`)")
    return web_host or "127.0.0.1", port, secret


def _add_hub(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("hub", help="the dispatch hub: every station's record in a database",
                       description=cmd_hub.__doc__)
    p.set_defaults(func=cmd_hub)
    actions = p.add_subparsers(dest="hub_action", metavar="ACTION", required=True)
    for name, text in (("run", "subscribe to every station and record it"),
                       ("audit", "per station, the seqs the hub never received"),
                       ("cap", "every alert's lifecycle as CAP 1.2 messages, one file each"),
                       ("operator", "add (or replace) a web console operator")):
        a = actions.add_parser(name, help=text, description=text)
        a.add_argument("--db", default="sqlite:///stationgw-hub.db", metavar="URL",
                       help="database URL: sqlite:///PATH (default sqlite:///stationgw-hub.db)"
                       " or postgresql+psycopg://USER@HOST/DB")
        if name == "run":
            _dispatch_options(a, stream=True, top=True)
            a.add_argument("--log-level", default="INFO",
                           choices=["DEBUG", "INFO", "WARNING", "ERROR"])
            a.add_argument("--web", metavar="HOST:PORT",
                           help="serve the dispatchers' web console here")
            a.add_argument("--web-secret-file", type=Path, metavar="FILE",
                           help="random text that signs the console's session cookies")
            a.add_argument("--web-https-only", action="store_true",
                           help="cookies only over HTTPS (behind a TLS reverse proxy)")
            a.add_argument("--web-trusted-header", metavar="NAME",
                           help="log in operators named in this header by a reverse proxy "
                           "that authenticated them (e.g. X-Remote-User)")
            a.add_argument("--web-trusted-proxy", action="append", metavar="ADDR",
                           help="address the trusted proxy connects from (repeatable; "
                           "default 127.0.0.1 and ::1)")
            a.add_argument("--silent-after", type=float, default=90.0, metavar="S",
                           help="flag a station not heard from for S seconds (default 90: "
                           "three of the gateways' default 30 s health reports)")
            a.add_argument("--cap-sender", default="stationgw-hub@localhost",
                           help="the CAP sender (no spaces or commas)")
            a.add_argument("--cap-test", action="store_true",
                           help="CAP status Test: the traffic is a test or the demo")
            a.add_argument("--cap-push", metavar="URL",
                           help="POST each CAP message to this CAD endpoint, retried "
                           "from a queue in the database until it answers 2xx")
            a.add_argument("--cap-push-token-file", type=Path, metavar="FILE",
                           help="bearer token sent with each push")
            a.add_argument("--cap-feed-token-file", type=Path, metavar="FILE",
                           help="bearer token a CAD polls /cap/feed with (operators who "
                           "logged in may read it too)")
        elif name == "operator":
            a.add_argument("username", help="the operator's log-in name")
            a.add_argument("--password-file", type=Path, required=True,
                           help="file holding the password (12 characters or more)")
        elif name == "audit":
            a.add_argument("--json", action="store_true", help="one JSON array")
        else:
            a.add_argument("--out", type=Path, required=True, metavar="DIR",
                           help="folder for the messages (IDENTIFIER.xml)")
            a.add_argument("--sender", default="stationgw-hub@localhost",
                           help="the CAP sender (no spaces or commas)")
            a.add_argument("--test", action="store_true",
                           help="status Test: the traffic is a test or the demo")
    # Imports only argparse and dispatch.analysis's errors; pandas and SQLAlchemy load
    # when the command runs (tests/test_analysis.py checks this).
    from dispatch.analysis.cli import add_hub_actions  # noqa: PLC0415

    add_hub_actions(actions)


def _add_dispatch(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser(
        "dispatch", help="the dispatch console: live queue, JSON stream, one-shot commands",
        description=cmd_dispatch.__doc__,
    )
    _dispatch_options(p, stream=True, top=True)
    p.set_defaults(func=cmd_dispatch, action=None)
    actions = p.add_subparsers(dest="action", metavar="ACTION")
    w = actions.add_parser(
        "watch", help="print every new event once, as one JSON line, for scripts",
        description="One JSON line per new event (schema stationgw/event/1) on stdout, "
        "flushed as it comes; re-sends are printed once. Runs until SIGINT/SIGTERM, stdout "
        "closes, or stdin reaches EOF when it is a pipe. Status goes to stderr.",
    )
    w.add_argument("--json", action="store_true", required=True,
                   help="one JSON object per line (the only format)")
    _dispatch_options(w, stream=True, top=False)
    for name, verb in (("ack", "acknowledge"), ("assign", "assign a team to"),
                       ("resolve", "resolve")):
        c = actions.add_parser(
            name, help=f"{verb} an alert and wait for the station's reply",
            description=f"{verb.capitalize()} an alert, then wait for the gateway's reply. "
            "Exit 0 applied, 1 rejected (the reason is printed), 2 no reply in time.",
        )
        c.add_argument("alert_id", metavar="ALERT_ID", help="body.alert_id of the alert")
        c.add_argument("--station", required=True,
                       help="the station that raised it (events carry it as `station`)")
        if name == "assign":
            c.add_argument("--team", required=True,
                           choices=["crisis_team", "co_response", "ambassador",
                                    "emergency_services"], help="the team sent")
            c.add_argument("--eta-min", type=float, metavar="M",
                           help="expected arrival in minutes")
        c.add_argument("--timeout", type=float, default=10.0, metavar="S",
                       help="seconds to wait for the reply (default 10)")
        _dispatch_options(c, stream=False, top=False)


def cmd_outbox(args: argparse.Namespace) -> int:
    """Show the outbox: depth by class and state, the oldest unsent row, recent faults."""
    try:
        config = load_with_overrides(args.config, store=args.store)
    except ConfigError as err:
        return _print_problems(args.config, err)
    path = config.store.path
    kept = kept_files(path)
    for one in kept:
        print(f"moved aside, kept for a technician: {one}", file=sys.stderr)
    try:
        # While the daemon runs, its -wal is its own: never tidy it away.
        exists = check(path, tidy=not status_path(config).exists())
    except StoreDamagedError as exc:
        print(f"outbox {path} is damaged or not the gateway's: {exc.reason}\n  "
              + WHAT_HAPPENS.format(name=path.name), file=sys.stderr)
        return 1
    except (StoreError, OSError) as exc:
        print(f"cannot read outbox: {exc}", file=sys.stderr)
        return 1
    if not exists:
        print(f"{path}: no outbox database yet (the daemon creates it on first start)")
        return 1
    try:
        conn = connect(path, readonly=True)
    except StoreError as exc:
        print(f"cannot read outbox: {exc}", file=sys.stderr)
        return 1
    try:
        depth = read_depth(conn)
        oldest = conn.execute(
            "SELECT event_id, class, kind, wall_time, attempts, state, last_error FROM outbox "
            "ORDER BY class, seq LIMIT 1"
        ).fetchone()
        faults = conn.execute(
            "SELECT wall_time, code, active, message FROM faults ORDER BY id DESC LIMIT ?",
            (args.faults,),
        ).fetchall()
    except sqlite3.Error as exc:
        print(f"{path}: cannot read outbox: {exc}", file=sys.stderr)
        return 1
    finally:
        conn.close()
    if args.json:
        print(json.dumps({"depth": depth.by_class, "rows": depth.rows, "bytes": depth.bytes,
                          "oldest_unsent": oldest and dict(zip(
                              ("event_id", "class", "kind", "wall_time", "attempts", "state",
                               "last_error"), oldest, strict=True)),
                          "faults": [dict(zip(("wall_time", "code", "active", "message"), f,
                                              strict=True)) for f in faults]}, indent=2))
        return 0
    print(f"outbox {path}: {depth.rows} row(s), {depth.bytes} bytes")
    for cls, states in depth.by_class.items():
        detail = ", ".join(f"{n} {state}" for state, n in sorted(states.items())) or "empty"
        print(f"  {cls}: {detail}")
    if oldest is not None:
        event_id, cls, kind, wall_time, attempts, state, error = oldest
        print(
            f"next to send: {event_id} P{cls} {kind} age {time.time() - wall_time:.1f}s "
            f"attempts {attempts} state {state}" + (f" last error: {error}" if error else "")
        )
    print(f"recent faults ({len(faults)}):" if faults else "no faults recorded")
    for wall_time, code, active, message in faults:
        stamp = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(wall_time))
        print(f"  {stamp} {'RAISED ' if active else 'cleared'} {code}: {message}")
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

    p = sub.add_parser("demo", help="run the demo (no Pi needed)", description=cmd_demo.__doc__)
    p.add_argument("--interactive", action="store_true", help="press buttons from the keyboard")
    p.add_argument("--hold", action="store_true",
                   help="keep broker, daemon and hub up after the scene, until Ctrl-C")
    p.set_defaults(func=cmd_demo)

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

    p = sub.add_parser("status", help="the running daemon's health", description=cmd_status.__doc__)
    p.add_argument("--config", type=Path, required=True, help="station config (TOML)")
    p.add_argument("--store", type=Path, metavar="PATH", help="the daemon's --store, if given")
    p.add_argument("--json", action="store_true", help="print the raw report")
    p.set_defaults(func=cmd_status)

    p = sub.add_parser(
        "simulate-device", help="a simulated sensor board on a pty",
        description=cmd_simulate_device.__doc__,
    )
    p.add_argument("options", nargs=argparse.REMAINDER,
                   help="simulator options, e.g. -- --link /tmp/by-id/usb-sim --device-id b1")
    p.set_defaults(func=cmd_simulate_device)

    _add_dispatch(sub)
    _add_hub(sub)

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
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the `stationgw` console script."""
    args = build_parser().parse_args(argv)
    func: Command = args.func
    return func(args)


if __name__ == "__main__":
    sys.exit(main())
