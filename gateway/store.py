"""The outbox as an async resource: one worker thread owns the SQLite connection.

It turns the outbox's results into health: a failed write raises the `store_unwritable`
fault (the row is then held in memory and still published), evictions and expiries are
counted and logged one line per event.
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

from gateway.errors import StoreError
from gateway.health import Health
from gateway.model import Event, Priority
from gateway.outbox import AcceptResult, Depth, Key, Outbox, Row, State
from gateway.worker import URGENT, PriorityWorker

log = logging.getLogger(__name__)
P = ParamSpec("P")
T = TypeVar("T")

RowListener = Callable[[Row], None]
_CLASS_NAMES = tuple(p.name for p in Priority)
_ACCEPTED = tuple(f"accepted_{name}" for name in _CLASS_NAMES)  # health counters by class


class AsyncOutbox:
    """Async front of `Outbox`, reporting into `Health`."""

    def __init__(self, outbox: Outbox, health: Health) -> None:
        self.outbox = outbox
        self.health = health
        self.listeners: list[RowListener] = []
        self._executor: PriorityWorker | None = None
        self._queue: list[tuple[Event, asyncio.Future[Row]]] = []
        self._committing = False  # a group commit is on the worker thread

    async def __aenter__(self) -> AsyncOutbox:
        self._executor = PriorityWorker("outbox")
        try:
            await self._run(self.outbox.open)
        except BaseException:
            self._executor.shutdown()
            raise
        self.health.listeners.append(self._record_fault)
        return self

    async def __aexit__(
        self, et: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.health.listeners.remove(self._record_fault)
        if self._executor is not None:
            # The worker may be mid-commit: let it finish, then close on the same thread.
            await asyncio.shield(self._run(self.outbox.close))
            self._executor.shutdown()

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
            self.health.count("store_write_errors")
            self.health.raise_fault(
                "store_unwritable",
                f"outbox database cannot be written ({result.error}); alerts are held in "
                "memory and still published, but will not survive a restart",
            )
        else:
            self.health.clear_fault("store_unwritable")
        counters = self.health.counters
        for (event, _), row in zip(batch, result.rows, strict=True):
            name = _CLASS_NAMES[row.priority]
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
        self._report_dropped(result.evicted, "evicted", "store full")
        for row in result.rows:
            for listener in self.listeners:
                listener(row)
        for (_, future), row in zip(batch, result.rows, strict=True):
            if not future.done():
                future.set_result(row)

    def _report_dropped(self, rows: Iterable[Row], what: str, why: str) -> None:
        for gone in rows:
            self.health.count(f"{what}_{gone.priority.name}")
            log.warning(
                "%s event_id=%s class=%s kind=%s seq=%d reason=%s",
                what, gone.event_id, gone.priority.name, gone.kind, gone.seq, why,
            )

    async def call(self, fn: Callable[[Outbox], T]) -> T:
        """Run `fn(outbox)` on the outbox's thread (maintenance, tests, tools)."""
        return await self._run(fn, self.outbox)

    async def page(self, after: Key | None, limit: int) -> list[Row]:
        """Pending rows after `after`, in drain order."""
        return await self._run(self.outbox.page, after, limit)

    async def delivered(self, seqs: list[int]) -> None:
        """Remove confirmed rows; a failure leaves them to be re-sent, never lost."""
        try:
            await self._run(self.outbox.delivered, seqs)
        except sqlite3.Error as exc:
            self.health.count("store_write_errors")
            self.health.raise_fault(
                "store_unwritable",
                f"cannot remove delivered rows ({exc}); they will be sent again after a restart",
            )

    async def mark(self, updates: list[tuple[int, int, State, str | None]]) -> None:
        """Persist attempts and state of rows that stay in the outbox."""
        try:
            await self._run(self.outbox.mark, updates)
        except sqlite3.Error as exc:
            self.health.count("store_write_errors")
            log.warning("cannot record attempts of %d rows: %s", len(updates), exc)

    async def requeue_refused(self) -> int:
        """Make refused rows pending again."""
        try:
            return await self._run(self.outbox.requeue_refused)
        except sqlite3.Error as exc:
            log.warning("cannot requeue refused rows: %s", exc)
            return 0

    async def maintain(self) -> None:
        """Periodic upkeep: retry rows held in memory, and expire P2/P3 rows past their TTL."""
        if self.outbox.memory_rows:
            error = await self._run(self.outbox.retry_memory)
            if error is None:
                log.info("rows held in memory are now committed")
                self.health.clear_fault("store_unwritable")
        try:
            expired = await self._run(self.outbox.expire)
        except sqlite3.Error as exc:
            log.warning("cannot expire rows: %s", exc)
            return
        self._report_dropped(expired, "expired", "ttl")

    async def depth(self) -> Depth:
        """Depth by class and state."""
        return await self._run(self.outbox.depth)

    def _record_fault(self, code: str, active: bool, message: str) -> None:
        """Health listener: keep a fault log in the database for `stationgw outbox`."""
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
