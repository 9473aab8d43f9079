"""A store that is damaged, foreign or cannot be opened at start: the station still takes calls.

Every store here is built by real file operations on real SQLite files. A crash image is a
copy of a live store's database and -wal taken while its connection is open, which is what
a power cut leaves. For each damaged or foreign store the daemon must start, keep the
original files byte for byte under the moved-aside names, name them in a fault, and publish
a press to a real Mosquitto. Stores that are the gateway's own, crash images included, must
be adopted with every row.
"""

from __future__ import annotations

import asyncio
import errno
import os
import random
import shutil
import signal
import sqlite3
import subprocess
import sys
import time
import tomllib
from collections.abc import Callable, Iterator
from functools import partial
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from gateway import daemon
from gateway.core.model import AlertRecord, Event, Priority
from gateway.daemon import Gateway
from gateway.outbox.files import APPLICATION_ID, check, move_aside, open_store, sidecar
from gateway.outbox.sqlite import Outbox
from gateway.testing.config import station_data, write_config
from gateway.testing.daemon import StationDaemon, running
from gateway.testing.mosquitto import Mosquitto
from gateway.uplink.topics import Topics
from tests.helpers import station_config, subscribe

ROOT = Path(__file__).resolve().parent.parent
TOPICS = Topics("stationgw/v1", "t-store-open")
DB = "outbox.db"


def press(n: int = 0) -> Event:
    return Event("help_point.press", f"hp-{n}", Priority.P1, {"pad": "x" * 300})


def files_of(path: Path) -> dict[str, bytes]:
    """The database and its -wal and -journal, by suffix (the -shm is SQLite's index of
    the -wal, rebuilt by any reader, so it is not compared)."""
    found = {}
    for suffix in ("", "-wal", "-journal"):
        one = sidecar(path, suffix)
        if one.is_file():
            found[suffix] = one.read_bytes()
    return found


class Store:
    """A real gateway store in a scratch folder, written through `Outbox`."""

    def __init__(self, folder: Path) -> None:
        folder.mkdir(parents=True, exist_ok=True)
        self.path = folder / DB
        self.box = Outbox(self.path, TOPICS.render)
        self.box.open()
        self.event_ids: list[str] = []

    def accept(self, n: int) -> list[str]:
        ids = [row.event_id for row in self.box.accept([press(i) for i in range(n)]).rows]
        self.event_ids += ids
        return ids

    def deliver_all(self) -> None:
        self.box.delivered(seq for (seq,) in self.box.conn.execute("SELECT seq FROM outbox"))
        self.event_ids.clear()

    def image(self, target: Path, *, wal: bool = True) -> None:
        """Copy the database (and its -wal) as a power cut would leave them, to `target`."""
        shutil.copyfile(self.path, target)
        if wal and sidecar(self.path, "-wal").exists():
            shutil.copyfile(sidecar(self.path, "-wal"), sidecar(target, "-wal"))

    def close(self) -> None:
        self.box.close()


def clean_store(folder: Path, rows: int = 5) -> Store:
    """A store with `rows` P1 rows, checkpointed into the database file, still open."""
    store = Store(folder)
    store.accept(rows)
    store.box.conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    return store


def foreign_db(path: Path, sql: str, *, wal: bool = False) -> None:
    conn = sqlite3.connect(path, isolation_level=None)
    if wal:
        conn.execute("PRAGMA journal_mode = WAL")
    for statement in sql.split(";"):
        if statement.strip():
            conn.execute(statement)
    conn.close()


# ---------------------------------------------------------------------------- the damaged

Build = Callable[[Path, Path], None]  # (scratch folder, the store path to create)


def random_bytes(n: int) -> Build:
    def build(scratch: Path, path: Path) -> None:
        path.write_bytes(random.Random(n).randbytes(n))
    return build


def header_then_garbage(scratch: Path, path: Path) -> None:
    path.write_bytes(b"SQLite format 3\x00" + random.Random(7).randbytes(8000))


def truncated(at: Callable[[int], int]) -> Build:
    def build(scratch: Path, path: Path) -> None:
        store = clean_store(scratch, rows=60)
        store.close()
        data = store.path.read_bytes()
        path.write_bytes(data[: at(len(data))])
    return build


