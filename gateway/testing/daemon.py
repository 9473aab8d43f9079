"""A running station: `stationgw run --config FILE` in its own process, as an operator starts
it, or a `Gateway` in the caller's event loop; for the demo, the fleet, tests and benchmarks."""

from __future__ import annotations

import asyncio
import contextlib
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Sequence
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING

from gateway.config.loading import load_config
from gateway.config.models import StationConfig
from gateway.errors import DaemonStartError
from gateway.inputs.simulate import socket_path

if TYPE_CHECKING:  # the fleet and the demo start daemons without loading one in-process
    from gateway.daemon import Gateway

#: The name of `running`'s task, for a test that looks the gateway's task up.
GATEWAY_TASK = "test.gateway"


@contextlib.asynccontextmanager
async def running(gateway: Gateway, *, connected_within_s: float | None = None
                  ) -> AsyncIterator[Gateway]:
    """Open a gateway and run it in the background until the block ends, then stop it; with
    `connected_within_s`, the block starts once it is connected to a broker."""
    async with gateway:
        task = asyncio.create_task(gateway.run(), name=GATEWAY_TASK)
        try:
            if connected_within_s is not None:
                await asyncio.wait_for(gateway.publisher.connected.wait(), connected_within_s)
            yield gateway
        finally:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task


class StationDaemon:
    """`stationgw run --config FILE` in its own process, logging to `log_path`; it is up once
    its simulate socket exists (it has opened its store and its help points)."""

    def __init__(self, config_path: Path, log_path: Path, *, args: Sequence[str] = (),
                 cwd: Path | None = None, new_session: bool = False) -> None:
        """`args` go after `--config FILE`; `new_session` keeps a Ctrl-C in the terminal from
        reaching the daemon (its owner stops it)."""
        self.config_path = config_path
        self.log_path = log_path
        self.config: StationConfig = load_config(config_path)
        self.command = [sys.executable, "-m", "gateway.ops.cli", "run", "--config",
                        str(config_path), *args]
        self.cwd = cwd
        self.new_session = new_session
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def pid(self) -> int | None:
        """The daemon's process id while it runs."""
        return None if self.process is None else self.process.pid

    def start(self) -> subprocess.Popen[bytes]:
        """Start the daemon, appending its output to its log."""
        with self.log_path.open("ab") as out:
            self.process = subprocess.Popen(
                self.command, cwd=self.cwd, stdin=subprocess.DEVNULL, stdout=out,
                stderr=subprocess.STDOUT, start_new_session=self.new_session)
        return self.process

    def log_tail(self, chars: int = 2000) -> str:
        """The end of the daemon's log."""
        return self.log_path.read_text(errors="replace")[-chars:]

    def is_up(self) -> bool:
        """Whether the simulate socket exists; DaemonStartError if the daemon has exited."""
        if self.process is None or self.process.poll() is not None:
            raise DaemonStartError(
                f"the daemon of {self.config.station_id} exited; its log:\n{self.log_tail()}")
        return socket_path(self.config).exists()

    def _late(self, timeout_s: float) -> DaemonStartError:
        return DaemonStartError(f"the daemon of {self.config.station_id} did not start within "
                                f"{timeout_s:.0f} s (log {self.log_path})")

    async def wait_up(self, timeout_s: float = 20.0) -> None:
        """Wait until the daemon is up, on the event loop."""
        deadline = time.monotonic() + timeout_s
        while not self.is_up():
            if time.monotonic() > deadline:
                raise self._late(timeout_s)
            await asyncio.sleep(0.05)

    def wait_up_blocking(self, timeout_s: float = 20.0) -> None:
        """Wait until the daemon is up, from a plain thread."""
        deadline = time.monotonic() + timeout_s
        while not self.is_up():
            if time.monotonic() > deadline:
                raise self._late(timeout_s)
            time.sleep(0.05)

    def stop(self, timeout_s: float = 10.0) -> int | None:
        """SIGTERM (the daemon publishes `offline`), SIGKILL after `timeout_s`; the exit code,
        or None if it was not started."""
        process, self.process = self.process, None
        if process is None:
            return None
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(timeout=timeout_s)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        return process.returncode

    def __enter__(self) -> StationDaemon:
        self.start()
        return self

    def __exit__(self, et: type[BaseException] | None, e: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.stop()
