"""Storage faults at run time: a full disk, a damaged page, and the write-ahead log.

A full disk is a real tmpfs filled to the last block (`gateway.testing.disk`), a damaged
page is garbage written over the live database file, and deliveries go through a real
Mosquitto. In every case the station keeps taking calls, publishes them, raises a named
fault, never crashes, and loses nothing it accepted once the disk has room again.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import shutil
import sqlite3
import subprocess
import sys
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import hypothesis
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import gateway.daemon
from gateway.core.model import Event, Priority
from gateway.daemon import Gateway
from gateway.health import Health
from gateway.outbox.sqlite import Outbox, Row
from gateway.outbox.store import AsyncOutbox
from gateway.station.helppoints import HelpPointUnit
from gateway.station.status import INTERVAL_S as STATUS_INTERVAL_S
from gateway.testing.config import station_data, write_config
from gateway.testing.daemon import running
from gateway.testing.disk import SmallDisk, can_mount
from gateway.testing.mosquitto import Mosquitto
from gateway.uplink.topics import Topics
from tests.helpers import station_config, subscribe

needs_root = pytest.mark.skipif(
    not can_mount(), reason="mounting a tmpfs needs root (CI runs as root)"
)
TOPICS = Topics("stationgw/v1", "faults")
REPO = Path(__file__).resolve().parent.parent


@pytest.fixture
def disk() -> Iterator[SmallDisk]:
    """A 4 MiB tmpfs, unmounted after the test."""
    if not can_mount():
        pytest.skip("mounting a tmpfs needs root (CI runs as root)")
    with SmallDisk(4 * 1024 * 1024) as mounted:
        yield mounted


@pytest.fixture
def fast_maintenance(monkeypatch: pytest.MonkeyPatch) -> None:
    """Run the daemon's maintenance every 0.2 s instead of every 30 s."""
    monkeypatch.setattr(gateway.daemon, "MAINTENANCE_INTERVAL_S", 0.2)


def event(priority: Priority = Priority.P1, size: int = 10) -> Event:
    return Event("help_point.press", "hp-1", priority, {"pad": "x" * size})


def rows_in_file(db: Path) -> set[str]:
    """Event ids stored in the .db file alone, as a copy without its -wal would have."""
    copy = db.parent / "copy-of-db-only" / db.name
    copy.parent.mkdir(exist_ok=True)
    shutil.copyfile(db, copy)
    with contextlib.closing(sqlite3.connect(copy)) as conn:
        try:
            return {e for (e,) in conn.execute("SELECT event_id FROM outbox")}
        except sqlite3.OperationalError:  # no such table: the schema itself is in the -wal
            return set()
        finally:
            shutil.rmtree(copy.parent)


def stored(db: Path) -> set[str]:
    """Event ids in the outbox, read (with its -wal) by another connection."""
    with contextlib.closing(sqlite3.connect(f"file:{db}?mode=ro", uri=True)) as conn:
        return {e for (e,) in conn.execute("SELECT event_id FROM outbox")}


@contextlib.asynccontextmanager
async def async_outbox(path: Path, **kwargs: Any) -> AsyncIterator[AsyncOutbox]:
    async with AsyncOutbox(Outbox(path, TOPICS.render, **kwargs), Health()) as box:
        yield box


async def until(predicate: Any, timeout: float = 30, what: str = "") -> None:
    """Wait (generously) until `predicate()` is true."""
    try:
        async with asyncio.timeout(timeout):
            while not predicate():
                await asyncio.sleep(0.02)
    except TimeoutError:
        raise AssertionError(f"not within {timeout}s: {what}") from None


async def submit_until_held(gw: Gateway, limit: int = 500) -> tuple[list[Row], list[Row]]:
    """Submit 2 KB events until one is held in memory: (durable rows, rows in memory)."""
    durable: list[Row] = []
    for n in range(limit):
        row = await gw.submit("sensor.reading", f"s-{n}", Priority.P2, {"pad": "y" * 2000})
        if not row.durable:
            return durable, [row]
        durable.append(row)
    raise AssertionError(f"{limit} events on a full disk were all committed")


