"""Dispatch side helpers: build and send commands, read replies (used by the console/demo)."""

from __future__ import annotations

import json
import time
import uuid

import aiomqtt

from gateway.core.commands import Action, Command, Team, schema_problems
from gateway.uplink.topics import Topics


def make_command(
    station: str,
    alert_id: str,
    action: Action,
    *,
    team: Team | None = None,
    eta_s: int | None = None,
    dispatcher: str = "console",
) -> Command:
    """A new command with a fresh id, issued now; ValueError names what the contract refuses."""
    command = Command(
        command_id=uuid.uuid4().hex,
        station=station,
        alert_id=alert_id,
        action=action,
        team=team,
        eta_s=eta_s,
        issued_at=time.time(),
        dispatcher=dispatcher,
    )
    problems = schema_problems(command.wire())
    if problems:
        raise ValueError("; ".join(problems))
    return command


async def send_command(client: aiomqtt.Client, prefix: str, command: Command) -> None:
    """Publish a command at QoS 1."""
    payload = json.dumps(command.wire()).encode()
    await client.publish(Topics(prefix, command.station).commands, payload, qos=1)
