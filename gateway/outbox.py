"""Durable, prioritized, bounded outbox in SQLite.

An event is *accepted* when its row is committed (WAL, ``synchronous=FULL``). Rows drain by
class, then by sequence, and leave only when the broker confirms them. When the database
cannot be written, rows are kept in memory instead so that alerts still go out, and the
caller raises a fault.

`Outbox` is synchronous and owns one connection; `gateway.store.AsyncOutbox` runs it on one
dedicated thread so the event loop never waits on fsync.
"""

from __future__ import annotations

import contextlib
import json
import logging
import sqlite3
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Literal

from gateway.errors import StoreError
from gateway.model import AlertRecord, Event, Priority

log = logging.getLogger(__name__)

Renderer = Callable[[Event, int, float], tuple[str, bytes]]
Key = tuple[int, int]  # (class, seq): the drain order
State = Literal["pending", "refused"]
SYNCHRONOUS_FULL = 2
ROW_OVERHEAD = 96  # bytes of index and bookkeeping counted per row against max_bytes
# SQLite's page cache per connection, in KiB (negative: KiB, not pages). The default 2 MiB
# filled up as soon as `open` counted a 5,000-row backlog and stayed: 1.7 MiB of the
# daemon's RSS. The hot pages (the b-trees' ends) fit in 256 KiB; the rest comes from the OS
# page cache. Measured: no change in throughput or drain rate (BENCHMARKS.md).
CACHE_SIZE_KIB = 256

MIGRATIONS: tuple[tuple[str, str], ...] = (
    (
        "0001_outbox",
        """
        CREATE TABLE outbox (
            seq INTEGER PRIMARY KEY AUTOINCREMENT,
            event_id TEXT NOT NULL UNIQUE,
            class INTEGER NOT NULL CHECK (class BETWEEN 0 AND 3),
            kind TEXT NOT NULL,
            topic TEXT NOT NULL,
            payload BLOB NOT NULL,
            wall_time REAL NOT NULL,
            attempts INTEGER NOT NULL DEFAULT 0,
            state TEXT NOT NULL DEFAULT 'pending' CHECK (state IN ('pending', 'refused')),
            last_error TEXT
        );
        CREATE INDEX outbox_drain ON outbox (state, class, seq);
        CREATE TABLE faults (
            id INTEGER PRIMARY KEY,
            wall_time REAL NOT NULL,
            code TEXT NOT NULL,
            active INTEGER NOT NULL,
            message TEXT NOT NULL
        );
        """,
    ),
    (
        "0002_alerts",
        """
        ALTER TABLE outbox ADD COLUMN alert_id TEXT;
        CREATE INDEX outbox_alert ON outbox (alert_id) WHERE alert_id IS NOT NULL;
        CREATE TABLE alerts (
            alert_id TEXT PRIMARY KEY,
            source TEXT NOT NULL,
            state TEXT NOT NULL,
            class INTEGER NOT NULL,
            details TEXT NOT NULL,
            updated_at REAL NOT NULL
        );
        CREATE INDEX alerts_open ON alerts (state) WHERE state NOT IN ('resolved', 'cancelled');
        CREATE TABLE commands (
            command_id TEXT PRIMARY KEY,
            alert_id TEXT NOT NULL,
            received_at REAL NOT NULL
        );
        """,
    ),
)


@dataclass(frozen=True)
class Row:
    """One outbox row."""

    seq: int
    event_id: str
    priority: Priority
    kind: str
    topic: str
    payload: bytes
    wall_time: float
    attempts: int = 0
    state: State = "pending"
    durable: bool = True
    alert: AlertRecord | None = None  # written with the row; not read back from the outbox

    @property
    def key(self) -> Key:
        """Drain order: class first, then oldest first."""
        return (int(self.priority), self.seq)

    @property
    def size(self) -> int:
        """Bytes counted against the store's byte bound."""
        return len(self.payload) + len(self.topic) + ROW_OVERHEAD


@dataclass
class AcceptResult:
    """What `Outbox.accept` did: the rows, rows evicted to make room, and any write error."""

    rows: list[Row]
    evicted: list[Row] = field(default_factory=list)
    error: str | None = None


