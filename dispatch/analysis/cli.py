"""`stationgw hub report` and `stationgw hub simulate-history`.

gateway/ops/cli.py wires them in with `add_hub_actions(actions)` from `_add_hub`. Building the
parser imports only this module and the package's errors: SQLAlchemy, pandas and the rest
load when a command runs, so `stationgw run` on a station never loads them (and a station
need not have them). `python -m dispatch.analysis` runs the same two commands on their own.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from dispatch.errors import AnalysisError

if TYPE_CHECKING:
    import pandas as pd

    from dispatch.analysis.network import Network

DEFAULT_DB = "sqlite:///stationgw-hub.db"
ACTIONS = {
    "report": "hotspot report: HTML, and every table as CSV and Parquet",
    "simulate-history": "write weeks of a simulated metro's history into the hub database",
}


def add_hub_actions(actions: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add `report` and `simulate-history` to the `stationgw hub` action parsers."""
    for name, text in ACTIONS.items():
        parser = actions.add_parser(name, help=text, description=_DESCRIPTIONS[name])
        _add_options(parser, name)
        parser.set_defaults(func=run, analysis_action=name)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the two commands as sub-commands of `parser` (for `python -m dispatch.analysis`)."""
    actions = parser.add_subparsers(dest="analysis_action", metavar="ACTION", required=True)
    for name, text in ACTIONS.items():
        _add_options(actions.add_parser(name, help=text, description=_DESCRIPTIONS[name]),
                     name)


def run(args: argparse.Namespace) -> int:
    """Run the chosen command: 0 done, 1 the database failed, 2 a bad option or file."""
    from sqlalchemy.exc import SQLAlchemyError  # noqa: PLC0415

    name = f"stationgw hub {args.analysis_action}"
    try:
        if args.analysis_action == "report":
            return _report(args)
        return _simulate(args)
    except AnalysisError as exc:
        print(f"{name}: {exc}", file=sys.stderr)
        return 2
    except SQLAlchemyError as exc:
        print(f"{name}: the database failed: {exc}", file=sys.stderr)
        return 1


def main(argv: Sequence[str] | None = None) -> int:
    """`python -m dispatch.analysis ACTION ...`."""
    parser = argparse.ArgumentParser(prog="python -m dispatch.analysis",
                                     description=__doc__)
    add_arguments(parser)
    return run(parser.parse_args(argv))


_DESCRIPTIONS = {
    "report": "Read the hub's alerts of a period and write DIR/report.html (heat maps, "
              "service figures, concentration, the Gi* hotspot map, recommendations) and "
              "DIR/tables/*.csv and *.parquet. Cells with fewer than --min-cell requests are "
              "suppressed in every export. Method: docs/analysis.md.",
    "simulate-history": "Write WEEKS of requests of the simulated metro (the shipped GTFS "
                        "feed, or --gtfs) into an empty hub database, with planted hotspots "
                        "drawn from --seed, and print them.",
}


def _add_options(parser: argparse.ArgumentParser, name: str) -> None:
    parser.add_argument("--db", default=DEFAULT_DB, metavar="URL",
                        help=f"database URL: sqlite:///PATH (default {DEFAULT_DB}) or "
                        "postgresql+psycopg://USER@HOST/DB")
    parser.add_argument("--gtfs", type=Path, metavar="DIR",
                        help="the agency's GTFS feed, a folder or zip (default: the "
                        "simulated metro shipped with the package)")
    parser.add_argument("--stations-map", type=Path, metavar="FILE",
                        help="CSV station,gtfs_stop_id mapping gateway station ids to GTFS "
                        "stops (default: the ids are GTFS station ids; with the shipped "
                        "metro, its own mapping)")
    parser.add_argument("--ridership", type=Path, metavar="CSV",
                        help="CSV station,riders (riders per week): normalise by ridership"
                        + (" (default: the shipped metro's)" if name == "simulate-history"
                           else ""))
    parser.add_argument("--until", type=float, metavar="UNIX_TIME",
                        help="end of the period (default: now)")
    if name == "report":
        parser.add_argument("--since", default="90d", metavar="LENGTH",
                            help="length of the period before --until: 90d, 12w, 36h "
                            "(default 90d)")
        parser.add_argument("--out", type=Path, required=True, metavar="DIR",
                            help="folder for report.html and tables/")
        parser.add_argument("--min-cell", type=int, default=5, metavar="K",
                            help="suppress cells with fewer than K requests (default 5)")
        parser.add_argument("--alpha", type=float, default=0.05,
                            help="false-positive budget of the hotspot test (default 0.05)")
        parser.add_argument("--no-parquet", action="store_true",
                            help="write CSV only")
    else:
        parser.add_argument("--weeks", type=int, default=13, help="weeks of history "
                            "(default 13)")
        parser.add_argument("--seed", type=int, default=14,
                            help="seed of the traffic and the planted hotspots (default 14)")
        parser.add_argument("--rate", type=float, metavar="PER_DAY",
                            help="requests per station per day on average (default 3)")
        parser.add_argument("--no-hotspots", action="store_true",
                            help="plant no hotspots (the null case)")


def _network(args: argparse.Namespace, *,
             default_ridership: bool) -> tuple[Network, pd.Series | None]:
    from dispatch.analysis.metro import SHIPPED  # noqa: PLC0415
    from dispatch.analysis.network import read_mapping, read_network  # noqa: PLC0415
    from dispatch.analysis.record import read_ridership, riders_of  # noqa: PLC0415

    gtfs = args.gtfs or SHIPPED
    mapping_file = args.stations_map or (SHIPPED / "stations.csv" if args.gtfs is None
                                         else None)
    mapping = read_mapping(mapping_file) if mapping_file is not None else None
    ridership_file = args.ridership or (SHIPPED / "ridership.csv"
                                        if default_ridership and args.gtfs is None else None)
    network = read_network(gtfs, mapping)
    if ridership_file is None:
        return network, None
    return network, riders_of(read_ridership(ridership_file), network.ids, str(ridership_file))


def _report(args: argparse.Namespace) -> int:
    from dispatch.analysis.hotspots import Settings  # noqa: PLC0415
    from dispatch.analysis.period import parse_since  # noqa: PLC0415
    from dispatch.analysis.report import make_report  # noqa: PLC0415
    from dispatch.hub.store import open_engine  # noqa: PLC0415

    if args.min_cell < 1:
        raise AnalysisError(f"--min-cell {args.min_cell}: give 1 or more")
    if not 0 < args.alpha < 1:
        raise AnalysisError(f"--alpha {args.alpha}: give a level between 0 and 1")
    network, ridership = _network(args, default_ridership=False)
    until = args.until if args.until is not None else time.time()
    analysis, written = make_report(
        open_engine(args.db), network, args.out, since=until - parse_since(args.since),
        until=until, ridership=ridership, settings=Settings(alpha=args.alpha), k=args.min_cell,
        parquet=not args.no_parquet)
    recs = analysis.tables["recommendations"]
    print(f"{len(analysis.requests.frame)} requests, {len(analysis.hotspots.hot)} hot cells in "
          f"{len(recs)} clusters; {written[0]} and {len(written) - 1} table files")
    return 0


def _simulate(args: argparse.Namespace) -> int:
    from dispatch.analysis.simulate import simulate_history  # noqa: PLC0415
    from dispatch.hub.store import open_engine  # noqa: PLC0415

    network, ridership = _network(args, default_ridership=True)
    if ridership is None:
        raise AnalysisError("--ridership: the simulation needs riders per station")
    from dispatch.analysis.simulate import DEFAULT_RATE  # noqa: PLC0415

    if args.rate is not None and not args.rate > 0:
        raise AnalysisError(f"--rate {args.rate}: give a positive number of requests per day")
    history = simulate_history(open_engine(args.db), network, ridership, weeks=args.weeks,
                               seed=args.seed, until=args.until,
                               rate=DEFAULT_RATE if args.rate is None else args.rate,
                               planted=() if args.no_hotspots else None)
    print(f"{history.requests} requests, {history.events} events over {args.weeks} weeks "
          f"(seed {args.seed}) in {args.db}")
    for spot in history.planted:
        print(f"planted: {spot.band}, {spot.response}, x{spot.factor:g} {spot.trend}: "
              f"{' '.join(spot.stations)}")
    return 0
