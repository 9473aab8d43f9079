"""Is this our store, and is it intact? The checks at open, and moving a bad store aside.

A store is the gateway's when its header carries `APPLICATION_ID` (stores made before the
marker existed are recognised by their `migrations` table) and its schema is exactly the
one our migrations build. It is intact when `PRAGMA integrity_check` says so and its `-wal`
belongs to it. SQLite applies any self-consistent `-wal` beside a database file, even one
from another database or from before a backup was restored (it checks the WAL's frames
against the WAL's own header, never against the database), and the result can look like a
valid, empty store: rows lost without an error. So a hot WAL is read here first, and its
newest page 1 must carry the database's identity (a random `user_version` stamped at
creation) and continue the database's change counter.

Everything here reads the files without changing them: the checks run before the database
is opened for writing, on the raw bytes and then on a read-only connection. A store that
fails is moved aside (renamed, never deleted or overwritten), with its `-wal`, `-shm` and
`-journal`, for a technician.
"""

from __future__ import annotations

import logging
import os
import sqlite3
import stat
import struct
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, get_args

from gateway.core.model import AlertState
from gateway.errors import StoreDamagedError, StoreError, StoreUnavailableError

if TYPE_CHECKING:
    from gateway.outbox.sqlite import Outbox

log = logging.getLogger(__name__)

APPLICATION_ID = 0x53475731  # "SGW1" in the database header: this file is a gateway outbox
MAGIC = b"SQLite format 3\x00"
HEADER_BYTES = 100
SIDECARS = ("-wal", "-journal", "-shm")  # moved in this order, after the database itself
WAL_MAGIC = (0x377F0682, 0x377F0683)  # checksums little-endian, big-endian
WAL_HEADER, FRAME_HEADER = 32, 24
# The tables each migration creates: a store holds exactly those of the migrations it lists.
TABLES = {
    "0001_outbox": ("outbox", "faults"),
    "0002_alerts": ("alerts", "commands"),
    "0003_row_age": (),
}
DAMAGED_CODES = ("SQLITE_CORRUPT", "SQLITE_NOTADB")
#: What a call on a store's database can raise: SQLite's errors, and UnicodeDecodeError when
#: damaged bytes sit in text it hands back (a row, a pragma's answer, or the error message
#: itself, which Python decodes as UTF-8). The second is damage too, never a crash.
SQLITE_ERRORS = (sqlite3.Error, UnicodeDecodeError)
SqliteFailure = sqlite3.Error | UnicodeDecodeError
WHAT_HAPPENS = (
    "the daemon moves it aside at its next start (renamed to {name}.damaged-<UTC time>, "
    "with its -wal), and runs on a fresh store"
)


def real(path: Path) -> Path:
    """The database file behind `path`: SQLite follows a symlinked database and keeps its
    -wal beside the target, so the checks and the moving aside do too."""
    return Path(os.path.realpath(path))


def sidecar(path: Path, suffix: str) -> Path:
    """`outbox.db` -> `outbox.db-wal` (SQLite's names for the files beside a database)."""
    return path.with_name(path.name + suffix)


def classify(path: Path, exc: SqliteFailure, doing: str) -> StoreError:
    """A SQLite error at open as damage (corrupt, not a database, text that is not UTF-8)
    or as unavailability."""
    if isinstance(exc, UnicodeDecodeError):
        return StoreDamagedError(path, f"{doing}: it holds text that is not UTF-8 ({exc})")
    name = getattr(exc, "sqlite_errorname", "")
    if name.startswith(DAMAGED_CODES):
        return StoreDamagedError(path, f"{doing}: {exc}")
    return StoreUnavailableError(f"{path}: {doing}: {exc}")


# ---------------------------------------------------------------------------- the files


@dataclass(frozen=True)
class Header:
    """The fields of a database header (its first 100 bytes) that the checks use."""

    page_size: int
    change_counter: int
    pages: int
    user_version: int
    application_id: int
    valid_for: int  # `pages` is valid when this equals `change_counter`

    @classmethod
    def parse(cls, data: bytes) -> Header:
        """Parse a header; the caller has checked `MAGIC` and the length."""
        (raw_page,) = struct.unpack_from(">H", data, 16)
        counter, pages = struct.unpack_from(">II", data, 24)
        (user_version,) = struct.unpack_from(">I", data, 60)
        (app_id,) = struct.unpack_from(">I", data, 68)
        (valid_for,) = struct.unpack_from(">I", data, 92)
        return cls(65536 if raw_page == 1 else raw_page, counter, pages, user_version, app_id,
                   valid_for)


