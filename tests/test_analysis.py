"""Hotspot analysis on the simulated metro: it finds the planted hotspots, flags nothing in a
metro without them, suppresses small cells in every export, and writes a report a planner
can read. The history goes through the hub's real schema (SQLite here, PostgreSQL too)."""

from __future__ import annotations

import csv
import filecmp
import html.parser
import json
import os
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import plotly.graph_objects as go
import pyarrow.parquet as pq
import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st
from selenium.webdriver.support.ui import WebDriverWait
from sqlalchemy import Engine, func, select

from dispatch.analysis.cli import main
from dispatch.analysis.grids import service
from dispatch.analysis.hotspots import DEFAULTS, band_values, find_hotspots, flag
from dispatch.analysis.metro import SHIPPED, write_metro
from dispatch.analysis.network import Network, read_mapping, read_network
from dispatch.analysis.privacy import suppress
from dispatch.analysis.record import (
    BANDS,
    WEEK_S,
    load_requests,
    parse_since,
    read_ridership,
)
from dispatch.analysis.report import analyse, make_report, render, write_report
from dispatch.analysis.simulate import (
    DEFAULT_RATE,
    History,
    hourly_rhythm,
    simulate_history,
)
from dispatch.errors import AnalysisError, InputError, NetworkError
from dispatch.hub.schema import alerts, events
from dispatch.hub.store import HubStore, migrate, open_engine
from gateway.testing.browser import chromium
from gateway.testing.disk import SmallDisk, can_mount
from gateway.testing.postgres import PostgreSQL
from tests.helpers import DAEMON_MODULES

UNTIL = 1_796_000_400.0  # a Monday 00:00 UTC, so the weeks are whole
WEEKS = 12
SEED = 14


@pytest.fixture(scope="module")
def network() -> Network:
    return read_network(SHIPPED, read_mapping(SHIPPED / "stations.csv"))


@pytest.fixture(scope="module")
def ridership() -> pd.Series:
    return read_ridership(SHIPPED / "ridership.csv")


def _simulated(folder: Path, network: Network, ridership: pd.Series, *,
               null: bool) -> Iterator[tuple[Engine, History]]:
    engine = open_engine(f"sqlite:///{folder / 'hub.db'}")
    # The null case needs no trend to find: fewer weeks keep the test file fast.
    history = simulate_history(engine, network, ridership, weeks=8 if null else WEEKS,
                               seed=SEED, until=UNTIL, planted=() if null else None)
    yield engine, history
    engine.dispose()


@pytest.fixture(scope="module")
def planted(tmp_path_factory: pytest.TempPathFactory, network: Network,
            ridership: pd.Series) -> Iterator[tuple[Engine, History]]:
    yield from _simulated(tmp_path_factory.mktemp("planted"), network, ridership, null=False)


@pytest.fixture(scope="module")
def null(tmp_path_factory: pytest.TempPathFactory, network: Network,
         ridership: pd.Series) -> Iterator[tuple[Engine, History]]:
    yield from _simulated(tmp_path_factory.mktemp("null"), network, ridership, null=True)


# --------------------------------------------------------------------------- the network

def test_the_shipped_metro_is_the_generators_output(tmp_path: Path) -> None:
    write_metro(tmp_path)
    names = sorted(p.name for p in SHIPPED.iterdir())
    assert names == sorted(p.name for p in tmp_path.iterdir())
    _, mismatch, errors = filecmp.cmpfiles(SHIPPED, tmp_path, names, shallow=False)
    assert not mismatch and not errors, "regenerate dispatch/analysis/data/metro"


def test_network_from_gtfs_joins_lines_at_transfers(network: Network) -> None:
    assert len(network.lines) == 10
    assert 100 <= len(network.ids) <= 200
    assert network.timezone == "Europe/Zurich"
    for line in network.lines:  # neighbours on a line
        for a, b in zip(line.stations, line.stations[1:], strict=False):
            assert network.graph.has_edge(a, b), (line.name, a, b)
    on_lines = {s: sum(s in line.stations for line in network.lines) for s in network.ids}
    transfer = [s for s, n in on_lines.items() if n >= 2]
    assert transfer, "lines share stations"
    import networkx as nx

    assert nx.is_connected(network.graph), "transfers join every line into one network"
    # A walking transfer (transfers.txt) between two stations no line links is an edge too.
    with (SHIPPED / "transfers.txt").open() as rows:
        walk = next(csv.DictReader(rows))
    gtfs_to_station = {g: s for s, g in network.stations["gtfs_id"].items()}
    assert network.graph.has_edge(gtfs_to_station[walk["from_stop_id"]],
                                  gtfs_to_station[walk["to_stop_id"]])
    weights = network.weights()
    assert weights.n == len(network.ids)
    assert sorted(weights.neighbors[transfer[0]]) == sorted(network.graph.neighbors(transfer[0]))


