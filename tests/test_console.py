"""The dispatch console: the queue it folds, the keys it reads, and the three ways to run it
(JSON stream, one-shot commands, the live screen) against a real Mosquitto and a real
gateway on mock pins."""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import json
import os
import pty
import re
import signal
import struct
import subprocess
import sys
import termios
import threading
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from dispatch.console import (
    AlertQueue,
    Change,
    ConsoleUsageError,
    KeyReader,
    Screen,
    Send,
    events_filter,
    one_shot,
    parse_broker_url,
    parse_event,
)
from gateway.core.model import AlertRecord, AlertState, Event, Priority
from gateway.daemon import Gateway
from gateway.testing.daemon import running
from gateway.testing.mosquitto import Mosquitto
from gateway.uplink.reports import open_alerts_message
from gateway.uplink.topics import Topics, json_payload
from tests.helpers import (
    HELP_POINTS,
    Subscriber,
    lamp_becomes,
    publish_all,
    publisher,
    station_config,
    subscribe,
    tap,
    unique_prefix,
    watching,
)

ROOT = Path(__file__).resolve().parent.parent
ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")


# ---------------------------------------------------------------------------- events as sent


def payload(
    station: str, alert_id: str | None, *, seq: int, cls: str = "P1",
    kind: str = "help_point.press", first_press: float = 1000.0, source: str = "hp-1",
    **body: Any,
) -> bytes:
    """An event exactly as a gateway renders it."""
    details: dict[str, Any] = {"help_point": source, "location": "platform 1"}
    if alert_id is not None:
        details |= {"alert_id": alert_id, "press_count": 1, "first_press": first_press,
                    "last_press": first_press, "held": False, "escalated": False,
                    "evidence": ["button pressed"], "state": "open"}
    event = Event(kind, source, Priority.parse(cls), details | body)
    return Topics("stationgw/v1", station).render(event, seq, first_press + seq)[1]


def _topic(raw: bytes, channel: str) -> str:
    """The topic a payload was published on: its own station's (a test of one station
    publishing as another builds its topic by hand)."""
    try:
        station = json.loads(raw).get("station")
    except (ValueError, AttributeError):
        station = None
    station = station if isinstance(station, str) and station else "north"
    if channel == "alerts":
        return f"stationgw/v1/{station}/alerts"
    try:
        cls = json.loads(raw).get("class")
    except (ValueError, AttributeError):
        cls = None
    return f"stationgw/v1/{station}/events/{cls if cls in ('P0', 'P1', 'P2', 'P3') else 'P1'}"


def fed(queue: AlertQueue, raw: bytes) -> Change:
    """Feed an event payload on its station's events topic; what it changed."""
    (change,) = queue.feed_message(_topic(raw, "events"), raw)
    return change


def fed_snapshot(queue: AlertQueue, raw: bytes) -> list[Change]:
    """Feed an open-alerts snapshot on its station's alerts topic."""
    return queue.feed_message(_topic(raw, "alerts"), raw)


# ---------------------------------------------------------------------------- the queue


def test_queue_orders_by_class_then_oldest_first() -> None:
    queue = AlertQueue()
    fed(queue, payload("north", "p1-old", seq=1, first_press=100))
    fed(queue, payload("south", "p1-new", seq=1, first_press=300))
    fed(queue, payload("north", "p0-new", seq=2, cls="P0", kind="help_point.hold",
                               first_press=400))
    fed(queue, payload("east", "p2", seq=1, cls="P2", kind="sensor.threshold",
                               first_press=50))
    fed(queue, payload("east", "p0-old", seq=2, cls="P0", first_press=200))
    assert [r.alert_id for r in queue.rows()] == ["p0-old", "p0-new", "p1-old", "p1-new", "p2"]
    assert queue.get("north", "p1-old") is not None
    assert queue.get("south", "p1-old") is None  # alert ids are per station


