"""A station in the benchmark's own process: its config, its log, and a `Gateway` running in
the background with the checks the benchmarks poll."""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

from gateway.config.loading import parse_config
from gateway.config.models import StationConfig
from gateway.core.model import Priority
from gateway.daemon import Gateway
from gateway.ops.cli import setup_logging

PREFIX = "stationgw/v1"


def raw_config(folder: Path, broker_url: str, **overrides: Any) -> dict[str, Any]:
    """Station config data with a unique station id and the outbox in `folder`."""
    raw: dict[str, Any] = {
        "station_id": f"bench-{uuid.uuid4().hex[:10]}",
        "brokers": [{"url": broker_url}],
        "store": {"path": str(folder / "outbox.db")},
        "mqtt": {"reconnect_initial_s": 0.05, "reconnect_max_s": 0.5},
    }
    for key, value in overrides.items():
        if isinstance(value, dict) and isinstance(raw.get(key), dict):
            raw[key] = {**raw[key], **value}
        else:
            raw[key] = value
    return raw


def make_config(folder: Path, broker_url: str, **overrides: Any) -> StationConfig:
    """A validated station config (see `raw_config`)."""
    return parse_config(raw_config(folder, broker_url, **overrides))


def log_to_file(path: Path) -> None:
    """Log as the daemon does (`stationgw run`'s own setup, INFO, one line per event), into
    a file instead of journald."""
    setup_logging("INFO", path.open("a", encoding="utf-8"))


def mock_help_points(n: int) -> list[dict[str, Any]]:
    """`n` help points on distinct mock BCM pins (button 2+2i, lamp 3+2i)."""
    return [
        {"id": f"hp-{i + 1}", "location": f"bench {i + 1}", "pin": 2 + 2 * i,
         "lamp_pin": 3 + 2 * i}
        for i in range(n)
    ]


@contextlib.asynccontextmanager
async def running(gateway: Gateway) -> AsyncIterator[Gateway]:
    """Open a gateway, run it in the background until the block ends, then stop it."""
    async with gateway:
        task = asyncio.create_task(gateway.run(), name="bench.gateway")
        try:
            await asyncio.wait_for(gateway.publisher.connected.wait(), 30)
            yield gateway
        finally:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task


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
