"""Dispatch commands: the wire model and its checks, with no I/O.

Dispatch publishes a command on ``{prefix}/{station}/commands`` (QoS 1). The gateway checks,
in order: size, JSON, schema, station scope, staleness, replay (command id), known alert,
and whether the alert's state allows it. Anything refused is answered on
``{prefix}/{station}/replies`` with a reason code, and nothing changes.
"""

from __future__ import annotations

import dataclasses
import json
import math
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Annotated, Any, Literal, get_args

from gateway.core.clock import DispatchClock
from gateway.errors import NotStrictJsonError

if TYPE_CHECKING:  # the spec's markers: gateway.contract.spec gives them to pydantic
    from pydantic import Field

Action = Literal["acknowledge", "assign", "resolve", "cancel"]
Team = Literal["emergency_services", "crisis_team", "co_response", "ambassador"]
RejectReason = Literal[
    "oversized",
    "malformed",
    "schema",
    "wrong_station",
    "stale",
    "future",
    "replay",
    "unknown_alert",
    "invalid_transition",
    "internal_error",
]
COMMAND_SCHEMA: Literal["stationgw/command/1"] = "stationgw/command/1"
REPLY_SCHEMA: Literal["stationgw/reply/1"] = "stationgw/reply/1"
_COMMAND_ID = r"[A-Za-z0-9_.:-]+"
MAX_DEPTH = 8  # a command is a flat object; anything nested deeper is not one
MAX_INT_DIGITS = 20  # eta_s and issued_at need far fewer; int() of 5,000 digits raises


def _wire(message: Any) -> dict[str, Any]:
    """A command or reply as its JSON object: the dataclass's fields, `schema_` as `schema`."""
    return {f.name.rstrip("_"): getattr(message, f.name) for f in dataclasses.fields(message)}


@dataclass(frozen=True, kw_only=True)
class Command:
    """A command from dispatch about one alert (schema `stationgw/command/1`)."""

    # The annotations are the contract's schema (pydantic; strict, so JSON types are taken
    # as they are: "300" is not a number). The daemon checks payloads against them with
    # `schema_problems`, without pydantic.

    __pydantic_config__ = {"extra": "forbid"}

    schema_: Annotated[
        Literal["stationgw/command/1"], Field(alias="schema", description="payload schema id")
    ] = COMMAND_SCHEMA
    command_id: Annotated[
        str,
        Field(strict=True, min_length=8, max_length=64, pattern=f"^{_COMMAND_ID}$",
              description="unique per command; a replay of the same id is refused and "
              "changes nothing"),
    ]
    station: Annotated[
        str, Field(strict=True, max_length=63, description="the station the command is for")
    ]
    alert_id: Annotated[
        str, Field(strict=True, min_length=1, max_length=64, description="the alert it acts on")
    ]
    action: Annotated[Action, Field(description="acknowledge, assign, resolve or cancel")]
    team: Annotated[Team | None, Field(description="assign only: the team sent")] = None
    eta_s: Annotated[
        int | None,
        Field(strict=True, ge=0, le=86400, description="assign only: expected arrival in seconds"),
    ] = None
    issued_at: Annotated[
        float,
        Field(strict=True, allow_inf_nan=False, description="Unix time the dispatcher issued it"),
    ]
    dispatcher: Annotated[
        str,
        Field(strict=True, max_length=64, description="desk or console id (not a person's name)"),
    ] = ""
    note: Annotated[
        str, Field(strict=True, max_length=280, description="free text for the log")
    ] = ""

    def wire(self) -> dict[str, Any]:
        """The JSON object dispatch publishes."""
        return _wire(self)


@dataclass(frozen=True, kw_only=True)
class Reply:
    """The gateway's answer to a command (schema `stationgw/reply/1`)."""

    __pydantic_config__ = {"extra": "forbid"}

    schema_: Annotated[Literal["stationgw/reply/1"], Field(alias="schema")] = REPLY_SCHEMA
    command_id: Annotated[
        str | None, Field(description="the command's id, if it could be read")
    ]
    alert_id: str | None = None
    status: Literal["applied", "rejected"]
    reason: Annotated[RejectReason | None, Field(description="why it was rejected")] = None
    detail: Annotated[str, Field(description="human-readable explanation")] = ""
    station: str
    wall_time: float

    def wire(self) -> dict[str, Any]:
        """The JSON object the gateway publishes."""
        return _wire(self)


# ---------------------------------------------------------------------------- checks
# What `Command`'s annotations say, as plain code: the daemon never loads pydantic (see
# gateway.contract.spec). tests/test_commands.py proves both accept and refuse the same payloads.


def _text(min_length: int, max_length: int, pattern: str | None = None) -> Callable[[Any], str]:
    def check(value: Any) -> str:
        if not isinstance(value, str):
            return "Input should be a valid string"
        if not min_length <= len(value) <= max_length:
            return f"String should have {min_length} to {max_length} characters"
        if pattern is not None and re.fullmatch(pattern, value) is None:
            return f"String should match pattern '^{pattern}$'"
        return ""
    return check


def _one_of(*allowed: Any) -> Callable[[Any], str]:
    def check(value: Any) -> str:
        if isinstance(value, str | None) and value in allowed:
            return ""
        return "Input should be " + " or ".join(repr(a) for a in allowed)
    return check


def _eta(value: Any) -> str:
    if value is None or (type(value) is int and 0 <= value <= 86400):
        return ""
    return "Input should be null or an integer from 0 to 86400"


def _time(value: Any) -> str:
    if type(value) in (int, float):
        try:
            if math.isfinite(value):
                return ""
        except OverflowError:  # an int beyond any float
            pass
    return "Input should be a finite number"