@dataclass(frozen=True)
class Depth:
    """Outbox depth for health and the `outbox` command."""

    by_class: dict[str, dict[str, int]]
    oldest_unsent_wall_time: float | None
    rows: int
    bytes: int
    memory_rows: int


_COLUMNS = "seq, event_id, class, kind, topic, payload, wall_time, attempts, state"


def _row(rec: tuple[int, str, int, str, str, bytes, float, int, State]) -> Row:
    seq, event_id, cls, kind, topic, payload, wall_time, attempts, state = rec
    return Row(
        seq, event_id, Priority(cls), kind, topic, bytes(payload), wall_time, attempts, state
    )


@contextlib.contextmanager
def transaction(conn: sqlite3.Connection) -> Iterator[sqlite3.Connection]:
    """An explicit write transaction: committed at the end, rolled back on any error."""
    conn.execute("BEGIN IMMEDIATE")
    try:
        yield conn
        conn.execute("COMMIT")
    except BaseException:
        try:
            conn.execute("ROLLBACK")
        except sqlite3.Error:
            log.debug("rollback after a failed write also failed", exc_info=True)
        raise


def _store_alert(conn: sqlite3.Connection, alert: AlertRecord, now: float) -> None:
    conn.execute(
        "INSERT OR REPLACE INTO alerts (alert_id, source, state, class, details, updated_at) "
        "VALUES (?, ?, ?, ?, ?, ?)",
        (alert.alert_id, alert.source, alert.state, int(alert.priority),
         json.dumps(alert.details), now),
    )
    if alert.command_id is not None:
        conn.execute(
            "INSERT OR IGNORE INTO commands (command_id, alert_id, received_at) VALUES (?, ?, ?)",
            (alert.command_id, alert.alert_id, now),
        )


def connect(path: Path, *, readonly: bool = False) -> sqlite3.Connection:
    """Open the database in WAL mode with synchronous=FULL, and check both took effect."""
    if readonly:
        conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True, isolation_level=None)
    else:
        path.parent.mkdir(parents=True, exist_ok=True)
        conn = sqlite3.connect(path, isolation_level=None)  # explicit transactions only
    try:
        conn.execute("PRAGMA busy_timeout = 5000")
        conn.execute(f"PRAGMA cache_size = -{CACHE_SIZE_KIB}")
        # WAL must be switched on outside any transaction; check both settings took effect.
        mode = "wal" if readonly else conn.execute("PRAGMA journal_mode = WAL").fetchone()[0]
        conn.execute("PRAGMA synchronous = FULL")
        sync = conn.execute("PRAGMA synchronous").fetchone()[0]
    except sqlite3.Error as exc:
        conn.close()
        raise StoreError(f"{path}: cannot open outbox database: {exc}") from exc
    if str(mode).lower() != "wal" or sync != SYNCHRONOUS_FULL:
        conn.close()
        raise StoreError(
            f"{path}: journal_mode={mode}, synchronous={sync}; WAL and FULL (2) are required"
        )
    return conn


def migrate(conn: sqlite3.Connection) -> list[str]:
    """Apply pending schema migrations, recording each in the `migrations` table."""
    conn.execute(
        "CREATE TABLE IF NOT EXISTS migrations (name TEXT PRIMARY KEY, applied_at REAL NOT NULL)"
    )
    done = {name for (name,) in conn.execute("SELECT name FROM migrations")}
    applied = []
    for name, sql in MIGRATIONS:
        if name in done:
            continue
        with transaction(conn):
            for statement in sql.split(";"):
                if statement.strip():
                    conn.execute(statement)
            conn.execute("INSERT INTO migrations VALUES (?, ?)", (name, time.time()))
        applied.append(name)
    return applied


