"""The fleet's metro: the shipped simulated metro, or several districts of its generator.

`dispatch.analysis.metro` makes one metro of 10 lines and 116 stations from a seed. A fleet
of more stations is made of districts: district 0 is the shipped metro (seed `METRO_SEED`),
district k is `write_metro(..., METRO_SEED + k)`, its ids prefixed (`D2-S001`, station
`d2-old-quay`, lines `D2-M1`..`D2-M10`), set on a grid 19 km apart and joined to the districts
beside it by a walking transfer between their closest stations. So 500 stations are five
districts: 50 lines, 580 stations.

The fleet is the first `stations` stations of a breadth-first walk of that network from the
station nearest the centre of district 0: a connected piece of the metro, so planted hotspots
(a station and its neighbours) are whole. `fleet_metro` writes the feed with the fleet's
station mapping and ridership into a folder, so `stationgw hub report --gtfs DIR
--stations-map DIR/stations.csv` reads a fleet run's database on the same network.
"""

from __future__ import annotations

import csv
import math
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

import networkx as nx
import pandas as pd

from dispatch.analysis.metro import CENTRE, METRO_SEED, SHIPPED, write_metro
from dispatch.analysis.network import Line, Network, read_mapping, read_network
from dispatch.analysis.record import read_ridership
from dispatch.errors import FleetError

#: Stations in one district (the generator's metro).
DISTRICT_STATIONS = 116
DISTRICT_SPACING_KM = 19.0
_LINK_TRANSFER_S = 600  # min_transfer_time of the walk between two districts
_GTFS_FILES = ("agency.txt", "stops.txt", "routes.txt", "trips.txt", "stop_times.txt",
               "calendar.txt", "transfers.txt")
_ID_COLUMNS = {  # the columns of each GTFS file that hold ids a district prefixes
    "stops.txt": ("stop_id", "parent_station"),
    "routes.txt": ("route_id",),
    "trips.txt": ("route_id", "trip_id"),
    "stop_times.txt": ("trip_id", "stop_id"),
    "transfers.txt": ("from_stop_id", "to_stop_id"),
}


@dataclass(frozen=True)
class FleetMetro:
    """The fleet's stations on their network, their riders per week, and the feed folder."""

    network: Network  # only the fleet's stations
    ridership: pd.Series  # riders per week, by station id, in network order
    feed: Path  # GTFS folder with stations.csv and ridership.csv of the fleet
    districts: int


def districts_for(stations: int) -> int:
    """How many districts a fleet of `stations` needs."""
    if stations < 1:
        raise FleetError(f"--stations {stations}: give 1 or more")
    return math.ceil(stations / DISTRICT_STATIONS)


def fleet_metro(stations: int, folder: Path) -> FleetMetro:
    """Write the metro for `stations` into `folder` and return the fleet's part of it."""
    count = districts_for(stations)
    folder.mkdir(parents=True, exist_ok=True)
    if count == 1:
        for name in _GTFS_FILES:
            shutil.copyfile(SHIPPED / name, folder / name)
        shutil.copyfile(SHIPPED / "stations.csv", folder / "stations.csv")
        shutil.copyfile(SHIPPED / "ridership.csv", folder / "ridership.csv")
    else:
        _write_districts(count, folder)
    whole = read_network(folder, read_mapping(folder / "stations.csv"))
    riders = read_ridership(folder / "ridership.csv")
    chosen = _walk(whole, stations)
    network = subnetwork(whole, chosen)
    ridership = riders.reindex(network.ids)
    _write_fleet_files(folder, network, ridership)
    return FleetMetro(network=network, ridership=ridership, feed=folder, districts=count)


def subnetwork(network: Network, keep: set[str]) -> Network:
    """`network` with only the stations in `keep` (as `read_network` with a smaller mapping
    would give: lines through the kept stations, edges between them)."""
    lines = tuple(Line(line.route_id, line.name, line.colour,
                       tuple(s for s in line.stations if s in keep))
                  for line in network.lines)
    return Network(
        stations=network.stations.loc[[s for s in network.ids if s in keep]],
        lines=tuple(line for line in lines if line.stations),
        edges=frozenset(e for e in network.edges if e[0] in keep and e[1] in keep),
        timezone=network.timezone)


def _walk(network: Network, stations: int) -> set[str]:
    """The first `stations` stations of a breadth-first walk from the central station."""
    frame = network.stations
    lat0, lon0 = CENTRE
    start = str(((frame["lat"] - lat0) ** 2 + (frame["lon"] - lon0) ** 2).idxmin())
    order = [start, *(v for _, v in nx.bfs_edges(network.graph, start, sort_neighbors=sorted))]
    if len(order) < stations:
        raise FleetError(f"the metro's network reaches {len(order)} stations, not {stations}")
    return set(order[:stations])


