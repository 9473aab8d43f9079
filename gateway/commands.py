"""Dispatch commands: the wire model and its checks, with no I/O.

Dispatch publishes a command on ``{prefix}/{station}/commands`` (QoS 1). The gateway checks,
in order: size, JSON, schema, station scope, staleness, replay (command id), known alert,
and whether the alert's state allows it. Anything refused is answered on
``{prefix}/{station}/replies`` with a reason code, and nothing changes.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

Action = Literal["acknowledge", "assign", "resolve", "cancel"]
Team = Literal["emergency_services", "crisis_team", "co_response", "ambassador"]
RejectReason = Literal[
    "oversized",
    "malformed",
    "schema",
    "wrong_station",
    "stale",
    "replay",
    "unknown_alert",
    "invalid_transition",
]


class Command(BaseModel):
    """A command from dispatch about one alert (schema `stationgw/command/1`)."""

    model_config = ConfigDict(frozen=True, extra="forbid", populate_by_name=True)

    schema_: Literal["stationgw/command/1"] = Field(
        default="stationgw/command/1", alias="schema", description="payload schema id"
    )
    command_id: str = Field(
        min_length=8, max_length=64, pattern=r"^[A-Za-z0-9_.:-]+$",
        description="unique per command; a replay of the same id is refused and changes nothing",
    )
    station: str = Field(max_length=63, description="the station the command is for")
    alert_id: str = Field(min_length=1, max_length=64, description="the alert it acts on")
    action: Action = Field(description="acknowledge, assign, resolve or cancel")
    team: Team | None = Field(default=None, description="assign only: the team sent")
    eta_s: int | None = Field(
        default=None, ge=0, le=86400, description="assign only: expected arrival in seconds"
    )
    issued_at: float = Field(description="Unix time the dispatcher issued it")
    dispatcher: str = Field(
        default="", max_length=64, description="desk or console id (not a person's name)"
    )
    note: str = Field(default="", max_length=280, description="free text for the log")


class Reply(BaseModel):
    """The gateway's answer to a command (schema `stationgw/reply/1`)."""

    model_config = ConfigDict(frozen=True, extra="forbid", populate_by_name=True)

    schema_: Literal["stationgw/reply/1"] = Field(default="stationgw/reply/1", alias="schema")
    command_id: str | None = Field(description="the command's id, if it could be read")
    alert_id: str | None = Field(default=None)
    status: Literal["applied", "rejected"]
    reason: RejectReason | None = Field(default=None, description="why it was rejected")
    detail: str = Field(default="", description="human-readable explanation")
    station: str
    wall_time: float


@dataclass(frozen=True)
class Rejection:
    """A refused command: the reason code and what to tell dispatch."""

    reason: RejectReason
    detail: str
    command_id: str | None = None
    alert_id: str | None = None


def parse_command(
    payload: bytes, *, station: str, now: float, max_age_s: float, max_bytes: int
) -> Command | Rejection:
    """Check a raw command payload up to (not including) the alert-specific checks."""
    if len(payload) > max_bytes:
        return Rejection("oversized", f"{len(payload)} bytes, limit {max_bytes}")
    try:
        raw = json.loads(payload)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        return Rejection("malformed", f"not JSON: {exc}")
    ids = raw if isinstance(raw, dict) else {}
    command_id = ids.get("command_id") if isinstance(ids.get("command_id"), str) else None
    alert_id = ids.get("alert_id") if isinstance(ids.get("alert_id"), str) else None
    try:
        command = Command.model_validate(raw)
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in e['loc']) or 'command'}: {e['msg']}" for e in exc.errors()
        )
        return Rejection("schema", problems[:500], command_id, alert_id)
    if command.station != station:
        return Rejection(
            "wrong_station", f"command is for {command.station!r}, this is {station!r}",
            command.command_id, command.alert_id,
        )
    age = now - command.issued_at
    if age > max_age_s:
        return Rejection(
            "stale", f"issued {age:.0f}s ago, limit {max_age_s:g}s",
            command.command_id, command.alert_id,
        )
    if command.action == "assign" and command.team is None:
        return Rejection(
            "schema", "assign needs a team", command.command_id, command.alert_id
        )
    return command
