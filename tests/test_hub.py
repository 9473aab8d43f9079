"""The hub: a durable record of every station, in a real PostgreSQL and in SQLite.

A real gateway on mock pins and a real Mosquitto feed it; every test runs on both databases.
"""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import aiomqtt
import pytest

from dispatch.hub.service import run_hub
from dispatch.hub.store import HubStore, migrate, open_engine
from dispatch.outbound import make_command, send_command
from gateway.core.model import Event, Priority
from gateway.daemon import Gateway
from gateway.testing.daemon import running
from gateway.testing.mosquitto import Mosquitto
from gateway.testing.postgres import PostgreSQL
from gateway.uplink.topics import Topics
from tests.helpers import (
    lifecycle_config,
    publish_all,
    publisher,
    raise_alert,
    station_config,
    subscribe,
)

WAIT = 30.0


@pytest.fixture(params=["sqlite", "postgresql"])
def db_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'hub.db'}"
    server: PostgreSQL = request.getfixturevalue("postgres")
    return server.new_database("hub")


_ENGINES: list[Any] = []


def hub_store(url: str) -> HubStore:
    engine = open_engine(url)
    _ENGINES.append(engine)
    migrate(engine)
    return HubStore(engine)


@pytest.fixture(autouse=True)
def _dispose_engines() -> Iterator[None]:
    """Close every connection a test's engines pooled (psycopg warns on a leaked one)."""
    yield
    while _ENGINES:
        _ENGINES.pop().dispose()


@contextlib.asynccontextmanager
async def hub(store: HubStore, broker: Mosquitto, client_id: str,
              share: str | None = None) -> AsyncIterator[list[str]]:
    states: list[str] = []
    task = asyncio.create_task(run_hub(store, "127.0.0.1", broker.port, client_id=client_id,
                                       share=share, on_state=states.append))
    try:
        async with asyncio.timeout(WAIT):
            while not any(s.startswith("connected") for s in states):
                assert not task.done(), task
                await asyncio.sleep(0.02)
        yield states
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


async def until(check: Any, what: str) -> None:
    async with asyncio.timeout(WAIT):
        while not check():
            await asyncio.sleep(0.05)


def raw_event(station: str, seq: int, kind: str = "sensor.reading") -> tuple[str, bytes]:
    event = Event(kind, "s-1", Priority.P3, {"value": seq})
    return Topics("stationgw/v1", station).render(event, seq, 1000.0 + seq)


async def test_an_alert_is_recorded_with_every_transition_and_its_times(
    broker: Mosquitto, tmp_path: Path, db_url: str
) -> None:
    store = hub_store(db_url)
    config = lifecycle_config(tmp_path, broker.url)
    station = config.station_id
    root = f"stationgw/v1/{station}"
    async with (
        hub(store, broker, f"hub-{uuid.uuid4().hex[:8]}"),
        aiomqtt.Client("127.0.0.1", broker.port,
                       protocol=aiomqtt.ProtocolVersion.V5) as dispatcher,
        subscribe(broker.port, [f"{root}/events/#"]) as sub,
        running(Gateway(config)) as gw,
    ):
        await asyncio.wait_for(gw.publisher.connected.wait(), WAIT)
        alert_id = await raise_alert(gw, sub)
        for action in ("acknowledge", "resolve"):
            await send_command(dispatcher, "stationgw/v1",
                               make_command(station, alert_id, action))
        await sub.wait_for(lambda m: any(p["kind"] == "alert.resolved" for _, p in m), WAIT)
        published = {p["event_id"] for p in sub.events()}
        await until(lambda: (store.alert(station, alert_id) or {}).get("state") == "resolved",
                    "resolved in the hub")
        await until(lambda: store.counts["status"] >= 1, "status")
    row = store.alert(station, alert_id)
    assert row is not None
    assert row["acknowledged_at"] >= row["opened_at"] and row["closed_at"] >= row[
        "acknowledged_at"]
    assert row["requested_response"] == "crisis_team"
    assert [s for s, _ in store.history(station, alert_id)] == [
        "open", "acknowledged", "resolved"]
    assert store.event_count() >= len(published)
    assert all(g.missing == [] for g in store.gaps() if g.station == station)


