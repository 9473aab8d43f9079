"""The hub: a durable record of every station, in a real database.

- `schema`: the tables (SQLAlchemy Core), one schema for PostgreSQL (production) and
  SQLite (a laptop, the demo, a small agency); `migrations/` is its one Alembic history.
- `store`: writes what stations say (checked by `dispatch.inbound`) in one transaction per
  batch: events exactly once by `event_id`, alerts as records with the time of every
  transition, each station's status and health; and the audit (the seqs never received).
- `service`: the MQTT side: a persistent session with a fixed client id, optionally a shared
  subscription so several hubs split the load over one database, and each message
  acknowledged to the broker only after its batch is committed, so a hub that crashes loses
  nothing (the broker sends it again, and the event id folds the repeat).
"""
