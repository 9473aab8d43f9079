"""The planner's report: one self-contained HTML file, and every table as CSV (and Parquet).

`analyse` computes every table from the requests (unsuppressed, for tests and callers);
`write_report` applies the small-cell rule (`privacy`) to every table before anything is
written, and describes the figures (`figures`: plotly) from the suppressed tables.
`make_report` is both at once, as `stationgw hub report` runs them: each table is suppressed
and written (in threads) as soon as the analysis has it, while the analysis goes on. The page
carries each figure as JSON and plotly.js inline, which draws them when it is opened, so the
file opens anywhere without a network.
`render` is that page as fragments (`Parts`): the report file and the web console's hotspots
page (`dispatch.analysis.console`) are the same views from the same code.
"""

from __future__ import annotations

import html
import time
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.csv as pa_csv
import pyarrow.parquet as pq
from sqlalchemy import Engine

from dispatch.analysis import DEFAULT_MIN_CELL, figures
from dispatch.analysis.grids import (
    SERVICE_FIGURES,
    concentration,
    hour_grid,
    repeat_locations,
    service,
    top_shares,
    with_rate,
)
from dispatch.analysis.hotspots import (
    DEFAULTS,
    Hotspots,
    Settings,
    find_hotspots,
    recommendations,
)
from dispatch.analysis.network import Network
from dispatch.analysis.privacy import notice, suppress
from dispatch.analysis.progress import progress
from dispatch.analysis.record import (
    BAND_NAMES,
    RESPONSES,
    Requests,
    band_of_hour,
    load_requests,
    positions,
    riders_of,
)
from dispatch.errors import AnalysisError

#: Threads writing the report's tables (pyarrow releases the GIL while it writes).
_WRITERS = 2


@dataclass
class Analysis:
    """Everything the report shows, before suppression."""

    requests: Requests
    network: Network
    ridership: pd.Series | None
    hotspots: Hotspots
    tables: dict[str, pd.DataFrame] = field(default_factory=dict)
    off_network: int = 0  # requests at stations the network (or the mapping) does not know


def analyse(engine: Engine, network: Network, *, since: float, until: float,
            ridership: pd.Series | None = None, settings: Settings = DEFAULTS,
            show_progress: bool | None = None,
            sink: Callable[[str, pd.DataFrame], None] | None = None) -> Analysis:
    """Read the requests of [since, until) and compute every table of the report (`sink`,
    if given, gets each table as soon as it is final: `make_report` writes it then)."""
    tables: dict[str, pd.DataFrame] = {}

    def keep(name: str, table: pd.DataFrame) -> pd.DataFrame:
        tables[name] = table
        if sink is not None:
            sink(name, table)
        return table

    if ridership is not None:
        ridership = riders_of(ridership, network.ids)
    with progress("analysing", 5, enabled=show_progress) as advance:
        everything = load_requests(engine, since, until, network.timezone, with_ids=False)
        on = everything.frame["station"].isin(network.ids)
        frame = everything.frame if on.all() else everything.frame[on].reset_index(drop=True)
        requests = Requests(frame=frame, since=since, until=until, timezone=network.timezone)
        advance(1)
        ids, weeks = network.ids, requests.weeks
        for by in ("class", "requested_response", "team"):
            keep(f"grid_by_{by}", with_rate(hour_grid(requests, by, ids), ridership, weeks))
        advance(1)
        for by in ("station", "hour_of_week", "band", "team", "class"):
            keep(f"service_by_{by}", service(requests, by))
        curve = keep("concentration", concentration(requests, ids))
        keep("concentration_top", top_shares(curve))
        keep("repeat_locations", repeat_locations(requests))
        advance(1)
        hotspots = find_hotspots(requests, network, ridership, settings)
        advance(1)
        cells = hotspots.cells.copy()
        cells.insert(1, "name", cells["station"].map(network.stations["name"]))
        keep("hotspot_cells", cells)
        keep("recommendations", recommendations(hotspots, requests, network, ridership))
        advance(1)
    return Analysis(requests=requests, network=network, ridership=ridership,
                    hotspots=hotspots, tables=tables, off_network=int((~on).sum()))


