"""The hub's record as requests: one row per alert, placed in the agency's week.

A request is one alert row of the hub (`dispatch.hub.schema.alerts`): its station, class,
requested response, the team dispatch sent, its location, escalations, when it was opened
(the gateway's clock), and how long it took to be acknowledged and, if resolved, to be
resolved. Only the alerts table is read, so the report's cost grows with the number of
requests, not with the number of events behind them; and only these columns, straight from
the DB-API cursor, with the text ones as categoricals (the report's cost is mostly this read).

Time bands split the week in the agency's local time (the GTFS feed's agency_timezone): the
hotspot analysis runs per band, and the recommendations are read per band.
"""

from __future__ import annotations

import csv
import gc
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, get_args

import numpy as np
import pandas as pd
from sqlalchemy import Engine, Select, case, func, literal, select
from sqlalchemy.exc import SQLAlchemyError

from dispatch.analysis import period as _period
from dispatch.errors import AnalysisError, InputError
from dispatch.hub.schema import alerts
from gateway.core.commands import Team
from gateway.core.model import CLASS_NAMES, REQUESTED_RESPONSE

# At home in `period` (light to import); here too, where the rest of the analysis looks.
WEEK_S = _period.WEEK_S
parse_since = _period.parse_since
#: Requested responses in the contract (docs/asyncapi.yaml), most urgent first ("none", for
#: P3 telemetry, is never a request).
RESPONSES = tuple(r for r in REQUESTED_RESPONSE.values() if r != "none")
CLASSES = CLASS_NAMES
#: Teams dispatch can assign (AlertBody.team).
TEAMS: tuple[str, ...] = get_args(Team)


@dataclass(frozen=True)
class Band:
    """Part of the week: some days (0 Monday .. 6 Sunday), from one hour up to another."""

    name: str
    days: tuple[int, ...]
    start: int
    end: int

    @property
    def hours(self) -> int:
        """Hours per week in the band."""
        return len(self.days) * (self.end - self.start)


_WEEKDAYS, _WEEKEND = (0, 1, 2, 3, 4), (5, 6)
BANDS: tuple[Band, ...] = (
    Band("Mon-Fri 00-06", _WEEKDAYS, 0, 6),
    Band("Mon-Fri 06-10", _WEEKDAYS, 6, 10),
    Band("Mon-Fri 10-15", _WEEKDAYS, 10, 15),
    Band("Mon-Fri 15-19", _WEEKDAYS, 15, 19),
    Band("Mon-Fri 19-24", _WEEKDAYS, 19, 24),
    Band("Sat-Sun 00-06", _WEEKEND, 0, 6),
    Band("Sat-Sun 06-12", _WEEKEND, 6, 12),
    Band("Sat-Sun 12-18", _WEEKEND, 12, 18),
    Band("Sat-Sun 18-24", _WEEKEND, 18, 24),
)
BAND_NAMES = tuple(b.name for b in BANDS)


def band_of_hour() -> np.ndarray:
    """The band index of each hour of the week (0 = Monday 00:00-01:00 local time)."""
    out = np.full(168, -1, dtype=int)
    for index, band in enumerate(BANDS):
        for day in band.days:
            out[day * 24 + band.start: day * 24 + band.end] = index
    assert (out >= 0).all(), "the bands must cover the week"
    return out


@dataclass(frozen=True)
class Requests:
    """The requests of a period, and the period."""

    frame: pd.DataFrame
    since: float
    until: float
    timezone: str

    @property
    def weeks(self) -> float:
        """Length of the period in weeks (the denominator of every weekly rate)."""
        return (self.until - self.since) / WEEK_S

    @property
    def week_count(self) -> int:
        """Whole or partial weeks in the period (the trend's time steps)."""
        return max(1, int(np.ceil(self.weeks - 1e-9)))


#: One text key per request, built by the database: station, class, requested response,
#: team ("=" + team, or "" for none) and location. A request then costs Python one string
#: instead of five, and the few thousand distinct keys are split once, not per request. The
#: separator cannot occur in the first four (ids and contract names); the location, free
#: text, comes last and is split off whole.
_SEP = "\x1f"
_KEY_PARTS = ("station", "class", "requested_response", "team", "location")
_CHUNK = 1 << 18  # rows per fetch: bounds the Python objects alive at once
_NUMERIC = {float, int, type(None)}  # what a time or a count may come back as
_LATEST = 1e308  # no time is later (the largest float is 1.8e308)


