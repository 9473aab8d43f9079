"""Report speed: `stationgw hub report` over 100k, 1M and 10M stored requests, beside a raw
SQL GROUP BY over the same rows (station x hour-of-week counts) in the same run.

For each size, `--weeks` of alerts on the shipped simulated metro (116 stations, spread by
ridership and the weekly rhythm) go straight into a fresh SQLite hub database in bulk (one
alert row per request: the report reads only the alerts table, so rows of `events` behind
them would change nothing it does). Then, alternating, `--reps` times:

- raw: one `SELECT station, hour_of_week, COUNT(*) ... GROUP BY` over the period's rows
  with sqlite3 (the hour of the week in UTC, as integer arithmetic: the cheapest possible
  pass over the same rows);
- report: what `stationgw hub report --since` does (`make_report`): read the period's
  alerts into pandas; grids, service figures, concentration, Gi* and trends,
  recommendations; each table suppressed and written as CSV and Parquet in threads as soon
  as it is made; then the figures and report.html. The read is also timed alone, before.

Figures are medians. Targets: the report within 3x of the raw query, and its time growing no
faster than the data: the exponent b of time ~ rows^b between sizes at most 1 (linear), or
at most the raw query's own b where even that grows faster than linear on this machine
(from 1M to 10M it measured 1.03 on 2026-12-07).

    python -m bench.report_speed [--sizes 100k,1M,10M] [--reps 3] [--weeks 13] [--quick]
"""

from __future__ import annotations

import argparse
import itertools
import math
import sqlite3
import time
from pathlib import Path

import numpy as np
import pandas as pd

from bench.figures import Figure, median, print_table, write_json
from bench.machine import print_machine, workdir
from dispatch.analysis.metro import SHIPPED
from dispatch.analysis.network import Network, read_mapping, read_network
from dispatch.analysis.record import WEEK_S, load_requests, read_ridership
from dispatch.analysis.report import make_report
from dispatch.analysis.simulate import hourly_rhythm
from dispatch.hub.store import migrate, open_engine

UNTIL = 1_796_000_400.0  # a Monday 00:00 UTC: whole weeks
_CHUNK = 200_000
_MIX = {"P0": ("emergency_services", 0.12), "P1": ("crisis_team", 0.50),
        "P2": ("ambassador", 0.38)}
_TEAMS = ("emergency_services", "crisis_team", "co_response", "ambassador")
RAW_SQL = ("SELECT station, ((CAST(opened_at AS INTEGER) / 3600 + 72) % 168) AS hour_of_week,"
           " COUNT(*) FROM alerts WHERE opened_at >= ? AND opened_at < ?"
           " GROUP BY station, hour_of_week")


def size(text: str) -> int:
    """100k, 1M, 2.5M, 10000 -> rows."""
    text = text.strip().lower()
    scale = {"k": 1_000, "m": 1_000_000}.get(text[-1:], 1)
    return round(float(text.rstrip("km")) * scale)


def label(rows: int) -> str:
    """Rows as 100k / 1M / 10M."""
    return f"{rows / 1e6:g}M" if rows >= 1_000_000 else f"{rows / 1e3:g}k"


def write_alerts(path: Path, network: Network, ridership: pd.Series, *, rows: int,
                 weeks: int, seed: int = 14) -> float:
    """`rows` alerts over `weeks` before UNTIL into a new hub database; seconds taken."""
    started = time.monotonic()
    engine = open_engine(f"sqlite:///{path}")
    migrate(engine)
    engine.dispose()
    rng = np.random.default_rng(seed)
    ids = np.asarray(network.ids, dtype=object)
    share = ridership.reindex(network.ids).to_numpy(dtype=float)
    hours = weeks * 168
    since = UNTIL - weeks * WEEK_S
    # The weekly rhythm in UTC is close enough for timing: it only shapes the counts.
    rhythm = np.tile(hourly_rhythm(), weeks)
    classes = list(_MIX)
    conn = sqlite3.connect(path)
    conn.execute("PRAGMA journal_mode=OFF")  # a benchmark's scratch database: load fast
    conn.execute("PRAGMA synchronous=OFF")
    columns = ("station, alert_id, class, state, source, location, requested_response, "
               "opened_at, acknowledged_at, assigned_at, closed_at, team, eta_s, escalations, "
               "press_count, last_seq, updated_at")
    sql = f"INSERT INTO alerts ({columns}) VALUES ({', '.join('?' * 17)})"  # noqa: S608
    with conn:
        for start in range(0, rows, _CHUNK):
            n = min(_CHUNK, rows - start)
            station = ids[rng.choice(len(ids), size=n, p=share / share.sum())]
            hour = rng.choice(hours, size=n, p=rhythm / rhythm.sum())
            opened = np.round(since + 3600.0 * hour + rng.uniform(0, 3600, n), 3)
            cls = np.asarray(classes, dtype=object)[
                rng.choice(3, size=n, p=[_MIX[c][1] for c in classes])]
            response = pd.Series(cls).map({c: r for c, (r, _) in _MIX.items()}).to_numpy()
            acked = rng.random(n) >= 0.03
            ack = np.where(acked, opened + 45 * rng.lognormal(0, 0.7, n), np.nan)
            assign = np.where(acked, ack + 60 * rng.lognormal(0, 0.5, n), np.nan)
            close = np.where(acked, assign + 1500 * rng.lognormal(0, 0.6, n),
                             opened + 600 + 1200 * rng.random(n))
            team = np.asarray(_TEAMS, dtype=object)[rng.integers(4, size=n)]
            team[~acked] = None
            state = np.where(acked, "resolved", "cancelled")
            escalations = rng.poisson(0.3, n)
            location = np.asarray(["platform 1, north stairs", "platform 2, lifts",
                                   "concourse, ticket hall"], dtype=object)[
                rng.integers(3, size=n)]
            ack_l = [None if math.isnan(v) else v for v in ack.tolist()]
            assign_l = [None if math.isnan(v) else v for v in assign.tolist()]
            conn.executemany(sql, zip(
                station.tolist(), [f"{start + i:012x}" for i in range(n)], cls.tolist(),
                state.tolist(), ["hp-1"] * n, location.tolist(), response.tolist(),
                opened.tolist(), ack_l, assign_l, close.tolist(), team.tolist(),
                [None] * n, escalations.tolist(), [1] * n, [0] * n, close.tolist(),
                strict=True))
    conn.execute("ANALYZE")
    conn.close()
    return time.monotonic() - started


