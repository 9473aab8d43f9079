"""The planner's report: one self-contained HTML file, and every table as CSV (and Parquet).

`analyse` computes every table from the requests (unsuppressed, for tests and callers);
`write_report` applies the small-cell rule (`privacy`) to every table before anything is
written, draws the figures from the suppressed tables with matplotlib (no pyplot state), and
inlines them in the HTML as base64 PNG, so the file opens anywhere without a network.
`render` is that page as fragments (`Parts`): the report file and the web console's hotspots
page (`dispatch.analysis.console`) are the same views from the same code.
"""

from __future__ import annotations

import base64
import html
import io
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
from matplotlib import colormaps
from matplotlib.colors import TwoSlopeNorm
from matplotlib.figure import Figure
from sqlalchemy import Engine

from dispatch.analysis import DEFAULT_MIN_CELL
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
)
from dispatch.errors import AnalysisError

_DAYS = ("Mon", "Tue", "Wed", "Thu", "Fri", "Sat", "Sun")


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
            show_progress: bool | None = None) -> Analysis:
    """Read the requests of [since, until) and compute every table of the report."""
    with progress("analysing", 5, enabled=show_progress) as advance:
        everything = load_requests(engine, since, until, network.timezone, with_ids=False)
        on = everything.frame["station"].isin(network.ids)
        requests = Requests(frame=everything.frame[on].reset_index(drop=True), since=since,
                            until=until, timezone=network.timezone)
        advance(1)
        ids, weeks = network.ids, requests.weeks
        tables = {f"grid_by_{by}": with_rate(hour_grid(requests, by, ids), ridership, weeks)
                  for by in ("class", "requested_response", "team")}
        advance(1)
        for by in ("station", "hour_of_week", "band", "team", "class"):
            tables[f"service_by_{by}"] = service(requests, by)
        curve = concentration(requests, ids)
        tables["concentration"] = curve
        tables["concentration_top"] = top_shares(curve)
        tables["repeat_locations"] = repeat_locations(requests)
        advance(1)
        hotspots = find_hotspots(requests, network, ridership, settings)
        advance(1)
        cells = hotspots.cells.copy()
        cells.insert(1, "name", cells["station"].map(network.stations["name"]))
        tables["hotspot_cells"] = cells
        tables["recommendations"] = recommendations(hotspots, requests, network, ridership)
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
    "concentration": ("requests", ("share",)),
    "repeat_locations": ("requests", ("days", "share_of_station")),
    "hotspot_cells": ("requests", ("value",)),
    "recommendations": ("requests", ("per_week", "per_band_hour", "per_10k_riders",
                                     "dominant_response_share", "team_most_sent_share")),
}


def exported(analysis: Analysis, k: int) -> dict[str, pd.DataFrame]:
    """Every table with the small-cell rule applied (what may leave the hub)."""
    out = {}
    for name, table in analysis.tables.items():
        figures: tuple[str, ...]
        if name.startswith("grid_by_"):
            count, figures = "requests", ("per_week", "per_10k_riders")
        elif name in _FIGURES:
            count, figures = _FIGURES[name]
        else:  # shares of the whole network: built from every request
            out[name] = table.copy()
            continue
        out[name] = suppress(table, k, count=count,
                             figures=[f for f in figures if f in table.columns])
    return out


def write_report(analysis: Analysis, folder: Path, *, k: int = DEFAULT_MIN_CELL,
                 parquet: bool = True, show_progress: bool | None = None) -> list[Path]:
    """Write report.html and tables/NAME.csv (and .parquet) into `folder`; the paths."""
    if k < 1:
        raise AnalysisError(f"--min-cell {k}: the smallest cell shown must be 1 or more")
    tables = exported(analysis, k)
    try:
        (folder / "tables").mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise AnalysisError(f"{folder}: cannot create the report folder ({exc})") from exc
    written: list[Path] = []
    with progress("writing report", len(tables) + 1, enabled=show_progress) as advance:
        for name, table in tables.items():
            path = folder / "tables" / f"{name}.csv"
            table.to_csv(path, index=False)
            written.append(path)
            if parquet:
                table.to_parquet(path.with_suffix(".parquet"), index=False)
                written.append(path.with_suffix(".parquet"))
            advance(1)
        page = folder / "report.html"
        page.write_text(render(analysis, k, tables=tables).document(), encoding="utf-8")
        written.insert(0, page)
        advance(1)
    return written


# ---------------------------------------------------------------------------- the page

#: Where the method section points for the tables: the report's own files.
TABLES_IN_FOLDER = "Every table is in tables/ as CSV."
_STYLE = ("body{font-family:sans-serif;max-width:1200px;margin:auto;padding:1em}"
          "table{border-collapse:collapse;font-size:12px;margin:.5em 0}"
          "td,th{border:1px solid #ccc;padding:2px 6px;text-align:right}"
          ".notice{background:#fff3cd;padding:.5em;border:1px solid #e0c060}"
          "img{max-width:100%}")


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

    def document(self) -> str:
        """A self-contained HTML document (no script, nothing fetched)."""
        return ("<!DOCTYPE html><html lang=en><head><meta charset=utf-8>"
                f"<title>{html.escape(self.title)}</title>"
                f"<style>{self.style}</style></head><body>" + self.body + "</body></html>\n")