def _query(since: float, until: float, *, with_ids: bool) -> Select[Any]:
    """The period's requests as (key, opened_at, acknowledged_at, resolved_at, escalations
    [, alert_id]): only what the analysis reads. The times come as stored, not as SQL
    differences: SQLite keeps any value in any column, and its arithmetic would turn a text
    into 0 (a time to acknowledge of minus 56 years), where _read checks each value's type."""
    c = alerts.c
    team = func.coalesce(literal("=") + c.team, "")
    key = (c.station + _SEP + c["class"] + _SEP + c.requested_response + _SEP + team + _SEP
           + func.coalesce(c.location, ""))
    resolved = case((c.state == "resolved", c.closed_at))
    columns = [key, c.opened_at, c.acknowledged_at, resolved, func.coalesce(c.escalations, 0)]
    if with_ids:
        columns.append(c.alert_id)
    # Beyond +-_LATEST is an opening time that is not a number: SQLite sorts a text or a
    # blob after every number, PostgreSQL NaN after and -Infinity before. It is read, for
    # _read to refuse, not left out of the figures unsaid.
    period = (c.opened_at >= since) & (c.opened_at < until)
    return select(*columns).where(period | (c.opened_at > _LATEST) | (c.opened_at < -_LATEST))


def _fetch(engine: Engine, query: Select[Any]) -> Iterator[Sequence[Any]]:
    """The query's rows in chunks, straight from the DB-API cursor (no Row objects)."""
    compiled = query.compile(dialect=engine.dialect)
    params: Any = compiled.params
    if compiled.positiontup is not None:
        params = tuple(params[name] for name in compiled.positiontup)
    connection = engine.raw_connection()
    try:
        cursor = connection.cursor()
        cursor.execute(str(compiled), params)
        while rows := cursor.fetchmany(_CHUNK):
            yield rows
        cursor.close()
    finally:
        connection.close()


@contextmanager
def _collector_paused() -> Iterator[None]:
    """No cyclic garbage collection while rows arrive. Each row is a new tuple, which the
    collector tracks: at a million rows its passes over them took about as long as the
    fetch itself, and rows of text and numbers hold no cycles to find. (Process-wide: in
    the web console, other threads' cycles wait the few seconds of a read.)"""
    was = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was:
            gc.enable()


def load_requests(engine: Engine, since: float, until: float, timezone: str, *,
                  with_ids: bool = True) -> Requests:
    """Every alert opened in [since, until), with its hour of week, band and service times
    (and its alert_id, unless `with_ids` is false: no table of the report shows it)."""
    try:
        with _collector_paused():
            code, uniques, numbers, ids = _read(engine, _query(since, until, with_ids=with_ids))
    except (SQLAlchemyError, engine.dialect.loaded_dbapi.Error) as exc:
        raise AnalysisError(f"cannot read the hub's alerts from {engine.url!r}: {exc}") from exc
    opened, acknowledged, resolved, escalations = numbers
    parts = [key.split(_SEP, len(_KEY_PARTS) - 1) for key in uniques]
    frame = pd.DataFrame({name: _categorical([p[i] for p in parts], code)
                          for i, name in enumerate(_KEY_PARTS)})
    team = frame["team"].cat  # "=name", or "" (no team): the blank becomes missing
    named = team.rename_categories([t[1:] for t in team.categories])
    frame["team"] = named.cat.remove_categories([""]) if "" in team.categories else named
    if ids is not None:
        frame.insert(1, "alert_id", pd.Series(ids, dtype="str"))
    frame["escalations"] = escalations.astype(int)
    frame["opened_at"] = opened
    frame["to_ack_s"] = acknowledged - opened
    frame["to_resolve_s"] = resolved - opened
    return Requests(frame=placed(frame, since, timezone), since=since, until=until,
                    timezone=timezone)


def _read(engine: Engine, query: Select[Any]) -> tuple[
        np.ndarray, list[str], list[np.ndarray], list[Any] | None]:
    """The query's rows as columns: each row's key code, the distinct keys, the four
    numbers (NULL as NaN; AnalysisError if one is not a number) and the alert ids (None
    without them). Its own function so that the rows are gone when it returns: the
    collector, enabled again after it, would otherwise first walk every one of them (30 ms
    at 100k rows)."""
    width = len(query.selected_columns)
    keys: list[np.ndarray] = []
    uniques: dict[str, int] = {}
    numbers: list[np.ndarray] = []
    ids: list[Any] = []
    for rows in _fetch(engine, query):
        columns = list(zip(*rows, strict=True))
        # A dict codes the keys: quicker than pandas' hash table for fresh str objects.
        keys.append(np.fromiter((uniques.setdefault(key, len(uniques)) for key in columns[0]),
                                dtype=np.intp, count=len(rows)))
        # SQLite keeps any value in any column, and numpy would read the text "nan" or
        # "1_0" as a number: only numbers and NULL pass (about 3% of the read).
        if not set().union(*(map(type, column) for column in columns[1:5])) <= _NUMERIC:
            raise _not_a_number()
        numbers.append(np.array(columns[1:5], dtype=float))  # NULL (None) -> NaN
        if width > 5:
            ids.extend(columns[5])
    code = np.concatenate(keys) if keys else np.zeros(0, dtype=np.intp)
    table = np.concatenate(numbers, axis=1) if numbers else np.zeros((4, 0))
    if np.isinf(table).any() or np.isnan(table[0]).any():  # PostgreSQL's float8 holds both
        raise _not_a_number()
    return code, list(uniques), list(table), ids if width > 5 else None


