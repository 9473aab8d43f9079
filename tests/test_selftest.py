"""Commissioning: `stationgw selftest` against real Mosquitto and mock pins."""

from __future__ import annotations

import asyncio
import datetime
import json
import subprocess
import sys
from collections.abc import Mapping
from pathlib import Path

import trustme

from gateway.inputs.gpio import PinUnit
from gateway.ops.selftest import certificates, run_selftest, storage
from gateway.station.status import status_path
from gateway.testing.config import station_data, write_config
from gateway.testing.mosquitto import Mosquitto
from tests.helpers import HELP_POINTS, station_config

ROOT = Path(__file__).resolve().parent.parent
NOW = datetime.datetime.now(datetime.UTC)


async def press_everything(units: Mapping[str, PinUnit]) -> None:
    """A technician walking the platform, pressing each help point when asked."""
    while True:
        for unit in units.values():
            unit.button.pin.drive_low()
            await asyncio.sleep(0.05)
            unit.button.pin.drive_high()
        await asyncio.sleep(0.1)


async def test_selftest_passes_a_healthy_station(broker: Mosquitto, tmp_path: Path) -> None:
    config = station_config(tmp_path, [broker.url], gpio_pin_factory="mock",
                            help_points=HELP_POINTS)
    said: list[str] = []
    checks = await run_selftest(config, press_timeout_s=5, lamp_step_s=0.01,
                                say=said.append, during_presses=press_everything)
    by_name = {c.name: c for c in checks}
    for name in ("lamp hp-1", "lamp hp-2", "press hp-1", "press hp-2",
                 f"broker {broker.url}", "free disk", "database"):
        assert by_name[name].outcome == "pass", by_name[name]
    assert "accepted, sent, acknowledged, fault, idle" in by_name["lamp hp-1"].detail
    assert "round trip" in by_name[f"broker {broker.url}"].detail
    assert by_name["clock"].outcome in ("pass", "warn", "fail")  # depends on this machine
    assert any("press the help point hp-1" in line for line in said)


def test_selftest_without_presses_fails_and_writes_a_report(
    broker: Mosquitto, tmp_path: Path
) -> None:
    config = write_config(tmp_path / "station.toml", station_data(
        tmp_path, broker.url, fast_reconnect=False, station_id="selftest-cli",
        gpio_pin_factory="mock", help_points=[{"id": "hp-1", "pin": 17, "lamp_pin": 27}]))
    report = tmp_path / "report.json"
    done = subprocess.run(
        [sys.executable, "-m", "gateway.ops.cli", "selftest", "--config", str(config),
         "--press-timeout", "0.3", "--lamp-step", "0.01", "--report", str(report)],
        capture_output=True, text=True, timeout=60, cwd=ROOT, check=False,
    )
    assert done.returncode == 1, done.stdout + done.stderr
    assert "press hp-1" in done.stdout and "FAIL" in done.stdout
    data = json.loads(report.read_text())
    assert data["passed"] is False and data["station"] == "selftest-cli"
    outcomes = {c["name"]: c["outcome"] for c in data["checks"]}
    assert outcomes["press hp-1"] == "fail"
    assert outcomes["lamp hp-1"] == "pass"
    assert outcomes[f"broker {broker.url}"] == "pass"


async def test_selftest_refuses_while_the_daemon_runs(tmp_path: Path) -> None:
    config = station_config(tmp_path, ["mqtt://127.0.0.1:1"])
    status_path(config).write_text("{}")
    (check,) = await run_selftest(config)
    assert check.outcome == "fail" and "systemctl stop stationgw" in check.detail


async def test_unreachable_broker_fails_the_round_trip(tmp_path: Path) -> None:
    config = station_config(tmp_path, ["mqtt://127.0.0.1:1"])
    checks = await run_selftest(config, broker_timeout_s=2)
    (broker_check,) = [c for c in checks if c.name.startswith("broker ")]
    assert broker_check.outcome == "fail"