def render(analysis: Analysis, k: int = DEFAULT_MIN_CELL, *,
           tables: dict[str, pd.DataFrame] | None = None,
           tables_note: str = TABLES_IN_FOLDER) -> Parts:
    """The report's sections, every table and figure under the small-cell rule with `k`
    (`tables`: `exported(analysis, k)`, if the caller has it already)."""
    if k < 1:
        raise AnalysisError(f"--min-cell {k}: the smallest cell shown must be 1 or more")
    tables = exported(analysis, k) if tables is None else tables
    return Parts(title="Crisis requests: hotspot report", style=_STYLE,
                 sections=tuple(_sections(analysis, tables, k, tables_note)),
                 requests=len(analysis.requests.frame), hot_cells=len(analysis.hotspots.hot),
                 clusters=len(tables["recommendations"]))


def _sections(analysis: Analysis, tables: dict[str, pd.DataFrame], k: int,
              tables_note: str) -> list[str]:
    requests = analysis.requests
    period = (f"{time.strftime('%Y-%m-%d %H:%M', time.gmtime(requests.since))} to "
              f"{time.strftime('%Y-%m-%d %H:%M', time.gmtime(requests.until))} UTC "
              f"({requests.weeks:.1f} weeks); hours of the week in {requests.timezone}")
    basis = ("requests per week per 10,000 weekly riders" if analysis.ridership is not None
             else "requests per week")
    recs = tables["recommendations"]
    hot = tables["hotspot_cells"]
    hot = hot[hot["hot"]].sort_values("z", ascending=False)
    return [
        f"<h1>Crisis requests: where and when to place the teams</h1>"
        f"<p>{html.escape(period)}. {len(requests.frame)} requests at "
        f"{requests.frame['station'].nunique()} of {len(analysis.network.ids)} stations"
        + (f"; {analysis.off_network} requests at stations not on the network are left out"
           if analysis.off_network else "") + ".</p>"
        f"<p class=notice id=suppression><strong>Small cells suppressed.</strong> "
        f"{html.escape(notice(k))}</p>",
        "<h2 id=recommendations>Recommendations</h2><p>For each hotspot cluster (neighbouring "
        "hot stations) and time band: the request rate, the requested response that "
        "dominates, and the team dispatch sent most often.</p>" + _table(recs),
        "<h2 id=hotspot-map>Hotspot map</h2><p>Stations on their lines, coloured by Gi* "
        f"z-score of {html.escape(basis)} in each band; hot cells ringed.</p>"
        + _img(_network_map(analysis, hot), "hotspot map"),
        "<h2 id=heat-maps>When: requests by hour of week</h2>"
        + _img(_week_heat(analysis.tables["grid_by_requested_response"], k),
               "heat map by response")
        + _img(_station_heat(analysis.tables["grid_by_requested_response"], k),
               "heat map by station"),
        "<h2 id=service>Service</h2><p>Time to acknowledge and to resolve, p50 and p90 "
        "(seconds), escalations and the share never acknowledged.</p>"
        + _img(_service_bars(tables["service_by_band"]), "service by band")
        + "<h3>By team</h3>" + _table(tables["service_by_team"])
        + "<h3>By class</h3>" + _table(tables["service_by_class"])
        + "<h3>By station (busiest 25)</h3>"
        + _table(tables["service_by_station"].sort_values("requests", ascending=False)
                 .head(25)),
        "<h2 id=concentration>Concentration</h2>"
        + _img(_lorenz(tables["concentration"]), "concentration curve")
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
    frame = frame.astype({c: "float64" for c, t in frame.dtypes.items()
                          if isinstance(t, pd.api.extensions.ExtensionDtype)
                          and t.kind in "iuf"})
    return str(frame.to_html(index=False, escape=True, na_rep="", float_format=_number,
                             border=0, classes="data"))


def _number(value: float) -> str:
    return f"{value:.3g}" if abs(value) < 1000 else f"{value:.0f}"


def _img(figure: Figure, alt: str) -> str:
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=80, bbox_inches="tight")
    data = base64.b64encode(buffer.getvalue()).decode("ascii")
    return f'<p><img alt="{html.escape(alt)}" src="data:image/png;base64,{data}"></p>'


