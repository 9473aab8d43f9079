"""One thread that owns the SQLite connection, running urgent work first.

A `ThreadPoolExecutor(max_workers=1)` runs jobs in arrival order, so a new alert's commit
would wait behind page reads and deletes queued during a backlog drain. This worker takes
jobs by priority (0 first), then in arrival order.
"""

from __future__ import annotations

import itertools
import queue
import threading
from collections.abc import Callable
from concurrent.futures import Future
from typing import Any, TypeVar

T = TypeVar("T")

URGENT, NORMAL = 0, 1


class PriorityWorker:
    """A single worker thread with a priority queue of jobs."""

    def __init__(self, name: str) -> None:
        self._jobs: queue.PriorityQueue[tuple[int, int, Callable[[], Any] | None, Future[Any]]]
        self._jobs = queue.PriorityQueue()
        self._order = itertools.count()
        self._thread = threading.Thread(target=self._serve, name=name, daemon=True)
        self._thread.start()

    def submit(self, fn: Callable[[], T], priority: int = NORMAL) -> Future[T]:
        """Run `fn()` on the worker thread; its result or exception lands in the future."""
        future: Future[T] = Future()
        self._jobs.put((priority, next(self._order), fn, future))
        return future

    def shutdown(self) -> None:
        """Finish every queued job, then stop the thread."""
        self._jobs.put((NORMAL + 1, next(self._order), None, Future()))
        self._thread.join()

    def _serve(self) -> None:
        while True:
            _, _, fn, future = self._jobs.get()
            if fn is None:
                return
            if not future.set_running_or_notify_cancel():
                continue
            try:
                result = fn()
            except BaseException as exc:  # noqa: BLE001 - handed to the waiting caller
                future.set_exception(exc)
            else:
                future.set_result(result)