def test_certificate_expiry_is_warned_under_30_days(tmp_path: Path) -> None:
    ca = trustme.CA()
    ca.cert_pem.write_to_path(str(tmp_path / "ca.pem"))
    soon = ca.issue_cert("st", not_after=NOW + datetime.timedelta(days=10))
    soon.cert_chain_pems[0].write_to_path(str(tmp_path / "client.pem"))
    config = station_config(tmp_path, ["mqtts://localhost:8883"],
                            mqtt={"tls": {"ca_file": str(tmp_path / "ca.pem"),
                                          "cert_file": str(tmp_path / "client.pem")}})
    checks = {c.name: c for c in certificates(config, NOW)}
    assert checks["CA certificate"].outcome == "pass"
    assert checks["client certificate"].outcome == "warn"
    assert "10 days" in checks["client certificate"].detail or "9 days" in checks[
        "client certificate"].detail
    later = certificates(config, NOW + datetime.timedelta(days=11))
    assert {c.name: c.outcome for c in later}["client certificate"] == "fail"


def test_corrupt_database_fails_integrity(tmp_path: Path) -> None:
    config = station_config(tmp_path, ["mqtt://127.0.0.1:1"])
    config.store.path.write_bytes(b"SQLite format 3\0" + b"\x13" * 8192)
    checks = {c.name: c for c in storage(config)}
    assert checks["free disk"].outcome == "pass"
    assert checks["database"].outcome == "fail"


async def test_selftest_checks_each_serial_board(broker: Mosquitto, tmp_path: Path) -> None:
    from firmware_bridge.simulator import BoardSimulator

    port = tmp_path / "by-id" / "usb-edge"
    port.parent.mkdir()
    missing = tmp_path / "by-id" / "usb-gone"
    config = station_config(tmp_path, [broker.url], sensors=[
        {"id": "edge-p1", "port": str(port)}, {"id": "gone-p2", "port": str(missing)}])
    async with BoardSimulator(port, device_id="edge-7f3a") as board:
        checks = {c.name: c for c in await run_selftest(config, board_timeout_s=3,
                                                         say=lambda _: None)}
        assert any(type(f).__name__ == "SelfTest" for f in board.carried_out)
    assert checks["board edge-p1 hello"].outcome == "pass"
    assert "edge-7f3a" in checks["board edge-p1 hello"].detail
    assert checks["board edge-p1 heartbeat"].outcome == "pass"
    assert checks["board edge-p1 self-test"].outcome == "pass"
    assert checks["board gone-p2 hello"].outcome == "fail"
    assert "no HELLO" in checks["board gone-p2 hello"].detail


async def test_selftest_walks_and_presses_help_points_on_a_board(
    broker: Mosquitto, tmp_path: Path
) -> None:
    from firmware_bridge import Lamp
    from firmware_bridge.simulator import BoardSimulator

    port = tmp_path / "by-id" / "usb-panel"
    port.parent.mkdir()
    config = station_config(
        tmp_path, [broker.url],
        sensors=[{"id": "panel-p2", "port": str(port)}],
        help_points=[{"id": "hp-a", "board": "panel-p2", "button": "b1", "lamp": "l1"},
                     {"id": "hp-b", "board": "panel-p2", "button": "b2", "lamp": "l2"}],
    )
    said: list[str] = []
    board = BoardSimulator(port, lamps=("l1",))  # l2 is not fitted: its walk must fail

    def technician(line: str) -> None:
        said.append(line)
        if line.startswith("press the help point hp-a"):
            board.press("b1")
            board.release("b1")

    async with board:
        checks = {c.name: c for c in await run_selftest(
            config, board_timeout_s=3, press_timeout_s=1, lamp_step_s=0.01, say=technician)}
    assert checks["lamp hp-a"].outcome == "pass"
    assert "accepted, sent, acknowledged, fault, idle" in checks["lamp hp-a"].detail
    assert [f.state for f in board.frames_of(Lamp) if f.lamp == "l1"] == [
        "accepted", "sent", "acknowledged", "fault", "idle"]
    assert checks["press hp-a"].outcome == "pass"
    assert checks["lamp hp-b"].outcome == "fail" and "no lamp l2" in checks["lamp hp-b"].detail
    assert checks["press hp-b"].outcome == "fail"  # nobody pressed b2
