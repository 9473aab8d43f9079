"""`stationgw status`: the running daemon's health, for a technician at the console.

The daemon rewrites a small JSON file next to its database every few seconds (atomically),
so the command works with the broker down and needs no socket or privileges beyond reading
the state directory.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any

from gateway.config.models import StationConfig

INTERVAL_S = 5.0
STALE_AFTER_S = 3 * INTERVAL_S
EXIT_HEALTHY, EXIT_FAULTS, EXIT_NOT_RUNNING = 0, 1, 3  # 3 as in `systemctl status`


def status_path(config: StationConfig) -> Path:
    """Where the daemon for this config writes its status."""
    return config.store.path.parent / f"stationgw-{config.station_id}.status.json"


def write_status(path: Path, report: dict[str, Any]) -> None:
    """Replace the status file atomically (readers never see half a file)."""
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(report, indent=1))
    os.replace(tmp, path)


def render(report: dict[str, Any], age_s: float) -> tuple[str, int]:
    """Text for a technician, and the exit code."""
    lines = []
    running = report.get("state") != "stopped" and age_s <= STALE_AFTER_S
    state = "running" if running else (
        "stopped" if report.get("state") == "stopped" else f"NOT UPDATED for {age_s:.0f}s"
    )
    lines.append(
        f"station {report['station']}  stationgw {report['version']}  {state}  "
        f"uptime {report['uptime_s'] / 60:.1f} min"
    )
    for link, link_state in sorted(report.get("links", {}).items()):
        lines.append(f"  link {link}: {link_state}")
    box = report["outbox"]
    oldest = box.get("oldest_unsent_age_s")
    lines.append(
        f"  outbox: {box['rows']} row(s), {box['in_flight']} in flight, {box['memory_rows']} "
        "in memory only" + (f", oldest unsent {oldest:.1f}s" if oldest is not None else "")
    )
    for cls, states in box["by_class"].items():
        if states:
            detail = ", ".join(f"{n} {s}" for s, n in sorted(states.items()))
            lines.append(f"    {cls}: {detail}")
    faults = report.get("faults", [])
    lines.append(f"  faults: {len(faults)}" if faults else "  faults: none")
    for fault in faults:
        since = time.strftime("%H:%M:%S", time.localtime(fault["since"]))
        lines.append(f"    {fault['code']} since {since}: {fault['message']}")
    lamps = report.get("lamps", {})
    if lamps:
        lines.append("  lamps: " + ", ".join(f"{hp}={s}" for hp, s in lamps.items()))
    counters = report.get("counters", {})
    if counters:
        lines.append("  counters: " + ", ".join(f"{k}={v}" for k, v in sorted(counters.items())))
    if not running:
        return "\n".join(lines), EXIT_NOT_RUNNING
    return "\n".join(lines), EXIT_FAULTS if faults else EXIT_HEALTHY
