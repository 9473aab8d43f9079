"""The hub's database: what stations said, committed once, and the audit of what is missing.

One transaction per batch of messages (`record`): the MQTT side acknowledges the batch only
after it returns. Events are stored exactly once by `event_id`; a re-send, or the same event
reaching two hubs of a shared subscription, is a duplicate (one `INSERT ... ON CONFLICT DO
NOTHING RETURNING` per batch: the primary key decides, so two writers cannot both store it).
An alert's row follows its newest event (by the gateway's `seq`): state, class, team, and
the first time it was acknowledged, assigned and closed, so time to acknowledge and time to
resolve are facts in the database. Every state change is also a row in `alert_transitions`.

SQLAlchemy Core: the same code runs on PostgreSQL and SQLite (the one dialect construct is
their common `INSERT ... ON CONFLICT`).
"""

from __future__ import annotations

import itertools
import logging
import time
from collections import Counter
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from alembic import command
from alembic.config import Config
from sqlalchemy import (
    Connection,
    Engine,
    bindparam,
    create_engine,
    delete,
    event,
    exists,
    func,
    select,
    update,
)
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.exc import IntegrityError

from dispatch.hub.cap import CapMessage, Status, follow_up
from dispatch.hub.schema import (
    alerts,
    cap_messages,
    command_audit,
    events,
    operators,
    stations,
    transitions,
)
from dispatch.inbound import Dropped, Inbound

log = logging.getLogger(__name__)

MIGRATIONS = Path(__file__).parent / "migrations"
_CLOSED = ("resolved", "cancelled")
_CAP_WINDOW = 5000  # transition ids below the newest issued one still looked at


def open_engine(url: str) -> Engine:
    """An engine for a database URL (`sqlite:///PATH` or `postgresql+psycopg://...`)."""
    # pre-ping: a connection the database dropped (a restart) is replaced, not handed out.
    engine = create_engine(url, future=True, pool_pre_ping=True)
    if engine.dialect.name == "sqlite":

        @event.listens_for(engine, "connect")
        def _sqlite_pragmas(dbapi_connection: Any, _record: Any) -> None:
            cursor = dbapi_connection.cursor()
            cursor.execute("PRAGMA journal_mode=WAL")
            cursor.execute("PRAGMA synchronous=FULL")
            cursor.execute("PRAGMA busy_timeout=10000")
            cursor.close()

    return engine


def migrate(engine: Engine) -> None:
    """Bring the schema to the newest migration (Alembic, one history for both databases)."""
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS))
    with engine.begin() as connection:
        config.attributes["connection"] = connection
        command.upgrade(config, "head")


@dataclass(frozen=True)
class Gap:
    """Seqs of one station the hub never received, between the first and last it did:
    `dropped`, which the station reported it evicted or expired (`outbox.dropped`), and
    `missing`, the rest: lost somewhere between the button and the database."""

    station: str
    first: int
    last: int
    missing: list[int]
    dropped: list[int]


