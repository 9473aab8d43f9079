"""CAP messages with their push queue; each event's alert; each alert's press count; when
the hub last heard from each station (its own clock).

Revision ID: 0003
Revises: 0002
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"


def upgrade() -> None:
    with op.batch_alter_table("events") as batch:
        batch.add_column(sa.Column("alert_id", sa.String(64)))
    events = sa.table("events", sa.column("event_id", sa.String), sa.column("body", sa.JSON),
                      sa.column("alert_id", sa.String))
    connection = op.get_bind()
    for event_id, body in connection.execute(sa.select(events.c.event_id, events.c.body)):
        alert_id = body.get("alert_id") if isinstance(body, dict) else None
        if isinstance(alert_id, str) and alert_id:
            connection.execute(sa.update(events).where(events.c.event_id == event_id)
                               .values(alert_id=alert_id[:64]))
    op.create_index("events_alert", "events", ["station", "alert_id"])
    with op.batch_alter_table("alerts") as batch:
        batch.add_column(sa.Column("press_count", sa.Integer, nullable=False,
                                   server_default="1"))
    with op.batch_alter_table("stations") as batch:
        batch.add_column(sa.Column("heard_at", sa.Float))
    op.create_table(
        "cap_messages",
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("transition_id", sa.Integer, nullable=False, unique=True),
        sa.Column("station", sa.String(63), nullable=False),
        sa.Column("alert_id", sa.String(64), nullable=False),
        sa.Column("identifier", sa.String(200), unique=True),
        sa.Column("msg_type", sa.String(8)),
        sa.Column("sent", sa.String(32)),
        sa.Column("xml", sa.LargeBinary),
        sa.Column("created_at", sa.Float, nullable=False),
        sa.Column("pushed_at", sa.Float),
        sa.Column("push_attempts", sa.Integer, nullable=False, server_default="0"),
        sa.Column("next_push_at", sa.Float),
        sa.Column("push_claim_until", sa.Float),
        sa.Column("push_error", sa.String(300)),
    )
    op.create_index("cap_alert", "cap_messages", ["station", "alert_id"])
    op.create_index("cap_pending", "cap_messages", ["pushed_at", "id"])


def downgrade() -> None:
    op.drop_table("cap_messages")
    with op.batch_alter_table("stations") as batch:
        batch.drop_column("heard_at")
    with op.batch_alter_table("alerts") as batch:
        batch.drop_column("press_count")
    op.drop_index("events_alert", "events")
    with op.batch_alter_table("events") as batch:
        batch.drop_column("alert_id")