def test_a_resent_event_is_folded_once() -> None:
    queue = AlertQueue()
    press = payload("north", "a1", seq=1)
    repeat = payload("north", "a1", seq=2, kind="help_point.repeat", press_count=2)
    assert [fed(queue, p) for p in (press, repeat, press, repeat)] == [
        "new", "updated", "duplicate", "duplicate"
    ]
    (row,) = queue.rows()
    assert row.press_count == 2 and row.kind == "help_point.repeat"
    assert queue.counts["duplicate"] == 2


def test_rows_follow_the_alert_state_and_never_roll_back() -> None:
    queue = AlertQueue()
    fed(queue, payload("north", "a1", seq=1))
    fed(queue, payload("north", "a1", seq=2, kind="alert.acknowledged",
                               state="acknowledged", dispatcher="desk-1"))
    assert queue.rows()[0].state == "acknowledged"
    fed(queue, payload("north", "a1", seq=3, kind="alert.assigned", state="assigned",
                               team="co_response", eta_s=300))
    # the outbox drains P0 before P1: an older event can arrive after a newer one
    assert fed(queue, payload("north", "a1", seq=1, kind="help_point.press")) == "stale"
    (row,) = queue.rows()
    assert (row.state, row.team, row.eta_s, row.seq) == ("assigned", "co_response", 300, 3)


def test_a_hold_that_overtook_its_press_keeps_the_alert_p0() -> None:
    queue = AlertQueue()
    assert fed(queue, payload("north", "a1", seq=2, cls="P0", kind="help_point.hold",
                                      held=True)) == "new"
    assert fed(queue, payload("north", "a1", seq=1)) == "stale"
    (row,) = queue.rows()
    assert row.priority == Priority.P0 and row.kind == "help_point.hold"


def test_closed_alerts_leave_the_queue_and_stay_gone() -> None:
    queue = AlertQueue()
    fed(queue, payload("north", "a1", seq=1))
    fed(queue, payload("north", "a2", seq=2, source="hp-2"))
    assert fed(queue, payload("north", "a1", seq=3, kind="alert.resolved",
                                      state="resolved")) == "closed"
    assert fed(queue, payload("north", "a2", seq=4, kind="alert.cancelled",
                                      state="cancelled")) == "closed"
    assert queue.rows() == [] and len(queue) == 0
    # a late escalation re-announcement of a1 (new event id) does not bring it back
    late = payload("north", "a1", seq=5, cls="P0", kind="alert.escalated", escalated=True)
    assert fed(queue, late) == "stale"
    assert queue.rows() == []


def test_a_stuck_button_is_a_fault_not_an_alert() -> None:
    queue = AlertQueue()
    assert fed(queue, payload("north", None, seq=1, cls="P2",
                                      kind="help_point.stuck")) == "fault"
    assert queue.rows() == []
    (fault,) = queue.faults()
    assert (fault.station, fault.source, fault.location) == ("north", "hp-1", "platform 1")
    assert fed(queue, payload("north", None, seq=2, cls="P3",
                                      kind="help_point.unstuck")) == "fault_cleared"
    assert queue.faults() == []
    assert fed(queue, payload("north", None, seq=3, cls="P3",
                                      kind="sensor.reading")) == "ignored"


def snapshot(station: str, wall_time: float, *alerts: tuple[str, str, AlertState]) -> bytes:
    """A station's open-alerts snapshot exactly as a gateway renders it: (id, class, state)."""
    records = [
        AlertRecord(alert_id, f"hp-{alert_id}", state, Priority.parse(cls), {
            "help_point": f"hp-{alert_id}", "location": f"platform {alert_id}",
            "platform": "1", "press_count": 2, "first_press": 100.0, "last_press": 110.0,
            "held": False, "escalated": False, "evidence": ["button pressed"],
        })
        for alert_id, cls, state in alerts
    ]
    return json_payload(open_alerts_message(station, wall_time, records))


