"""Where and when requests cluster: Getis-Ord Gi* on the station network, per time band.

For each time band, each station's value is its requests per week in that band (per 10,000
weekly riders when a ridership file is given). Gi* (esda's `G_Local` with `star=True` and
binary weights) runs on the square root of that value, which steadies the variance and the
skew of counts (Poisson) so that its normal approximation holds: it compares the sum over a
station and its network neighbours with what the whole network's mean would give, as a
z-score. (On the raw rates, small neighbourhoods at line ends with skewed counts gave a false
flag in 8 of 100 null metros, over the 2.5 % allowed; on the square root, 3 of 100, within
Monte Carlo error: tests/test_analysis.py.)

A (station, band) cell is a hot spot when both hold:
1. its Gi* z is positive and significant after Benjamini-Hochberg false-discovery-rate control
   over every station and band of the run (q <= alpha / 2, alpha default 0.05);
2. its own value is high: standard score (of the square root) within its band above `own_z`
   (default 1.645, the upper 5 %). Gi* alone also lights up the plain neighbours of a busy
   station, because the busy station is in their neighbourhood; this keeps the stations that
   are busy themselves.

With no hotspots at all, BH keeps the chance of flagging any cell at or below alpha / 2 for
each of the two families that can flag (the whole period, and the recent window for new
hotspots), so at or below alpha for the run; the second condition only removes flags.

Emerging trends follow ESRI's emerging hot spot analysis, simplified for weekly data: Gi* z is
computed for every week, and a Mann-Kendall test (Kendall's tau of z against the week number,
scipy) gives each cell's trend. With the last `recent_weeks` weeks as the recent window:
new (hot in the recent window, not before it), intensifying (significant upward trend, hot
over the period or recently), diminishing (significant downward trend, hot over the period
or before), persistent (hot before and in the recent window, no significant trend), sporadic
(hot in one window only, no trend). The trend test runs on hot cells only, at alpha each.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass

import networkx as nx
import numpy as np
import pandas as pd
from esda.getisord import G_Local
from libpysal.weights import W, fill_diagonal
from scipy import stats

from dispatch.analysis.network import Network
from dispatch.analysis.record import BAND_NAMES, BANDS, WEEK_S, Requests, positions


@dataclass(frozen=True)
class Settings:
    """The thresholds of the analysis (the defaults are the documented method)."""

    alpha: float = 0.05  # the false-positive budget under no hotspots, and the trend level
    own_z: float = 1.645  # a hot cell's own standard score within its band
    recent_weeks: int = 4

    @property
    def family_alpha(self) -> float:
        """Each of the two families that can flag a cell (the whole period, the recent
        window) gets half of alpha, so together they flag anything with no hotspots with a
        chance of at most alpha."""
        return self.alpha / 2


DEFAULTS = Settings()


@dataclass(frozen=True)
class Hotspots:
    """Every (station, band) cell's Gi* result and trend; the hot cells' clusters."""

    #: station, band, requests, value, z, p, own_z, q, hot, hot_period, trend, cluster
    cells: pd.DataFrame
    by_ridership: bool

    @property
    def hot(self) -> set[tuple[str, str]]:
        """The hot (station, band) cells."""
        rows = self.cells[self.cells["hot"]]
        return set(zip(rows["station"], rows["band"], strict=True))


def _cells(frame: pd.DataFrame, ids: list[str]) -> np.ndarray:
    """Each request's (station, band) cell: station's place in `ids` x 9 + band's place in
    BAND_NAMES (-1: a station not in `ids`). Counting these with bincount is one pass in C,
    where a group-by and unstack per window and week was most of the analysis' time."""
    station, band = positions(frame["station"], ids), positions(frame["band"], BAND_NAMES)
    return np.where((station >= 0) & (band >= 0), station * len(BAND_NAMES) + band, -1)


def _counted(cells: np.ndarray, ids: list[str]) -> pd.DataFrame:
    """Requests per station (rows, in `ids` order) and band (columns), from the requests'
    `_cells`."""
    counts = np.bincount(cells[cells >= 0], minlength=len(ids) * len(BAND_NAMES))
    return pd.DataFrame(counts.reshape(len(ids), len(BAND_NAMES)),
                        index=pd.Index(ids, name="station"),
                        columns=pd.Index(BAND_NAMES, name="band"))


def band_values(counts: pd.DataFrame, weeks: float,
                ridership: pd.Series | None) -> pd.DataFrame:
    """Requests per week, or per week per 10,000 weekly riders with a ridership."""
    values = counts / max(weeks, 1e-9)
    if ridership is not None:
        values = values.div(ridership.reindex(values.index), axis=0) * 10_000
    return values


