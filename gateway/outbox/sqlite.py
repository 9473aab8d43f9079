"""Durable, prioritized, bounded outbox in SQLite.

An event is *accepted* when its row is committed (WAL, ``synchronous=FULL``). Rows drain by
class, then by sequence, and leave only when the broker confirms them. When the database
cannot be written, rows are kept in memory instead so that alerts still go out, and the
caller raises a fault. A failed read (a damaged page, an I/O error) marks the store
`damage`d: no call raises it, new rows are kept in memory until a check finds the file
sound again, and the rows in memory keep draining.

`Outbox` is synchronous and owns one connection; `gateway.outbox.store.AsyncOutbox` runs it on one
dedicated thread so the event loop never waits on fsync.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import secrets
import sqlite3
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Literal

from gateway.core.clock import SYSTEM, Clock, SteadyWall
from gateway.core.drain import Key  # (class, seq): the drain order
from gateway.core.model import AlertRecord, Event, Priority
from gateway.errors import StoreError, StoreUnavailableError
from gateway.outbox.files import (
    APPLICATION_ID,
    SQLITE_ERRORS,
    SqliteFailure,
    check,
    classify,
    seal,
)

log = logging.getLogger(__name__)

Renderer = Callable[[Event, int, float], tuple[str, bytes]]
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
    (
        # A row's age for its TTL, on the steady clock (gateway.core.clock): a step of the wall
        # clock neither expires a backlog nor keeps rows forever.
        "0003_row_age",
        """
        ALTER TABLE outbox ADD COLUMN aged_from REAL;
        UPDATE outbox SET aged_from = wall_time;
        CREATE INDEX outbox_age ON outbox (class, aged_from);
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
    stored_alert_id: str | None = None  # read back from the outbox: the alert the row carries
    aged_from: float = 0.0  # steady time of acceptance (TTL); set on rows accepted in this run

    @property
    def alert_id(self) -> str | None:
        """The help-point alert this row reports, if any, whether new or read back."""
        return self.alert.alert_id if self.alert is not None else self.stored_alert_id

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


_COLUMNS = "seq, event_id, class, kind, topic, payload, wall_time, attempts, state, alert_id"


SQLITE_CORRUPT, SQLITE_NOTADB = 11, 26  # primary result codes of a damaged file


def is_damage(exc: SqliteFailure) -> bool:
    """True if SQLite found the file itself damaged (not merely full or unwritable), or
    damaged bytes came back as text."""
    if isinstance(exc, UnicodeDecodeError):
        return True
    code = getattr(exc, "sqlite_errorcode", None)
    return isinstance(code, int) and code & 0xFF in (SQLITE_CORRUPT, SQLITE_NOTADB)


def _malformed(what: str) -> sqlite3.DatabaseError:
    # A damaged page can decode into values no row could hold (the schema's CHECKs are not
    # re-checked on read): reported as SQLite reports damage, and handled the same way.
    return sqlite3.DatabaseError(f"database disk image is malformed ({what})")


def _priority(value: object) -> Priority:
    if type(value) is not int or not 0 <= value <= 3:
        raise _malformed(f"class {value!r}")
    return Priority(value)


def _row(rec: tuple[int, str, int, str, str, bytes, float, int, State, str | None]) -> Row:
    seq, event_id, cls, kind, topic, payload, wall_time, attempts, state, alert_id = rec
    if not (
        type(seq) is int and isinstance(event_id, str) and isinstance(kind, str)
        and isinstance(topic, str) and isinstance(payload, bytes)
        and isinstance(wall_time, int | float) and type(attempts) is int
        and state in ("pending", "refused") and isinstance(alert_id, str | None)
    ):
        raise _malformed(f"outbox row seq={seq!r}")
    return Row(seq, event_id, _priority(cls), kind, topic, payload, wall_time, attempts, state,
               stored_alert_id=alert_id)


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
        except SQLITE_ERRORS:
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
    created = False
    if readonly:
        conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True, isolation_level=None)
    else:
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise StoreUnavailableError(f"{path}: cannot create its folder: {exc}") from exc
        created = not path.exists()
        conn = sqlite3.connect(path, isolation_level=None)  # explicit transactions only
    try:
        conn.execute("PRAGMA busy_timeout = 5000")
        conn.execute(f"PRAGMA cache_size = -{CACHE_SIZE_KIB}")
        # WAL must be switched on outside any transaction; check both settings took effect.
        mode = "wal" if readonly else conn.execute("PRAGMA journal_mode = WAL").fetchone()[0]
        conn.execute("PRAGMA synchronous = FULL")
        sync = conn.execute("PRAGMA synchronous").fetchone()[0]
    except SQLITE_ERRORS as exc:
        conn.close()
        if created:
            with contextlib.suppress(OSError):
                if path.stat().st_size == 0:
                    path.unlink()  # ours, and empty (say, the disk is full): no store to keep
        raise classify(path, exc, "cannot open outbox database") from exc
    if str(mode).lower() != "wal" or sync != SYNCHRONOUS_FULL:
        conn.close()
        raise StoreError(
            f"{path}: journal_mode={mode}, synchronous={sync}; WAL and FULL (2) are required"
        )
    return conn


