"""Keeps the MQTT edge up: reconnects an `Intake` with capped, jittered backoff under the
same client id, and hands every batch to the console's handler."""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections.abc import Awaitable, Callable, Sequence
from typing import NoReturn

import paho.mqtt.client as paho

from dispatch.console.intake import EPHEMERAL_SESSION_S, Intake
from dispatch.console.options import Security
from dispatch.errors import ConsoleConnectionError
from firmware_bridge.backoff import backoff_delay

PERSISTENT_SESSION_S = 24 * 3600  # a named console's session outlives a day's absence
RECONNECT_INITIAL_S, RECONNECT_MAX_S = 1.0, 60.0


Handler = Callable[[Intake, list[paho.MQTTMessage]], Awaitable[None]]


class Link:
    """Keeps an `Intake` connected: reconnects with backoff under the same client id, so a
    persistent session carries on where it left off."""

    def __init__(
        self, host: str, port: int, topics: Sequence[str], *, client_id: str | None,
        on_state: Callable[[str], None], security: Security | None = None,
    ) -> None:
        self.security = security
        self.host, self.port, self.topics = host, port, list(topics)
        self.named = client_id is not None
        self.client_id = client_id or f"stationgw-console-{uuid.uuid4().hex[:12]}"
        self.on_state = on_state
        self.current: Intake | None = None

    async def run(self, handle: Handler) -> NoReturn:
        """Connect, hand every batch to `handle`, reconnect; forever (cancel to stop)."""
        attempt = 0
        had_session = False
        while True:
            intake = Intake(
                self.host, self.port, self.topics, client_id=self.client_id,
                session_expiry_s=PERSISTENT_SESSION_S if self.named else EPHEMERAL_SESSION_S,
                security=self.security,
            )
            try:
                async with intake:
                    self.current = intake
                    attempt = 0
                    session = "resumed session" if intake.session_present else "new session"
                    if had_session and not intake.session_present:
                        session += ": events published while disconnected were lost"
                    had_session = True
                    self.on_state(f"connected to {self.host}:{self.port} as {self.client_id} "
                                  f"({session}), subscribed to {', '.join(self.topics)}")
                    async with contextlib.aclosing(intake.batches()) as batches:
                        async for batch in batches:
                            await handle(intake, batch)
            except ConsoleConnectionError as exc:
                delay = backoff_delay(attempt, RECONNECT_INITIAL_S, RECONNECT_MAX_S)
                attempt += 1
                self.on_state(f"{exc}; reconnecting in {delay:.1f}s")
                self.current = None
                await asyncio.sleep(delay)
            finally:
                self.current = None
