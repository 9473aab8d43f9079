"""A TCP fault proxy for MQTT: sits between a client and a real broker and breaks the path.

Modes (`FaultProxy.mode`, changeable at any time, for open and new connections alike):

- ``pass``: forward both ways, unchanged.
- ``blackhole``: stop forwarding in both directions without closing either socket (a
  half-open path: a dead NAT entry, a cellular link that stopped carrying traffic).
- ``drop_connack``: forward everything except the broker's CONNACK.
- ``drop_puback``: forward everything except the broker's PUBACKs (CONNACK, PINGRESP, SUBACK
  and messages still flow), as a broker or path that stalls on publishes.

The broker-to-client stream is cut into MQTT packets by their fixed header (type nibble and
variable-length Remaining Length), so a filter drops whole packets and never desynchronises
the stream. Bytes read while black-holed are discarded.

Use as ``async with FaultProxy(upstream_port) as proxy:`` and point the client at
``proxy.url``; `close_connections` cuts every open connection with a plain close, and
`disconnect_clients` ends each session the way a broker does, with a reason code.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable
from types import TracebackType
from typing import Literal

Mode = Literal["pass", "blackhole", "drop_connack", "drop_puback"]

CONNACK = 2
PUBACK = 4
_DROPPED: dict[Mode, frozenset[int]] = {
    "pass": frozenset(),
    "blackhole": frozenset(),
    "drop_connack": frozenset({CONNACK}),
    "drop_puback": frozenset({PUBACK}),
}


def split_packets(buffer: bytearray) -> list[bytes]:
    """Remove and return the complete MQTT packets at the start of `buffer`.

    A partial packet stays in `buffer` for the next read. Raises ValueError on a Remaining
    Length longer than the four bytes MQTT allows (not MQTT: the proxy then closes).
    """
    packets: list[bytes] = []
    while len(buffer) >= 2:
        length = 0
        multiplier = 1
        pos = 1
        while True:
            if pos >= len(buffer):
                return packets  # the length itself is incomplete
            byte = buffer[pos]
            length += (byte & 0x7F) * multiplier
            pos += 1
            if not byte & 0x80:
                break
            multiplier *= 128
            if pos > 4:
                raise ValueError("malformed MQTT Remaining Length")
        end = pos + length
        if len(buffer) < end:
            return packets
        packets.append(bytes(buffer[:end]))
        del buffer[:end]
    return packets


def packet_type(packet: bytes) -> int:
    """The MQTT control packet type of a whole packet (1 CONNECT ... 15 AUTH)."""
    return packet[0] >> 4


class FaultProxy:
    """An asyncio TCP proxy on 127.0.0.1 to one upstream port, with a fault `mode`."""

    def __init__(self, upstream_port: int, *, upstream_host: str = "127.0.0.1",
                 mode: Mode = "pass") -> None:
        self.upstream = (upstream_host, upstream_port)
        self.mode: Mode = mode
        self.port = 0
        self.dropped: dict[int, int] = {}  # packet type -> packets dropped by a filter
        self.connections = 0  # accepted so far
        self._server: asyncio.Server | None = None
        self._writers: set[asyncio.StreamWriter] = set()
        self._clients: set[asyncio.StreamWriter] = set()
        self._tasks: set[asyncio.Task[None]] = set()

    @property
    def url(self) -> str:
        """mqtt:// URL of the proxy's listener."""
        return f"mqtt://127.0.0.1:{self.port}"

    async def __aenter__(self) -> FaultProxy:
        self._server = await asyncio.start_server(self._accept, "127.0.0.1", 0)
        self.port = int(self._server.sockets[0].getsockname()[1])
        return self

    async def __aexit__(
        self, et: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        if self._server is not None:
            self._server.close()
        self.close_connections()
        for task in list(self._tasks):
            task.cancel()
        for task in list(self._tasks):
            with contextlib.suppress(asyncio.CancelledError, OSError):
                await task
        if self._server is not None:
            await self._server.wait_closed()

    def close_connections(self) -> None:
        """Close every open connection (both sides see the TCP close)."""
        for writer in list(self._writers):
            writer.close()
        self._writers.clear()

    def disconnect_clients(self, reason: int) -> None:
        """Play the broker ending each session: an MQTT 5 DISCONNECT with `reason` (for
        example 0x8E Session taken over) to every client, then close the connection."""
        packet = bytes([0xE0, 0x02, reason, 0x00])  # reason code, no properties
        for writer in list(self._clients):
            writer.write(packet)
            writer.close()
        self._clients.clear()

    async def _accept(self, client_r: asyncio.StreamReader, client_w: asyncio.StreamWriter) -> None:
        self.connections += 1
        try:
            broker_r, broker_w = await asyncio.open_connection(*self.upstream)
        except OSError:
            client_w.close()
            return
        self._writers.update((client_w, broker_w))
        self._clients.add(client_w)
        up = asyncio.create_task(self._pump(client_r, broker_w, lambda _packet: True))
        down = asyncio.create_task(self._pump(broker_r, client_w, self._passes))
        for task in (up, down):
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)
        try:
            await asyncio.wait((up, down), return_when=asyncio.FIRST_COMPLETED)
        finally:
            for writer in (client_w, broker_w):
                writer.close()
                self._writers.discard(writer)
            self._clients.discard(client_w)
            up.cancel()
            down.cancel()

    def _passes(self, packet: bytes) -> bool:
        kind = packet_type(packet)
        if kind in _DROPPED[self.mode]:
            self.dropped[kind] = self.dropped.get(kind, 0) + 1
            return False
        return True

    async def _pump(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                    passes: Callable[[bytes], bool]) -> None:
        buffer = bytearray()
        with contextlib.suppress(OSError, ValueError):
            while chunk := await reader.read(65536):
                if self.mode == "blackhole":
                    buffer.clear()  # swallowed: the path has gone quiet
                    continue
                buffer += chunk
                out = b"".join(p for p in split_packets(buffer) if passes(p))
                if out:
                    writer.write(out)
                    await writer.drain()
