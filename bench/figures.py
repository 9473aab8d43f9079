"""The benchmarks' figures: statistics of samples, a results row, its Markdown table and the
JSON that `bench.run_all` collects."""

from __future__ import annotations

import json
import math
import statistics
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any


def percentile(values: Sequence[float], p: float) -> float:
    """The p-th percentile (0-100), linear interpolation between closest ranks."""
    if not values:
        return math.nan
    data = sorted(values)
    k = (len(data) - 1) * p / 100
    lo, hi = math.floor(k), math.ceil(k)
    return data[lo] + (data[hi] - data[lo]) * (k - lo)


def median(values: Sequence[float]) -> float:
    """Median, or NaN for no values."""
    return statistics.median(values) if values else math.nan


def ratio(value: float, base: float) -> float:
    """value / base, NaN when the base is zero or missing."""
    return value / base if base and not math.isnan(base) else math.nan


@dataclass
class Figure:
    """One row of a results table."""

    name: str
    value: float
    unit: str
    baseline: float = math.nan
    baseline_name: str = ""
    target: str = ""
    met: bool | None = None
    note: str = ""

    @property
    def ratio(self) -> float:
        """value / baseline."""
        return ratio(self.value, self.baseline)

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready form."""
        return {
            "name": self.name, "value": self.value, "unit": self.unit,
            "baseline": self.baseline, "baseline_name": self.baseline_name,
            "ratio": self.ratio, "target": self.target, "met": self.met, "note": self.note,
        }


def fmt(value: float) -> str:
    """Compact number for tables."""
    if math.isnan(value):
        return "-"
    if abs(value) >= 1000:
        return f"{value:,.0f}"
    if abs(value) >= 100:
        return f"{value:.0f}"
    if abs(value) >= 10:
        return f"{value:.1f}"
    return f"{value:.2f}"


def print_table(title: str, figures: Sequence[Figure]) -> None:
    """Print figures as a Markdown table (readable in a terminal, pasteable into docs)."""
    print(f"\n## {title}\n")
    print("| figure | gateway | baseline | ratio | target | met |")
    print("|---|---|---|---|---|---|")
    for f in figures:
        base = f"{fmt(f.baseline)} {f.unit}" if not math.isnan(f.baseline) else "-"
        if f.baseline_name and not math.isnan(f.baseline):
            base += f" ({f.baseline_name})"
        met = "-" if f.met is None else ("yes" if f.met else "**no**")
        print(
            f"| {f.name} | {fmt(f.value)} {f.unit} | {base} | {fmt(f.ratio)}x | "
            f"{f.target or '-'} | {met} |"
        )
    notes = [f"- {f.name}: {f.note}" for f in figures if f.note]
    if notes:
        print()
        print("\n".join(notes))


def write_json(path: Path | None, bench: str, figures: Sequence[Figure], extra: Any) -> None:
    """Write results for `bench.run_all` (only when --json is given)."""
    if path is None:
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(
        {"bench": bench, "figures": [f.as_dict() for f in figures], "extra": extra}, indent=2
    ))


@dataclass
class Samples:
    """Latency samples in milliseconds."""

    ms: list[float] = field(default_factory=list)

    def add_ns(self, start_ns: int, end_ns: int) -> None:
        """Record one sample from two monotonic_ns readings."""
        self.ms.append((end_ns - start_ns) / 1e6)

    @property
    def p50(self) -> float:
        """Median."""
        return percentile(self.ms, 50)

    @property
    def p99(self) -> float:
        """99th percentile."""
        return percentile(self.ms, 99)
