"""The hub's MQTT side: every station's messages, committed, then acknowledged.

A persistent MQTT 5 session under a fixed client id (the broker keeps what arrives while the
hub is away, for `SESSION_S`), optionally a shared subscription (`$share/GROUP/...`) so that
several hubs over one database split the stations' traffic. Each batch is checked
(`dispatch.inbound.read`), committed (`HubStore.record`), and only then acknowledged to the
broker (paho's manual acknowledgement, in `dispatch.console.intake`): a hub that dies before
the commit gets the batch again. A database that fails is retried with capped backoff, the
batch still unacknowledged, so the broker holds the rest meanwhile.
"""

from __future__ import annotations

import asyncio
import logging
from collections import Counter
from collections.abc import Callable
from typing import NoReturn

import paho.mqtt.client as paho
from sqlalchemy.exc import SQLAlchemyError

from dispatch.console.intake import Intake
from dispatch.console.link import Link
from dispatch.console.options import PREFIX, Security
from dispatch.hub.commands import Commander
from dispatch.hub.store import HubStore
from dispatch.inbound import Dropped, Inbound, read
from firmware_bridge.backoff import backoff_delay

log = logging.getLogger(__name__)

CHANNELS = ("events/#", "status", "health", "alerts", "replies")
RETRY_MAX_S = 30.0
#: What a commit must have done for the console (and the CAP feed) to look again: an
#: alert's event, a station's status or health.
SHOWN = ("alert_events", "status", "health")


def hub_topics(prefix: str = PREFIX, share: str | None = None) -> list[str]:
    """What the hub subscribes to: every station's channels, shared when `share` is set."""
    topics = [f"{prefix}/+/{channel}" for channel in CHANNELS]
    return [f"$share/{share}/{t}" for t in topics] if share else topics


async def run_hub(
    store: HubStore, host: str, port: int, *, prefix: str = PREFIX,
    client_id: str = "stationgw-hub", share: str | None = None,
    security: Security | None = None, on_state: Callable[[str], None] = log.info,
    commander: Commander | None = None, changed: asyncio.Event | None = None,
    on_commit: Callable[[], None] | None = None,
) -> NoReturn:
    """Record every station's messages forever (cancel to stop). `commander` gets the
    stations' replies and the link to send on; `changed` is set, and `on_commit` called,
    after each commit that changed what the console shows (`SHOWN`)."""
    link = Link(host, port, hub_topics(prefix, share), client_id=client_id,
                on_state=on_state, security=security)
    if commander is not None:
        commander.link = link

    async def handle(intake: Intake, batch: list[paho.MQTTMessage]) -> None:
        checked = [read(m.topic, m.payload, prefix) for m in batch]
        done = await _record(store, checked, on_state)
        intake.ack(batch)  # only now: committed
        if commander is not None:
            for item, message in zip(checked, batch, strict=True):
                if isinstance(item, Inbound) and item.channel == "reply":
                    commander.on_reply(item, bytes(message.payload))
        if any(done.get(what) for what in SHOWN):  # telemetry alone changes nothing shown
            if changed is not None:
                changed.set()
            if on_commit is not None:
                on_commit()
        log.debug("batch of %d: %s", len(batch), dict(done))

    await link.run(handle)


async def _record(
    store: HubStore, checked: list[Inbound | Dropped], on_state: Callable[[str], None]
) -> Counter[str]:
    """Commit one batch, retrying with capped backoff while the database fails: the batch
    stays unacknowledged meanwhile, so the broker keeps it."""
    attempt = 0
    while True:
        try:
            return await asyncio.to_thread(store.record, checked)
        except SQLAlchemyError as exc:
            delay = backoff_delay(attempt, 0.5, RETRY_MAX_S)
            attempt += 1
            on_state(f"database write failed ({exc.__class__.__name__}: {str(exc)[:200]}); "
                     f"{len(checked)} message(s) kept unacknowledged, retrying in {delay:.1f}s")
            await asyncio.sleep(delay)
