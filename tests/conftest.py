"""Shared fixtures: a real Mosquitto for the session, fresh ones for outage tests, and a real
PostgreSQL for the session (each test makes a database of its own on it)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from gateway.testing.mosquitto import Mosquitto
from gateway.testing.postgres import PostgreSQL


@pytest.fixture(scope="session")
def broker() -> Iterator[Mosquitto]:
    """A real Mosquitto shared by tests that never stop it (topics are unique per test)."""
    with Mosquitto() as mosquitto:
        yield mosquitto


@pytest.fixture
def own_broker() -> Iterator[Mosquitto]:
    """A real Mosquitto for one test, not yet started, that the test may stop and start."""
    mosquitto = Mosquitto(persistence=True)
    try:
        yield mosquitto
    finally:
        mosquitto.close()


@pytest.fixture(scope="session")
def postgres() -> Iterator[PostgreSQL]:
    """A real PostgreSQL shared by tests that never stop it (`new_database` per test)."""
    with PostgreSQL() as server:
        yield server