def test_a_snapshot_seeds_alerts_raised_before_the_console_started() -> None:
    queue = AlertQueue()
    changes = fed_snapshot(queue,
        snapshot("north", 500.0, ("a1", "P1", "open"), ("a2", "P0", "acknowledged")))
    assert changes == ["seeded", "seeded"]
    assert [(r.alert_id, r.priority.name, r.state) for r in queue.rows()] == [
        ("a2", "P0", "acknowledged"), ("a1", "P1", "open")]
    row = queue.get("north", "a1")
    assert row is not None
    assert (row.source, row.location, row.press_count, row.raised_at) == (
        "hp-a1", "platform a1", 2, 100.0)  # its age counts from the first press
    assert row.requested_response == "crisis_team" and row.seq == 0
    # its next event is newer news, whatever its seq
    assert fed(queue, payload("north", "a1", seq=1, kind="alert.acknowledged",
                                      state="acknowledged", source="hp-a1")) == "updated"
    assert queue.rows()[1].state == "acknowledged"


def test_a_snapshot_closes_what_it_no_longer_lists() -> None:
    queue = AlertQueue()
    fed(queue, payload("north", "a1", seq=1, first_press=1000))  # wall time 1001
    fed(queue, payload("north", "a2", seq=2, first_press=1000, source="hp-2"))
    fed(queue, payload("south", "b1", seq=1, first_press=1000))
    # a snapshot made before the newest event about a2 cannot say it was closed since
    assert fed_snapshot(queue, snapshot("north", 1001.5, ("a1", "P1", "open"))) == [
        "stale"]
    assert len(queue) == 3
    assert fed_snapshot(queue, snapshot("north", 1500.0, ("a2", "P1", "open"))) == [
        "stale", "gone"]
    assert [r.alert_id for r in queue.rows()] == ["a2", "b1"]  # other stations untouched
    # gone for good: neither a late event nor an older snapshot brings it back
    assert fed(queue, payload("north", "a1", seq=5, kind="alert.escalated")) == "stale"
    assert fed_snapshot(queue, snapshot("north", 900.0, ("a1", "P1", "open"),
                                                ("a2", "P1", "open"))) == ["stale", "stale"]
    assert fed_snapshot(queue, snapshot("south", 1500.0)) == ["gone"]
    assert [r.alert_id for r in queue.rows()] == ["a2"]


def test_a_resolved_alert_stays_gone_whatever_a_snapshot_says() -> None:
    queue = AlertQueue()
    fed(queue, payload("north", "a1", seq=1))
    fed(queue, payload("north", "a1", seq=2, kind="alert.resolved", state="resolved"))
    assert fed_snapshot(queue, snapshot("north", 9999.0, ("a1", "P1", "open"))) == [
        "stale"]
    assert queue.rows() == []


def test_snapshots_that_are_not_snapshots_change_nothing() -> None:
    queue = AlertQueue()
    fed(queue, payload("north", "a1", seq=1))
    good = json.loads(snapshot("north", 9999.0, ("a2", "P1", "open")))
    for bad in (b"", b"[]", b"{}", json.dumps({**good, "schema": "stationgw/event/1"}).encode(),
                json.dumps({**good, "alerts": {}}).encode()):
        assert fed_snapshot(queue, bad) == ["malformed"]
    # On north's topic, naming another station (or none): refused as such.
    for station in ("", "south"):
        raw = json.dumps({**good, "station": station}).encode()
        assert queue.feed_message("stationgw/v1/north/alerts", raw) == ["wrong_station"]
    # One entry off the contract spoils the whole snapshot: none of it is believed.
    entry = good["alerts"][0]
    for bad_entry in (1, {**entry, "alert_id": 7}, {**entry, "body": []},
                      {**entry, "class": "P9"}):
        raw = json.dumps({**good, "alerts": [bad_entry, entry]}).encode()
        assert fed_snapshot(queue, raw) == ["malformed"], bad_entry
    assert [r.alert_id for r in queue.rows()] == ["a1"]
    assert queue.dropped["schema"] == 8 and queue.dropped["wrong_station"] == 2
    # A closed alert has no place in a snapshot: that entry alone is skipped.
    raw = json.dumps({**good, "alerts": [{**entry, "state": "resolved"}, entry]}).encode()
    assert fed_snapshot(queue, raw) == ["malformed", "seeded", "gone"]
    assert [r.alert_id for r in queue.rows()] == ["a2"]


