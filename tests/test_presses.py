"""Press semantics as plain numbers: debounce, hold, repeats, stuck (no pins, no clock)."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.core.alerts import AlertBook
from gateway.core.commands import Action, Command
from gateway.core.lamp import LampState, projected
from gateway.core.model import MAX_EVIDENCE, AlertRecord, Priority, cite
from gateway.core.presses import Happening, HelpPointLogic, PressRules

RULES = PressRules(bounce_time_s=0.05, hold_time_s=2.0, repeat_window_s=60,
                   escalate_after_presses=3, stuck_after_s=30)


def run(logic: HelpPointLogic, edges: list[tuple[float, bool]], until: float) -> list[Happening]:
    """Feed edges in time order, ticking at every deadline on the way, up to `until`."""
    out: list[Happening] = []
    for at, pressed in [*edges, (until, logic.raw_pressed)]:
        while (deadline := logic.deadline()) is not None and deadline <= at:
            out += logic.tick(deadline)
        if at < until:
            out += logic.edge(pressed, at)
    return out


def tap(at: float, length: float = 0.2) -> list[tuple[float, bool]]:
    return [(at, True), (at + length, False)]


def test_press_is_one_p1_request() -> None:
    out = run(HelpPointLogic(RULES), tap(1.0), until=10)
    assert [h.kind for h in out] == ["help_point.press"]
    assert out[0].request is not None
    assert out[0].request.priority == Priority.P1 and out[0].request.press_count == 1


def test_chatter_of_20_edges_in_200ms_is_one_press() -> None:
    edges = [(1.0 + i * 0.01, i % 2 == 0) for i in range(20)]
    logic = HelpPointLogic(RULES)
    out = run(logic, edges, until=10)
    assert [h.kind for h in out] == ["help_point.press"]
    assert out[0].request is not None and out[0].request.press_count == 1
    assert not logic.pressed


def test_hold_upgrades_the_same_request_to_p0() -> None:
    out = run(HelpPointLogic(RULES), tap(1.0, length=3.0), until=10)
    assert [h.kind for h in out] == ["help_point.press", "help_point.hold"]
    first, hold = (h.request for h in out)
    assert first is not None and hold is not None
    assert hold.alert_id == first.alert_id and hold.priority == Priority.P0 and hold.held


def test_release_before_hold_time_is_no_hold() -> None:
    out = run(HelpPointLogic(RULES), tap(1.0, length=1.9), until=10)
    assert [h.kind for h in out] == ["help_point.press"]


def test_repeats_coalesce_and_escalate_at_the_configured_count() -> None:
    edges = tap(1.0) + tap(3.0) + tap(5.0) + tap(7.0)
    out = run(HelpPointLogic(RULES), edges, until=20)
    assert [h.kind for h in out] == ["help_point.press"] + ["help_point.repeat"] * 3
    alerts = [h.request for h in out]
    assert len({a.alert_id for a in alerts if a}) == 1
    assert [a.press_count for a in alerts if a] == [1, 2, 3, 4]
    assert [a.priority for a in alerts if a] == [Priority.P1, Priority.P1, Priority.P0, Priority.P0]
    assert [a.escalated for a in alerts if a] == [False, False, True, True]


def test_acknowledged_request_and_a_press_after_the_window_is_a_new_request() -> None:
    logic = HelpPointLogic(RULES)
    first = run(logic, tap(1.0), until=10)
    assert logic.request is not None
    logic.acknowledged(logic.request.alert_id)  # dispatch acknowledged it
    second = run(logic, tap(70.0), until=80)
    assert [h.kind for h in first + second] == ["help_point.press", "help_point.press"]
    a, b = (h.request for h in first + second)
    assert a is not None and b is not None and a.alert_id != b.alert_id


def test_presses_while_waiting_for_dispatch_join_the_request_however_late() -> None:
    out = run(HelpPointLogic(RULES), tap(1.0) + tap(500.0), until=510)
    assert [h.kind for h in out] == ["help_point.press", "help_point.repeat"]
    assert out[1].request is not None and out[1].request.press_count == 2


def test_stuck_button_is_one_fault_then_clears_on_release() -> None:
    logic = HelpPointLogic(RULES)
    out = run(logic, [(1.0, True)], until=300)
    assert [h.kind for h in out] == ["help_point.press", "help_point.hold", "help_point.stuck"]
    assert logic.stuck
    out = run(logic, [(300.0, False)], until=301)
    assert [h.kind for h in out] == ["help_point.unstuck"]
    # usable again afterwards: the press joins the request still waiting for dispatch
    out = run(logic, tap(400.0), until=410)
    assert [h.kind for h in out] == ["help_point.repeat"]


@settings(max_examples=300, deadline=None)
@given(st.lists(st.floats(min_value=0.0005, max_value=0.04), min_size=1, max_size=60))
def test_any_burst_of_bounces_is_exactly_one_press(gaps: list[float]) -> None:
    t, edges = 1.0, []
    for i, gap in enumerate(gaps):
        edges.append((t, i % 2 == 0))
        t += gap
    edges.append((t, False))
    out = run(HelpPointLogic(RULES), edges, until=t + 1.0)
    assert [h.kind for h in out] == ["help_point.press"]


BOARD_RULES = PressRules(bounce_time_s=0.0, hold_time_s=2.0, repeat_window_s=60,
                         escalate_after_presses=1000, stuck_after_s=30)


@settings(max_examples=300, deadline=None)
@given(st.lists(st.tuples(st.sampled_from(["press", "hold", "release"]),
                          st.floats(min_value=0.0, max_value=0.5), st.booleans()),
                min_size=1, max_size=80))
def test_every_board_press_that_arrives_counts_whatever_frames_are_lost(
    frames: list[tuple[str, float, bool]],
) -> None:
    """A board's BTN frames, queued and handled late, some lost on the line: every press that
    arrives is one press of the one open request, and nothing raises."""
    logic, t, delivered, out = HelpPointLogic(BOARD_RULES), 1.0, 0, []
    for event, gap, lost in frames:
        t += gap
        if lost:
            continue
        delivered += event == "press"
        out += logic.button(event, t, debounced=True)  # type: ignore[arg-type]
    presses = [h for h in out if h.kind in ("help_point.press", "help_point.repeat")]
    assert len(presses) == delivered
    if presses:
        assert presses[0].kind == "help_point.press"  # then it waits for dispatch: all join
        assert logic.request is not None and logic.request.press_count == delivered


def test_queued_release_then_press_is_two_presses_not_a_bounce() -> None:
    logic = HelpPointLogic(RULES)
    # Both edges waited in the queue; the press came 0.3 s after the release settled.
    out = logic.button("press", 1.0) + logic.button("release", 1.2) + logic.button("press", 1.5)
    assert [h.kind for h in out] == ["help_point.press", "help_point.repeat"]
    # A real bounce (within bounce_time_s of the release) is still one press.
    out = logic.button("release", 1.6) + logic.button("press", 1.62)
    assert out == []


@given(st.lists(st.sampled_from([f"reason {i}" for i in range(40)]), max_size=120))
def test_evidence_stays_bounded_keeps_the_first_and_cites_each_reason_once(
    reasons: list[str],
) -> None:
    evidence: tuple[str, ...] = ("button pressed",)
    for reason in reasons:
        evidence = cite(evidence, reason)
        assert evidence[0] == "button pressed"
        assert reason in evidence
        assert len(evidence) <= MAX_EVIDENCE
        assert len(set(evidence)) == len(evidence)


def test_an_alert_escalated_all_night_keeps_a_short_evidence_list() -> None:
    book = AlertBook(ack_timeout_s=120, escalate_to=Priority.P0)
    book.raised("a-1", "hp-1", Priority.P1, {"evidence": ["button pressed"]}, now=0)
    for n in range(1, 301):  # ten hours of re-announcements without an acknowledgement
        (record,) = book.escalate_due(now=n * 120.0)
        assert record.details["escalations"] == n
    assert record.details["evidence"] == ["button pressed", "not acknowledged within 120s"]
    assert record.priority == Priority.P0



BOOK_STEPS = st.lists(st.one_of(
    st.tuples(st.just("press"), st.sampled_from(list(Priority)),
              st.sampled_from(["button pressed", "pressed 3 times", "held for 2s"]),
              st.booleans()),
    st.tuples(st.just("corroborate"), st.sampled_from(list(Priority)),
              st.sampled_from(["smoke at platform 1", "fall detected"]), st.just(False)),
    st.tuples(st.just("escalate"), st.just(Priority.P3), st.just(""), st.just(False)),
), max_size=40)


@settings(max_examples=300, deadline=None)
@given(BOOK_STEPS)
def test_the_book_owns_class_and_evidence_whoever_updates_the_alert(
    steps: list[tuple[str, Priority, str, bool]],
) -> None:
    """Presses re-announce what the rider did; sensors corroborate; the book escalates. In
    any order, the alert's class never goes down, held and escalated stick, the first reason
    stays first, and the newest reason is always cited."""
    book = AlertBook(ack_timeout_s=120, escalate_to=Priority.P0)
    record = book.raised("a-1", "hp-1", Priority.P1,
                         {"evidence": ["button pressed"], "held": False, "escalated": False},
                         now=0)
    for n, (what, priority, reason, held) in enumerate(steps):
        before = record
        if what == "press":
            record = book.raised("a-1", "hp-1", priority, {
                "press_count": n + 2, "held": held, "escalated": False,
                "evidence": ["button pressed", reason]}, now=n)
        elif what == "corroborate":
            record = book.corroborated("a-1", priority, [reason]) or record
        else:
            record = (book.escalate_due(now=1000.0 * (n + 1)) or [record])[0]
            reason = "not acknowledged within 120s"
        assert record == book.open["a-1"]
        assert record.priority <= before.priority
        if what != "escalate":
            assert record.priority <= priority
        for flag in ("held", "escalated"):
            assert record.details[flag] or not before.details[flag], flag
        assert record.details["evidence"][0] == "button pressed"
        assert reason in record.details["evidence"]
        assert len(record.details["evidence"]) <= MAX_EVIDENCE


def test_a_corroboration_that_adds_nothing_is_not_announced_again() -> None:
    book = AlertBook(ack_timeout_s=120, escalate_to=Priority.P0)
    book.raised("a-1", "hp-1", Priority.P1, {"evidence": ["button pressed"]}, now=0)
    raised = book.corroborated("a-1", Priority.P0, ["smoke at platform 1"])
    assert raised is not None and raised.priority == Priority.P0
    assert raised.details["evidence"] == ["button pressed", "smoke at platform 1"]
    assert book.corroborated("a-1", Priority.P0, ["smoke at platform 1"]) is None
    assert book.corroborated("a-1", Priority.P2, ["smoke at platform 1"]) is None
    assert book.corroborated("a-2", Priority.P0, ["smoke at platform 1"]) is None  # not open


def test_a_restored_request_counts_on_from_what_the_rider_did() -> None:
    """After a restart the press logic gets back only what the rider did; its class follows
    from the rules again, and the next presses count on from the stored count."""
    logic = HelpPointLogic(RULES)
    request = logic.restore("a-1", press_count=2, first_press=0.0, last_press=1.0, held=False,
                            awaiting_ack=True)
    assert (request.priority, request.escalated) == (Priority.P1, False)
    (again,) = run(logic, tap(5.0), until=10)
    assert again.kind == "help_point.repeat" and again.request is not None
    assert again.request.alert_id == "a-1" and again.request.press_count == 3
    assert again.request.priority == Priority.P0 and "pressed 3 times" in again.request.evidence
    held = HelpPointLogic(RULES).restore("a-2", press_count=1, first_press=0.0,
                                         last_press=0.0, held=True, awaiting_ack=False)
    assert held.held and held.priority == Priority.P0


# ---------------------------------------------------------------- the lamp, from the book

Step = tuple[str, str]  # (what happens, to which alert)
STEPS = st.lists(st.tuples(
    st.sampled_from(["accepted", "sent", "acknowledge", "assign", "resolve", "cancel",
                     "escalate", "press_again"]),
    st.sampled_from(["a-1", "a-2"]),
), max_size=30)


def _command(alert_id: str, action: Action, n: int) -> Command:
    return Command(command_id=f"cmd-{n:08d}", station="st-1", alert_id=alert_id,
                   action=action, dispatcher="d-1",
                   team="crisis_team" if action == "assign" else None,
                   eta_s=60 if action == "assign" else None, issued_at=0.0)


COMMANDS: dict[str, Action] = {"acknowledge": "acknowledge", "assign": "assign",
                              "resolve": "resolve", "cancel": "cancel"}
RANK: dict[LampState, int] = {"idle": 0, "accepted": 1, "sent": 2, "acknowledged": 3}


def _play(book: AlertBook, what: str, alert_id: str, n: int) -> None:
    if what in ("accepted", "sent"):
        book.announced(alert_id, "accepted" if what == "accepted" else "sent")
    elif what == "escalate":
        book.escalate_due(now=1000.0 * (n + 1))
    elif what == "press_again" and alert_id in book.open:
        book.raised(alert_id, "hp-1", Priority.P0, {"press_count": 2}, now=n)
    elif what in COMMANDS:
        decided = book.decide(_command(alert_id, COMMANDS[what], n), replay=False)
        if isinstance(decided, AlertRecord):
            book.apply(decided)


def _claims_no_more(state: LampState, seen: set[str]) -> bool:
    """`state` is backed by what happened to the alert."""
    backing = {"idle": {""}, "accepted": {"accepted"}, "sent": {"sent"},
               "acknowledged": {"acknowledge", "assign"}}[state]
    return state == "idle" or bool(seen & backing)


@settings(max_examples=300, deadline=None)
@given(STEPS)
def test_the_lamp_is_a_projection_of_the_book_and_never_claims_more(steps: list[Step]) -> None:
    """Whatever order deliveries, commands and escalations arrive in, the lamp of an alert
    says "sent" only after the broker confirmed one of its events, "acknowledged" only once
    dispatch acknowledged or assigned it, goes idle when it closes, and never goes back."""
    book = AlertBook(ack_timeout_s=120, escalate_to=Priority.P0)
    for alert_id in ("a-1", "a-2"):
        book.raised(alert_id, "hp-1", Priority.P1, {"evidence": ["button pressed"]}, now=0)
    seen: dict[str, set[str]] = {"a-1": set(), "a-2": set()}
    shown: dict[str, LampState] = {"a-1": "idle", "a-2": "idle"}
    for n, (what, alert_id) in enumerate(steps):
        was_open = alert_id in book.open
        _play(book, what, alert_id, n)
        if was_open:
            seen[alert_id].add(what)
        record = book.open.get(alert_id) or book.recently_closed.get(alert_id)
        state = projected(record, book.delivery.get(alert_id))
        assert _claims_no_more(state, seen[alert_id]), f"{alert_id}: {state} after {seen}"
        if record is not None and record.closed:
            assert state == "idle"
        else:
            assert RANK[state] >= RANK[shown[alert_id]], f"{alert_id} went back to {state}"
        shown[alert_id] = state


def test_an_alert_read_back_after_a_restart_is_shown_as_far_as_it_got() -> None:
    book = AlertBook(ack_timeout_s=120, escalate_to=Priority.P0)
    open_record = AlertRecord("a-1", "hp-1", "open", Priority.P1, {})
    book.restore(open_record, now=0, sent=False)
    assert projected(open_record, book.delivery["a-1"]) == "accepted"
    assert book.announced("a-1", "sent") == open_record  # its row's PUBACK, after the restart
    assert projected(open_record, book.delivery["a-1"]) == "sent"
    assert book.announced("a-1", "accepted") is None  # never back
