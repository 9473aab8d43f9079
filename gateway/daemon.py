"""The daemon: wires config, outbox, publisher and inputs together in one TaskGroup."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from types import TracebackType
from typing import TYPE_CHECKING, Any, NoReturn

from gateway.config.models import StationConfig
from gateway.core.clock import SYSTEM, Clock
from gateway.core.model import Event, EventBody, OutboxDroppedBody, Priority
from gateway.health import Health
from gateway.inputs.gpio import is_mock, make_pin_factory
from gateway.outbox.files import kept_files
from gateway.outbox.sqlite import Outbox, Row
from gateway.outbox.store import AsyncOutbox
from gateway.sdnotify import Notifier
from gateway.station.helppoints import HelpPoints
from gateway.station.lifecycle import Lifecycle
from gateway.station.status import INTERVAL_S as STATUS_INTERVAL_S
from gateway.station.status import status_path, write_status
from gateway.uplink.client import make_client
from gateway.uplink.publisher import ClientFactory, Publisher
from gateway.uplink.topics import Topics

if TYPE_CHECKING:
    from gateway.inputs.boards import Boards

log = logging.getLogger(__name__)

MAINTENANCE_INTERVAL_S = 30.0


class Gateway:
    """One station gateway. Use as `async with Gateway(config) as gw: await gw.run()`."""

    def __init__(
        self,
        config: StationConfig,
        *,
        client_factory: ClientFactory = make_client,
        notifier: Notifier | None = None,
        clock: Clock = SYSTEM,
    ):
        self.config = config
        self.clock = clock
        self.notifier = notifier or Notifier()
        self.health = Health()
        self.topics = Topics(config.mqtt.topic_prefix, config.station_id)
        outbox = Outbox(
            config.store.path,
            self.topics.render,
            max_rows=config.store.max_rows,
            max_bytes=config.store.max_bytes,
            ttl_s={Priority.parse(k): v for k, v in config.store.ttl_s.items()},
            clock=clock,
        )
        self.outbox = AsyncOutbox(outbox, self.health)
        self.health.listeners.append(self.outbox.record_fault)
        self.lifecycle = Lifecycle(config, self.outbox, self.health, clock)
        self.publisher = Publisher(
            config, self.outbox, self.health, client_factory=client_factory,
            open_alerts=self.lifecycle.open_alerts, alerts_changed=self.lifecycle.alerts_changed,
            on_delivered=self._delivered,
        )
        self.outbox.listeners.append(self.publisher.offer)
        self.publisher.subscriptions.append(
            (self.topics.commands, self.lifecycle.on_message)
        )
        self.help_points: HelpPoints | None = None
        self.boards: Boards | None = None
        self._stack = contextlib.AsyncExitStack()

    async def __aenter__(self) -> Gateway:
        async with contextlib.AsyncExitStack() as stack:
            await stack.enter_async_context(self.outbox)
            self._store_faults()
            requeued = await self.outbox.requeue_refused()
            if requeued:
                log.info("retrying %d rows the broker refused before the restart", requeued)
            depth = await self.outbox.depth()
            log.info(
                "outbox open path=%s rows=%d by_class=%s",
                self.config.store.path, depth.rows, depth.by_class,
            )
            open_alerts = await self.lifecycle.restore()
            if self.config.sensors:
                from gateway.inputs.boards import Boards  # noqa: PLC0415 (serial stack: only if used)

                self.boards = Boards(self.config, self.accept, self.health)
                # Link quality goes out with every health report.
                self.health.board_counters = self.boards.counters
            if self.config.help_points:
                on_gpio = any(not hp.on_board for hp in self.config.help_points)
                factory = make_pin_factory(self.config) if on_gpio else None
                self.help_points = await stack.enter_async_context(
                    HelpPoints(
                        self.config, self.accept, self.lifecycle, self._help_point_fault,
                        pin_factory=factory,
                        correlate=self.boards.correlations if self.boards else None,
                        boards=self.boards,
                    )
                )
                self.lifecycle.book.listeners.append(self.help_points.on_alert_change)
                if self.boards is not None:
                    self.boards.correlation_listeners.append(self.help_points.on_correlation)
                    self.boards.offline_listeners.append(self.help_points.on_board_offline)
                for record in open_alerts:
                    self.help_points.restore(record)
                if on_gpio and is_mock(factory):
                    from gateway.inputs.simulate import SimulateServer  # noqa: PLC0415

                    await stack.enter_async_context(
                        SimulateServer(self.config, self.help_points.units)
                    )
            self._stack = stack.pop_all()
        self.notifier.notify(READY="1", STATUS=f"station {self.config.station_id} running")
        return self

    async def __aexit__(
        self, et: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.notifier.notify(STOPPING="1")
        await self._stack.__aexit__(et, e, tb)

    def _store_faults(self) -> None:
        """Raise the store's faults: files moved aside (now or at an earlier start) wait
        for a technician; no database at all means every row is in memory only."""
        opening = self.outbox.opening
        path = self.config.store.path
        if opening is not None and opening.memory_only is not None:
            self.health.raise_fault(
                "store_memory_only",
                f"no outbox database at {path} ({opening.memory_only}): alerts are held in "
                "memory and still published, but do not survive a restart",
            )
        kept = kept_files(path)
        if not kept:
            self.health.clear_fault("store_moved_aside")
            return
        why = f"{opening.damage}; " if opening is not None and opening.damage else ""
        runs = "in memory only" if opening and opening.memory_only else "on a fresh store"
        self.health.raise_fault(
            "store_moved_aside",
            f"outbox {path}: {why}moved aside and kept for a technician as "
            f"{', '.join(str(p) for p in kept)}; the gateway runs {runs} (move "
            "the kept files out of this folder once their rows are recovered)",
        )

    def _help_point_fault(self, code: str, message: str | None) -> None:
        if message is None:
            self.health.clear_fault(code)
        else:
            self.health.raise_fault(code, message)

    def _delivered(self, row: Row) -> None:
        """The broker confirmed a row. If it announced an alert, the alert book records
        that, and the help point's lamp shows it (rows read back after a restart name their
        alert too)."""
        if row.alert_id is None:
            return
        record = self.lifecycle.book.announced(row.alert_id, "sent")
        if record is not None and self.help_points is not None:
            self.help_points.show(record)

    async def accept(self, event: Event) -> Row:
        """Accept an already classified event into the outbox."""
        return await self.outbox.accept(event)

    async def submit(
        self,
        kind: str,
        source: str,
        default: Priority,
        body: EventBody | None = None,
    ) -> Row:
        """Classify an input by the config's rules and accept it into the outbox."""
        priority = self.config.priority_for(kind, source, default)
        return await self.outbox.accept(Event(kind, source, priority, body or {}))

    async def run(self) -> NoReturn:
        """Run until cancelled."""
        async with asyncio.TaskGroup() as tg:
            tg.create_task(self.publisher.run(), name="gateway.publisher")
            tg.create_task(self._maintain(), name="gateway.maintain")
            tg.create_task(self._write_status(), name="gateway.status")
            tg.create_task(self.lifecycle.escalate_forever(), name="gateway.escalation")
            if self.help_points is not None:
                tg.create_task(self.help_points.run(), name="gateway.help_points")
            if self.boards is not None:
                tg.create_task(self.boards.run(), name="gateway.boards")
            if self.notifier.watchdog_s is not None:
                tg.create_task(self._watchdog(self.notifier.watchdog_s), name="gateway.watchdog")
        raise AssertionError("unreachable")  # pragma: no cover

    async def _watchdog(self, interval_s: float) -> NoReturn:
        # Sent from the loop: if the loop hangs, the pings stop and systemd restarts us.
        while True:
            self.notifier.notify(WATCHDOG="1")
            await asyncio.sleep(interval_s / 2)

    async def status_report(self) -> dict[str, Any]:
        """The health report plus what only the station can see (lamps)."""
        report = await self.publisher.retained.health_report()
        report["state"] = "running"
        if self.help_points is not None:
            report["lamps"] = {hp: u.lamp.state for hp, u in self.help_points.units.items()}
        return report

    async def _write_status(self) -> NoReturn:
        path = status_path(self.config)
        failed: str | None = None
        try:
            while True:
                self.health.changed.clear()
                try:
                    await asyncio.to_thread(write_status, path, await self.status_report())
                except OSError as exc:
                    # Only a view for `stationgw status`: a full disk must not stop the
                    # station (the health message on the broker still carries everything).
                    if str(exc) != failed:
                        log.warning("cannot write the status file %s: %s", path, exc)
                    failed = str(exc)
                    self.health.count("status_write_errors")
                    self.health.raise_fault(
                        "status_unwritable",
                        f"cannot write the status file {path}: {exc.strerror or exc} "
                        "(`stationgw status` shows stale or no data; the health message on "
                        "the broker is complete)",
                    )
                else:
                    failed = None
                    self.health.clear_fault("status_unwritable")
                # Rewritten at once when a fault or link changes, else every few seconds.
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(STATUS_INTERVAL_S):
                        await self.health.changed.wait()
        finally:
            with contextlib.suppress(OSError):
                path.unlink()

    async def report_dropped(self) -> None:
        """Tell dispatch which rows the outbox evicted or expired since the last report, by
        seq, so that its audit can tell them from rows lost on the way (`outbox.dropped`)."""
        dropped = self.outbox.take_dropped()
        if dropped:
            body: OutboxDroppedBody = {
                "evicted": dropped.get("evicted", []), "expired": dropped.get("expired", []),
            }
            await self.submit("outbox.dropped", "gateway", Priority.P2, body)

    async def _maintain(self) -> NoReturn:
        while True:
            await asyncio.sleep(MAINTENANCE_INTERVAL_S)
            if "store_memory_only" in self.health.faults and await self.outbox.call(
                lambda box: box.recover()
            ):
                log.warning("outbox %s created: rows held in memory go to disk now",
                            self.config.store.path)
                self.health.clear_fault("store_memory_only")
            await self.outbox.maintain()
            await self.report_dropped()
            if "store_moved_aside" in self.health.faults and not kept_files(self.config.store.path):
                self.health.clear_fault("store_moved_aside")  # the technician took them
