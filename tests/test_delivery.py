"""Delivery contract against a real Mosquitto: accepted means published, urgent first."""

from __future__ import annotations

from pathlib import Path

from gateway.broker import Mosquitto
from gateway.daemon import Gateway
from gateway.model import Priority
from tests.helpers import running, station_config, subscribe


async def test_accepted_input_reaches_subscriber_once_with_event_id_and_class(
    broker: Mosquitto, tmp_path: Path
) -> None:
    config = station_config(tmp_path, [broker.url])
    async with subscribe(broker.port, f"stationgw/v1/{config.station_id}/events/#") as sub:
        async with running(Gateway(config)) as gw:
            row = await gw.submit("help_point.press", "hp-1", Priority.P1, {"presses": 1})
            assert row.durable
            await sub.wait_for(lambda m: len(m) >= 1)
            await gw.publisher.connected.wait()
        topic, payload = sub.messages[0]
    assert topic == f"stationgw/v1/{config.station_id}/events/P1"
    assert payload["event_id"] == row.event_id
    assert payload["class"] == "P1"
    assert payload["station"] == config.station_id
    assert payload["kind"] == "help_point.press"
    assert len(sub.events()) == 1
