"""The daemon and the demo as separate processes, as a technician runs them."""

from __future__ import annotations

import asyncio
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import aiomqtt
import pytest

from dispatch.outbound import make_command, send_command
from gateway.config.loading import load_config
from gateway.config.models import StationConfig
from gateway.inputs.simulate import socket_path
from gateway.testing.config import station_data, write_config
from gateway.testing.daemon import StationDaemon
from gateway.testing.mosquitto import Mosquitto
from tests.helpers import subscribe

ROOT = Path(__file__).resolve().parent.parent


def stationgw(*args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "gateway.ops.cli", *args],
        capture_output=True, text=True, timeout=timeout, cwd=ROOT, check=False,
    )


def station_toml(tmp_path: Path, url: str, factory: str = "mock") -> Path:
    raw = station_data(
        tmp_path, url, id_prefix="proc", fast_reconnect=False, gpio_pin_factory=factory,
        help_points=[{"id": "hp-1", "pin": 17, "lamp_pin": 27, "hold_time_s": 0.5}],
    )
    return write_config(tmp_path / "station.toml", raw)


@pytest.fixture
def daemon(broker: Mosquitto, tmp_path: Path) -> Iterator[tuple[Path, subprocess.Popen[bytes]]]:
    config = station_toml(tmp_path, broker.url)
    station = StationDaemon(config, tmp_path / "daemon.log", cwd=ROOT)
    proc = station.start()
    try:
        yield config, proc
    finally:
        station.stop()


async def simulate_socket_ready(config_path: Path, proc: subprocess.Popen[bytes]) -> StationConfig:
    """The daemon's config, once its simulate socket is up (it has started)."""
    config = load_config(config_path)
    async with asyncio.timeout(20):
        while not socket_path(config).exists():
            assert proc.poll() is None, "daemon exited"
            await asyncio.sleep(0.05)
    return config


async def test_simulate_drives_a_daemon_in_another_process(
    broker: Mosquitto, daemon: tuple[Path, subprocess.Popen[bytes]]
) -> None:
    config_path, proc = daemon
    config = await simulate_socket_ready(config_path, proc)
    async with subscribe(broker.port, f"stationgw/v1/{config.station_id}/events/#") as sub:
        done = await asyncio.to_thread(stationgw, "simulate", "press", "hp-1", "--config",
                                       str(config_path))
        assert done.returncode == 0, done.stderr
        assert "press hp-1: lamp now" in done.stdout
        await sub.wait_for(lambda m: len(m) >= 1)
        assert sub.events()[0]["kind"] == "help_point.press"
        async with asyncio.timeout(10):
            while True:
                lamp = await asyncio.to_thread(stationgw, "simulate", "lamp", "hp-1",
                                               "--config", str(config_path))
                if lamp.stdout.strip() == "sent":
                    break
                await asyncio.sleep(0.1)
        bad = await asyncio.to_thread(stationgw, "simulate", "press", "nope", "--config",
                                      str(config_path))
        assert bad.returncode == 1 and "unknown help point 'nope'" in bad.stderr
    assert proc.poll() is None  # still running after a bad command
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=10) == 0
    assert not socket_path(config).exists()  # removed on a clean stop


async def test_the_running_daemon_never_loads_pydantic(
    broker: Mosquitto, daemon: tuple[Path, subprocess.Popen[bytes]]
) -> None:
    """pydantic would cost about 11 MiB of the daemon's 40 MB (gateway/contract/spec.py).

    Through a press, its alert and a dispatch command (checked by the daemon's own code),
    the daemon's memory map never shows pydantic-core's library.
    """
    config_path, proc = daemon
    config = await simulate_socket_ready(config_path, proc)
    topic = f"stationgw/v1/{config.station_id}/#"
    async with subscribe(broker.port, topic) as sub, aiomqtt.Client(
        "127.0.0.1", broker.port, protocol=aiomqtt.ProtocolVersion.V5
    ) as dispatcher:
        done = await asyncio.to_thread(stationgw, "simulate", "press", "hp-1", "--config",
                                       str(config_path))
        assert done.returncode == 0, done.stderr
        await sub.wait_for(lambda m: any(p.get("kind") == "help_point.press" for _, p in m))
        press = next(p for _, p in sub.messages if p.get("kind") == "help_point.press")
        command = make_command(config.station_id, press["body"]["alert_id"], "acknowledge")
        await send_command(dispatcher, "stationgw/v1", command)
        await sub.wait_for(lambda m: any(p.get("kind") == "alert.acknowledged" for _, p in m))
    maps = await asyncio.to_thread(Path(f"/proc/{proc.pid}/maps").read_text)
    assert proc.poll() is None
    assert "/python3" in maps  # the map is the daemon's, and readable
    assert "pydantic" not in maps