def migrate(conn: sqlite3.Connection) -> list[str]:
    """Apply pending schema migrations, recording each in the `migrations` table.

    Only for a database that `gateway.outbox.files.check` passed: empty, or the gateway's.
    A store without the marker (new, or made before the marker existed) gets it, and a
    random first seal in `user_version` (`gateway.outbox.files.seal`).
    """
    (app_id,) = conn.execute("PRAGMA application_id").fetchone()
    if app_id != APPLICATION_ID:
        with transaction(conn):
            conn.execute(f"PRAGMA application_id = {APPLICATION_ID}")
            conn.execute(f"PRAGMA user_version = {secrets.randbelow(2**31 - 1) + 1}")
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
        clock: Clock = SYSTEM,
    ) -> None:
        self.path = path
        self.clock = clock
        self.steady = SteadyWall(clock)  # ages (TTL), immune to steps of the wall clock
        self._render = render
        self.max_rows = max_rows
        self.max_bytes = max_bytes
        self.ttl_s = dict(ttl_s or {})
        self._conn: sqlite3.Connection | None = None
        self._memory_only: str | None = None  # why there is no database (`open_memory`)
        self._memory: dict[int, Row] = {}  # rows accepted while the database was unwritable
        self._undeleted: set[int] = set()  # confirmed rows whose delete failed: retried
        #: Why the database cannot be trusted (the first failed read, or damage seen while
        #: writing); None while it is sound. Set on this thread, read by `AsyncOutbox`.
        self.damage: str | None = None
        self.read_errors = 0
        self.expire_error: str | None = None  # why the last `expire` left rows behind
        self._next_seq = 1
        self._rows = 0
        self._bytes = 0

    # ------------------------------------------------------------------ lifecycle

    def open(self) -> None:
        """Open (creating and migrating if needed) the database, once `storefile.check`
        found it intact and the gateway's: else `StoreDamagedError` (move it aside) or
        `StoreUnavailableError` (leave it alone)."""
        check(self.path)
        conn = connect(self.path)
        try:
            migrate(conn)
            (last,) = conn.execute(
                "SELECT COALESCE(MAX(seq), 0) FROM sqlite_sequence WHERE name = 'outbox'"
            ).fetchone()
            self._rows, self._bytes = conn.execute(
                "SELECT COUNT(*), COALESCE(SUM(LENGTH(payload) + LENGTH(topic)), 0) FROM outbox"
            ).fetchone()
        except SQLITE_ERRORS as exc:
            conn.close()
            raise classify(self.path, exc, "cannot prepare outbox database") from exc
        self._bytes += self._rows * ROW_OVERHEAD
        self._next_seq = int(last) + 1
        self._conn = conn
        seal(conn)

    def open_memory(self, reason: str) -> None:
        """Run without a database: every row is held in memory (`durable=False`), exactly
        as when the disk fails while running, with `reason` as the write error."""
        conn = sqlite3.connect(":memory:", isolation_level=None)
        migrate(conn)
        # Every new row fails as on a failed disk, so rows take the one in-memory path.
        conn.execute(
            "CREATE TEMP TRIGGER memory_only BEFORE INSERT ON main.outbox "
            "BEGIN SELECT RAISE(ABORT, 'no outbox database: memory only'); END"
        )
        self._memory_only = reason
        self._conn = conn

    def recover(self) -> bool:
        """In memory only: make a fresh store at `path` if it can be made now (say, the disk
        has room again); the rows in memory go into it at the next `retry_memory`. A store
        that appeared there meanwhile is left for the next start to check."""
        if self._memory_only is None:
            return False
        memory, next_seq = self._conn, self._next_seq
        try:
            if check(self.path):
                return False
            self.open()
        except StoreError:
            return False
        if memory is not None:
            memory.close()
        self._next_seq = max(next_seq, self._next_seq)  # rows in memory keep their seq
        self._memory_only = None
        return True

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
        wall_time = self.clock.wall()
        aged_from = self.steady.now()
        rows = []
        for event in events:
            seq = self._next_seq
            self._next_seq += 1
            topic, payload = self._render(event, seq, wall_time)
            rows.append(
                Row(seq, event.event_id, event.priority, event.kind, topic, payload, wall_time,
                    alert=event.alert, aged_from=aged_from)
            )
        if self.damage is not None:
            # A row written into a damaged file might never be read back for the drain.
            return self._hold(rows, f"database damaged: {self.damage}")
        try:
            evicted = self._write([*self._memory.values(), *rows])
        except SQLITE_ERRORS as exc:
            self._note_write_error(exc)
            return self._hold(rows, self._memory_only or str(exc))
        self._memory.clear()
        return AcceptResult(rows, evicted)

    def _hold(self, rows: list[Row], error: str) -> AcceptResult:
        held = [replace(row, durable=False) for row in rows]
        self._memory.update((row.seq, row) for row in held)
        return AcceptResult(held, self._bound_memory(), error=error)

    def _note_write_error(self, exc: SqliteFailure) -> None:
        if is_damage(exc) and self.damage is None:
            self.damage = str(exc)

    def _read_failed(self, exc: SqliteFailure) -> None:
        self.read_errors += 1  # counted each time, logged (and raised as a fault) once
        if self.damage is None:
            self.damage = str(exc)
            log.warning("outbox read failed: %s", exc)

    def _write(self, rows: list[Row]) -> list[Row]:
        with transaction(self.conn) as conn:
            conn.executemany(
                f"INSERT INTO outbox ({_COLUMNS}, aged_from) "
                "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                [
                    (r.seq, r.event_id, int(r.priority), r.kind, r.topic, r.payload,
                     r.wall_time, r.attempts, r.state, r.alert.alert_id if r.alert else None,
                     r.aged_from)
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
        """Try to commit rows held in memory, and to remove confirmed rows whose delete
        failed; returns the error if it still fails."""
        if self.damage is not None:
            return f"database damaged: {self.damage}"
        try:
            if self._memory:
                self._write(list(self._memory.values()))
                self._memory.clear()
            if self._undeleted:
                self.delivered(())
        except SQLITE_ERRORS as exc:
            self._note_write_error(exc)
            return str(exc)
        return None

    def repaired(self) -> None:
        """A check found the database sound again: write to it and read from it again."""
        self.damage = None

    def delivered(self, seqs: Iterable[int]) -> None:
        """Remove rows the broker confirmed."""
        db_seqs = sorted(self._undeleted)
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
        except SQLITE_ERRORS as exc:
            # Kept out of the drain and retried: a full disk must not turn every confirmed
            # row into a re-send.
            self._undeleted.update(db_seqs)
            self._note_write_error(exc)
            raise
        finally:
            conn.execute("PRAGMA synchronous = FULL")
        self._undeleted.clear()
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
        try:
            with transaction(self.conn) as conn:
                conn.executemany(
                    "UPDATE outbox SET attempts = ?, state = ?, last_error = ? WHERE seq = ?",
                    batch,
                )
        except SQLITE_ERRORS as exc:
            self._note_write_error(exc)
            raise

    def requeue_refused(self) -> int:
        """Make refused rows pending again so they are retried; returns how many."""
        for seq, row in list(self._memory.items()):
            if row.state == "refused":
                self._memory[seq] = replace(row, state="pending")
        try:
            cur = self.conn.execute(
                "UPDATE outbox SET state = 'pending' WHERE state = 'refused'"
            )
        except SQLITE_ERRORS as exc:
            self._note_write_error(exc)
            raise
        return cur.rowcount

    def expire(self, now: float | None = None) -> list[Row]:
        """Delete P2/P3 rows older than their class's TTL; returns them.

        Age is measured on the steady clock (`now`, default `self.steady.now()`): rows of
        earlier runs age from when they were accepted as this run's start saw it.

        Never raises for a storage error: a class whose delete fails keeps its stored rows
        until the next call, and `expire_error` says why (rows in memory expire all the
        same, and are returned, so that each one is reported).
        """
        now = self.steady.now() if now is None else now
        expired: list[Row] = []
        self.expire_error = None
        conn = self.conn
        for priority, ttl in self.ttl_s.items():
            if not priority.evictable:
                continue
            cutoff = now - ttl
            for seq, row in list(self._memory.items()):
                if row.priority == priority and row.aged_from < cutoff:
                    expired.append(self._memory.pop(seq))
            try:
                with transaction(conn):
                    rows = [
                        _row(rec)
                        for rec in conn.execute(
                            f"SELECT {_COLUMNS} FROM outbox WHERE class = ? AND aged_from < ?",
                            (int(priority), cutoff),
                        )
                    ]
                    conn.execute(
                        "DELETE FROM outbox WHERE class = ? AND aged_from < ?",
                        (int(priority), cutoff),
                    )
            except SQLITE_ERRORS as exc:
                self._note_write_error(exc)
                self.expire_error = str(exc)
                continue
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

    def checkpoint(self) -> tuple[int, int]:
        """Copy committed rows from the write-ahead log into the database file.

        Without it, at a station's pace every row stays in ``-wal`` (SQLite's own checkpoint
        waits for 1000 pages): a copy of the ``.db`` alone is empty. PASSIVE: it never waits
        for a reader (`stationgw outbox`, a backup). Returns (frames in the log, frames
        copied); raises `sqlite3.Error` if the file cannot be written.
        """
        busy, frames, copied = self.conn.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchone()
        if busy:
            log.debug("checkpoint busy: %d of %d frames copied", copied, frames)
        return int(frames), int(copied)

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
        except SQLITE_ERRORS as exc:
            # The rows in memory must still go out when the database cannot be read.
            self._read_failed(exc)
            rows = []
        if self._undeleted:
            rows = [r for r in rows if r.seq not in self._undeleted]
        if self._memory:
            rows.extend(r for r in self._memory.values() if r.state == "pending" and r.key > after)
            rows.sort(key=lambda r: r.key)
            del rows[limit:]
        return rows

    def open_alerts(self) -> list[tuple[AlertRecord, bool]]:
        """Alerts not yet resolved or cancelled, each with whether all its events were sent."""
        unsent = {r.alert.alert_id for r in self._memory.values() if r.alert is not None}
        alerts = []
        try:
            unsent.update(
                a for (a,) in self.conn.execute(
                    "SELECT DISTINCT alert_id FROM outbox WHERE alert_id IS NOT NULL"
                )
            )
            for alert_id, source, state, cls, details in self.conn.execute(
                "SELECT alert_id, source, state, class, details FROM alerts "
                "WHERE state NOT IN ('resolved', 'cancelled') ORDER BY updated_at"
            ):
                try:
                    body = json.loads(details)
                except (TypeError, ValueError) as exc:
                    raise _malformed(f"alert {alert_id!r}") from exc
                if not (isinstance(body, dict) and isinstance(alert_id, str)
                        and isinstance(source, str)
                        and state in ("open", "acknowledged", "assigned")):
                    raise _malformed(f"alert {alert_id!r}")
                record = AlertRecord(alert_id, source, state, _priority(cls), body)
                alerts.append((record, alert_id not in unsent))
        except SQLITE_ERRORS as exc:
            self._read_failed(exc)  # the alerts read so far are still restored
        return alerts

    def announced_at(self) -> dict[str, float]:
        """Wall time each unacknowledged (open) alert was last announced: the escalation
        timer runs from there across restarts. Empty if it cannot be read."""
        try:
            return {
                alert_id: float(at) for alert_id, at in self.conn.execute(
                    "SELECT alert_id, updated_at FROM alerts WHERE state = 'open'"
                ) if isinstance(alert_id, str) and isinstance(at, int | float)
            }
        except SQLITE_ERRORS as exc:
            self._read_failed(exc)
            return {}

    def command_seen(self, command_id: str) -> bool:
        """True if a dispatch command with this id was already applied."""
        try:
            found = self.conn.execute(
                "SELECT 1 FROM commands WHERE command_id = ?", (command_id,)
            ).fetchone()
        except SQLITE_ERRORS as exc:
            # Unreadable: a replay is still refused if the alert's state forbids it.
            self._read_failed(exc)
            found = None
        return found is not None or any(
            r.alert is not None and r.alert.command_id == command_id for r in self._memory.values()
        )

    def depth(self) -> Depth:
        """Rows by class and state, and the wall time of the oldest unsent row."""
        try:
            return read_depth(self.conn, self._memory.values(), self._bytes)
        except SQLITE_ERRORS as exc:
            # Health must still go out: the counts this outbox keeps, the memory rows exact.
            self._read_failed(exc)
            depth = read_depth_of_memory(self._memory.values())
            return replace(depth, rows=self._rows, bytes=self._bytes)

    def memory_only(self) -> list[Row]:
        """Rows held only in memory, in drain order."""
        return sorted(self._memory.values(), key=lambda r: r.key)

    @property
    def undeleted(self) -> int:
        """Confirmed rows still in the database because their delete failed."""
        return len(self._undeleted)

    @property
    def memory_rows(self) -> int:
        """Rows held only in memory because the database could not be written."""
        return len(self._memory)


def quick_check(path: Path) -> str | None:
    """SQLite's ``quick_check`` on a read-only connection of its own: None if the file is
    sound, else what is wrong (the first few problems)."""
    try:
        conn = connect(path, readonly=True)
    except StoreError as exc:
        return str(exc)
    try:
        return _quick_check(conn)
    finally:
        conn.close()


def _quick_check(conn: sqlite3.Connection) -> str | None:
    try:
        found = [str(problem) for (problem,) in conn.execute("PRAGMA quick_check(3)")]
    except SQLITE_ERRORS as exc:
        return str(exc)
    return None if found == ["ok"] else "; ".join(found)


def backup(path: Path, out: Path) -> int:
    """Copy the outbox (with what its ``-wal`` holds) into `out`, one self-contained file.

    Safe while the daemon runs: SQLite's online backup reads one consistent snapshot, and in
    WAL mode a reader never holds up the daemon's commits. The copy is checked with
    ``quick_check`` before it replaces `out`. Returns the number of rows copied; raises
    `StoreError` (and leaves `out` as it was) if the store cannot be read or the copy is
    not sound.
    """
    out.parent.mkdir(parents=True, exist_ok=True)
    partial = out.with_name(f".{out.name}.partial")
    partial.unlink(missing_ok=True)
    src = connect(path, readonly=True)
    try:
        dst = sqlite3.connect(partial, isolation_level=None)
        try:
            src.backup(dst)  # all pages in one step: one snapshot, never a mix
            # A backup is one file: no -wal beside it to forget when it is copied on.
            dst.execute("PRAGMA journal_mode = DELETE")
            problem = _quick_check(dst)
            if problem is None:
                (rows,) = dst.execute("SELECT COUNT(*) FROM outbox").fetchone()
        finally:
            dst.close()
        if problem is not None:
            raise StoreError(
                f"{path}: the copy fails quick_check ({problem}); the store may be damaged, "
                "no backup was written"
            )
        fd = os.open(partial, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(partial, out)
    except SQLITE_ERRORS as exc:
        raise StoreError(f"{path}: cannot back up to {out}: {exc}") from exc
    finally:
        src.close()
        partial.unlink(missing_ok=True)
    return int(rows)


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
        if state not in ("pending", "refused") or type(count) is not int:
            raise _malformed(f"state {state!r}")
        by_class[_priority(cls).name][state] = count
        total += count
        found = conn.execute(
            "SELECT wall_time FROM outbox WHERE state = ? AND class = ? ORDER BY seq LIMIT 1",
            (state, cls),
        ).fetchone()
        if found is None or not isinstance(found[0], int | float):
            raise _malformed(f"oldest {state} row of class {cls}")
        first = found[0]
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


def read_depth_of_memory(memory: Iterable[Row]) -> Depth:
    """Depth figures of rows in memory only (when the database cannot be read)."""
    by_class: dict[str, dict[str, int]] = {p.name: {} for p in Priority}
    rows = list(memory)
    for row in rows:
        counts = by_class[row.priority.name]
        counts["memory"] = counts.get("memory", 0) + 1
    oldest = min((r.wall_time for r in rows), default=None)
    return Depth(by_class, oldest, 0, 0, len(rows))
