"""Which outbox row goes to the broker next, with no I/O.

The publisher drains the outbox over one connection at a time. `DrainQueue` holds what it
knows of the outbox during a session and answers one question: which row may be sent now?

- **Priority first.** Rows leave in key order, class first and then oldest first, so a new
  P0/P1 overtakes any backlog. Rows come from two places: pages read from the database in
  key order, and rows accepted while the session is up (`offer`). A queued row may go only
  once no row still in the database can precede it (`page_needed`).
- **A bounded window.** At most `window` rows are in flight; P2/P3 rows may fill only seven
  eighths of it, so a P0/P1 alert always finds a slot.
- **Nothing twice.** A row in flight, confirmed but not yet deleted, or refused and held for
  the retry is never queued again, whichever way it arrives.

The caller does the I/O and the waiting: it reads a page when `next_row` says
`PAGE_NEEDED`, waits for an accept when it says `EMPTY`, and waits for room (a PUBACK or a
more urgent row) when `may_send` says no. tests/test_drain.py drives it with hypothesis
against a model of the outbox.
"""

from __future__ import annotations

import heapq
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Generic, Literal, Protocol, TypeVar

from gateway.core.model import Priority

Key = tuple[int, int]  # (class, seq): the drain order
_BEFORE_ALL: Key = (-1, -1)


class Drainable(Protocol):
    """What the queue needs of a row: its seq, its class and its drain key."""

    @property
    def seq(self) -> int: ...
    @property
    def priority(self) -> Priority: ...
    @property
    def key(self) -> Key: ...


R = TypeVar("R", bound=Drainable)
#: What `next_row` says when it has no row: read the next page, or wait for an accept.
Wanted = Literal["page_needed", "empty"]
PAGE_NEEDED: Wanted = "page_needed"
EMPTY: Wanted = "empty"


@dataclass
class DrainQueue(Generic[R]):
    """The drain of one connection at a time (`reset` at each connect)."""

    window: int
    _heap: list[tuple[Key, R]] = field(default_factory=list)
    _known: set[int] = field(default_factory=set)  # queued, in flight, confirmed or held
    _cursor: Key | None = None  # the last key read from the database
    _exhausted: bool = False  # every row of the database is known
    _inflight: dict[int, R] = field(default_factory=dict)
    _low_inflight: int = 0  # P2/P3 rows among them
    _confirmed: set[int] = field(default_factory=set)  # PUBACKed, not yet deleted
    _held: set[int] = field(default_factory=set)  # refused, out of the drain until the retry

    @property
    def low_window(self) -> int:
        """The slots P2/P3 may take: all but the last eighth, kept for P0/P1."""
        return self.window - self.window // 8

    @property
    def cursor(self) -> Key | None:
        """Where the next page starts (after this key; None: from the start)."""
        return self._cursor

    @property
    def in_flight(self) -> int:
        return len(self._inflight)

    def in_flight_row(self, seq: int) -> R | None:
        return self._inflight.get(seq)

    @property
    def holding(self) -> bool:
        """Refused rows wait for the retry."""
        return bool(self._held)

    # ---------------------------------------------------------------- sessions

    def reset(self) -> None:
        """A new connection: forget the queued rows (they are still in the outbox) and read
        the database again from the start."""
        self._heap.clear()
        self._known = set(self._inflight) | self._confirmed | self._held
        self._cursor = None
        self._exhausted = False

    def session_ended(self) -> None:
        """The connection is gone: rows in flight are still pending and go out again."""
        self._inflight.clear()
        self._low_inflight = 0

    # ---------------------------------------------------------------- intake

    def offer(self, row: R) -> bool:
        """A row accepted during the session; True if it is new to the queue."""
        if row.seq in self._known:
            return False
        self._known.add(row.seq)
        heapq.heappush(self._heap, (row.key, row))
        return True

    def loaded(self, rows: Iterable[R], page_size: int) -> None:
        """A page read from the database after `cursor`, in key order."""
        count = 0
        last: Key | None = None
        for row in rows:
            count += 1
            last = row.key
            self.offer(row)
        if last is not None:
            self._cursor = max(self._cursor or _BEFORE_ALL, last)
        self._exhausted = count < page_size

    # ---------------------------------------------------------------- sending

    def next_row(self) -> R | Wanted:
        """The row to send next, or what the caller must do first."""
        # A queued row may go first only if no row still in the database can precede it.
        if self._heap and (self._exhausted or self._heap[0][0] <= (self._cursor or _BEFORE_ALL)):
            return heapq.heappop(self._heap)[1]
        return EMPTY if self._exhausted else PAGE_NEEDED

    def may_send(self, row: R) -> bool:
        """Room in the window for this row."""
        if len(self._inflight) >= self.window:
            return False
        return row.priority <= Priority.P1 or self._low_inflight < self.low_window

    def put_back(self, row: R) -> None:
        """A row `next_row` gave that may not be sent yet."""
        heapq.heappush(self._heap, (row.key, row))

    def sent(self, row: R) -> None:
        self._inflight[row.seq] = row
        if row.priority > Priority.P1:
            self._low_inflight += 1

    def answered(self, row: R) -> bool:
        """The broker answered this publish (or its session ended): frees its slot. False
        for a row of an earlier session, whose slot is already gone."""
        if self._inflight.get(row.seq) is not row:
            return False
        del self._inflight[row.seq]
        if row.priority > Priority.P1:
            self._low_inflight -= 1
        return True

    # ---------------------------------------------------------------- outcomes

    def confirmed(self, seq: int) -> None:
        """Its PUBACK was a success: never queued again, until `removed`."""
        self._confirmed.add(seq)

    def removed(self, seqs: Iterable[int]) -> None:
        """These confirmed rows are deleted from the outbox."""
        for seq in seqs:
            self._confirmed.discard(seq)
            self._known.discard(seq)

    def hold(self, seq: int) -> None:
        """The broker refused it: kept out of the drain until `release_held`."""
        self._held.add(seq)

    def release_held(self) -> None:
        """The retry: the outbox requeued the refused rows (the next `reset` reads them)."""
        self._held.clear()