async def submit_during_outage(gw: Gateway) -> tuple[list[Row], list[Row]]:
    """With the broker away: (rows that refill the disk, every row submitted)."""
    # Rows confirmed in phase 1 were deleted, and the write-ahead log restarts over
    # their space: fill it again, so that what follows is held in memory.
    refill, outage = await submit_until_held(gw)
    outage = [*refill, *outage]
    outage += [await gw.submit("sensor.reading", f"o-{n}", Priority.P3)
               for n in range(20)]
    return refill, outage


async def press_until_accepted(gw: Gateway, hp: HelpPointUnit) -> None:
    """Hold the help point's button down until the daemon accepts a P1 call; release it."""
    pressed = gw.health.counters["accepted_P1"]
    hp.button.pin.drive_low()
    await until(lambda: gw.health.counters["accepted_P1"] > pressed, what="press")
    hp.button.pin.drive_high()


# ---------------------------------------------------------------------------- disk full


@needs_root
async def test_full_disk_keeps_taking_calls_and_loses_nothing_when_space_returns(
    own_broker: Mosquitto, disk: SmallDisk, fast_maintenance: None
) -> None:
    """The README's promise on a real full tmpfs (status file beside the database)."""
    config = station_config(
        disk.path, [own_broker.url], gpio_pin_factory="mock",
        help_points=[{"id": "hp-1", "pin": 17, "lamp_pin": 27, "bounce_time_s": 0.05}],
        mqtt={"health_interval_s": 0.2},
    )
    root = f"stationgw/v1/{config.station_id}"
    db = config.store.path
    own_broker.start()
    async with subscribe(own_broker.port, f"{root}/#", client_id="df", persistent=True) as sub:
        async with running(Gateway(config)) as gw:
            run_task = next(t for t in asyncio.all_tasks() if t.get_name() == "test.gateway")
            await asyncio.wait_for(gw.publisher.connected.wait(), 20)
            before = await gw.submit("help_point.press", "hp-0", Priority.P1)
            assert before.durable

            # 1. The disk fills up while the broker is up: calls are held in memory and
            # published, and dispatch sees the fault in the retained health message.
            disk.fill()
            durable, held = await submit_until_held(gw)
            assert "store_unwritable" in gw.health.faults
            phase1 = [before, *durable, *held]
            await sub.wait_for(lambda m: {p.get("event_id") for _, p in m}
                               >= {r.event_id for r in phase1})
            await sub.wait_for(lambda m: any(
                t == f"{root}/health" and "store_unwritable" in
                [f["code"] for f in p["faults"]] for t, p in m))

            # 2. The broker goes away too: rows pile up in memory; a press on the help
            # point is taken (in memory), and its lamp does not claim "accepted", which
            # means "on disk".
            own_broker.stop()
            await until(lambda: not gw.publisher.connected.is_set(), what="disconnect")
            refill, outage = await submit_during_outage(gw)
            assert gw.help_points is not None
            hp = gw.help_points.units["hp-1"]
            await press_until_accepted(gw, hp)
            in_memory = {r.event_id: r for r in gw.outbox.outbox.memory_only()}
            press_rows = [r for r in in_memory.values() if r.kind == "help_point.press"]
            assert len(press_rows) == 1, "the press was not held in memory"
            assert hp.lamp.state == "idle"
            assert not any(r.durable for r in outage[len(refill):])
            # The status file beside the database cannot be written either: the daemon
            # still runs (two status periods).
            await asyncio.sleep(2 * STATUS_INTERVAL_S)
            assert not run_task.done(), run_task
            report = await gw.status_report()
            assert {"store_unwritable"} <= {f["code"] for f in report["faults"]}
            assert report["outbox"]["memory_rows"] == len(in_memory)

            # 3. Space returns: maintenance writes every row held in memory to disk and
            # into the database file itself (a checkpoint), and the fault clears.
            disk.free()
            await until(lambda: "store_unwritable" not in gw.health.faults, what="clear")
            await until(lambda: "store_checkpoint_failed" not in gw.health.faults,
                        what="checkpoint")
            assert gw.outbox.outbox.memory_rows == 0
            waiting = {r.event_id for r in outage} | set(in_memory)
            assert waiting <= stored(db)
            await until(lambda: waiting <= rows_in_file(db), what="checkpointed")
        assert not run_task.done() or run_task.cancelled()

    # 4. A new daemon on the same store delivers every row, to a dispatcher that was away.
    own_broker.start()
    async with running(Gateway(config)) as gw:
        async with subscribe(own_broker.port, f"{root}/events/#", client_id="df",
                             persistent=True) as later:
            await later.wait_for(lambda m: {p.get("event_id") for _, p in m} >= waiting, 60)
    received = {p["event_id"] for p in sub.events()} | {p["event_id"] for p in later.events()}
    assert {r.event_id for r in [*phase1, *outage]} | set(in_memory) <= received


