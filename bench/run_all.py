"""Run every benchmark, one process each, and print one summary table.

    python -m bench.run_all                  # every benchmark (fleet_scale alone takes 14 min)
    python -m bench.run_all --quick          # every one, short (a smoke test)
    python -m bench.run_all --only station   # a group: station, hub or analysis
    python -m bench.run_all --only latency drain   # or benchmarks by name

Each benchmark also prints its own table and details as it goes. Results are written as
JSON to --out (default bench/results/, which git ignores).
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import math
import subprocess
import sys
import time
from pathlib import Path

from bench import REPO
from bench.figures import Figure, fmt, print_table
from bench.machine import machine_info

#: Every benchmark, by what it measures. tests/test_layers.py checks that every module in
#: bench/ that takes --quick and --json is here.
GROUPS: dict[str, tuple[str, ...]] = {
    "station": ("latency", "throughput", "drain", "resources", "pin_latency",
                "sensor_latency", "ack_roundtrip", "dead_link", "command_flood", "codec"),
    "hub": ("console_intake", "hub_intake", "hub_crashes", "hub_replicas", "hub_memory",
            "station_to_screen"),
    "analysis": ("report_speed", "fleet_scale"),
}
BENCHES = tuple(name for names in GROUPS.values() for name in names)


def run(name: str, quick: bool, out: Path) -> tuple[list[Figure], float, int]:
    """Run one benchmark; returns its figures, seconds taken and exit code."""
    path = out / f"{name}.json"
    path.unlink(missing_ok=True)
    args = [sys.executable, "-m", f"bench.{name}", "--json", str(path)]
    if quick:
        args.append("--quick")
    print(f"\n=== bench.{name}{' --quick' if quick else ''}", flush=True)
    start = time.monotonic()
    code = subprocess.run(args, cwd=REPO, check=False).returncode
    seconds = time.monotonic() - start
    if code != 0 or not path.exists():
        return [], seconds, code or 1
    data = json.loads(path.read_text())
    figures = [
        Figure(
            f["name"], _num(f["value"]), f["unit"], _num(f["baseline"]), f["baseline_name"],
            f["target"], f["met"], f["note"],
        )
        for f in data["figures"]
    ]
    return figures, seconds, 0


def _num(value: float | None) -> float:
    return math.nan if value is None else float(value)


def main() -> int:
    """Command line."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="short runs (a smoke test)")
    parser.add_argument(
        "--only", nargs="+", metavar="NAME",
        help=f"run only these: a group ({', '.join(GROUPS)}) or any bench module that takes "
        "--quick and --json (default: all of them)",
    )
    parser.add_argument("--out", type=Path, default=REPO / "bench" / "results")
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    names = [n for one in args.only or BENCHES for n in GROUPS.get(one, (one,))]
    unknown = [n for n in names if importlib.util.find_spec(f"bench.{n}") is None]
    if unknown:
        parser.error(f"no such benchmark: {', '.join(unknown)}")
    info = machine_info()
    summary: list[Figure] = []
    failed: list[str] = []
    timings: list[str] = []
    for name in names:
        figures, seconds, code = run(name, args.quick, args.out)
        timings.append(f"{name} {seconds:.0f} s")
        if code:
            failed.append(f"{name} (exit {code})")
        summary += [
            Figure(f"{name}: {f.name}", f.value, f.unit, f.baseline, f.baseline_name, f.target,
                   f.met)
            for f in figures
        ]
    print("\n" + "=" * 80)
    print("machine: " + "; ".join(f"{k} {v}" for k, v in info.items()))
    print("took: " + ", ".join(timings))
    print_table("Summary", summary)
    missed = [f.name for f in summary if f.met is False]
    print(f"\ntargets met: {sum(f.met is True for f in summary)} of "
          f"{sum(f.met is not None for f in summary)}"
          + (f"; missed: {', '.join(missed)}" if missed else ""))
    (args.out / "summary.json").write_text(json.dumps({
        "machine": info, "quick": args.quick, "failed": failed,
        "figures": [f.as_dict() for f in summary],
        "ratios": {f.name: fmt(f.ratio) for f in summary},
    }, indent=2))
    if failed:
        print("failed: " + ", ".join(failed), file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
