"""The metro network from a GTFS feed: stations, lines and which stations are neighbours.

A station is a GTFS parent station (`location_type` 1), or a stop that has no parent. Two
stations are neighbours when a trip calls at one right after the other (so neighbours on a
line), or when `transfers.txt` links stops of theirs (a walking transfer between two
stations). Platforms of one parent are one station, so lines that share a station are joined
there. The gateways' station ids are mapped to GTFS stations by a small CSV (`read_mapping`);
without one, a gateway's id is taken to be its GTFS station id.
"""

from __future__ import annotations

import csv
import re
import warnings
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any

import gtfs_kit
import networkx as nx
import pandas as pd
from libpysal.weights import W

from dispatch.errors import NetworkError

#: Mapping file columns: the gateway's station id (its MQTT topic) and the GTFS stop id.
MAPPING_COLUMNS = ("station", "gtfs_stop_id")
_STATION_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,62}")


@dataclass(frozen=True)
class Line:
    """One GTFS route drawn through its stations, in the order of its longest trip."""

    route_id: str
    name: str
    colour: str  # "#RRGGBB"
    stations: tuple[str, ...]  # gateway station ids


@dataclass(frozen=True)
class Network:
    """Stations (gateway ids, with GTFS id, name and coordinates), lines and neighbours."""

    stations: pd.DataFrame  # index station; columns gtfs_id, name, lat, lon
    lines: tuple[Line, ...]
    edges: frozenset[tuple[str, str]]  # each pair once, sorted
    timezone: str = "UTC"  # the agency's (agency.txt), for hour-of-week
    unmapped: tuple[str, ...] = field(default=())  # GTFS stations no gateway is mapped to

    @property
    def ids(self) -> list[str]:
        """Gateway station ids, in the network's order (the order of every vector here)."""
        return list(self.stations.index)

    @cached_property
    def graph(self) -> nx.Graph:
        """The adjacency as a networkx graph (for clusters and shortest paths)."""
        graph = nx.Graph()
        graph.add_nodes_from(self.ids)
        graph.add_edges_from(self.edges)
        return graph

    def weights(self) -> W:
        """Binary contiguity weights for esda: each station's neighbours, in `ids` order."""
        neighbours: dict[str, list[str]] = {s: sorted(self.graph.neighbors(s)) for s in self.ids}
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # an island (a station with no neighbour) warns
            return W(neighbours, id_order=self.ids, silence_warnings=True)


def read_mapping(path: Path) -> dict[str, str]:
    """A mapping file: CSV with columns `station,gtfs_stop_id` (lines starting # are notes)."""
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise NetworkError(f"{path}: cannot read the station mapping ({exc.strerror})") from exc
    rows = csv.DictReader(line for line in text.splitlines() if not line.startswith("#"))
    if rows.fieldnames is None or any(c not in rows.fieldnames for c in MAPPING_COLUMNS):
        raise NetworkError(f"{path}: the station mapping needs the header "
                           f"{','.join(MAPPING_COLUMNS)} (found {rows.fieldnames})")
    mapping: dict[str, str] = {}
    for number, row in enumerate(rows, start=2):
        station, stop = (row["station"] or "").strip(), (row["gtfs_stop_id"] or "").strip()
        if not _STATION_ID.fullmatch(station) or not stop:
            raise NetworkError(f"{path}:{number}: {station!r} -> {stop!r} is not a gateway "
                               "station id and a GTFS stop id")
        if station in mapping:
            raise NetworkError(f"{path}:{number}: station {station!r} is mapped twice")
        mapping[station] = stop
    return mapping


def read_network(gtfs: Path, mapping: dict[str, str] | None = None) -> Network:
    """Read a GTFS feed (a folder or a zip) into a Network, named by gateway station ids."""
    if not gtfs.exists():
        raise NetworkError(f"{gtfs}: no such GTFS feed (give its folder or zip file)")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # pandas dtype notes on the feed's columns
            feed = gtfs_kit.read_feed(gtfs, dist_units="km")
    except (OSError, ValueError, KeyError) as exc:
        raise NetworkError(f"{gtfs}: not a readable GTFS feed ({exc})") from exc
    for table in ("stops", "routes", "trips", "stop_times"):
        if getattr(feed, table, None) is None:
            raise NetworkError(f"{gtfs}: the feed has no {table}.txt")
    return build_network(feed.stops, feed.routes, feed.trips, feed.stop_times,
                         transfers=getattr(feed, "transfers", None),
                         agency=getattr(feed, "agency", None), mapping=mapping, where=str(gtfs))