def _not_a_number() -> AnalysisError:
    return AnalysisError(
        "the hub's alerts hold a time or an escalation count that is not a number: the "
        "database was changed by hand or is damaged; find the row (SQLite's typeof() of "
        "opened_at, acknowledged_at, closed_at and escalations in alerts) or restore the "
        "database from a backup")


def positions(column: pd.Series, values: Sequence[object]) -> np.ndarray:
    """Each row's position in `values` (-1: not among them, or missing), as int64. A
    categorical column is looked up per category: recoding it (pd.Categorical(column,
    categories=...)) warns, and will raise in pandas 4, when it has a category that is not
    among `values`, as a station the network does not know still has once its rows are
    left out."""
    where = pd.Index(list(values))
    if isinstance(column.dtype, pd.CategoricalDtype):
        found = np.r_[where.get_indexer(column.cat.categories), -1]  # code -1: missing
        return np.asarray(found[column.cat.codes.to_numpy()], dtype=np.int64)
    return np.asarray(where.get_indexer(column), dtype=np.int64)


def _categorical(values: list[str], code: np.ndarray) -> pd.Categorical:
    """Per request, one part of its key: categories sorted (as strings sort), so groups come
    out in the same order as from text columns, whatever the database's row order."""
    place, categories = pd.factorize(np.asarray(values, dtype=object), sort=True)
    return pd.Categorical.from_codes(place[code], categories=pd.Index(categories, dtype="str"))


def placed(frame: pd.DataFrame, since: float, timezone: str) -> pd.DataFrame:
    """Add hour_of_week, band and week to request rows (opened_at in seconds, UTC)."""
    out = frame.copy()
    opened = out["opened_at"].to_numpy(dtype=float)
    try:
        local = pd.DatetimeIndex(pd.to_datetime(opened, unit="s", utc=True)).tz_convert(
            timezone)
    except (KeyError, ValueError) as exc:  # zoneinfo's errors are KeyError subclasses
        raise InputError(f"time zone {timezone!r} is unknown (use an IANA name such as "
                         "Europe/Zurich)") from exc
    # Local wall-clock hours since 1970-01-01 (a Thursday: 72 hours after a Monday 00:00).
    # In whole seconds: pandas picks the index's unit from the data (whole-second times
    # alone come as microseconds in pandas 3), so asi8's unit is not fixed until set.
    hours = local.tz_localize(None).as_unit("s").asi8 // 3600
    out["hour_of_week"] = ((hours + 72) % 168).astype(int)
    out["band"] = pd.Categorical.from_codes(
        band_of_hour()[out["hour_of_week"].to_numpy()], categories=list(BAND_NAMES))
    out["week"] = ((opened - since) // WEEK_S).astype(int)
    return out


def read_ridership(path: Path) -> pd.Series:
    """A ridership CSV: columns `station,riders` (gateway station id, riders per week)."""
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise InputError(f"{path}: cannot read the ridership file ({exc.strerror})") from exc
    rows = csv.DictReader(line for line in text.splitlines() if not line.startswith("#"))
    if rows.fieldnames is None or not {"station", "riders"} <= set(rows.fieldnames):
        raise InputError(f"{path}: the ridership file needs the header station,riders "
                         f"(found {rows.fieldnames})")
    riders: dict[str, float] = {}
    for number, row in enumerate(rows, start=2):
        station = (row["station"] or "").strip()
        try:
            value = float(row["riders"] or "")
        except ValueError:
            value = -1.0
        if not station or not np.isfinite(value) or value <= 0 or station in riders:
            raise InputError(f"{path}:{number}: {row['station']!r},{row['riders']!r}: each "
                             "station once, with a positive number of riders per week")
        riders[station] = value
    return pd.Series(riders, name="riders", dtype=float)


def riders_of(ridership: pd.Series, ids: Sequence[str], source: str = "the ridership"
              ) -> pd.Series:
    """The riders of each station of `ids`; InputError naming the stations the ridership
    (read from `source`) lacks or gives no positive number: a rate without riders is no
    rate, and one such station used to blank every band's hotspots."""
    riders = ridership.reindex(list(ids)).astype(float)
    bad = riders.index[~(np.isfinite(riders) & (riders > 0))]
    if len(bad):
        more = f" and {len(bad) - 5} more" if len(bad) > 5 else ""
        raise InputError(f"{source} has no positive number of riders for stations "
                         f"{', '.join(bad[:5])}{more}: give a line station,riders for every "
                         "station of the network, or leave --ridership out")
    return riders
