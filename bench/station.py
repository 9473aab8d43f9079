"""A station in the benchmark's own process: its config, its log, and a `Gateway` running in
the background with the checks the benchmarks poll."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from gateway.config.loading import parse_config
from gateway.config.models import StationConfig
from gateway.core.model import Priority
from gateway.daemon import Gateway
from gateway.ops.cli import setup_logging
from gateway.testing.config import station_data

PREFIX = "stationgw/v1"


def raw_config(folder: Path, broker_url: str, **overrides: Any) -> dict[str, Any]:
    """Station config data with a unique `bench-` station id and the outbox in `folder`."""
    return station_data(folder, broker_url, id_prefix="bench", **overrides)


def make_config(folder: Path, broker_url: str, **overrides: Any) -> StationConfig:
    """A validated station config (see `raw_config`)."""
    return parse_config(raw_config(folder, broker_url, **overrides))


def log_to_file(path: Path) -> None:
    """Log as the daemon does (`stationgw run`'s own setup, INFO, one line per event), into
    a file instead of journald."""
    setup_logging("INFO", path.open("a", encoding="utf-8"))


async def wait_until(check: Callable[[], Awaitable[bool]], interval: float = 0.002) -> None:
    """Poll `check` until it holds (the outbox offers no event to wait on)."""
    while not await check():  # noqa: ASYNC110 - polling is the point: no event to wait on
        await asyncio.sleep(interval)


def delivered(gateway: Gateway) -> int:
    """Rows the gateway has seen confirmed by a successful PUBACK."""
    counters = gateway.health.counters
    return sum(counters[f"delivered_{p.name}"] for p in Priority)


async def done(value: bool) -> bool:
    """`value`, awaitable (for `wait_until` with a check that needs no I/O)."""
    return value


async def outbox_empty(gateway: Gateway) -> bool:
    """True when the gateway's outbox holds no rows."""
    return (await gateway.outbox.depth()).rows == 0
