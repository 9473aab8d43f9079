"""The serial transport: opens a port by its path and moves bytes; it knows nothing of frames.

This is the only module of the bridge that imports pyserial. Its errors are converted here,
at the boundary, into `PortError`s: `PortUnavailableError` when a port cannot be opened (missing,
busy, no permission) and `PortLostError` when an open port fails or closes (unplugged).

Ports are opened by a stable path such as `/dev/serial/by-id/usb-...`, which names the same
board after it re-enumerates, unlike `/dev/ttyUSB0`. Reads wait on the event loop for the
port's file descriptor (never poll `in_waiting` and sleep).
"""

from __future__ import annotations

import asyncio
import logging
import os
import termios
from collections.abc import Awaitable, Callable
from types import TracebackType
from typing import Protocol

import serial
import serial_asyncio_fast

from firmware_bridge.errors import PortLostError, PortUnavailableError

log = logging.getLogger(__name__)

#: Bytes asked for per read; a read returns what has arrived, up to this many.
READ_SIZE = 4096
#: How long closing a port may take before it is given up on (a wedged driver).
CLOSE_TIMEOUT_S = 2.0


class Port(Protocol):
    """An open byte link to one board: what `BoardLink` needs of a transport."""

    @property
    def name(self) -> str:
        """The path the port was opened by, for messages."""
        ...

    async def read(self) -> bytes:
        """The next bytes that arrive (never empty); `PortLostError` when the port goes away."""
        ...

    async def write(self, data: bytes) -> None:
        """Send `data` (whole, in order with earlier writes); `PortLostError` if the port failed."""
        ...

    async def aclose(self) -> None:
        """Close the port; never raises, and may be called more than once."""
        ...


#: Opens the port at a path with a baud rate, or raises `PortUnavailableError`.
PortOpener = Callable[[str, int], Awaitable[Port]]


class SerialPort:
    """An open serial port: `read()`, `write()`, and `aclose()` (or use `async with`)."""

    def __init__(
        self, name: str, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        self.name = name
        self._reader = reader
        self._writer = writer

    async def read(self) -> bytes:
        """The next bytes that arrive (never empty); `PortLostError` when the port goes away."""
        try:
            data = await self._reader.read(READ_SIZE)
        except (serial.SerialException, OSError) as exc:
            raise PortLostError(f"{self.name}: read failed: {exc}") from exc
        if not data:
            raise PortLostError(f"{self.name}: port closed")
        return data

    async def write(self, data: bytes) -> None:
        """Send `data` (whole, in order with earlier writes); `PortLostError` if the port failed."""
        try:
            if self._writer.is_closing():
                raise ConnectionResetError("port is closed")
            self._writer.write(data)
            await self._writer.drain()
        except (serial.SerialException, OSError) as exc:
            raise PortLostError(f"{self.name}: write failed: {exc}") from exc

    async def aclose(self) -> None:
        """Close the port at once (unsent bytes are dropped); never raises."""
        transport = self._writer.transport
        if not transport.is_closing():
            # abort(), not close(): close() first waits for unsent bytes to drain, which
            # never happens when the device stopped reading.
            transport.abort()
        try:
            async with asyncio.timeout(CLOSE_TIMEOUT_S):
                await self._writer.wait_closed()
        except TimeoutError:
            log.warning("%s: closing the port took over %.0f s; given up", self.name,
                        CLOSE_TIMEOUT_S)
        except (serial.SerialException, OSError):
            pass  # the error that closed it was already reported by read() or write()

    async def __aenter__(self) -> SerialPort:
        return self

    async def __aexit__(
        self, et: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.aclose()


async def open_serial(path: str | os.PathLike[str], baud: int) -> SerialPort:
    """Open the serial port at `path` (8N1, no flow control, exclusive) at `baud` bit/s.

    Raises `PortUnavailableError` when it cannot be opened; the caller may retry later.
    """
    name = os.fspath(path)
    try:
        reader, writer = await serial_asyncio_fast.open_serial_connection(
            url=name, baudrate=baud, bytesize=serial.EIGHTBITS, parity=serial.PARITY_NONE,
            stopbits=serial.STOPBITS_ONE, xonxoff=False, rtscts=False, dsrdtr=False,
            # flock(): a second program on the same port (picocom, a second gateway) would
            # steal bytes from both.
            exclusive=True,
        )
    except (serial.SerialException, OSError, termios.error) as exc:
        raise PortUnavailableError(f"{name}: cannot open at {baud} baud: {exc} (is the board "
                              "plugged in, and is no other program using the port?)") from exc
    return SerialPort(name, reader, writer)
