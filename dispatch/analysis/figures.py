"""The report's figures: matplotlib without pyplot state, each drawn from small prepared
inputs (the small-cell rule already applied) to PNG bytes.

A figure is a `Plot`: a picklable call that returns a `Figure` (a `functools.partial` of a
function here), so `painter` can draw the report's figures in worker processes while the
caller writes the tables.
"""

from __future__ import annotations

import gc
import io
import multiprocessing
import signal
import sys
import threading
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import Executor, Future, ProcessPoolExecutor
from typing import ParamSpec, TypeVar

import numpy as np
import pandas as pd
from matplotlib import colormaps
from matplotlib.collections import LineCollection
from matplotlib.colors import TwoSlopeNorm
from matplotlib.figure import Figure

_DAYS = ("Mon", "Tue", "Wed", "Thu", "Fri", "Sat", "Sun")
_DPI = 80
#: Processes drawing the report's figures (the caller writes the tables meanwhile).
WORKERS = 2

Plot = Callable[[], Figure]
_P = ParamSpec("_P")
_T = TypeVar("_T")


def png(plot: Plot) -> bytes:
    """The figure `plot` makes, as PNG (cropped to what it draws)."""
    buffer = io.BytesIO()
    plot().savefig(buffer, format="png", dpi=_DPI, bbox_inches="tight")
    return buffer.getvalue()


class _Inline(Executor):
    """Runs each call at once, in the caller's thread (its errors raise from submit)."""

    def submit(self, fn: Callable[_P, _T], /, *args: _P.args,
               **kwargs: _P.kwargs) -> Future[_T]:
        future: Future[_T] = Future()
        future.set_result(fn(*args, **kwargs))
        return future


def painter() -> Executor:
    """Where to draw figures: forked worker processes where that is safe, else inline.

    Only fork is cheap enough: a spawned worker imports the caller's main module, pandas
    and matplotlib again, which takes longer than the five figures. Fork is used where it
    is the interpreter's default and not deprecated (Linux, Python 3.11: from 3.12 a fork
    in a process with threads, numpy's BLAS threads included, warns), and only from a
    single Python thread (a lock held by another thread at the fork stays held in the
    child): the web console's worker thread draws inline. Call it before starting
    threads (a progress bar) and submit at once: the pool forks on the first submit."""
    if (sys.platform != "linux" or sys.version_info >= (3, 12)
            or threading.active_count() > 1):
        return _Inline()
    return ProcessPoolExecutor(max_workers=WORKERS,
                               mp_context=multiprocessing.get_context("fork"),
                               initializer=_worker_start)


def _worker_start() -> None:
    # Ctrl-C reaches the whole process group: the caller handles it, and its shutdown
    # waits for the workers to finish the figure in hand.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    # Leave what the fork shared out of this worker's collections: a full one marks every
    # inherited object and so copies every page of the parent's heap (0.2-0.5 s at 100k).
    gc.freeze()


def hotspot_map(coords: pd.DataFrame, lines: Sequence[tuple[Sequence[str], str]],
                z: pd.DataFrame, rings: Mapping[str, Sequence[str]]) -> Figure:
    """One panel per time band (`z`'s columns, stations as its index in `coords`' order):
    the lines, the stations coloured by Gi* z, the stations in `rings[band]` ringed."""
    lon, lat = coords["lon"].to_numpy(), coords["lat"].to_numpy()
    paths = [coords.loc[list(stations)].to_numpy() for stations, _ in lines]
    colours = [colour for _, colour in lines]
    figure = Figure(figsize=(12, 10.5))
    axes = figure.subplots(3, 3).ravel()
    norm = TwoSlopeNorm(vmin=-4, vcenter=0, vmax=6)
    aspect = 1 / np.cos(np.radians(float(coords["lat"].mean())))
    scatter = None
    for ax, band in zip(axes, z.columns, strict=True):
        # One collection for all lines: the same strokes as a plot() per line, less work.
        ax.add_collection(LineCollection(paths, colors=colours, linewidths=1.5, alpha=0.6,
                                         capstyle="projecting", joinstyle="round"))
        scatter = ax.scatter(lon, lat, c=z[band].clip(-4, 6), cmap="RdBu_r", norm=norm,
                             s=18, edgecolors="none", zorder=3)
        ring = coords.loc[list(rings.get(band, ()))]
        ax.scatter(ring["lon"], ring["lat"], s=70, facecolors="none", edgecolors="black",
                   linewidths=1.2, zorder=4)
        ax.set_title(band, fontsize=10)
        ax.set_xticks([])
        ax.set_yticks([])
        ax.set_aspect(aspect)
    if scatter is not None:
        figure.colorbar(scatter, ax=list(axes), shrink=0.6, label="Gi* z")
    return figure


