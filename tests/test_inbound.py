"""Dispatch trusts nothing from a station: identity from the topic, strict JSON, the
contract's schema, and nothing a station writes reaches a dispatcher's terminal as a control.

Reproduced before the fix: station "evil", publishing only on its own topics (which the ACL
allows), closed station "victim"'s P0 with one retained snapshot, forged a P0 at victim,
and erased victim's row from the screen with control characters; NaN in a snapshot crashed
every console at start.
"""

from __future__ import annotations

import asyncio
import json
import re
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from dispatch.console import AlertQueue, Screen
from dispatch.inbound import DROP_REASONS, Dropped, Inbound, printable, read
from gateway.core.model import AlertRecord, Event, Priority
from gateway.testing.mosquitto import Mosquitto
from gateway.uplink.reports import open_alerts_message
from gateway.uplink.topics import Topics, json_payload
from tests.helpers import publish_all, publisher, unique_prefix, watching

PREFIX = "stationgw/v1"
CHANNELS = ["events/P0", "events/P1", "events/P3", "status", "health", "alerts", "replies",
            "commands", "events", "events/P0/x", "status/x", ""]


def event_bytes(station: str, alert_id: str, *, seq: int, cls: str = "P0",
                location: str = "platform 1", kind: str = "help_point.hold") -> bytes:
    details = {"help_point": "hp-1", "location": location, "alert_id": alert_id,
               "press_count": 1, "first_press": 1000.0, "last_press": 1000.0, "held": True,
               "escalated": False, "evidence": ["held"], "state": "open"}
    event = Event(kind, "hp-1", Priority.parse(cls), details)
    return Topics(PREFIX, station).render(event, seq, 1000.0 + seq)[1]


def snapshot_bytes(station: str, *alert_ids: str) -> bytes:
    records = [AlertRecord(a, "hp-1", "open", Priority.P0, {"location": "x"}) for a in alert_ids]
    return json_payload(open_alerts_message(station, 5000.0, records))


JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=8),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner,
                                                                max_size=4),
    max_leaves=16,
)


def _mutated(raw: bytes, key: str, value: Any) -> bytes:
    body = json.loads(raw)
    body[key] = value
    return json.dumps(body).encode()  # NaN and Infinity written as Python writes them


PAYLOADS = (
    st.binary(max_size=300)
    | JSON.map(lambda v: json.dumps(v).encode())
    | st.builds(_mutated, st.just(event_bytes("victim", "a1", seq=1)),
                st.sampled_from(["station", "seq", "wall_time", "class", "body", "kind", "x"]),
                JSON)
    | st.builds(_mutated, st.just(snapshot_bytes("victim", "a1")),
                st.sampled_from(["station", "wall_time", "alerts", "schema"]), JSON)
    | st.integers(1, 5000).map(lambda n: b"[" * n)
)


@settings(max_examples=1500, deadline=None)
@given(station=st.sampled_from(["victim", "evil", "Bad Id", ""]),
       channel=st.sampled_from(CHANNELS), payload=PAYLOADS)
def test_read_never_raises_and_passes_only_strict_contract_json_from_its_own_station(
    station: str, channel: str, payload: bytes
) -> None:
    topic = f"{PREFIX}/{station}/{channel}".rstrip("/")
    result = read(topic, payload, PREFIX)
    if isinstance(result, Dropped):
        assert result.reason in DROP_REASONS
        return
    assert isinstance(result, Inbound)
    assert result.station == station == result.message["station"]
    json.dumps(result.message, allow_nan=False)  # strict JSON: no NaN or Infinity inside


@settings(max_examples=500, deadline=None)
@given(payloads=st.lists(st.tuples(st.sampled_from(["victim", "evil"]),
                                   st.sampled_from(["events/P0", "alerts"]), PAYLOADS),
                         max_size=12))
def test_the_queue_survives_any_message_on_any_topic(
    payloads: list[tuple[str, str, bytes]]
) -> None:
    queue = AlertQueue()
    for station, channel, raw in payloads:
        queue.feed_message(f"{PREFIX}/{station}/{channel}", raw)
    screen = Screen(queue)
    screen.render(now=2000.0)  # never raises, whatever was folded in


