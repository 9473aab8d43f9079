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

from dispatch.console.errors import ConsoleConnectionError, ConsoleUsageError
from dispatch.console.events import as_text, parse_reply
from dispatch.console.intake import Intake
from dispatch.console.keys import KeyReader
from dispatch.console.link import Link
from dispatch.console.options import PREFIX, Security, events_filter
from dispatch.console.queue import AlertQueue
from dispatch.console.running import run, say
from dispatch.console.screen import Screen, Send
from dispatch.inbound import Dropped, read
from gateway.dispatch import make_command
from gateway.topics import Topics


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
    loop = asyncio.get_running_loop()
    queue = AlertQueue(prefix=prefix)
    screen = Screen(queue, title=f"at {host}:{port}")
    dirty = asyncio.Event()
    pending: dict[str, Send] = {}  # command_id -> what was asked, until the reply comes
    keys_in: asyncio.Queue[bytes] = asyncio.Queue()

    def state(text: str) -> None:
        screen.link = "connected" if text.startswith("connected") else "reconnecting"
        if not text.startswith("connected"):
            screen.note(text)
        dirty.set()

    link = Link(host, port, topics, client_id=client_id, on_state=state, security=security)

    async def handle(intake: Intake, batch: list[paho.MQTTMessage]) -> None:
        for message in batch:
            topic = message.topic
            if not topic.endswith(("/replies", "/status")):
                queue.feed_message(topic, message.payload)  # events and snapshots
                continue
            inbound = read(topic, message.payload, prefix)
            if isinstance(inbound, Dropped):
                queue.count_dropped(inbound)
            elif inbound.channel == "status":
                screen.stations[inbound.station] = as_text(inbound.message.get("state"),
                                                           "unknown")
            else:
                reply = parse_reply(message.payload)
                sent = pending.pop(reply.command_id or "", None) if reply else None
                if reply is not None and sent is not None and sent.station == inbound.station:
                    outcome = reply.status if reply.status == "applied" else (
                        f"rejected: {reply.reason} ({reply.detail})")
                    screen.note(f"{sent.action} {sent.alert_id[:8]} at {sent.station}: "
                                f"{outcome}")
        intake.ack(batch)
        dirty.set()

    async def send(request: Send) -> None:
        command = make_command(request.station, request.alert_id, request.action,
                               team=request.team, eta_s=request.eta_s, dispatcher=desk)
        intake = link.current
        if intake is None:
            screen.note(f"not connected: {request.action} {request.alert_id[:8]} not sent")
            dirty.set()
            return
        pending[command.command_id] = request
        payload = json.dumps(command.wire()).encode()
        screen.note(f"{request.action} {request.alert_id[:8]} at {request.station}: sent")
        dirty.set()
        try:
            rc = await intake.publish(Topics(prefix, request.station).commands, payload)
        except ConsoleConnectionError as exc:
            rc = None
            screen.note(f"{request.action} {request.alert_id[:8]}: not sent ({exc})")
        if rc is not None and rc.is_failure:
            screen.note(f"{request.action} {request.alert_id[:8]}: refused by the broker "
                        f"({rc.getName()})")
        dirty.set()
        await asyncio.sleep(10)
        if pending.pop(command.command_id, None) is not None:
            screen.note(f"{request.action} {request.alert_id[:8]}: no reply from "
                        f"{request.station} within 10s")
            dirty.set()

    async def keys(tg: asyncio.TaskGroup) -> None:
        reader = KeyReader()
        while True:
            try:
                async with asyncio.timeout(0.05 if reader.pending else None):
                    data = await keys_in.get()
            except TimeoutError:
                found = reader.flush()
            else:
                if not data:
                    raise _Quit
                found = reader.feed(data)
            for key in found:
                action = screen.key(key)
                if action == "quit":
                    raise _Quit
                if action is not None:
                    tg.create_task(send(action), name=f"console.send.{action.alert_id[:8]}")
            dirty.set()

    async def draw() -> NoReturn:
        while True:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(1.0):  # ages tick even when nothing arrives
                    await dirty.wait()
            dirty.clear()
            try:  # the terminal itself, not $COLUMNS: the screen is redrawn on resize
                size = os.get_terminal_size(out.fileno())
            except OSError:
                size = shutil.get_terminal_size((120, 30))
            out.write(screen.render(time.time(), size.columns or 120, size.lines or 30))
            out.flush()
            await asyncio.sleep(0.05)  # at most 20 frames a second under a flood

    def on_key_bytes() -> None:
        try:
            data = os.read(infd, 1024)
        except OSError:
            data = b""
        if not data:
            loop.remove_reader(infd)
        keys_in.put_nowait(data)

    loop.add_reader(infd, on_key_bytes)
    with contextlib.suppress(NotImplementedError, RuntimeError):
        loop.add_signal_handler(signal.SIGWINCH, dirty.set)
    try:
        async with asyncio.TaskGroup() as tg:
            tg.create_task(link.run(handle), name="console.link")
            tg.create_task(draw(), name="console.draw")
            tg.create_task(keys(tg), name="console.keys")
    except* _Quit:
        pass
    finally:
        loop.remove_reader(infd)
    return 0
