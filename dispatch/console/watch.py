"""`stationgw dispatch watch --json`: every station's events as JSON lines on stdout, each
re-send printed once; each message is acknowledged only after its line is flushed."""

from __future__ import annotations

import contextlib
import json
import os
import sys

import paho.mqtt.client as paho

from dispatch.console.events import Dedup
from dispatch.console.intake import Intake
from dispatch.console.link import Link
from dispatch.console.options import PREFIX, Security, events_filter
from dispatch.console.running import run, say
from dispatch.errors import ConsoleUsageError
from dispatch.inbound import Dropped, printable, read


def watch_json(
    host: str,
    port: int,
    *,
    share: str | None = None,
    prefix: str = PREFIX,
    client_id: str | None = None,
    security: Security | None = None,
) -> int:
    """One JSON line per new event from every station on stdout, each re-send once only.

    Lines are the events exactly as published (schema `stationgw/event/1`), flushed as they
    come. Runs until SIGINT/SIGTERM, stdout closes, or stdin reaches EOF when stdin is a pipe
    (a terminal or /dev/null never ends it). Status goes to stderr. With `client_id` the
    broker keeps the session for a day, so nothing published while away is missed.
    """
    try:
        topics = [events_filter(prefix, share)]
    except ConsoleUsageError as exc:
        say(str(exc))
        return 2
    out = sys.stdout.buffer
    dedup = Dedup()

    async def handle(intake: Intake, batch: list[paho.MQTTMessage]) -> None:
        lines: list[bytes] = []
        for message in batch:
            inbound = read(message.topic, message.payload, prefix)
            if isinstance(inbound, Dropped):
                say(f"skipped a message on {printable(message.topic)[:120]}: "
                    f"{inbound.reason}: {inbound.detail}")
            elif dedup.first_time(inbound.message["event_id"]):
                # Strict JSON already (read refused NaN and Infinity); re-encoded only when
                # the bytes as received span lines.
                payload = bytes(message.payload)
                if b"\n" in payload or b"\r" in payload:
                    payload = json.dumps(inbound.message, separators=(",", ":"),
                                         ensure_ascii=False, allow_nan=False).encode()
                lines += (payload, b"\n")
        if lines:
            out.write(b"".join(lines))
            out.flush()
        intake.ack(batch)  # only now: a crash before this gets them sent again

    async def main() -> int:
        link = Link(host, port, topics, client_id=client_id, on_state=say, security=security)
        try:
            await link.run(handle)
        except BrokenPipeError:  # the reader went away (`| head`): a normal end
            with contextlib.suppress(OSError):
                os.dup2(os.open(os.devnull, os.O_WRONLY), out.fileno())
        return 0

    return run(main(), stop_on_stdin_eof=True)
