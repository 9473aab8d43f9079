"""What the benchmarks run on: the machine line each starts with, and a scratch folder on its
temporary disk."""

from __future__ import annotations

import contextlib
import os
import platform
import re
import shutil
import sqlite3
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path


def _cmd_version(args: list[str]) -> str:
    with contextlib.suppress(OSError, subprocess.SubprocessError):
        out = subprocess.run(args, capture_output=True, text=True, timeout=5, check=False)
        text = (out.stdout or out.stderr).strip().splitlines()
        return text[0] if text else "?"
    return "?"


def machine_info() -> dict[str, str]:
    """What the figures were measured on."""
    from importlib.metadata import version  # noqa: PLC0415

    cpuinfo = Path("/proc/cpuinfo").read_text()
    model = re.search(r"model name\s*:\s*(.*)", cpuinfo)
    mem = re.search(r"MemTotal:\s*(\d+)", Path("/proc/meminfo").read_text())
    disk = "?"
    with contextlib.suppress(OSError, subprocess.SubprocessError):
        disk = subprocess.run(
            ["findmnt", "-no", "SOURCE,FSTYPE", "-T", tempfile.gettempdir()],
            capture_output=True, text=True, timeout=5, check=False,
        ).stdout.strip()
    return {
        "cpu": model.group(1).strip() if model else platform.processor(),
        "cores": str(os.cpu_count()),
        "ram": f"{int(mem.group(1)) / 1024 / 1024:.1f} GiB" if mem else "?",
        "kernel": platform.release(),
        "python": platform.python_version(),
        "sqlite": sqlite3.sqlite_version,
        "paho-mqtt": version("paho-mqtt"),
        "aiomqtt": version("aiomqtt"),
        "mosquitto": _cmd_version(
            [shutil.which("mosquitto") or "/usr/sbin/mosquitto", "-h"]
        ).removeprefix("mosquitto version "),
        "tmp disk": disk,
        "load avg": " ".join(f"{x:.2f}" for x in os.getloadavg()),
    }


def print_machine() -> None:
    """Print the machine line every benchmark starts with."""
    info = machine_info()
    print("machine: " + "; ".join(f"{k} {v}" for k, v in info.items()))


def env_summary(extra: dict[str, str] | None = None) -> dict[str, str]:
    """Machine info plus benchmark parameters, for --json."""
    return {**machine_info(), **(extra or {})}


@contextlib.contextmanager
def workdir(prefix: str) -> Iterator[Path]:
    """A temporary folder (for the databases and logs), removed at the end."""
    path = Path(tempfile.mkdtemp(prefix=f"stationgw-bench-{prefix}-"))
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)
