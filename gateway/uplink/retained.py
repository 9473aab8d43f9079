"""The gateway's retained messages about itself: status, health and open alerts.

- **status** ("online" at connect, "offline" as the Will and at a clean stop);
- **health**, every `mqtt.health_interval_s`: outbox depth by class and state, the age of
  the oldest unsent row, faults, links and counters (`gateway.uplink.reports.HealthReport`);
- **open alerts**, a snapshot at connect and after each change, coalesced.

None of them waits for its PUBACK: a stalled broker cannot hold these loops. The publisher's
`publish_own` sends health under the PUBACK deadline; the open-alerts snapshot is derived
state, repeated by the next change or connect, so it is not watched.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import Callable, Sequence
from typing import Any, Literal, NoReturn, cast

from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode

from gateway import __version__
from gateway.config.models import StationConfig
from gateway.core.model import AlertRecord, PriorityName
from gateway.health import Health
from gateway.outbox.store import AsyncOutbox
from gateway.uplink.client import GatewayClient
from gateway.uplink.reports import (
    HealthReport,
    OutboxReport,
    OutboxState,
    StatusMessage,
    open_alerts_message,
)
from gateway.uplink.topics import Topics, json_payload

log = logging.getLogger(__name__)

#: Open-alerts snapshots go out at most this often; the newest state always follows a burst.
ALERTS_COALESCE_S = 0.2
#: Publish a retained message of our own under the PUBACK deadline: (client, topic,
#: payload, what it is for the log).
PublishOwn = Callable[[GatewayClient, str, bytes, str], None]


class Retained:
    """Builds and publishes the station's retained messages."""

    def __init__(
        self,
        config: StationConfig,
        outbox: AsyncOutbox,
        health: Health,
        properties: Properties | None,
        *,
        in_flight: Callable[[], int],
        open_alerts: Callable[[], Sequence[AlertRecord]] = tuple,
        alerts_changed: asyncio.Event | None = None,
    ) -> None:
        self.config = config
        self.outbox = outbox
        self.health = health
        self.topics = Topics(config.mqtt.topic_prefix, config.station_id)
        self._properties = properties
        self._in_flight = in_flight
        self._open_alerts = open_alerts  # the snapshot's source
        self._alerts_changed = alerts_changed or asyncio.Event()  # set: publish a new one

    def status(self, state: Literal["online", "offline"]) -> bytes:
        status: StatusMessage = {
            "state": state, "station": self.config.station_id, "version": __version__,
            "wall_time": round(time.time(), 3),
        }
        return json.dumps(status).encode()

    async def health_loop(self, client: GatewayClient, publish_own: PublishOwn) -> NoReturn:
        """The retained health report, every `mqtt.health_interval_s`; never waits for its
        PUBACK (the deadline watches it)."""
        while True:
            report = await self.health_report()
            publish_own(
                client, self.topics.health, json.dumps(report).encode(), "the health message"
            )
            await asyncio.sleep(self.config.mqtt.health_interval_s)

    async def alerts_loop(self, client: GatewayClient) -> NoReturn:
        """The retained open-alerts snapshot: at connect, then after each change, coalesced.

        Derived state, so not through the outbox: a lost one is repeated by the next change
        or connect. Cleared before the snapshot is built, so a change during a publish is
        never missed.
        """
        while True:
            self._alerts_changed.clear()
            await self._publish_alerts(client)
            await self._alerts_changed.wait()
            await asyncio.sleep(ALERTS_COALESCE_S)

    async def _publish_alerts(self, client: GatewayClient) -> None:
        snapshot = open_alerts_message(
            self.config.station_id, round(time.time(), 3), self._open_alerts()
        )

        def answered(rc: ReasonCode) -> None:
            if rc.is_failure:
                self.health.count("alerts_snapshot_refused")
                log.warning(
                    "open-alerts snapshot (%d alert(s)) refused by broker on %s: %s",
                    len(snapshot["alerts"]), self.topics.alerts, rc.getName(),
                )

        # Not awaited: a stalled broker never holds this loop (nor the deadline's count:
        # a derived snapshot is repeated by the next change or connect).
        client.publish_nowait(
            self.topics.alerts, json_payload(snapshot),
            lambda rc, _error: None if rc is None else answered(rc),
            retain=True, properties=self._properties,
        )

    async def health_report(self) -> dict[str, Any]:
        """The health message: depth by class, oldest unsent age, faults, links, counters.

        A `gateway.uplink.reports.HealthReport` (tests check it against the contract), as a dict to
        which the daemon adds its own keys for the status file.
        """
        depth = await self.outbox.depth()
        now = time.time()
        outbox: OutboxReport = {
            # Class names, then outbox states and "memory", as gateway.outbox.sqlite.read_depth
            # counts them (the tests check the report against the contract).
            "by_class": cast("dict[PriorityName, dict[OutboxState, int]]", depth.by_class),
            "rows": depth.rows,
            "bytes": depth.bytes,
            "memory_rows": depth.memory_rows,
            "in_flight": self._in_flight(),
            "oldest_unsent_age_s": (
                None if depth.oldest_unsent_wall_time is None
                else round(max(0.0, now - depth.oldest_unsent_wall_time), 3)
            ),
        }
        report: HealthReport = {
            "station": self.config.station_id,
            "version": __version__,
            "uptime_s": round(self.health.uptime_s, 1),
            "wall_time": round(now, 3),
            "outbox": outbox,
            "faults": [
                {"code": f.code, "message": f.message, "since": round(f.since, 3)}
                for f in self.health.faults.values()
            ],
            "links": dict(self.health.links),
            "counters": dict(self.health.counters),
            "boards": self.health.board_counters(),
        }
        return dict(report)