#: Per table: the count column the small-cell rule reads, and the figures it blanks with it.
_FIGURES: dict[str, tuple[str, tuple[str, ...]]] = {
    "service_by_station": ("requests", SERVICE_FIGURES),
    "service_by_hour_of_week": ("requests", SERVICE_FIGURES),
    "service_by_band": ("requests", SERVICE_FIGURES),
    "service_by_team": ("requests", SERVICE_FIGURES),
    "service_by_class": ("requests", SERVICE_FIGURES),
    "concentration": ("requests", ("share", "cum_share")),
    "repeat_locations": ("requests", ("days", "share_of_station")),
    "hotspot_cells": ("requests", ("value", "own_z")),  # own_z: a function of value
    "recommendations": ("requests", ("per_week", "per_band_hour", "per_10k_riders",
                                     "dominant_response_share", "team_most_sent_share")),
}


def _at_least(count: int, k: int) -> str:
    """A count for a sentence of the page, under the small-cell rule."""
    return f"fewer than {k}" if count < k else str(count)


def exported(analysis: Analysis, k: int) -> dict[str, pd.DataFrame]:
    """Every table with the small-cell rule applied (what may leave the hub)."""
    return {name: _exported(name, table, k) for name, table in analysis.tables.items()}


def _exported(name: str, table: pd.DataFrame, k: int) -> pd.DataFrame:
    figures: tuple[str, ...]
    if name.startswith("grid_by_"):
        count, figures = "requests", ("per_week", "per_10k_riders")
    elif name in _FIGURES:
        count, figures = _FIGURES[name]
    else:  # shares of the whole network: built from every request
        return table.copy()
    return suppress(table, k, count=count, figures=[f for f in figures if f in table.columns])


def make_report(engine: Engine, network: Network, folder: Path, *, since: float,
                until: float, ridership: pd.Series | None = None,
                settings: Settings = DEFAULTS, k: int = DEFAULT_MIN_CELL, parquet: bool = True,
                show_progress: bool | None = None) -> tuple[Analysis, list[Path]]:
    """`analyse`, then `write_report`, with each table written while the analysis goes on
    (what `stationgw hub report` does); the analysis and the paths written."""
    with _writing(folder, k, parquet) as out:
        analysis = analyse(engine, network, since=since, until=until, ridership=ridership,
                           settings=settings, show_progress=show_progress, sink=out.put)
        return analysis, out.finish(analysis, show_progress)


def write_report(analysis: Analysis, folder: Path, *, k: int = DEFAULT_MIN_CELL,
                 parquet: bool = True, show_progress: bool | None = None) -> list[Path]:
    """Write report.html and tables/NAME.csv (and .parquet) into `folder`; the paths."""
    with _writing(folder, k, parquet) as out:
        for name, table in analysis.tables.items():
            out.put(name, table)
        return out.finish(analysis, show_progress)


@contextmanager
def _writing(folder: Path, k: int, parquet: bool) -> Iterator[_Writer]:
    if k < 1:
        raise AnalysisError(f"--min-cell {k}: the smallest cell shown must be 1 or more")
    try:
        (folder / "tables").mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise AnalysisError(f"{folder}: cannot create the report folder ({exc})") from exc
    with ThreadPoolExecutor(max_workers=_WRITERS) as writers:
        yield _Writer(folder, k, parquet, writers)