_CHECKS: dict[str, Callable[[Any], str]] = {
    "schema": _one_of(COMMAND_SCHEMA),
    "command_id": _text(8, 64, _COMMAND_ID),
    "station": _text(0, 63),
    "alert_id": _text(1, 64),
    "action": _one_of(*get_args(Action)),
    "team": _one_of(None, *get_args(Team)),
    "eta_s": _eta,
    "issued_at": _time,
    "dispatcher": _text(0, 64),
    "note": _text(0, 280),
}
# Keys and which are required come from `Command`'s fields: a field added to the spec without
# its check here stops the gateway at import, instead of being refused as an extra input.
_FIELDS = {f.name.rstrip("_"): f for f in dataclasses.fields(Command)}
_REQUIRED = tuple(name for name, f in _FIELDS.items()
                  if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING)
if _CHECKS.keys() != _FIELDS.keys():
    raise TypeError(f"Command's fields {sorted(_FIELDS)} and the plain-code checks "
                    f"{sorted(_CHECKS)} differ: give every field of the spec its check")


def schema_problems(raw: Any) -> list[str]:
    """What makes `raw` (parsed JSON) not a `Command`, one problem per key; [] if nothing."""
    if not isinstance(raw, dict):
        return ["command: Input should be an object"]
    problems = [f"{key}: Field required" for key in _REQUIRED if key not in raw]
    for key, value in raw.items():
        check = _CHECKS.get(key)
        problem = "Extra inputs are not permitted" if check is None else check(value)
        if problem:
            problems.append(f"{key}: {problem}")
    return problems


@dataclass(frozen=True)
class Rejection:
    """A refused command: the reason code and what to tell dispatch."""

    reason: RejectReason
    detail: str
    command_id: str | None = None
    alert_id: str | None = None


def _int(text: str) -> int:
    if len(text.lstrip("-")) > MAX_INT_DIGITS:
        raise NotStrictJsonError(f"an integer of {len(text)} digits")
    return int(text)


def _float(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise NotStrictJsonError(f"the number {text[:24]} is out of range")
    return value


def _constant(name: str) -> Any:
    raise NotStrictJsonError(f"{name} is not JSON")


def _check_tree(raw: Any) -> None:
    """Refuse nesting deeper than MAX_DEPTH and text that is not Unicode (lone surrogates
    from `\\ud800` escapes), walking without recursion."""
    stack: list[tuple[Any, int]] = [(raw, 1)]
    while stack:
        value, depth = stack.pop()
        if isinstance(value, str):
            try:
                value.encode()
            except UnicodeEncodeError:
                raise NotStrictJsonError("text with a lone surrogate is not Unicode") from None
            continue
        if not isinstance(value, dict | list):
            continue
        if depth > MAX_DEPTH:
            raise NotStrictJsonError(f"nested deeper than {MAX_DEPTH} levels")
        items = [*value.keys(), *value.values()] if isinstance(value, dict) else value
        stack.extend((item, depth + 1) for item in items)


def decode_strict(payload: bytes) -> Any:
    """Parse strict JSON (RFC 8259): no NaN or Infinity, numbers that fit, bounded nesting,
    valid Unicode. Raises `ValueError` (with a reason) for anything else."""
    try:
        raw = json.loads(payload, parse_int=_int, parse_float=_float, parse_constant=_constant)
    except RecursionError:
        raise NotStrictJsonError(f"nested deeper than {MAX_DEPTH} levels") from None
    _check_tree(raw)
    return raw


def parse_command(
    payload: bytes, *, station: str, now: float, max_age_s: float, max_bytes: int,
    dispatch_clock: DispatchClock | None = None, teaches: Callable[[Command], bool] | None = None,
) -> Command | Rejection:
    """Check a raw command payload up to (not including) the alert-specific checks.

    `now` is the gateway's steady time (`gateway.core.clock.SteadyWall`). Age is judged on
    dispatch's clock as `dispatch_clock` has learned it; it learns from this command if
    `teaches(command)` (any command, without `teaches`). Without a clock, the two clocks
    are taken to agree.
    """
    if len(payload) > max_bytes:
        return Rejection("oversized", f"{len(payload)} bytes, limit {max_bytes}")
    try:
        raw = decode_strict(payload)
    except ValueError as exc:  # JSONDecodeError, UnicodeDecodeError and NotStrictJsonError
        return Rejection("malformed", f"not JSON: {str(exc)[:200]}")
    ids = raw if isinstance(raw, dict) else {}
    command_id = ids.get("command_id") if isinstance(ids.get("command_id"), str) else None
    alert_id = ids.get("alert_id") if isinstance(ids.get("alert_id"), str) else None
    problems = schema_problems(raw)
    if problems:
        return Rejection("schema", "; ".join(problems)[:500], command_id, alert_id)
    command = Command(**{"schema_" if k == "schema" else k: v for k, v in raw.items()})
    if command.station != station:
        return Rejection(
            "wrong_station", f"command is for {command.station!r}, this is {station!r}",
            command.command_id, command.alert_id,
        )
    verdict, age = (dispatch_clock or DispatchClock()).judge(
        command.issued_at, now, max_age_s, learn=teaches is None or teaches(command))
    if verdict == "stale":
        return Rejection(
            "stale", f"issued {age:.0f}s ago, limit {max_age_s:g}s",
            command.command_id, command.alert_id,
        )
    if verdict == "future":
        return Rejection(
            "future", f"issued {-age:.0f}s in the future by dispatch's clock as its other "
            f"commands show it, limit {max_age_s:g}s", command.command_id, command.alert_id,
        )
    if command.action == "assign" and command.team is None:
        return Rejection(
            "schema", "assign needs a team", command.command_id, command.alert_id
        )
    return command
