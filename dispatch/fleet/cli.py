"""`stationgw hub fleet`: run the simulated metro live into a broker and the hub.

gateway/ops/cli.py wires it in with `add_hub_actions(actions)` from `_add_hub`, as it does
`dispatch.analysis.cli`. Building the parser imports only this module and the package's
errors: the metro, paho, SQLAlchemy and pandas load when the command runs.
`python -m dispatch.fleet` runs the same command on its own.
"""

from __future__ import annotations

import argparse
import asyncio
import shutil
import signal
import sys
import tempfile
from collections.abc import Coroutine, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from dispatch.errors import FleetError

if TYPE_CHECKING:
    from dispatch.fleet.run import FleetResult

DEFAULT_DB = "sqlite:///stationgw-fleet.db"
HELP = "run the simulated metro live: real daemons and simulated stations into the hub"
DESCRIPTION = (
    "Run a simulated metro of --stations stations live for --duration seconds: --daemons "
    "of them are real gateway daemons on mock pins (pressed through their simulate "
    "sockets), the rest protocol-level simulated stations (own outbox seq, status with a "
    "Last Will, periodic health). Requests follow the history generator's weekly rhythm "
    "and planted hotspots (seed --seed) on a clock --speed times faster than real time "
    "(default 1008: a week in 10 minutes). The fleet starts Mosquitto (or uses --broker) and "
    "`stationgw hub run` on --db, acknowledges, assigns and resolves every request, then "
    "prints the hub's record: requests per station, the seq audit, the planted hotspots. "
    "Exit 0 when the hub holds every request resolved and the audit counts nothing lost.")


def add_hub_actions(actions: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add `fleet` to the `stationgw hub` action parsers."""
    parser = actions.add_parser("fleet", help=HELP, description=DESCRIPTION)
    add_arguments(parser)
    parser.set_defaults(func=run)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The fleet's options."""
    parser.add_argument("--db", default=DEFAULT_DB, metavar="URL",
                        help=f"the hub's database, empty: sqlite:///PATH (default {DEFAULT_DB})"
                        " or postgresql+psycopg://USER@HOST/DB")
    parser.add_argument("--broker", metavar="URL",
                        help="mqtt://HOST:PORT of a broker to use (default: start Mosquitto on "
                        "a free port)")
    parser.add_argument("--stations", type=int, default=500,
                        help="stations in the metro (default 500: five districts of the "
                        "simulated metro, 50 lines)")
    parser.add_argument("--daemons", type=int, default=50,
                        help="how many of them are real gateway daemons (default 50; each "
                        "takes about 35 MB)")
    parser.add_argument("--duration", type=float, default=600.0, metavar="S",
                        help="real seconds of requests (default 600)")
    parser.add_argument("--speed", type=float, metavar="X",
                        help="simulated seconds per real second (default 1008: a week in "
                        "10 minutes)")
    parser.add_argument("--seed", type=int, default=14,
                        help="seed of the schedule, the planted hotspots and the choice of "
                        "real daemons (default 14)")
    parser.add_argument("--rate", type=float, metavar="PER_DAY",
                        help="requests per station per simulated day on average (default 3)")
    parser.add_argument("--no-hotspots", action="store_true", help="plant no hotspots")
    parser.add_argument("--health-interval", type=float, default=30.0, metavar="S",
                        help="every station's health report interval (default 30)")
    parser.add_argument("--folder", type=Path, metavar="DIR",
                        help="keep the run's files here (the metro's GTFS feed, daemon "
                        "configs and logs, the hub's log; default: a temporary folder, "
                        "removed)")


def run(args: argparse.Namespace) -> int:
    """Run the fleet: 0 a clean run, 1 the hub's record is incomplete (or the run failed),
    2 a bad option or an unusable database, broker or folder, 130 interrupted."""
    from dispatch.fleet.run import FleetOptions, run_fleet  # noqa: PLC0415
    from dispatch.fleet.schedule import DEFAULT_SPEED  # noqa: PLC0415

    try:
        options = FleetOptions(
            stations=args.stations, daemons=args.daemons, duration_s=args.duration,
            speed=DEFAULT_SPEED if args.speed is None else args.speed, seed=args.seed,
            rate=3.0 if args.rate is None else args.rate, hotspots=not args.no_hotspots,
            health_interval_s=args.health_interval)
        folder = args.folder or Path(tempfile.mkdtemp(prefix="stationgw-fleet-"))
        try:
            folder.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise FleetError(f"--folder {folder}: {exc.strerror}: give a folder that can be "
                             "made, or leave --folder out") from exc
        try:
            result = asyncio.run(_interruptible(run_fleet(options, folder, args.db,
                                                          broker_url=args.broker)))
        finally:
            if args.folder is None:
                shutil.rmtree(folder, ignore_errors=True)
    except FleetError as exc:
        print(f"stationgw hub fleet: {exc}", file=sys.stderr)
        return 2
    except asyncio.CancelledError:
        print("stationgw hub fleet: interrupted; the stations, the hub and the broker it "
              "started are stopped", file=sys.stderr)
        return 130
    print_result(result, args.db)
    return 1 if result.problems else 0


async def _interruptible(run: Coroutine[Any, Any, FleetResult]) -> FleetResult:
    """`run`, cancelled by the first SIGINT or SIGTERM, so that the fleet stops everything
    it started (its children have their own sessions: a terminal's Ctrl-C reaches only the
    fleet). Later signals only say that it is stopping: asyncio's own second Ctrl-C would
    raise KeyboardInterrupt in the middle of that and leave the children running."""
    loop, task = asyncio.get_running_loop(), asyncio.current_task()
    assert task is not None
    stopping = False

    def stop() -> None:
        nonlocal stopping
        print("stationgw hub fleet: " + ("still stopping the stations, the hub and the broker"
                                         if stopping else "stopping"),
              file=sys.stderr, flush=True)
        if not stopping:
            stopping = True
            task.cancel()

    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop)
    try:
        return await run
    finally:
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.remove_signal_handler(sig)