def page_corrupted(page: Callable[[int], int]) -> Build:
    def build(scratch: Path, path: Path) -> None:
        store = clean_store(scratch, rows=60)
        store.close()
        data = bytearray(store.path.read_bytes())
        start = (page(len(data) // 4096) - 1) * 4096
        data[start : start + 64] = random.Random(start).randbytes(64)
        path.write_bytes(bytes(data))
    return build


def gateway_store_rewritten(sql: str) -> Build:
    """A gateway store with a value rewritten in place, as a flipped bit on the card does
    (CHECK constraints off: the damage does not ask SQLite)."""
    def build(scratch: Path, path: Path) -> None:
        store = Store(scratch)
        record = AlertRecord("a-1", "hp-1", "open", Priority.P1, {"press_count": 1})
        store.box.accept([Event("help_point.press", "hp-1", Priority.P1, {}, alert=record)])
        store.accept(3)
        store.close()
        shutil.copyfile(store.path, path)
        foreign_db(path, f"PRAGMA ignore_check_constraints = 1; {sql}", wal=True)
    return build


def foreign(sql: str) -> Build:
    def build(scratch: Path, path: Path) -> None:
        foreign_db(path, sql)
    return build


def gateway_store_altered(sql: str) -> Build:
    def build(scratch: Path, path: Path) -> None:
        store = clean_store(scratch)
        store.close()
        shutil.copyfile(store.path, path)
        foreign_db(path, sql)
    return build


def wal_of_another_store(scratch: Path, path: Path) -> None:
    mine = clean_store(scratch / "a")
    mine.close()
    shutil.copyfile(mine.path, path)
    other = Store(scratch / "b")  # another station's store, left by a power cut
    other.accept(3)
    shutil.copyfile(sidecar(other.path, "-wal"), sidecar(path, "-wal"))
    other.close()


def wal_of_a_foreign_db(scratch: Path, path: Path) -> None:
    mine = clean_store(scratch / "a")
    mine.close()
    shutil.copyfile(mine.path, path)
    other = scratch / "other.db"
    conn = sqlite3.connect(other, isolation_level=None)
    conn.execute("PRAGMA journal_mode = WAL")
    conn.execute("CREATE TABLE readings (x)")
    conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    conn.executemany("INSERT INTO readings VALUES (?)", [(i,) for i in range(50)])
    shutil.copyfile(sidecar(other, "-wal"), sidecar(path, "-wal"))
    conn.close()


def restored_backup_beside_newer_wal(scratch: Path, path: Path) -> None:
    """The issue's case: a backup with five accepted P1 rows, restored next to the -wal a
    later run left after it had sent them. SQLite applies that WAL to the backup, and the
    store looks valid and empty."""
    store = Store(scratch)
    store.accept(5)
    store.image(path)  # the backup: copied while the daemon ran
    store.deliver_all()
    store.close()
    later = Store(scratch)  # the next start
    later.accept(1)
    later.deliver_all()
    shutil.copyfile(sidecar(later.path, "-wal"), sidecar(path, "-wal"))  # a power cut
    later.close()


def garbage_wal(scratch: Path, path: Path) -> None:
    store = clean_store(scratch)
    store.close()
    shutil.copyfile(store.path, path)
    sidecar(path, "-wal").write_bytes(random.Random(3).randbytes(5000))


def wal_is_a_folder(scratch: Path, path: Path) -> None:
    store = clean_store(scratch)
    store.close()
    shutil.copyfile(store.path, path)
    sidecar(path, "-wal").mkdir()
    (sidecar(path, "-wal") / "note").write_text("not a WAL")


def wal_without_its_database(scratch: Path, path: Path) -> None:
    store = Store(scratch)
    store.accept(5)
    shutil.copyfile(sidecar(store.path, "-wal"), sidecar(path, "-wal"))
    store.close()


def hot_rollback_journal(scratch: Path, path: Path) -> None:
    foreign_db(path, "CREATE TABLE t (x); INSERT INTO t VALUES (1)")
    sidecar(path, "-journal").write_bytes(random.Random(5).randbytes(1024))


def path_is_a_folder(scratch: Path, path: Path) -> None:
    path.mkdir()
    (path / "x").write_text("a folder where the database should be")


DAMAGED: dict[str, Build] = {
    "empty-file": random_bytes(0),
    "random-bytes-1": random_bytes(1),
    "random-bytes-99": random_bytes(99),
    "random-bytes-4096": random_bytes(4096),
    "random-bytes-65536": random_bytes(65536),
    "sqlite-header-then-garbage": header_then_garbage,
    "truncated-in-the-header": truncated(lambda n: 50),
    "truncated-after-the-header": truncated(lambda n: 100),
    "truncated-to-one-page": truncated(lambda n: 4096),
    "truncated-mid-page": truncated(lambda n: 2 * 4096 + 17),
    "truncated-by-a-page": truncated(lambda n: n - 4096),
    "truncated-by-a-byte": truncated(lambda n: n - 1),
    "page-2-corrupted": page_corrupted(lambda pages: 2),
    "page-3-corrupted": page_corrupted(lambda pages: 3),
    "last-page-corrupted": page_corrupted(lambda pages: pages),
    "foreign-db-with-rows": foreign(
        "CREATE TABLE readings (t REAL, v REAL);"
        "INSERT INTO readings VALUES (1, 2); INSERT INTO readings VALUES (3, 4)"
    ),
    "foreign-table-named-outbox": foreign(
        "CREATE TABLE outbox (seq INTEGER PRIMARY KEY, x); INSERT INTO outbox VALUES (1, 2)"
    ),
    "another-programs-application-id": foreign(
        "PRAGMA application_id = 1234; CREATE TABLE t (x)"
    ),
    "store-of-a-newer-gateway": gateway_store_altered(
        "CREATE TABLE future (x); INSERT INTO migrations VALUES ('0003_future', 0)"
    ),
    "store-with-a-table-added": gateway_store_altered("CREATE TABLE notes (x)"),
    "row-class-out-of-range": gateway_store_rewritten("UPDATE outbox SET class = 7"),
    "row-state-unknown": gateway_store_rewritten("UPDATE outbox SET state = 'pendinf'"),
    "alert-details-not-json": gateway_store_rewritten("UPDATE alerts SET details = '{\"pr'"),
    "alert-state-unknown": gateway_store_rewritten("UPDATE alerts SET state = 'opem'"),
    "wal-of-another-store": wal_of_another_store,
    "wal-of-a-foreign-db": wal_of_a_foreign_db,
    "restored-backup-beside-newer-wal": restored_backup_beside_newer_wal,
    "garbage-wal": garbage_wal,
    "wal-is-a-folder": wal_is_a_folder,
    "wal-without-its-database": wal_without_its_database,
    "hot-rollback-journal": hot_rollback_journal,
    "path-is-a-folder": path_is_a_folder,
}


# ---------------------------------------------------------------------------- the good

Good = Callable[[Path, Path], list[str]]  # returns the event ids the store holds


def no_store(scratch: Path, path: Path) -> list[str]:
    return []


def empty_sqlite_db(scratch: Path, path: Path) -> list[str]:
    foreign_db(path, "PRAGMA user_version = 0")  # a valid database file with no tables
    sqlite3.connect(path).execute("VACUUM").connection.close()
    return []


def zero_length_wal(scratch: Path, path: Path) -> list[str]:
    store = clean_store(scratch)
    store.close()
    shutil.copyfile(store.path, path)
    sidecar(path, "-wal").write_bytes(b"")
    return store.event_ids


def crash_image(scratch: Path, path: Path) -> list[str]:
    store = Store(scratch)
    store.accept(5)
    store.image(path)
    store.close()
    return store.event_ids


def crash_after_the_wal_started_over(scratch: Path, path: Path) -> list[str]:
    store = clean_store(scratch, rows=3)
    store.deliver_all()
    store.box.conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    store.accept(4)
    store.image(path)
    store.close()
    return store.event_ids


def crash_after_a_partial_checkpoint(scratch: Path, path: Path) -> list[str]:
    """A reader held an old snapshot while a checkpoint ran: the database file has some of
    the WAL's pages (page 1 among them), and the WAL goes on."""
    store = Store(scratch)
    store.accept(3)
    reader = sqlite3.connect(store.path, isolation_level=None)
    reader.execute("BEGIN")
    reader.execute("SELECT COUNT(*) FROM outbox").fetchone()
    store.accept(40)
    store.box.conn.execute("PRAGMA wal_checkpoint(PASSIVE)")
    reader.execute("COMMIT")
    store.box.conn.execute("PRAGMA wal_checkpoint(PASSIVE)")
    store.accept(2)
    store.image(path)
    reader.close()
    store.close()
    return store.event_ids


def store_from_before_the_marker(scratch: Path, path: Path) -> list[str]:
    """A store an earlier version made: no application_id, no seal; left by a crash."""
    store = clean_store(scratch)
    store.box.conn.execute("PRAGMA application_id = 0")
    store.box.conn.execute("PRAGMA user_version = 0")
    store.box.conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    store.accept(1)
    store.image(path)
    store.close()
    return store.event_ids


def symlinked_crash_image(scratch: Path, path: Path) -> list[str]:
    """The database on another disk, linked into the state folder: its -wal is beside the
    target, where SQLite keeps it."""
    target = scratch / "elsewhere" / DB
    target.parent.mkdir(parents=True)
    ids = crash_image(scratch, target)
    path.symlink_to(target)
    return ids


GOOD: dict[str, Good] = {
    "no-store": no_store,
    "empty-sqlite-db": empty_sqlite_db,
    "zero-length-wal": zero_length_wal,
    "crash-image": crash_image,
    "crash-after-the-wal-started-over": crash_after_the_wal_started_over,
    "crash-after-a-partial-checkpoint": crash_after_a_partial_checkpoint,
    "store-from-before-the-marker": store_from_before_the_marker,
    "symlinked-crash-image": symlinked_crash_image,
}


# ---------------------------------------------------------------------------- the daemon


def kept_copies(path: Path) -> list[Path]:
    """The moved-aside names of the database (for a lone -wal: of its database)."""
    return sorted({
        p.with_name(p.name.removesuffix("-wal").removesuffix("-shm").removesuffix("-journal"))
        for p in path.parent.glob(f"{DB}.damaged-*")
    })


@pytest.mark.parametrize("case", DAMAGED)
async def test_a_damaged_or_foreign_store_is_moved_aside_and_the_station_takes_calls(
    case: str, broker: Mosquitto, tmp_path: Path
) -> None:
    path = tmp_path / "state" / DB
    path.parent.mkdir()
    DAMAGED[case](tmp_path / "scratch", path)
    before = files_of(path)
    listing = sorted(p.name for p in path.iterdir()) if path.is_dir() else None
    config = station_config(tmp_path, [broker.url], store={"path": str(path)})
    async with subscribe(broker.port, f"stationgw/v1/{config.station_id}/events/#") as sub:
        async with running(Gateway(config)) as gw:
            row = await gw.accept(press())
            assert row.durable  # on the fresh store: committed, the lamp may say so
            await sub.wait_for(lambda m: any(p["event_id"] == row.event_id for _, p in m))
            report = await gw.publisher.retained.health_report()
    (kept,) = kept_copies(path)
    assert files_of(kept) == before  # every byte kept, the -wal beside its database
    if listing is not None:
        assert sorted(p.name for p in kept.iterdir()) == listing
    fault = next(f for f in report["faults"] if f["code"] == "store_moved_aside")
    assert all(str(sidecar(kept, s)) in fault["message"] for s in files_of(kept))
    assert gw.outbox.opening is not None and gw.outbox.opening.damage is not None
    assert gw.outbox.opening.damage in fault["message"]  # says what was wrong with it
    with sqlite3.connect(f"file:{path}?mode=ro", uri=True) as fresh:
        assert fresh.execute("PRAGMA application_id").fetchone() == (APPLICATION_ID,)
        assert fresh.execute("SELECT COUNT(*) FROM outbox").fetchone() == (0,)
        logged = [m for (m,) in fresh.execute("SELECT message FROM faults WHERE active = 1")]
    assert any(fault["message"] == message for message in logged)  # `stationgw outbox` shows it


@pytest.mark.parametrize("case", GOOD)
async def test_the_gateways_own_store_is_adopted_with_every_row(
    case: str, broker: Mosquitto, tmp_path: Path
) -> None:
    path = tmp_path / "state" / DB
    path.parent.mkdir()
    held = GOOD[case](tmp_path / "scratch", path)
    config = station_config(tmp_path, [broker.url], store={"path": str(path)})
    topics = [f"stationgw/v1/{s}/events/#" for s in (config.station_id, TOPICS.station)]
    async with subscribe(broker.port, topics) as sub:
        async with running(Gateway(config)) as gw:
            row = await gw.accept(press())
            want = {*held, row.event_id}
            await sub.wait_for(lambda m: want <= {p["event_id"] for _, p in m})
            assert not gw.health.faults.keys() & {"store_moved_aside", "store_memory_only"}
    assert kept_copies(path) == []
    with sqlite3.connect(f"file:{path}?mode=ro", uri=True) as conn:
        assert conn.execute("PRAGMA application_id").fetchone() == (APPLICATION_ID,)
        (identity,) = conn.execute("PRAGMA user_version").fetchone()
    assert identity != 0
    check(path)  # and the next start adopts it again


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow,
                                                                  HealthCheck.function_scoped_fixture])
