"""A wrong clock must not lock dispatch out, empty the store or hold off an escalation.

Clock steps are injected (`gateway.testing.clock.SteppedClock`); the machine's clock is never
changed. TTLs and command ages are measured on the steady clock, dispatch's clock is learned
from its commands, and the escalation timer runs from the stored last announcement.
"""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import aiomqtt
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from dispatch.outbound import make_command
from gateway.core.clock import DispatchClock
from gateway.core.commands import Command, Rejection, parse_command
from gateway.core.model import Event, Priority
from gateway.daemon import Gateway
from gateway.outbox.sqlite import Outbox
from gateway.testing.clock import SteppedClock
from gateway.testing.daemon import running
from gateway.testing.mosquitto import Mosquitto
from gateway.uplink.topics import Topics
from tests.helpers import lifecycle_config, raise_alert, replies, subscribe

YEAR = 365 * 86400.0
STEPS = st.floats(min_value=1.0, max_value=10 * YEAR) | st.floats(
    min_value=-10 * YEAR, max_value=-1.0)
TOPICS = Topics("stationgw/v1", "t-clock")
WAIT = 20.0


def p3(n: int) -> Event:
    return Event("sensor.reading", "s-1", Priority.P3, {"n": n})


# ----------------------------------------------------------------------------------- TTLs


@settings(deadline=None, max_examples=60)
@given(step=STEPS)
def test_a_clock_step_neither_expires_a_backlog_nor_keeps_rows_forever(
    tmp_path_factory: pytest.TempPathFactory, step: float
) -> None:
    clock = SteppedClock()
    path = tmp_path_factory.mktemp("ttl") / "outbox.db"
    with Outbox(path, TOPICS.render, ttl_s={Priority.P3: 60, Priority.P2: 600},
                clock=clock) as box:
        before = box.accept([p3(i) for i in range(5)]).rows
        clock.step(step)
        after = box.accept([p3(i) for i in range(5, 10)]).rows
        assert box.expire() == [], "a step of the wall clock expired rows"
        assert box.depth().rows == 10
        # They still expire when their TTL has passed, steps or not.
        expired = box.expire(now=box.steady.now() + 61)
        assert sorted(r.seq for r in expired) == sorted(r.seq for r in before + after)
        # The wall time they report is the wall clock's, stepped.
        assert after[0].wall_time - before[0].wall_time == pytest.approx(step, abs=5)


def test_rows_of_an_earlier_run_keep_their_age(tmp_path: Path) -> None:
    path = tmp_path / "outbox.db"
    with Outbox(path, TOPICS.render, ttl_s={Priority.P3: 60}) as box:
        (row,) = box.accept([p3(0)]).rows
    with Outbox(path, TOPICS.render, ttl_s={Priority.P3: 60}) as box:
        assert box.expire() == []
        assert [r.seq for r in box.expire(now=row.aged_from + 61)] == [row.seq]


# ----------------------------------------------------------------- dispatch's clock, parsed


def command_bytes(station: str, issued_at: float, alert_id: str = "a-1") -> bytes:
    return json.dumps({
        "schema": "stationgw/command/1", "command_id": uuid.uuid4().hex, "station": station,
        "alert_id": alert_id, "action": "acknowledge", "dispatcher": "d", "issued_at": issued_at,
    }).encode()


def parse(
    payload: bytes, now: float, clock: DispatchClock | None,
    teaches: Callable[[Command], bool] | None = None,
) -> Command | Rejection:
    return parse_command(payload, station="st", now=now, max_age_s=600, max_bytes=4096,
                         dispatch_clock=clock, teaches=teaches)


@settings(max_examples=300)
@given(ahead=st.floats(min_value=601, max_value=10 * YEAR))
def test_a_command_from_the_future_is_refused(ahead: float) -> None:
    clock = DispatchClock()
    now = 1.8e9
    for i in range(3):  # dispatch's clock agrees with ours, as its commands show
        assert isinstance(parse(command_bytes("st", now + i * 2), now + i * 2, clock), Command)
    rejected = parse(command_bytes("st", now + 6 + ahead), now + 6, clock)
    assert isinstance(rejected, Rejection) and rejected.reason == "future", rejected
    # And it taught nothing: the next good command is applied.
    assert isinstance(parse(command_bytes("st", now + 8), now + 8, clock), Command)


@settings(max_examples=300)
@given(skew=STEPS, gap=st.floats(min_value=1.0, max_value=120.0))
def test_commands_work_once_dispatch_clock_is_learned_whatever_the_skew(
    skew: float, gap: float
) -> None:
    """A station whose clock is off at start: three commands, apart in time, teach it."""
    clock = DispatchClock()
    now = 1.8e9
    verdicts = []
    for i in range(6):
        arrived = now + i * gap
        parsed = parse(command_bytes("st", arrived + skew), arrived, clock)
        verdicts.append(isinstance(parsed, Command))
    assert all(verdicts[2:]), verdicts
    assert clock.offset == pytest.approx(skew, abs=1e-3)


