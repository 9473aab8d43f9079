"""The report's figures: plotly figures, each described from small prepared inputs (the
small-cell rule already applied) and drawn by plotly.js in the reader's browser.

Python only writes each figure down as plotly.js's JSON (a `Spec`: traces, layout, config;
the schema plotly.graph_objects validates, which the tests do); the browser draws it. So a
report costs no rendering here, and a planner can hover a station for its name and z, zoom,
or save a figure as PNG from its toolbar. Subplots use plotly.js's own `layout.grid`.
`page_script` is plotly.js as the plotly package ships it followed by `DRAW`: the report file
inlines it so the file opens without a network, and the web console serves it.
"""

from __future__ import annotations

import html
import json
from collections.abc import Mapping, Sequence
from functools import cache
from importlib import resources
from typing import Any

import numpy as np
import pandas as pd
from plotly.colors import diverging, make_colorscale, sequential

#: A figure as plotly.js takes it: {"data": [trace, ...], "layout": {...}}.
Spec = dict[str, Any]

_DAYS = ("Mon", "Tue", "Wed", "Thu", "Fri", "Sat", "Sun")
#: Gi* z shown from Z_LOW (blue) through 0 (white) to Z_HIGH (red); beyond, the end colours.
Z_LOW, Z_HIGH = -4.0, 6.0
# Colour scales as explicit stops (plotly.js itself knows only a few by name, and draws an
# unknown name with its default): counts light to dark, and Gi* z blue to red.
_COUNTS = make_colorscale(list(reversed(sequential.Magma)))
_WEEK = make_colorscale(sequential.Viridis)
_BLUE_TO_RED = tuple(reversed(diverging.RdBu))
#: What shows through a heat map's blank (null: suppressed) cells: in no colour scale.
_SUPPRESSED = "#bdbdbd"
_FONT = {"family": "sans-serif", "size": 12}
_CONFIG = {"displaylogo": False, "responsive": True,
           "toImageButtonOptions": {"format": "png", "scale": 2}}

#: Draws every `<div class=figure data-figure=ID>` of the page from the JSON in the
#: `<script type=application/json id=ID>` it names (plotly.js loaded before it).
DRAW = ("document.querySelectorAll('div.figure[data-figure]').forEach(function(d){"
        "var f=JSON.parse(document.getElementById(d.dataset.figure).textContent);"
        "Plotly.newPlot(d,f.data,f.layout,f.config);});")


@cache
def page_script() -> bytes:
    """plotly.js (minified, from the plotly package), then DRAW, as UTF-8. Bytes, because
    plotly.js is not ASCII: as text it is 9 MB of UCS-2 that every page would copy and
    encode again (about 30 ms a report)."""
    plotly_js = resources.files("plotly") / "package_data" / "plotly.min.js"
    return plotly_js.read_bytes() + b"\n" + DRAW.encode()


def embed(spec: Spec, label: str) -> str:
    """The page's fragment for `spec`: a div that DRAW fills (id `figure-` and `label`
    with dashes for spaces), and its JSON beside it."""
    # NaN is not JSON (and would be a gap anyway): _values writes it as null already.
    text = json.dumps({**spec, "config": _CONFIG}, allow_nan=False, separators=(",", ":"))
    # In a script element only "</" could end it early: JSON may spell "<" as \u003c.
    text = text.replace("<", "\\u003c")
    name = html.escape(label.replace(" ", "-"), quote=True)
    return (f'<div class=figure id="figure-{name}" data-figure="{name}-data" role=img '
            f'aria-label="{html.escape(label, quote=True)}"></div>'
            f'<script type="application/json" id="{name}-data">{text}</script>')


def _values(values: np.ndarray | pd.Series) -> list[Any]:
    """Numbers as (nested) lists, NaN (suppressed, or no value) as null: a blank."""
    array = np.asarray(values, dtype=float)
    out = array.astype(object)
    out[np.isnan(array)] = None
    cells: list[Any] = out.tolist()
    return cells


def _axis(n: int) -> str:
    """The n-th (0-based) subplot's axis suffix: "", "2", "3", ..."""
    return "" if n == 0 else str(n + 1)


def _title(n: int, text: str) -> dict[str, Any]:
    """A subplot's title, above the n-th subplot of a layout.grid."""
    return {"text": text, "showarrow": False, "xref": f"x{_axis(n)} domain", "x": 0.5,
            "yref": f"y{_axis(n)} domain", "y": 1.0, "yanchor": "bottom",
            "font": {"size": 12}}