def _write_districts(count: int, folder: Path) -> None:
    """District 0 (the shipped metro) and districts 1.. from the generator, as one feed."""
    side = math.ceil(math.sqrt(count))
    km_lon = 111.32 * math.cos(math.radians(CENTRE[0]))
    tables: dict[str, list[pd.DataFrame]] = {name: [] for name in _GTFS_FILES}
    mappings: list[pd.DataFrame] = []
    riders: list[pd.DataFrame] = []
    with tempfile.TemporaryDirectory(prefix="stationgw-fleet-metro-") as tmp:
        for k in range(count):
            source = SHIPPED if k == 0 else Path(tmp) / f"d{k}"
            if k:
                write_metro(source, METRO_SEED + k)
            row, col = divmod(k, side)
            for name in _GTFS_FILES:
                table = pd.read_csv(source / name, dtype=str, keep_default_na=False)
                if k:
                    _place_district(table, name, k, row * DISTRICT_SPACING_KM / 110.57,
                                    col * DISTRICT_SPACING_KM / km_lon)
                if k == 0 or name not in ("agency.txt", "calendar.txt"):
                    tables[name].append(table)
            mapping = pd.read_csv(source / "stations.csv", dtype=str, comment="#")
            ridership = pd.read_csv(source / "ridership.csv", dtype=str)
            if k:
                mapping["station"] = f"d{k}-" + mapping["station"]
                mapping["gtfs_stop_id"] = f"D{k}-" + mapping["gtfs_stop_id"]
                ridership["station"] = f"d{k}-" + ridership["station"]
            mappings.append(mapping)
            riders.append(ridership)
    merged = {name: pd.concat(parts, ignore_index=True) for name, parts in tables.items()}
    merged["transfers.txt"] = pd.concat(
        [merged["transfers.txt"], _district_links(merged["stops.txt"], count, side)],
        ignore_index=True)
    for name, table in merged.items():
        table.to_csv(folder / name, index=False, lineterminator="\n")
    _write_mapping(folder / "stations.csv", pd.concat(mappings, ignore_index=True))
    pd.concat(riders, ignore_index=True).to_csv(folder / "ridership.csv", index=False,
                                                lineterminator="\n")


def _place_district(table: pd.DataFrame, name: str, k: int, south: float,
                    east: float) -> None:
    """Make GTFS file `name` of district `k` its own, in place: its ids prefixed `Dk-`, and
    (stops) its stations named for it and moved `south` and `east` degrees."""
    for column in _ID_COLUMNS.get(name, ()):
        table[column] = [f"D{k}-{v}" if v else v for v in table[column]]
    if name == "stops.txt":
        table["stop_name"] = table["stop_name"] + f" (D{k})"
        table["stop_lat"] = (table["stop_lat"].astype(float) - south).round(6)
        table["stop_lon"] = (table["stop_lon"].astype(float) + east).round(6)
    if name == "routes.txt":
        table["route_short_name"] = [f"D{k}-{v}" for v in table["route_short_name"]]


def _district_links(stops: pd.DataFrame, count: int, side: int) -> pd.DataFrame:
    """A walking transfer between the closest stations of each two districts side by side."""
    parents = stops[stops["location_type"] == "1"].copy()
    parents["district"] = [int(s[1:s.index("-")]) if s.startswith("D") else 0
                           for s in parents["stop_id"]]
    lat, lon = parents["stop_lat"].astype(float), parents["stop_lon"].astype(float)
    km_lon = 111.32 * math.cos(math.radians(CENTRE[0]))
    parents["x"], parents["y"] = lon * km_lon, lat * 110.57
    rows = []
    for k in range(count):
        for other in (k + 1 if (k + 1) % side else -1, k + side):
            if not 0 < other < count:
                continue
            a, b = parents[parents["district"] == k], parents[parents["district"] == other]
            dist = ((a["x"].to_numpy()[:, None] - b["x"].to_numpy()[None, :]) ** 2
                    + (a["y"].to_numpy()[:, None] - b["y"].to_numpy()[None, :]) ** 2)
            i, j = divmod(int(dist.argmin()), len(b))
            rows.append([a["stop_id"].iloc[i], b["stop_id"].iloc[j], "2", str(_LINK_TRANSFER_S)])
    return pd.DataFrame(rows, columns=["from_stop_id", "to_stop_id", "transfer_type",
                                       "min_transfer_time"])


def _write_mapping(path: Path, mapping: pd.DataFrame) -> None:
    with path.open("w", encoding="utf-8", newline="") as out:
        out.write("# gateway station id (its MQTT topic) -> GTFS stop or parent station id\n")
        writer = csv.writer(out, lineterminator="\n")
        writer.writerow(["station", "gtfs_stop_id"])
        writer.writerows(mapping[["station", "gtfs_stop_id"]].itertuples(index=False))


def _write_fleet_files(folder: Path, network: Network, ridership: pd.Series) -> None:
    """The fleet's own mapping and ridership (the stations it runs), for the report."""
    _write_mapping(folder / "stations.csv", pd.DataFrame({
        "station": network.ids, "gtfs_stop_id": network.stations["gtfs_id"].tolist()}))
    pd.DataFrame({"station": network.ids, "riders": ridership.astype(int).tolist()}).to_csv(
        folder / "ridership.csv", index=False, lineterminator="\n")