@dataclass
class _Writer:
    """The report's files as the tables arrive: each table suppressed here, then written as
    CSV (and Parquet) by pyarrow in the writer threads, without the GIL, while this thread
    goes on with the analysis and the page. report.html is written last, once every table
    file is whole."""

    folder: Path
    k: int
    parquet: bool
    writers: ThreadPoolExecutor
    tables: dict[str, pd.DataFrame] = field(default_factory=dict)  # as exported
    jobs: list[tuple[Path, Future[None]]] = field(default_factory=list)

    def put(self, name: str, table: pd.DataFrame) -> None:
        """Suppress `table` and start writing it."""
        self.tables[name] = exported = _exported(name, table, self.k)
        arrow = self.writers.submit(_arrow, exported)
        path = self.folder / "tables" / f"{name}.csv"
        self.jobs.append((path, self.writers.submit(_write_csv, arrow, path)))
        if self.parquet:
            path = path.with_suffix(".parquet")
            self.jobs.append((path, self.writers.submit(_write_parquet, arrow, path)))

    def finish(self, analysis: Analysis, show_progress: bool | None) -> list[Path]:
        """Describe the page, wait for the table files, then write report.html; the paths
        (report.html first). Each file's error is raised here, in the files' order."""
        folder, written = self.folder, []
        path = folder / "report.html"
        try:
            with progress("writing report", len(self.tables) + 1,
                          enabled=show_progress) as advance:
                page = render(analysis, self.k, tables=self.tables).document()
                for path, job in self.jobs:
                    job.result()
                    written.append(path)
                    advance(1 / (2 if self.parquet else 1))
                path = folder / "report.html"
                _write_atomically(path, page)
                written.insert(0, path)
                advance(1)
        except OSError as exc:  # a full or read-only disk, a folder taken away
            raise AnalysisError(
                f"{path}: cannot write it ({exc.strerror or exc}); the report in {folder} is "
                "incomplete (report.html is written last, so it is missing or the old one): "
                "free some space or choose another --out, and run the report again"
            ) from exc
        return written


def _write_atomically(path: Path, data: bytes) -> None:
    """Write `path` whole or not at all: a page cut short by a full disk is never left."""
    part = path.with_name(f".{path.name}.part")
    try:
        part.write_bytes(data)
        part.replace(path)
    finally:
        part.unlink(missing_ok=True)


def _arrow(table: pd.DataFrame) -> pa.Table:
    """`table` for pyarrow's CSV and Parquet writers (several times quicker than pandas'
    CSV writer over the grids). The CSV is RFC 4180: a header, strings in double quotes,
    booleans as true/false, suppressed (NA) cells empty; the Parquet file keeps the pandas
    types, nullable ones included."""
    return pa.Table.from_pandas(table, preserve_index=False)


def _write_csv(arrow: Future[pa.Table], path: Path) -> None:
    pa_csv.write_csv(arrow.result(), path)


def _write_parquet(arrow: Future[pa.Table], path: Path) -> None:
    pq.write_table(arrow.result(), path)


# ---------------------------------------------------------------------------- the page

#: Where the method section points for the tables: the report's own files.
TABLES_IN_FOLDER = "Every table is in tables/ as CSV."
#: Said where the figures would be when the reader's browser runs no script.
NO_SCRIPT = ("The figures are drawn by the page's script (plotly.js, inside this file): "
             "allow it to see them. Every figure's numbers are in the tables.")
_STYLE = ("body{font-family:sans-serif;max-width:1200px;margin:auto;padding:1em}"
          "table{border-collapse:collapse;font-size:12px;margin:.5em 0}"
          "td,th{border:1px solid #ccc;padding:2px 6px;text-align:right}"
          ".notice{background:#fff3cd;padding:.5em;border:1px solid #e0c060}"
          ".figure{max-width:100%;margin:.5em 0}")


@dataclass(frozen=True)
class Parts:
    """The report's views as HTML fragments (small cells already suppressed): the report
    file wraps them in a document, the web console's hotspots page embeds them."""

    title: str
    style: str  # CSS for the fragments' tables, notice and figures
    sections: tuple[str, ...]
    requests: int
    hot_cells: int
    clusters: int

    @property
    def body(self) -> str:
        """Every section, in order."""
        return "".join(self.sections)

    def document(self) -> bytes:
        """A self-contained HTML document, UTF-8: plotly.js inline draws the figures, and
        nothing is fetched."""
        return ("<!DOCTYPE html><html lang=en><head><meta charset=utf-8>"
                f"<title>{html.escape(self.title)}</title>"
                f"<style>{self.style}</style></head><body>" + self.body
                + f"<noscript><p class=notice>{NO_SCRIPT}</p></noscript>"
                + "<script>").encode() + figures.page_script() + b"</script></body></html>\n"


