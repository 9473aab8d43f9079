"""Mock-mode control socket: drive a running daemon's simulated help-point pins.

Only a daemon on gpiozero's MockFactory opens it; on real pins it does not exist. The
protocol is one JSON object per line each way, on a Unix socket next to the outbox
database (mode 0600), e.g. ``{"cmd": "press", "help_point": "hp-1"}``.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import socket
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Protocol

from gateway.config.models import HelpPoint, StationConfig
from gateway.core.lamp import Lamp
from gateway.errors import SimulateError

log = logging.getLogger(__name__)

COMMANDS = ("press", "hold", "release", "stuck", "chatter", "lamp", "status")
MAX_REQUEST = 4096
MAX_SOCKET_PATH = 107  # sun_path of a Unix socket address


class SimulatedHelpPoint(Protocol):
    """What the socket drives and reports of one help point (the station's unit)."""

    @property
    def config(self) -> HelpPoint: ...
    @property
    def lamp(self) -> Lamp: ...
    @property
    def button(self) -> Any: ...  # a gpiozero Button on a MockPin, or None on a board


def socket_path(config: StationConfig) -> Path:
    """Where a mock-mode daemon for this config listens."""
    return config.store.path.parent / f"stationgw-{config.station_id}.sim.sock"


class SimulateServer:
    """The daemon side of the socket."""

    def __init__(self, config: StationConfig, units: Mapping[str, SimulatedHelpPoint]) -> None:
        self.path = socket_path(config)
        self.units = units
        self._server: asyncio.Server | None = None

    async def __aenter__(self) -> SimulateServer:
        if len(str(self.path).encode()) > MAX_SOCKET_PATH:
            raise SimulateError(
                f"simulate socket path {self.path} is over {MAX_SOCKET_PATH} bytes (use a "
                "shorter store.path)"
            )
        with contextlib.suppress(FileNotFoundError):
            self.path.unlink()  # a stale socket from a killed daemon
        self._server = await asyncio.start_unix_server(
            self._serve, path=str(self.path), limit=MAX_REQUEST
        )
        self.path.chmod(0o600)
        log.info("mock pins: simulate socket at %s", self.path)
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
        with contextlib.suppress(FileNotFoundError):
            self.path.unlink()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            line = await reader.readline()
            reply = await self.handle(line)
        except (ValueError, asyncio.LimitOverrunError):
            reply = {"ok": False, "error": f"request over {MAX_REQUEST} bytes"}
        try:
            writer.write(json.dumps(reply).encode() + b"\n")
            await writer.drain()
            writer.close()
            await writer.wait_closed()
        except ConnectionError:
            log.info("simulate client went away before the reply")

    async def handle(self, line: bytes) -> dict[str, Any]:
        """Run one command; bad requests get a reason, never an exception."""
        try:
            request = json.loads(line)
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            return {"ok": False, "error": f"not JSON: {exc}"}
        if not isinstance(request, dict):
            return {"ok": False, "error": "request must be a JSON object"}
        cmd = request.get("cmd")
        if cmd not in COMMANDS:
            return {"ok": False, "error": f"unknown cmd {cmd!r} (use one of {', '.join(COMMANDS)})"}
        units = self.units
        if cmd == "status":
            return {"ok": True, "lamps": {hp: u.lamp.state for hp, u in units.items()}}
        hp = request.get("help_point")
        unit = units.get(hp) if isinstance(hp, str) else None
        if unit is None:
            return {"ok": False, "error": f"unknown help point {hp!r} (known: {', '.join(units)})"}
        if unit.button is None:
            return {"ok": False, "error": f"help point {hp} is on board {unit.config.board}: "
                    "press it with `stationgw simulate-device` (press, hold, release)"}
        problem = await _drive(unit.button.pin, unit.config, cmd, request)
        if problem:
            return {"ok": False, "error": problem}
        await asyncio.sleep(0.05)  # let the press logic see the edges before we report
        return {"ok": True, "help_point": hp, "lamp": unit.lamp.state}


async def _drive(pin: Any, hp: HelpPoint, cmd: str, request: dict[str, Any]) -> str:
    """Drive a mock pin as the command says, as a rider (or a fault) would; a problem with
    the request, or ""."""
    if cmd == "press":
        pin.drive_low()
        await asyncio.sleep(max(0.2, hp.bounce_time_s * 2))
        pin.drive_high()
    elif cmd == "hold":
        pin.drive_low()
        await asyncio.sleep(hp.hold_time_s + 0.3)
        pin.drive_high()
    elif cmd == "stuck":
        pin.drive_low()
    elif cmd == "release":
        pin.drive_high()
    elif cmd == "chatter":
        edges = request.get("edges", 20)
        span = request.get("span_s", 0.2)
        if not isinstance(edges, int) or not isinstance(span, int | float) or edges < 1:
            return "chatter takes edges (int >= 1) and span_s"
        for i in range(min(edges, 1000)):
            pin.drive_low() if i % 2 == 0 else pin.drive_high()
            await asyncio.sleep(span / edges)
        pin.drive_high()
    return ""


def send(config: StationConfig, request: dict[str, Any], timeout: float = 30.0) -> dict[str, Any]:
    """Send one command to the daemon running with this config and return its reply."""
    path = socket_path(config)
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(timeout)
        try:
            sock.connect(str(path))
        except (FileNotFoundError, ConnectionRefusedError) as exc:
            raise SimulateError(
                f"no mock-mode daemon is listening at {path} (start `stationgw run` with "
                "gpio_pin_factory = 'mock' and this config)"
            ) from exc
        sock.sendall(json.dumps(request).encode() + b"\n")
        data = b""
        while not data.endswith(b"\n"):
            chunk = sock.recv(65536)
            if not chunk:
                break
            data += chunk
    reply: dict[str, Any] = json.loads(data)
    return reply
