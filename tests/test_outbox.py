"""The SQLite outbox on its own: durability settings, drain order, bounds, disk full."""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import example, given
from hypothesis import strategies as st

from gateway.contract.asyncapi import EventMessage
from gateway.core.model import REQUESTED_RESPONSE, Event, Priority
from gateway.outbox.sqlite import MIGRATIONS, Outbox, connect
from gateway.uplink.topics import Topics

TOPICS = Topics("stationgw/v1", "t-outbox")


def event(priority: Priority, size: int = 10) -> Event:
    return Event("sensor.reading", "s1", priority, {"pad": "x" * size})


@pytest.fixture
def outbox(tmp_path: Path) -> Iterator[Outbox]:
    with Outbox(tmp_path / "outbox.db", TOPICS.render, max_rows=100, max_bytes=10**8) as box:
        yield box


def test_every_connection_is_wal_with_synchronous_full(tmp_path: Path) -> None:
    conn = connect(tmp_path / "x.db")
    assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    assert conn.execute("PRAGMA synchronous").fetchone()[0] == 2
    conn.close()
    ro = connect(tmp_path / "x.db", readonly=True)
    assert ro.execute("PRAGMA synchronous").fetchone()[0] == 2
    ro.close()


def test_migrations_are_recorded_once(tmp_path: Path) -> None:
    for _ in range(2):
        with Outbox(tmp_path / "m.db", TOPICS.render) as box:
            names = [n for (n,) in box.conn.execute("SELECT name FROM migrations")]
    assert names == [name for name, _ in MIGRATIONS]
    assert len(names) >= 2


def test_accepted_row_is_committed_and_visible_to_another_connection(outbox: Outbox) -> None:
    result = outbox.accept([event(Priority.P1)])
    row = result.rows[0]
    assert row.durable and result.error is None
    other = sqlite3.connect(outbox.path)
    stored = other.execute(
        "SELECT event_id, class, attempts, state FROM outbox WHERE seq = ?", (row.seq,)
    ).fetchone()
    other.close()
    assert stored == (row.event_id, 1, 0, "pending")


def test_drain_order_is_class_then_oldest(outbox: Outbox) -> None:
    order = [Priority.P3, Priority.P1, Priority.P2, Priority.P0, Priority.P1, Priority.P3]
    rows = [outbox.accept([event(p)]).rows[0] for p in order]
    drained = outbox.page(None, 100)
    assert [r.seq for r in drained] == [r.seq for r in sorted(rows, key=lambda r: r.key)]
    # keyset paging continues where the last page ended
    first = outbox.page(None, 2)
    rest = outbox.page(first[-1].key, 100)
    assert [r.seq for r in first + rest] == [r.seq for r in drained]


def test_sequence_stays_monotonic_after_rows_leave_and_restart(tmp_path: Path) -> None:
    path = tmp_path / "seq.db"
    with Outbox(path, TOPICS.render) as box:
        rows = box.accept([event(Priority.P1), event(Priority.P1)]).rows
        box.delivered([r.seq for r in rows])
    with Outbox(path, TOPICS.render) as box:
        (again,) = box.accept([event(Priority.P1)]).rows
    assert again.seq > rows[-1].seq


def test_full_store_evicts_oldest_lowest_class_and_keeps_alerts(outbox: Outbox) -> None:
    p2 = outbox.accept([event(Priority.P2)]).rows
    p3 = outbox.accept([event(Priority.P3) for _ in range(99)]).rows
    result = outbox.accept([event(Priority.P1)])
    assert result.rows[0].durable
    assert [r.seq for r in result.evicted] == [p3[0].seq]  # oldest P3 first, not the P2
    result = outbox.accept([event(Priority.P0) for _ in range(99)])
    evicted = {r.priority for r in result.evicted}
    assert evicted == {Priority.P3, Priority.P2}
    remaining = {r.priority for r in outbox.page(None, 1000)}
    assert remaining == {Priority.P0, Priority.P1}
    assert len(outbox.page(None, 1000)) == 100
    assert p2[0].seq in {r.seq for r in result.evicted}
    # only alerts left: the bound gives way rather than drop a P0/P1
    result = outbox.accept([event(Priority.P1)])
    assert result.evicted == [] and result.rows[0].durable
    assert outbox.depth().rows == 101


