"""The durable outbox: the SQLite store, its files, and the thread that owns the connection.
"""