@needs_root
async def test_confirmed_rows_whose_delete_fails_are_not_resent_and_leave_later(
    disk: SmallDisk,
) -> None:
    async with async_outbox(disk.path / "outbox.db") as box:
        sent = [await box.accept(event(size=2000)) for _ in range(10)]
        disk.fill()
        while (await box.accept(event(Priority.P3, size=2000))).durable:
            pass  # until the write-ahead log cannot grow
        await box.delivered([r.seq for r in sent])
        assert "store_unwritable" in box.health.faults
        drained = {r.seq for r in await box.page(None, 100)}
        assert not drained & {r.seq for r in sent}, "confirmed rows would be sent again"
        disk.free()
        await box.maintain()
        assert "store_unwritable" not in box.health.faults
        assert not {r.event_id for r in sent} & stored(box.outbox.path)


@needs_root
async def test_rows_held_in_memory_are_written_at_a_clean_stop(disk: SmallDisk) -> None:
    path = disk.path / "outbox.db"
    async with async_outbox(path) as box:
        await box.accept(event())
        disk.fill()
        held: list[Row] = []
        while not held or held[-1].durable:
            held.append(await box.accept(event(Priority.P0, size=2000)))
        disk.free()  # and the daemon is stopped before its next maintenance
    assert {r.event_id for r in held} <= stored(path)


@needs_root
async def test_every_expired_row_is_reported_even_when_the_delete_fails(
    disk: SmallDisk,
) -> None:
    async with async_outbox(disk.path / "outbox.db", ttl_s={Priority.P3: 0.01}) as box:
        stored_rows = [await box.accept(event(Priority.P3, size=2000)) for _ in range(5)]
        disk.fill()
        held: list[Row] = []
        while not held or held[-1].durable:
            held.append(await box.accept(event(Priority.P3, size=2000)))
        await asyncio.sleep(0.05)  # past the TTL
        await box.maintain()
        assert "store_unwritable" in box.health.faults
        assert box.outbox.memory_rows == 0  # expired from memory, and reported
        disk.free()
        await box.maintain()
        assert box.health.counters["expired_P3"] == len(stored_rows) + len(held)
        assert not stored(box.outbox.path)


# ---------------------------------------------------------------------------- checkpoints


async def test_maintenance_checkpoints_so_a_copy_of_the_db_file_holds_the_rows(
    tmp_path: Path,
) -> None:
    async with async_outbox(tmp_path / "outbox.db") as box:
        rows = [await box.accept(event()) for _ in range(20)]
        await box.maintain()
        assert {r.event_id for r in rows} <= rows_in_file(box.outbox.path)
        more = await box.accept(event(Priority.P0))
        await box.maintain()
        assert more.event_id in rows_in_file(box.outbox.path)