class HubStore:
    """Writes checked station messages; reads the audit."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self.counts: Counter[str] = Counter()

    def record(self, batch: Iterable[Inbound | Dropped]) -> Counter[str]:
        """Commit one batch in one transaction; returns what it did (stored, duplicate...)."""
        done: Counter[str] = Counter()
        now = time.time()
        fresh: list[Inbound] = []
        with self.engine.begin() as conn:
            for item in batch:
                if isinstance(item, Dropped):
                    done[f"dropped_{item.reason}"] += 1
                elif item.channel == "event":
                    fresh.append(item)
                elif item.channel == "status":
                    self._station(conn, item.station, status=item.message["state"],
                                  status_at=item.message["wall_time"], heard_at=now)
                    done["status"] += 1
                elif item.channel == "health":
                    self._station(conn, item.station, health=item.message,
                                  health_at=item.message["wall_time"], heard_at=now)
                    done["health"] += 1
                else:
                    done[f"ignored_{item.channel}"] += 1  # snapshots and replies: events rule
            if fresh:
                self._events(conn, fresh, now, done)
        self.counts.update(done)
        return done

    def _events(self, conn: Connection, items: list[Inbound], now: float,
                done: Counter[str]) -> None:
        """Store a batch's events in one statement (those already stored, by this hub or by
        another of a shared subscription, are skipped by the primary key), then their
        alerts."""
        new: dict[str, Inbound] = {}
        for item in items:
            new.setdefault(item.message["event_id"], item)
        insert = _dialect_insert(conn)(events).on_conflict_do_nothing(
            index_elements=["event_id"]).returning(events.c.event_id)
        taken = set(conn.execute(insert, [_event_row(item, now) for item in new.values()])
                    .scalars())
        stored = [item for event_id, item in new.items() if event_id in taken]
        done["duplicate"] += len(items) - len(stored)
        done["stored"] += len(stored)
        done["alert_events"] += sum(_alert_id(item.message["body"]) is not None
                                    for item in stored)
        latest: dict[str, float] = {}
        for item in stored:
            wall = float(item.message["wall_time"])
            latest[item.station] = max(wall, latest.get(item.station, wall))
        self._alerts(conn, [(item.station, alert_id, item.message) for item in stored
                            if (alert_id := _alert_id(item.message["body"])) is not None])
        if latest:  # one upsert for every station of the batch (in one order: two hubs)
            upsert = _dialect_insert(conn)(stations)
            conn.execute(upsert.on_conflict_do_update(index_elements=["station"], set_={
                "last_event_at": upsert.excluded.last_event_at,
                "heard_at": upsert.excluded.heard_at,
            }), [{"station": station, "last_event_at": latest[station], "heard_at": now}
                 for station in sorted(latest)])

    def _alerts(self, conn: Connection, items: list[tuple[str, str, dict[str, Any]]]) -> None:
        """The alert rows and transitions a batch's events make, in four statements: read the
        batch's alerts, insert the new ones, update the changed ones, add the transitions.
        An alert another hub created meanwhile goes through `_alert`, event by event."""
        if not items:
            return
        rows = _locked_alerts(conn, sorted({alert_id for _, alert_id, _ in items}))
        existing = set(rows)
        changed: set[tuple[str, str]] = set()
        moves: dict[tuple[str, str], list[dict[str, Any]]] = {}
        for station, alert_id, message in items:
            key = (station, alert_id)
            row = rows.get(key)
            if row is None:
                rows[key] = _new_alert(station, alert_id, message)
                moves.setdefault(key, []).append(_move(key, rows[key]["state"], message))
                continue
            changes, states = _alert_changes(row, message)
            moves.setdefault(key, []).extend(_move(key, state, message) for state in states)
            if changes:
                row.update(changes)
                changed.add(key)
        fresh = [rows[key] for key in rows if key not in existing]
        for raced in _insert_alerts(conn, fresh) if fresh else set():
            moves.pop(raced, None)  # another hub created it: replay its events one by one
            for station, alert_id, message in items:
                if (station, alert_id) == raced:
                    self._alert(conn, station, alert_id, message)
        _update_alerts(conn, [rows[key] for key in changed if key in existing])
        made = [move for key_moves in moves.values() for move in key_moves]
        if made:
            made.sort(key=lambda m: m.pop("order"))
            conn.execute(transitions.insert(), made)

    def _alert(self, conn: Connection, station: str, alert_id: str,
               event: dict[str, Any]) -> None:
        body, at, seq = event["body"], float(event["wall_time"]), int(event["seq"])
        state = body.get("state") if isinstance(body.get("state"), str) else "open"
        key = (alerts.c.station == station) & (alerts.c.alert_id == alert_id)
        row = conn.execute(select(alerts).where(key).with_for_update()).mappings().first()
        if row is None:
            try:
                with conn.begin_nested():
                    conn.execute(alerts.insert().values(
                        station=station, alert_id=alert_id, **{"class": event["class"]},
                        state=state, source=event["source"],
                        location=str(body.get("location", ""))[:200],
                        requested_response=event["requested_response"],
                        opened_at=_first_press(body, at), escalations=0, last_seq=seq,
                        press_count=_press_count(body, 1),
                        updated_at=at, **_times(state, at, {}),
                        **_assignment(body),
                    ))
            except IntegrityError:
                row = conn.execute(select(alerts).where(key).with_for_update()).mappings().first()
            else:
                self._transition(conn, station, alert_id, state, at=at, event_id=event["event_id"])
                return
        assert row is not None
        changes: dict[str, Any] = _times(state, at, row)
        if event["kind"] == "alert.escalated":
            changes["escalations"] = row["escalations"] + 1
            self._transition(conn, station, alert_id, "escalated", at=at,
                             event_id=event["event_id"])
        if _press_count(body, 0) > row["press_count"]:
            changes["press_count"] = _press_count(body, 0)
        if seq > row["last_seq"]:  # the newest event is the truth (P0 drains before P1)
            changes |= {"state": state, "class": event["class"], "last_seq": seq,
                        "updated_at": at,
                        "requested_response": event["requested_response"], **_assignment(body)}
            if row["state"] in _CLOSED:
                changes["state"] = row["state"]  # closed stays closed
        if changes:
            conn.execute(update(alerts).where(key).values(**changes))
        if state != row["state"] and row["state"] not in _CLOSED:
            self._transition(conn, station, alert_id, state, at=at, event_id=event["event_id"])

    @staticmethod
    def _transition(conn: Connection, station: str, alert_id: str, state: str, *, at: float,
                    event_id: str) -> None:
        conn.execute(transitions.insert().values(
            station=station, alert_id=alert_id, state=state, at=at, event_id=event_id))

    @staticmethod
    def _station(conn: Connection, station: str, **values: Any) -> None:
        key = stations.c.station == station
        if conn.execute(update(stations).where(key).values(**values)).rowcount:
            return
        try:
            with conn.begin_nested():
                conn.execute(stations.insert().values(station=station, **values))
        except IntegrityError:
            conn.execute(update(stations).where(key).values(**values))

    # ------------------------------------------------------------------ reading

    def gaps(self) -> list[Gap]:
        """Per station, the seqs never received between the first and the last that were."""
        out = []
        with self.engine.connect() as conn:
            names = [s for (s,) in conn.execute(select(events.c.station).distinct())]
            for station in sorted(names):
                seqs = [s for (s,) in conn.execute(
                    select(events.c.seq).where(events.c.station == station)
                    .order_by(events.c.seq))]
                reported: set[int] = set()
                for (body,) in conn.execute(select(events.c.body).where(
                        (events.c.station == station) & (events.c.kind == "outbox.dropped"))):
                    for what in ("evicted", "expired"):
                        found = body.get(what) if isinstance(body, dict) else None
                        reported.update(s for s in found or [] if isinstance(s, int))
                # Rows evicted before the first one received still count as accounted for.
                lower = min([seqs[0], *reported])
                gone = list(range(lower, seqs[0])) + list(_missing(seqs))
                out.append(Gap(station, lower, seqs[-1],
                               missing=[s for s in gone if s not in reported],
                               dropped=[s for s in gone if s in reported]))
        return out

    def alert(self, station: str, alert_id: str) -> dict[str, Any] | None:
        """One alert's row, or None."""
        with self.engine.connect() as conn:
            row = conn.execute(select(alerts).where(
                (alerts.c.station == station) & (alerts.c.alert_id == alert_id))).mappings().first()
            return dict(row) if row is not None else None

    def open_alerts(self) -> list[dict[str, Any]]:
        """Alerts not resolved or cancelled: most urgent class first, then oldest first."""
        with self.engine.connect() as conn:
            return [dict(r) for r in conn.execute(
                select(alerts).where(alerts.c.state.not_in(_CLOSED))
                .order_by(alerts.c["class"], alerts.c.opened_at)).mappings()]

    def station_rows(self) -> list[dict[str, Any]]:
        """Every station's last status and health."""
        with self.engine.connect() as conn:
            return [dict(r) for r in conn.execute(
                select(stations).order_by(stations.c.station)).mappings()]

    def add_operator(self, username: str, password_hash: str) -> None:
        """Add (or replace) a web console operator."""
        with self.engine.begin() as conn:
            conn.execute(delete(operators).where(operators.c.username == username))
            conn.execute(operators.insert().values(
                username=username, password_hash=password_hash, created_at=time.time()))

    def operator_hash(self, username: str) -> str | None:
        """An operator's password hash, or None."""
        with self.engine.connect() as conn:
            row = conn.execute(select(operators.c.password_hash)
                               .where(operators.c.username == username)).first()
            return None if row is None else str(row[0])

    def audit(self, **entry: Any) -> None:
        """Record a command sent from the web console and its outcome."""
        with self.engine.begin() as conn:
            conn.execute(command_audit.insert().values(at=time.time(), **entry))

    def audit_log(self) -> list[dict[str, Any]]:
        """Every audited command, oldest first."""
        with self.engine.connect() as conn:
            return [dict(r) for r in conn.execute(
                select(command_audit).order_by(command_audit.c.id)).mappings()]

    def alerts(self) -> list[dict[str, Any]]:
        """Every alert's row, oldest first."""
        with self.engine.connect() as conn:
            return [dict(r) for r in conn.execute(
                select(alerts).order_by(alerts.c.opened_at)).mappings()]

    def history(self, station: str, alert_id: str) -> list[tuple[str, float]]:
        """An alert's states in order, with their times."""
        with self.engine.connect() as conn:
            return [(s, at) for s, at in conn.execute(
                select(transitions.c.state, transitions.c.at)
                .where((transitions.c.station == station) & (transitions.c.alert_id == alert_id))
                .order_by(transitions.c.at, transitions.c.id))]

    def timeline(self, station: str, alert_id: str) -> list[dict[str, Any]]:
        """An alert's events in the order the gateway accepted them (by `seq`)."""
        with self.engine.connect() as conn:
            return [dict(r) for r in conn.execute(
                select(events).where((events.c.station == station)
                                     & (events.c.alert_id == alert_id))
                .order_by(events.c.seq)).mappings()]

    # ------------------------------------------------------------------ CAP

    def issue_cap(self, *, sender: str, status: Status = "Actual", limit: int = 500) -> int:
        """Turn transitions not yet issued into CAP messages, in one transaction; how many
        transitions it took. Two hubs racing for the same ones: one commits, the other's
        transaction fails on the unique transition id (IntegrityError) and takes the rest
        next time."""
        now = time.time()
        with self.engine.begin() as conn:
            newest = conn.execute(select(func.max(cap_messages.c.transition_id))).scalar()
            # Transactions commit out of id order only by a handful; never by thousands.
            floor = (newest or 0) - _CAP_WINDOW
            todo = conn.execute(
                select(transitions).where(
                    (transitions.c.id > floor)
                    & ~exists().where(cap_messages.c.transition_id == transitions.c.id))
                .order_by(transitions.c.id).limit(limit)).mappings().all()
            sent: dict[tuple[str, str], list[CapMessage]] = {}
            for t in todo:
                key = (t["station"], t["alert_id"])
                if key not in sent:
                    sent[key] = [CapMessage(r.identifier, r.sent, r.msg_type, r.xml)
                                 for r in conn.execute(
                                     select(cap_messages).where(
                                         (cap_messages.c.station == key[0])
                                         & (cap_messages.c.alert_id == key[1])
                                         & cap_messages.c.xml.is_not(None))
                                     .order_by(cap_messages.c.id))]
                alert = conn.execute(select(alerts).where(
                    (alerts.c.station == key[0]) & (alerts.c.alert_id == key[1]))
                ).mappings().first()
                message = None if alert is None else follow_up(
                    dict(alert), t["state"], t["at"], sent[key], sender=sender, status=status)
                conn.execute(cap_messages.insert().values(
                    transition_id=t["id"], station=key[0], alert_id=key[1], created_at=now,
                    **({} if message is None else {
                        "identifier": message.identifier, "msg_type": message.msg_type,
                        "sent": message.sent, "xml": message.xml})))
                if message is not None:
                    sent[key].append(message)
            return len(todo)

    def cap_feed(self, after: int = 0, limit: int = 100) -> list[dict[str, Any]]:
        """CAP messages issued after feed position `after`, oldest first."""
        with self.engine.connect() as conn:
            return [dict(r) for r in conn.execute(
                select(cap_messages.c.id, cap_messages.c.identifier, cap_messages.c.sent,
                       cap_messages.c.msg_type, cap_messages.c.xml)
                .where((cap_messages.c.id > after) & cap_messages.c.xml.is_not(None))
                .order_by(cap_messages.c.id).limit(limit)).mappings()]

    def cap_message(self, identifier: str) -> bytes | None:
        """One CAP message's XML, or None."""
        with self.engine.connect() as conn:
            row = conn.execute(select(cap_messages.c.xml)
                               .where(cap_messages.c.identifier == identifier)).first()
            return None if row is None else bytes(row[0])

    def claim_push(self, now: float, hold_s: float) -> dict[str, Any] | None:
        """The oldest message not pushed yet, claimed for `hold_s` (others wait behind it, so
        a CAD gets each alert's messages in order), or None if there is none or it is due
        later or claimed by another hub."""
        pending = (cap_messages.c.pushed_at.is_(None)) & cap_messages.c.xml.is_not(None)
        with self.engine.begin() as conn:
            row = conn.execute(select(cap_messages).where(pending).order_by(cap_messages.c.id)
                               .limit(1)).mappings().first()
            if row is None or (row["next_push_at"] or 0) > now:
                return None
            free = cap_messages.c.push_claim_until.is_(None) | (
                cap_messages.c.push_claim_until < now)
            claimed = conn.execute(update(cap_messages).where(
                (cap_messages.c.id == row["id"]) & free & pending
            ).values(push_claim_until=now + hold_s)).rowcount
            return dict(row) if claimed else None

    def pushed(self, message_id: int, now: float) -> None:
        """The CAD took the message."""
        with self.engine.begin() as conn:
            conn.execute(update(cap_messages).where(cap_messages.c.id == message_id).values(
                pushed_at=now, push_attempts=cap_messages.c.push_attempts + 1,
                push_claim_until=None, push_error=None))

    def push_failed(self, message_id: int, error: str, retry_at: float) -> None:
        """The push failed: try again at `retry_at`."""
        with self.engine.begin() as conn:
            conn.execute(update(cap_messages).where(cap_messages.c.id == message_id).values(
                push_attempts=cap_messages.c.push_attempts + 1, next_push_at=retry_at,
                push_claim_until=None, push_error=error[:300]))

    def push_backlog(self) -> dict[str, Any]:
        """Messages not pushed yet: how many, the oldest's creation time, the last error."""
        pending = (cap_messages.c.pushed_at.is_(None)) & cap_messages.c.xml.is_not(None)
        with self.engine.connect() as conn:
            count, oldest = conn.execute(select(func.count(), func.min(
                cap_messages.c.created_at)).where(pending)).one()
            error = conn.execute(select(cap_messages.c.push_error).where(pending)
                                 .order_by(cap_messages.c.id).limit(1)).scalar()
        return {"pending": int(count), "oldest_at": oldest, "error": error}

    def event_ids(self, station: str) -> set[str]:
        """The ids of every event stored from a station."""
        with self.engine.connect() as conn:
            return set(conn.execute(select(events.c.event_id)
                                    .where(events.c.station == station)).scalars())

    def event_count(self) -> int:
        """Events stored."""
        with self.engine.connect() as conn:
            return len(conn.execute(select(events.c.event_id)).all())


