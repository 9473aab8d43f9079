"""The floors the gateway is compared with: one SQLite commit per event, and one raw QoS 1
publish per event (`bench.clients.RawClient`) timed to its receipt."""

from __future__ import annotations

import sqlite3
import time
from pathlib import Path

from bench.clients import RawClient, Subscriber
from bench.figures import Samples
from gateway.core.model import Event, Priority
from gateway.uplink.topics import Topics


def rendered(topics: Topics, priority: Priority, seq: int, kind: str = "help_point.press") -> (
    tuple[str, str, bytes]
):
    """(event_id, topic, payload) exactly as the gateway would render such an event."""
    event = Event(kind, "hp-1", priority, {"presses": 1})
    topic, payload = topics.render(event, seq, time.time())
    return event.event_id, topic, payload


class CommitBaseline:
    """One SQLite commit per event, WAL and synchronous=FULL: the floor of any durable accept."""

    def __init__(self, path: Path) -> None:
        remove_db(path)
        self.conn = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
        mode = self.conn.execute("PRAGMA journal_mode = WAL").fetchone()[0]
        self.conn.execute("PRAGMA synchronous = FULL")
        sync = self.conn.execute("PRAGMA synchronous").fetchone()[0]
        if mode != "wal" or sync != 2:
            raise RuntimeError(f"baseline database is {mode}/{sync}, not wal/FULL")
        self.conn.execute(
            "CREATE TABLE IF NOT EXISTS outbox (seq INTEGER PRIMARY KEY, event_id TEXT, "
            "topic TEXT, payload BLOB)"
        )

    def commit(self, event_id: str, topic: str, payload: bytes) -> None:
        """Insert one row in its own transaction."""
        self.conn.execute("BEGIN IMMEDIATE")
        self.conn.execute(
            "INSERT INTO outbox (event_id, topic, payload) VALUES (?, ?, ?)",
            (event_id, topic, payload),
        )
        self.conn.execute("COMMIT")

    def close(self) -> None:
        """Close the connection."""
        self.conn.close()


def raw_latency(
    raw: RawClient,
    sub: Subscriber,
    topics: Topics,
    n: int,
    *,
    commit: CommitBaseline | None = None,
    gap_s: float = 0.0,
    priority: Priority = Priority.P1,
) -> Samples:
    """Baseline latency: [one SQLite commit, then] one raw QoS 1 publish, start to receipt."""
    samples = Samples()
    for i in range(n):
        event_id, topic, payload = rendered(topics, priority, i)
        start = time.monotonic_ns()
        if commit is not None:
            commit.commit(event_id, topic, payload)
        raw.publish_confirmed(topic, payload)
        samples.add_ns(start, sub.wait(event_id))
        if gap_s:
            time.sleep(gap_s)
    return samples


def remove_db(path: Path) -> None:
    """Delete an SQLite database file with its WAL and shared-memory files."""
    for suffix in ("", "-wal", "-shm"):
        Path(f"{path}{suffix}").unlink(missing_ok=True)