def test_mapping_file_errors_name_the_line_and_the_fix(tmp_path: Path) -> None:
    bad = tmp_path / "map.csv"
    bad.write_text("station,gtfs_stop_id\nold-quay,S001\nold-quay,S002\n")
    with pytest.raises(NetworkError, match=r"map.csv:3: station 'old-quay' is mapped twice"):
        read_mapping(bad)
    bad.write_text("gateway,stop\n")
    with pytest.raises(NetworkError, match="needs the header station,gtfs_stop_id"):
        read_mapping(bad)
    bad.write_text("station,gtfs_stop_id\nnowhere,S999\n")
    with pytest.raises(NetworkError, match="no such stop"):
        read_network(SHIPPED, read_mapping(bad))
    # A platform's stop id maps to its parent station.
    bad.write_text("station,gtfs_stop_id\nfirst,S001-M1\n")
    assert read_network(SHIPPED, read_mapping(bad)).ids == ["first"]


def test_ridership_and_period_inputs(tmp_path: Path) -> None:
    path = tmp_path / "riders.csv"
    path.write_text("station,riders\na,100\nb,-3\n")
    with pytest.raises(InputError, match=r"riders\.csv:3"):
        read_ridership(path)
    assert parse_since("90d") == 90 * 86400
    assert parse_since("12w") == 12 * 7 * 86400
    with pytest.raises(InputError, match="90d, 12w or 36h"):
        parse_since("3 months")


@settings(max_examples=25, deadline=None)
@given(dropped=st.sets(st.integers(0, 115), min_size=1, max_size=8),
       bad=st.sampled_from([None, 0.0, -3.0, float("nan"), float("inf")]))
def test_a_ridership_without_a_stations_riders_is_refused(
        network: Network, ridership: pd.Series, dropped: set[int], bad: float | None) -> None:
    """A station missing from the ridership (or, given in Python, with riders that are no
    positive number) is named, not a rate of NaN: one such station turned every band's
    standard scores to 0, and the report said there were no hotspots."""
    names = [network.ids[i] for i in sorted(dropped)]
    partial = ridership.drop(names) if bad is None else ridership.copy()
    if bad is not None:
        partial[names] = bad
    with pytest.raises(InputError, match=f"stations {names[0]}") as raised:
        analyse(open_engine("sqlite://"), network, since=UNTIL - WEEK_S, until=UNTIL,
                ridership=partial)
    assert "leave --ridership out" in str(raised.value)


def test_the_report_refuses_a_ridership_file_that_misses_a_station(
        planted: tuple[Engine, History], tmp_path: Path,
        capsys: pytest.CaptureFixture[str]) -> None:
    engine, _ = planted
    riders = tmp_path / "riders.csv"
    lines = (SHIPPED / "ridership.csv").read_text(encoding="utf-8").splitlines()
    riders.write_text("\n".join(line for line in lines if not line.startswith("forest-bank,"))
                      + "\n", encoding="utf-8")
    out = tmp_path / "report"
    assert main(["report", "--db", str(engine.url), "--since", "4w", "--until", str(UNTIL),
                 "--out", str(out), "--ridership", str(riders)]) == 2
    assert f"{riders} has no positive number of riders for stations forest-bank" in (
        capsys.readouterr().err)
    assert not out.exists()  # refused before anything was made


# -------------------------------------------------------------------------- correctness

def test_finds_the_planted_hotspots(planted: tuple[Engine, History], network: Network,
                                    ridership: pd.Series) -> None:
    engine, history = planted
    requests = load_requests(engine, history.since, history.until, network.timezone)
    found = find_hotspots(requests, network, ridership)
    truth, hot = history.cells, found.hot
    recall = len(truth & hot) / len(truth)
    precision = len(truth & hot) / max(1, len(hot))
    print(f"planted {len(truth)} cells, flagged {len(hot)}: recall {recall:.3f}, "
          f"precision {precision:.3f}")
    assert len(history.planted) == 6 and len(truth) >= 15
    assert recall >= 0.9, sorted(truth - hot)
    assert precision >= 0.8, sorted(hot - truth)
    # Each planted site's trend is named as planted (by most of its flagged stations).
    cells = found.cells.set_index(["station", "band"])
    for spot in history.planted:
        if spot.trend == "persistent":
            continue
        named = [cells.at[(s, spot.band), "trend"] for s in spot.stations
                 if (s, spot.band) in hot]
        assert named.count(spot.trend) > len(named) / 2, (spot, named)