def test_evil_cannot_close_forge_or_hide_victims_alerts() -> None:
    queue = AlertQueue()
    assert queue.feed_message(f"{PREFIX}/victim/events/P0",
                              event_bytes("victim", "real", seq=1)) == ["new"]
    # 1. A retained snapshot on evil's own topic that names victim and lists nothing.
    assert queue.feed_message(f"{PREFIX}/evil/alerts", snapshot_bytes("victim")) == [
        "wrong_station"]
    # 2. A forged P0 "at victim", on evil's own events topic.
    assert queue.feed_message(f"{PREFIX}/evil/events/P0",
                              event_bytes("victim", "forged", seq=2)) == ["wrong_station"]
    # 3. evil's own events with victim's alert id are evil's: victim's row is untouched.
    assert queue.feed_message(f"{PREFIX}/evil/events/P0", event_bytes(
        "evil", "real", seq=3, kind="alert.resolved")) == ["new"]
    assert [(r.station, r.alert_id) for r in queue.rows() if r.station == "victim"] == [
        ("victim", "real")]
    assert queue.get("victim", "forged") is None
    # A console started later, fed the same retained snapshot, still shows victim's P0.
    later = AlertQueue()
    later.feed_message(f"{PREFIX}/evil/alerts", snapshot_bytes("victim"))
    later.feed_message(f"{PREFIX}/victim/alerts", snapshot_bytes("victim", "real"))
    assert [r.alert_id for r in later.rows()] == ["real"]


def test_nan_and_infinity_are_refused_not_crashed_on() -> None:
    queue = AlertQueue()
    for key, value in (("wall_time", float("nan")), ("seq", float("inf")),
                       ("wall_time", float("-inf"))):
        raw = _mutated(event_bytes("victim", "a1", seq=1), key, value)
        assert queue.feed_message(f"{PREFIX}/victim/events/P0", raw) == ["malformed"]
    raw = _mutated(snapshot_bytes("victim", "a1"), "wall_time", float("inf"))
    assert queue.feed_message(f"{PREFIX}/victim/alerts", raw) == ["malformed"]
    status = json.dumps({"state": "online", "station": "victim", "version": "1",
                         "wall_time": float("inf")}).encode()
    assert isinstance(read(f"{PREFIX}/victim/status", status, PREFIX), Dropped)
    assert queue.rows() == []


OUR_ATTRIBUTES = re.compile(r"\x1b\[H\x1b\[2J|\x1b\[7m|\x1b\[1;31m|\x1b\[0m")
CONTROLS = st.text(st.characters(codec="utf-8", categories=("Cc", "Cf", "Zl", "Zp")),
                   min_size=1, max_size=20) | st.just("\x1b[2J\x1b[H\r\x08\x08")


@settings(max_examples=300, deadline=None)
@given(location=st.text(max_size=10) | CONTROLS, evil=CONTROLS)
def test_no_station_text_reaches_the_terminal_as_a_control(location: str, evil: str) -> None:
    queue = AlertQueue()
    queue.feed_message(f"{PREFIX}/victim/events/P0",
                       event_bytes("victim", "a1", seq=1, location=location))
    queue.feed_message(f"{PREFIX}/evil/events/P0",
                       event_bytes("evil", "a1" + evil, seq=1, location=evil))
    frame = OUR_ATTRIBUTES.sub("", Screen(queue).render(now=2000.0, width=200))
    assert not any(unicodedata_is_control(ch) for ch in frame.replace("\n", "")), repr(frame)
    assert "victim" in frame  # the other station's row is still there


def unicodedata_is_control(ch: str) -> bool:
    import unicodedata
    return unicodedata.category(ch) in ("Cc", "Cs") or ch in "\u202e\u202d\u2066\u2067"


@given(st.text())
def test_printable_keeps_printable_text_as_it_is(text: str) -> None:
    if text.isprintable():
        assert printable(text) == text
    assert printable(text).isprintable() or all(
        not unicodedata_is_control(ch) for ch in printable(text))


async def test_watch_json_prints_only_what_a_station_may_say(broker: Mosquitto) -> None:
    prefix = unique_prefix()
    good = event_bytes("victim", "real", seq=1)
    with watching(broker.port, prefix) as watch:
        await watch.connected()
        with publisher(broker.port) as client:
            publish_all(client, [
                (f"{prefix}/evil/events/P0", event_bytes("victim", "forged", seq=2)),
                (f"{prefix}/victim/events/P0",
                 _mutated(event_bytes("victim", "nan", seq=3), "wall_time", float("nan"))),
                (f"{prefix}/victim/events/P0", good),
            ])
        await watch.until(lambda: len(watch.lines) >= 1)
        await asyncio.sleep(0.5)
        lines = list(watch.lines)
        assert [json.loads(line)["body"]["alert_id"] for line in lines] == ["real"]
        for line in lines:  # strict JSON: Python's lenient reader is not needed
            json.loads(line, parse_constant=lambda name: (_ for _ in ()).throw(ValueError(name)))
        assert watch.stop("sigterm") == 0
    status = "".join(watch.status)
    assert "wrong_station" in status and "malformed" in status
