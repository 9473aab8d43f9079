"""The outbox as an async resource: one worker thread owns the SQLite connection.

It turns the outbox's results into health, and no storage error ends the daemon:

- a failed write (disk full, I/O error) raises `store_unwritable`: new rows are held in
  memory and still published, and are written once the disk has room again;
- a failed read, or damage found while writing, raises `store_damaged`: rows in memory still
  go out, new rows are held in memory too, and maintenance re-checks the file;
- a failed checkpoint raises `store_checkpoint_failed` (the rows are safe in the ``-wal``).

Each fault clears when its condition ends. Evictions and expiries are counted and logged one
line per event.
"""

from __future__ import annotations

import asyncio
import logging
import sqlite3
from collections.abc import Callable, Iterable
from concurrent.futures import Future
from functools import partial
from types import TracebackType
from typing import ParamSpec, TypeVar

from gateway.core.drain import Key
from gateway.core.model import CLASS_NAMES, Event
from gateway.errors import StoreError
from gateway.health import Health
from gateway.outbox.files import SQLITE_ERRORS, Opening, open_store
from gateway.outbox.sqlite import AcceptResult, Depth, Outbox, Row, State, quick_check
from gateway.outbox.worker import URGENT, PriorityWorker

log = logging.getLogger(__name__)
P = ParamSpec("P")
T = TypeVar("T")

RowListener = Callable[[Row], None]
_ACCEPTED = tuple(f"accepted_{name}" for name in CLASS_NAMES)  # health counters by class
REPORT_DROPPED_MAX = 1000  # seqs per kind in one outbox.dropped event
UNWRITABLE, DAMAGED, CHECKPOINT = "store_unwritable", "store_damaged", "store_checkpoint_failed"


