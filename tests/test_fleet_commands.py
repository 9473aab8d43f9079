"""The fleet twin's simulated stations answer dispatch as a gateway does: a console's
command is applied (its event, then `applied` on replies), every bad one is refused with the
gateway's reason, and a request a dispatcher has answered is left to them. Real Mosquitto."""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager, suppress
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiomqtt

from dispatch.fleet.schedule import Request
from dispatch.fleet.stations import FLEET_DISPATCHER, LIMITS, PUBLISH_TIMEOUT_S, SimStation
from dispatch.outbound import make_command
from gateway.core.commands import parse_command
from gateway.testing.mosquitto import Mosquitto

WAIT_S = 20.0


@dataclass
class Desk:
    """A dispatch desk on the station's topics: what it heard, in order."""

    client: aiomqtt.Client
    prefix: str
    station: str
    heard: list[tuple[str, dict[str, Any]]] = field(default_factory=list)
    arrived: asyncio.Event = field(default_factory=asyncio.Event)

    async def send(self, payload: bytes) -> None:
        await self.client.publish(f"{self.prefix}/{self.station}/commands", payload, qos=1)

    async def wait_for(self, kind: str, **body: Any) -> dict[str, Any]:
        """The first message of `kind` (an event kind, or "reply") whose body has `body`."""
        deadline = time.monotonic() + WAIT_S
        while True:
            for heard, message in self.heard:
                values = message.get("body", message)
                if heard == kind and all(values.get(k) == v for k, v in body.items()):
                    return message
            left = deadline - time.monotonic()
            assert left > 0, f"no {kind} {body} in {[k for k, _ in self.heard]}"
            self.arrived.clear()
            with suppress(TimeoutError):
                await asyncio.wait_for(self.arrived.wait(), left)


@asynccontextmanager
async def desk(broker: Mosquitto, station: str, prefix: str) -> AsyncIterator[Desk]:
    async with aiomqtt.Client("127.0.0.1", broker.port, identifier=f"desk-{uuid.uuid4().hex}",
                              protocol=aiomqtt.ProtocolVersion.V5) as client:
        seen = Desk(client, prefix, station)
        await client.subscribe(f"{prefix}/{station}/events/#", qos=1)
        await client.subscribe(f"{prefix}/{station}/replies", qos=1)

        async def read() -> None:
            async for message in client.messages:
                payload = json.loads(bytes(message.payload))
                kind = "reply" if str(message.topic).endswith("/replies") else payload["kind"]
                seen.heard.append((kind, payload))
                seen.arrived.set()

        reader = asyncio.create_task(read())
        try:
            yield seen
        finally:
            reader.cancel()


@asynccontextmanager
async def simulated(broker: Mosquitto) -> AsyncIterator[tuple[Desk, SimStation]]:
    """A simulated station of its own (unique id and prefix), and a desk on its topics."""
    station, prefix = f"sim-{uuid.uuid4().hex[:8]}", f"t{uuid.uuid4().hex[:8]}/v1"
    async with (desk(broker, station, prefix) as dispatch,
                SimStation(station, "127.0.0.1", broker.port, prefix=prefix) as sim):
        yield dispatch, sim


def _request(station: str, *, answer_s: float) -> Request:
    return Request(at=0.0, sim_at=time.time(), station=station, response="crisis_team",
                   location=0, ack_s=answer_s, assign_s=answer_s, close_s=answer_s,
                   team="crisis_team", eta_s=300)