def print_result(result: FleetResult, db_url: str) -> None:
    """What the run made and what the hub's database holds: requests, the seq audit, the
    planted hotspots, and any problem."""
    schedule, hub = result.schedule, result.hub
    counts = schedule.counts()
    print(f"{len(schedule.stations)} stations ({len(schedule.daemons)} real daemons), seed "
          f"{schedule.seed}, x{schedule.speed:g}: {len(result.sent)} of "
          f"{len(schedule.requests)} requests made in {result.elapsed_s:.0f} s")
    print(f"hub ({db_url}): {sum(hub.alerts.values())} alerts, {hub.resolved} resolved, "
          f"{hub.events} events; seq audit: {hub.lost} lost, {hub.lost_tail} missing at the "
          f"end; {hub.offline} stations offline after the stop")
    if result.overtaken:
        print(f"console: {result.overtaken} simulated requests answered by a dispatcher at the "
              "console, not the fleet")
    for spot in schedule.planted:
        got = [hub.alerts[s] for s in spot.stations]
        print(f"planted: {spot.band}, {spot.response}, x{spot.factor:g}: "
              + " ".join(f"{s}={n}" for s, n in zip(spot.stations, got, strict=True)))
    ordered = sorted(counts.values())
    if ordered:
        print(f"requests per station: median {ordered[len(ordered) // 2]}, max {ordered[-1]}")
    for problem in result.problems:
        print(f"PROBLEM: {problem}")


def main(argv: Sequence[str] | None = None) -> int:
    """`python -m dispatch.fleet ...`."""
    parser = argparse.ArgumentParser(prog="python -m dispatch.fleet", description=DESCRIPTION)
    add_arguments(parser)
    return run(parser.parse_args(argv))
