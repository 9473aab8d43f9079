"""The dispatch side's commands: `stationgw dispatch` (the console) and `stationgw hub`.

gateway/ops/cli.py adds them to its parser (`add_dispatch`, `add_hub`). Building the parser
imports only argparse; the console, SQLAlchemy and the web stack load when a command runs,
so `stationgw run` on a station never loads them.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import signal
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any, get_args

from gateway.core.commands import Team

log = logging.getLogger("gateway")


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


def _store(args: argparse.Namespace) -> Any:
    """The hub's store on `--db`, migrated to the newest schema."""
    from dispatch.hub.store import HubStore, migrate, open_engine  # noqa: PLC0415

    engine = open_engine(args.db)
    migrate(engine)
    return HubStore(engine)


def hub_operator(args: argparse.Namespace) -> int:
    """Add (or replace) a web console operator."""
    from dispatch.web.app import hash_password  # noqa: PLC0415

    try:
        password = args.password_file.read_text(encoding="utf-8").rstrip("\r\n")
    except OSError as exc:
        print(f"stationgw hub: --password-file: {exc}", file=sys.stderr)
        return 2
    if len(password) < 12:
        print("stationgw hub: the password must have at least 12 characters", file=sys.stderr)
        return 2
    _store(args).add_operator(args.username, hash_password(password))
    print(f"operator {args.username} can log in to the web console")
    return 0


def hub_cap(args: argparse.Namespace) -> int:
    """Every alert's lifecycle as CAP 1.2 messages, one file each."""
    from dispatch.hub.cap import lifecycle  # noqa: PLC0415

    store = _store(args)
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


def hub_audit(args: argparse.Namespace) -> int:
    """Per station, the seqs the hub never received; exit 1 if any."""
    gaps = _store(args).gaps()
    if args.json:
        print(json.dumps([g.__dict__ for g in gaps]))
    for gap in gaps if not args.json else []:
        lost = ", ".join(map(str, gap.missing[:20])) or "none"
        print(f"{gap.station}: seq {gap.first}..{gap.last}, {len(gap.missing)} lost "
              f"({lost}), {len(gap.dropped)} evicted or expired at the station")
    return 1 if any(g.missing for g in gaps) else 0


def hub_run(args: argparse.Namespace) -> int:
    """Subscribe to every station and record it; optionally serve the web console, the CAP
    feed, and push CAP to a CAD."""
    from dispatch.hub.capfeed import Push  # noqa: PLC0415

    access = _broker_access(args, "hub")
    if access is None:
        return 2
    try:
        web = _web_options(args)
        push = None if args.cap_push is None else Push(
            args.cap_push, _secret_file(args.cap_push_token_file, "--cap-push-token-file"))
        cap_token = _secret_file(args.cap_feed_token_file, "--cap-feed-token-file")
    except ValueError as exc:
        print(f"stationgw hub: {exc}", file=sys.stderr)
        return 2
    if args.min_cell < 1:
        print(f"stationgw hub: --min-cell {args.min_cell}: give 1 or more", file=sys.stderr)
        return 2
    from gateway.ops.cli import setup_logging  # noqa: PLC0415

    setup_logging(args.log_level)
    with contextlib.suppress(asyncio.CancelledError):
        asyncio.run(_serve_hub(args, _store(args), access, web=web, push=push,
                               cap_token=cap_token))
    return 0


async def _serve_hub(args: argparse.Namespace, store: Any, access: tuple[str, int, Any], *,
                     web: tuple[str, int, str] | None, push: Any, cap_token: str | None) -> None:
    """The hub's tasks in one TaskGroup, until SIGTERM or SIGINT."""
    from dispatch.hub.capfeed import issue_and_push  # noqa: PLC0415
    from dispatch.hub.commands import Commander  # noqa: PLC0415
    from dispatch.hub.service import run_hub  # noqa: PLC0415

    task = asyncio.current_task()
    assert task is not None
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, task.cancel)
    host, port, security = access
    commander, changed, cap_changed = Commander(args.prefix), asyncio.Event(), asyncio.Event()

    def committed() -> None:
        changed.set()
        cap_changed.set()

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
            tg.create_task(_web_console(args, store, commander, changed, web=web, push=push,
                                       cap_token=cap_token))


async def _web_console(args: argparse.Namespace, store: Any, commander: Any,
                       changed: asyncio.Event, *, web: tuple[str, int, str], push: Any,
                       cap_token: str | None) -> None:
    import uvicorn  # noqa: PLC0415

    from dispatch.analysis.console import HotspotSource  # noqa: PLC0415 (no pandas yet)
    from dispatch.web.app import ProxyLogin, create_app  # noqa: PLC0415

    app = create_app(
        store, commander, changed, secret=web[2], https_only=args.web_https_only,
        proxy=None if args.web_trusted_header is None else ProxyLogin(
            args.web_trusted_header, frozenset(args.web_trusted_proxy or ["127.0.0.1", "::1"])),
        cap_token=cap_token, cap_sender=args.cap_sender,
        silent_after_s=args.silent_after, cap_push=push is not None,
        hotspots=HotspotSource(gtfs=args.gtfs, stations_map=args.stations_map,
                               ridership=args.ridership, min_cell=args.min_cell))
    server = uvicorn.Server(uvicorn.Config(
        app, host=web[0], port=web[1], log_level="warning", lifespan="off",
        timeout_graceful_shutdown=2))  # open event streams end with the hub
    log.info("hub: web console at http://%s:%d/", web[0], web[1])
    await server.serve()


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


_HUB_ACTIONS: dict[str, Callable[[argparse.Namespace], int]] = {
    "run": hub_run, "audit": hub_audit, "cap": hub_cap, "operator": hub_operator,
}


def add_hub(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("hub", help="the dispatch hub: every station's record in a database",
                       description="The dispatch hub: a durable record of every station in a "
                       "database (`run`), and what it shows (`audit`, `cap`, `report`).")
    actions = p.add_subparsers(dest="hub_action", metavar="ACTION", required=True)
    for name, text in (("run", "subscribe to every station and record it"),
                       ("audit", "per station, the seqs the hub never received"),
                       ("cap", "every alert's lifecycle as CAP 1.2 messages, one file each"),
                       ("operator", "add (or replace) a web console operator")):
        a = actions.add_parser(name, help=text, description=text)
        a.set_defaults(func=_HUB_ACTIONS[name])
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
            a.add_argument("--gtfs", type=Path, metavar="DIR",
                           help="the agency's GTFS feed for the /hotspots page (default: the "
                           "shipped simulated metro)")
            a.add_argument("--stations-map", type=Path, metavar="FILE",
                           help="station ids to GTFS stops (docs/analysis.md)")
            a.add_argument("--ridership", type=Path, metavar="CSV",
                           help="weekly riders per station, to show rates per rider")
            a.add_argument("--min-cell", type=int, default=5, metavar="K",
                           help="suppress cells of fewer than K requests (default 5)")
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
    from dispatch.fleet.cli import add_hub_actions as add_fleet_actions  # noqa: PLC0415

    add_fleet_actions(actions)


def add_dispatch(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
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
                           choices=get_args(Team), help="the team sent")
            c.add_argument("--eta-min", type=float, metavar="M",
                           help="expected arrival in minutes")
        c.add_argument("--timeout", type=float, default=10.0, metavar="S",
                       help="seconds to wait for the reply (default 10)")
        _dispatch_options(c, stream=False, top=False)
