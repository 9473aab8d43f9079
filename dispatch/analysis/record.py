"""The hub's record as requests: one row per alert, placed in the agency's week.

A request is one alert row of the hub (`dispatch.hub.schema.alerts`): its station, class,
requested response, the team dispatch sent, and when it was opened, acknowledged, assigned
and closed (the gateway's clock). Only the alerts table is read, so the report's cost grows
with the number of requests, not with the number of events behind them.

Time bands split the week in the agency's local time (the GTFS feed's agency_timezone): the
hotspot analysis runs per band, and the recommendations are read per band.
"""

from __future__ import annotations

import csv
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
from sqlalchemy import Engine, select
from sqlalchemy.exc import SQLAlchemyError

from dispatch.analysis import AnalysisError, InputError
from dispatch.analysis import period as _period
from dispatch.hub.schema import alerts

# At home in `period` (light to import); here too, where the rest of the analysis looks.
WEEK_S = _period.WEEK_S
parse_since = _period.parse_since
#: Requested responses in the contract (docs/asyncapi.yaml), most urgent first.
RESPONSES = ("emergency_services", "crisis_team", "ambassador")
CLASSES = ("P0", "P1", "P2", "P3")
#: Teams dispatch can assign (AlertBody.team).
TEAMS = ("emergency_services", "crisis_team", "co_response", "ambassador")


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


def load_requests(engine: Engine, since: float, until: float, timezone: str) -> Requests:
    """Every alert opened in [since, until), with its hour of week, band and service times."""
    query = select(
        alerts.c.station, alerts.c.alert_id, alerts.c["class"], alerts.c.state,
        alerts.c.requested_response, alerts.c.team, alerts.c.location, alerts.c.escalations,
        alerts.c.opened_at, alerts.c.acknowledged_at, alerts.c.assigned_at,
        alerts.c.closed_at,
    ).where((alerts.c.opened_at >= since) & (alerts.c.opened_at < until))
    try:
        with engine.connect() as conn:
            frame = pd.read_sql(query, conn)
    except SQLAlchemyError as exc:
        raise AnalysisError(f"cannot read the hub's alerts from {engine.url!r}: {exc}") from exc
    return Requests(frame=placed(frame, since, timezone), since=since, until=until,
                    timezone=timezone)


def placed(frame: pd.DataFrame, since: float, timezone: str) -> pd.DataFrame:
    """Add hour_of_week, band, week, to_ack_s and to_resolve_s to alert rows."""
    out = frame.copy()
    for column in ("opened_at", "acknowledged_at", "assigned_at", "closed_at"):
        out[column] = pd.to_numeric(out[column], errors="coerce").astype(float)
    try:
        local = pd.to_datetime(out["opened_at"], unit="s", utc=True).dt.tz_convert(timezone)
    except (KeyError, ValueError) as exc:  # zoneinfo's errors are KeyError subclasses
        raise InputError(f"time zone {timezone!r} is unknown (use an IANA name such as "
                         "Europe/Zurich)") from exc
    out["hour_of_week"] = (local.dt.day_of_week * 24 + local.dt.hour).astype(int)
    out["band"] = pd.Categorical.from_codes(
        band_of_hour()[out["hour_of_week"].to_numpy()], categories=list(BAND_NAMES))
    out["week"] = ((out["opened_at"] - since) // WEEK_S).astype(int)
    out["to_ack_s"] = out["acknowledged_at"] - out["opened_at"]
    resolved = out["state"] == "resolved"
    out["to_resolve_s"] = (out["closed_at"] - out["opened_at"]).where(resolved)
    out["escalations"] = out["escalations"].fillna(0).astype(int)
    out["team"] = out["team"].astype(object).where(out["team"].notna(), None)
    out["location"] = out["location"].fillna("").astype(str)
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