def _z_scale() -> list[list[Any]]:
    """Blue to red (RdBu's 11 colours) with white at z = 0 between Z_LOW and Z_HIGH (a
    two-slope scale)."""
    middle = -Z_LOW / (Z_HIGH - Z_LOW)
    low = [[middle * i / 5, c] for i, c in enumerate(_BLUE_TO_RED[:6])]
    high = [[middle + (1 - middle) * i / 5, c] for i, c in enumerate(_BLUE_TO_RED[5:])]
    return low + high[1:]


def hotspot_map(coords: pd.DataFrame, names: pd.Series,
                lines: Sequence[tuple[Sequence[str], str]], z: pd.DataFrame,
                rings: Mapping[str, Sequence[str]]) -> Spec:
    """One panel per time band (`z`'s columns, stations as its index in `coords`' order):
    the lines, the stations coloured by Gi* z, the stations in `rings[band]` ringed."""
    bands = [str(b) for b in z.columns]
    rows = -(-len(bands) // 3)
    # Plain lists and positions: a pandas lookup per line and band costs more than the rest.
    at = {station: i for i, station in enumerate(coords.index)}
    lon, lat = _values(coords["lon"]), _values(coords["lat"])
    paths = [([lon[at[s]] for s in stations], [lat[at[s]] for s in stations], colour)
             for stations, colour in lines]
    # plotly.js reads text as a little HTML: names and ids from the feed are escaped.
    label = [html.escape(f"{name} ({station})")
             for station, name in names.reindex(coords.index).items()]
    aspect = 1 / float(np.cos(np.radians(float(coords["lat"].mean()))))
    zs = z.to_numpy(dtype=float)
    data: list[dict[str, Any]] = []
    layout: dict[str, Any] = {"annotations": []}
    for n, band in enumerate(bands):
        on = {"xaxis": f"x{_axis(n)}", "yaxis": f"y{_axis(n)}", "showlegend": False}
        data += [{"type": "scatter", "x": x, "y": y, "mode": "lines",
                  "line": {"color": colour, "width": 1.5}, "opacity": 0.6,
                  "hoverinfo": "skip", **on} for x, y, colour in paths]
        values = zs[:, n]
        data.append({"type": "scatter", "x": lon, "y": lat, "mode": "markers", "text": label,
                     "customdata": _values(values),
                     "marker": {"color": _values(np.clip(values, Z_LOW, Z_HIGH)),
                                "coloraxis": "coloraxis", "size": 7},
                     "hovertemplate": f"%{{text}}<br>Gi* z %{{customdata:.2f}}<extra>{band}"
                                      "</extra>", **on})
        ring = [at[s] for s in rings.get(band, ())]
        data.append({"type": "scatter", "x": [lon[i] for i in ring],
                     "y": [lat[i] for i in ring], "mode": "markers", "hoverinfo": "skip",
                     "marker": {"symbol": "circle-open", "size": 13, "color": "black",
                                "line": {"width": 1.5}}, **on})
        layout[f"xaxis{_axis(n)}"] = {"visible": False}
        layout[f"yaxis{_axis(n)}"] = {"visible": False, "scaleanchor": f"x{_axis(n)}",
                                      "scaleratio": aspect}
        layout["annotations"].append(_title(n, band))
    layout.update(
        grid={"rows": rows, "columns": 3, "pattern": "independent", "xgap": 0.05,
              "ygap": 0.15},
        height=330 * rows, margin={"l": 10, "r": 10, "t": 30, "b": 10}, font=_FONT,
        plot_bgcolor="white",
        coloraxis={"colorscale": _z_scale(), "cmin": Z_LOW, "cmax": Z_HIGH,
                   "colorbar": {"title": {"text": "Gi* z"}, "len": 0.6}})
    return {"data": data, "layout": layout}


def week_heat(panels: Mapping[str, np.ndarray]) -> Spec:
    """One 7 x 24 day-by-hour panel per requested response (NaN: suppressed, grey)."""
    rows = len(panels)
    data: list[dict[str, Any]] = []
    layout: dict[str, Any] = {"annotations": []}
    for n, (response, cells) in enumerate(panels.items()):
        axis = _axis(n)
        data.append({"type": "heatmap", "z": _values(cells), "x": list(range(24)),
                     "y": list(_DAYS), "xaxis": f"x{axis}", "yaxis": f"y{axis}",
                     "coloraxis": f"coloraxis{axis}",
                     "hovertemplate": "%{y} %{x}:00: %{z} requests<extra></extra>"})
        layout[f"coloraxis{axis}"] = {
            "colorscale": _WEEK,
            "colorbar": {"title": {"text": "requests"}, "y": 1 - (n + 0.5) / rows,
                         "len": 0.8 / rows, "yanchor": "middle"}}
        layout[f"xaxis{axis}"] = {"dtick": 3}
        layout[f"yaxis{axis}"] = {"autorange": "reversed"}
        layout["annotations"].append(
            _title(n, f"{response} (all stations; grey: suppressed)"))
    layout.update(grid={"rows": rows, "columns": 1, "pattern": "independent", "ygap": 0.35},
                  height=190 * rows, font=_FONT, plot_bgcolor=_SUPPRESSED,
                  margin={"l": 50, "r": 10, "t": 30, "b": 20})
    return {"data": data, "layout": layout}


def station_heat(table: pd.DataFrame) -> Spec:
    """Requests per station (rows) and time band (columns); NaN: suppressed, grey."""
    return {
        "data": [{"type": "heatmap", "z": _values(table.to_numpy(dtype=float)),
                  "x": [str(c) for c in table.columns],
                  "y": [html.escape(str(s)) for s in table.index],
                  "colorscale": _COUNTS,
                  "colorbar": {"title": {"text": "requests"}},
                  "hovertemplate": "%{y}, %{x}: %{z} requests<extra></extra>"}],
        "layout": {
            "title": {"text": "Requests by station (busiest 30) and time band "
                              "(grey: suppressed)"},
            "plot_bgcolor": _SUPPRESSED,
            "yaxis": {"autorange": "reversed", "tickfont": {"size": 9}},
            "height": 650, "font": _FONT, "margin": {"l": 90, "r": 10, "t": 40, "b": 60}},
    }


def service_bars(table: pd.DataFrame) -> Spec:
    """Time to acknowledge (s) and to resolve (min), p50 and p90, per time band."""
    bands = [str(b) for b in table["band"]]
    data: list[dict[str, Any]] = []
    layout: dict[str, Any] = {"annotations": []}
    for n, what in enumerate(("ack", "resolve")):
        scale = 1 if what == "ack" else 60
        data += [{"type": "bar", "x": bands, "name": quantile, "legendgroup": quantile,
                  "y": _values(table[f"{what}_{quantile}_s"].astype(float) / scale),
                  "marker": {"color": colour}, "showlegend": n == 0,
                  "xaxis": f"x{_axis(n)}", "yaxis": f"y{_axis(n)}"}
                 for quantile, colour in (("p50", "#1f77b4"), ("p90", "#ff7f0e"))]
        layout[f"yaxis{_axis(n)}"] = {"title": {"text": "seconds" if n == 0 else "minutes"}}
        layout["annotations"].append(
            _title(n, "time to acknowledge" if n == 0 else "time to resolve"))
    layout.update(grid={"rows": 1, "columns": 2, "pattern": "independent", "xgap": 0.15},
                  barmode="group", height=330, font=_FONT,
                  margin={"l": 60, "r": 10, "t": 30, "b": 60})
    return {"data": data, "layout": layout}


def lorenz(curve: pd.DataFrame) -> Spec:
    """The concentration curve: cumulative share of requests by share of stations."""
    return {
        "data": [
            {"type": "scatter", "mode": "lines", "name": "requests",
             "x": _values(np.r_[0, curve["station_share"].to_numpy(dtype=float)]),
             "y": _values(np.r_[0, curve["cum_share"].to_numpy(dtype=float)])},
            {"type": "scatter", "mode": "lines", "name": "equal", "x": [0, 1], "y": [0, 1],
             "line": {"dash": "dash", "color": "grey"}},
        ],
        "layout": {
            "xaxis": {"title": {"text": "share of stations (busiest first)"}, "range": [0, 1]},
            "yaxis": {"title": {"text": "share of requests"}, "range": [0, 1]},
            "width": 480, "height": 400, "font": _FONT,
            "margin": {"l": 60, "r": 10, "t": 20, "b": 50}},
    }
