"""Months of a simulated metro's history, written straight into the hub's tables.

Each station's requests are a Poisson process per hour with a weekly rhythm (peaks on
weekday mornings and evenings, late weekend nights), scaled by the station's ridership, with
a fixed mix of requested responses. Planted hotspots multiply the rate of a site (a station
and its neighbours on the network) in one time band, with one requested response, and
optionally a trend over the weeks. Everything is drawn from one numpy generator seeded by
`seed`, so a seed gives the same history (and the same planted hotspots) every time.

Each request becomes the hub's rows as if the gateway had sent its events: the opening event
(a press, a hold, or a sensor threshold), escalations while dispatch was silent, then
acknowledged, assigned (with a team) and resolved, or cancelled without an acknowledgement;
its alert row with the transition times; and its alert_transitions. Rows go in with bulk
inserts through `dispatch.hub.schema`.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import pandas as pd
from sqlalchemy import Engine, func, select

from dispatch.analysis.network import Network
from dispatch.analysis.progress import progress
from dispatch.analysis.record import BAND_NAMES, BANDS, WEEK_S, band_of_hour, riders_of
from dispatch.errors import InputError
from dispatch.hub.schema import alerts, events, stations, transitions
from dispatch.hub.store import migrate

Trend = Literal["persistent", "new", "intensifying", "diminishing"]
DEFAULT_SEED = 14
#: Requests per station per day, on average over the network and the week.
DEFAULT_RATE = 3.0
#: How much a planted hotspot multiplies the rate (on average over the period).
DEFAULT_FACTOR = 3.5
_RESPONSE_MIX = {"emergency_services": 0.12, "crisis_team": 0.50, "ambassador": 0.38}
CLASS_OF = {"emergency_services": "P0", "crisis_team": "P1", "ambassador": "P2"}
_OPENING = {"P0": ("help_point.hold", "hp"), "P1": ("help_point.press", "hp"),
            "P2": ("sensor.threshold", "crowd")}
LOCATIONS = ("platform 1, north stairs", "platform 1, south end", "platform 2, lifts",
              "concourse, ticket hall")
ACK_MEDIAN_S = {"P0": 20.0, "P1": 45.0, "P2": 120.0}
RESOLVE_MEDIAN_S = {"P0": 2400.0, "P1": 1500.0, "P2": 900.0}
_ESCALATE_EVERY_S = 90.0  # a silent dispatch re-announces the alert
_MAX_ESCALATIONS = 5
_NEVER_ACKED = 0.03
_BATCH = 5000


@dataclass(frozen=True)
class Planted:
    """A planted hotspot: these stations, in this band, at `factor` times their rate."""

    stations: tuple[str, ...]
    band: str
    factor: float
    trend: Trend
    response: str

    def multiplier(self, weeks: int) -> np.ndarray:
        """The rate multiplier in each week: its mean over the weeks is `factor`, except for
        a new hotspot: 1.5 `factor` in the last third of the period and 1 before."""
        step = (np.arange(weeks) + 0.5) / weeks
        extra = self.factor - 1
        if self.trend == "new":
            recent = max(1, weeks // 3)
            return np.where(np.arange(weeks) >= weeks - recent, 1.5 * self.factor, 1.0)
        if self.trend == "intensifying":
            return 1 + 2 * extra * step
        if self.trend == "diminishing":
            return 1 + 2 * extra * (1 - step)
        return np.full(weeks, self.factor)


@dataclass(frozen=True)
class History:
    """What was written: the period, the planted hotspots and the row counts."""

    since: float
    until: float
    planted: tuple[Planted, ...]
    requests: int
    events: int

    @property
    def cells(self) -> set[tuple[str, str]]:
        """The planted (station, band) cells."""
        return {(s, p.band) for p in self.planted for s in p.stations}


def plant(network: Network, seed: int, sites: int = 6,
          factor: float = DEFAULT_FACTOR) -> tuple[Planted, ...]:
    """Hotspots drawn from `seed`: `sites` stations with their neighbours, apart from each
    other, each in a daytime or evening band; the first is new, the second intensifying, the
    third diminishing, the rest persistent."""
    rng = np.random.default_rng([seed, 1])
    graph = network.graph
    taken: set[str] = set()
    out: list[Planted] = []
    trends: tuple[Trend, ...] = ("new", "intensifying", "diminishing")
    # Nights are too quiet to plant in; each site gets a band of its own while there are.
    bands = [b.name for b in BANDS if b.start >= 6]
    rng.shuffle(bands)
    for centre in rng.permutation(network.ids):
        site = {str(centre), *map(str, graph.neighbors(centre))}
        ring = site | {n for s in site for n in graph.neighbors(s)}
        if len(site) > 5 or ring & taken:
            continue
        taken |= site
        number = len(out)
        out.append(Planted(
            stations=tuple(sorted(site)), band=bands[len(out) % len(bands)],
            factor=factor, trend=trends[number] if number < len(trends) else "persistent",
            response=str(rng.choice(list(_RESPONSE_MIX), p=[0.2, 0.5, 0.3]))))
        if len(out) == sites:
            break
    return tuple(out)


def hourly_rhythm() -> np.ndarray:
    """Relative request rate in each hour of the week (local time), mean 1."""
    weekday = np.array([0.3, 0.2, 0.15, 0.15, 0.2, 0.4, 0.9, 1.5, 1.6, 1.2, 0.9, 0.9,
                        1.0, 1.0, 1.0, 1.2, 1.5, 1.7, 1.6, 1.2, 1.0, 0.9, 0.7, 0.5])
    weekend = np.array([0.7, 0.6, 0.5, 0.3, 0.2, 0.2, 0.3, 0.4, 0.6, 0.8, 0.9, 1.0,
                        1.1, 1.2, 1.2, 1.2, 1.2, 1.2, 1.3, 1.3, 1.3, 1.2, 1.0, 0.9])
    week = np.concatenate([weekday] * 5 + [weekend] * 2)
    return np.asarray(week / week.mean(), dtype=float)


def simulate_history(engine: Engine, network: Network, ridership: pd.Series, *, weeks: int,
                     seed: int = DEFAULT_SEED, until: float | None = None,
                     planted: tuple[Planted, ...] | None = None, rate: float = DEFAULT_RATE,
                     show_progress: bool | None = None) -> History:
    """Write `weeks` of history ending at `until` (default: this hour) into an empty hub
    database; `planted` None plants hotspots from the seed, () plants none (the null case)."""
    if weeks < 1:
        raise InputError(f"--weeks {weeks}: simulate at least one week")
    migrate(engine)
    with engine.connect() as conn:
        existing = conn.execute(select(func.count()).select_from(alerts)).scalar_one()
    if existing:
        raise InputError(f"{engine.url!r} already holds {existing} alerts: simulate into an "
                         "empty database (the simulation's seqs would mix with real ones)")
    end = float(until if until is not None else (time.time() // 3600) * 3600)
    since = end - weeks * WEEK_S
    planted = plant(network, seed) if planted is None else planted
    rng = np.random.default_rng(seed)
    frame = request_frame(network, ridership, weeks=weeks, since=since, rng=rng, planted=planted,
                      rate=rate)
    rows = _rows(frame, rng, end)
    with progress("writing history", sum(len(r) for r in rows.values()),
                  enabled=show_progress) as advance, engine.begin() as conn:
        for table, batch in ((alerts, rows["alerts"]), (events, rows["events"]),
                             (transitions, rows["transitions"]), (stations, rows["stations"])):
            for start in range(0, len(batch), _BATCH):
                chunk = batch[start:start + _BATCH]
                conn.execute(table.insert(), chunk)
                advance(len(chunk))
    return History(since=since, until=end, planted=planted, requests=len(frame),
                   events=len(rows["events"]))


def request_frame(network: Network, ridership: pd.Series, *, weeks: int, since: float,
              rng: np.random.Generator, planted: tuple[Planted, ...],
              rate: float) -> pd.DataFrame:
    """One row per request: station, opened_at, requested response, location."""
    ids = network.ids
    riders = riders_of(ridership, ids)
    share = (riders / riders.mean()).to_numpy()
    hours = weeks * 168
    starts = since + 3600.0 * np.arange(hours)
    local = pd.to_datetime(starts, unit="s", utc=True).tz_convert(network.timezone)
    how = np.asarray(local.day_of_week * 24 + local.hour)
    base = rate / 24 * np.outer(share, hourly_rhythm()[how])  # stations x hours
    band = band_of_hour()[how]
    week = np.arange(hours) // 168
    index = {s: i for i, s in enumerate(ids)}
    parts = [_draw(rng, base, list(_RESPONSE_MIX), list(_RESPONSE_MIX.values()), starts)]
    for spot in planted:
        extra = np.zeros_like(base)
        rows = np.array([index[s] for s in spot.stations if s in index], dtype=np.intp)
        in_band = band == BAND_NAMES.index(spot.band)
        factor = spot.multiplier(weeks)[week] - 1
        extra[np.ix_(rows, np.flatnonzero(in_band))] = (base[rows][:, in_band]
                                                        * factor[in_band])
        parts.append(_draw(rng, extra, [spot.response], [1.0], starts, hot=True))
    frame = pd.concat(parts, ignore_index=True)
    frame["station"] = np.asarray(ids, dtype=object)[frame.pop("row").to_numpy()]
    return frame.sort_values(["opened_at", "station"], kind="stable", ignore_index=True)


def _draw(rng: np.random.Generator, lam: np.ndarray, responses: list[str],
          mix: list[float], starts: np.ndarray, *, hot: bool = False) -> pd.DataFrame:
    counts = rng.poisson(lam)
    row, hour = np.nonzero(counts)
    n = counts[row, hour]
    row, hour = np.repeat(row, n), np.repeat(hour, n)
    total = len(row)
    # A hotspot's extra requests come mostly from one spot of the station (repeat location).
    location = (np.zeros(total, dtype=int) if hot
                else rng.integers(len(LOCATIONS), size=total))
    return pd.DataFrame({
        "row": row,
        "opened_at": np.round(starts[hour] + rng.uniform(0, 3600, total), 3),
        "requested_response": rng.choice(np.asarray(responses, dtype=object), size=total,
                                         p=mix),
        "location": np.asarray(LOCATIONS, dtype=object)[location],
    })


def _rows(frame: pd.DataFrame, rng: np.random.Generator,
          end: float) -> dict[str, list[dict[str, Any]]]:
    """The hub's rows for each request: events, alert, transitions; and the stations."""
    total = len(frame)
    klass = frame["requested_response"].map(CLASS_OF).to_numpy()
    ack_median = pd.Series(klass).map(ACK_MEDIAN_S).to_numpy()
    resolve_median = pd.Series(klass).map(RESOLVE_MEDIAN_S).to_numpy()
    opened = frame["opened_at"].to_numpy()
    acked = rng.random(total) >= _NEVER_ACKED
    to_ack = ack_median * rng.lognormal(0.0, 0.7, total)
    to_assign = 60.0 * rng.lognormal(0.0, 0.5, total)
    to_close = np.where(acked, resolve_median * rng.lognormal(0.0, 0.6, total),
                        600 + 1200 * rng.random(total))
    co_response = rng.random(total) < 0.3
    eta = rng.integers(180, 1200, total)
    hexes = rng.bytes(16 * total * 8).hex()
    ids = iter(f"{h[:8]}-{h[8:12]}-4{h[13:16]}-a{h[17:20]}-{h[20:32]}"
               for h in (hexes[i:i + 32] for i in range(0, len(hexes), 32)))
    out: dict[str, list[dict[str, Any]]] = {"alerts": [], "events": [], "transitions": []}
    # Plain Python numbers from here on: numpy scalars are slow one at a time.
    columns = zip(frame["station"].tolist(), frame["requested_response"].tolist(),
                  frame["location"].tolist(), klass.tolist(), opened.tolist(), acked.tolist(),
                  to_ack.tolist(), to_assign.tolist(), to_close.tolist(),
                  co_response.tolist(), eta.tolist(), strict=True)
    for station, response, location, cls, t0, ack, d_ack, d_assign, d_close, co, eta_s in columns:
        kind, source = _OPENING[cls]
        alert_id = next(ids)
        body = {"help_point": f"{source}-1", "location": location, "platform": location[9]
                if location.startswith("platform") else "", "alert_id": alert_id,
                "state": "open", "press_count": 1, "first_press": t0, "last_press": t0,
                "held": cls == "P0", "escalated": False, "evidence": [kind]}
        silent = d_ack if ack else d_close
        steps: list[tuple[float, str, str, dict[str, Any]]] = [(t0, kind, "open", {})]
        escalations = min(_MAX_ESCALATIONS, int(silent // _ESCALATE_EVERY_S))
        steps += [(t0 + _ESCALATE_EVERY_S * (i + 1), "alert.escalated", "open",
                   {"escalated": True, "escalations": i + 1}) for i in range(escalations)]
        team = None
        if ack:
            team = "co_response" if response == "crisis_team" and co else response
            steps += [(t0 + d_ack, "alert.acknowledged", "acknowledged", {}),
                      (t0 + d_ack + d_assign, "alert.assigned", "assigned",
                       {"team": team, "eta_s": int(eta_s), "dispatcher": "desk-1"}),
                      (t0 + d_ack + d_assign + d_close, "alert.resolved", "resolved", {})]
        else:
            steps.append((t0 + d_close, "alert.cancelled", "cancelled", {}))
        steps = [s for s in steps if s[0] < end]
        times: dict[str, float] = {}
        state = "open"
        for at, kind_now, state_now, extra in steps:
            event_id = next(ids)
            body = body | extra | {"state": state_now}
            out["events"].append({
                "event_id": event_id, "station": station, "seq": 0, "class": cls,
                "kind": kind_now, "source": f"{source}-1", "wall_time": round(at, 3),
                "received_at": round(at + 0.05, 3), "body": body})
            out["transitions"].append({"station": station, "alert_id": alert_id,
                                       "state": "escalated" if kind_now == "alert.escalated"
                                       else state_now, "at": round(at, 3),
                                       "event_id": event_id})
            times.setdefault(state_now, round(at, 3))
            state = state_now
        out["alerts"].append({
            "station": station, "alert_id": alert_id, "class": cls, "state": state,
            "source": f"{source}-1", "location": location, "requested_response": response,
            "opened_at": t0, "acknowledged_at": times.get("acknowledged"),
            "assigned_at": times.get("assigned"),
            "closed_at": times.get("resolved", times.get("cancelled")),
            "team": team if "assigned" in times else None,
            "eta_s": int(eta_s) if "assigned" in times else None,
            "escalations": sum(1 for s in steps if s[1] == "alert.escalated"),
            "last_seq": 0, "updated_at": round(steps[-1][0], 3)})
    _number(out)
    last: dict[str, float] = {}
    for row in out["events"]:
        last[row["station"]] = max(last.get(row["station"], 0.0), row["wall_time"])
    out["stations"] = [{"station": s, "status": "online", "status_at": end,
                        "last_event_at": at} for s, at in sorted(last.items())]
    return out


def _number(out: dict[str, list[dict[str, Any]]]) -> None:
    """Give each station's events their outbox seq (1, 2, ... in time order), and each alert
    the seq of its newest event."""
    ordered = sorted(range(len(out["events"])),
                     key=lambda i: (out["events"][i]["station"], out["events"][i]["wall_time"]))
    seq: dict[str, int] = {}
    newest: dict[tuple[str, str], int] = {}
    for i in ordered:
        row = out["events"][i]
        seq[row["station"]] = seq.get(row["station"], 0) + 1
        row["seq"] = seq[row["station"]]
        newest[(row["station"], row["body"]["alert_id"])] = row["seq"]
    for alert in out["alerts"]:
        alert["last_seq"] = newest[(alert["station"], alert["alert_id"])]