@given(
    how=st.sampled_from(["truncate", "overwrite", "zero", "append"]),
    where=st.floats(0, 1),
    size=st.integers(1, 5000),
    seed=st.integers(0, 2**32),
    hot=st.booleans(),
)
# Found by this sweep (CI, 2026-12-07): damage in the schema's text made Python's sqlite3
# raise UnicodeDecodeError (from a row, and from an error message) instead of an SQLite error.
@example(how="overwrite", where=0.0234375, size=5, seed=1, hot=False)
@example(how="overwrite", where=0.0234375, size=1, seed=0, hot=False)
def test_any_damage_is_kept_or_the_store_is_whole(
    tmp_path_factory: pytest.TempPathFactory, how: str, where: float, size: int, seed: int,
    hot: bool,
) -> None:
    """Whatever happens to the database file, opening never fails and never loses rows
    silently: either every row is there, or the damaged bytes are kept under a new name."""
    tmp = tmp_path_factory.mktemp("sweep")
    store = Store(tmp / "scratch")
    store.accept(30)
    if not hot:
        store.box.conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    path = tmp / DB
    store.image(path)
    store.close()
    data = bytearray(path.read_bytes())
    at = int(where * len(data))
    if how == "truncate":
        del data[at:]
    elif how == "overwrite":
        data[at : at + size] = random.Random(seed).randbytes(len(data[at : at + size]))
    elif how == "zero":
        data[at : at + size] = bytes(len(data[at : at + size]))
    else:
        data += random.Random(seed).randbytes(size)
    path.write_bytes(bytes(data))
    before = files_of(path)
    box = Outbox(path, TOPICS.render)
    opening = open_store(box)
    try:
        assert opening.memory_only is None
        if opening.moved:
            assert files_of(opening.moved[0]) == before
            assert box.depth().rows == 0  # a fresh store
        else:
            ids = {e for (e,) in box.conn.execute("SELECT event_id FROM outbox")}
            assert ids == set(store.event_ids)  # adopted: every row, none lost
    finally:
        box.close()


