"""The fast read of the requests (`record.load_requests`) gives what a row-by-row reading of
the same alerts gives: the hour of the week across daylight-saving changes, the team that
is missing, a location holding the key separator, the service times."""

from __future__ import annotations

import datetime as dt
import math
from pathlib import Path
from zoneinfo import ZoneInfo

import pandas as pd
import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st
from sqlalchemy import Engine, insert

from dispatch.analysis.record import load_requests, placed
from dispatch.hub.schema import alerts
from dispatch.hub.store import migrate, open_engine

ZONE = "Europe/Zurich"
# 2026-03-29 01:00 UTC: clocks go from 02:00 CET to 03:00 CEST; 2026-10-25 01:00 UTC: back.
SPRING, AUTUMN = 1774746000.0, 1792890000.0
SINCE, UNTIL = SPRING - 7 * 86400, AUTUMN + 7 * 86400


def _alert(n: int, opened: float, **values: object) -> dict[str, object]:
    row: dict[str, object] = {
        "station": "north-gate", "alert_id": f"a{n:04d}", "class": "P1", "state": "resolved",
        "source": "hp-1", "location": "platform 1", "requested_response": "crisis_team",
        "opened_at": opened, "acknowledged_at": opened + 30.5, "assigned_at": opened + 60,
        "closed_at": opened + 900.25, "team": "crisis_team", "escalations": 0,
        "last_seq": n, "updated_at": opened + 900.25}
    row.update(values)
    return row


@pytest.fixture
def engine(tmp_path: Path) -> Engine:
    engine = open_engine(f"sqlite:///{tmp_path / 'hub.db'}")
    migrate(engine)
    return engine


def test_hour_of_week_follows_the_zones_clock_across_dst(engine: Engine) -> None:
    around = [SPRING + s for s in (-5400, -1, 0, 1800, 5400)]
    around += [AUTUMN + s for s in (-5400, -1, 0, 1800, 5400)]
    around += [SINCE, UNTIL - 0.001]
    with engine.begin() as conn:
        conn.execute(insert(alerts), [_alert(n, t) for n, t in enumerate(around)])
    frame = load_requests(engine, SINCE, UNTIL, ZONE).frame.sort_values("alert_id")
    zone = ZoneInfo(ZONE)
    local = [dt.datetime.fromtimestamp(t, zone) for t in around]
    expected = [d.weekday() * 24 + d.hour for d in local]
    assert frame["hour_of_week"].tolist() == expected
    assert frame["week"].tolist() == [int((t - SINCE) // (7 * 86400)) for t in around]
    engine.dispose()


@settings(max_examples=80, deadline=None)
@example(times=[1793494799.9999995], zone=ZONE)  # half a microsecond before an hour
@given(times=st.lists(st.integers(int(SINCE), int(UNTIL) - 1)
                      | st.floats(SINCE, UNTIL, exclude_max=True), min_size=1, max_size=12),
       zone=st.sampled_from([ZONE, "America/New_York", "Asia/Kolkata", "America/St_Johns",
                             "Australia/Lord_Howe", "Pacific/Chatham", "UTC"]))
def test_the_hour_of_week_is_the_zones_clock_for_any_times(times: list[float],
                                                            zone: str) -> None:
    """Whole seconds or not (pandas picks its time unit from the data: whole seconds alone
    once put every request in the wrong hour), in zones with half-hour offsets and DST of
    half an hour, each request's hour of week and week are the agency's clock's."""
    opened = [float(t) for t in times]
    frame = placed(pd.DataFrame({"opened_at": opened}), SINCE, zone)
    # The hour begins at its first second: from the whole second (fromtimestamp rounds a
    # time half a microsecond before an hour into that hour).
    local = [dt.datetime.fromtimestamp(math.floor(t), ZoneInfo(zone)) for t in opened]
    assert frame["hour_of_week"].tolist() == [d.weekday() * 24 + d.hour for d in local]
    assert frame["week"].tolist() == [int((t - SINCE) // (7 * 86400)) for t in opened]


def test_the_keys_parts_come_back_whole(engine: Engine) -> None:
    odd = "stairs\x1fwest, \"B\" = 2"  # the separator itself, inside the free text
    rows = [
        _alert(0, SPRING, location=odd),
        _alert(1, SPRING + 60, team=None, state="cancelled", acknowledged_at=None,
               assigned_at=None, **{"class": "P2"}),
        _alert(2, SPRING + 120, station="lake", requested_response="ambassador",
               team="co_response", escalations=2, location=""),
    ]
    with engine.begin() as conn:
        conn.execute(insert(alerts), rows)
    for with_ids in (True, False):
        frame = load_requests(engine, SINCE, UNTIL, ZONE, with_ids=with_ids).frame
        frame = frame.sort_values("opened_at", ignore_index=True)
        assert ("alert_id" in frame.columns) is with_ids
        assert frame["station"].tolist() == ["north-gate", "north-gate", "lake"]
        assert frame["class"].tolist() == ["P1", "P2", "P1"]
        assert frame["location"].tolist() == [odd, "platform 1", ""]
        assert frame["requested_response"].tolist() == ["crisis_team"] * 2 + ["ambassador"]
        assert frame["team"].isna().tolist() == [False, True, False]
        assert frame["team"].dropna().tolist() == ["crisis_team", "co_response"]
        assert frame["escalations"].tolist() == [0, 0, 2]
        assert frame["to_ack_s"].isna().tolist() == [False, True, False]
        assert frame["to_ack_s"].iat[0] == (SPRING + 30.5) - SPRING
        # Only a resolved request has a time to resolve.
        assert frame["to_resolve_s"].isna().tolist() == [False, True, False]
        assert frame["to_resolve_s"].iat[2] == (SPRING + 120 + 900.25) - (SPRING + 120)
    engine.dispose()


def test_no_requests_is_an_empty_frame(engine: Engine) -> None:
    requests = load_requests(engine, SINCE, UNTIL, ZONE)
    assert len(requests.frame) == 0
    assert {"station", "team", "hour_of_week", "band", "to_ack_s"} <= set(requests.frame)
    engine.dispose()