def _network_map(analysis: Analysis, hot: pd.DataFrame) -> Figure:
    network, cells = analysis.network, analysis.hotspots.cells
    coords = network.stations[["lon", "lat"]]
    figure = Figure(figsize=(12, 10.5))
    axes = figure.subplots(3, 3).ravel()
    norm = TwoSlopeNorm(vmin=-4, vcenter=0, vmax=6)
    scatter = None
    for ax, band in zip(axes, BAND_NAMES, strict=True):
        for line in network.lines:
            xy = coords.loc[list(line.stations)]
            ax.plot(xy["lon"], xy["lat"], color=line.colour, linewidth=1.5, alpha=0.6)
        z = cells[cells["band"] == band].set_index("station")["z"].reindex(network.ids)
        scatter = ax.scatter(coords["lon"], coords["lat"], c=z.clip(-4, 6), cmap="RdBu_r",
                             norm=norm, s=18, edgecolors="none", zorder=3)
        ring = hot[hot["band"] == band]["station"]
        ax.scatter(coords.loc[ring, "lon"], coords.loc[ring, "lat"], s=70,
                   facecolors="none", edgecolors="black", linewidths=1.2, zorder=4)
        ax.set_title(band, fontsize=10)
        ax.set_xticks([])
        ax.set_yticks([])
        ax.set_aspect(1 / np.cos(np.radians(float(coords["lat"].mean()))))
    if scatter is not None:
        figure.colorbar(scatter, ax=list(axes), shrink=0.6, label="Gi* z")
    return figure


def _week_heat(grid: pd.DataFrame, k: int) -> Figure:
    """Network-wide requests per hour of week, one panel per requested response; drawn
    from the unsuppressed grid, summed, then the small-cell rule applied to the sums."""
    figure = Figure(figsize=(14, 2.2 * len(RESPONSES)))
    axes = figure.subplots(len(RESPONSES), 1)
    for ax, response in zip(axes, RESPONSES, strict=True):
        mine = grid[grid["requested_response"] == response]
        total = mine.groupby("hour_of_week")["requests"].sum()
        cells = total.reindex(range(168), fill_value=0).to_numpy(dtype=float, copy=True)
        cells = cells.reshape(7, 24)
        cells[(cells > 0) & (cells < k)] = np.nan
        image = ax.imshow(np.ma.masked_invalid(cells), aspect="auto", cmap="viridis")
        ax.set_yticks(range(7), _DAYS)
        ax.set_xticks(range(0, 24, 3))
        ax.set_title(f"{response} (all stations; blank: suppressed)", fontsize=10)
        figure.colorbar(image, ax=ax, label="requests")
    figure.tight_layout()
    return figure


def _station_heat(grid: pd.DataFrame, k: int) -> Figure:
    """Requests per station (busiest 30) and time band; cells of 1..k-1 are blank."""
    bands = pd.Series(_band_of_hour_names(), name="band")
    frame = grid.assign(band=grid["hour_of_week"].map(bands))
    table = frame.groupby(["station", "band"])["requests"].sum().unstack("band")
    table = table.reindex(columns=list(BAND_NAMES), fill_value=0)
    top = table.sum(axis=1).sort_values(ascending=False).head(30).index
    cells = table.loc[top].to_numpy(dtype=float, copy=True)
    cells[(cells > 0) & (cells < k)] = np.nan
    figure = Figure(figsize=(12, 9))
    ax = figure.subplots()
    image = ax.imshow(np.ma.masked_invalid(cells), aspect="auto",
                      cmap=colormaps["magma_r"])
    ax.set_yticks(range(len(top)), list(top), fontsize=7)
    ax.set_xticks(range(len(BAND_NAMES)), list(BAND_NAMES), rotation=30, fontsize=8)
    ax.set_title("Requests by station (busiest 30) and time band (blank: suppressed)")
    figure.colorbar(image, ax=ax, label="requests")
    return figure


def _band_of_hour_names() -> dict[int, str]:
    return {h: BAND_NAMES[b] for h, b in enumerate(band_of_hour())}


def _service_bars(table: pd.DataFrame) -> Figure:
    figure = Figure(figsize=(12, 3.5))
    axes = figure.subplots(1, 2)
    x = np.arange(len(table))
    for ax, what in zip(axes, ("ack", "resolve"), strict=True):
        scale = 1 if what == "ack" else 60
        ax.bar(x - 0.2, table[f"{what}_p50_s"].astype(float) / scale, 0.4, label="p50")
        ax.bar(x + 0.2, table[f"{what}_p90_s"].astype(float) / scale, 0.4, label="p90")
        ax.set_xticks(x, list(table["band"].astype(str)), rotation=30, fontsize=7)
        ax.set_ylabel("seconds" if what == "ack" else "minutes")
        ax.set_title("time to acknowledge" if what == "ack" else "time to resolve")
        ax.legend()
    figure.tight_layout()
    return figure


def _lorenz(curve: pd.DataFrame) -> Figure:
    figure = Figure(figsize=(5, 4))
    ax = figure.subplots()
    ax.plot(np.r_[0, curve["station_share"]], np.r_[0, curve["cum_share"]], label="requests")
    ax.plot([0, 1], [0, 1], linestyle="--", color="grey", label="equal")
    ax.set_xlabel("share of stations (busiest first)")
    ax.set_ylabel("share of requests")
    ax.legend()
    return figure