class AsyncOutbox:
    """Async front of `Outbox`, reporting into `Health`."""

    def __init__(self, outbox: Outbox, health: Health) -> None:
        self.outbox = outbox
        self.health = health
        # Seqs of rows evicted or expired, by what happened, until `take_dropped` reports
        # them (in an `outbox.dropped` event, so dispatch's audit can tell them from losses).
        self._dropped: dict[str, list[int]] = {}
        self.listeners: list[RowListener] = []
        self._executor: PriorityWorker | None = None
        self._queue: list[tuple[Event, asyncio.Future[Row]]] = []
        self._committing = False  # a group commit is on the worker thread
        self.opening: Opening | None = None  # how `__aenter__` found the store

    async def __aenter__(self) -> AsyncOutbox:
        self._executor = PriorityWorker("outbox")
        try:
            # Never fails for what is on disk: a bad store is moved aside, or memory only.
            self.opening = await self._run(open_store, self.outbox)
        except BaseException:
            self._executor.shutdown()
            self._executor = None
            raise
        return self

    async def __aexit__(
        self, et: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        if self._executor is not None:
            # The worker may be mid-commit: let it finish, then close on the same thread.
            await asyncio.shield(self._run(self._close))
            self._executor.shutdown()
            self._executor = None  # closed: fault changes are no longer logged

    def _close(self) -> None:
        """On the worker: a last try to save rows held in memory, then close."""
        if self.outbox.memory_rows and self.outbox.retry_memory() is None:
            log.info("rows held in memory are now committed")
        for row in self.outbox.memory_only():
            # Lost with this process: one line each, so that the journal names them.
            log.error(
                "lost at exit (held in memory, never confirmed) event_id=%s class=%s kind=%s "
                "seq=%d", row.event_id, row.priority.name, row.kind, row.seq,
            )
        self.outbox.close()

    async def _run(self, fn: Callable[P, T], *args: P.args, **kwargs: P.kwargs) -> T:
        assert self._executor is not None, "AsyncOutbox used outside `async with`"
        return await asyncio.wrap_future(self._executor.submit(partial(fn, *args, **kwargs)))

    async def accept(self, event: Event) -> Row:
        """Accept an event: committed (row.durable) or, if the disk fails, held in memory.

        Group commit: events that arrive while a commit is under way share the next one, so
        a burst costs one fsync, and each caller still returns only after its row is in.
        """
        loop = asyncio.get_running_loop()
        future: asyncio.Future[Row] = loop.create_future()
        self._queue.append((event, future))
        if not self._committing:
            # Start on the next turn of the loop, so that every caller woken in this one
            # (say, producers whose last events just went in) joins the same commit.
            self._committing = True
            loop.call_soon(self._commit_queued)
        return await future

    def _commit_queued(self) -> None:
        """Hand every queued event to the worker thread as one commit.

        Driven by callbacks, not by the callers: a cancelled caller cannot strand the others,
        and no caller waits on a lock only to find its row already in (a lock convoy).
        """
        batch, self._queue = self._queue, []
        try:
            assert self._executor is not None, "AsyncOutbox used outside `async with`"
            # Urgent: a new alert's commit goes ahead of queued reads and deletes.
            done = asyncio.wrap_future(self._executor.submit(
                partial(self.outbox.accept, [e for e, _ in batch]), URGENT
            ))
        except BaseException as exc:  # noqa: BLE001 - handed to every waiting caller
            self._committing = False
            for _, future in batch:
                if not future.done():
                    future.set_exception(exc)
            return
        done.add_done_callback(partial(self._committed, batch))

    def _committed(
        self, batch: list[tuple[Event, asyncio.Future[Row]]], done: asyncio.Future[AcceptResult]
    ) -> None:
        try:
            self._settle(batch, done)
        finally:
            if self._queue:  # arrived during the commit: the next one starts at once
                self._commit_queued()
            else:
                self._committing = False

    def _settle(
        self, batch: list[tuple[Event, asyncio.Future[Row]]], done: asyncio.Future[AcceptResult]
    ) -> None:
        if done.cancelled() or done.exception() is not None:
            exc = done.exception() if not done.cancelled() else asyncio.CancelledError()
            for _, future in batch:
                if not future.done():
                    future.set_exception(exc or StoreError("accept failed"))
            return
        result = done.result()
        if result.error is not None:
            self._write_failed(result.error)
        else:
            self._write_ok()
        self._log_accepted(batch, result)
        self._report_dropped(result.evicted, "evicted", "store full")
        for row in result.rows:
            for listener in self.listeners:
                listener(row)
        for (_, future), row in zip(batch, result.rows, strict=True):
            if not future.done():
                future.set_result(row)

    def _log_accepted(
        self, batch: list[tuple[Event, asyncio.Future[Row]]], result: AcceptResult
    ) -> None:
        """One log line per accepted row (an error if it is in memory only), and the
        counters by class."""
        counters = self.health.counters
        for (event, _), row in zip(batch, result.rows, strict=True):
            name = CLASS_NAMES[row.priority]
            if result.error is not None:
                log.error(
                    "accepted in memory only event_id=%s class=%s kind=%s source=%s seq=%d "
                    "error=%s",
                    row.event_id, name, row.kind, event.source, row.seq, result.error,
                )
            else:
                log.info(
                    "accepted event_id=%s class=%s kind=%s source=%s seq=%d",
                    row.event_id, name, row.kind, event.source, row.seq,
                )
            counters[_ACCEPTED[row.priority]] += 1

    def _report_dropped(self, rows: Iterable[Row], what: str, why: str) -> None:
        for gone in rows:
            self.health.count(f"{what}_{gone.priority.name}")
            self._dropped.setdefault(what, []).append(gone.seq)
            log.warning(
                "%s event_id=%s class=%s kind=%s seq=%d reason=%s",
                what, gone.event_id, gone.priority.name, gone.kind, gone.seq, why,
            )

    def take_dropped(self, limit: int = REPORT_DROPPED_MAX) -> dict[str, list[int]]:
        """Up to `limit` seqs of each kind dropped since the last call (the rest wait)."""
        taken = {}
        for what, seqs in self._dropped.items():
            if seqs:
                taken[what], self._dropped[what] = seqs[:limit], seqs[limit:]
        return taken

    # ------------------------------------------------------------------ storage faults

    def _write_failed(self, error: object, what: str | None = None) -> None:
        """A write failed: count it, and raise the fault that says what it means."""
        self.health.count("store_write_errors")
        if what is not None:  # accepts log one line per event instead
            log.warning("outbox write failed: cannot %s: %s", what, error)
        if self._check_damage():
            return  # damage explains it, and has its own fault
        # One message for every kind of write, so that alternating failures do not re-log.
        self.health.raise_fault(
            UNWRITABLE,
            f"outbox database cannot be written ({error}); new alerts are held in memory and "
            "still published, but will not survive a restart until they are written",
        )

    def _write_ok(self) -> None:
        """A write succeeded: the disk takes writes again once nothing is left held."""
        if not self.outbox.memory_rows and not self.outbox.undeleted:
            self.health.clear_fault(UNWRITABLE)

    def _check_damage(self) -> bool:
        """Raise `store_damaged` if the outbox found the database damaged or unreadable."""
        if self.outbox.read_errors:
            self.health.counters["store_read_errors"] = self.outbox.read_errors
        damage = self.outbox.damage
        if damage is None:
            return False
        self.health.raise_fault(
            DAMAGED,
            f"outbox database {self.outbox.path} is damaged or unreadable ({damage}); rows "
            "stored before may not be sent; new alerts are held in memory and still "
            "published, but will not survive a restart. Keep the file for a technician",
        )
        return True

    # ------------------------------------------------------------------ run time

    async def call(self, fn: Callable[[Outbox], T]) -> T:
        """Run `fn(outbox)` on the outbox's thread (maintenance, tests, tools)."""
        result = await self._run(fn, self.outbox)
        self._check_damage()
        return result

    async def page(self, after: Key | None, limit: int) -> list[Row]:
        """Pending rows after `after`, in drain order (rows in memory only, if unreadable)."""
        rows = await self._run(self.outbox.page, after, limit)
        self._check_damage()
        return rows

    async def delivered(self, seqs: list[int]) -> None:
        """Remove confirmed rows; a failed delete is retried, and never loses a row."""
        try:
            await self._run(self.outbox.delivered, seqs)
        except SQLITE_ERRORS as exc:
            self._write_failed(exc, f"remove {len(seqs)} delivered row(s), retried later")
        else:
            self._write_ok()

    async def mark(self, updates: list[tuple[int, int, State, str | None]]) -> None:
        """Persist attempts and state of rows that stay in the outbox."""
        try:
            await self._run(self.outbox.mark, updates)
        except SQLITE_ERRORS as exc:
            self._write_failed(exc, f"record attempts of {len(updates)} row(s)")
        else:
            self._write_ok()

    async def requeue_refused(self) -> int:
        """Make refused rows pending again."""
        try:
            count = await self._run(self.outbox.requeue_refused)
        except SQLITE_ERRORS as exc:
            self._write_failed(exc, "requeue refused rows")
            return 0
        self._write_ok()
        return count

    async def maintain(self) -> None:
        """Periodic upkeep: re-check a damaged file, write rows held in memory, expire
        P2/P3 rows past their TTL, and checkpoint the write-ahead log. Never raises for a
        storage error: each one is a fault."""
        if self.outbox.damage is not None:
            # On its own connection and thread: a full check of a large file must not hold
            # up the commits of new alerts.
            problem = await asyncio.to_thread(quick_check, self.outbox.path)
            if problem is None:
                await self._run(self.outbox.repaired)
                log.warning("outbox database passes quick_check again; writing to it again")
                self.health.clear_fault(DAMAGED)
            else:
                log.warning("outbox database still damaged: %s", problem)
        if self.outbox.memory_rows or self.outbox.undeleted:
            error = await self._run(self.outbox.retry_memory)
            if error is None:
                log.info("rows held in memory are now committed")
                self._write_ok()
        self._report_dropped(await self._run(self.outbox.expire), "expired", "ttl")
        if self.outbox.expire_error is not None:
            self._write_failed(self.outbox.expire_error, "expire rows")
        await self.checkpoint()

    async def checkpoint(self) -> None:
        """Copy the write-ahead log into the database file; a failure is a fault."""
        try:
            frames, copied = await self._run(self.outbox.checkpoint)
        except SQLITE_ERRORS as exc:
            self.health.count("store_checkpoint_errors")
            name = self.outbox.path.name
            self.health.raise_fault(
                CHECKPOINT,
                f"cannot copy the write-ahead log into {name} ({exc}); the rows are safe in "
                f"{name}-wal: never separate the two files",
            )
            return
        log.debug("checkpoint: %d of %d frames in the database file", copied, frames)
        self.health.clear_fault(CHECKPOINT)

    async def depth(self) -> Depth:
        """Depth by class and state."""
        depth = await self._run(self.outbox.depth)
        self._check_damage()
        return depth

    def record_fault(self, code: str, active: bool, message: str) -> None:
        """Health listener: keep a fault log in the database for `stationgw outbox` (while
        the outbox is open; the daemon registers it)."""
        if self._executor is None:
            return
        future = self._executor.submit(
            partial(self.outbox.record_fault, code, active, message)
        )
        future.add_done_callback(_ignore_store_error)


def _ignore_store_error(future: Future[None]) -> None:
    # A fault log entry is best-effort: the fault itself is live in health and in the log.
    exc = future.exception()
    if exc is not None and not isinstance(exc, sqlite3.Error):
        log.error("fault log write failed unexpectedly", exc_info=exc)
