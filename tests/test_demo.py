"""The demo's hub: its operator and secret, and the read-back that proves the scene landed in
the hub's database (the whole demo runs in tests/test_processes.py)."""

from __future__ import annotations

import json
import stat
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from argon2 import PasswordHasher

from dispatch.inbound import read
from gateway.core.model import Event, Priority
from gateway.ops.demo import OPERATOR, STATION, DemoHub, DispatchView
from gateway.uplink.topics import Topics


@pytest.fixture
def hub(tmp_path: Path) -> Iterator[DemoHub]:
    made = DemoHub(tmp_path, "mqtt://127.0.0.1:1")
    made.prepare()
    try:
        yield made
    finally:
        made.stop()


def press(alert_id: str, seq: int) -> tuple[str, bytes]:
    """A station's press event about `alert_id`, as the gateway publishes it."""
    now = time.time()
    event = Event("help_point.press", "hp-1", Priority.P1, {
        "help_point": "hp-1", "location": "platform 1", "platform": "1",
        "alert_id": alert_id, "state": "open", "press_count": 1, "first_press": now,
        "last_press": now, "held": False, "escalated": False, "evidence": ["button pressed"],
    })
    return Topics("stationgw/v1", STATION).render(event, seq, now)


def seen_by(view: DispatchView, *messages: tuple[str, bytes]) -> None:
    for _, payload in messages:
        view.show(json.loads(payload))


def record(hub: DemoHub, *messages: tuple[str, bytes]) -> None:
    assert hub.store is not None
    hub.store.record([read(topic, payload, "stationgw/v1") for topic, payload in messages])


def test_the_operator_logs_in_with_the_printed_password_made_for_this_run(
    hub: DemoHub, tmp_path: Path
) -> None:
    assert hub.store is not None
    stored = hub.store.operator_hash(OPERATOR)
    assert stored is not None and PasswordHasher().verify(stored, hub.password)
    assert len(hub.password) >= 12  # what `stationgw hub operator add` asks for
    assert DemoHub(tmp_path, "mqtt://127.0.0.1:1").password != hub.password
    secret = tmp_path / "web-secret"
    assert len(secret.read_text()) >= 32  # what `hub run --web` asks for
    assert stat.S_IMODE(secret.stat().st_mode) == 0o600
    assert hub.url.startswith("http://127.0.0.1:")


async def test_the_report_passes_when_the_hub_holds_every_alert_and_event(
    hub: DemoHub, capsys: pytest.CaptureFixture[str]
) -> None:
    messages = (press("alert-a", 1), press("alert-b", 2))
    view = DispatchView(0)
    seen_by(view, *messages)
    record(hub, *messages)
    assert await hub.report(view, limit_s=0)
    out = capsys.readouterr().out
    assert "alerts: 2 recorded; the scene raised 2" in out
    assert "P1: 2 open" in out
    assert "events: 2 stored, each once by event_id; dispatch saw 2" in out
    assert f"{STATION}: seq 1..2, 0 lost (none)" in out
    assert "HUB INCOMPLETE" not in out


async def test_the_report_fails_when_the_hub_recorded_fewer_alerts_than_the_scene_raised(
    hub: DemoHub, capsys: pytest.CaptureFixture[str]
) -> None:
    first, second, third = press("alert-a", 1), press("alert-b", 2), press("alert-c", 3)
    view = DispatchView(0)
    seen_by(view, first, second, third)
    record(hub, first, third)  # the hub never got alert-b's event
    assert not await hub.report(view, limit_s=0)
    out = capsys.readouterr().out
    assert "alerts: 2 recorded; the scene raised 3" in out
    assert "HUB INCOMPLETE: the hub recorded 2 of the 3 alerts the scene raised" in out
    assert "alert-b" in out
    assert "1 of the 3 events dispatch saw are not in the hub's database" in out
    assert f"{STATION}: seq 1..3, 1 lost (2)" in out


async def test_the_report_fails_when_the_hub_recorded_nothing(
    hub: DemoHub, capsys: pytest.CaptureFixture[str]
) -> None:
    view = DispatchView(0)
    seen_by(view, press("alert-a", 1))
    assert not await hub.report(view, limit_s=0)
    assert "the hub recorded 0 of the 1 alerts" in capsys.readouterr().out