@dataclass(frozen=True)
class Wal:
    """What SQLite would take from a `-wal`: its committed frames' page-1 images."""

    page_size: int
    committed_frames: int
    page1: list[Header] = field(default_factory=list)  # in frame order, up to the last commit


def _checksum(words: tuple[int, ...], s0: int, s1: int) -> tuple[int, int]:
    for i in range(0, len(words), 2):
        s0 = (s0 + words[i] + s1) & 0xFFFFFFFF
        s1 = (s1 + words[i + 1] + s0) & 0xFFFFFFFF
    return s0, s1


def parse_wal(data: bytes) -> Wal | None:
    """The valid, committed part of a WAL file, as SQLite's recovery reads it (fileformat2
    section 4); None when the WAL header itself is invalid."""
    if len(data) < WAL_HEADER:
        return None
    magic, _version, page_size, _ckpt, salt1, salt2, c0, c1 = struct.unpack_from(">8I", data)
    if magic not in WAL_MAGIC or page_size < 512 or page_size > 65536 or page_size & (
        page_size - 1
    ):
        return None
    order = ">" if magic & 1 else "<"
    s0, s1 = _checksum(struct.unpack_from(f"{order}6I", data), 0, 0)
    if (s0, s1) != (c0, c1):
        return None
    wal = Wal(page_size, 0)
    pending: list[Header] = []
    step = FRAME_HEADER + page_size
    offset = WAL_HEADER
    while offset + step <= len(data):
        pgno, commit_size, f_salt1, f_salt2, f0, f1 = struct.unpack_from(">6I", data, offset)
        if (f_salt1, f_salt2) != (salt1, salt2) or pgno == 0:
            break  # a frame of an earlier generation of the WAL: SQLite stops here too
        s0, s1 = _checksum(struct.unpack_from(f"{order}2I", data, offset), s0, s1)
        page = data[offset + FRAME_HEADER : offset + FRAME_HEADER + page_size]
        s0, s1 = _checksum(struct.unpack(f"{order}{page_size // 4}I", page), s0, s1)
        if (s0, s1) != (f0, f1):
            break  # torn or foreign: this frame and everything after it are ignored
        if pgno == 1 and page[:16] == MAGIC:
            pending.append(Header.parse(page))
        offset += step
        if commit_size:
            wal = Wal(page_size, (offset - WAL_HEADER) // step, [*wal.page1, *pending])
            pending = []
    return wal


def next_seal(user_version: int) -> int:
    """The store's `user_version` after one more open: 1..2**31-1, wrapping."""
    return user_version % (2**31 - 1) + 1


def seal(conn: sqlite3.Connection) -> None:
    """Tie the WAL this run writes to this database file (`wal_mismatch`).

    Checkpoint everything into the file, then write the next seal into the header: it is
    the new WAL's first page 1, which a stale or foreign database file cannot match. Only
    a marker: if the checkpoint cannot finish (a reader, a full disk) the WAL goes on.
    """
    try:
        busy, frames, _ = conn.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchone()
        if busy or frames:
            return
        (user_version,) = conn.execute("PRAGMA user_version").fetchone()
        conn.execute("BEGIN IMMEDIATE")
        try:
            conn.execute(f"PRAGMA user_version = {next_seal(user_version)}")
            conn.execute("COMMIT")
        except SQLITE_ERRORS:
            conn.execute("ROLLBACK")
            raise
    except SQLITE_ERRORS as exc:
        log.warning("outbox not sealed at open (%s); the store is used as it is", exc)


def wal_mismatch(db: Header, wal: Wal) -> str | None:
    """Why this WAL cannot be the one written on top of this database file, or None.

    Each open of a store checkpoints the WAL away, then writes `next_seal(user_version)`
    as the first frame of page 1 in the new WAL (`gateway.outbox.sqlite.seal`). The database file
    then holds the seal just before the WAL's first page 1, or one of the WAL's own page 1s
    (a checkpoint copied it), so a backup restored from before an earlier open, or another
    store's WAL, fails. A WAL that holds no page 1 (it started over while running) cannot
    be tied to its file: quick_check and the schema still decide.
    """
    if wal.page_size != db.page_size:
        return f"its page size {wal.page_size} is not the database's {db.page_size}"
    if not wal.page1 or db.application_id != APPLICATION_ID:
        return None
    newest = wal.page1[-1]
    if newest.application_id != APPLICATION_ID:
        return f"it holds another program's database (application_id {newest.application_id:#x})"
    seals = [h.user_version for h in wal.page1]
    if db.user_version in seals or next_seal(db.user_version) == seals[0]:
        return None
    return (
        f"the database is at seal {db.user_version}, the WAL at {seals[0]}..{seals[-1]}: "
        "a restored backup beside a newer WAL, or another store's WAL"
    )


def _kind(path: Path) -> os.stat_result | None:
    try:
        return path.lstat()
    except FileNotFoundError:
        return None


def inspect_files(path: Path) -> bool:
    """Check the database's files without opening them with SQLite; False when there is
    no database yet (a fresh store is made). Raises `StoreDamagedError` (move it aside)
    or `StoreUnavailableError` (leave it alone)."""
    try:
        return _inspect_files(real(path))
    except OSError as exc:
        raise StoreUnavailableError(f"{path}: cannot read the outbox database: {exc}") from exc


def _inspect_files(path: Path) -> bool:
    """Whether a database file is there; raises StoreDamagedError for files that cannot be
    the gateway's store (checked in this order: the sidecars, the database file, its header,
    its -wal)."""
    db = _kind(path)
    wal_data = _inspect_sidecars(path)
    if db is None:
        if wal_data:
            raise StoreDamagedError(path, "a -wal without its database")
        return False
    if stat.S_ISREG(db.st_mode) and db.st_size == 0:
        # The gateway never leaves an empty file (`outbox.connect` removes one it made):
        # a store truncated to nothing is loud, never silently a fresh store.
        extra = "; and a -wal without its database" if wal_data else ""
        raise StoreDamagedError(path, f"empty (0 bytes): truncated or never written{extra}")
    if not stat.S_ISREG(db.st_mode):
        raise StoreDamagedError(path, "not a regular file")
    header = _inspect_header(path, db.st_size, has_wal=bool(wal_data))
    if wal_data:
        wal = parse_wal(wal_data)
        if wal is None:
            raise StoreDamagedError(path, "its -wal has no valid WAL header")
        mismatch = wal_mismatch(header, wal)
        if mismatch is not None:
            raise StoreDamagedError(path, f"its -wal does not belong to it: {mismatch}")
    return True


def _inspect_sidecars(path: Path) -> bytes:
    """The -wal's bytes (b"" if there is none or it is empty); raises for a sidecar that is
    not a regular file, or a hot rollback journal."""
    for suffix in SIDECARS:
        other = _kind(sidecar(path, suffix))
        if other is not None and not stat.S_ISREG(other.st_mode):
            raise StoreDamagedError(path, f"{sidecar(path, suffix).name} is not a regular file")
    journal = _kind(sidecar(path, "-journal"))
    if journal is not None and journal.st_size:
        # The gateway's stores are WAL only: a hot rollback journal is another program's.
        raise StoreDamagedError(path, f"{sidecar(path, '-journal').name} is a rollback journal, "
                           "which the gateway never writes")
    wal_file = _kind(sidecar(path, "-wal"))
    return sidecar(path, "-wal").read_bytes() if wal_file and wal_file.st_size else b""


def _inspect_header(path: Path, size: int, *, has_wal: bool) -> Header:
    """The database's SQLite header; raises if it is not SQLite, or (with no -wal to make
    up the difference) shorter than its pages say."""
    with path.open("rb") as f:
        head = f.read(HEADER_BYTES)
    if not head.startswith(MAGIC):
        raise StoreDamagedError(path, "not an SQLite database (no SQLite header)")
    if len(head) < HEADER_BYTES:
        raise StoreDamagedError(path, f"truncated: {size} bytes, less than a header")
    header = Header.parse(head)
    if not has_wal and (size % header.page_size or size < header.page_size):
        raise StoreDamagedError(
            path, f"truncated: {size} bytes is not a whole number of "
            f"{header.page_size}-byte pages",
        )
    claimed = header.pages * header.page_size
    if not has_wal and header.valid_for == header.change_counter and claimed > size:
        raise StoreDamagedError(path, f"truncated: {size} bytes, its header says {claimed}")
    return header


# ---------------------------------------------------------------------------- SQLite


def _parses(schema: list[tuple[bytes]], path: Path) -> None:
    """The schema's statements, replayed in an empty database, parse: a read-only
    connection skips the names in CHECK constraints (integrity_check says "ok" over a
    damaged one), but the first write connection refuses the whole store, so damage found
    only then could not be moved aside untouched."""
    scratch = sqlite3.connect(":memory:")
    try:
        for (sql,) in schema:
            scratch.execute(sql.decode("utf-8"))
    except UnicodeDecodeError as exc:
        raise StoreDamagedError(path, f"its schema is not UTF-8 text ({exc})") from exc
    except sqlite3.Error as exc:
        raise StoreDamagedError(path, f"its schema does not parse ({exc})") from exc
    finally:
        scratch.close()


def verify(conn: sqlite3.Connection, path: Path) -> None:
    """Check, on a read-only connection, that the store is intact and the gateway's own.

    A database with no tables is empty and may become a store; any other database must
    carry the gateway's schema, never be migrated into one.
    """
    try:
        # integrity_check, not quick_check: it also matches every index to its table, so a
        # damaged value (an event id with a changed byte) cannot be adopted as a sound row.
        # About 0.2 s for 90 MB here (BENCHMARKS.md), once at start.
        problems = [msg for (msg,) in conn.execute("PRAGMA integrity_check(3)")]
        (app_id,) = conn.execute("PRAGMA application_id").fetchone()
        tables = {
            name for (name,) in conn.execute(
                "SELECT name FROM sqlite_master WHERE type = 'table' AND name NOT LIKE 'sqlite_%'"
            )
        }
        names = (
            {name for (name,) in conn.execute("SELECT name FROM migrations")}
            if "migrations" in tables else set()
        )
        schema = conn.execute(
            "SELECT CAST(sql AS BLOB) FROM sqlite_master WHERE sql IS NOT NULL "
            "AND name NOT LIKE 'sqlite_%' "
            "ORDER BY type != 'table'"
        ).fetchall()
    except SQLITE_ERRORS as exc:
        raise classify(path, exc, "cannot check the database") from exc
    if problems != ["ok"]:
        raise StoreDamagedError(path, "integrity check failed: " + "; ".join(problems))
    _parses(schema, path)
    if app_id not in (0, APPLICATION_ID):
        raise StoreDamagedError(
            path, f"another program's database (application_id {app_id:#x}, "
            f"the gateway's is {APPLICATION_ID:#x})",
        )
    if not tables:
        return
    if "migrations" not in tables:
        raise StoreDamagedError(path, f"not a gateway store: tables {_names(tables)} and no "
                           "migrations table")
    unknown = names - TABLES.keys()
    if unknown:
        raise StoreDamagedError(path, f"migrations {_names(unknown)} are unknown to this version "
                           "(a store of a newer gateway?)")
    if "0001_outbox" not in names:
        raise StoreDamagedError(path, "not a gateway store: migration 0001_outbox missing")
    expected = {"migrations"} | {t for name in names for t in TABLES[name]}
    if tables != expected:
        extra, missing = tables - expected, expected - tables
        raise StoreDamagedError(path, "not a gateway store: " + ", ".join(
            ([f"unexpected tables {_names(extra)}"] if extra else [])
            + ([f"missing tables {_names(missing)}"] if missing else [])
        ))
    _check_rows(conn, path, tables)


# A flipped bit inside a row passes quick_check, and would stop the daemon as it reads the
# row back (an alert's state at restore, a class while draining): checked once at open.
_ROW_CHECKS = {
    "outbox": "class NOT BETWEEN 0 AND 3 OR state NOT IN ('pending', 'refused') "
              "OR typeof(seq) != 'integer' OR typeof(payload) NOT IN ('blob', 'text')",
    "alerts": "class NOT BETWEEN 0 AND 3 OR state NOT IN ({states}) "
              "OR NOT json_valid(details) OR json_type(details) != 'object'",
}


def _check_rows(conn: sqlite3.Connection, path: Path, tables: set[str]) -> None:
    states = ", ".join(f"'{s}'" for s in get_args(AlertState))
    for table, bad in _ROW_CHECKS.items():
        if table not in tables:
            continue
        try:
            (count,) = conn.execute(
                f"SELECT COUNT(*) FROM {table} WHERE {bad.format(states=states)}"  # noqa: S608
            ).fetchone()  # (constant tables and clauses: no input reaches the SQL)
        except SQLITE_ERRORS as exc:
            raise classify(path, exc, f"cannot read its {table}") from exc
        if count:
            raise StoreDamagedError(path, f"{count} row(s) of {table} hold values the "
                                    "gateway never writes (damaged in place)")


def _names(names: Iterable[str]) -> str:
    return ", ".join(sorted(names))


def check(path: Path, *, tidy: bool = True) -> bool:
    """Every check, read-only; False when there is no store yet. Raises `StoreDamagedError`
    for a store to move aside, `StoreUnavailableError` when it cannot be read at all.

    `tidy` removes the empty -wal the look created: only when no daemon may be starting
    on the same store at this moment (it could be that daemon's new -wal).
    """
    path = real(path)
    if not inspect_files(path):
        return False
    existed = {suffix for suffix in ("-wal", "-shm") if _kind(sidecar(path, suffix))}
    try:
        conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True, isolation_level=None)
    except SQLITE_ERRORS as exc:
        raise classify(path, exc, "cannot open the database") from exc
    try:
        verify(conn, path)
    finally:
        conn.close()
        if tidy:
            _tidy(path, existed)
    return True


