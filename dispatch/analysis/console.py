"""The web console's hotspots page: the report's views for a period, off the event loop.

The page shows what `stationgw hub report` writes (`report.render`: the same sections, the
same small-cell rule), for the period an operator picks, ending now. The analysis takes
seconds of CPU, so it runs in a worker thread (`asyncio.to_thread`), one at a time, and each
period's result is kept for `ttl_s`: a control-room screen that reloads the page, or several
screens on the same period, share one computation (callers that arrive while it runs wait
for it).

This module is light to import (the standard library and the package's errors): the hub's
web console imports it at start, and pandas, esda, plotly and the GTFS feed load in the
worker thread on the first request for the page.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from dispatch.analysis import DEFAULT_MIN_CELL
from dispatch.analysis.period import parse_since
from dispatch.errors import AnalysisError, InputError

if TYPE_CHECKING:
    import pandas as pd
    from sqlalchemy import Engine

    from dispatch.analysis.network import Network
    from dispatch.analysis.report import Parts

#: The periods the page offers (any LENGTH that `--since` takes is accepted).
PERIODS = ("7d", "28d", "90d", "26w", "52w")
DEFAULT_PERIOD = "90d"
#: The longest period the page computes (the report command has no such limit).
MAX_PERIOD_S = 2 * 366 * 86400
#: Where the page's method section points for the tables.
TABLES_NOTE = ("Every table, under the same rule, as CSV and Parquet: `stationgw hub report "
               "--since LENGTH --out DIR`.")
_KEPT = 8  # periods cached at once


@dataclass(frozen=True)
class HotspotSource:
    """What the hotspots page is computed from, and how long a result is kept."""

    gtfs: Path | None = None  # None: the simulated metro shipped with the package
    stations_map: Path | None = None  # None: with the shipped metro, its own mapping
    ridership: Path | None = None
    min_cell: int = DEFAULT_MIN_CELL
    alpha: float = 0.05
    ttl_s: float = 120.0
    clock: Callable[[], float] = time.time  # the wall clock: a period ends now

    def __post_init__(self) -> None:
        if self.min_cell < 1:
            raise InputError(f"min_cell {self.min_cell}: give 1 or more")
        if not 0 < self.alpha < 1:
            raise InputError(f"alpha {self.alpha}: give a level between 0 and 1")
        if self.ttl_s < 0:
            raise InputError(f"ttl_s {self.ttl_s}: give 0 (no cache) or more seconds")


def period(text: str) -> float:
    """The page's `since` as seconds; InputError (the message names the fix) when unusable."""
    length = parse_since(text)
    if length > MAX_PERIOD_S:
        raise InputError(f"since {text!r}: the console shows at most 104 weeks (longer: "
                         "`stationgw hub report`)")
    return length


@dataclass(frozen=True)
class View:
    """One period's page: the report's parts, and when and over what they were computed."""

    parts: Parts
    since: float
    until: float
    seconds: float  # how long the analysis took


@dataclass
class _Entry:
    task: asyncio.Future[View]
    done_at: float | None = None  # monotonic


class HotspotViews:
    """The report's parts per period, computed in a worker thread and kept for `ttl_s`."""

    def __init__(self, engine: Engine, source: HotspotSource | None = None) -> None:
        self.engine = engine
        self.source = source or HotspotSource()
        self.computed = 0  # analyses run (a cached page does not count)
        self._entries: dict[float, _Entry] = {}
        self._one_at_a_time = threading.Lock()  # one CPU-heavy analysis at a time
        self._network: tuple[Network, pd.Series | None] | None = None
        self._script: bytes | None = None

    async def script(self) -> bytes:
        """What draws the page's figures (plotly.js, then the lines that draw each figure
        from its JSON), UTF-8: read once, in a worker thread (it is megabytes)."""
        if self._script is None:
            self._script = await asyncio.to_thread(_page_script)
        return self._script

    async def view(self, length: float) -> View:
        """The page for the `length` seconds before now (from `period`): the cached one if
        it is younger than `ttl_s`, else computed (once, however many callers wait)."""
        now = time.monotonic()
        entry = self._entries.get(length)
        if entry is None or not self._fresh(entry, now):
            entry = _Entry(asyncio.ensure_future(asyncio.to_thread(self._compute, length)))

            def finished(_: asyncio.Future[View], entry: _Entry = entry) -> None:
                entry.done_at = time.monotonic()

            entry.task.add_done_callback(finished)
            self._entries[length] = entry
            self._prune(now)
        # A page request that goes away does not cancel the computation others wait for.
        return await asyncio.shield(entry.task)

    def _fresh(self, entry: _Entry, now: float) -> bool:
        if not entry.task.done():
            return True
        if entry.task.cancelled() or entry.task.exception() is not None:
            return False  # a failure is not kept: the next request tries again
        return entry.done_at is not None and now - entry.done_at < self.source.ttl_s

    def _prune(self, now: float) -> None:
        for length in [k for k, e in self._entries.items() if not self._fresh(e, now)]:
            del self._entries[length]
        while len(self._entries) > _KEPT:
            oldest = min(self._entries, key=lambda k: self._entries[k].done_at or now)
            del self._entries[oldest]

    def _compute(self, length: float) -> View:
        """Called in a worker thread: read the requests, analyse, render."""
        from dispatch.analysis.hotspots import Settings  # noqa: PLC0415
        from dispatch.analysis.report import analyse, render  # noqa: PLC0415

        with self._one_at_a_time:
            started = time.monotonic()
            network, ridership = self._load_network()
            until = self.source.clock()
            analysis = analyse(self.engine, network, since=until - length, until=until,
                               ridership=ridership, settings=Settings(alpha=self.source.alpha),
                               show_progress=False)
            parts = render(analysis, self.source.min_cell, tables_note=TABLES_NOTE)
            self.computed += 1
            return View(parts=parts, since=until - length, until=until,
                        seconds=time.monotonic() - started)

    def _load_network(self) -> tuple[Network, pd.Series | None]:
        """The network and ridership, read once (under the lock)."""
        if self._network is None:
            from dispatch.analysis.metro import SHIPPED  # noqa: PLC0415
            from dispatch.analysis.network import read_mapping, read_network  # noqa: PLC0415
            from dispatch.analysis.record import read_ridership  # noqa: PLC0415

            source = self.source
            mapping_file = source.stations_map or (SHIPPED / "stations.csv"
                                                   if source.gtfs is None else None)
            try:
                mapping = read_mapping(mapping_file) if mapping_file is not None else None
                network = read_network(source.gtfs or SHIPPED, mapping)
                ridership = (read_ridership(source.ridership) if source.ridership is not None
                             else None)
            except InputError as exc:  # the hub's set-up, not the operator's request
                raise AnalysisError(f"the hotspots page's network: {exc}") from exc
            self._network = (network, ridership)
        return self._network


def _page_script() -> bytes:
    from dispatch.analysis.figures import page_script  # noqa: PLC0415

    return page_script()
