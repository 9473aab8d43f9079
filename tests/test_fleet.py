"""The fleet twin: a small simulated metro live, into a real Mosquitto and the hub on SQLite.

20 stations of the shipped metro, 3 of them real gateway daemons on mock pins, a simulated
week in 20 seconds. What a planner and a benchmark rely on: the hub's record holds every
request (its seq audit counts nothing lost), each real daemon's press is an alert there of
the class it was pressed at, the planted hotspots stand out in the counts, and the seed gives
the same schedule every time.
"""

from __future__ import annotations

import asyncio
import statistics
from pathlib import Path

import pandas as pd
import pytest

from dispatch.analysis.record import BAND_NAMES, band_of_hour
from dispatch.analysis.simulate import LOCATIONS
from dispatch.fleet.cli import main
from dispatch.fleet.daemons import daemon_config
from dispatch.fleet.network import fleet_metro
from dispatch.fleet.run import FleetOptions, FleetResult, latencies, run_fleet
from dispatch.fleet.schedule import make_schedule
from dispatch.hub.store import HubStore, open_engine
from gateway.config.loading import load_config

OPTIONS = FleetOptions(stations=20, daemons=3, duration_s=20.0, speed=7 * 86400 / 20,
                       seed=14, health_interval_s=5.0)


@pytest.fixture(scope="module")
def fleet_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[FleetResult, str]:
    folder = tmp_path_factory.mktemp("fleet")
    db_url = f"sqlite:///{folder / 'hub.db'}"
    result = asyncio.run(run_fleet(OPTIONS, folder / "run", db_url, show_progress=False))
    return result, db_url


def test_the_hub_holds_every_request_and_loses_nothing(
        fleet_run: tuple[FleetResult, str]) -> None:
    result, db_url = fleet_run
    assert result.problems == []
    # No console in this run: the fleet's dispatcher answered every request, and no command
    # broke a simulated station's handling.
    assert result.overtaken == 0 and result.handling_errors == 0
    assert result.hub.lost == 0
    assert result.hub.lost_tail == 0
    assert sum(result.hub.alerts.values()) == len(result.schedule.requests) > 300
    store = HubStore(open_engine(db_url))
    assert sum(len(g.missing) for g in store.gaps()) == 0
    assert len(store.gaps()) == OPTIONS.stations  # every station, simulated or real, spoke
    rows = {r["station"]: r for r in store.station_rows()}
    assert {s: r["status"] for s, r in rows.items()} == dict.fromkeys(
        result.schedule.stations, "offline")
    assert all(r["health"] is not None for r in rows.values())


def test_every_real_daemon_press_is_an_alert_of_its_class(
        fleet_run: tuple[FleetResult, str]) -> None:
    result, db_url = fleet_run
    store = HubStore(open_engine(db_url))
    recorded = {(a["station"], a["alert_id"]): a for a in store.alerts()}
    daemons = set(result.schedule.daemons)
    pressed = [s for s in result.sent if s.request.station in daemons]
    assert {s.request.station for s in pressed} == daemons
    assert len(pressed) == sum(result.schedule.counts()[d] for d in daemons)
    for sent in pressed:
        alert = recorded[(sent.request.station, sent.alert_id)]
        assert alert["class"] == sent.request.priority
        assert alert["requested_response"] == sent.request.response
        assert alert["state"] == "resolved"
        assert alert["team"] == sent.request.team
    delays = latencies(store.engine, pressed)
    assert len(delays) == len(pressed)
    assert 0 < statistics.median(delays.values()) < 5.0


def test_planted_hotspots_stand_out_in_the_hubs_counts(
        fleet_run: tuple[FleetResult, str]) -> None:
    result, db_url = fleet_run
    schedule = result.schedule
    assert schedule.planted
    store = HubStore(open_engine(db_url))
    request_of = {(s.request.station, s.alert_id): s.request for s in result.sent}
    hours = band_of_hour()
    tz = fleet_metro_timezone()
    in_band: dict[tuple[str, str], int] = {}
    for alert in store.alerts():
        local = pd.Timestamp(request_of[(alert["station"], alert["alert_id"])].sim_at,
                             unit="s", tz="UTC").tz_convert(tz)
        band = BAND_NAMES[hours[local.day_of_week * 24 + local.hour]]
        in_band[(alert["station"], band)] = in_band.get((alert["station"], band), 0) + 1
    for spot in schedule.planted:
        typical = statistics.median(in_band.get((s, spot.band), 0) for s in schedule.stations)
        site = statistics.mean(in_band.get((s, spot.band), 0) for s in spot.stations)
        assert site > 2 * typical, (spot, site, typical)


def fleet_metro_timezone() -> str:
    return "Europe/Zurich"  # the shipped metro's agency_timezone


def test_the_seed_gives_the_same_schedule(fleet_run: tuple[FleetResult, str],
                                          tmp_path: Path) -> None:
    result, _ = fleet_run
    metro = fleet_metro(OPTIONS.stations, tmp_path / "metro")
    assert metro.network.timezone == fleet_metro_timezone()

    def schedule(seed: int) -> object:
        return make_schedule(metro.network, metro.ridership, daemons=OPTIONS.daemons,
                             duration_s=OPTIONS.duration_s, speed=OPTIONS.speed, seed=seed)

    assert schedule(OPTIONS.seed) == result.schedule
    assert [s.request for s in result.sent] == list(result.schedule.requests)
    assert schedule(OPTIONS.seed + 1) != result.schedule


def test_a_bad_option_is_named_before_anything_starts(
        capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    assert main(["--stations", "0", "--db", f"sqlite:///{tmp_path / 'x.db'}"]) == 2
    assert "--stations 0: give 1 or more" in capsys.readouterr().err


@pytest.mark.parametrize("folder", ["plain", 'with "quotes"', "back\\slash", "ünïcode and spaces"])
def test_a_fleet_daemons_config_is_valid_whatever_its_folder(tmp_path: Path, folder: str) -> None:
    """`--folder` is the user's: the daemon's TOML holds its path as a string whatever it
    contains, and the station config loads with every help point and its outbox there."""
    where = tmp_path / folder
    where.mkdir()
    path = where / "station.toml"
    path.write_text(daemon_config("d1-old-quay", where, "mqtt://127.0.0.1:1883",
                                  prefix="stationgw/v1", health_interval_s=30.0),
                    encoding="utf-8")
    config = load_config(path)
    assert config.station_id == "d1-old-quay"
    assert Path(config.store.path) == where / "outbox.db"
    assert len(config.help_points) == 2 * len(LOCATIONS)