def render(analysis: Analysis, k: int = DEFAULT_MIN_CELL, *,
           tables: dict[str, pd.DataFrame] | None = None,
           tables_note: str = TABLES_IN_FOLDER) -> Parts:
    """The report's sections, every table and figure under the small-cell rule with `k`
    (`tables`: `exported(analysis, k)`, if the caller has them already)."""
    if k < 1:
        raise AnalysisError(f"--min-cell {k}: the smallest cell shown must be 1 or more")
    tables = exported(analysis, k) if tables is None else tables
    shown = {name: figures.embed(figure, name)
             for name, figure in plots(analysis, tables, k).items()}
    return Parts(title="Crisis requests: hotspot report", style=_STYLE,
                 sections=tuple(_sections(analysis, tables, shown, k, tables_note)),
                 requests=len(analysis.requests.frame), hot_cells=len(analysis.hotspots.hot),
                 clusters=len(tables["recommendations"]))


def _sections(analysis: Analysis, tables: dict[str, pd.DataFrame],
              shown: dict[str, str], k: int, tables_note: str) -> list[str]:
    requests = analysis.requests
    period = (f"{time.strftime('%Y-%m-%d %H:%M', time.gmtime(requests.since))} to "
              f"{time.strftime('%Y-%m-%d %H:%M', time.gmtime(requests.until))} UTC "
              f"({requests.weeks:.1f} weeks); hours of the week in {requests.timezone}")
    basis = ("requests per week per 10,000 weekly riders" if analysis.ridership is not None
             else "requests per week")
    recs = tables["recommendations"]
    hot = _hot(tables)
    return [
        f"<h1>Crisis requests: where and when to place the teams</h1>"
        f"<p>{html.escape(period)}. {len(requests.frame)} requests at "
        f"{requests.frame['station'].nunique()} of {len(analysis.network.ids)} stations"
        + (f"; {_at_least(analysis.off_network, k)} requests at stations not on the network"
           " are left out" if analysis.off_network else "") + ".</p>"
        f"<p class=notice id=suppression><strong>Small cells suppressed.</strong> "
        f"{html.escape(notice(k))}</p>",
        "<h2 id=recommendations>Recommendations</h2><p>For each hotspot cluster (neighbouring "
        "hot stations) and time band: the request rate, the requested response that "
        "dominates, and the team dispatch sent most often.</p>" + _table(recs),
        "<h2 id=hotspot-map>Hotspot map</h2><p>Stations on their lines, coloured by Gi* "
        f"z-score of {html.escape(basis)} in each band; hot cells ringed.</p>"
        + shown["hotspot map"],
        "<h2 id=heat-maps>When: requests by hour of week</h2>"
        + shown["heat map by response"]
        + shown["heat map by station"],
        "<h2 id=service>Service</h2><p>Time to acknowledge and to resolve, p50 and p90 "
        "(seconds), escalations and the share never acknowledged.</p>"
        + shown["service by band"]
        + "<h3>By team</h3>" + _table(tables["service_by_team"])
        + "<h3>By class</h3>" + _table(tables["service_by_class"])
        + "<h3>By station (busiest 25)</h3>"
        + _table(tables["service_by_station"].sort_values("requests", ascending=False)
                 .head(25)),
        "<h2 id=concentration>Concentration</h2>"
        + shown["concentration curve"]
        + _table(tables["concentration_top"])
        + "<h3>Repeat locations (top 25)</h3>" + _table(tables["repeat_locations"].head(25)),
        "<h2 id=hotspots>Hot cells</h2>" + _table(hot.drop(columns=["p", "hot_period"])),
        "<h2 id=method>Method</h2><p>Getis-Ord Gi* (esda) per time band on the station "
        "adjacency (neighbours on a line; transfers join lines), binary weights with the "
        "station itself; a cell is hot when its z is significant after Benjamini-Hochberg "
        "control and the station's own value is in the band's upper 5 %. Trends: "
        "Mann-Kendall on weekly Gi* z. Full method: docs/analysis.md. "
        f"{html.escape(tables_note)}</p>",
    ]


