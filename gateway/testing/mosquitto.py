"""Run a real Mosquitto on a free local port: for the demo, the tests and the benchmarks."""

from __future__ import annotations

import contextlib
import getpass
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from pathlib import Path
from types import TracebackType

from gateway.errors import BrokerError


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def mosquitto_binary() -> str:
    """Path of the mosquitto executable (Debian installs it in /usr/sbin)."""
    found = shutil.which("mosquitto") or shutil.which("mosquitto", path="/usr/sbin:/usr/local/sbin")
    if found is None:
        raise BrokerError("mosquitto is not installed (Debian: sudo apt-get install mosquitto)")
    return found


class Mosquitto:
    """A Mosquitto process on 127.0.0.1; stop and start it to simulate an outage."""

    def __init__(
        self,
        port: int | None = None,
        *,
        acl: str | None = None,
        persistence: bool = False,
        extra: str = "",
        workdir: Path | None = None,
        listeners: str | None = None,
    ) -> None:
        """`listeners` replaces the default anonymous plaintext listener on `port`."""
        self.port = port or free_port()
        self._tmp: tempfile.TemporaryDirectory[str] | None = None
        if workdir is None:
            self._tmp = tempfile.TemporaryDirectory(prefix="stationgw-mosquitto-")
            workdir = Path(self._tmp.name)
        self.workdir = workdir
        self.log_path = workdir / "mosquitto.log"
        lines = [
            listeners or f"listener {self.port} 127.0.0.1\nallow_anonymous true",
            # Queue deeply for offline persistent sessions. Not 0 (unlimited): Mosquitto 2.0.11
            # then drops the connection of a client whose publish the ACL denies.
            "max_queued_messages 1000000",
            "max_inflight_messages 0",
            # Nagle off: a command that follows a PUBACK to the gateway within its delayed-ACK
            # time (~40 ms) would otherwise wait for that ACK (bench.ack_roundtrip).
            "set_tcp_nodelay true",
            f"persistence {'true' if persistence else 'false'}",
            f"persistence_location {workdir}/",
            f"log_dest file {self.log_path}",
            "log_type error",
            "log_type warning",
            "log_type notice",
        ]
        if os.geteuid() == 0:
            lines.append(f"user {getpass.getuser()}")  # mosquitto drops root otherwise
        if acl is not None:
            acl_path = workdir / "acl"
            acl_path.write_text(acl)
            lines.append(f"acl_file {acl_path}")
        self.conf_path = workdir / "mosquitto.conf"
        self.conf_path.write_text("\n".join(lines) + "\n" + extra)
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        """mqtt:// URL of the listener."""
        return f"mqtt://127.0.0.1:{self.port}"

    def start(self, timeout: float = 10.0) -> None:
        """Start the broker and wait until it accepts connections."""
        if self.process is not None and self.process.poll() is None:
            return
        self.process = subprocess.Popen(
            [mosquitto_binary(), "-c", str(self.conf_path)],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            start_new_session=True,  # Ctrl-C in a terminal goes to us, not straight to it
        )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                stderr = self.process.stderr
                err = stderr.read().decode(errors="replace") if stderr else ""
                log = self.log_path.read_text() if self.log_path.exists() else ""
                raise BrokerError(f"mosquitto exited with {self.process.returncode}: {err}{log}")
            with contextlib.suppress(OSError), socket.create_connection(
                ("127.0.0.1", self.port), timeout=0.2
            ):
                return
            time.sleep(0.02)
        self.stop()
        raise BrokerError(f"mosquitto did not listen on port {self.port} within {timeout}s")

    def stop(self) -> None:
        """Stop the broker (SIGTERM, then SIGKILL) and wait for it."""
        if self.process is None:
            return
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        if self.process.stderr is not None:
            self.process.stderr.close()
        self.process = None

    def close(self) -> None:
        """Stop the broker and remove its files."""
        self.stop()
        if self._tmp is not None:
            self._tmp.cleanup()
            self._tmp = None

    def __enter__(self) -> Mosquitto:
        self.start()
        return self

    def __exit__(
        self, et: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()