SNAPSHOTISH = st.fixed_dictionaries(
    {"schema": st.just("stationgw/alerts/1"), "station": st.sampled_from(["n", "s"]),
     "alerts": st.lists(st.fixed_dictionaries({}, optional={
         "alert_id": st.sampled_from(["a", "b"]) | st.text(max_size=2),
         "class": st.sampled_from(["P0", "P1", "P9"]),
         "state": st.sampled_from(["open", "assigned", "resolved", "x"]),
         "body": st.fixed_dictionaries({}, optional={
             "first_press": st.floats(allow_nan=False), "team": st.text(max_size=2),
             "press_count": st.integers(-5, 5), "eta_s": st.integers(0, 9)}),
     }), max_size=4)},
    optional={"wall_time": st.floats(allow_nan=False) | st.text(max_size=2)},
)


@given(st.lists(SNAPSHOTISH.map(lambda e: json.dumps(e).encode()), max_size=8))
def test_the_queue_survives_any_snapshot(payloads: list[bytes]) -> None:
    queue = AlertQueue()
    for raw in payloads:
        fed_snapshot(queue, raw)
    assert all(r.state in ("open", "assigned") for r in queue.rows())


JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=8),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner,
                                                                max_size=4),
    max_leaves=12,
)
EVENTISH = st.fixed_dictionaries(
    {"event_id": st.text(min_size=1, max_size=4)},
    optional={"class": st.sampled_from(["P0", "P1", "P2", "P3", "P9"]) | JSON,
              "station": st.text(max_size=4) | JSON, "seq": JSON, "wall_time": JSON,
              "kind": st.sampled_from(["help_point.stuck", "alert.resolved"]) | JSON,
              "body": st.fixed_dictionaries({}, optional={
                  "alert_id": st.text(max_size=3) | JSON, "state": JSON, "first_press": JSON,
                  "press_count": JSON, "team": JSON, "eta_s": JSON, "escalated": JSON,
              }) | JSON},
)


@given(st.lists(st.binary(max_size=64) | EVENTISH.map(lambda e: json.dumps(e).encode()),
                max_size=20))
def test_the_queue_survives_any_payload(payloads: list[bytes]) -> None:
    queue = AlertQueue()
    for raw in payloads:
        fed(queue, raw)
    rows = queue.rows()
    assert [(r.priority, r.raised_at) for r in rows] == sorted(
        (r.priority, r.raised_at) for r in rows
    )


@given(st.binary(max_size=200))
def test_parse_event_accepts_only_objects_with_an_event_id(raw: bytes) -> None:
    event = parse_event(raw)
    assert event is None or isinstance(event["event_id"], str)


# ---------------------------------------------------------------------------- keys and screen


KEYS = {"up": b"\x1b[A", "down": b"\x1b[B", "enter": b"\r", "esc": b"\x1b",
        "backspace": b"\x7f"}


@given(
    st.lists(st.sampled_from([*KEYS, "a", "s", "r", "q", "j", "k", "1", "9", "é", "€"]),
             max_size=20),
    st.data(),
)
def test_keys_survive_any_split_of_the_bytes(keys: list[str], data: st.DataObject) -> None:
    raw = b"".join(KEYS.get(k, k.encode()) for k in keys)
    cuts = sorted(data.draw(st.lists(st.integers(0, len(raw)), max_size=5)))
    reader, found = KeyReader(), []
    for start, end in zip([0, *cuts], [*cuts, len(raw)], strict=True):
        found += reader.feed(raw[start:end])
    found += reader.flush()
    assert found == keys


