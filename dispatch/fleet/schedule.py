"""What the fleet will be asked, and when: a schedule drawn from one seed. No I/O.

The requests are those of `dispatch.analysis.simulate`'s rate model, unchanged: per station
and hour a Poisson count with the weekly rhythm (`hourly_rhythm`), scaled by the station's
ridership, a fixed mix of requested responses, and the planted hotspots of `plant` (a
station and its neighbours, one time band, one response, `DEFAULT_FACTOR` times the rate),
all from the seed. The simulated clock starts on Monday 2026-01-05 00:00 in the network's
time zone and runs `speed` times faster than the real one: the default 1008 plays a week in
10 minutes; `speed` 30240 a week in 20 seconds.

Each request then gets its dispatcher's timings, on the same compressed clock, with the
medians of the history generator (acknowledged after about 20 s for P0, 45 s for P1, 120 s
for P2; assigned a minute later; resolved after 40, 25 or 15 minutes): a simulated station
plays them itself, and for a real daemon the fleet's dispatcher sends the commands. Every
request is acknowledged (the history's 3 % never acknowledged are left out: an
unacknowledged request at a real help point would absorb the next presses there).

Which stations are real daemons is drawn from the seed too, so a seed gives the same
schedule, request for request, every time.
"""

from __future__ import annotations

import math
from collections import Counter
from dataclasses import dataclass

import numpy as np
import pandas as pd

from dispatch.analysis.network import Network
from dispatch.analysis.record import WEEK_S
from dispatch.analysis.simulate import (
    ACK_MEDIAN_S,  # the history's dispatcher, so that both tell one story
    CLASS_OF,
    DEFAULT_RATE,
    DEFAULT_SEED,
    LOCATIONS,
    RESOLVE_MEDIAN_S,
    Planted,
    plant,
    request_frame,
)
from dispatch.errors import FleetError

#: A simulated week in 10 minutes.
DEFAULT_SPEED = WEEK_S / 600
SIM_START = "2026-01-05 00:00"  # a Monday; local time of the network


@dataclass(frozen=True)
class Request:
    """One rider's request: when (real seconds from the start of the run), where, what, and
    how long dispatch takes over it (real seconds, compressed)."""

    at: float
    sim_at: float  # Unix time on the simulated clock
    station: str
    response: str  # emergency_services, crisis_team or ambassador
    location: int  # index into LOCATIONS
    ack_s: float
    assign_s: float
    close_s: float
    team: str
    eta_s: int

    @property
    def priority(self) -> str:
        """The class the request is raised at."""
        return CLASS_OF[self.response]


@dataclass(frozen=True)
class Schedule:
    """The whole run: stations, which are real daemons, the planted hotspots, the requests."""

    seed: int
    speed: float
    duration_s: float
    since: float  # simulated Unix time of the run's start
    stations: tuple[str, ...]
    daemons: tuple[str, ...]
    planted: tuple[Planted, ...]
    requests: tuple[Request, ...]

    def counts(self) -> Counter[str]:
        """Requests per station."""
        return Counter(r.station for r in self.requests)

    @property
    def tail_s(self) -> float:
        """Real seconds from the start until the last request is resolved."""
        return max((r.at + r.ack_s + r.assign_s + r.close_s for r in self.requests),
                   default=0.0)


def make_schedule(network: Network, ridership: pd.Series, *, daemons: int, duration_s: float,
                  speed: float = DEFAULT_SPEED, seed: int = DEFAULT_SEED,
                  rate: float = DEFAULT_RATE, hotspots: bool = True) -> Schedule:
    """The schedule of a run of `duration_s` real seconds over `network`'s stations (the
    numbers as `FleetOptions` checks them; the daemons against the network here)."""
    ids = network.ids
    if not 0 <= daemons <= len(ids):
        raise FleetError(f"--daemons {daemons}: give 0 to {len(ids)} (the fleet's stations)")
    since = pd.Timestamp(SIM_START, tz=network.timezone).timestamp()
    weeks = max(1, math.ceil(duration_s * speed / WEEK_S))
    planted = plant(network, seed) if hotspots else ()
    rng = np.random.default_rng(seed)
    frame = request_frame(network, ridership, weeks=weeks, since=since, rng=rng, planted=planted,
                      rate=rate)
    frame = frame[(frame["opened_at"] - since) / speed < duration_s].reset_index(drop=True)
    timing = np.random.default_rng([seed, 3])
    total = len(frame)
    cls = frame["requested_response"].map(CLASS_OF)
    ack = cls.map(ACK_MEDIAN_S).to_numpy() * timing.lognormal(0.0, 0.7, total)
    assign = 60.0 * timing.lognormal(0.0, 0.5, total)
    close = cls.map(RESOLVE_MEDIAN_S).to_numpy() * timing.lognormal(0.0, 0.6, total)
    co_response = timing.random(total) < 0.3
    eta = timing.integers(180, 1200, total)
    where = {name: i for i, name in enumerate(LOCATIONS)}
    requests = tuple(
        Request(at=round((t - since) / speed, 4), sim_at=t, station=s, response=resp,
                location=where[loc], ack_s=a / speed, assign_s=b / speed, close_s=c / speed,
                team="co_response" if resp == "crisis_team" and co else resp, eta_s=e)
        for t, s, resp, loc, a, b, c, co, e in zip(
            frame["opened_at"].tolist(), frame["station"].tolist(),
            frame["requested_response"].tolist(), frame["location"].tolist(), ack.tolist(),
            assign.tolist(), close.tolist(), co_response.tolist(), eta.tolist(), strict=True))
    chosen = np.random.default_rng([seed, 2]).choice(len(ids), size=daemons, replace=False)
    return Schedule(seed=seed, speed=speed, duration_s=duration_s, since=since,
                    stations=tuple(ids), daemons=tuple(sorted(ids[i] for i in chosen)),
                    planted=planted, requests=requests)