@needs_root
async def test_a_checkpoint_that_cannot_write_is_a_fault_that_clears(disk: SmallDisk) -> None:
    async with async_outbox(disk.path / "outbox.db") as box:
        rows = [await box.accept(event(size=4000)) for _ in range(40)]
        disk.fill()  # the database file cannot grow to take the log's pages
        await box.maintain()
        fault = box.health.faults["store_checkpoint_failed"]
        assert "outbox.db-wal" in fault.message
        assert box.health.counters["store_checkpoint_errors"] == 1
        assert {r.event_id for r in rows} <= stored(box.outbox.path)  # nothing lost
        disk.free()
        await box.maintain()
        assert "store_checkpoint_failed" not in box.health.faults
        assert {r.event_id for r in rows} <= rows_in_file(box.outbox.path)


# ---------------------------------------------------------------------------- damage


def outbox_pages(db: Path) -> list[int]:
    """Page numbers of the outbox table's leaves, where the drain reads rows."""
    with contextlib.closing(sqlite3.connect(db)) as conn:
        return [n for (n,) in conn.execute(
            "SELECT pageno FROM dbstat WHERE name = 'outbox' AND pagetype = 'leaf' "
            "ORDER BY pageno"
        )]


def damage(db: Path, page: int, seed: int, pattern: str = "random") -> None:
    """Write garbage over one page of the file, as a failing SD card might: random bytes,
    or an erased block (all 0x00 or all 0xff)."""
    with contextlib.closing(sqlite3.connect(db)) as conn:
        (size,) = conn.execute("PRAGMA page_size").fetchone()
    garbage = {
        "random": random.Random(seed).randbytes(size), "zeros": bytes(size),
        "ones": b"\xff" * size,
    }[pattern]
    with db.open("r+b") as f:
        f.seek((page - 1) * size)
        f.write(garbage)


@pytest.mark.parametrize("where", [0.3, 0.7])
async def test_damaged_page_mid_drain_keeps_the_station_taking_calls(
    own_broker: Mosquitto, tmp_path: Path, where: float
) -> None:
    config = station_config(tmp_path, [own_broker.url], mqtt={"health_interval_s": 0.2})
    root = f"stationgw/v1/{config.station_id}"
    async with running(Gateway(config)) as gw:
        run_task = next(t for t in asyncio.all_tasks() if t.get_name() == "test.gateway")
        for n in range(2000):
            await gw.submit("sensor.reading", f"s-{n}", Priority.P3, {"pad": "z" * 400})
        await gw.outbox.call(lambda box: box.conn.execute("PRAGMA wal_checkpoint(TRUNCATE)"))
        pages = outbox_pages(config.store.path)
        start = int(len(pages) * where)
        for page in pages[start : start + 3]:
            damage(config.store.path, page, seed=page)
        # Forget cached pages, so that the drain reads the file as it now is.
        await gw.outbox.call(lambda box: box.conn.execute("PRAGMA shrink_memory"))
        own_broker.start()
        async with subscribe(own_broker.port, f"{root}/#") as sub:
            await until(lambda: "store_damaged" in gw.health.faults, 60, "store_damaged")
            assert "malformed" in gw.health.faults["store_damaged"].message
            # Still taking calls: a press after the damage goes out, and health says why.
            press = await gw.submit("help_point.press", "hp-1", Priority.P0)
            await sub.wait_for(lambda m: any(p.get("event_id") == press.event_id for _, p in m))
            await sub.wait_for(lambda m: any(
                t == f"{root}/health" and "store_damaged" in [f["code"] for f in p["faults"]]
                for t, p in m))
            report = await gw.status_report()
            assert "store_damaged" in [f["code"] for f in report["faults"]]
            assert gw.health.counters["store_read_errors"] >= 1
            await asyncio.sleep(1)  # any crash of a task would end the run by now
            assert not run_task.done(), run_task