def week_heat(panels: Mapping[str, np.ndarray]) -> Figure:
    """One 7 x 24 day-by-hour panel per requested response (NaN: suppressed, blank)."""
    figure = Figure(figsize=(14, 2.2 * len(panels)))
    # Fixed spacing instead of tight_layout: the labels are the same every time, and the
    # layout pass measured every text again (a third of this figure's time).
    axes = figure.subplots(len(panels), 1, squeeze=False,
                           gridspec_kw={"hspace": 0.45, "left": 0.05, "right": 0.98,
                                        "top": 0.95, "bottom": 0.05})[:, 0]
    for ax, (response, cells) in zip(axes, panels.items(), strict=True):
        image = ax.imshow(np.ma.masked_invalid(cells), aspect="auto", cmap="viridis")
        ax.set_yticks(range(7), _DAYS)
        ax.set_xticks(range(0, 24, 3))
        ax.set_title(f"{response} (all stations; blank: suppressed)", fontsize=10)
        figure.colorbar(image, ax=ax, label="requests", pad=0.02)
    return figure


def station_heat(table: pd.DataFrame) -> Figure:
    """Requests per station (rows) and time band (columns); NaN: suppressed, blank."""
    figure = Figure(figsize=(12, 9))
    ax = figure.subplots()
    image = ax.imshow(np.ma.masked_invalid(table.to_numpy(dtype=float)), aspect="auto",
                      cmap=colormaps["magma_r"])
    ax.set_yticks(range(len(table)), list(table.index), fontsize=7)
    ax.set_xticks(range(len(table.columns)), list(table.columns), rotation=30, fontsize=8)
    ax.set_title("Requests by station (busiest 30) and time band (blank: suppressed)")
    figure.colorbar(image, ax=ax, label="requests")
    return figure


def service_bars(table: pd.DataFrame) -> Figure:
    """Time to acknowledge (s) and to resolve (min), p50 and p90, per time band."""
    figure = Figure(figsize=(12, 3.5))
    axes = figure.subplots(1, 2, gridspec_kw={"wspace": 0.18, "left": 0.06, "right": 0.99,
                                              "top": 0.9, "bottom": 0.2})
    x = np.arange(len(table))
    for ax, what in zip(axes, ("ack", "resolve"), strict=True):
        scale = 1 if what == "ack" else 60
        ax.bar(x - 0.2, table[f"{what}_p50_s"].astype(float) / scale, 0.4, label="p50")
        ax.bar(x + 0.2, table[f"{what}_p90_s"].astype(float) / scale, 0.4, label="p90")
        ax.set_xticks(x, list(table["band"].astype(str)), rotation=30, fontsize=7)
        ax.set_ylabel("seconds" if what == "ack" else "minutes")
        ax.set_title("time to acknowledge" if what == "ack" else "time to resolve")
        ax.legend()
    return figure


def lorenz(curve: pd.DataFrame) -> Figure:
    """The concentration curve: cumulative share of requests by share of stations."""
    figure = Figure(figsize=(5, 4))
    ax = figure.subplots()
    ax.plot(np.r_[0, curve["station_share"]], np.r_[0, curve["cum_share"]], label="requests")
    ax.plot([0, 1], [0, 1], linestyle="--", color="grey", label="equal")
    ax.set_xlabel("share of stations (busiest first)")
    ax.set_ylabel("share of requests")
    ax.legend()
    return figure
