"""`stationgw dispatch`: the live queue on the terminal, the last stage of the flow.

Terminal bytes go through `KeyReader` to `Screen`; MQTT batches from `Link` are folded into
the `AlertQueue` (and replies and station status into the screen) before they are
acknowledged; commands are published on their own tasks; frames are redrawn at most 20
times a second, and at least once a second so ages tick.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import shutil
import signal
import socket
import sys
import time
from typing import IO, NoReturn

import paho.mqtt.client as paho

from dispatch.console.events import as_text, parse_reply
from dispatch.console.intake import Intake
from dispatch.console.keys import KeyReader
from dispatch.console.link import Link
from dispatch.console.options import PREFIX, Security, events_filter
from dispatch.console.queue import AlertQueue
from dispatch.console.running import run, say
from dispatch.console.screen import Screen, Send
from dispatch.errors import ConsoleConnectionError, ConsoleUsageError
from dispatch.inbound import Dropped, read
from dispatch.outbound import make_command
from gateway.uplink.topics import Topics


def interactive(
    host: str,
    port: int,
    *,
    share: str | None = None,
    prefix: str = PREFIX,
    client_id: str | None = None,
    security: Security | None = None,
) -> int:
    """The live queue on the terminal; keys act on the selected alert (see the footer).

    The queue starts from each station's retained open-alerts snapshot, so alerts raised
    before the console started show at once, and then follows the events (plus, with
    `client_id`, what the persistent session held). Snapshots are not shared between
    `--share` workers: every console needs every station's.
    """
    try:
        every = Topics(prefix, "+")
        topics = [events_filter(prefix, share), every.replies, every.status, every.alerts]
    except ConsoleUsageError as exc:
        say(str(exc))
        return 2
    infd, out = sys.stdin.fileno(), sys.stdout
    desk = client_id or f"console-{socket.gethostname()}"
    old = None
    if os.isatty(infd):
        import termios  # noqa: PLC0415 - POSIX terminals only
        import tty  # noqa: PLC0415

        old = termios.tcgetattr(infd)
        tty.setcbreak(infd)
    out.write("\x1b[?1049h\x1b[?25l")  # alternate screen, hide the cursor
    try:
        main = _interactive(host, port, topics, prefix=prefix, client_id=client_id,
                            desk=desk[:64], infd=infd, out=out, security=security)
        return run(main, stop_on_stdin_eof=False)
    finally:
        out.write("\x1b[?25h\x1b[?1049l")
        out.flush()
        if old is not None:
            import termios  # noqa: PLC0415

            termios.tcsetattr(infd, termios.TCSADRAIN, old)


class _Quit(Exception):  # noqa: N818 - control flow, not an error
    pass


async def _interactive(
    host: str, port: int, topics: list[str], *, prefix: str, client_id: str | None,
    desk: str, infd: int, out: IO[str], security: Security | None = None,
) -> int:
    console = _Console(host, port, topics, prefix=prefix, client_id=client_id, desk=desk,
                       infd=infd, out=out, security=security)
    return await console.run()


class _Console:
    """The interactive console's running state: the queue and screen, the link, the commands
    awaiting replies, and the tasks that feed keys and MQTT batches in and draw frames."""

    def __init__(
        self, host: str, port: int, topics: list[str], *, prefix: str, client_id: str | None,
        desk: str, infd: int, out: IO[str], security: Security | None,
    ) -> None:
        self.prefix, self.desk, self.infd, self.out = prefix, desk, infd, out
        self.loop = asyncio.get_running_loop()
        self.queue = AlertQueue(prefix=prefix)
        self.screen = Screen(self.queue, title=f"at {host}:{port}")
        self.dirty = asyncio.Event()
        self.pending: dict[str, Send] = {}  # command_id -> what was asked, until the reply
        self.keys_in: asyncio.Queue[bytes] = asyncio.Queue()
        self.link = Link(host, port, topics, client_id=client_id, on_state=self.state,
                         security=security)

    async def run(self) -> int:
        """Read keys, follow the link and draw until `q` or the end of the terminal input."""
        self.loop.add_reader(self.infd, self.on_key_bytes)
        with contextlib.suppress(NotImplementedError, RuntimeError):
            self.loop.add_signal_handler(signal.SIGWINCH, self.dirty.set)
        try:
            async with asyncio.TaskGroup() as tg:
                tg.create_task(self.link.run(self.handle), name="console.link")
                tg.create_task(self.draw(), name="console.draw")
                tg.create_task(self.keys(tg), name="console.keys")
        except* _Quit:
            pass
        finally:
            self.loop.remove_reader(self.infd)
        return 0

    def state(self, text: str) -> None:
        """The link's state changed: shown in the header (and, unless connected, as a note)."""
        self.screen.link = "connected" if text.startswith("connected") else "reconnecting"
        if not text.startswith("connected"):
            self.screen.note(text)
        self.dirty.set()

    async def handle(self, intake: Intake, batch: list[paho.MQTTMessage]) -> None:
        """Fold a batch into the queue and screen, then acknowledge it."""
        for message in batch:
            self._take(message)
        intake.ack(batch)
        self.dirty.set()

    def _take(self, message: paho.MQTTMessage) -> None:
        topic = message.topic
        if not topic.endswith(("/replies", "/status")):
            self.queue.feed_message(topic, message.payload)  # events and snapshots
            return
        inbound = read(topic, message.payload, self.prefix)
        if isinstance(inbound, Dropped):
            self.queue.count_dropped(inbound)
        elif inbound.channel == "status":
            self.screen.stations[inbound.station] = as_text(inbound.message.get("state"),
                                                            "unknown")
        else:
            self._reply(inbound.station, message.payload)

    def _reply(self, station: str, payload: bytes | bytearray) -> None:
        """Note the outcome of a command of ours that `station` answered."""
        reply = parse_reply(payload)
        sent = self.pending.pop(reply.command_id or "", None) if reply else None
        if reply is not None and sent is not None and sent.station == station:
            outcome = reply.status if reply.status == "applied" else (
                f"rejected: {reply.reason} ({reply.detail})")
            self.screen.note(f"{sent.action} {sent.alert_id[:8]} at {sent.station}: "
                             f"{outcome}")

    async def send(self, request: Send) -> None:
        """Publish a command, and note it if no reply comes within 10s."""
        command = make_command(request.station, request.alert_id, request.action,
                               team=request.team, eta_s=request.eta_s, dispatcher=self.desk)
        intake = self.link.current
        if intake is None:
            self.screen.note(f"not connected: {request.action} {request.alert_id[:8]} "
                             "not sent")
            self.dirty.set()
            return
        self.pending[command.command_id] = request
        payload = json.dumps(command.wire()).encode()
        self.screen.note(f"{request.action} {request.alert_id[:8]} at {request.station}: sent")
        self.dirty.set()
        await self._publish(intake, request, payload)
        self.dirty.set()
        await asyncio.sleep(10)
        if self.pending.pop(command.command_id, None) is not None:
            self.screen.note(f"{request.action} {request.alert_id[:8]}: no reply from "
                             f"{request.station} within 10s")
            self.dirty.set()

    async def _publish(self, intake: Intake, request: Send, payload: bytes) -> None:
        """Publish the command; note it if it could not be sent or the broker refused it."""
        try:
            rc = await intake.publish(Topics(self.prefix, request.station).commands, payload)
        except ConsoleConnectionError as exc:
            rc = None
            self.screen.note(f"{request.action} {request.alert_id[:8]}: not sent ({exc})")
        if rc is not None and rc.is_failure:
            self.screen.note(f"{request.action} {request.alert_id[:8]}: refused by the "
                             f"broker ({rc.getName()})")

    async def keys(self, tg: asyncio.TaskGroup) -> None:
        """Turn terminal bytes into screen keys, sending commands on their own tasks."""
        reader = KeyReader()
        while True:
            for key in await self._next_keys(reader):
                action = self.screen.key(key)
                if action == "quit":
                    raise _Quit
                if action is not None:
                    tg.create_task(self.send(action),
                                   name=f"console.send.{action.alert_id[:8]}")
            self.dirty.set()

    async def _next_keys(self, reader: KeyReader) -> list[str]:
        """The keys the next terminal bytes complete (a lone ESC once none follow soon)."""
        try:
            async with asyncio.timeout(0.05 if reader.pending else None):
                data = await self.keys_in.get()
        except TimeoutError:
            return reader.flush()
        if not data:
            raise _Quit
        return reader.feed(data)

    async def draw(self) -> NoReturn:
        """Redraw when something changed, at most 20 and at least 1 frame a second."""
        while True:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(1.0):  # ages tick even when nothing arrives
                    await self.dirty.wait()
            self.dirty.clear()
            self._frame()
            await asyncio.sleep(0.05)  # at most 20 frames a second under a flood

    def _frame(self) -> None:
        try:  # the terminal itself, not $COLUMNS: the screen is redrawn on resize
            size = os.get_terminal_size(self.out.fileno())
        except OSError:
            size = shutil.get_terminal_size((120, 30))
        self.out.write(self.screen.render(time.time(), size.columns or 120, size.lines or 30))
        self.out.flush()

    def on_key_bytes(self) -> None:
        """Terminal input is readable: queue its bytes (b"" at its end, and stop reading)."""
        try:
            data = os.read(self.infd, 1024)
        except OSError:
            data = b""
        if not data:
            self.loop.remove_reader(self.infd)
        self.keys_in.put_nowait(data)