def test_byte_bound_evicts_too(tmp_path: Path) -> None:
    with Outbox(tmp_path / "b.db", TOPICS.render, max_rows=10**6, max_bytes=100_000) as box:
        box.accept([event(Priority.P3, size=1000) for _ in range(90)])
        result = box.accept([event(Priority.P1, size=20_000)])
        assert result.evicted and all(r.priority == Priority.P3 for r in result.evicted)
        assert box.depth().bytes <= 100_000


def test_ttl_expires_only_configured_low_classes(tmp_path: Path) -> None:
    with Outbox(tmp_path / "t.db", TOPICS.render, ttl_s={Priority.P3: 60}) as box:
        old = box.accept([event(Priority.P3), event(Priority.P1), event(Priority.P2)]).rows
        expired = box.expire(now=old[0].aged_from + 61)
        assert [r.seq for r in expired] == [old[0].seq]
        assert {r.priority for r in box.page(None, 10)} == {Priority.P1, Priority.P2}


def test_disk_full_keeps_rows_in_memory_and_recovers(outbox: Outbox) -> None:
    outbox.accept([event(Priority.P3)])
    (pages,) = outbox.conn.execute("PRAGMA page_count").fetchone()
    outbox.conn.execute(f"PRAGMA max_page_count = {pages}")
    result = outbox.accept([event(Priority.P1, size=50_000)])
    assert result.error is not None and "full" in result.error
    held = result.rows[0]
    assert not held.durable
    assert held.seq in {r.seq for r in outbox.page(None, 10)}  # still drains
    assert outbox.memory_rows == 1
    assert outbox.depth().by_class["P1"] == {"memory": 1}
    outbox.conn.execute("PRAGMA max_page_count = 1073741823")
    assert outbox.retry_memory() is None
    assert outbox.memory_rows == 0
    assert outbox.depth().by_class["P1"] == {"pending": 1}


def test_refused_rows_are_kept_and_skipped_until_requeued(outbox: Outbox) -> None:
    (row,) = outbox.accept([event(Priority.P1)]).rows
    outbox.mark([(row.seq, 1, "refused", "Not authorized")])
    assert outbox.page(None, 10) == []
    assert outbox.depth().by_class["P1"] == {"refused": 1}
    assert outbox.requeue_refused() == 1
    (again,) = outbox.page(None, 10)
    assert again.event_id == row.event_id and again.attempts == 1


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(), inner, max_size=4),
    max_leaves=12,
)


def strict_json(payload: bytes | str) -> Any:
    """Parse JSON, keeping key order (objects as lists of pairs); NaN or Infinity fails."""

    def refuse(token: str) -> None:
        raise AssertionError(f"{token} is not JSON")

    return json.loads(payload, object_pairs_hook=list, parse_constant=refuse)


@given(
    priority=st.sampled_from(Priority),
    kind=st.text(),
    source=st.text(),
    body=st.dictionaries(st.text(), json_values, max_size=5),
    seq=st.integers(1, 2**62),
    wall_time=st.floats(0, 2e10),
)
@example(  # pydantic writes these as null and 0.00001, json as NaN (not JSON) and 1e-05
    priority=Priority.P3, kind="sensor.reading", source="s1", seq=1, wall_time=1.5,
    body={"nan": float("nan"), "deep": [{"inf": float("-inf")}, 1e-05], "small": 1e-05},
)
@example(priority=Priority.P0, kind="k", source="é", body={"ü": "\u2603"}, seq=2, wall_time=0.0)
def test_rendered_payload_is_the_contract_models_json(
    priority: Priority, kind: str, source: str, body: dict[str, object], seq: int,
    wall_time: float,
) -> None:
    # Consumers and the checked-in AsyncAPI document rely on EventMessage's JSON; render
    # writes it without pydantic, so compare the values, keys in order, NaN and all.
    event = Event(kind, source, priority, body)
    topic, payload = TOPICS.render(event, seq, wall_time)
    model = EventMessage(
        event_id=event.event_id, station=TOPICS.station, priority=priority.name,
        requested_response=REQUESTED_RESPONSE[priority], kind=kind, source=source, seq=seq,
        wall_time=round(wall_time, 6), body=body,
    )
    expected = model.model_dump_json(by_alias=True)
    assert strict_json(payload) == strict_json(expected)
    # The contract's model takes it, and reads back what it would have written itself.
    assert EventMessage.model_validate_json(payload, strict=True).model_dump_json(
        by_alias=True
    ) == expected
    assert topic == TOPICS.events(priority)
