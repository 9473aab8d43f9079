"""The simulated metro's network, as a GTFS feed, and the files a planner would hand us.

`write_metro(folder)` writes, from a seed:
- a GTFS feed (agency, stops with parent stations and one platform per line, routes, trips
  in both directions, stop_times, calendar, transfers): nine cross-town lines and a ring;
- `stations.csv`, the gateway station id to GTFS stop mapping;
- `ridership.csv`, weekly riders per station.

The copy in `dispatch/analysis/data/metro/` is this function's output for `METRO_SEED`
(tests/test_analysis.py checks that they agree), so the shipped feed has one owner.
"""

from __future__ import annotations

import csv
import itertools
import math
import random
import re
from dataclasses import dataclass
from pathlib import Path

METRO_SEED = 14
#: The shipped feed and its companion files.
SHIPPED = Path(__file__).parent / "data" / "metro"
CENTRE = (47.5, 8.0)  # an invented city: lat, lon of the centre
TIMEZONE = "Europe/Zurich"
_MERGE_KM = 0.45  # stations of two lines this close are one transfer station
_WALK_KM = 0.9  # ... and this close, a walking transfer (transfers.txt)
_COLOURS = ("E4002B", "0072CE", "00A651", "FFB81C", "7F3F98", "F26522", "00B2A9",
            "A6192E", "8DC63F", "5C6670")
_FIRST = ("North", "South", "East", "West", "Old", "New", "Upper", "Lower", "Royal",
          "Market", "Harbour", "Mill", "Bridge", "Castle", "Garden", "Park", "River", "Church",
          "Forest", "Lake")
_SECOND = ("Square", "Street", "Gate", "Hill", "Cross", "Road", "Bank", "Fields", "Green",
           "Quay", "Lane", "Yard", "Court", "Row", "Wharf", "Heath", "End", "Place", "Park",
           "Terrace")


@dataclass(frozen=True)
class Metro:
    """Stations (km east, km north of the centre) and lines as station indexes in order."""

    points: tuple[tuple[float, float], ...]
    lines: tuple[tuple[int, ...], ...]
    names: tuple[str, ...]
    riders: tuple[int, ...]  # per week


def layout(seed: int = METRO_SEED) -> Metro:
    """The metro's geometry: nine straight lines across town at 20 degree steps, and a ring."""
    rng = random.Random(seed)
    candidates: list[list[tuple[float, float]]] = []
    for i in range(9):
        angle = math.radians(i * 20 + rng.uniform(-4, 4))
        offset = ((i * 7) % 5 - 2) * 0.8
        half = 6.5 + (i % 3)
        d, n = (math.cos(angle), math.sin(angle)), (-math.sin(angle), math.cos(angle))
        steps = round(2 * half / 1.15)
        candidates.append([
            (offset * n[0] + t * d[0], offset * n[1] + t * d[1])
            for t in (-half + k * 2 * half / steps for k in range(steps + 1))])
    ring = [(4.6 * math.cos(2 * math.pi * k / 20), 4.6 * math.sin(2 * math.pi * k / 20))
            for k in range(20)]
    candidates.append(ring)
    points: list[tuple[float, float]] = []
    owner: list[int] = []  # the first line through each station
    lines: list[tuple[int, ...]] = []
    for number, line in enumerate(candidates):
        order: list[int] = []
        for x, y in line:
            near = [s for s, (px, py) in enumerate(points)
                    if owner[s] != number and math.hypot(px - x, py - y) < _MERGE_KM
                    and s not in order]
            if near:
                index = min(near, key=lambda s: math.hypot(points[s][0] - x, points[s][1] - y))
            else:
                points.append((x, y))
                owner.append(number)
                index = len(points) - 1
            order.append(index)
        if number == len(candidates) - 1:
            order.append(order[0])  # the ring closes
        lines.append(tuple(order))
    names = [f"{a} {b}" for a in _FIRST for b in _SECOND if a != b]
    rng.shuffle(names)
    served = [sum(s in line for line in lines) for s in range(len(points))]
    riders = [
        round(rng.lognormvariate(math.log(9000), 0.35)
              * (1 + 2.0 * math.exp(-math.hypot(x, y) / 3.0)) * (1 + 0.5 * (served[s] - 1)), -2)
        for s, (x, y) in enumerate(points)]
    return Metro(points=tuple(points), lines=tuple(lines), names=tuple(names[:len(points)]),
                 riders=tuple(int(r) for r in riders))