def _event_row(item: Inbound, now: float) -> dict[str, Any]:
    event = item.message
    return {
        "event_id": event["event_id"], "station": item.station, "seq": event["seq"],
        "class": event["class"], "kind": event["kind"], "source": event["source"],
        "wall_time": event["wall_time"], "received_at": now, "body": event["body"],
        "alert_id": _alert_id(event["body"]),
    }


def _alert_id(body: dict[str, Any]) -> str | None:
    alert_id = body.get("alert_id")
    return alert_id if isinstance(alert_id, str) and alert_id else None


def _dialect_insert(conn: Connection) -> Any:
    """The dialect's INSERT, which has ON CONFLICT (PostgreSQL and SQLite >= 3.24 alike)."""
    return {"postgresql": postgresql.insert, "sqlite": sqlite.insert}[conn.dialect.name]


def _missing(seqs: list[int]) -> Iterator[int]:
    for a, b in itertools.pairwise(seqs):
        yield from range(a + 1, b)


def _first_press(body: dict[str, Any], at: float) -> float:
    first = body.get("first_press")
    return float(first) if isinstance(first, int | float) and not isinstance(first, bool) else at


def _locked_alerts(conn: Connection, ids: list[str]) -> dict[tuple[str, str], dict[str, Any]]:
    """The alerts with these ids, by (station, alert id), locked until the commit
    (PostgreSQL; SQLite has one writer at a time): another hub updating the same alert
    waits, then reads what this one wrote. Sorted, so two hubs take the locks in one order."""
    rows: dict[tuple[str, str], dict[str, Any]] = {}
    for start in range(0, len(ids), 500):
        for found in conn.execute(select(alerts).where(
                alerts.c.alert_id.in_(ids[start:start + 500]))
                .order_by(alerts.c.alert_id, alerts.c.station)
                .with_for_update()).mappings():
            rows[(found["station"], found["alert_id"])] = dict(found)
    return rows


