"""The systemd unit and the notify protocol: hardening score, verify, READY and WATCHDOG."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from gateway.sdnotify import Notifier
from gateway.testing.config import station_data, write_config
from gateway.testing.mosquitto import Mosquitto

ROOT = Path(__file__).resolve().parent.parent
UNIT = ROOT / "systemd" / "stationgw.service"


def _analyze() -> str:
    found = shutil.which("systemd-analyze")
    assert found, "systemd-analyze is missing (Debian package systemd)"
    return found


def test_unit_exposure_is_at_most_2_0() -> None:
    # --threshold is in tenths: 20 means an overall exposure of 2.0.
    done = subprocess.run(
        [_analyze(), "security", "--offline=true", "--threshold=20", str(UNIT)],
        capture_output=True, text=True, check=False,
    )
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr
    assert "Overall exposure level for stationgw.service" in done.stdout


def test_unit_verifies(tmp_path: Path) -> None:
    # verify checks that ExecStart exists: point it at this checkout's installed command.
    command = Path(sys.executable).parent / "stationgw"
    assert command.exists()
    unit = tmp_path / "stationgw.service"
    unit.write_text(UNIT.read_text().replace("/opt/stationgw/venv/bin/stationgw", str(command)))
    done = subprocess.run(
        [_analyze(), "verify", str(unit)], capture_output=True, text=True, check=False
    )
    assert done.returncode == 0, done.stderr
    text = UNIT.read_text()
    for line in ("Type=notify", "RestartPreventExitStatus=78", "DevicePolicy=closed",
                 "NoNewPrivileges=yes", "ProtectSystem=strict", "CapabilityBoundingSet=\n",
                 "SupplementaryGroups=gpio dialout", "WatchdogSec="):
        assert line in text
    assert "PrivateDevices" not in text.replace("No PrivateDevices", "")


def test_notifier_speaks_to_an_abstract_socket() -> None:
    name = f"stationgw-test-{os.getpid()}"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as server:
        server.bind("\0" + name)
        notifier = Notifier({"NOTIFY_SOCKET": "@" + name, "WATCHDOG_USEC": "3000000"})
        assert notifier.enabled and notifier.watchdog_s == 3.0
        assert notifier.notify(READY="1", STATUS="ok")
        assert server.recv(4096) == b"READY=1\nSTATUS=ok"
    assert not Notifier({}).notify(READY="1")
    other_pid = Notifier({"NOTIFY_SOCKET": "/x", "WATCHDOG_USEC": "1", "WATCHDOG_PID": "1"})
    assert other_pid.watchdog_s is None  # the watchdog is meant for another process


@pytest.mark.slow
def test_daemon_sends_ready_watchdog_and_stopping(broker: Mosquitto, tmp_path: Path) -> None:
    config = write_config(tmp_path / "station.toml", station_data(
        tmp_path, broker.url, fast_reconnect=False, station_id="notify-test"))
    path = tmp_path / "notify.sock"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as server:
        server.bind(str(path))
        server.settimeout(20)
        env = {**os.environ, "NOTIFY_SOCKET": str(path), "WATCHDOG_USEC": "400000"}
        env.pop("WATCHDOG_PID", None)
        proc = subprocess.Popen(
            [sys.executable, "-m", "gateway.ops.cli", "run", "--config", str(config)],
            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, cwd=ROOT,
        )
        try:
            messages = [server.recv(4096)]
            assert messages[0].startswith(b"READY=1")
            start = time.monotonic()
            pings = 0
            while time.monotonic() - start < 1.5:
                if server.recv(4096) == b"WATCHDOG=1":
                    pings += 1
            # WatchdogSec 0.4 s, pinged every 0.2 s from the loop: about 7 in 1.5 s.
            assert pings >= 4
            proc.send_signal(signal.SIGTERM)
            stopping = server.recv(4096)
            while stopping == b"WATCHDOG=1":
                stopping = server.recv(4096)
            assert stopping == b"STOPPING=1"
            assert proc.wait(timeout=10) == 0
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