def slug(name: str) -> str:
    """A gateway station id from a station name ("Old Quay" -> "old-quay")."""
    return re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-")


def write_metro(folder: Path, seed: int = METRO_SEED) -> Metro:
    """Write the GTFS feed, the station mapping and the ridership into `folder`."""
    metro = layout(seed)
    folder.mkdir(parents=True, exist_ok=True)
    lat0, lon0 = CENTRE
    km_lon = 111.32 * math.cos(math.radians(lat0))

    def stop_id(s: int) -> str:
        return f"S{s + 1:03d}"

    stops: list[list[object]] = []
    for s, (x, y) in enumerate(metro.points):
        lat, lon = round(lat0 + y / 110.57, 6), round(lon0 + x / km_lon, 6)
        stops.append([stop_id(s), metro.names[s], lat, lon, 1, ""])
        for number, line in enumerate(metro.lines):
            if s in line:
                stops.append([f"{stop_id(s)}-M{number + 1}", f"{metro.names[s]} (M{number + 1})",
                              lat, lon, 0, stop_id(s)])
    _write(folder / "agency.txt",
           ["agency_id", "agency_name", "agency_url", "agency_timezone"],
           [["SIM", "Simulated Metro", "https://example.invalid/metro", TIMEZONE]])
    _write(folder / "stops.txt",
           ["stop_id", "stop_name", "stop_lat", "stop_lon", "location_type", "parent_station"],
           stops)
    _write(folder / "routes.txt",
           ["route_id", "agency_id", "route_short_name", "route_long_name", "route_type",
            "route_color"],
           [[f"M{n + 1}", "SIM", f"M{n + 1}",
             f"{metro.names[line[0]]} - {metro.names[line[-2 if n == 9 else -1]]}", 1,
             _COLOURS[n]] for n, line in enumerate(metro.lines)])
    _write(folder / "calendar.txt",
           ["service_id", "monday", "tuesday", "wednesday", "thursday", "friday", "saturday",
            "sunday", "start_date", "end_date"],
           [["DAILY", 1, 1, 1, 1, 1, 1, 1, "20260101", "20271231"]])
    trips: list[list[object]] = []
    times: list[list[object]] = []
    for n, line in enumerate(metro.lines):
        for direction, order in ((0, line), (1, line[::-1])):
            trip = f"M{n + 1}-{direction}"
            trips.append([f"M{n + 1}", "DAILY", trip, direction])
            for k, s in enumerate(order):
                clock = f"{6 + (2 * k) // 60:02d}:{(2 * k) % 60:02d}:00"
                times.append([trip, clock, clock, f"{stop_id(s)}-M{n + 1}", k + 1])
    _write(folder / "trips.txt", ["route_id", "service_id", "trip_id", "direction_id"], trips)
    _write(folder / "stop_times.txt",
           ["trip_id", "arrival_time", "departure_time", "stop_id", "stop_sequence"], times)
    linked = {tuple(sorted(p)) for line in metro.lines for p in itertools.pairwise(line)}
    walks = [[stop_id(a), stop_id(b), 2, 300]
             for a in range(len(metro.points)) for b in range(a + 1, len(metro.points))
             if (a, b) not in linked
             and math.dist(metro.points[a], metro.points[b]) < _WALK_KM]
    _write(folder / "transfers.txt",
           ["from_stop_id", "to_stop_id", "transfer_type", "min_transfer_time"], walks)
    with (folder / "stations.csv").open("w", encoding="utf-8", newline="") as out:
        out.write("# gateway station id (its MQTT topic) -> GTFS stop or parent station id\n")
        writer = csv.writer(out, lineterminator="\n")
        writer.writerow(["station", "gtfs_stop_id"])
        writer.writerows([slug(metro.names[s]), stop_id(s)] for s in range(len(metro.points)))
    _write(folder / "ridership.csv", ["station", "riders"],
           [[slug(metro.names[s]), metro.riders[s]] for s in range(len(metro.points))])
    return metro


def _write(path: Path, header: list[str], rows: list[list[object]]) -> None:
    with path.open("w", encoding="utf-8", newline="") as out:
        writer = csv.writer(out, lineterminator="\n")
        writer.writerow(header)
        writer.writerows(rows)
