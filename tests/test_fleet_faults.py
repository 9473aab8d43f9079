"""The fleet twin under faults: bad options, a broker that dies mid-run, Ctrl-C, a shared
broker with other stations on it. Whatever happens, the run ends, says what went wrong,
and leaves no process it started behind. Real Mosquitto, real daemons, the hub on SQLite."""

from __future__ import annotations

import asyncio
import math
import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from dispatch.errors import FleetError
from dispatch.fleet.cli import main
from dispatch.fleet.run import Fleet, FleetOptions, run_fleet
from gateway.testing.mosquitto import Mosquitto

SMALL: dict[str, Any] = {"stations": 8, "daemons": 1, "duration_s": 12.0, "speed": 7 * 86400 / 12,
         "seed": 3, "health_interval_s": 5.0}
ROOT = Path(__file__).resolve().parents[1]


def _running(marker: str) -> list[str]:
    """Command lines of live processes that mention `marker` (a run's folder)."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            state = (entry / "stat").read_text().rsplit(")", 1)[1].split()[0]
            line = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode()
        except (OSError, IndexError):
            continue
        if marker in line and state != "Z":
            found.append(line)
    return found


@settings(max_examples=60, deadline=None)
@given(option=st.sampled_from(["duration_s", "speed", "rate", "health_interval_s"]),
       value=st.sampled_from([0.0, -1.0, math.nan, math.inf, -math.inf])
       | st.floats(max_value=0.0) | st.floats(min_value=1e7 + 1))
def test_a_bad_number_is_refused_naming_the_option(option: str, value: float) -> None:
    """Zero, negative, NaN, infinite or absurd: each is refused before anything starts, with
    the option as the command spells it (a health interval of 0 once spun every station in
    a loop that filled the memory; an infinite duration was an OverflowError)."""
    with pytest.raises(FleetError, match="--" + option.removesuffix("_s").replace("_", "-")):
        FleetOptions(**{**SMALL, option: value})


def test_a_bad_seed_or_span_is_refused() -> None:
    with pytest.raises(FleetError, match="--seed -1"):
        FleetOptions(**{**SMALL, "seed": -1})
    with pytest.raises(FleetError, match="simulated weeks"):
        FleetOptions(**{**SMALL, "duration_s": 600.0, "speed": 1e5})


@pytest.mark.parametrize(("args", "says"), [
    (["--db", "bogus://x"], "--db bogus://x: cannot open the database"),
    (["--db", "sqlite:////nonexistent/folder/hub.db"], "cannot open the database"),
    (["--broker", "mqtt://127.0.0.1:1"], "--broker mqtt://127.0.0.1:1: cannot connect"),
    (["--folder", "FILE"], "File exists: give a folder that can be made"),
])
def test_an_unusable_database_broker_or_folder_exits_2_saying_which(
        tmp_path: Path, capsys: pytest.CaptureFixture[str], args: list[str],
        says: str) -> None:
    (tmp_path / "FILE").write_text("")
    args = [str(tmp_path / "FILE") if a == "FILE" else a for a in args]
    db = [] if "--db" in args else ["--db", f"sqlite:///{tmp_path / 'hub.db'}"]
    assert main(["--stations", "5", "--daemons", "0", "--duration", "5", *db, *args]) == 2
    err = capsys.readouterr().err
    assert says in err and "Traceback" not in err
    assert _running(str(tmp_path)) == []


async def test_a_broker_that_dies_mid_run_ends_the_run_with_the_reason(
        tmp_path: Path) -> None:
    """The fleet's own Mosquitto is killed while requests are in play. The run ends (before,
    it waited for ever: a dead sender, and each real help point's press waiting out its
    timeout in turn), its problems say the broker went, and nothing it started is left."""
    options = FleetOptions(**SMALL)
    folder = tmp_path / "run"
    async with Fleet(options, folder, f"sqlite:///{tmp_path / 'hub.db'}",
                     show_progress=False) as fleet:
        async def kill() -> None:
            await asyncio.sleep(options.duration_s / 2)
            assert fleet.broker is not None and fleet.broker.process is not None
            fleet.broker.process.kill()

        killer = asyncio.create_task(kill())
        await fleet.play()
        await killer
        result = await asyncio.wait_for(fleet.finish(), 240)  # bounded: it once never ended
    problems = "\n".join(result.problems)
    assert "the fleet's Mosquitto exited" in problems
    assert "lost the broker" in problems
    assert _running(str(folder)) == []


def test_ctrl_c_again_and_again_stops_everything_the_fleet_started(tmp_path: Path) -> None:
    """The children have their own sessions, so a terminal's Ctrl-C reaches the fleet
    alone: the first stops the run, the next ones only say it is stopping (asyncio's own
    second Ctrl-C raised KeyboardInterrupt mid-stop and left the hub, the daemons and
    Mosquitto running). Exit 130, and no process of the run is left."""
    folder, db = tmp_path / "run", tmp_path / "hub.db"
    fleet = subprocess.Popen(
        [sys.executable, "-m", "dispatch.fleet", "--stations", "8", "--daemons", "2",
         "--duration", "60", "--db", f"sqlite:///{db}", "--folder", str(folder)],
        cwd=ROOT, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 120
        while not _online(db, 8):  # every station up: the run is playing
            assert fleet.poll() is None, fleet.communicate()
            assert time.monotonic() < deadline, "the fleet never had every station online"
            time.sleep(0.2)
        for _ in range(3):
            fleet.send_signal(signal.SIGINT)
            time.sleep(0.3)
        _, err = fleet.communicate(timeout=120)
    finally:
        if fleet.poll() is None:
            fleet.kill()
    text = err.decode()
    assert fleet.returncode == 130, text
    assert "still stopping" in text and "interrupted" in text and "Traceback" not in text
    assert _running(str(folder)) == []


def _online(db: Path, stations: int) -> bool:
    if not db.exists():
        return False
    try:
        with sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=1) as conn:
            online = conn.execute(
                "SELECT count(*) FROM stations WHERE status = 'online'").fetchone()[0]
    except sqlite3.Error:
        return False
    return int(online) >= stations


async def test_other_stations_on_a_shared_broker_are_not_the_fleets(
        broker: Mosquitto, tmp_path: Path) -> None:
    """With --broker, the hub also hears whatever else is on it: a first run's stations,
    still retained. The second run's audit counts its own stations only (before, 12 of 10
    stations were offline, and the run failed after its full settle time)."""
    options = FleetOptions(**{**SMALL, "daemons": 0, "stations": 12, "prefix": "shared/v1"})
    first = await run_fleet(options, tmp_path / "one", f"sqlite:///{tmp_path / 'one.db'}",
                            broker_url=broker.url, show_progress=False)
    assert first.problems == []
    second = FleetOptions(**{**SMALL, "daemons": 0, "stations": 8, "prefix": "shared/v1",
                             "seed": 4})
    result = await run_fleet(second, tmp_path / "two", f"sqlite:///{tmp_path / 'two.db'}",
                             broker_url=broker.url, show_progress=False)
    assert result.problems == []
    assert result.hub.offline == 8
    assert set(result.hub.alerts) <= set(result.schedule.stations)