def _table(frame: pd.DataFrame) -> str:
    # Suppressed figures are pandas' NA (nullable Int64 / Float64), which to_html writes as
    # "<NA>" whatever na_rep says: as float64 NaN they are the blank the notice promises.
    nullable = [c for c, t in frame.dtypes.items()
                if isinstance(t, pd.api.extensions.ExtensionDtype) and t.kind in "iuf"]
    if nullable:  # (column by column: astype with a dict copies every column)
        frame = frame.copy(deep=False)
        for column in nullable:
            frame[column] = frame[column].astype("float64")
    return str(frame.to_html(index=False, escape=True, na_rep="", float_format=_number,
                             border=0, classes="data"))


def _number(value: float) -> str:
    return f"{value:.3g}" if abs(value) < 1000 else f"{value:.0f}"


def plots(analysis: Analysis, tables: dict[str, pd.DataFrame],
          k: int) -> dict[str, figures.Spec]:
    """The report's figures in page order, by name, each from suppressed figures."""
    network, cells = analysis.network, analysis.hotspots.cells
    coords = network.stations[["lon", "lat"]]
    z = (cells.pivot(index="station", columns="band", values="z")
         .reindex(index=coords.index, columns=list(BAND_NAMES)))
    hot = _hot(tables)
    rings = {str(band): list(group["station"]) for band, group in hot.groupby("band")}
    lines = [(line.stations, line.colour) for line in network.lines]
    grid = analysis.tables["grid_by_requested_response"]
    return {
        "hotspot map": figures.hotspot_map(coords, network.stations["name"], lines, z, rings),
        "heat map by response": figures.week_heat(_week_cells(grid, k)),
        "heat map by station": figures.station_heat(_station_cells(grid, k)),
        "service by band": figures.service_bars(tables["service_by_band"]),
        "concentration curve": figures.lorenz(tables["concentration"]),
    }


def _hot(tables: dict[str, pd.DataFrame]) -> pd.DataFrame:
    hot = tables["hotspot_cells"]
    return hot[hot["hot"]].sort_values("z", ascending=False)


def _week_cells(grid: pd.DataFrame, k: int) -> dict[str, np.ndarray]:
    """Network-wide requests per day and hour, per requested response: summed from the
    unsuppressed grid, then the small-cell rule applied to the sums (NaN)."""
    response = positions(grid["requested_response"], RESPONSES)
    mine = response >= 0
    cell = response[mine] * 168 + grid["hour_of_week"].to_numpy()[mine]
    sums = np.bincount(cell, weights=grid["requests"].to_numpy(dtype=float)[mine],
                       minlength=len(RESPONSES) * 168)
    sums[(sums > 0) & (sums < k)] = np.nan
    return dict(zip(RESPONSES, sums.reshape(len(RESPONSES), 7, 24), strict=True))


def _station_cells(grid: pd.DataFrame, k: int) -> pd.DataFrame:
    """Requests per station (busiest 30) and time band; cells of 1..k-1 are NaN."""
    codes, stations = pd.factorize(grid["station"], sort=True)
    cell = codes * len(BAND_NAMES) + band_of_hour()[grid["hour_of_week"].to_numpy()]
    sums = np.bincount(cell, weights=grid["requests"].to_numpy(dtype=float),
                       minlength=len(stations) * len(BAND_NAMES))
    table = pd.DataFrame(sums.reshape(len(stations), len(BAND_NAMES)),
                         index=pd.Index(stations, name="station"),
                         columns=pd.Index(BAND_NAMES, name="band"))
    top = table.sum(axis=1).sort_values(ascending=False).head(30).index
    cells = table.loc[top]
    return cells.mask((cells > 0) & (cells < k))