async def test_events_are_stored_once_and_gaps_show_as_seqs(
    broker: Mosquitto, db_url: str
) -> None:
    store = hub_store(db_url)
    station = f"st-{uuid.uuid4().hex[:8]}"
    messages = [raw_event(station, seq) for seq in (1, 2, 3, 5, 6, 9)]
    # A group of its own: Mosquitto keeps giving a share of the messages to a group member
    # whose persistent session is offline (it gets them when it is back).
    group = f"hubs-{uuid.uuid4().hex[:8]}"
    async with (
        hub(store, broker, f"hub-a-{uuid.uuid4().hex[:8]}", share=group),
        hub(store, broker, f"hub-b-{uuid.uuid4().hex[:8]}", share=group),
    ):
        with publisher(broker.port) as client:
            # each re-sent, as a gateway does after a reconnect; one forged by another station
            forged = raw_event(station, 4)
            publish_all(client, messages + messages + [
                (f"stationgw/v1/evil-{station}/events/P3", forged[1])])
        await until(lambda: store.counts["stored"] + store.counts["duplicate"] >= 12, "all")
        await until(lambda: store.counts["dropped_wrong_station"] >= 1, "forged")
    assert store.counts["stored"] == 6
    (gap,) = [g for g in store.gaps() if g.station == station]
    assert (gap.first, gap.last, gap.missing) == (1, 9, [4, 7, 8])


async def test_what_is_published_while_the_hub_is_away_is_recorded_when_it_is_back(
    broker: Mosquitto, db_url: str
) -> None:
    store = hub_store(db_url)
    station = f"st-{uuid.uuid4().hex[:8]}"
    client_id = f"hub-{uuid.uuid4().hex[:8]}"
    async with hub(store, broker, client_id):
        pass  # the persistent session now exists
    with publisher(broker.port) as client:
        publish_all(client, [raw_event(station, seq) for seq in range(1, 21)])
    async with hub(store, broker, client_id) as states:
        assert "resumed session" in states[0]
        await until(lambda: store.counts["stored"] >= 20, "the backlog")
    assert [g.missing for g in store.gaps() if g.station == station] == [[]]


async def test_a_database_outage_loses_nothing(broker: Mosquitto, tmp_path: Path) -> None:
    """PostgreSQL stopped under a running hub: batches stay unacknowledged (the broker holds
    them) and are committed once it is back."""
    station = f"st-{uuid.uuid4().hex[:8]}"
    with PostgreSQL() as server:
        store = hub_store(server.url)
        async with hub(store, broker, f"hub-{uuid.uuid4().hex[:8]}") as states:
            with publisher(broker.port) as client:
                publish_all(client, [raw_event(station, 1)])
                await until(lambda: store.counts["stored"] >= 1, "first")
                server.stop()
                publish_all(client, [raw_event(station, seq) for seq in range(2, 11)])
                await until(lambda: any("database write failed" in s for s in states),
                            "the failure")
                server.start()
                await until(lambda: store.counts["stored"] >= 10, "after the outage")
    assert store.counts["stored"] == 10


async def test_rows_the_station_evicted_are_told_apart_from_rows_lost(
    own_broker: Mosquitto, tmp_path: Path
) -> None:
    """A station offline long enough to evict P3 rows reports their seqs (outbox.dropped);
    the audit then shows them as evicted, and nothing as lost."""
    store = hub_store(f"sqlite:///{tmp_path / 'hub.db'}")
    config = station_config(tmp_path, [own_broker.url], store={"max_rows": 100})
    client_id = f"hub-{uuid.uuid4().hex[:8]}"
    own_broker.start()
    async with hub(store, own_broker, client_id):
        pass  # the hub's persistent session exists before the station says anything
    own_broker.stop()
    async with running(Gateway(config)) as gw:  # the broker is down: rows pile up
        for n in range(150):
            await gw.submit("sensor.reading", "s-1", Priority.P3, {"n": n})
        assert gw.health.counters["evicted_P3"] == 50
        own_broker.start()
        async with hub(store, own_broker, client_id):
            await until(lambda: store.counts["stored"] >= 100, "the backlog")
            await gw.report_dropped()  # as maintenance does every 30 s

            def accounted() -> bool:
                gaps = [g for g in store.gaps() if g.station == config.station_id]
                return bool(gaps) and gaps[0].missing == [] and len(gaps[0].dropped) == 50

            await until(accounted, "the report")
    (gap,) = [g for g in store.gaps() if g.station == config.station_id]
    assert (gap.first, gap.missing, len(gap.dropped)) == (1, [], 50)


def test_the_migrations_build_exactly_the_schema(db_url: str) -> None:
    """One migration history for both databases, and it matches dispatch/hub/schema.py: the
    store's queries assume the tables the migrations made."""
    from alembic.autogenerate import compare_metadata
    from alembic.migration import MigrationContext

    from dispatch.hub.schema import metadata

    store = hub_store(db_url)
    with store.engine.connect() as conn:
        diff = compare_metadata(MigrationContext.configure(conn), metadata)
    assert diff == []


def template_queue_limit() -> int:
    """`max_queued_messages` in the documented broker config (config/mosquitto)."""
    conf = Path(__file__).parent.parent / "config" / "mosquitto" / "stationgw.conf"
    (value,) = [line.split()[1] for line in conf.read_text().splitlines()
                if line.startswith("max_queued_messages ")]
    return int(value)


