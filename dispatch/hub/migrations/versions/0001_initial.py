"""The hub's first schema: events, alerts, their transitions, stations.

Revision ID: 0001
Revises:
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None


def upgrade() -> None:
    op.create_table(
        "events",
        sa.Column("event_id", sa.String(64), primary_key=True),
        sa.Column("station", sa.String(63), nullable=False),
        sa.Column("seq", sa.BigInteger, nullable=False),
        sa.Column("class", sa.String(2), nullable=False),
        sa.Column("kind", sa.String(64), nullable=False),
        sa.Column("source", sa.String(64), nullable=False),
        sa.Column("wall_time", sa.Float, nullable=False),
        sa.Column("received_at", sa.Float, nullable=False),
        sa.Column("body", sa.JSON, nullable=False),
    )
    op.create_index("events_station_seq", "events", ["station", "seq"])
    op.create_table(
        "alerts",
        sa.Column("station", sa.String(63), primary_key=True),
        sa.Column("alert_id", sa.String(64), primary_key=True),
        sa.Column("class", sa.String(2), nullable=False),
        sa.Column("state", sa.String(16), nullable=False),
        sa.Column("source", sa.String(64), nullable=False),
        sa.Column("location", sa.String(200), nullable=False),
        sa.Column("requested_response", sa.String(32), nullable=False),
        sa.Column("opened_at", sa.Float, nullable=False),
        sa.Column("acknowledged_at", sa.Float),
        sa.Column("assigned_at", sa.Float),
        sa.Column("closed_at", sa.Float),
        sa.Column("team", sa.String(32)),
        sa.Column("eta_s", sa.Integer),
        sa.Column("escalations", sa.Integer, nullable=False),
        sa.Column("last_seq", sa.BigInteger, nullable=False),
        sa.Column("updated_at", sa.Float, nullable=False),
    )
    op.create_index("alerts_state", "alerts", ["state"])
    op.create_table(
        "alert_transitions",
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("station", sa.String(63), nullable=False),
        sa.Column("alert_id", sa.String(64), nullable=False),
        sa.Column("state", sa.String(16), nullable=False),
        sa.Column("at", sa.Float, nullable=False),
        sa.Column("event_id", sa.String(64), nullable=False),
    )
    op.create_index("transitions_alert", "alert_transitions", ["station", "alert_id"])
    op.create_table(
        "stations",
        sa.Column("station", sa.String(63), primary_key=True),
        sa.Column("status", sa.String(16)),
        sa.Column("status_at", sa.Float),
        sa.Column("health", sa.JSON),
        sa.Column("health_at", sa.Float),
        sa.Column("last_event_at", sa.Float),
    )


def downgrade() -> None:
    for table in ("stations", "alert_transitions", "alerts", "events"):
        op.drop_table(table)