# ---------------------------------------------------------------------------- disk full


def fill(path: Path) -> None:
    """Write to `path` until the disk is full."""
    with path.open("wb", buffering=0) as filler:
        try:
            while True:
                filler.write(b"\0" * 4096)
        except OSError as exc:
            if exc.errno != errno.ENOSPC:
                raise


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    """A real 1 MiB tmpfs, filled to the last byte."""
    mount = tmp_path / "disk"
    mount.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(mount)], check=True)
    try:
        fill(mount / "filler")
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=True)


async def test_disk_full_at_start_runs_in_memory_and_takes_calls(
    broker: Mosquitto, small_disk: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(daemon, "MAINTENANCE_INTERVAL_S", 0.1)  # retries the store sooner
    path = small_disk / DB
    config = station_config(tmp_path, [broker.url], store={"path": str(path)})
    async with subscribe(broker.port, f"stationgw/v1/{config.station_id}/events/#") as sub:
        async with running(Gateway(config)) as gw:
            row = await gw.accept(press())
            assert not row.durable  # honest: the lamp never says "accepted" for it
            await sub.wait_for(lambda m: any(p["event_id"] == row.event_id for _, p in m))
            report = await gw.publisher.retained.health_report()
            assert [n for n in os.listdir(small_disk) if n.startswith(DB)] == []  # no debris
            await asyncio.to_thread((small_disk / "filler").unlink)  # the disk has room again
            async with asyncio.timeout(20):
                while "store_memory_only" in gw.health.faults:
                    await asyncio.sleep(0.05)
            later = await gw.accept(press(1))
            assert later.durable and later.seq > row.seq  # on disk again, in order
            await sub.wait_for(lambda m: any(p["event_id"] == later.event_id for _, p in m))
    codes = {f["code"]: f["message"] for f in report["faults"]}
    assert "store_memory_only" in codes and str(path) in codes["store_memory_only"]
    assert "full" in codes["store_memory_only"]
    assert kept_copies(path) == []  # nothing there was damaged: nothing moved
    check(path)  # the store made once the disk had room is the gateway's


# ---------------------------------------------------------------------------- processes


def stationgw(*args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "gateway.ops.cli", *args],
        capture_output=True, text=True, timeout=timeout, cwd=ROOT, check=False,
    )