class Outbox:
    """The durable outbox. Not thread-safe: use it from one thread."""

    def __init__(
        self,
        path: Path,
        render: Renderer,
        *,
        max_rows: int = 100_000,
        max_bytes: int = 64 * 1024 * 1024,
        ttl_s: dict[Priority, float] | None = None,
    ) -> None:
        self.path = path
        self._render = render
        self.max_rows = max_rows
        self.max_bytes = max_bytes
        self.ttl_s = dict(ttl_s or {})
        self._conn: sqlite3.Connection | None = None
        self._memory: dict[int, Row] = {}  # rows accepted while the database was unwritable
        self._next_seq = 1
        self._rows = 0
        self._bytes = 0

    # ------------------------------------------------------------------ lifecycle

    def open(self) -> None:
        """Open (creating and migrating if needed) the database."""
        conn = connect(self.path)
        try:
            migrate(conn)
            (last,) = conn.execute(
                "SELECT COALESCE(MAX(seq), 0) FROM sqlite_sequence WHERE name = 'outbox'"
            ).fetchone()
            self._rows, self._bytes = conn.execute(
                "SELECT COUNT(*), COALESCE(SUM(LENGTH(payload) + LENGTH(topic)), 0) FROM outbox"
            ).fetchone()
        except sqlite3.Error as exc:
            conn.close()
            raise StoreError(f"{self.path}: cannot prepare outbox database: {exc}") from exc
        self._bytes += self._rows * ROW_OVERHEAD
        self._next_seq = int(last) + 1
        self._conn = conn

    def close(self) -> None:
        """Close the database."""
        if self._conn is not None:
            self._conn.close()
            self._conn = None

    def __enter__(self) -> Outbox:
        self.open()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @property
    def conn(self) -> sqlite3.Connection:
        """The open connection."""
        if self._conn is None:
            raise StoreError("outbox is not open")
        return self._conn

    # ------------------------------------------------------------------ writes

    def accept(self, events: list[Event]) -> AcceptResult:
        """Commit events in one transaction; if the database cannot be written, keep them in
        memory instead (`AcceptResult.error` says why; those rows have `durable=False`)."""
        wall_time = time.time()
        rows = []
        for event in events:
            seq = self._next_seq
            self._next_seq += 1
            topic, payload = self._render(event, seq, wall_time)
            rows.append(
                Row(seq, event.event_id, event.priority, event.kind, topic, payload, wall_time,
                    alert=event.alert)
            )
        try:
            evicted = self._write([*self._memory.values(), *rows])
        except sqlite3.Error as exc:
            held = [replace(row, durable=False) for row in rows]
            self._memory.update((row.seq, row) for row in held)
            return AcceptResult(held, self._bound_memory(), error=str(exc))
        self._memory.clear()
        return AcceptResult(rows, evicted)

    def _write(self, rows: list[Row]) -> list[Row]:
        with transaction(self.conn) as conn:
            conn.executemany(
                f"INSERT INTO outbox ({_COLUMNS}, alert_id) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                [
                    (r.seq, r.event_id, int(r.priority), r.kind, r.topic, r.payload,
                     r.wall_time, r.attempts, r.state, r.alert.alert_id if r.alert else None)
                    for r in rows
                ],
            )
            for row in rows:
                if row.alert is not None:
                    _store_alert(conn, row.alert, row.wall_time)
            added = sum(r.size for r in rows)
            evicted = self._evict(self._rows + len(rows), self._bytes + added)
        self._rows += len(rows) - len(evicted)
        self._bytes += added - sum(r.size for r in evicted)
        return evicted

    def _evict(self, rows: int, size: int) -> list[Row]:
        """Delete the oldest rows of the lowest evictable class until within bounds."""
        evicted: list[Row] = []
        while rows > self.max_rows or size > self.max_bytes:
            batch = [
                _row(rec)
                for rec in self.conn.execute(
                    f"SELECT {_COLUMNS} FROM outbox WHERE class >= ? "
                    "ORDER BY class DESC, seq LIMIT 64",
                    (int(Priority.P2),),
                )
            ]
            if not batch:
                break  # only P0/P1 left: they are never evicted, the bound gives way
            for row in batch:
                if rows <= self.max_rows and size <= self.max_bytes:
                    break
                self.conn.execute("DELETE FROM outbox WHERE seq = ?", (row.seq,))
                evicted.append(row)
                rows -= 1
                size -= row.size
        return evicted

    def _bound_memory(self) -> list[Row]:
        evicted = []
        while len(self._memory) > self.max_rows:
            victims = sorted(
                (r for r in self._memory.values() if r.priority.evictable),
                key=lambda r: (-int(r.priority), r.seq),
            )
            if not victims:
                break
            evicted.append(self._memory.pop(victims[0].seq))
        return evicted

    def retry_memory(self) -> str | None:
        """Try to commit rows held in memory; returns the error if it still fails."""
        if not self._memory:
            return None
        try:
            self._write(list(self._memory.values()))
        except sqlite3.Error as exc:
            return str(exc)
        self._memory.clear()
        return None

    def delivered(self, seqs: Iterable[int]) -> None:
        """Remove rows the broker confirmed."""
        db_seqs = []
        for seq in seqs:
            if self._memory.pop(seq, None) is None:
                db_seqs.append(seq)
        if not db_seqs:
            return
        conn = self.conn
        # A delete need not be durable on its own: if a crash loses it, the row is sent again
        # with the same event_id (at least once). The next FULL commit's fsync covers it, and
        # accepts no longer wait behind an fsync per PUBACK batch.
        conn.execute("PRAGMA synchronous = NORMAL")
        count = size = 0
        try:
            with transaction(conn):
                for start in range(0, len(db_seqs), 500):
                    chunk = db_seqs[start : start + 500]
                    gone = conn.execute(
                        "SELECT COUNT(*), COALESCE(SUM(LENGTH(payload) + LENGTH(topic)), 0) "
                        f"FROM outbox WHERE seq IN ({','.join('?' * len(chunk))})",
                        chunk,
                    ).fetchone()
                    count, size = count + gone[0], size + gone[1]
                    conn.executemany("DELETE FROM outbox WHERE seq = ?", [(s,) for s in chunk])
        finally:
            conn.execute("PRAGMA synchronous = FULL")
        self._rows -= count
        self._bytes -= size + count * ROW_OVERHEAD

    def mark(self, updates: Iterable[tuple[int, int, State, str | None]]) -> None:
        """Record (seq, attempts, state, last_error) for rows that were sent but not removed."""
        batch = []
        for seq, attempts, state, error in updates:
            if seq in self._memory:
                self._memory[seq] = replace(self._memory[seq], attempts=attempts, state=state)
            else:
                batch.append((attempts, state, error, seq))
        if not batch:
            return
        with transaction(self.conn) as conn:
            conn.executemany(
                "UPDATE outbox SET attempts = ?, state = ?, last_error = ? WHERE seq = ?", batch
            )

    def requeue_refused(self) -> int:
        """Make refused rows pending again so they are retried; returns how many."""
        for seq, row in list(self._memory.items()):
            if row.state == "refused":
                self._memory[seq] = replace(row, state="pending")
        cur = self.conn.execute("UPDATE outbox SET state = 'pending' WHERE state = 'refused'")
        return cur.rowcount

    def expire(self, now: float | None = None) -> list[Row]:
        """Delete P2/P3 rows older than their class's TTL; returns them."""
        now = time.time() if now is None else now
        expired: list[Row] = []
        conn = self.conn
        for priority, ttl in self.ttl_s.items():
            if not priority.evictable:
                continue
            cutoff = now - ttl
            for seq, row in list(self._memory.items()):
                if row.priority == priority and row.wall_time < cutoff:
                    expired.append(self._memory.pop(seq))
            with transaction(conn):
                rows = [
                    _row(rec)
                    for rec in conn.execute(
                        f"SELECT {_COLUMNS} FROM outbox WHERE class = ? AND wall_time < ?",
                        (int(priority), cutoff),
                    )
                ]
                conn.execute(
                    "DELETE FROM outbox WHERE class = ? AND wall_time < ?", (int(priority), cutoff)
                )
            self._rows -= len(rows)
            self._bytes -= sum(r.size for r in rows)
            expired.extend(rows)
        return expired

    def record_fault(self, code: str, active: bool, message: str) -> None:
        """Append a fault change to the fault log, keeping the newest 1000 entries."""
        with transaction(self.conn) as conn:
            conn.execute(
                "INSERT INTO faults (wall_time, code, active, message) VALUES (?, ?, ?, ?)",
                (time.time(), code, int(active), message),
            )
            conn.execute("DELETE FROM faults WHERE id <= (SELECT MAX(id) FROM faults) - 1000")

    # ------------------------------------------------------------------ reads

    def page(self, after: Key | None, limit: int) -> list[Row]:
        """Up to `limit` pending rows with a drain key greater than `after`, in drain order."""
        after = after or (-1, -1)
        try:
            # Two index range scans: SQLite cannot seek the drain index on a row value.
            rows = [
                _row(rec)
                for rec in self.conn.execute(
                    f"SELECT {_COLUMNS} FROM outbox WHERE state = 'pending' "
                    "AND class = ? AND seq > ? ORDER BY seq LIMIT ?",
                    (after[0], after[1], limit),
                )
            ]
            if len(rows) < limit:
                rows += [
                    _row(rec)
                    for rec in self.conn.execute(
                        f"SELECT {_COLUMNS} FROM outbox WHERE state = 'pending' "
                        "AND class > ? ORDER BY class, seq LIMIT ?",
                        (after[0], limit - len(rows)),
                    )
                ]
        except sqlite3.Error as exc:
            if not self._memory:
                raise
            # The rows in memory must still go out when the database cannot be read.
            log.warning("outbox read failed, draining memory rows only: %s", exc)
            rows = []
        if self._memory:
            rows.extend(r for r in self._memory.values() if r.state == "pending" and r.key > after)
            rows.sort(key=lambda r: r.key)
            del rows[limit:]
        return rows

    def open_alerts(self) -> list[tuple[AlertRecord, bool]]:
        """Alerts not yet resolved or cancelled, each with whether all its events were sent."""
        unsent = {r.alert.alert_id for r in self._memory.values() if r.alert is not None}
        unsent.update(
            a for (a,) in self.conn.execute(
                "SELECT DISTINCT alert_id FROM outbox WHERE alert_id IS NOT NULL"
            )
        )
        alerts = []
        for alert_id, source, state, cls, details in self.conn.execute(
            "SELECT alert_id, source, state, class, details FROM alerts "
            "WHERE state NOT IN ('resolved', 'cancelled') ORDER BY updated_at"
        ):
            record = AlertRecord(alert_id, source, state, Priority(cls), json.loads(details))
            alerts.append((record, alert_id not in unsent))
        return alerts

    def command_seen(self, command_id: str) -> bool:
        """True if a dispatch command with this id was already applied."""
        found = self.conn.execute(
            "SELECT 1 FROM commands WHERE command_id = ?", (command_id,)
        ).fetchone()
        return found is not None or any(
            r.alert is not None and r.alert.command_id == command_id for r in self._memory.values()
        )

    def depth(self) -> Depth:
        """Rows by class and state, and the wall time of the oldest unsent row."""
        return read_depth(self.conn, self._memory.values(), self._bytes)

    @property
    def memory_rows(self) -> int:
        """Rows held only in memory because the database could not be written."""
        return len(self._memory)