@given(st.lists(st.binary(max_size=16), max_size=8))
def test_any_bytes_give_keys_without_error(chunks: list[bytes]) -> None:
    reader = KeyReader()
    for chunk in chunks:
        reader.feed(chunk)
    reader.flush()
    assert not reader.pending


def mode(screen: Screen) -> str:
    return screen.mode  # a call, so mypy does not narrow the attribute between keys


def test_screen_keys_select_and_act_on_the_chosen_alert() -> None:
    queue = AlertQueue()
    fed(queue, payload("north", "older", seq=1, first_press=100))
    fed(queue, payload("south", "newer", seq=1, first_press=200))
    screen = Screen(queue)
    assert screen.key("a") == Send("north", "older", "acknowledge")
    assert screen.key("j") is None and screen.key("down") is None  # stops at the last row
    assert screen.key("r") == Send("south", "newer", "resolve")
    # a new P0 goes to the top; the selection stays on the alert, not the line
    fed(queue, payload("east", "urgent", seq=1, cls="P0", first_press=300))
    selected = screen.selected()
    assert selected is not None and selected.alert_id == "newer"
    for key in ("k", "up", "up"):
        screen.key(key)
    assert screen.key("s") is None and mode(screen) == "team"
    assert "[2] co_response" in screen.render(400.0)
    for key in ("2", "1", "5", "0", "backspace", "enter"):
        result = screen.key(key)
    assert result == Send("east", "urgent", "assign", team="co_response", eta_s=15 * 60)
    assert mode(screen) == "browse"
    screen.key("s")
    assert screen.key("esc") is None and mode(screen) == "browse"
    text = ANSI.sub("", screen.render(400.0, width=140))
    assert text.index("urgent") < text.index("older") < text.index("newer")
    assert "P0" in text and "1m40s" in text  # east's press was 100 s before "now"
    assert screen.key("q") == "quit"


def test_screen_with_nothing_to_act_on() -> None:
    screen = Screen(AlertQueue())
    assert screen.key("a") is None and screen.key("j") is None
    assert "no alert selected" in ANSI.sub("", screen.render(0.0))
    assert "(no open alerts)" in screen.render(0.0)


# ---------------------------------------------------------------------------- arguments


@given(st.from_regex(r"[a-z][a-z0-9-]{0,20}(\.[a-z0-9-]{1,10}){0,2}", fullmatch=True),
       st.integers(1, 65535))
def test_broker_urls_parse_to_host_and_port(host: str, port: int) -> None:
    assert parse_broker_url(f"mqtt://{host}:{port}") == (host, port)
    assert parse_broker_url(f"mqtt://{host}") == (host, 1883)


@given(st.text(max_size=30))
def test_bad_broker_urls_are_usage_errors(url: str) -> None:
    with contextlib.suppress(ConsoleUsageError):
        host, port = parse_broker_url(url)
        assert host and 1 <= port <= 65535


@pytest.mark.parametrize(
    ("url", "message"),
    [("http://broker:1883", "is not mqtt://HOST"), ("mqtt://broker:99999", "bad port"),
     ("broker:1883", "is not mqtt://HOST"), ("mqtt://u:pw@broker", "credentials")],
)
def test_broker_url_errors_say_what_to_use(url: str, message: str) -> None:
    with pytest.raises(ConsoleUsageError, match=message):
        parse_broker_url(url)


def test_share_groups() -> None:
    assert events_filter("stationgw/v1", "feeders") == "$share/feeders/stationgw/v1/+/events/#"
    assert events_filter("stationgw/v1") == "stationgw/v1/+/events/#"
    for bad in ("", "a/b", "a+", "#"):
        with pytest.raises(ConsoleUsageError, match="share group"):
            events_filter("stationgw/v1", bad)


# ---------------------------------------------------------------------------- running it


Station = tuple[Gateway, Subscriber, str]