def _tidy(path: Path, existed: set[str]) -> None:
    """Remove the empty -wal and the -shm a read-only look created, so that a store moved
    aside is exactly the files that were there (they hold no data: the -wal is empty)."""
    wal = sidecar(path, "-wal")
    if "-wal" in existed or not wal.is_file() or wal.stat().st_size:
        return
    wal.unlink()
    if "-shm" not in existed:
        sidecar(path, "-shm").unlink(missing_ok=True)


# ---------------------------------------------------------------------------- moving aside


def move_aside(path: Path, now: float | None = None) -> list[Path]:
    """Rename the database and the files beside it to `NAME.damaged-<UTC time>` names (the
    `-wal` stays next to its database under the new name); returns the new paths.

    Never deletes, never overwrites: a name already taken gets a `.1`, `.2`... suffix, and
    regular files are moved by hard link then unlink, which cannot replace a file.
    """
    path = real(path)
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime(time.time() if now is None else now))
    sources = [p for p in (path, *(sidecar(path, s) for s in SIDECARS)) if _kind(p)]
    base, n = f"{path.name}.damaged-{stamp}", 0
    while any(_kind(path.with_name(base + s)) for s in ("", *SIDECARS)):
        n += 1
        base = f"{path.name}.damaged-{stamp}.{n}"
    moved = []
    # The database first: a crash after it leaves a -wal without its database, which the
    # next start moves aside too, never a database beside a WAL it no longer matches.
    for source in sources:
        target = path.with_name(base + source.name[len(path.name):])
        _move(source, target)
        moved.append(target)
    fd = os.open(path.parent, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)  # the renames survive a power cut
    finally:
        os.close(fd)
    return moved


