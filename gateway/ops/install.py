"""`stationgw install` / `uninstall`: set up a Raspberry Pi OS machine for the daemon.

Idempotent: running it again changes nothing that is already right, and never overwrites
an edited config. `--root DIR` installs into another root (an image being prepared, or a
test); the live-system steps (systemctl) run only when the root is `/`.

Layout:
    /etc/stationgw/                 0750 root:stationgw   config and secrets
    /etc/stationgw/station.toml     0640 root:stationgw
    /var/lib/stationgw/             0750 stationgw:stationgw   the outbox database
    /opt/stationgw/venv/            the package and its dependencies
    /etc/systemd/system/stationgw.service
"""

from __future__ import annotations

import os
import shutil
import stat
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from gateway.errors import InstallError

USER = "stationgw"
GROUPS = ("gpio", "dialout")
PACKAGE_ROOT = Path(__file__).resolve().parents[2]
Runner = Callable[[list[str]], None]


def run_command(argv: list[str]) -> None:
    """Run a system command; raise InstallError with its output when it fails."""
    done = subprocess.run(argv, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise InstallError(f"{' '.join(argv)} failed ({done.returncode}): "
                           f"{(done.stderr or done.stdout).strip()}")


def _ids(root: Path, name: str) -> tuple[int, int] | None:
    """uid and gid of a user in root's /etc/passwd."""
    passwd = root / "etc" / "passwd"
    if not passwd.exists():
        return None
    for line in passwd.read_text().splitlines():
        fields = line.split(":")
        if len(fields) > 3 and fields[0] == name:
            return int(fields[2]), int(fields[3])
    return None


def _group_exists(root: Path, name: str) -> bool:
    group = root / "etc" / "group"
    return group.exists() and any(
        line.split(":", 1)[0] == name for line in group.read_text().splitlines()
    )


def _members(root: Path, group_name: str) -> set[str]:
    for line in (root / "etc" / "group").read_text().splitlines():
        fields = line.split(":")
        if fields[0] == group_name and len(fields) > 3:
            return {m for m in fields[3].split(",") if m}
    return set()


@dataclass
class Installer:
    """The install steps; each records what it did in `done`."""

    root: Path = Path("/")
    source: Path = PACKAGE_ROOT
    extras: str = "pi"
    config_source: Path | None = None
    run: Runner = run_command
    done: list[str] = field(default_factory=list)

    def path(self, absolute: str) -> Path:
        """An absolute path inside the install root."""
        return self.root / absolute.lstrip("/")

    @property
    def live(self) -> bool:
        """True when installing onto the running system."""
        return self.root.resolve() == Path("/")

    def _root_args(self) -> list[str]:
        return [] if self.live else ["--root", str(self.root.resolve())]

    def user(self) -> None:
        """The system user, in the gpio and dialout groups."""
        for group in GROUPS:
            if not _group_exists(self.root, group):
                self.run(["groupadd", "--system", *self._root_args(), group])
                self.done.append(f"created group {group}")
        if _ids(self.root, USER) is None:
            self.run([
                "useradd", "--system", "--user-group", "--no-create-home",
                "--home-dir", "/var/lib/stationgw", "--shell", "/usr/sbin/nologin",
                "--groups", ",".join(GROUPS), *self._root_args(), USER,
            ])
            self.done.append(f"created user {USER} in {', '.join(GROUPS)}")
            return
        missing = [g for g in GROUPS if USER not in _members(self.root, g)]
        if missing:
            self.run(["usermod", "--append", "--groups", ",".join(missing),
                      *self._root_args(), USER])
            self.done.append(f"added {USER} to {', '.join(missing)}")

    def _own(self, path: Path, mode: int, owner: str | None, group: str) -> None:
        uid = 0 if owner is None else (_ids(self.root, owner) or (0, 0))[0]
        ids = _ids(self.root, group)
        gid = ids[1] if ids else 0
        current = path.stat()
        if stat.S_IMODE(current.st_mode) != mode:
            path.chmod(mode)
            self.done.append(f"chmod {mode:04o} {path}")
        if (current.st_uid, current.st_gid) != (uid, gid):
            os.chown(path, uid, gid)
            self.done.append(f"chown {uid}:{gid} {path}")

    def directories(self) -> None:
        """/etc/stationgw (config, secrets) and /var/lib/stationgw (database)."""
        etc, state = self.path("/etc/stationgw"), self.path("/var/lib/stationgw")
        for folder in (etc, state):
            if not folder.exists():
                folder.mkdir(parents=True)
                self.done.append(f"created {folder}")
        self._own(etc, 0o750, None, USER)
        self._own(state, 0o750, USER, USER)
        config = etc / "station.toml"
        if not config.exists():
            source = self.config_source or self.source / "config" / "station.example.toml"
            config.write_text(source.read_text())
            self.done.append(f"installed {config} from {source} (edit it, then "
                             "`stationgw check-config`)")
        self._own(config, 0o640, None, USER)

    def venv(self) -> None:
        """The virtualenv with the package (and lgpio on a Pi)."""
        if not (self.source / "pyproject.toml").exists():
            raise InstallError(
                f"{self.source} is not a station-gateway checkout: run `stationgw install` "
                "from a checkout's venv (pip install -e .), or pass --source"
            )
        venv = self.path("/opt/stationgw/venv")
        python = venv / "bin" / "python"
        if not python.exists():
            self.run([sys.executable, "-m", "venv", str(venv)])
            self.done.append(f"created virtualenv {venv}")
        spec = f"{self.source}[{self.extras}]" if self.extras else str(self.source)
        self.run([str(python), "-m", "pip", "install", "--quiet", spec])
        self.done.append(f"installed {spec} into {venv}")

    def unit(self) -> None:
        """The hardened systemd unit, enabled on a live system."""
        target = self.path("/etc/systemd/system/stationgw.service")
        text = (self.source / "systemd" / "stationgw.service").read_text()
        if not target.exists() or target.read_text() != text:
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_text(text)
            target.chmod(0o644)
            self.done.append(f"installed {target}")
        if self.live:
            self.run(["systemctl", "daemon-reload"])
            self.run(["systemctl", "enable", "stationgw.service"])
            self.done.append("enabled stationgw.service (start it after editing the config)")

    def install(self, *, with_venv: bool = True) -> list[str]:
        """Every step, in order."""
        self.user()
        self.directories()
        if with_venv:
            self.venv()
        self.unit()
        return self.done

    def uninstall(self, *, purge: bool = False) -> list[str]:
        """Remove the unit and the venv; the config and data stay unless `purge`."""
        target = self.path("/etc/systemd/system/stationgw.service")
        if self.live and target.exists():
            self.run(["systemctl", "disable", "--now", "stationgw.service"])
        if target.exists():
            target.unlink()
            self.done.append(f"removed {target}")
        opt = self.path("/opt/stationgw")
        if opt.exists():
            shutil.rmtree(opt)
            self.done.append(f"removed {opt}")
        if self.live:
            self.run(["systemctl", "daemon-reload"])
        if purge:
            for folder in (self.path("/etc/stationgw"), self.path("/var/lib/stationgw")):
                if folder.exists():
                    shutil.rmtree(folder)
                    self.done.append(f"removed {folder}")
            if _ids(self.root, USER) is not None:
                self.run(["userdel", *self._root_args(), USER])
                self.done.append(f"removed user {USER}")
        else:
            self.done.append("kept /etc/stationgw and /var/lib/stationgw (use --purge to remove)")
        return self.done


def permission_problems(
    config_path: Path, secrets: dict[str, Path], trusted: dict[str, Path] | None = None
) -> list[str]:
    """Files too open for a station gateway: checked by `stationgw run` at start.

    The config, the `secrets` (password and key files, by key path) and the other `trusted`
    files (certificates) must belong to root or to the user running the gateway: whoever
    owns one can change it, and so control the station. The config may not be writable by
    others, and a secret not readable by them.
    """
    problems = []
    files = {"config": config_path, **secrets, **(trusted or {})}
    me = os.geteuid()
    for key, path in files.items():
        owner = path.stat().st_uid
        if owner not in (0, me):
            where = f"{path}" if key == "config" else f"{key}: {path}"
            problems.append(
                f"{where}: owned by uid {owner}, neither root nor the user running the gateway "
                f"(uid {me}), so another user can change it (chown root {path})"
            )
    mode = stat.S_IMODE(config_path.stat().st_mode)
    if mode & 0o022:
        problems.append(
            f"{config_path}: mode {mode:04o} lets others change the station config "
            f"(chmod 640 {config_path})"
        )
    for key, secret in secrets.items():
        mode = stat.S_IMODE(secret.stat().st_mode)
        if mode & 0o027:
            problems.append(
                f"{key}: {secret}: mode {mode:04o} lets others read or change a secret "
                f"(chmod 600 {secret}, or 640 with group stationgw)"
            )
    return problems