def _insert_alerts(conn: Connection, fresh: list[dict[str, Any]]) -> set[tuple[str, str]]:
    """Insert new alert rows; the keys of those another hub inserted first (not written)."""
    insert = _dialect_insert(conn)(alerts).on_conflict_do_nothing(
        index_elements=["station", "alert_id"]).returning(alerts.c.station, alerts.c.alert_id)
    created = {(str(station), str(alert_id)) for station, alert_id in conn.execute(insert, fresh)}
    return {(r["station"], r["alert_id"]) for r in fresh} - created


def _update_alerts(conn: Connection, rows: list[dict[str, Any]]) -> None:
    """Write changed alert rows whole, in one statement."""
    if not rows:
        return
    mutable = [c.name for c in alerts.columns if c.name not in ("station", "alert_id")]
    conn.execute(
        update(alerts).where((alerts.c.station == bindparam("key_station"))
                             & (alerts.c.alert_id == bindparam("key_alert")))
        .values({name: bindparam(f"new_{name}") for name in mutable}),
        [{"key_station": r["station"], "key_alert": r["alert_id"],
          **{f"new_{name}": r[name] for name in mutable}} for r in rows])


_ORDER = itertools.count()  # transitions are written in the order the batch made them


def _move(key: tuple[str, str], state: str, event: dict[str, Any]) -> dict[str, Any]:
    """An `alert_transitions` row (with its place in the batch)."""
    return {"station": key[0], "alert_id": key[1], "state": state,
            "at": float(event["wall_time"]), "event_id": event["event_id"],
            "order": next(_ORDER)}