def station_toml(tmp_path: Path, url: str, store: Path) -> Path:
    raw = station_data(tmp_path, url, id_prefix="so", fast_reconnect=False,
                       gpio_pin_factory="mock", store={"path": str(store)},
                       help_points=[{"id": "hp-1", "pin": 17, "lamp_pin": 27}])
    path = write_config(tmp_path / "station.toml", raw)
    path.chmod(0o600)
    return path


def at_least(n: int, messages: list[tuple[str, dict[str, Any]]]) -> bool:
    return len(messages) >= n


def start_daemon(config: Path, log: Path) -> subprocess.Popen[bytes]:
    return StationDaemon(config, log, cwd=ROOT).start()


def wait_for_status(config: Path, proc: subprocess.Popen[bytes], text: str) -> str:
    deadline = time.monotonic() + 30
    while True:
        shown = stationgw("status", "--config", str(config))
        if text in shown.stdout:
            return shown.stdout
        assert proc.poll() is None, "the daemon exited"
        assert time.monotonic() < deadline, shown.stdout + shown.stderr
        time.sleep(0.2)


async def test_a_restart_on_a_damaged_store_does_not_loop(
    broker: Mosquitto, tmp_path: Path
) -> None:
    path = tmp_path / DB  # the simulate socket beside it needs a short path
    restored_backup_beside_newer_wal(tmp_path / "scratch", path)
    before = files_of(path)
    config = station_toml(tmp_path, broker.url, path)
    station = tomllib.loads(config.read_text())["station_id"]
    log = tmp_path / "daemon.log"
    async with subscribe(broker.port, f"stationgw/v1/{station}/events/#") as sub:
        for start in range(2):  # a first start on the damage, then a restart after a kill
            proc = await asyncio.to_thread(start_daemon, config, log)
            try:
                shown = await asyncio.to_thread(wait_for_status, config, proc,
                                                "store_moved_aside")
                assert "running" in shown and str(kept_copies(path)[0]) in shown
                pressed = await asyncio.to_thread(stationgw, "simulate", "press", "hp-1",
                                                  "--config", str(config))
                assert pressed.returncode == 0, pressed.stderr
                await sub.wait_for(partial(at_least, start + 1))
            finally:
                proc.send_signal(signal.SIGKILL if start == 0 else signal.SIGTERM)
                proc.wait(timeout=10)
    (kept,) = kept_copies(path)  # moved once; the fresh store was adopted on the restart
    assert files_of(kept) == before
    text = log.read_text()
    assert text.count("fault raised code=store_moved_aside") == 2
    assert "does not belong to it" in text
    listed = await asyncio.to_thread(stationgw, "outbox", "--config", str(config))
    assert listed.returncode == 0, listed.stderr  # the fresh store, and the kept one named
    assert f"moved aside, kept for a technician: {kept}" in listed.stderr