@pytest.fixture
async def station(broker: Mosquitto, tmp_path: Path) -> AsyncIterator[Station]:
    """A gateway on mock pins under a topic prefix of its own, and a reference subscriber."""
    prefix = unique_prefix()
    config = station_config(
        tmp_path, [broker.url], gpio_pin_factory="mock", help_points=HELP_POINTS,
        mqtt={"topic_prefix": prefix}, dispatch={"ack_timeout_s": 120},
    )
    async with subscribe(broker.port, f"{prefix}/+/events/#") as sub:
        async with running(Gateway(config)) as gw:
            await asyncio.wait_for(gw.publisher.connected.wait(), 10)
            yield gw, sub, prefix


async def raise_alert(gw: Gateway, sub: Subscriber, hp: str, hold: bool = False) -> str:
    await tap(gw, hp, length=1.0 if hold else 0.15)
    events = await sub.wait_for(lambda m: any(p["source"] == hp for _, p in m))
    await lamp_becomes(gw, hp, "sent")
    return next(str(p["body"]["alert_id"]) for _, p in events if p["source"] == hp)


async def test_watch_json_prints_every_event_once(broker: Mosquitto, station: Station) -> None:
    gw, sub, prefix = station
    with watching(broker.port, prefix) as watch:
        await watch.connected()
        await raise_alert(gw, sub, "hp-1")
        await tap(gw, "hp-1")  # joins the alert: a help_point.repeat
        await raise_alert(gw, sub, "hp-2", hold=True)  # a press, then a P0 hold
        await sub.wait_for(lambda m: len(m) >= 4)
        first_topic, first = sub.messages[0]
        with publisher(broker.port) as client:  # a gateway re-sends after a reconnect
            publish_all(client, [(first_topic, json.dumps(first).encode())] * 2)
        await sub.wait_for(lambda m: len(m) >= 6)
        await watch.until(lambda: len(watch.lines) >= 4)
        await asyncio.sleep(0.5)  # any duplicate would have arrived by now
        assert watch.events() == [p for _, p in sub.messages[:4]]  # as published, in order
        assert [e["kind"] for e in watch.events()] == [
            "help_point.press", "help_point.repeat", "help_point.press", "help_point.hold"
        ]
        assert watch.stop("sigterm") == 0


async def test_a_named_watch_gets_what_was_published_while_it_was_away(
    broker: Mosquitto,
) -> None:
    prefix, desk = unique_prefix(), f"desk-{uuid.uuid4().hex[:8]}"
    events = [(f"{prefix}/st-{i % 3}/events/P1", payload(f"st-{i % 3}", f"a{i}", seq=i + 1))
              for i in range(20)]
    with publisher(broker.port) as client:
        with watching(broker.port, prefix, client_id=desk) as watch:
            assert "new session" in await watch.connected()
            publish_all(client, events[:5])
            await watch.until(lambda: len(watch.lines) == 5)
            assert watch.stop("eof") == 0  # a pipe's EOF ends it
        publish_all(client, events[5:])  # nobody listening: the broker keeps them
        with watching(broker.port, prefix, client_id=desk) as watch:
            assert "resumed session" in await watch.connected()
            await watch.until(lambda: len(watch.lines) == 15)
            assert watch.events() == [json.loads(p) for _, p in events[5:]]


async def test_share_workers_split_the_stream(broker: Mosquitto) -> None:
    prefix, group = unique_prefix(), f"g{uuid.uuid4().hex[:6]}"
    events = [(f"{prefix}/st-{i % 5}/events/P1", payload(f"st-{i % 5}", f"a{i}", seq=i + 1))
              for i in range(300)]
    with watching(broker.port, prefix, share=group) as one, \
            watching(broker.port, prefix, share=group) as two:
        assert f"$share/{group}/{prefix}/+/events/#" in await one.connected()
        await two.connected()
        with publisher(broker.port) as client:
            publish_all(client, events)
        await one.until(lambda: len(one.lines) + len(two.lines) >= 300)
        await asyncio.sleep(0.3)
        a = [e["event_id"] for e in one.events()]
        b = [e["event_id"] for e in two.events()]
    assert a and b, (len(a), len(b))
    assert not set(a) & set(b)
    assert sorted(a + b) == sorted(json.loads(p)["event_id"] for _, p in events)


