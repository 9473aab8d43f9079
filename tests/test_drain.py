"""The drain order as plain values: priority first, a bounded window, nothing twice, nothing
left behind (gateway.core.drain; no broker, no database).

A hypothesis state machine plays the outbox (rows accepted, pages read in key order, rows
deleted after their PUBACK, refused rows requeued) and the broker (PUBACKs that succeed or
refuse, in any order, and connections that drop) against one `DrainQueue`.
"""

from __future__ import annotations

from dataclasses import dataclass

from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from gateway.core.drain import EMPTY, PAGE_NEEDED, DrainQueue, Key
from gateway.core.model import Priority

WINDOW = 8
PAGE = 3


@dataclass(frozen=True)
class FakeRow:
    seq: int
    priority: Priority

    @property
    def key(self) -> Key:
        return (int(self.priority), self.seq)


def test_p2_p3_leave_the_last_eighth_of_the_window_to_p0_p1() -> None:
    queue: DrainQueue[FakeRow] = DrainQueue(window=16)
    rows = [FakeRow(seq, Priority.P3) for seq in range(20)]
    queue.loaded(rows, page_size=100)
    sent = 0
    while isinstance(row := queue.next_row(), FakeRow) and queue.may_send(row):
        queue.sent(row)
        sent += 1
    assert sent == 14  # 16 - 16 // 8
    urgent = FakeRow(100, Priority.P0)
    assert queue.offer(urgent)
    assert queue.next_row() == urgent and queue.may_send(urgent)


def test_a_new_p0_overtakes_a_backlog_that_is_not_read_yet() -> None:
    queue: DrainQueue[FakeRow] = DrainQueue(window=4)
    queue.loaded([FakeRow(1, Priority.P3), FakeRow(2, Priority.P3)], page_size=2)  # more to read
    assert queue.offer(FakeRow(50, Priority.P0))
    assert queue.next_row() == FakeRow(50, Priority.P0)
    assert queue.next_row() == FakeRow(1, Priority.P3)  # at or before the cursor: may go
    assert queue.next_row() == FakeRow(2, Priority.P3)
    assert queue.next_row() == PAGE_NEEDED  # rows after the cursor may precede the rest


def test_a_refused_row_waits_for_the_retry_across_reconnects() -> None:
    queue: DrainQueue[FakeRow] = DrainQueue(window=4)
    row = FakeRow(1, Priority.P1)
    queue.loaded([row], page_size=10)
    assert queue.next_row() == row
    queue.sent(row)
    assert queue.answered(row)
    queue.hold(row.seq)  # the broker refused it
    queue.session_ended()
    queue.reset()  # a new connection reads the outbox again: the row is still there
    queue.loaded([row], page_size=10)
    assert queue.next_row() == EMPTY
    queue.release_held()
    queue.reset()
    queue.loaded([row], page_size=10)
    assert queue.next_row() == row


class DrainMachine(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.queue: DrainQueue[FakeRow] = DrainQueue(window=WINDOW)
        self.db: dict[int, FakeRow] = {}  # the outbox's rows
        self.next_seq = 1
        self.connected = False
        self.inflight: dict[int, FakeRow] = {}
        self.confirmed: set[int] = set()  # PUBACKed, delete not yet committed
        self.held: set[int] = set()  # refused, until the retry
        self.sent_in_session: set[int] = set()

    # ------------------------------------------------------------------ the outbox

    def page(self, after: Key | None) -> list[FakeRow]:
        rows = sorted((r for r in self.db.values() if after is None or r.key > after),
                      key=lambda r: r.key)
        return rows[:PAGE]

    @rule(priority=st.sampled_from(list(Priority)))
    def accept(self, priority: Priority) -> None:
        row = FakeRow(self.next_seq, priority)
        self.next_seq += 1
        self.db[row.seq] = row
        if self.connected:
            self.queue.offer(row)

    @rule()
    def delete_confirmed(self) -> None:
        for seq in self.confirmed:
            del self.db[seq]
        self.queue.removed(self.confirmed)
        self.confirmed = set()

    @rule()
    def retry_refused(self) -> None:
        self.queue.release_held()
        self.held.clear()
        if self.connected:
            self.start_session()

    # ------------------------------------------------------------------ the link

    def start_session(self) -> None:
        self.queue.reset()
        self.sent_in_session = set(self.inflight)

    @precondition(lambda self: not self.connected)
    @rule()
    def connect(self) -> None:
        self.connected = True
        self.start_session()

    @precondition(lambda self: self.connected)
    @rule()
    def disconnect(self) -> None:
        for row in self.inflight.values():
            self.queue.answered(row)  # the session's end answers each publish
        self.queue.session_ended()
        self.inflight.clear()
        self.connected = False

    @precondition(lambda self: self.connected)
    @rule()
    def step(self) -> None:
        """The drain task's turn: take the next row and send it if the window has room."""
        got = self.queue.next_row()
        if got == PAGE_NEEDED:
            self.queue.loaded(self.page(self.queue.cursor), PAGE)
            return
        if got == EMPTY:
            assert not (self.eligible() - self.sent_in_session), "a row is left behind"
            return
        assert isinstance(got, FakeRow)
        assert got.seq in self.db, "a row that is no longer in the outbox"
        assert got.seq not in self.inflight and got.seq not in self.confirmed, "sent twice"
        assert got.seq not in self.held, "a refused row before its retry"
        earlier = [seq for seq in self.eligible() - self.sent_in_session
                   if self.db[seq].key < got.key and seq != got.seq]
        assert not earlier, f"{got} went before {sorted(earlier)}"
        if self.queue.may_send(got):
            self.queue.sent(got)
            self.inflight[got.seq] = got
            self.sent_in_session.add(got.seq)
        else:
            self.queue.put_back(got)

    @precondition(lambda self: self.inflight)
    @rule(pick=st.integers(min_value=0), ok=st.booleans())
    def puback(self, pick: int, ok: bool) -> None:
        row = sorted(self.inflight.values(), key=lambda r: r.seq)[pick % len(self.inflight)]
        assert self.queue.answered(row)
        del self.inflight[row.seq]
        if ok:
            self.queue.confirmed(row.seq)
            self.confirmed.add(row.seq)
        else:
            self.queue.hold(row.seq)
            self.held.add(row.seq)

    def eligible(self) -> set[int]:
        return set(self.db) - set(self.inflight) - self.confirmed - self.held

    # ------------------------------------------------------------------ always

    @invariant()
    def the_window_holds(self) -> None:
        low = sum(1 for r in self.inflight.values() if r.priority > Priority.P1)
        assert self.queue.in_flight == len(self.inflight) <= WINDOW
        assert low <= WINDOW - WINDOW // 8

    def teardown(self) -> None:
        """Connected, every PUBACK a success: the drain empties the whole outbox."""
        self.retry_refused()
        if not self.connected:
            self.connect()
        for _ in range(10 * (len(self.db) + 5)):
            self.step()
            while self.inflight:
                self.puback(0, ok=True)
            self.delete_confirmed()
        assert not self.db, f"left in the outbox: {sorted(self.db)}"


TestDrainMachine = DrainMachine.TestCase
TestDrainMachine.settings = settings(max_examples=400, stateful_step_count=60, deadline=None)