def _template(tmp_path: Path) -> Path:
    """A checkpointed outbox with rows of every class, alerts and commands."""
    path = tmp_path / "template.db"
    with Outbox(path, TOPICS.render) as box:
        for n in range(160):
            box.accept([event(Priority(n % 4), size=300)])
        box.conn.execute("INSERT INTO commands VALUES ('c-1', 'a-1', 0)")
        box.conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    return path


@pytest.mark.parametrize("pattern", ["random", "zeros", "ones"])
async def test_any_damaged_page_is_a_fault_and_new_calls_still_drain(
    tmp_path: Path, pattern: str
) -> None:
    """Sweep: garbage over each page of the file in turn, under a live outbox."""
    template = _template(tmp_path)
    (pages,) = sqlite3.connect(template).execute("PRAGMA page_count").fetchone()
    found_damage = 0
    for page in range(2, pages + 1):  # page 1 (the header) is checked at open
        path = tmp_path / f"p{page}.db"
        shutil.copyfile(template, path)
        async with async_outbox(path) as box:
            damage(path, page, seed=page, pattern=pattern)
            await box.call(lambda b: b.conn.execute("PRAGMA shrink_memory"))
            after = None
            while len(drained := await box.page(after, 64)) == 64:
                after = drained[-1].key
            await box.depth()
            await box.call(lambda b: b.open_alerts())
            await box.call(lambda b: b.command_seen("c-1"))
            damaged_before = box.outbox.damage is not None
            p0 = await box.accept(event(Priority.P0))
            await box.delivered([1, 2, 3])
            await box.mark([(5, 1, "pending", None)])
            await box.requeue_refused()
            await box.maintain()
            drains = {r.seq for r in await box.page(None, 1000)}
            await box.depth()
            faults = set(box.health.faults)
            if box.outbox.damage is not None:
                found_damage += 1
                assert "store_damaged" in faults, page
                assert box.health.counters["store_read_errors"] >= 1 or not damaged_before
            if damaged_before:
                assert not p0.durable, page  # never written into a damaged file
                assert p0.seq in drains, page  # and it drains, from memory
            elif p0.durable and box.outbox.damage is None:
                assert p0.seq in drains, page
        path.unlink()
    assert found_damage > pages // 2  # most pages hold rows the drain reads


# (page, offset in the page, xor): offsets favour the page header and cell pointers.
_FLIP = st.tuples(st.integers(1, 60), st.one_of(st.integers(0, 63), st.integers(0, 4095)),
                  st.integers(1, 255))


