"""Counting the requests: grids, service figures, concentration and repeat locations.

Pure functions of the requests frame (`record.placed`): no I/O, no suppression (that is
`privacy`'s, applied on export).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd

from dispatch.analysis.record import CLASSES, RESPONSES, Requests, positions

#: The shares of stations the concentration table reports (the top 5 %, 10 % ...).
TOP_SHARES = (0.05, 0.10, 0.20, 0.25, 0.50)


def hour_grid(requests: Requests, by: str, stations: Sequence[str]) -> pd.DataFrame:
    """Requests per station x hour of week (0-167) x `by` (class or requested_response), in
    long form, every cell present (zeros included)."""
    frame = requests.frame
    values = CLASSES if by == "class" else RESPONSES if by == "requested_response" else sorted(
        frame[by].dropna().unique())
    # One pass in C over the requests: each one's cell number, counted with bincount (the
    # cells come out in the order of the product below; others' stations and values drop).
    station = positions(frame["station"], stations)
    value = positions(frame[by], values)
    mine = (station >= 0) & (value >= 0)
    hour = frame["hour_of_week"].to_numpy()
    cell = (station[mine] * 168 + hour[mine]) * len(values) + value[mine]
    counts = np.bincount(cell, minlength=len(stations) * 168 * len(values))
    full = pd.MultiIndex.from_product([list(stations), range(168), list(values)],
                                      names=["station", "hour_of_week", by])
    return pd.Series(counts.astype(np.int64), index=full, name="requests").reset_index()


def with_rate(grid: pd.DataFrame, ridership: pd.Series | None, weeks: float) -> pd.DataFrame:
    """Add `per_week` and, with ridership, `per_10k_riders` (requests per week per 10,000
    weekly riders of the station)."""
    out = grid.copy()
    out["per_week"] = out["requests"] / weeks
    if ridership is not None:
        # Per station once, not per cell: the grid repeats each station 168 x values times.
        codes, stations = pd.factorize(out["station"])
        riders = ridership.reindex(stations).to_numpy(dtype=float)[codes]
        out["per_10k_riders"] = out["per_week"] / riders * 10_000
    return out


_TIMES = pd.MultiIndex.from_product([["to_ack_s", "to_resolve_s"], [0.5, 0.9]])


def service(requests: Requests, by: str) -> pd.DataFrame:
    """Per `by` (station, hour_of_week, team, class ...): requests, time to acknowledge and
    to resolve (p50, p90, seconds), escalations, and the share never acknowledged."""
    frame = requests.frame
    groups = frame.groupby(by, observed=True, dropna=True)
    # Both quantiles of both times in one call: one sort per group and column, not four.
    # (Reindexed: no group at all, as in an empty period, leaves no columns to unstack.)
    times = groups[["to_ack_s", "to_resolve_s"]].quantile([0.5, 0.9]).unstack().reindex(
        columns=_TIMES)
    escalated = (frame["escalations"] > 0).groupby(frame[by], observed=True, dropna=True)
    out = pd.DataFrame({
        "requests": groups.size(),
        "acknowledged": groups["to_ack_s"].count(),
        "ack_p50_s": times[("to_ack_s", 0.5)],
        "ack_p90_s": times[("to_ack_s", 0.9)],
        "resolved": groups["to_resolve_s"].count(),
        "resolve_p50_s": times[("to_resolve_s", 0.5)],
        "resolve_p90_s": times[("to_resolve_s", 0.9)],
        "escalations": groups["escalations"].sum(),
        "escalated_share": escalated.mean().astype(float),
    })
    out["never_acknowledged_share"] = 1 - out["acknowledged"] / out["requests"]
    return out.reset_index()


SERVICE_FIGURES = ("acknowledged", "ack_p50_s", "ack_p90_s", "resolved", "resolve_p50_s",
                   "resolve_p90_s", "escalations", "escalated_share",
                   "never_acknowledged_share")


def concentration(requests: Requests, stations: Sequence[str]) -> pd.DataFrame:
    """Stations from most to fewest requests, with the cumulative share of requests against
    the cumulative share of stations (a Lorenz-style curve, read from the top)."""
    counts = requests.frame["station"].value_counts().reindex(list(stations), fill_value=0)
    ranked = counts.sort_values(ascending=False, kind="stable").rename("requests")
    out = ranked.reset_index()
    out.columns = pd.Index(["station", "requests"])
    total = max(1, int(out["requests"].sum()))
    out["share"] = out["requests"] / total
    out["cum_share"] = out["share"].cumsum()
    out["station_share"] = np.arange(1, len(out) + 1) / max(1, len(out))
    return out


def top_shares(curve: pd.DataFrame) -> pd.DataFrame:
    """The share of all requests at the busiest 5 %, 10 %, 20 %, 25 % and 50 % of stations."""
    rows = []
    for top in TOP_SHARES:
        n = max(1, int(np.ceil(top * len(curve))))
        rows.append({"top_stations_share": top, "stations": n,
                     "requests_share": float(curve["share"].iloc[:n].sum())})
    return pd.DataFrame(rows)


def repeat_locations(requests: Requests) -> pd.DataFrame:
    """Places (station, location) with more than one request, busiest first, with their
    share of the station's requests and the days they had requests on. A request without
    a location (a help point whose config names none) is at no place to repeat."""
    frame = requests.frame
    day = (frame["opened_at"] // 86400).astype(int)
    placed = frame.assign(day=day)[frame["location"] != ""]
    groups = placed.groupby(["station", "location"], observed=True)
    out = pd.DataFrame({"requests": groups.size(), "days": groups["day"].nunique()})
    out = out[out["requests"] > 1].reset_index()
    per_station = frame["station"].value_counts()
    out["share_of_station"] = out["requests"] / out["station"].map(per_station).astype(float)
    return out.sort_values(["requests", "station", "location"],
                           ascending=[False, True, True], ignore_index=True)