def test_simulate_without_a_mock_daemon_says_so(tmp_path: Path) -> None:
    config = station_toml(tmp_path, "mqtt://127.0.0.1:1")
    done = stationgw("simulate", "press", "hp-1", "--config", str(config))
    assert done.returncode == 1
    assert "no mock-mode daemon is listening" in done.stderr


def test_real_pin_factory_opens_no_simulate_socket(tmp_path: Path) -> None:
    # This machine has no GPIO chip, so lgpio cannot start: the daemon must say why, and
    # must not have opened the mock-only socket on the way.
    config = station_toml(tmp_path, "mqtt://127.0.0.1:1", factory="lgpio")
    done = stationgw("run", "--config", str(config), timeout=30)
    assert done.returncode != 0
    assert "lgpio" in done.stdout + done.stderr
    assert not socket_path(load_config(config)).exists()


def _processes_mentioning(text: str) -> list[int]:
    found = []
    for pid in os.listdir("/proc"):
        if not pid.isdigit():
            continue
        try:
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ")
        except OSError:
            continue
        if text.encode() in cmdline:
            found.append(int(pid))
    return found


@pytest.mark.slow
def test_demo_runs_its_scene_unattended_and_leaves_nothing_behind() -> None:
    before = set(_processes_mentioning("stationgw-demo-"))
    done = stationgw("demo", timeout=120)
    assert done.returncode == 0, done.stdout + done.stderr
    out = done.stdout
    assert "Done: dispatch received" in out and "MISSING" not in out
    for scene in ("Scene 1", "Scene 2", "Scene 3", "Scene 4", "Scene 5", "Scene 7", "Scene 8"):
        assert scene in out
    # The hub's web console is offered before the scene plays, with a password of this run.
    console = re.search(r"web console  (http://127\.0\.0\.1:\d+/)\n"
                        r"   log in as    demo, password (\S{12,}) ", out)
    assert console is not None, out
    assert out.index(console.group(0)) < out.index("Scene 1")
    # What dispatch saw is what the hub's database holds, read back at the end.
    done_line = re.search(r"Done: dispatch received (\d+) events about (\d+) requests", out)
    alerts = re.search(r"alerts: (\d+) recorded; the scene raised (\d+)", out)
    events = re.search(r"events: (\d+) stored, each once by event_id; dispatch saw (\d+)", out)
    assert done_line is not None and alerts is not None and events is not None, out
    assert alerts.group(1) == alerts.group(2) == done_line.group(2)
    assert events.group(1) == events.group(2) == done_line.group(1)
    assert re.search(r"demo-central: seq 1\.\.\d+, 0 lost \(none\)", out), out
    assert "HUB INCOMPLETE" not in out
    assert set(_processes_mentioning("stationgw-demo-")) <= before


@pytest.mark.slow
def test_demo_with_the_fleet_twin_runs_a_simulated_metro_into_a_hub_and_loses_nothing() -> None:
    before = set(_processes_mentioning("stationgw-demo-"))
    done = stationgw("demo", "--fleet", timeout=240)
    assert done.returncode == 0, done.stdout + done.stderr
    out = done.stdout
    assert "Done: dispatch received" in out and "MISSING" not in out
    # After the station's scene: the metro's week, every request in the hub, resolved.
    assert out.index("Everything stopped") < out.index("The fleet twin")
    made = re.search(r"20 stations \(3 real daemons\), seed \d+, x\S+: (\d+) of (\d+) "
                     r"requests made", out)
    hub = re.search(r"hub \(sqlite:///\S+\): (\d+) alerts, (\d+) resolved, \d+ events; "
                    r"seq audit: 0 lost, 0 missing at the end; 20 stations offline", out)
    assert made is not None and hub is not None, out
    assert made.group(1) == made.group(2) == hub.group(1) == hub.group(2)
    assert int(hub.group(1)) > 100
    assert out.count("planted: ") >= 1 and "PROBLEM" not in out
    assert set(_processes_mentioning("stationgw-demo-")) <= before


