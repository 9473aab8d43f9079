"""A fault in any task: when the daemon dies of an unexpected exception, dispatch sees the
station "offline" (retained), whether the gateway said so or the broker fired its Will.

The failing task is injected through seams the daemon already has, never by patching: the
systemd notifier (the watchdog task), a handler on a subscribed topic (the session's message
task), and the health report's board counters (the session's health task).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable
from pathlib import Path
from typing import Any

import aiomqtt
import pytest

from gateway.daemon import Gateway
from gateway.sdnotify import Notifier
from gateway.station.status import status_path
from gateway.testing.daemon import running
from gateway.testing.mosquitto import Mosquitto
from gateway.uplink.client import GatewayClient
from tests.helpers import station_config, subscribe

WAIT = 20.0


class BugError(Exception):
    """The unexpected exception."""


class FailingNotifier(Notifier):
    """A systemd notifier with a watchdog whose ping raises once `armed` is set."""

    def __init__(self) -> None:
        super().__init__({"WATCHDOG_USEC": "200000"})
        self.armed = False

    def notify(self, **fields: str) -> bool:
        if self.armed and "WATCHDOG" in fields:
            raise BugError("watchdog ping failed")
        return False


async def _raising_handler(client: GatewayClient, message: aiomqtt.Message) -> None:
    raise BugError(f"handler failed on {message.topic}")


def _raising_counters() -> dict[str, dict[str, int]]:
    raise BugError("board counters failed")


Arm = Callable[[Gateway, FailingNotifier, Mosquitto], Any]


async def _arm_watchdog(gw: Gateway, notifier: FailingNotifier, broker: Mosquitto) -> None:
    notifier.armed = True


async def _arm_handler(gw: Gateway, notifier: FailingNotifier, broker: Mosquitto) -> None:
    async with aiomqtt.Client("127.0.0.1", broker.port) as client:
        await client.publish(f"test/{gw.config.station_id}/poke", b"{}", qos=1)


async def _arm_health(gw: Gateway, notifier: FailingNotifier, broker: Mosquitto) -> None:
    gw.health.board_counters = _raising_counters


@pytest.mark.parametrize(
    ("arm", "health_interval_s"),
    [
        pytest.param(_arm_watchdog, 60, id="daemon-task"),
        pytest.param(_arm_handler, 60, id="message-handler"),
        pytest.param(_arm_health, 0.1, id="health-loop"),
    ],
)
async def test_a_task_that_raises_leaves_the_station_offline_for_dispatch(
    tmp_path: Path, broker: Mosquitto, arm: Arm, health_interval_s: float
) -> None:
    config = station_config(tmp_path, [broker.url], mqtt={"health_interval_s": health_interval_s})
    status = f"stationgw/v1/{config.station_id}/status"
    notifier = FailingNotifier()
    async with Gateway(config, notifier=notifier) as gw:
        gw.publisher.subscriptions.append((f"test/{config.station_id}/poke", _raising_handler))
        task = asyncio.create_task(gw.run())
        try:
            async with subscribe(broker.port, status) as sub:
                await sub.wait_for(lambda m: bool(m) and m[-1][1]["state"] == "online", WAIT)
                await arm(gw, notifier, broker)
                async with asyncio.timeout(WAIT):
                    with pytest.raises(BaseExceptionGroup) as died:
                        await task
                assert died.group_contains(BugError)
                await sub.wait_for(lambda m: m[-1][1]["state"] == "offline", WAIT)
        finally:
            task.cancel()
            with contextlib.suppress(BaseException):
                await task
    # Whoever looks later (a console that starts now) sees the station offline.
    async with subscribe(broker.port, status) as late:
        messages = await late.wait_for(bool, WAIT)
        assert messages[-1][1]["state"] == "offline"
        assert messages[-1][1]["station"] == config.station_id


@pytest.mark.parametrize("blocked", ["tmp", "final"])
async def test_a_status_file_that_cannot_be_written_is_a_fault_not_a_crash(
    tmp_path: Path, broker: Mosquitto, blocked: str
) -> None:
    """Not essential work: the daemon keeps running, says so in health, and recovers."""
    config = station_config(tmp_path, [broker.url])
    path = status_path(config)
    # A folder where the file (or its temporary twin) must go: writing fails even as root.
    obstacle = path.with_suffix(".tmp") if blocked == "tmp" else path
    obstacle.mkdir(parents=True)
    async with running(Gateway(config)) as gw:
        async with asyncio.timeout(WAIT):
            while "status_unwritable" not in gw.health.faults:
                await asyncio.sleep(0.05)
        assert gw.health.counters["status_write_errors"] >= 1
        await asyncio.wait_for(gw.publisher.connected.wait(), WAIT)  # still serving
        obstacle.rmdir()
        gw.health.changed.set()  # rewritten at once on a change, else every few seconds
        async with asyncio.timeout(WAIT):
            while "status_unwritable" in gw.health.faults:
                await asyncio.sleep(0.05)
        assert path.is_file()