@settings(max_examples=150, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(flips=st.lists(_FLIP, min_size=1, max_size=8))
def test_flipped_bytes_never_escape_as_errors_or_bad_rows(
    tmp_path: Path, flips: list[tuple[int, int, int]]
) -> None:
    """Sweep: a few bytes changed anywhere in the file (a subtler damage than a lost page)
    may decode into values no row can hold; reads report damage, never raise or return
    them."""
    template = tmp_path / "template.db"
    if not template.exists():
        _template(tmp_path)
    path = tmp_path / "flipped.db"
    for stale in (path, *(path.with_name(path.name + end) for end in ("-wal", "-shm"))):
        stale.unlink(missing_ok=True)  # a damaged store may not have removed its WAL at close
    shutil.copyfile(template, path)
    data = bytearray(path.read_bytes())
    size = 4096
    for page, offset, xor in flips:
        where = ((page - 1) * size + offset) % len(data)
        data[max(where, 100)] ^= xor  # past the file header: that is checked at open
    with Outbox(path, TOPICS.render) as box:
        path.write_bytes(data)
        box.conn.execute("PRAGMA shrink_memory")
        after = None
        while len(rows := box.page(after, 64)) == 64:
            after = rows[-1].key
            for row in rows:
                assert isinstance(row.payload, bytes) and isinstance(row.topic, str)
                assert row.priority in Priority and row.state in ("pending", "refused")
        box.depth()
        box.open_alerts()
        box.command_seen("c-1")
        damaged = box.damage is not None
        hypothesis.event("damage found" if damaged else "no damage found")
        (p0,) = box.accept([event(Priority.P0)]).rows
        if damaged:
            assert not p0.durable and p0.seq in {r.seq for r in box.page(None, 1000)}
        with contextlib.suppress(sqlite3.Error):  # writes may fail: the caller's fault
            box.delivered([1, 2])
        box.expire()
        box.retry_memory()
    path.unlink()


async def test_damage_clears_when_the_file_checks_sound_again(tmp_path: Path) -> None:
    path = tmp_path / "outbox.db"
    async with async_outbox(path) as box:
        rows = [await box.accept(event(size=400)) for _ in range(100)]
        await box.call(lambda b: b.conn.execute("PRAGMA wal_checkpoint(TRUNCATE)"))
        page = outbox_pages(path)[2]
        good = path.read_bytes()
        damage(path, page, seed=3)  # as a read error that then goes away (a loose card)
        await box.call(lambda b: b.conn.execute("PRAGMA shrink_memory"))
        await box.page(None, 200)
        assert "store_damaged" in box.health.faults
        held = await box.accept(event(Priority.P0))
        assert not held.durable
        await box.maintain()  # quick_check finds the damage: the fault stays
        assert "store_damaged" in box.health.faults
        path.write_bytes(good)
        await box.call(lambda b: b.conn.execute("PRAGMA shrink_memory"))
        await box.maintain()  # quick_check: ok
        assert "store_damaged" not in box.health.faults
        assert held.event_id in stored(path)
        assert (await box.accept(event())).durable
        assert len(await box.page(None, 200)) == len(rows) + 2


# ---------------------------------------------------------------------------- backup


def stationgw(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "gateway.ops.cli", *args],
        capture_output=True, text=True, timeout=60, check=False, cwd=REPO,
    )


async def test_backup_while_the_daemon_runs_is_one_checked_file(tmp_path: Path) -> None:
    config = station_config(tmp_path, ["mqtt://127.0.0.1:1"])  # nothing drains
    toml = write_config(tmp_path / "station.toml", station_data(
        tmp_path, "mqtt://127.0.0.1:1", fast_reconnect=False, station_id=config.station_id,
        store={"path": str(config.store.path)}))
    out = tmp_path / "backups" / "outbox-backup.db"
    async with running(Gateway(config)) as gw:
        rows = [await gw.submit("help_point.press", f"hp-{n}", Priority.P1) for n in range(30)]
        result = await asyncio.to_thread(stationgw, "backup", "--config", str(toml),
                                         "--out", str(out))
        assert result.returncode == 0, result.stderr
        assert "30 row(s)" in result.stdout and "quick_check ok" in result.stdout
        late = await gw.submit("help_point.press", "hp-late", Priority.P1)
    mode, ids = read_backup(out)
    assert mode == "delete"  # one self-contained file, not a WAL database
    assert ids == {r.event_id for r in rows} and late.event_id not in ids


def read_backup(out: Path) -> tuple[str, set[str]]:
    """The backup's journal mode and event ids; it must need no -wal beside it."""
    assert not Path(f"{out}-wal").exists()
    with contextlib.closing(sqlite3.connect(out)) as conn:
        (mode,) = conn.execute("PRAGMA journal_mode").fetchone()
        return str(mode), {e for (e,) in conn.execute("SELECT event_id FROM outbox")}


def test_backup_of_a_damaged_store_fails_and_says_why(tmp_path: Path) -> None:
    db = _template(tmp_path)
    damage(db, outbox_pages(db)[3], seed=1)
    toml = write_config(tmp_path / "station.toml", station_data(
        tmp_path, "mqtt://127.0.0.1:1", fast_reconnect=False, station_id="s1",
        store={"path": str(db)}))
    out = tmp_path / "b.db"
    result = stationgw("backup", "--config", str(toml), "--out", str(out))
    assert result.returncode == 1
    assert "quick_check" in result.stderr and str(db) in result.stderr
    assert not out.exists()
