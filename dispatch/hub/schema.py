"""The hub's tables. Migrations (dispatch/hub/migrations) build exactly these."""

from __future__ import annotations

from sqlalchemy import (
    JSON,
    BigInteger,
    Column,
    Float,
    Index,
    Integer,
    LargeBinary,
    MetaData,
    String,
    Table,
)

metadata = MetaData()

ID = 64  # event ids, alert ids, sources and kinds are short ids in the contract

#: Every event, once (de-duplicated on event_id).
events = Table(
    "events", metadata,
    Column("event_id", String(ID), primary_key=True),
    Column("station", String(63), nullable=False),
    Column("seq", BigInteger, nullable=False),
    Column("class", String(2), nullable=False),
    Column("kind", String(ID), nullable=False),
    Column("source", String(ID), nullable=False),
    Column("wall_time", Float, nullable=False),  # the gateway's clock at acceptance
    Column("received_at", Float, nullable=False),  # the hub's clock at commit
    Column("body", JSON, nullable=False),
    Column("alert_id", String(ID)),  # body.alert_id, for an alert's timeline
    Index("events_station_seq", "station", "seq"),
    Index("events_alert", "station", "alert_id"),
)

#: One row per alert: its state now and when each transition happened (gateway wall time).
alerts = Table(
    "alerts", metadata,
    Column("station", String(63), primary_key=True),
    Column("alert_id", String(ID), primary_key=True),
    Column("class", String(2), nullable=False),
    Column("state", String(16), nullable=False),
    Column("source", String(ID), nullable=False),
    Column("location", String(200), nullable=False, default=""),
    Column("requested_response", String(32), nullable=False),
    Column("opened_at", Float, nullable=False),
    Column("acknowledged_at", Float),
    Column("assigned_at", Float),
    Column("closed_at", Float),  # resolved or cancelled
    Column("team", String(32)),
    Column("eta_s", Integer),
    Column("escalations", Integer, nullable=False, default=0),
    Column("press_count", Integer, nullable=False, default=1, server_default="1"),
    Column("last_seq", BigInteger, nullable=False),
    Column("updated_at", Float, nullable=False),
    Index("alerts_state", "state"),
)

#: Every change of an alert's state, in the order the gateway made them.
transitions = Table(
    "alert_transitions", metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("station", String(63), nullable=False),
    Column("alert_id", String(ID), nullable=False),
    Column("state", String(16), nullable=False),
    Column("at", Float, nullable=False),
    Column("event_id", String(ID), nullable=False),
    Index("transitions_alert", "station", "alert_id"),
)

#: Each station's last status (online/offline) and health report.
stations = Table(
    "stations", metadata,
    Column("station", String(63), primary_key=True),
    Column("status", String(16)),
    Column("status_at", Float),
    Column("health", JSON),
    Column("health_at", Float),
    Column("last_event_at", Float),
    Column("heard_at", Float),  # the hub's clock at its last commit of the station's message
)

#: Dispatchers who may log in to the web console (passwords hashed with argon2).
operators = Table(
    "operators", metadata,
    Column("username", String(64), primary_key=True),
    Column("password_hash", String(200), nullable=False),
    Column("created_at", Float, nullable=False),
)

#: Every command sent from the web console: who, what, and what the station answered.
command_audit = Table(
    "command_audit", metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("at", Float, nullable=False),
    Column("operator", String(64), nullable=False),
    Column("station", String(63), nullable=False),
    Column("alert_id", String(ID), nullable=False),
    Column("action", String(16), nullable=False),
    Column("team", String(32)),
    Column("eta_s", Integer),
    Column("command_id", String(ID), nullable=False),
    Column("outcome", String(16), nullable=False),  # applied, rejected, no_reply, not_sent
    Column("reason", String(32)),
    Column("detail", String(300)),
)

#: The CAP 1.2 view of each transition (`xml` is NULL for one after the alert's Cancel), in
#: the order the hub issued them (`id`: the feed's cursor), and its push to a CAD: a durable
#: queue (pending while `pushed_at` is NULL; a hub claims a message until `push_claim_until`).
cap_messages = Table(
    "cap_messages", metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("transition_id", Integer, nullable=False, unique=True),
    Column("station", String(63), nullable=False),
    Column("alert_id", String(ID), nullable=False),
    Column("identifier", String(200), unique=True),
    Column("msg_type", String(8)),
    Column("sent", String(32)),
    Column("xml", LargeBinary),
    Column("created_at", Float, nullable=False),
    Column("pushed_at", Float),
    Column("push_attempts", Integer, nullable=False, default=0, server_default="0"),
    Column("next_push_at", Float),
    Column("push_claim_until", Float),
    Column("push_error", String(300)),
    Index("cap_alert", "station", "alert_id"),
    Index("cap_pending", "pushed_at", "id"),
)
