"""`stationgw dispatch ack|assign|resolve`: send one command, wait for the station's reply,
and say why when none comes (from the station's retained status)."""

from __future__ import annotations

import asyncio
import contextlib
import json
import socket
import sys
import time
import uuid
from collections.abc import Mapping
from typing import Any

import paho.mqtt.client as paho

from dispatch.console.events import as_number, as_text, parse_reply
from dispatch.console.intake import Intake
from dispatch.console.options import ACTIONS, PREFIX, TEAMS, Security
from dispatch.console.running import say
from dispatch.errors import ConsoleConnectionError
from dispatch.inbound import Dropped, printable, read
from dispatch.outbound import make_command
from gateway.core.commands import Action, Command, Reply
from gateway.uplink.topics import Topics


def one_shot(
    host: str,
    port: int,
    action: str,
    alert_id: str,
    station: str,
    *,
    team: str | None = None,
    eta_s: int | None = None,
    prefix: str = PREFIX,
    timeout: float = 10.0,
    dispatcher: str | None = None,
    security: Security | None = None,
) -> int:
    """Send one command and wait for the station's reply: exit 0 applied, 1 rejected,
    2 no reply within `timeout` (or no broker; the message says which).

    The station must be given: commands go to `{prefix}/{station}/commands` and an alert id
    does not say which station raised it (the console shows it on the row; scripts read the
    event's `station`).
    """
    command = _command(action, alert_id, station, team=team, eta_s=eta_s,
                       dispatcher=dispatcher)
    if command is None:
        return 2
    replies, status_topic = Topics(prefix, station).replies, Topics(prefix, station).status

    async def main() -> int:
        awaiting = _Awaiting(command, prefix)
        intake = Intake(host, port, [replies, status_topic],
                        client_id=f"stationgw-cli-{uuid.uuid4().hex[:12]}", session_expiry_s=0,
                        security=security)
        async with intake:
            payload = json.dumps(command.wire()).encode()
            rc = await intake.publish(Topics(prefix, station).commands, payload)
            if rc.is_failure:
                say(f"the broker refused the command: {rc.getName()}")
                return 2
            try:
                async with asyncio.timeout(timeout), \
                        contextlib.aclosing(intake.batches()) as batches:
                    async for batch in batches:
                        intake.ack(batch)
                        code = awaiting.take(batch)
                        if code is not None:
                            return code
            except TimeoutError:
                pass
        say(f"no reply from station {station!r} within {timeout:g}s; "
            + describe(awaiting.status))
        return 2

    try:
        return asyncio.run(main())
    except ConsoleConnectionError as exc:
        say(f"{exc}; the command was not sent")
        return 2


def _command(
    action: str, alert_id: str, station: str, *, team: str | None, eta_s: int | None,
    dispatcher: str | None,
) -> Command | None:
    """The command asked for; None (having said why) if it is not a valid one."""
    chosen = ACTIONS.get(action)
    if chosen is None:
        say(f"unknown action {action!r} (use ack, assign or resolve)")
        return None
    if chosen == "assign" and team not in TEAMS:
        say(f"assign needs a team: one of {', '.join(TEAMS)} (got {team!r})")
        return None
    try:
        return make_command(
            station, alert_id, chosen, team=next((t for t in TEAMS if t == team), None),
            eta_s=eta_s, dispatcher=dispatcher or f"cli-{socket.gethostname()}"[:64],
        )
    except ValueError as exc:
        say(f"bad command: {exc}")
        return None


class _Awaiting:
    """One command's wait: its reply, and the station's retained status meanwhile."""

    def __init__(self, command: Command, prefix: str) -> None:
        self.command, self.prefix = command, prefix
        self.status: dict[str, Any] | None = None

    def take(self, batch: list[paho.MQTTMessage]) -> int | None:
        """The exit code once `batch` holds the reply (reported); None to keep waiting."""
        command = self.command
        for message in batch:
            inbound = read(message.topic, message.payload, self.prefix)
            if isinstance(inbound, Dropped) or inbound.station != command.station:
                say(f"ignored a message on {printable(message.topic)[:120]}"
                    f": {getattr(inbound, 'detail', 'another station')}")
                continue
            if inbound.channel == "status":
                self.status = inbound.message
                continue
            reply = parse_reply(message.payload)
            if reply is not None and reply.command_id == command.command_id:
                return report_reply(reply, command.action, command.alert_id, command.station)
        return None


def report_reply(reply: Reply, action: Action, alert_id: str, station: str) -> int:
    """Print the outcome of a command; its exit code."""
    if reply.status == "applied":
        print(f"applied: {action} alert {alert_id} at {station}", flush=True)
        return 0
    print(f"rejected: {reply.reason} ({reply.detail})", file=sys.stderr, flush=True)
    return 1


def describe(status: Mapping[str, Any] | None) -> str:
    """What a station's retained status says about why it did not answer."""
    if status is None:
        return "the broker holds no status for it (is --station right?)"
    state = as_text(status.get("state"), "unknown")
    since = as_number(status.get("wall_time"))
    when = "" if since is None else f" since {time.strftime('%H:%M:%S', time.localtime(since))}"
    if state == "online":
        return "it is online; the command may still be applied (check with `dispatch watch`)"
    return f"it is {state}{when}; the broker keeps the command for it"