async def test_killed_daemon_leaves_retained_offline_will(
    broker: Mosquitto, daemon: tuple[Path, subprocess.Popen[bytes]]
) -> None:
    config_path, proc = daemon
    config = load_config(config_path)
    status = f"stationgw/v1/{config.station_id}/status"
    async with subscribe(broker.port, status) as sub:
        await sub.wait_for(lambda m: any(p["state"] == "online" for _, p in m))
        proc.kill()
        proc.wait(timeout=10)
        await sub.wait_for(lambda m: m[-1][1]["state"] == "offline")
    async with subscribe(broker.port, status) as late:  # retained for whoever looks later
        await late.wait_for(lambda m: len(m) >= 1)
        assert late.messages[0][1]["state"] == "offline"


def test_outbox_command_reads_the_store_and_run_overrides(
    broker: Mosquitto, tmp_path: Path
) -> None:
    # Point the daemon at a dead broker and a scratch store through the overrides only.
    config = station_toml(tmp_path, broker.url)
    scratch = tmp_path / "scratch" / "other.db"
    proc = subprocess.Popen(
        [sys.executable, "-m", "gateway.ops.cli", "run", "--config", str(config),
         "--broker", "mqtt://127.0.0.1:1", "--store", str(scratch)],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, cwd=ROOT,
    )
    try:
        sim = socket_path(load_config(config, store=scratch))
        deadline = time.monotonic() + 20
        while not sim.exists():
            assert proc.poll() is None and time.monotonic() < deadline
            time.sleep(0.05)
        pressed = stationgw("simulate", "press", "hp-1", "--config", str(config),
                            "--store", str(scratch))
        assert pressed.returncode == 0, pressed.stderr
        assert "lamp now accepted" in pressed.stdout  # no broker: committed, not sent
        shown = stationgw("outbox", "--config", str(config), "--store", str(scratch))
        assert shown.returncode == 0, shown.stderr
        assert "P1: 1 pending" in shown.stdout
        assert "help_point.press" in shown.stdout
        assert "broker_unreachable" in shown.stdout  # recent faults, from the database
        as_json = stationgw("outbox", "--config", str(config), "--store", str(scratch), "--json")
        assert '"P1": {\n      "pending": 1' in as_json.stdout
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=10)
    assert not (tmp_path / "outbox.db").exists()  # the configured store was never touched
    bad = stationgw("run", "--config", str(config), "--broker", "http://x")
    assert bad.returncode == 78 and "--broker" in bad.stderr


def test_version() -> None:
    from gateway import __version__

    done = stationgw("--version")
    assert done.returncode == 0 and done.stdout.strip() == f"stationgw {__version__}"


def test_status_shows_the_running_daemon_and_its_faults(
    broker: Mosquitto, daemon: tuple[Path, subprocess.Popen[bytes]], tmp_path: Path
) -> None:
    config_path, proc = daemon
    config = load_config(config_path)
    deadline = time.monotonic() + 20
    while True:
        shown = stationgw("status", "--config", str(config_path))
        if shown.returncode == 0 and f"link broker:{broker.url}: up" in shown.stdout:
            break
        assert time.monotonic() < deadline, shown.stdout + shown.stderr
        time.sleep(0.2)
    assert f"station {config.station_id}" in shown.stdout and "running" in shown.stdout
    assert f"link broker:{broker.url}: up" in shown.stdout
    assert "lamps: hp-1=idle" in shown.stdout and "faults: none" in shown.stdout
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=10) == 0
    stopped = stationgw("status", "--config", str(config_path))
    assert stopped.returncode == 3 and "not running" in stopped.stdout
    # a daemon that cannot reach its broker: running, but with a fault (exit 1)
    other = tmp_path / "dead"
    other.mkdir()
    dead = station_toml(other, "mqtt://127.0.0.1:1")
    lonely = subprocess.Popen(
        [sys.executable, "-m", "gateway.ops.cli", "run", "--config", str(dead)],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, cwd=ROOT,
    )
    try:
        deadline = time.monotonic() + 20
        while True:
            shown = stationgw("status", "--config", str(dead))
            if shown.returncode == 1:
                break
            assert time.monotonic() < deadline, shown.stdout + shown.stderr
            time.sleep(0.2)
        assert "broker_unreachable" in shown.stdout
    finally:
        lonely.send_signal(signal.SIGTERM)
        lonely.wait(timeout=10)