def test_a_metro_without_hotspots_flags_none(null: tuple[Engine, History], network: Network,
                                             ridership: pd.Series) -> None:
    engine, history = null
    assert history.planted == () and history.requests > 10_000
    requests = load_requests(engine, history.since, history.until, network.timezone)
    assert find_hotspots(requests, network, ridership).hot == set()


def test_false_positive_rate_under_no_hotspots(network: Network,
                                               ridership: pd.Series) -> None:
    """The stated rate: with no hotspots, one run flags any cell with a chance of at most
    alpha. Checked over 100 independent null metros (Poisson counts at the simulator's
    rates), for the whole-period family (alpha/2) that runs on every report."""
    share = (ridership.reindex(network.ids) / ridership.mean()).to_numpy()
    how = np.arange(168)
    rhythm = hourly_rhythm()
    per_band = np.array([rhythm[[h for h in how if (h // 24) in b.days
                                 and b.start <= h % 24 < b.end]].sum() for b in BANDS])
    expected = DEFAULT_RATE / 24 * WEEKS * np.outer(share, per_band)
    rng = np.random.default_rng(2026)
    weights, runs, flagged = network.weights(), 100, 0
    for _ in range(runs):
        counts = pd.DataFrame(rng.poisson(expected), index=network.ids,
                              columns=[b.name for b in BANDS])
        cells = flag(band_values(counts, WEEKS, ridership), weights, DEFAULTS)
        flagged += bool(cells["hot"].any())
    print(f"{flagged} of {runs} null metros flagged a cell")
    assert flagged / runs <= DEFAULTS.alpha, f"{flagged} of {runs} null runs flagged a cell"


# ------------------------------------------------------------------------------ service

@settings(max_examples=40, deadline=None)
@given(st.lists(st.tuples(
    st.sampled_from(["a", "b", "c"]),  # the station
    st.none() | st.floats(0, 3600),  # seconds to acknowledge (None: never acknowledged)
    st.sampled_from(["open", "resolved", "cancelled"]),  # how it ended, if it did
    st.floats(0, 7200),  # seconds to its close, if it closed
    st.integers(0, 3),  # escalations
), min_size=1, max_size=40))
def test_service_figures_are_each_stations_own_quantiles_and_shares(
        made: list[tuple[str, float | None, str, float, int]]) -> None:
    """Any mix of acknowledged, never acknowledged, resolved, cancelled and escalated alerts
    in the hub: each station's service row is what its own alerts give, computed here with
    numpy (linear quantiles; time to resolve counts resolved alerts only; a figure with no
    times is blank)."""
    engine = open_engine("sqlite://")
    migrate(engine)
    rows = []
    for n, (station, ack, fate, close, escalations) in enumerate(made):
        opened = UNTIL - 3600.0 - n
        state = fate if fate != "open" else "acknowledged" if ack is not None else "open"
        rows.append({
            "station": station, "alert_id": f"a{n}", "class": "P1", "state": state,
            "source": "hp-1", "location": "", "requested_response": "crisis_team",
            "opened_at": opened, "acknowledged_at": None if ack is None else opened + ack,
            "closed_at": None if fate == "open" else opened + close,
            "escalations": escalations, "last_seq": n + 1, "updated_at": opened})
    with engine.begin() as conn:
        conn.execute(alerts.insert(), rows)
    table = service(load_requests(engine, UNTIL - WEEK_S, UNTIL, "Europe/Zurich"), "station")
    engine.dispose()
    assert sorted(table["station"]) == sorted({m[0] for m in made})
    for row in table.to_dict("records"):
        mine = [m for m in made if m[0] == row["station"]]
        for figure, times in (("ack", [m[1] for m in mine if m[1] is not None]),
                              ("resolve", [m[3] for m in mine if m[2] == "resolved"])):
            assert row["acknowledged" if figure == "ack" else "resolved"] == len(times)
            for q in (50, 90):
                got = row[f"{figure}_p{q}_s"]
                if times:
                    assert got == pytest.approx(np.quantile(times, q / 100), abs=1e-6), figure
                else:
                    assert np.isnan(got), figure
        assert row["requests"] == len(mine)
        assert row["escalations"] == sum(m[4] for m in mine)
        assert row["escalated_share"] == pytest.approx(
            sum(m[4] > 0 for m in mine) / len(mine))
        assert row["never_acknowledged_share"] == pytest.approx(
            sum(m[1] is None for m in mine) / len(mine))


@settings(max_examples=30, deadline=None)
@given(column=st.sampled_from(["opened_at", "acknowledged_at", "closed_at", "escalations"]),
       value=st.sampled_from(["nan", "inf", "-Infinity", "1_0", ""])  # numpy would take most
       | st.text(max_size=20).map(lambda t: "x" + t) | st.binary(max_size=20))
def test_a_value_that_is_not_a_number_fails_the_read_and_says_so(
        column: str, value: str | bytes) -> None:
    """The disk is an edge: SQLite keeps any value in any column, so a hand-edited or damaged
    hub database can hold a text or a blob where a time or a count belongs. The read refuses
    it with an error that says what and how to go on, never a wrong figure (SQL arithmetic
    would have read a text as 0) and never a traceback."""
    engine = open_engine("sqlite://")
    migrate(engine)
    with engine.begin() as conn:
        conn.execute(alerts.insert(), _three_alerts())
        # Past SQLAlchemy's type processing, as a hand edit or a damaged page would be.
        conn.exec_driver_sql(f"UPDATE alerts SET {column} = ? WHERE alert_id = 'a1'",  # noqa: S608
                             (value,))
        stored = conn.exec_driver_sql(f"SELECT typeof({column}) FROM alerts"  # noqa: S608
                                      " WHERE alert_id = 'a1'").scalar()
    assume(stored in ("text", "blob"))  # SQLite took a numeric text as a number
    with pytest.raises(AnalysisError, match="not a number") as raised:
        load_requests(engine, UNTIL - WEEK_S, UNTIL, "Europe/Zurich")
    engine.dispose()
    assert "restore the database from a backup" in str(raised.value)


def test_an_infinite_or_nan_time_in_postgresql_fails_the_read(postgres: PostgreSQL) -> None:
    """PostgreSQL's float8 holds Infinity, -Infinity and NaN, which no clock gives: each
    stops the read as SQLite's texts do, not a figure of infinite seconds or a request left
    out of the period unsaid. (NaN where a request was never acknowledged or resolved reads
    as that: it cannot be told from NULL once read.)"""
    engine = open_engine(postgres.new_database("not_a_number"))
    migrate(engine)
    cases = [(column, value) for column in ("opened_at", "acknowledged_at", "closed_at")
             for value in ("Infinity", "-Infinity")] + [("opened_at", "NaN")]
    try:
        for column, value in cases:
            with engine.begin() as conn:
                conn.execute(alerts.delete())
                conn.execute(alerts.insert(), _three_alerts())
                conn.execute(alerts.update().where(alerts.c.alert_id == "a1")
                             .values({column: float(value)}))
            with pytest.raises(AnalysisError, match="not a number"):
                load_requests(engine, UNTIL - WEEK_S, UNTIL, "Europe/Zurich")
    finally:
        engine.dispose()


@pytest.mark.parametrize("state", [None, "open", "acknowledged"])
def test_an_empty_period_or_one_without_a_team_still_gives_the_report(
        tmp_path: Path, network: Network, state: str | None) -> None:
    """No request at all (a new hub, a quiet --since), or requests that no team has been
    sent to yet: every table is written, empty where it has nothing, and the page says how
    many requests there were (a group-by over nothing once left no columns: a KeyError)."""
    engine = open_engine(f"sqlite:///{tmp_path / 'hub.db'}")
    migrate(engine)
    if state is not None:
        with engine.begin() as conn:
            conn.execute(alerts.insert(), [
                dict(row, station=network.ids[0], state=state, closed_at=None,
                     acknowledged_at=None if state == "open" else row["acknowledged_at"])
                for row in _three_alerts()])
    analysis, paths = make_report(engine, network, tmp_path / "out", since=UNTIL - 4 * WEEK_S,
                                  until=UNTIL)
    engine.dispose()
    requests = 0 if state is None else 3
    assert len(analysis.requests.frame) == requests
    assert (tmp_path / "out" / "report.html").stat().st_size > 0
    assert f"{requests} requests at {min(requests, 1)} of 116 stations" in (
        tmp_path / "out" / "report.html").read_text(encoding="utf-8")
    assert _csv(tmp_path / "out" / "tables" / "service_by_team.csv") == []
    by_station = _csv(tmp_path / "out" / "tables" / "service_by_station.csv")
    assert [r["suppressed"] for r in by_station] == ([] if state is None else ["true"])
    assert {p.name for p in paths} >= {"report.html", "service_by_team.csv"}


@pytest.mark.parametrize("unknown", [2, 7])
def test_a_suppressed_rows_count_is_not_shown_another_way(
        tmp_path: Path, network: Network, unknown: int) -> None:
    """A station with 3 requests: its row of the concentration curve blanks the running
    share too (the step from the row before is its count), and its hotspot cells blank
    their own standard score (a function of the value alone). Requests at a station the
    network does not know are counted on the page under the same rule."""
    engine = open_engine(f"sqlite:///{tmp_path / 'hub.db'}")
    migrate(engine)
    busy, quiet = network.ids[0], network.ids[1]
    rows = [dict(row, alert_id=f"{station}-{n}", station=station)
            for station, count in ((busy, 9), (quiet, 3), ("not-a-station", unknown))
            for n, row in enumerate(_three_alerts() * 3) if n < count]
    with engine.begin() as conn:
        conn.execute(alerts.insert(), rows)
    analysis, _ = make_report(engine, network, tmp_path / "out", since=UNTIL - 4 * WEEK_S,
                              until=UNTIL)
    engine.dispose()
    assert analysis.off_network == unknown
    tables = tmp_path / "out" / "tables"
    curve = {r["station"]: r for r in _csv(tables / "concentration.csv")}
    assert curve[busy]["cum_share"] == "0.75" and curve[busy]["suppressed"] == "false"
    assert curve[quiet]["suppressed"] == "true"
    assert curve[quiet]["requests"] == curve[quiet]["share"] == curve[quiet]["cum_share"] == ""
    cells = [r for r in _csv(tables / "hotspot_cells.csv") if r["station"] == quiet]
    assert cells and all(r["value"] == r["own_z"] == "" for r in cells
                         if r["suppressed"] == "true")
    assert any(r["suppressed"] == "true" for r in cells)
    said = "fewer than 5" if unknown < 5 else str(unknown)
    assert f"; {said} requests at stations not on the network are left out" in (
        tmp_path / "out" / "report.html").read_text(encoding="utf-8")


def test_repeat_locations_are_named_places(tmp_path: Path, network: Network) -> None:
    """Requests from a help point whose config names no location are at no place: they are
    not a repeat location, though they count in the station's share."""
    engine = open_engine(f"sqlite:///{tmp_path / 'hub.db'}")
    migrate(engine)
    station = network.ids[0]
    rows = [dict(row, alert_id=f"{where}-{n}", station=station, location=where)
            for where, count in (("", 8), ("platform 1", 6), ("stairs", 1))
            for n, row in enumerate(_three_alerts() * 3) if n < count]
    with engine.begin() as conn:
        conn.execute(alerts.insert(), rows)
    analysis = analyse(engine, network, since=UNTIL - 4 * WEEK_S, until=UNTIL)
    engine.dispose()
    repeats = analysis.tables["repeat_locations"]
    assert repeats[["station", "location", "requests"]].values.tolist() == [
        [station, "platform 1", 6]]
    assert repeats["share_of_station"].tolist() == [6 / 15]


def _three_alerts() -> list[dict[str, Any]]:
    """Three resolved alerts, opened an hour before UNTIL."""
    opened = UNTIL - 3600.0
    return [{"station": "a", "alert_id": f"a{n}", "class": "P1", "state": "resolved",
             "source": "hp-1", "location": "", "requested_response": "crisis_team",
             "opened_at": opened, "acknowledged_at": opened + 30, "closed_at": opened + 600,
             "escalations": 0, "last_seq": n + 1, "updated_at": opened} for n in range(3)]


# ------------------------------------------------------------------------------ privacy

def test_small_cells_are_suppressed() -> None:
    frame = pd.DataFrame({"station": ["a", "b", "c", "d"], "requests": [0, 1, 4, 5],
                          "p50": [np.nan, 10.0, 20.0, 30.0]})
    out = suppress(frame, 5, figures=["p50"])
    assert out["suppressed"].tolist() == [False, True, True, False]
    assert out["requests"].isna().tolist() == [False, True, True, False]
    assert out["p50"].isna().tolist() == [True, True, True, False]
    assert out.loc[3, "p50"] == 30.0 and out.loc[0, "requests"] == 0
    out = suppress(frame, 2, figures=["p50"])
    assert out["suppressed"].tolist() == [False, True, False, False]


# ------------------------------------------------------------------------------- report

class _Page(html.parser.HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.ids: set[str] = set()
        self.figures: list[str] = []  # the figure divs' data-figure: their JSON's id
        self.data: dict[str, str] = {}  # <script type=application/json>, by id
        self.tables: list[list[list[str]]] = []
        self.text: list[str] = []
        self._cell: list[str] | None = None
        self.scripts = 0  # scripts that run (not JSON data), links
        self.external: list[str] = []
        self._data: str | None = None

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        values = dict(attrs)
        if values.get("id"):
            self.ids.add(str(values["id"]))
        if tag == "div" and "figure" in str(values.get("class")).split():
            self.figures.append(str(values.get("data-figure")))
        if tag == "script" and values.get("type") == "application/json":
            self._data = str(values.get("id"))
            self.data[self._data] = ""
        elif tag in {"script", "link"}:
            self.scripts += 1
        for key in ("src", "href"):
            if values.get(key):  # nothing is fetched: not from elsewhere, not from beside it
                self.external.append(str(values[key]))
        if tag == "table":
            self.tables.append([])
        elif tag == "tr":
            self.tables[-1].append([])
        elif tag in {"td", "th"}:
            self._cell = []

    def handle_endtag(self, tag: str) -> None:
        if tag == "script":
            self._data = None
        if tag in {"td", "th"} and self._cell is not None:
            self.tables[-1][-1].append("".join(self._cell).strip())
            self._cell = None

    def handle_data(self, data: str) -> None:
        if self._data is not None:
            self.data[self._data] += data
            return
        self.text.append(data)
        if self._cell is not None:
            self._cell.append(data)


def _csv(path: Path) -> list[dict[str, str]]:
    with path.open(encoding="utf-8") as rows:
        return list(csv.DictReader(rows))


def test_report_command_writes_the_report(planted: tuple[Engine, History],
                                          tmp_path: Path) -> None:
    engine, history = planted
    out = tmp_path / "report"
    code = main(["report", "--db", str(engine.url), "--since", f"{WEEKS}w", "--until",
                 str(UNTIL), "--out", str(out), "--ridership",
                 str(SHIPPED / "ridership.csv"), "--min-cell", "5"])
    assert code == 0
    page = _Page()
    page.feed((out / "report.html").read_text(encoding="utf-8"))
    # Self-contained: each figure's JSON inlined, one script (plotly.js, inline) draws them,
    # and nothing is fetched. Each figure is one plotly validates (unknown keys raise).
    assert {"recommendations", "hotspot-map", "heat-maps", "service", "concentration",
            "suppression"} <= page.ids
    assert len(page.figures) == 5 and page.scripts == 1 and not page.external
    specs = {name: json.loads(page.data[name]) for name in page.figures}
    for name, spec in specs.items():
        go.Figure(data=spec["data"], layout=spec["layout"])
        assert spec["data"], name
    # The hotspot map: every station in each of the nine bands' panels, the hot ones ringed.
    hot = {(r["station"], r["band"]) for r in _csv(out / "tables" / "hotspot_cells.csv")
           if r["hot"] == "true"}
    stations = [t for t in specs["hotspot-map-data"]["data"] if t["mode"] == "markers"
                and "customdata" in t]
    assert len(stations) == 9 and all(len(t["x"]) == 116 for t in stations)
    rings = sum(len(t["x"]) for t in specs["hotspot-map-data"]["data"]
                if t.get("marker", {}).get("symbol") == "circle-open")
    assert rings == len(hot) > 0
    # The heat maps show no cell of 1 to 4 requests either: those are blank (null).
    for name in ("heat-map-by-response-data", "heat-map-by-station-data"):
        cells = [v for trace in specs[name]["data"] for row in trace["z"] for v in row]
        assert all(v is None or v == 0 or v >= 5 for v in cells), name
        assert name.endswith("station-data") or None in cells, "some hours have 1 to 4"
    assert "Cells with 1 to 4 requests are suppressed" in "".join(page.text)

    # The recommendations: one row per cluster and band, in the page and in the CSV, and
    # each planted site is covered with its planted response as the dominant one.
    recs = _csv(out / "tables" / "recommendations.csv")
    html_recs = page.tables[0]
    assert html_recs[0][:3] == ["cluster", "band", "stations"]
    assert len(html_recs) - 1 == len(recs) >= len(history.planted)
    for spot in history.planted:
        rows = [r for r in recs if r["band"] == spot.band
                and set(r["station_ids"].split()) & set(spot.stations)]
        assert rows, spot
        assert rows[0]["dominant_response"] == spot.response, (spot, rows[0])
        assert float(rows[0]["per_week"]) > 0
    # Every table is there as CSV and Parquet, with the same rows.
    tables = {p.stem for p in (out / "tables").glob("*.csv")}
    assert {"grid_by_class", "grid_by_requested_response", "grid_by_team",
            "service_by_station", "service_by_hour_of_week", "service_by_team",
            "concentration", "concentration_top", "repeat_locations", "hotspot_cells",
            "recommendations"} <= tables
    for name in tables:
        assert len(pd.read_parquet(out / "tables" / f"{name}.parquet")) == len(
            _csv(out / "tables" / f"{name}.csv")), name
    # Grids: 168 hours per station, and no cell of 1 to 4 requests is shown.
    grid = _csv(out / "tables" / "grid_by_requested_response.csv")
    assert {int(r["hour_of_week"]) for r in grid} == set(range(168))
    shown = [int(r["requests"]) for r in grid if r["requests"]]
    assert shown and all(n == 0 or n >= 5 for n in shown)
    hidden = [r for r in grid if r["suppressed"] == "true"]
    assert hidden and all(r["requests"] == r["per_week"] == "" for r in hidden)
    assert sum(shown) < history.requests  # the suppressed ones are really gone
    # Service figures: the never-acknowledged share is there and plausible.
    service = _csv(out / "tables" / "service_by_class.csv")
    for row in service:
        assert 0 <= float(row["never_acknowledged_share"]) < 0.1
        assert float(row["ack_p50_s"]) < float(row["ack_p90_s"])
    top = _csv(out / "tables" / "concentration_top.csv")
    assert [float(r["top_stations_share"]) for r in top] == [0.05, 0.1, 0.2, 0.25, 0.5]
    assert all(float(r["requests_share"]) > float(r["top_stations_share"]) for r in top)


def test_report_min_cell_raises_the_bar(planted: tuple[Engine, History],
                                        tmp_path: Path) -> None:
    engine, _ = planted
    out = tmp_path / "strict"
    assert main(["report", "--db", str(engine.url), "--since", "1w", "--until", str(UNTIL),
                 "--out", str(out), "--min-cell", "20", "--no-parquet"]) == 0
    rows = _csv(out / "tables" / "service_by_station.csv")
    assert all(r["requests"] == "" or int(r["requests"]) >= 20 for r in rows)
    assert any(r["suppressed"] == "true" for r in rows)
    assert not list((out / "tables").glob("*.parquet"))


def test_the_report_file_is_the_page_render_draws(
        planted: tuple[Engine, History], network: Network, tmp_path: Path) -> None:
    # The report file and the web console's page are the same views: write_report writes
    # its tables in threads while it describes the page, and the page is render()'s.
    engine, _ = planted
    analysis = analyse(engine, network, since=UNTIL - 2 * WEEK_S, until=UNTIL,
                       show_progress=False)
    write_report(analysis, tmp_path / "after", show_progress=False)
    assert (tmp_path / "after" / "report.html").read_bytes() == render(analysis).document()
    # What the report command runs writes each table while the analysis goes on: the same
    # files, every table under the small-cell rule (a table it missed, or wrote before its
    # suppression, differs here).
    _, written = make_report(engine, network, tmp_path / "during", since=UNTIL - 2 * WEEK_S,
                             until=UNTIL, show_progress=False)
    names = sorted(p.relative_to(tmp_path / "during") for p in written)
    assert names == sorted(p.relative_to(tmp_path / "after")
                           for p in (tmp_path / "after").rglob("*") if p.is_file())
    assert len(names) == 1 + 2 * len(analysis.tables)
    for name in names:
        during, after = tmp_path / "during" / name, tmp_path / "after" / name
        if name.suffix == ".parquet":
            assert pq.read_table(during).equals(pq.read_table(after)), name
        else:
            assert during.read_bytes() == after.read_bytes(), name


def test_the_report_draws_its_figures_offline_in_a_browser(
        planted: tuple[Engine, History], network: Network, tmp_path: Path) -> None:
    """Opened from the disk in a real Chromium with no server anywhere, the report draws
    every figure (plotly.js from inside the file): each figure has its plot, and the hotspot
    map a point for every station in every band."""
    engine, _ = planted
    analysis = analyse(engine, network, since=UNTIL - 4 * WEEK_S, until=UNTIL,
                       show_progress=False)
    write_report(analysis, tmp_path, show_progress=False, parquet=False)
    browser = chromium()
    try:
        browser.get((tmp_path / "report.html").as_uri())
        drawn = WebDriverWait(browser, 60).until(lambda b: b.execute_script(
            "var f=document.querySelectorAll('div.figure');"
            "var d=[].filter.call(f,function(e){return e.querySelector('.main-svg')});"
            "return f.length && d.length==f.length ? d.map(function(e){return e.id}) : null;"))
        points = browser.execute_script(
            "return document.querySelectorAll('#figure-hotspot-map path.point').length;")
        logged: list[dict[str, str]] = browser.get_log("browser")  # type: ignore[no-untyped-call]
        errors = [e for e in logged if e["level"] == "SEVERE"]
    finally:
        browser.quit()
    assert drawn == ["figure-hotspot-map", "figure-heat-map-by-response",
                     "figure-heat-map-by-station", "figure-service-by-band",
                     "figure-concentration-curve"]
    rings = int(analysis.hotspots.cells["hot"].sum())
    assert points >= 9 * len(network.ids) + rings, points
    assert not errors, errors


@pytest.mark.skipif(not can_mount(), reason="mounting a tmpfs needs root (CI runs as root)")
def test_a_full_disk_fails_the_report_cleanly_and_never_leaves_half_a_page(
        planted: tuple[Engine, History], tmp_path: Path,
        capsys: pytest.CaptureFixture[str]) -> None:
    """The disk is an edge like any other: whichever file the space runs out at (a table,
    its Parquet, the page), the report command says which file, that the report is
    incomplete and what to do, exits 2 without a traceback, and report.html is either the
    whole page or absent."""
    engine, _ = planted
    args = ["report", "--db", str(engine.url), "--since", "2w", "--until", str(UNTIL)]
    assert main([*args, "--out", str(tmp_path / "whole")]) == 0
    whole = (tmp_path / "whole" / "report.html").read_text(encoding="utf-8")
    size = sum(p.stat().st_size for p in (tmp_path / "whole").rglob("*") if p.is_file())
    failed_at = set()
    for share in (0.0, 0.02, 0.1, 0.3, 0.6, 0.9, 0.97):
        with SmallDisk(size + 4 * 1024 * 1024) as disk:
            disk.fill()
            (filler,) = disk.path.glob(".filler-*")
            os.truncate(filler, max(filler.stat().st_size - int(size * share), 0))
            capsys.readouterr()
            code = main([*args, "--out", str(disk.path / "report")])
            err = capsys.readouterr().err
            page = disk.path / "report" / "report.html"
            assert code == 2, (share, err)
            assert "cannot write it" in err and "incomplete" in err, err
            assert "Traceback" not in err
            assert not page.exists() or page.read_text(encoding="utf-8") == whole
            assert not list((disk.path / "report").glob(".*.part"))  # no half page left
            failed_at.add(err.split(":")[1].strip().rsplit(".", 1)[-1])
    assert {"csv", "html"} <= failed_at, failed_at  # it ran out at a table and at the page


# ---------------------------------------------------------------------------- simulate

def test_simulated_history_is_a_consistent_hub_record(tmp_path: Path,
                                                      capsys: pytest.CaptureFixture[str]) -> None:
    url = f"sqlite:///{tmp_path / 'hub.db'}"
    assert main(["simulate-history", "--db", url, "--weeks", "1", "--seed", "3",
                 "--until", str(UNTIL)]) == 0
    said = capsys.readouterr().out
    assert said.count("planted: ") == 6
    engine = open_engine(url)
    store = HubStore(engine)
    # The hub's own audit finds no seq missing: every station's events are 1..n.
    assert all(not gap.missing for gap in store.gaps())
    with engine.connect() as conn:
        count = conn.execute(select(func.count()).select_from(alerts)).scalar_one()
        states: dict[str, int] = dict(conn.execute(select(alerts.c.state, func.count())
                                   .group_by(alerts.c.state)).all())
        kinds = {k for (k,) in conn.execute(select(events.c.kind).distinct())}
    assert f"{count} requests" in said
    assert states["resolved"] > 0.9 * count and states.get("cancelled", 0) > 0
    assert {"help_point.press", "alert.acknowledged", "alert.assigned",
            "alert.resolved"} <= kinds
    one = store.alerts()[0]
    assert next(s for s, _ in store.history(one["station"], one["alert_id"])) == "open"
    # The same seed again into a database that has history is refused, not mixed in.
    assert main(["simulate-history", "--db", url, "--weeks", "1", "--seed", "3"]) == 2
    assert "empty database" in capsys.readouterr().err
    engine.dispose()


def test_postgresql_reads_the_same_requests(tmp_path: Path, network: Network,
                                            ridership: pd.Series, postgres: PostgreSQL) -> None:
    frames = []
    for url in (f"sqlite:///{tmp_path / 'hub.db'}", postgres.new_database("analysis")):
        engine = open_engine(url)
        history = simulate_history(engine, network, ridership, weeks=1, seed=9,
                                   until=UNTIL, rate=1.0)
        requests = load_requests(engine, history.since, history.until, network.timezone)
        frames.append(requests.frame.sort_values("alert_id", ignore_index=True))
        engine.dispose()
    assert len(frames[0]) > 500
    pd.testing.assert_frame_equal(frames[0], frames[1], check_dtype=False)


def test_the_station_daemon_never_loads_the_analysis() -> None:
    """Neither the daemon's modules nor the CLI wiring (dispatch.analysis.cli, imported to
    build `stationgw`'s parser) load the analysis stack or SQLAlchemy."""
    probe = textwrap.dedent(f"""
        import importlib, sys
        for module in {DAEMON_MODULES!r} + ("dispatch.analysis.cli",):
            importlib.import_module(module)
        heavy = ("pandas", "numpy", "esda", "libpysal", "gtfs_kit", "plotly", "sqlalchemy",
                 "dispatch.analysis.")
        print(sorted(m for m in sys.modules
                     if m.startswith(heavy) and m != "dispatch.analysis.cli"))
    """)
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True,
                          check=False, timeout=60, cwd=Path(__file__).resolve().parents[1])
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[]"


def test_progress_is_quiet_off_a_terminal(capsys: pytest.CaptureFixture[str]) -> None:
    from dispatch.analysis.progress import progress

    with progress("work", 3) as advance:
        advance(3)
    assert capsys.readouterr().err == ""