def with_self(weights: W) -> W:
    """Binary `weights` with each station its own neighbour (Gi*'s self-weight of 1).

    esda adds the self-weights in every Gi* call whose weights lack them (a copy of the
    whole matrix each time, most of a call's cost); made once, every band reuses them."""
    if (weights.sparse.diagonal() != 0).all():
        return weights
    return fill_diagonal(weights, 1)


def gi_star(values: np.ndarray, weights: W) -> tuple[np.ndarray, np.ndarray]:
    """Gi* z-scores and one-sided (hot) p-values of one band, under the normal approximation
    (`weights`: binary; quickest `with_self` already)."""
    if np.allclose(values, values[0]):  # no variation: nothing stands out
        return np.zeros(len(values)), np.ones(len(values))
    with warnings.catch_warnings(), np.errstate(invalid="ignore", divide="ignore"):
        warnings.simplefilter("ignore")  # esda's notes on weights transforms
        local = G_Local(values, weights, transform="B", star=True, permutations=0)
    z = np.nan_to_num(np.asarray(local.Zs, dtype=float), nan=0.0)
    return z, stats.norm.sf(z)


def flag(values: pd.DataFrame, weights: W, settings: Settings) -> pd.DataFrame:
    """Gi* per band, FDR over all cells at `settings.family_alpha`, and the hot rule; one
    row per (station, band)."""
    weights = with_self(weights)
    stations, bands = list(values.index), list(values.columns)
    value = values.to_numpy(dtype=float).T  # one row per band
    y = np.sqrt(value)  # Poisson counts: the square root steadies variance and skew
    z, p = np.empty_like(y), np.empty_like(y)
    for row in range(len(bands)):
        z[row], p[row] = gi_star(y[row], weights)
    spread = y.std(axis=1, keepdims=True)
    own = np.divide(y - y.mean(axis=1, keepdims=True), spread, out=np.zeros_like(y),
                    where=spread > 0)  # each station's standard score within its band
    cells = pd.DataFrame({"station": stations * len(bands),
                          "band": np.repeat(np.asarray(bands, dtype=object), len(stations)),
                          "value": value.ravel(), "z": z.ravel(), "p": p.ravel(),
                          "own_z": own.ravel()})
    cells["q"] = stats.false_discovery_control(cells["p"].to_numpy(), method="bh")
    cells["hot"] = ((cells["q"] <= settings.family_alpha) & (cells["z"] > 0)
                    & (cells["own_z"] > settings.own_z))
    return cells


def find_hotspots(requests: Requests, network: Network, ridership: pd.Series | None = None,
                  settings: Settings = DEFAULTS) -> Hotspots:
    """Hot cells over the whole period, their trends over the weeks, and their clusters."""
    ids, weights = network.ids, with_self(network.weights())
    where = _cells(requests.frame, ids)
    counts = _counted(where, ids)
    cells = flag(band_values(counts, requests.weeks, ridership), weights, settings)
    cells.insert(2, "requests", counts.stack().reindex(
        pd.MultiIndex.from_frame(cells[["station", "band"]])).to_numpy())
    cells["hot_period"] = cells["hot"]
    cells["trend"] = _trends(requests, where, network, cells, weights=weights,
                             ridership=ridership, settings=settings)
    cells["hot"] = cells["hot_period"] | (cells["trend"] == "new")
    cells["cluster"] = _clusters(cells, network.graph)
    return Hotspots(cells=cells, by_ridership=ridership is not None)


def _window(requests: Requests, cells: np.ndarray, start: float, end: float, *,
            network: Network, weights: W, ridership: pd.Series | None,
            settings: Settings) -> pd.DataFrame:
    opened = requests.frame["opened_at"].to_numpy()
    counts = _counted(cells[(opened >= start) & (opened < end)], network.ids)
    return flag(band_values(counts, (end - start) / WEEK_S, ridership), weights, settings)


