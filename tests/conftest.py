"""Shared fixtures: a real Mosquitto for the session, and fresh ones for outage tests."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from gateway.broker import Mosquitto


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