async def test_a_console_takes_over_a_simulated_request_and_bad_commands_are_refused(
        broker: Mosquitto) -> None:
    async with simulated(broker) as (dispatch, sim):
        station = sim.station
        sim.request(_request(station, answer_s=1.0), 0.0)
        press = await dispatch.wait_for("help_point.press")
        alert_id = press["body"]["alert_id"]

        ack = make_command(station, alert_id, "acknowledge", dispatcher="desk-7")
        await dispatch.send(json.dumps(ack.wire()).encode())
        event = await dispatch.wait_for("alert.acknowledged", dispatcher="desk-7")
        assert event["body"]["alert_id"] == alert_id and event["class"] == "P1"
        assert event["seq"] == press["seq"] + 1
        reply = await dispatch.wait_for("reply", command_id=ack.command_id)
        assert reply["status"] == "applied" and reply["station"] == station

        # Every kind of bad command is refused with the reason a gateway gives for it.
        other = make_command("elsewhere", alert_id, "resolve")
        unknown = make_command(station, "no-such-alert", "resolve")
        again = make_command(station, alert_id, "acknowledge", dispatcher="desk-7")
        stale = {**make_command(station, alert_id, "resolve").wire(),
                 "issued_at": time.time() - 2 * LIMITS.command_max_age_s}
        bad = {
            "replay": json.dumps(ack.wire()).encode(),
            "wrong_station": json.dumps(other.wire()).encode(),
            "unknown_alert": json.dumps(unknown.wire()).encode(),
            "invalid_transition": json.dumps(again.wire()).encode(),
            "stale": json.dumps(stale).encode(),
            "malformed": b"{not json",
            "schema": json.dumps({**unknown.wire(), "action": "explode"}).encode(),
            "oversized": b" " * (LIMITS.max_command_bytes + 1),
        }
        for reason, payload in bad.items():
            if reason != "replay":  # the gateway's own check agrees (replay is the book's)
                verdict = parse_command(payload, station=station, now=time.time(),
                                        max_age_s=LIMITS.command_max_age_s,
                                        max_bytes=LIMITS.max_command_bytes)
                assert getattr(verdict, "reason", None) in (reason, None), (reason, verdict)
            before = sum(kind == "reply" for kind, _ in dispatch.heard)
            await dispatch.send(payload)
            deadline = time.monotonic() + WAIT_S
            while sum(kind == "reply" for kind, _ in dispatch.heard) == before:
                assert time.monotonic() < deadline, f"no reply to {reason}"
                await asyncio.sleep(0.02)
            answer = [m for kind, m in dispatch.heard if kind == "reply"][-1]
            assert answer["status"] == "rejected", (reason, answer)
            assert answer["reason"] == reason, (reason, answer)

        # The fleet's own dispatcher would have assigned it by now: the desk has it instead.
        await asyncio.sleep(2.5)
        assert not [m for kind, m in dispatch.heard if kind == "alert.assigned"]
        assert sim.overtaken == 1
        assign = make_command(station, alert_id, "assign", team="co_response", eta_s=240,
                              dispatcher="desk-7")
        await dispatch.send(json.dumps(assign.wire()).encode())
        assigned = await dispatch.wait_for("alert.assigned", team="co_response")
        assert assigned["body"]["eta_s"] == 240
        resolve = make_command(station, alert_id, "resolve", dispatcher="desk-7")
        await dispatch.send(json.dumps(resolve.wire()).encode())
        await dispatch.wait_for("alert.resolved", dispatcher="desk-7")
        await dispatch.wait_for("reply", command_id=resolve.command_id, status="applied")


async def test_a_request_nobody_answers_is_played_by_the_fleets_dispatcher(
        broker: Mosquitto) -> None:
    async with simulated(broker) as (dispatch, sim):
        sim.request(_request(sim.station, answer_s=0.2), 0.0)
        resolved = await dispatch.wait_for("alert.resolved")
    kinds = [kind for kind, _ in dispatch.heard]
    assert kinds == ["help_point.press", "alert.acknowledged", "alert.assigned",
                     "alert.resolved"], kinds
    events = [m for _, m in dispatch.heard]
    assert [m["seq"] for m in events] == [1, 2, 3, 4]
    assert {m["body"]["dispatcher"] for m in events[1:]} == {FLEET_DISPATCHER}
    assert events[2]["body"]["team"] == "crisis_team" and events[2]["body"]["eta_s"] == 300
    assert resolved["body"]["state"] == "resolved" and sim.overtaken == 0


async def test_a_command_that_breaks_the_handling_is_answered_and_the_next_is_applied(
        broker: Mosquitto) -> None:
    """Fault injection: the station's alert book raises on its next decision, as a bug in
    the pure core would. That command is answered `internal_error` and counted, and the
    station goes on: the next command is applied."""
    async with simulated(broker) as (dispatch, sim):
        sim.request(_request(sim.station, answer_s=3.0), 0.0)
        press = await dispatch.wait_for("help_point.press")
        alert_id = press["body"]["alert_id"]
        decide = sim.book.decide

        def broken(*args: Any, **kwargs: Any) -> Any:
            sim.book.decide = decide  # type: ignore[method-assign]  # once
            raise RuntimeError("injected")

        sim.book.decide = broken  # type: ignore[method-assign]
        first = make_command(sim.station, alert_id, "acknowledge", dispatcher="desk-7")
        await dispatch.send(json.dumps(first.wire()).encode())
        failed = await dispatch.wait_for("reply", reason="internal_error")
        assert failed["status"] == "rejected" and "RuntimeError" in failed["detail"]
        assert sim.handling_errors == 1
        assert not [m for kind, m in dispatch.heard if kind == "alert.acknowledged"]
        second = make_command(sim.station, alert_id, "acknowledge", dispatcher="desk-7")
        await dispatch.send(json.dumps(second.wire()).encode())
        await dispatch.wait_for("alert.acknowledged", dispatcher="desk-7")
        await dispatch.wait_for("reply", command_id=second.command_id, status="applied")