def _trends(requests: Requests, where: np.ndarray, network: Network, cells: pd.DataFrame, *,
            weights: W, ridership: pd.Series | None, settings: Settings) -> pd.Series:
    """Each cell's trend over the weeks (`where`: each request's `_cells`)."""
    weeks = requests.week_count
    recent = min(settings.recent_weeks, max(1, weeks // 3))
    trend = pd.Series("", index=cells.index, dtype=object)
    if weeks < 3:  # too short for a trend
        return trend.where(~cells["hot"], "sporadic")
    split = requests.since + (weeks - recent) * WEEK_S
    before = _window(requests, where, requests.since, split, network=network,
                     weights=weights, ridership=ridership, settings=settings)["hot"]
    after = _window(requests, where, split, requests.until, network=network,
                    weights=weights, ridership=ridership, settings=settings)["hot"]
    candidates = cells["hot"] | before | after
    if not candidates.any():
        return trend
    week_of = requests.frame["week"].to_numpy()
    z = np.zeros((weeks, len(cells)))
    for week in range(weeks):
        values = band_values(_counted(where[week_of == week], network.ids), 1.0, ridership)
        z[week] = np.concatenate([gi_star(np.sqrt(values[band].to_numpy(dtype=float)),
                                          weights)[0] for band in values.columns])
    for i in np.flatnonzero(candidates.to_numpy()):
        tau, p = stats.kendalltau(np.arange(weeks), z[:, i])
        up = bool(p < settings.alpha and tau > 0)
        down = bool(p < settings.alpha and tau < 0)
        hot, was, now = bool(cells["hot"].iat[i]), bool(before.iat[i]), bool(after.iat[i])
        if now and not was and not down:
            trend.iat[i] = "new"
        elif up and (hot or now):
            trend.iat[i] = "intensifying"
        elif down and (hot or was):
            trend.iat[i] = "diminishing"
        elif was and now:
            trend.iat[i] = "persistent"
        else:
            trend.iat[i] = "sporadic"
    return trend


def _clusters(cells: pd.DataFrame, graph: nx.Graph) -> pd.Series:
    """A name per hot cell: its band and the connected hot stations it belongs to."""
    out = pd.Series("", index=cells.index, dtype=object)
    for number, band in enumerate(BAND_NAMES):
        rows = cells[(cells["band"] == band) & cells["hot"]]
        parts = sorted(nx.connected_components(graph.subgraph(rows["station"])),
                       key=lambda c: (-len(c), sorted(c)))
        where = dict(zip(rows["station"], rows.index, strict=True))
        for k, part in enumerate(parts, start=1):
            for station in part:
                out.at[where[station]] = f"B{number + 1}-C{k}"
    return out


def recommendations(hotspots: Hotspots, requests: Requests, network: Network,
                    ridership: pd.Series | None) -> pd.DataFrame:
    """Per hotspot cluster and band: its stations, request rate, the dominant requested
    response and the team dispatch most often sent (what to place there, and when)."""
    cells = hotspots.cells[hotspots.cells["hot"]]
    frame = requests.frame
    hours = {b.name: b.hours for b in BANDS}
    rows = []
    for (cluster, band), group in cells.groupby(["cluster", "band"], sort=True):
        stations = sorted(group["station"])
        mine = frame[frame["station"].isin(stations) & (frame["band"] == band)]
        # (Categorical columns count every category: the ones with no request drop.)
        responses = mine["requested_response"].value_counts().loc[lambda n: n > 0]
        teams = mine["team"].dropna().value_counts().loc[lambda n: n > 0]
        per_week = len(mine) / requests.weeks
        row = {
            "cluster": cluster, "band": band, "stations": len(stations),
            "station_names": ", ".join(network.stations.loc[stations, "name"]),
            "station_ids": " ".join(stations), "requests": len(mine), "per_week": per_week,
            "per_band_hour": per_week / hours[str(band)],
            "dominant_response": responses.index[0] if len(responses) else "",
            "dominant_response_share": float(responses.iloc[0] / len(mine)) if len(mine)
            else np.nan,
            "team_most_sent": teams.index[0] if len(teams) else "",
            "team_most_sent_share": float(teams.iloc[0] / teams.sum()) if len(teams)
            else np.nan,
            "max_z": float(group["z"].max()),
            "trend": group["trend"].mode().iat[0] if len(group) else "",
        }
        if ridership is not None:
            row["per_10k_riders"] = per_week / float(ridership.reindex(stations).sum()) * 10_000
        rows.append(row)
    columns = ["cluster", "band", "stations", "station_names", "station_ids", "requests",
               "per_week", "per_band_hour", "dominant_response", "dominant_response_share",
               "team_most_sent", "team_most_sent_share", "max_z", "trend"]
    out = pd.DataFrame(rows, columns=columns + (["per_10k_riders"] if ridership is not None
                                                else []))
    return out.sort_values(["per_week"], ascending=False, ignore_index=True)