def build_network(stops: pd.DataFrame, routes: pd.DataFrame, trips: pd.DataFrame,
                  stop_times: pd.DataFrame, *, transfers: pd.DataFrame | None = None,
                  agency: pd.DataFrame | None = None, mapping: dict[str, str] | None = None,
                  where: str = "feed") -> Network:
    """The network from GTFS tables (as gtfs-kit reads them)."""
    parent = _parents(stops)
    calls = stop_times[["trip_id", "stop_id", "stop_sequence"]].copy()
    calls["gtfs_id"] = calls["stop_id"].astype(str).map(parent)
    if calls["gtfs_id"].isna().any():
        missing = sorted(calls.loc[calls["gtfs_id"].isna(), "stop_id"].astype(str).unique())
        raise NetworkError(f"{where}: stop_times.txt calls at stops not in stops.txt: "
                           f"{', '.join(missing[:5])}")
    calls = calls.sort_values(["trip_id", "stop_sequence"], kind="stable")
    calls["next"] = calls.groupby("trip_id")["gtfs_id"].shift(-1)
    pairs = calls.dropna(subset=["next"])
    pairs = pairs[pairs["gtfs_id"] != pairs["next"]]
    gtfs_edges = {tuple(sorted(p)) for p in zip(pairs["gtfs_id"], pairs["next"], strict=True)}
    if transfers is not None and not transfers.empty:
        ends = transfers[["from_stop_id", "to_stop_id"]].astype(str)
        for a, b in zip(ends["from_stop_id"].map(parent), ends["to_stop_id"].map(parent),
                        strict=True):
            if isinstance(a, str) and isinstance(b, str) and a != b:
                gtfs_edges.add((min(a, b), max(a, b)))
    served = sorted(set(calls["gtfs_id"]))
    to_gateway = _gateway_ids(served, parent, mapping, where)
    info = stops.assign(stop_id=stops["stop_id"].astype(str)).set_index("stop_id")
    frame = pd.DataFrame({
        "station": [to_gateway[g] for g in served if g in to_gateway],
        "gtfs_id": [g for g in served if g in to_gateway],
    })
    frame["name"] = frame["gtfs_id"].map(info["stop_name"]).fillna(frame["gtfs_id"]).astype(str)
    frame["lat"] = frame["gtfs_id"].map(info["stop_lat"]).astype(float)
    frame["lon"] = frame["gtfs_id"].map(info["stop_lon"]).astype(float)
    frame = frame.sort_values("station").set_index("station")
    edges = frozenset(
        (min(to_gateway[a], to_gateway[b]), max(to_gateway[a], to_gateway[b]))
        for a, b in gtfs_edges if a in to_gateway and b in to_gateway)
    return Network(
        stations=frame, lines=_lines(calls, trips, routes, to_gateway), edges=edges,
        timezone=_timezone(agency),
        unmapped=tuple(g for g in served if g not in to_gateway),
    )


def _parents(stops: pd.DataFrame) -> dict[str, str]:
    """Each stop id to its station: its parent station, or itself when it has none."""
    ids = stops["stop_id"].astype(str)
    parents = (stops["parent_station"] if "parent_station" in stops
               else pd.Series([None] * len(stops), index=stops.index))
    out: dict[str, str] = {}
    for stop, up in zip(ids, parents, strict=True):
        out[stop] = str(up) if isinstance(up, str) and up.strip() else stop
    return out


def _gateway_ids(served: list[str], parent: dict[str, str], mapping: dict[str, str] | None,
                 where: str) -> dict[str, str]:
    """GTFS station id to gateway station id, for the stations a gateway is mapped to."""
    if mapping is None:
        return {g: g for g in served}
    out: dict[str, str] = {}
    for station, stop in mapping.items():
        gtfs_id = parent.get(stop)
        if gtfs_id is None:
            raise NetworkError(f"station mapping: {station!r} -> {stop!r}, but {where} has no "
                               "such stop (use a stop_id from its stops.txt)")
        if gtfs_id in out:
            raise NetworkError(f"station mapping: {out[gtfs_id]!r} and {station!r} are both "
                               f"mapped to GTFS station {gtfs_id!r} (one gateway per station)")
        out[gtfs_id] = station
    return out


def _lines(calls: pd.DataFrame, trips: pd.DataFrame, routes: pd.DataFrame,
           to_gateway: dict[str, str]) -> tuple[Line, ...]:
    route_of = trips.assign(trip_id=trips["trip_id"].astype(str)).set_index("trip_id")["route_id"]
    calls = calls.assign(route_id=calls["trip_id"].astype(str).map(route_of).astype(str))
    lengths = calls.groupby(["route_id", "trip_id"]).size().reset_index(name="n")
    longest = lengths.sort_values(["route_id", "n", "trip_id"], ascending=[True, False, True])
    longest = longest.drop_duplicates("route_id")
    info = routes.assign(route_id=routes["route_id"].astype(str)).set_index("route_id")
    out = []
    for route_id, trip_id in zip(longest["route_id"], longest["trip_id"], strict=True):
        order = calls.loc[calls["trip_id"] == trip_id, "gtfs_id"]
        stations = [to_gateway[g] for g in order if g in to_gateway]
        out.append(Line(route_id=route_id, name=_route_name(info, route_id),
                        colour=_colour(info, route_id), stations=tuple(stations)))
    return tuple(out)


def _route_name(info: pd.DataFrame, route_id: str) -> str:
    for column in ("route_short_name", "route_long_name"):
        value: Any = info[column].get(route_id) if column in info else None
        if isinstance(value, str) and value.strip():
            return value.strip()
    return route_id


def _colour(info: pd.DataFrame, route_id: str) -> str:
    value: Any = info["route_color"].get(route_id) if "route_color" in info else None
    if isinstance(value, str) and re.fullmatch(r"[0-9A-Fa-f]{6}", value.strip()):
        return f"#{value.strip().upper()}"
    return "#777777"


def _timezone(agency: pd.DataFrame | None) -> str:
    if agency is not None and "agency_timezone" in agency and len(agency):
        value = agency["agency_timezone"].iloc[0]
        if isinstance(value, str) and value.strip():
            return value.strip()
    return "UTC"