def _state(body: dict[str, Any]) -> str:
    state = body.get("state")
    return state if isinstance(state, str) else "open"


def _new_alert(station: str, alert_id: str, event: dict[str, Any]) -> dict[str, Any]:
    """The row of an alert first heard of in this event."""
    body, at = event["body"], float(event["wall_time"])
    state = _state(body)
    return {
        "station": station, "alert_id": alert_id, "class": event["class"], "state": state,
        "source": event["source"], "location": str(body.get("location", ""))[:200],
        "requested_response": event["requested_response"], "opened_at": _first_press(body, at),
        "acknowledged_at": None, "assigned_at": None, "closed_at": None, "team": None,
        "eta_s": None, "escalations": 0, "press_count": _press_count(body, 1),
        "last_seq": int(event["seq"]), "updated_at": at,
        **_times(state, at, {}), **_assignment(body),
    }


def _alert_changes(row: dict[str, Any], event: dict[str, Any]) -> tuple[dict[str, Any],
                                                                         list[str]]:
    """What an event about a known alert changes in its row, and the transitions it makes
    (the newest event by seq is the truth; a closed alert stays closed)."""
    body, at, seq = event["body"], float(event["wall_time"]), int(event["seq"])
    state = _state(body)
    made = []
    changes: dict[str, Any] = _times(state, at, row)
    if event["kind"] == "alert.escalated":
        changes["escalations"] = row["escalations"] + 1
        made.append("escalated")
    if _press_count(body, 0) > row["press_count"]:
        changes["press_count"] = _press_count(body, 0)
    if seq > row["last_seq"]:  # the newest event is the truth (P0 drains before P1)
        changes |= {"state": state, "class": event["class"], "last_seq": seq,
                    "updated_at": at, "requested_response": event["requested_response"],
                    **_assignment(body)}
        if row["state"] in _CLOSED:
            changes["state"] = row["state"]  # closed stays closed
    if state != row["state"] and row["state"] not in _CLOSED:
        made.append(state)
    return changes, made


def _press_count(body: dict[str, Any], default: int) -> int:
    count = body.get("press_count")
    return count if isinstance(count, int) and not isinstance(count, bool) else default


def _times(state: str, at: float, row: Any) -> dict[str, float]:
    """The transition times this state sets, each only the first time."""
    column = {"acknowledged": "acknowledged_at", "assigned": "assigned_at",
              "resolved": "closed_at", "cancelled": "closed_at"}.get(state)
    out: dict[str, float] = {}
    if column is not None and not row.get(column):
        out[column] = at
    if state == "assigned" and not row.get("acknowledged_at"):
        out["acknowledged_at"] = at  # assigned without an explicit acknowledge
    return out


def _assignment(body: dict[str, Any]) -> dict[str, Any]:
    team, eta = body.get("team"), body.get("eta_s")
    out: dict[str, Any] = {}
    if isinstance(team, str):
        out["team"] = team[:32]
    if isinstance(eta, int) and not isinstance(eta, bool):
        out["eta_s"] = eta
    return out