async def test_one_shot_acknowledges_and_resolves_a_live_alert(
    broker: Mosquitto, station: Station, capsys: pytest.CaptureFixture[str]
) -> None:
    gw, sub, prefix = station
    sid = gw.config.station_id
    alert_id = await raise_alert(gw, sub, "hp-1")
    code = await asyncio.to_thread(one_shot, "127.0.0.1", broker.port, "ack", alert_id, sid,
                                   prefix=prefix, timeout=10)
    assert code == 0
    await lamp_becomes(gw, "hp-1", "acknowledged")
    assert f"applied: acknowledge alert {alert_id}" in capsys.readouterr().out
    code = await asyncio.to_thread(one_shot, "127.0.0.1", broker.port, "assign", alert_id, sid,
                                   team="co_response", eta_s=600, prefix=prefix)
    assert code == 0
    code = await asyncio.to_thread(one_shot, "127.0.0.1", broker.port, "resolve", alert_id,
                                   sid, prefix=prefix)
    assert code == 0
    await lamp_becomes(gw, "hp-1", "idle")
    await sub.wait_for(lambda m: any(p["kind"] == "alert.resolved" for _, p in m))
    assigned = next(p for _, p in sub.messages if p["kind"] == "alert.assigned")
    assert assigned["body"]["team"] == "co_response" and assigned["body"]["eta_s"] == 600
    # a second resolve is refused by the gateway, and says why
    code = await asyncio.to_thread(one_shot, "127.0.0.1", broker.port, "resolve", alert_id,
                                   sid, prefix=prefix)
    assert code == 1
    assert "rejected: invalid_transition" in capsys.readouterr().err


async def test_one_shot_exit_codes_for_refusals_and_silence(
    broker: Mosquitto, station: Station, capsys: pytest.CaptureFixture[str]
) -> None:
    gw, _sub, prefix = station
    sid = gw.config.station_id
    code = await asyncio.to_thread(one_shot, "127.0.0.1", broker.port, "ack", "no-such-alert",
                                   sid, prefix=prefix)
    assert code == 1
    assert "rejected: unknown_alert" in capsys.readouterr().err
    code = await asyncio.to_thread(one_shot, "127.0.0.1", broker.port, "ack", "x",
                                   "no-such-station", prefix=prefix, timeout=0.5)
    assert code == 2
    assert "holds no status for it (is --station right?)" in capsys.readouterr().err
    code = await asyncio.to_thread(one_shot, "127.0.0.1", broker.port, "assign", "x", sid,
                                   prefix=prefix)
    assert code == 2
    assert "assign needs a team" in capsys.readouterr().err


class Terminal:
    """`interactive` on a real pseudo-terminal, 160x40."""

    def __init__(self, port: int, prefix: str) -> None:
        master, slave = pty.openpty()
        fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 40, 160, 0, 0))
        code = (
            "import sys; from dispatch.console import interactive; "
            f"sys.exit(interactive('127.0.0.1', {port}, prefix={prefix!r}))"
        )
        self.proc = subprocess.Popen(
            [sys.executable, "-c", code], cwd=ROOT, stdin=slave, stdout=slave, stderr=slave,
            start_new_session=True,
        )
        os.close(slave)
        self.master = master
        self.output = bytearray()
        self._thread = threading.Thread(target=self._read)
        self._thread.start()

    def _read(self) -> None:
        while True:
            try:
                data = os.read(self.master, 65536)
            except OSError:  # EIO: the console closed the terminal
                return
            if not data:
                return
            self.output += data

    def screen(self) -> str:
        """The newest full frame, without ANSI attributes."""
        text = self.output.decode(errors="replace")
        return ANSI.sub("", text.rsplit("\x1b[H\x1b[2J", 1)[-1])

    async def shows(self, text: str, timeout: float = 20) -> str:
        try:
            async with asyncio.timeout(timeout):
                while text not in self.screen():
                    await asyncio.sleep(0.02)
        except TimeoutError:
            raise AssertionError(f"{text!r} not on the screen:\n{self.screen()}") from None
        return self.screen()

    def press(self, keys: bytes) -> None:
        os.write(self.master, keys)

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        os.close(self.master)
        self._thread.join(5)


