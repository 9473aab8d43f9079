"""Dead links and twins, with a TCP fault proxy between the gateway and real Mosquitto brokers.

The proxy (gateway.testing.faultproxy) black-holes the path, or drops the broker's CONNACK or
PUBACKs while everything else flows. Two brokers stand for the primary and the standby. The
keepalive is 60 s in these tests, so only the PUBACK deadline (1 s here) can account for a
failover within the tests' waits; the waits are generous and never race the deadline.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest

from gateway.config.models import StationConfig
from gateway.core.model import Priority
from gateway.daemon import Gateway
from gateway.station.status import EXIT_FAULTS, render, status_path
from gateway.testing.daemon import running
from gateway.testing.faultproxy import FaultProxy, split_packets
from gateway.testing.mosquitto import Mosquitto
from tests.helpers import station_config, subscribe

DEADLINE = 1.0
KEEPALIVE = 60  # far beyond every wait below: keepalive never explains a failover here
WAIT = 30.0


@pytest.fixture
def standby() -> Iterator[Mosquitto]:
    with Mosquitto() as mosquitto:
        yield mosquitto


@pytest.fixture
async def proxy(broker: Mosquitto) -> AsyncIterator[FaultProxy]:
    async with FaultProxy(broker.port) as fault_proxy:
        yield fault_proxy


class FaultLog:
    """Every fault a gateway raises, with its message, in order."""

    def __init__(self, gw: Gateway) -> None:
        self.raised: list[tuple[str, str]] = []
        gw.health.listeners.append(self._on_fault)

    def _on_fault(self, code: str, raised: bool, message: str) -> None:
        if raised:
            self.raised.append((code, message))

    def codes(self) -> list[str]:
        return [code for code, _ in self.raised]


def dead_link_config(tmp_path: Path, urls: list[str], **mqtt: Any) -> StationConfig:
    return station_config(
        tmp_path, urls,
        mqtt={"puback_deadline_s": DEADLINE, "keepalive_s": KEEPALIVE, **mqtt},
    )


async def until(predicate: Any, timeout: float = WAIT) -> None:
    async with asyncio.timeout(timeout):
        while not predicate():
            await asyncio.sleep(0.02)


def test_split_packets_cuts_whole_packets_and_keeps_a_partial_one() -> None:
    # PUBACK (4 bytes), a PUBLISH with a two-byte Remaining Length (130), then half a CONNACK.
    puback = bytes([0x40, 0x02, 0x00, 0x01])
    publish = bytes([0x30, 0x82, 0x01]) + b"x" * 130
    buffer = bytearray(puback + publish + bytes([0x20, 0x02, 0x00]))
    assert split_packets(buffer) == [puback, publish]
    assert buffer == bytearray([0x20, 0x02, 0x00])
    with pytest.raises(ValueError, match="Remaining Length"):
        split_packets(bytearray([0x30, 0xFF, 0xFF, 0xFF, 0xFF, 0x01]))


@pytest.mark.parametrize("mode", ["blackhole", "drop_puback"])
@pytest.mark.parametrize("priority", [Priority.P0, Priority.P1])
async def test_a_stalled_primary_fails_over_within_the_puback_deadline(
    tmp_path: Path, broker: Mosquitto, standby: Mosquitto, proxy: FaultProxy,
    mode: str, priority: Priority,
) -> None:
    config = dead_link_config(tmp_path, [proxy.url, standby.url])
    topic = f"stationgw/v1/{config.station_id}/events/#"
    async with subscribe(standby.port, topic) as on_standby, running(Gateway(config)) as gw:
        faults = FaultLog(gw)
        await asyncio.wait_for(gw.publisher.connected.wait(), WAIT)
        assert gw.health.links[f"broker:{proxy.url}"] == "up"
        # The connect's own health message is out and confirmed first, so that what the
        # fault names is the row.
        health = f"stationgw/v1/{config.station_id}/health"
        async with subscribe(broker.port, health) as on_primary:
            await on_primary.wait_for(bool, WAIT)
        await until(lambda: not gw.publisher._own_sent)
        proxy.mode = mode  # type: ignore[assignment]
        started = time.monotonic()
        row = await gw.submit("help_point.press", "hp-1", priority, {"alert_id": "a-1"})
        await on_standby.wait_for(
            lambda m: any(e["event_id"] == row.event_id for e in on_standby.events()), WAIT
        )
        took = time.monotonic() - started
        # The keepalive (60 s) cannot have noticed it; only the deadline can.
        assert took < KEEPALIVE / 2
        stalled = [m for code, m in faults.raised if code == "broker_stalled"]
        assert stalled, faults.raised
        assert proxy.url in stalled[0]
        assert f"{priority.name} event {row.event_id}" in stalled[0]
        assert gw.health.counters["broker_stalls"] >= 1
        assert "client_id_in_use" not in faults.codes()
        # Confirmed on a healthy session: the fault clears, the standby link is up.
        await until(lambda: "broker_stalled" not in gw.health.faults)
        assert gw.health.links[f"broker:{standby.url}"] == "up"
        assert gw.health.links[f"broker:{proxy.url}"].startswith("down (no PUBACK within")


async def test_no_connack_fails_over_within_the_deadline(
    tmp_path: Path, standby: Mosquitto, proxy: FaultProxy
) -> None:
    proxy.mode = "drop_connack"
    config = dead_link_config(tmp_path, [proxy.url, standby.url])
    topic = f"stationgw/v1/{config.station_id}/events/#"
    async with subscribe(standby.port, topic) as on_standby, running(Gateway(config)) as gw:
        started = time.monotonic()
        row = await gw.submit("help_point.press", "hp-1", Priority.P1, {"alert_id": "a-1"})
        await on_standby.wait_for(
            lambda m: any(e["event_id"] == row.event_id for e in on_standby.events()), WAIT
        )
        # The client library's own CONNACK wait is 10 s; the 1 s deadline bounds it instead
        # (a wide margin: this only fails if connecting itself took seconds).
        assert time.monotonic() - started < 8
        assert proxy.dropped.get(2, 0) >= 1  # the proxy did eat a CONNACK
        assert gw.health.links[f"broker:{proxy.url}"].startswith("down (")


async def test_the_health_loop_never_waits_for_its_puback(
    tmp_path: Path, broker: Mosquitto, proxy: FaultProxy
) -> None:
    # The deadline is long here, so the session stays up while no PUBACK comes back: the
    # health reports must keep going out all the same.
    config = dead_link_config(
        tmp_path, [proxy.url], health_interval_s=0.1, puback_deadline_s=120
    )
    health = f"stationgw/v1/{config.station_id}/health"
    async with running(Gateway(config)) as gw:
        await asyncio.wait_for(gw.publisher.connected.wait(), WAIT)
        proxy.mode = "drop_puback"
        async with subscribe(broker.port, health) as sub:
            await sub.wait_for(lambda m: len(m) >= 10, WAIT)
        assert proxy.dropped[4] >= 10
        assert gw.publisher.connected.is_set()


async def test_status_shows_stuck_alerts_as_a_fault_until_they_are_confirmed(
    tmp_path: Path, broker: Mosquitto, proxy: FaultProxy
) -> None:
    # One broker, and it never confirms: `stationgw status` must not say "faults: none".
    config = dead_link_config(tmp_path, [proxy.url])
    events = f"stationgw/v1/{config.station_id}/events/#"
    async with subscribe(broker.port, events) as sub, running(Gateway(config)) as gw:
        await asyncio.wait_for(gw.publisher.connected.wait(), WAIT)
        proxy.mode = "drop_puback"
        row = await gw.submit("help_point.press", "hp-1", Priority.P1, {"alert_id": "a-1"})
        await until(lambda: "broker_stalled" in gw.health.faults)
        path = status_path(config)
        await until(lambda: path.exists() and "broker_stalled" in path.read_text())
        text, code = render(json.loads(path.read_text()), 0)
        assert code == EXIT_FAULTS
        assert "faults: none" not in text
        assert "broker_stalled" in text and proxy.url in text
        # The path heals: the row is confirmed, and the fault clears.
        proxy.mode = "pass"
        await until(lambda: "broker_stalled" not in gw.health.faults)
        await until(lambda: not gw.publisher.drain.in_flight and gw.health.counters["delivered_P1"])
        assert any(e["event_id"] == row.event_id for e in sub.events())


@pytest.mark.parametrize("protocol", ["5", "3.1.1"])
async def test_twins_with_one_station_id_raise_client_id_in_use(
    tmp_path: Path, broker: Mosquitto, protocol: str
) -> None:
    first = station_config(tmp_path / "a", [broker.url], mqtt={"protocol": protocol})
    twin = station_config(
        tmp_path / "b", [broker.url], station_id=first.station_id, mqtt={"protocol": protocol}
    )
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    async with running(Gateway(first)) as gw_a, running(Gateway(twin)) as gw_b:
        logs = FaultLog(gw_a), FaultLog(gw_b)
        gateways = gw_a, gw_b
        await until(lambda: any("client_id_in_use" in gw.health.faults for gw in gateways))
        clashing = next(gw for gw in gateways if "client_id_in_use" in gw.health.faults)
        message = clashing.health.faults["client_id_in_use"].message
        assert "another client" in message and first.client_id in message
        # Once the clash is named, a lost session is no longer called an unreachable broker
        # (Mosquitto 2.0 closes the socket without the 0x8E reason, so the first closes
        # cannot be told apart from a broker restart).
        # Each twin is judged from the moment it named the clash itself: the other may
        # name it later, and until then it cannot tell the closes from a restart either.
        await asyncio.sleep(3)
        for gw, log in zip(gateways, logs, strict=True):
            codes = log.codes()
            if "client_id_in_use" in codes:
                later = codes[codes.index("client_id_in_use"):]
                assert "broker_unreachable" not in later, log.raised
                assert "broker_unreachable" not in gw.health.faults


async def test_a_broker_saying_session_taken_over_raises_client_id_in_use_at_once(
    tmp_path: Path, proxy: FaultProxy
) -> None:
    # Brokers that send DISCONNECT 0x8E (Mosquitto 2.0 just closes): played by the proxy.
    config = dead_link_config(tmp_path, [proxy.url])
    async with running(Gateway(config)) as gw:
        faults = FaultLog(gw)
        await asyncio.wait_for(gw.publisher.connected.wait(), WAIT)
        proxy.disconnect_clients(0x8E)
        await until(lambda: "client_id_in_use" in gw.health.faults)
        message = gw.health.faults["client_id_in_use"].message
        assert "0x8E Session taken over" in message and config.client_id in message
        assert "broker_unreachable" not in faults.codes()
        assert gw.health.counters["session_taken_over"] == 1