async def test_an_emergency_the_console_closes_within_the_hold_is_not_held_again(
        broker: Mosquitto) -> None:
    """A rider holds the button; a console resolves the request before the hold time is
    up. A gateway has forgotten the request by then, so the hold announces nothing and the
    fleet does not play the closed request again."""
    station, prefix = f"sim-{uuid.uuid4().hex[:8]}", f"t{uuid.uuid4().hex[:8]}/v1"
    async with (desk(broker, station, prefix) as dispatch,
                SimStation(station, "127.0.0.1", broker.port, prefix=prefix,
                           hold_s=3.0) as sim):
        emergency = Request(at=0.0, sim_at=time.time(), station=station,
                            response="emergency_services", location=0, ack_s=1.0,
                            assign_s=1.0, close_s=1.0, team="emergency_services", eta_s=300)
        sim.request(emergency, 0.0)
        alert_id = (await dispatch.wait_for("help_point.press"))["body"]["alert_id"]
        for action in ("acknowledge", "resolve"):
            command = make_command(station, alert_id, action, dispatcher="desk-7")
            await dispatch.send(json.dumps(command.wire()).encode())
            await dispatch.wait_for("reply", command_id=command.command_id, status="applied")
        while sim.overtaken == 0:  # the hold's time is up (or the test's timeout)
            await asyncio.sleep(0.1)
    kinds = [kind for kind, _ in dispatch.heard if kind != "reply"]
    assert kinds == ["help_point.press", "alert.acknowledged", "alert.resolved"], kinds


async def test_a_simulated_station_reports_health_at_connect(broker: Mosquitto) -> None:
    """As a gateway does: the retained health report at connect, not one interval later."""
    station, prefix = f"sim-{uuid.uuid4().hex[:8]}", f"t{uuid.uuid4().hex[:8]}/v1"
    async with (SimStation(station, "127.0.0.1", broker.port, prefix=prefix,
                           health_interval_s=3600.0),
                aiomqtt.Client("127.0.0.1", broker.port,
                               protocol=aiomqtt.ProtocolVersion.V5) as client):
        await client.subscribe(f"{prefix}/{station}/health", qos=1)
        message = await asyncio.wait_for(anext(aiter(client.messages)), WAIT_S)
    report = json.loads(bytes(message.payload))
    assert message.retain and report["station"] == station
    assert report["counters"]["command_handling_errors"] == 0


async def test_a_simulated_station_that_loses_the_broker_says_so_and_stops(
        tmp_path: Path) -> None:
    """The broker dies under a station with events to send: its stop still ends (what is
    left to send is counted unsent, not waited on), and it says why, for the fleet to
    report. (Before, the stop waited for a sender that had died: for ever.)"""
    own = Mosquitto(workdir=tmp_path)
    own.start()
    try:
        sim = SimStation("sim-lost", "127.0.0.1", own.port, prefix="t/v1")
        await sim.__aenter__()
        sim.request(_request(sim.station, answer_s=0.5), 0.0)
        await asyncio.sleep(0.3)
        assert own.process is not None
        own.process.kill()
        sim.request(_request(sim.station, answer_s=0.5), 0.0)
        while sim.failure is None:
            await asyncio.sleep(0.05)
        # Milliseconds when right; waiting out each publish's timeout, or forever, is not.
        await asyncio.wait_for(sim.__aexit__(None, None, None), PUBLISH_TIMEOUT_S / 2)
    finally:
        own.close()
    assert sim.failure is not None and "lost" in sim.failure
    assert sim.unsent >= 1  # the second request's press at least
    assert sim.published >= 1  # the first press went out before the broker died
