"""Flood a gateway with events until it is killed: the process the crash-safety test kills.

    python -m tests.flood --config FILE --accepted FILE [--rate N] [--submitters N]

Each event whose row is committed (`row.durable`) is then appended to the accepted file as
one line, "EVENT_ID CLASS", written in one system call and fsynced. A line there therefore
means "accepted": the contract says it must reach the broker, whenever this process dies.
`--rate 0` submits nothing, so the daemon only drains what earlier runs left in the outbox.
SIGTERM stops the daemon cleanly (exit 0); the test's SIGKILL is the crash.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import os
import random
import signal
import sys
from collections.abc import Sequence
from pathlib import Path

from gateway.config.loading import load_config
from gateway.core.model import Priority
from gateway.daemon import Gateway

log = logging.getLogger("tests.flood")

# One input of each class, with the class it asks for when no rule overrides it.
INPUTS: tuple[tuple[str, Priority], ...] = (
    ("help_point.hold", Priority.P0),
    ("help_point.press", Priority.P1),
    ("sensor.threshold", Priority.P2),
    ("sensor.reading", Priority.P3),
)


async def submit_forever(gateway: Gateway, accepted_fd: int, rate: float, name: str) -> None:
    """Submit about `rate` events a second, recording each committed one in the accepted file."""
    loop = asyncio.get_running_loop()
    interval = 1.0 / rate
    due = loop.time()
    n = 0
    while True:
        kind, default = random.choice(INPUTS)
        n += 1
        row = await gateway.submit(kind, "flood", default, {"submitter": name, "n": n})
        if row.durable:
            # One O_APPEND write per line: a kill lands before or after it, never inside it.
            os.write(accepted_fd, f"{row.event_id} {row.priority.name}\n".encode())
            os.fsync(accepted_fd)
        else:
            log.warning("not durable, not recorded event_id=%s", row.event_id)
        due = max(due + interval, loop.time() - interval)  # no burst to catch up
        await asyncio.sleep(max(0.0, due - loop.time()))


async def flood(config_path: Path, accepted: Path, rate: float, submitters: int) -> None:
    """Run the gateway, and submit events into it unless `rate` is 0.

    Several submitters run at once so that commits are shared (the outbox's group commit)
    and a kill can land in the middle of a batch.
    """
    config = load_config(config_path)
    stop = asyncio.current_task()
    assert stop is not None
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.cancel)
    fd = os.open(accepted, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        async with Gateway(config) as gateway, asyncio.TaskGroup() as tg:
            tg.create_task(gateway.run(), name="flood.gateway")
            for i in range(submitters if rate > 0 else 0):
                tg.create_task(
                    submit_forever(gateway, fd, rate / submitters, f"s{i}"), name=f"flood.s{i}"
                )
            log.info(
                "flooding station=%s rate=%s submitters=%d pid=%d",
                config.station_id, rate, submitters, os.getpid(),
            )
    finally:
        os.close(fd)


def main(argv: Sequence[str] | None = None) -> int:
    """Parse arguments and flood until killed (or stopped with SIGTERM)."""
    parser = argparse.ArgumentParser(
        prog="python -m tests.flood",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--config", type=Path, required=True, help="station config (TOML)")
    parser.add_argument(
        "--accepted", type=Path, required=True, help="file that committed event ids are appended to"
    )
    parser.add_argument(
        "--rate", type=float, default=300.0, help="events per second; 0 only drains the outbox"
    )
    parser.add_argument(
        "--submitters", type=int, default=4, help="concurrent submitting tasks (default 4)"
    )
    args = parser.parse_args(argv)
    if args.rate < 0:
        parser.error("--rate must be 0 or more")
    if args.submitters < 1:
        parser.error("--submitters must be 1 or more")
    logging.basicConfig(
        stream=sys.stdout, level=logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    logging.getLogger("gateway.uplink.client.paho").setLevel(logging.WARNING)
    with contextlib.suppress(asyncio.CancelledError):
        asyncio.run(flood(args.config, args.accepted, args.rate, args.submitters))
    log.info("stopped")
    return 0


if __name__ == "__main__":
    sys.exit(main())