def row_of(screen: str, alert_id: str) -> str:
    return next(line for line in screen.splitlines() if line.rstrip().endswith(alert_id[:8]))


async def test_the_live_screen_acknowledges_the_top_alert(
    broker: Mosquitto, station: Station
) -> None:
    gw, sub, prefix = station
    term = Terminal(broker.port, prefix)
    try:
        await term.shows("| connected |")
        crisis = await raise_alert(gw, sub, "hp-1")
        emergency = await raise_alert(gw, sub, "hp-2", hold=True)
        await sub.wait_for(lambda m: any(p["kind"] == "help_point.hold" for _, p in m))
        screen = await term.shows("P0")
        # P0 first though raised later; the selection stays on the alert it was on, so a
        # key meant for one alert never lands on another that just arrived
        assert screen.index(emergency[:8]) < screen.index(crisis[:8])
        assert row_of(screen, crisis).startswith("> P1")
        term.press(b"\x1b[A")  # up, to the top alert
        await term.shows("> P0")
        term.press(b"a")
        await lamp_becomes(gw, "hp-2", "acknowledged")
        await term.shows(f"acknowledge {emergency[:8]} at {gw.config.station_id}: applied")
        assert "acknowledged" in row_of(await term.shows("acknowledged  "), emergency)
        assert gw.help_points is not None
        assert gw.help_points.units["hp-1"].lamp.state == "sent"  # only the top one
        # down to the P1 alert, assign a team with an ETA, then resolve it
        term.press(b"\x1b[B")
        await term.shows("> P1")
        term.press(b"s")
        await term.shows("team? [1] crisis_team")
        term.press(b"212\r")
        await term.shows(f"assign {crisis[:8]} at {gw.config.station_id}: applied")
        assert "co_response, 12min" in row_of(await term.shows("12min"), crisis)
        term.press(b"r")
        await lamp_becomes(gw, "hp-1", "idle")
        await term.shows(f"resolve {crisis[:8]} at {gw.config.station_id}: applied")
        screen = await term.shows("1 open alert(s)")
        assert not any(line.rstrip().endswith(crisis[:8]) for line in screen.splitlines())
        term.press(b"q")
        assert await asyncio.to_thread(term.proc.wait, 10) == 0
    finally:
        term.close()


async def test_the_live_screen_shows_alerts_raised_before_it_started(
    broker: Mosquitto, station: Station
) -> None:
    gw, sub, prefix = station
    crisis = await raise_alert(gw, sub, "hp-1")
    emergency = await raise_alert(gw, sub, "hp-2", hold=True)
    await sub.wait_for(lambda m: any(p["kind"] == "help_point.hold" for _, p in m))
    term = Terminal(broker.port, prefix)  # a fresh desk, after both were announced
    try:
        screen = await term.shows("2 open alert(s)")
        assert row_of(screen, emergency).lstrip("> ").startswith("P0")
        assert row_of(screen, crisis).lstrip("> ").startswith("P1")
        assert "open" in row_of(screen, crisis) and "hp-1" in row_of(screen, crisis)
        # it is a live queue like any other: the top alert can be acknowledged from it
        term.press(b"a")
        await lamp_becomes(gw, "hp-2", "acknowledged")
        assert "acknowledged" in row_of(await term.shows("acknowledged  "), emergency)
        term.press(b"q")
        assert await asyncio.to_thread(term.proc.wait, 10) == 0
    finally:
        term.close()