@pytest.mark.parametrize("limit", ["template", 1000])
async def test_the_broker_holds_a_long_database_outage_only_with_the_template_queue(
    tmp_path: Path, limit: str | int
) -> None:
    """While the database is down the hub acknowledges nothing, so the broker holds what
    arrives for the hub's session. Mosquitto's default max_queued_messages (1000) silently
    drops the excess, and the hub's seq audit then shows it as lost; the template's limit
    holds the whole outage."""
    queue = template_queue_limit() if limit == "template" else int(limit)
    station, sent = f"st-{uuid.uuid4().hex[:8]}", 4000
    with Mosquitto(extra=f"max_queued_messages {queue}\n") as broker, PostgreSQL() as server:
        store = hub_store(server.url)
        async with hub(store, broker, f"hub-{uuid.uuid4().hex[:8]}") as states:
            with publisher(broker.port) as client:
                publish_all(client, [raw_event(station, 1)])
                await until(lambda: store.counts["stored"] >= 1, "first")
                server.stop()
                publish_all(client, [raw_event(station, seq) for seq in range(2, sent)])
                await until(lambda: any("database write failed" in s for s in states),
                            "the failure")
                server.start()
                async with asyncio.timeout(90):  # the hub's retry backoff is capped at 30 s
                    while store.counts["stored"] < 2:
                        await asyncio.sleep(0.1)
                    while True:  # until what the broker held is in
                        before = store.counts["stored"]
                        await asyncio.sleep(1.0)
                        if store.counts["stored"] == before:
                            break
                publish_all(client, [raw_event(station, sent)])  # the last, after it
                await until(lambda: any(g.last == sent for g in store.gaps()), "the last")
        (gap,) = [g for g in store.gaps() if g.station == station]
        stored = store.event_count()
    if limit == "template":
        assert (stored, gap.missing) == (sent, [])
    else:
        assert len(gap.missing) >= 1000  # dropped by the broker, and counted by the audit
        assert stored + len(gap.missing) == sent


def lifecycle_events(station: str, alert_id: str, first_seq: int) -> list[Any]:
    """One alert's events, as its gateway sends them: open, acknowledged, assigned, resolved."""
    from dispatch.inbound import read
    from gateway.core.model import AlertRecord
    from gateway.station.lifecycle import alert_body

    topics, out = Topics("stationgw/v1", station), []
    for n, state in enumerate(("open", "acknowledged", "assigned", "resolved")):
        record = AlertRecord(alert_id, "hp-1", state, Priority.P1,  # type: ignore[arg-type]
                             {"first_press": 1000.0, "press_count": 1 + n})
        kind = "help_point.press" if state == "open" else f"alert.{state}"
        topic, payload = topics.render(Event(kind, "hp-1", Priority.P1, alert_body(record)),
                                       first_seq + n, 1000.0 + first_seq + n)
        out.append(read(topic, payload, "stationgw/v1"))
    return out


def test_two_hubs_writing_one_alert_at_once_keep_one_true_record(db_url: str) -> None:
    """Replicas of a shared subscription get an alert's events split between them, in
    batches that race: each alert is one row, at its newest state, with no event twice."""
    import random
    import threading

    station = f"st-{uuid.uuid4().hex[:8]}"
    alerts = [f"a{n}" for n in range(40)]
    everything = [e for n, a in enumerate(alerts) for e in lifecycle_events(station, a, 4 * n)]
    rng = random.Random(7)
    rng.shuffle(everything)
    shares: list[list[Any]] = [[], []]
    for item in everything:
        shares[rng.randrange(2)].append(item)
    stores = [hub_store(db_url), hub_store(db_url)]
    failures: list[BaseException] = []

    def replica(store: HubStore, share: list[Any]) -> None:
        try:
            for start in range(0, len(share), 3):
                store.record(share[start:start + 3] * 2)  # re-sent within the batch, too
        except BaseException as exc:  # noqa: BLE001 - reported by the test
            failures.append(exc)

    threads = [threading.Thread(target=replica, args=(s, share))
               for s, share in zip(stores, shares, strict=True)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert failures == []
    assert stores[0].event_count() == len(everything)
    rows = {a["alert_id"]: a for a in stores[0].alerts() if a["station"] == station}
    assert sorted(rows) == sorted(alerts)
    assert {a["state"] for a in rows.values()} == {"resolved"}
    assert all(a["closed_at"] is not None and a["press_count"] == 4 for a in rows.values())
    for alert_id in alerts:  # each state at most once in the history, opened first
        states = [s for s, _ in stores[0].history(station, alert_id)]
        assert len(states) == len(set(states)) and states[0] in ("open", "acknowledged",
                                                                  "assigned", "resolved")
