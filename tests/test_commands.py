"""The daemon's command checks accept and refuse exactly what the contract's schema does.

The daemon checks dispatch commands without pydantic (`gateway.core.commands.schema_problems`, see
gateway/contract/spec.py); the contract's schema is the pydantic view of `Command`. If the two ever
disagree, a command the contract allows could be refused, or one it forbids applied.
"""

from __future__ import annotations

import json
import math
import time
from typing import Any

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st
from pydantic import ValidationError

from gateway.contract.spec import adapter
from gateway.core.commands import Command, Rejection, parse_command, schema_problems

GOOD: dict[str, Any] = {
    "schema": "stationgw/command/1",
    "command_id": "cmd-0001",
    "station": "central-north",
    "alert_id": "0192a3b4-0000-7000-8000-000000000001",
    "action": "assign",
    "team": "crisis_team",
    "eta_s": 300,
    "issued_at": 1_790_000_000.5,
    "dispatcher": "desk-3",
    "note": "on the way",
}
KEYS = [*GOOD, "schema_", "priority", "Command_id"]

# Values at each field's edges, and of every JSON type.
EDGES: list[Any] = [
    None, True, False, -1, 0, 1, 86400, 86401, 2**63, 1.0, 0.5, -0.0, math.nan, math.inf,
    -math.inf, [], [1], {}, {"a": 1},
    "", "x", "x" * 7, "x" * 8, "a" * 63, "a" * 64, "a" * 65, "n" * 280, "n" * 281,
    "cmd:0001.a_b-c", "cmd 0001!", "cmd-0001\n", "ünïcödé-1", "acknowledge", "assign",
    "resolve", "cancel", "explode", "crisis_team", "co_response", "ambassador",
    "emergency_services", "police", "stationgw/command/1", "stationgw/event/1",
    "central-north", "300",
]
EDGY = st.one_of(
    st.sampled_from(EDGES),
    st.integers(),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=70),
)


def pydantic_accepts(raw: Any) -> bool:
    try:
        adapter(Command).validate_python(raw)
    except ValidationError:
        return False
    return True


@settings(max_examples=1500, deadline=None)
@given(
    changes=st.dictionaries(st.sampled_from(KEYS), EDGY, max_size=4),
    dropped=st.sets(st.sampled_from(list(GOOD)), max_size=3),
)
@example(changes={}, dropped=set())
@example(changes={"issued_at": 5}, dropped={"schema", "team", "eta_s", "dispatcher", "note"})
@example(changes={"issued_at": math.nan}, dropped=set())
@example(changes={"eta_s": True}, dropped=set())
@example(changes={"eta_s": 1.0}, dropped=set())
@example(changes={"command_id": "cmd-0001\n"}, dropped=set())
@example(changes={"schema_": "stationgw/command/1"}, dropped={"schema"})
def test_the_daemons_checks_agree_with_the_contract(
    changes: dict[str, Any], dropped: set[str]
) -> None:
    raw = {k: v for k, v in {**GOOD, **changes}.items() if k not in dropped or k in changes}
    problems = schema_problems(raw)
    assert (problems == []) == pydantic_accepts(raw), problems
    # Each problem names its key, as the reply's detail does.
    assert all(p.split(":")[0] in [*raw, *GOOD, "command"] for p in problems)


@pytest.mark.parametrize("key", KEYS)
def test_every_key_with_every_edge_value(key: str) -> None:
    for value in EDGES:
        raw = {**GOOD, key: value}
        assert (schema_problems(raw) == []) == pydantic_accepts(raw), (key, value)
    if key in GOOD:
        raw = {k: v for k, v in GOOD.items() if k != key}
        assert (schema_problems(raw) == []) == pydantic_accepts(raw), ("without", key)


@given(st.one_of(st.none(), st.integers(), st.text(), st.lists(st.integers())))
def test_anything_but_an_object_is_refused_by_both(raw: Any) -> None:
    assert schema_problems(raw) and not pydantic_accepts(raw)


def test_a_good_payload_parses_to_the_command_the_contract_reads() -> None:
    parsed = parse_command(
        json.dumps(GOOD).encode(), station="central-north", now=GOOD["issued_at"] + 1,
        max_age_s=600, max_bytes=4096,
    )
    assert parsed == adapter(Command).validate_python(GOOD)
    assert isinstance(parsed, Command) and parsed.wire() == GOOD


def test_a_nan_issue_time_cannot_dodge_the_staleness_check() -> None:
    # NaN compares false with everything, so "age > limit" would let it through forever.
    payload = json.dumps({**GOOD, "issued_at": math.nan}).encode()
    parsed = parse_command(
        payload, station="central-north", now=time.time(), max_age_s=600, max_bytes=4096
    )
    # NaN is not JSON (RFC 8259): refused before any field is read.
    assert isinstance(parsed, Rejection) and parsed.reason == "malformed"
    assert "NaN" in parsed.detail


def test_the_plain_check_knows_exactly_the_keys_the_spec_has() -> None:
    """The daemon's check takes its keys and required keys from `Command` itself; the JSON
    Schema pydantic makes from the same spec must agree, key for key."""
    schema = adapter(Command).json_schema(by_alias=True)
    every = dict.fromkeys(schema["properties"], "")
    assert not [p for p in schema_problems(every) if "Extra inputs" in p]
    missing = {p.split(":")[0] for p in schema_problems({}) if "Field required" in p}
    assert missing == set(schema["required"])