def read_depth(
    conn: sqlite3.Connection, memory: Iterable[Row] = (), size: int | None = None
) -> Depth:
    """Depth figures from a connection (the daemon's own, or a read-only one)."""
    by_class: dict[str, dict[str, int]] = {p.name: {} for p in Priority}
    oldest: float | None = None
    total = 0
    # Counts from the covering drain index, and the oldest row of each (state, class) by its
    # sequence (an index seek): no scan of the table, even with 100,000 rows queued.
    groups = conn.execute(
        "SELECT state, class, COUNT(*) FROM outbox GROUP BY state, class"
    ).fetchall()
    for state, cls, count in groups:
        by_class[Priority(cls).name][state] = count
        total += count
        (first,) = conn.execute(
            "SELECT wall_time FROM outbox WHERE state = ? AND class = ? ORDER BY seq LIMIT 1",
            (state, cls),
        ).fetchone()
        oldest = first if oldest is None else min(oldest, first)
    memory = list(memory)
    for row in memory:
        counts = by_class[row.priority.name]
        counts["memory"] = counts.get("memory", 0) + 1
        oldest = row.wall_time if oldest is None else min(oldest, row.wall_time)
    if size is None:
        (size,) = conn.execute(
            "SELECT COALESCE(SUM(LENGTH(payload) + LENGTH(topic)), 0) FROM outbox"
        ).fetchone()
        size += total * ROW_OVERHEAD
    return Depth(by_class, oldest, total, size, len(memory))
