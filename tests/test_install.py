"""`stationgw install` / `uninstall` against a temporary root, and the start-up mode checks."""

from __future__ import annotations

import os
import shutil
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from gateway.ops.install import Installer
from gateway.testing.config import station_data, write_config

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture
def fake_root(tmp_path: Path) -> Path:
    """A root with this machine's user database, for useradd --root (needs root: CI is)."""
    root = tmp_path / "root"
    (root / "etc").mkdir(parents=True)
    for name in ("passwd", "group", "shadow", "gshadow", "login.defs"):
        if Path("/etc", name).exists():
            shutil.copy2(Path("/etc", name), root / "etc" / name)
    return root


def stationgw(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "gateway.ops.cli", *args], capture_output=True,
                          text=True, timeout=300, cwd=ROOT, check=False)


def owner(path: Path, root: Path) -> tuple[str, str, int]:
    st = path.stat()
    names = {int(f[2]): f[0] for f in
             (line.split(":") for line in (root / "etc/passwd").read_text().splitlines())}
    groups = {int(f[2]): f[0] for f in
              (line.split(":") for line in (root / "etc/group").read_text().splitlines())}
    return names.get(st.st_uid, "?"), groups.get(st.st_gid, "?"), stat.S_IMODE(st.st_mode)


def test_install_is_complete_and_idempotent_and_uninstall_keeps_data(fake_root: Path) -> None:
    first = stationgw("install", "--root", str(fake_root), "--no-venv")
    assert first.returncode == 0, first.stderr
    passwd = (fake_root / "etc/passwd").read_text()
    assert "stationgw:" in passwd and "/usr/sbin/nologin" in passwd
    for group in ("gpio", "dialout"):
        line = next(x for x in (fake_root / "etc/group").read_text().splitlines()
                    if x.startswith(f"{group}:"))
        assert "stationgw" in line.split(":")[3].split(",")
    assert owner(fake_root / "etc/stationgw", fake_root) == ("root", "stationgw", 0o750)
    config = fake_root / "etc/stationgw/station.toml"
    assert owner(config, fake_root) == ("root", "stationgw", 0o640)
    assert owner(fake_root / "var/lib/stationgw", fake_root) == ("stationgw", "stationgw", 0o750)
    unit = fake_root / "etc/systemd/system/stationgw.service"
    assert unit.read_text() == (ROOT / "systemd/stationgw.service").read_text()
    # idempotent, and an edited config is never overwritten
    config.write_text(config.read_text() + "\n# edited by the technician\n")
    again = stationgw("install", "--root", str(fake_root), "--no-venv")
    assert again.returncode == 0 and again.stdout.strip() == "nothing to do: already installed"
    assert config.read_text().endswith("# edited by the technician\n")
    # uninstall keeps config and data; --purge removes them and the user
    (fake_root / "var/lib/stationgw/outbox.db").write_text("data")
    removed = stationgw("uninstall", "--root", str(fake_root))
    assert removed.returncode == 0, removed.stderr
    assert not unit.exists() and config.exists()
    assert (fake_root / "var/lib/stationgw/outbox.db").exists()
    purged = stationgw("uninstall", "--root", str(fake_root), "--purge")
    assert purged.returncode == 0, purged.stderr
    assert not (fake_root / "etc/stationgw").exists()
    assert not (fake_root / "var/lib/stationgw").exists()
    assert "stationgw:" not in (fake_root / "etc/passwd").read_text()


@pytest.mark.slow
def test_install_builds_a_working_venv(fake_root: Path) -> None:
    done = Installer(root=fake_root, extras="").install()
    assert any("installed" in step and "venv" in step for step in done)
    command = fake_root / "opt/stationgw/venv/bin/stationgw"
    version = subprocess.run([str(command), "--version"], capture_output=True, text=True,
                             check=False)
    assert version.returncode == 0 and version.stdout.startswith("stationgw ")


def test_run_refuses_configs_and_secrets_that_are_too_open(tmp_path: Path) -> None:
    secret = tmp_path / "mqtt-password"
    secret.write_text("hunter2\n")
    secret.chmod(0o600)
    config = write_config(tmp_path / "station.toml", station_data(
        tmp_path, "mqtt://127.0.0.1:1", fast_reconnect=False, station_id="perm",
        mqtt={"username": "perm", "password_file": str(secret)}))
    config.chmod(0o666)
    done = stationgw("run", "--config", str(config))
    assert done.returncode == 78
    assert "lets others change the station config" in done.stderr and "chmod 640" in done.stderr
    config.chmod(0o640)
    secret.chmod(0o644)
    done = stationgw("run", "--config", str(config))
    assert done.returncode == 78
    assert f"{secret}: mode 0644 lets others read" in done.stderr
    assert not (tmp_path / "outbox.db").exists()
    assert os.access(config, os.R_OK)