@settings(max_examples=200)
@given(late=st.floats(min_value=601, max_value=YEAR),
       spread=st.floats(min_value=0.0, max_value=3600.0), n=st.integers(3, 40))
def test_commands_queued_while_offline_stay_stale(late: float, spread: float, n: int) -> None:
    """A burst delivered on reconnect, issued long ago: never learned as a clock offset."""
    clock = DispatchClock()
    now = 1.8e9
    for i in range(n):
        issued = now - late - spread * (n - i) / n
        parsed = parse(command_bytes("st", issued), now + i * 0.005, clock)
        assert isinstance(parsed, Rejection) and parsed.reason == "stale", (i, parsed)


@settings(max_examples=300)
@given(skew=STEPS.filter(lambda s: abs(s) > 600), gap=st.floats(min_value=1.0, max_value=120.0),
       n=st.integers(3, 50))
def test_junk_for_alerts_not_open_here_cannot_teach_a_false_clock(
    skew: float, gap: float, n: int
) -> None:
    """An attacker's flood of consistent, skewed commands for made-up alerts: afterwards a
    real command from dispatch (whose clock agrees with ours) is still applied."""
    clock = DispatchClock()
    now = 1.8e9
    open_here = {"a-1"}
    for i in range(n):
        arrived = now + i * gap
        parse(command_bytes("st", arrived + skew, alert_id=f"junk-{i}"), arrived, clock,
              teaches=lambda c: c.alert_id in open_here)
    assert clock.offset == 0.0
    arrived = now + n * gap
    real = parse(command_bytes("st", arrived), arrived, clock,
                 teaches=lambda c: c.alert_id in open_here)
    assert isinstance(real, Command), real


# ------------------------------------------------------------ the station, stepped, live


async def _command(dispatcher: aiomqtt.Client, station: str, alert_id: str, action: str,
                   issued_at: float | None = None) -> None:
    command = make_command(station, alert_id, action)  # type: ignore[arg-type]
    body = command.wire()
    if issued_at is not None:
        body["issued_at"] = issued_at
    await dispatcher.publish(f"stationgw/v1/{station}/commands", json.dumps(body).encode(),
                             qos=1)


@pytest.mark.parametrize("step", [YEAR, -YEAR, 3600.0, -3600.0])
async def test_dispatch_can_still_acknowledge_after_the_station_clock_steps(
    broker: Mosquitto, tmp_path: Path, step: float
) -> None:
    config = lifecycle_config(tmp_path, broker.url)
    root = f"stationgw/v1/{config.station_id}"
    clock = SteppedClock()
    async with (
        aiomqtt.Client("127.0.0.1", broker.port,
                       protocol=aiomqtt.ProtocolVersion.V5) as dispatcher,
        subscribe(broker.port, [f"{root}/events/#", f"{root}/replies"]) as sub,
        running(Gateway(config, clock=clock)) as gw,
    ):
        await asyncio.wait_for(gw.publisher.connected.wait(), WAIT)
        alert_id = await raise_alert(gw, sub)
        clock.step(step)
        await _command(dispatcher, config.station_id, alert_id, "acknowledge")
        await sub.wait_for(lambda m: len(replies(sub)) >= 1, WAIT)
        assert replies(sub)[0]["status"] == "applied", replies(sub)[0]
        fault = gw.health.faults.get("clock_skew")
        assert fault is not None and "stepped" in fault.message, gw.health.faults
        # A command dated ten years ahead of dispatch's real clock is still refused.
        await _command(dispatcher, config.station_id, alert_id, "resolve",
                       issued_at=time.time() + 10 * YEAR)
        await sub.wait_for(lambda m: len(replies(sub)) >= 2, WAIT)
        assert (replies(sub)[1]["status"], replies(sub)[1]["reason"]) == ("rejected", "future")
        # Stepping back clears the fault at the next check.
        clock.step(-step)
        gw.lifecycle.check_clock()
        assert "clock_skew" not in gw.health.faults


# ----------------------------------------------------------------------- escalation timer


async def test_restarts_faster_than_the_ack_timeout_cannot_hold_off_an_escalation(
    broker: Mosquitto, tmp_path: Path
) -> None:
    config = lifecycle_config(tmp_path, broker.url, ack_timeout_s=2.0)
    root = f"stationgw/v1/{config.station_id}"
    async with subscribe(broker.port, f"{root}/events/#") as sub:
        async with running(Gateway(config)) as gw:
            raised_at = time.monotonic()  # before the press: its announcement comes after
            alert_id = await raise_alert(gw, sub)

        def escalated(messages: list[tuple[str, dict[str, Any]]]) -> bool:
            return any(p.get("kind") == "alert.escalated" and p["body"]["alert_id"] == alert_id
                       for _, p in messages)

        for _ in range(8):  # restarts every 0.8 s, well inside the 2 s timeout
            async with running(Gateway(config)) as gw:
                await asyncio.wait_for(gw.publisher.connected.wait(), WAIT)
                await asyncio.sleep(0.8)
            if escalated(sub.messages):
                break
        assert escalated(sub.messages), "restarts held the escalation off"
        assert time.monotonic() - raised_at >= 2.0