def kept_files(path: Path) -> list[Path]:
    """The files of stores moved aside beside `path` (now or at an earlier start)."""
    path = real(path)
    try:
        return sorted(path.parent.glob(f"{glob_escape(path.name)}.damaged-*"))
    except OSError:
        return []


def glob_escape(name: str) -> str:
    """`name` with glob's special characters matched literally."""
    return "".join(f"[{c}]" if c in "*?[" else c for c in name)


def _move(source: Path, target: Path) -> None:
    if stat.S_ISREG(source.lstat().st_mode):
        try:
            os.link(source, target)  # fails if target exists: nothing is ever overwritten
        except FileExistsError:
            raise
        except OSError:
            pass  # no hard links on this filesystem: renamed below
        else:
            source.unlink()
            return
    if _kind(target) is not None:  # pragma: no cover - checked by the caller just before
        raise FileExistsError(target)
    source.rename(target)  # a folder, or a filesystem without hard links


# ---------------------------------------------------------------------------- the policy


@dataclass(frozen=True)
class Opening:
    """How the store was opened: files moved aside (and why), or memory only (and why)."""

    path: Path
    moved: list[Path] = field(default_factory=list)
    damage: str | None = None
    memory_only: str | None = None


def open_store(outbox: Outbox) -> Opening:
    """Open the outbox, whatever is on disk: the store as it is if it is ours and intact;
    else moved aside and a fresh store; else (no store can be opened) memory only."""
    path = outbox.path
    moved: list[Path] = []
    damage: str | None = None
    try:
        outbox.open()
        return Opening(path)
    except StoreDamagedError as err:
        damage = err.reason
        try:
            moved = move_aside(path)
        except OSError as exc:
            reason = f"{damage}, and it cannot be moved aside ({exc})"
        else:
            try:
                outbox.open()
                return Opening(path, moved, damage)
            except (StoreError, OSError) as exc:
                reason = f"a fresh store cannot be made ({exc})"
    except (StoreError, OSError) as err:
        reason = str(err)
    outbox.open_memory(reason)
    return Opening(path, moved, damage, reason)