def test_moving_aside_never_overwrites(tmp_path: Path) -> None:
    path = tmp_path / DB
    path.write_bytes(b"damaged once")
    sidecar(path, "-wal").write_bytes(b"its wal")
    now = time.time()
    first = move_aside(path, now)
    path.write_bytes(b"damaged again, in the same second")
    second = move_aside(path, now)
    assert [p.read_bytes() for p in first] == [b"damaged once", b"its wal"]
    assert [p.read_bytes() for p in second] == [b"damaged again, in the same second"]
    assert second[0].name == first[0].name + ".1"
    assert not path.exists() and not sidecar(path, "-wal").exists()


def test_selftest_and_outbox_name_a_damaged_store(broker: Mosquitto, tmp_path: Path) -> None:
    path = tmp_path / "state" / DB
    path.parent.mkdir()
    restored_backup_beside_newer_wal(tmp_path / "scratch", path)
    before = files_of(path)
    config = station_toml(tmp_path, broker.url, path)
    shown = stationgw("outbox", "--config", str(config))
    assert shown.returncode == 1
    assert "Traceback" not in shown.stderr + shown.stdout
    assert "does not belong to it" in shown.stderr and "moves it aside" in shown.stderr
    from gateway.config.loading import load_config
    from gateway.ops.selftest import storage

    (database,) = [c for c in storage(load_config(config)) if c.name == "database"]
    assert database.outcome == "fail" and "does not belong to it" in database.detail
    assert files_of(path) == before  # looking changes nothing
