"""The daemon: wires config, outbox, publisher and inputs together in one TaskGroup."""

from __future__ import annotations

import asyncio
import logging
from types import TracebackType
from typing import Any, NoReturn

from gateway.config import StationConfig
from gateway.health import Health
from gateway.model import Event, Priority
from gateway.mqtt import make_client
from gateway.outbox import Outbox, Row
from gateway.publisher import ClientFactory, Publisher
from gateway.store import AsyncOutbox
from gateway.topics import Topics

log = logging.getLogger(__name__)

MAINTENANCE_INTERVAL_S = 30.0


class Gateway:
    """One station gateway. Use as `async with Gateway(config) as gw: await gw.run()`."""

    def __init__(self, config: StationConfig, *, client_factory: ClientFactory = make_client):
        self.config = config
        self.health = Health()
        self.topics = Topics(config.mqtt.topic_prefix, config.station_id)
        outbox = Outbox(
            config.store.path,
            self.topics.render,
            max_rows=config.store.max_rows,
            max_bytes=config.store.max_bytes,
            ttl_s={Priority.parse(k): v for k, v in config.store.ttl_s.items()},
        )
        self.outbox = AsyncOutbox(outbox, self.health)
        self.publisher = Publisher(config, self.outbox, self.health, client_factory=client_factory)

    async def __aenter__(self) -> Gateway:
        await self.outbox.__aenter__()
        requeued = await self.outbox.requeue_refused()
        if requeued:
            log.info("retrying %d rows the broker refused before the restart", requeued)
        depth = await self.outbox.depth()
        log.info(
            "outbox open path=%s rows=%d by_class=%s",
            self.config.store.path, depth.rows, depth.by_class,
        )
        return self

    async def __aexit__(
        self, et: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.outbox.__aexit__(et, e, tb)

    async def submit(
        self,
        kind: str,
        source: str,
        default: Priority,
        body: dict[str, Any] | None = None,
    ) -> Row:
        """Classify an input by the config's rules and accept it into the outbox."""
        priority = self.config.priority_for(kind, source, default)
        return await self.outbox.accept(Event(kind, source, priority, body or {}))

    async def run(self) -> NoReturn:
        """Run until cancelled."""
        async with asyncio.TaskGroup() as tg:
            tg.create_task(self.publisher.run(), name="gateway.publisher")
            tg.create_task(self._maintain(), name="gateway.maintain")
        raise AssertionError("unreachable")  # pragma: no cover

    async def _maintain(self) -> NoReturn:
        while True:
            await asyncio.sleep(MAINTENANCE_INTERVAL_S)
            await self.outbox.maintain()