def raw_group_by(path: Path, since: float, until: float) -> tuple[float, int]:
    """Seconds for the raw GROUP BY (and the cells it returned)."""
    conn = sqlite3.connect(path)
    try:
        started = time.monotonic()
        cells = conn.execute(RAW_SQL, (since, until)).fetchall()
        return time.monotonic() - started, len(cells)
    finally:
        conn.close()


def report(path: Path, folder: Path, network: Network, since: float,
           until: float) -> dict[str, float]:
    """Seconds for the read alone, and for the report: `make_report`, what
    `stationgw hub report` runs (the analysis, which reads the rows itself, with each table
    written in threads as soon as it is made, and then the page)."""
    engine = open_engine(f"sqlite:///{path}")
    try:
        t0 = time.monotonic()
        rows = len(load_requests(engine, since, until, network.timezone, with_ids=False).frame)
        t1 = time.monotonic()  # (that frame is gone: at 10M rows it is gigabytes)
        analysis, _ = make_report(engine, network, folder, since=since, until=until,
                                  show_progress=False)
        t2 = time.monotonic()
    finally:
        engine.dispose()
    assert len(analysis.requests.frame) == rows
    return {"read": t1 - t0, "report": t2 - t1, "rows": float(rows)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="100k,1M",
                        help="stored requests per run, comma-separated (default 100k,1M; "
                        "the issue's figure adds 10M, which takes minutes)")
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--weeks", type=int, default=13)
    parser.add_argument("--quick", action="store_true", help="10k and 100k, one rep")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    sizes = [size(s) for s in args.sizes.split(",")]
    if args.quick:
        sizes, args.reps = [10_000, 100_000], 1
    print_machine()
    network = read_network(SHIPPED, read_mapping(SHIPPED / "stations.csv"))
    ridership = read_ridership(SHIPPED / "ridership.csv")
    since, until = UNTIL - args.weeks * WEEK_S, UNTIL
    results: dict[str, dict[str, list[float]]] = {}
    with workdir("report") as folder:
        for rows in sizes:
            path = folder / f"hub-{rows}.db"
            load_s = write_alerts(path, network, ridership, rows=rows, weeks=args.weeks)
            print(f"{label(rows)}: {rows} alerts written in {load_s:.1f} s "
                  f"({path.stat().st_size / 2**20:.0f} MiB)", flush=True)
            runs: dict[str, list[float]] = {"raw": [], "read": [], "report": []}
            for rep in range(args.reps):
                raw_s, cells = raw_group_by(path, since, until)
                runs["raw"].append(raw_s)
                parts = report(path, folder / f"out-{rows}-{rep}", network, since, until)
                assert parts["rows"] == rows, parts
                for key in ("read", "report"):
                    runs[key].append(parts[key])
                print(f"  rep {rep + 1}: raw {raw_s:.2f} s ({cells} cells), report "
                      f"{parts['report']:.2f} s (its read alone {parts['read']:.2f})",
                      flush=True)
            results[label(rows)] = runs
            path.unlink()
    figures = []
    for rows in sizes:
        runs = results[label(rows)]
        raw, total = median(runs["raw"]), median(runs["report"])
        figures.append(Figure(
            f"report, {label(rows)} stored requests", total, "s", raw,
            "raw SQL GROUP BY", target="<= 3x raw", met=total <= 3 * raw,
            note=f"of which the read of the rows alone {median(runs['read']):.2f} s"))
    for a, b in itertools.pairwise(sizes):
        grow = {k: math.log(median(results[label(b)][k]) / median(results[label(a)][k]))
                / math.log(b / a) for k in ("report", "raw")}
        figures.append(Figure(
            f"growth exponent {label(a)} -> {label(b)} (time ~ rows^b)", grow["report"], "",
            grow["raw"], "raw's", target="<= max(1, raw's)",
            met=grow["report"] <= max(1.0, grow["raw"])))
    print_table("Report speed", figures)
    write_json(args.json, "report_speed", figures, results)


if __name__ == "__main__":
    main()
