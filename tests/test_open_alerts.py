"""The retained open-alerts snapshot: what a dispatcher who connects late sees at once."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import aiomqtt

from dispatch.outbound import make_command, send_command
from gateway.daemon import Gateway
from gateway.testing.daemon import running
from gateway.testing.mosquitto import Mosquitto
from tests.helpers import Subscriber, lamp_becomes, lifecycle_config, raise_alert, subscribe


def listed(payload: dict[str, Any]) -> dict[str, str]:
    """alert_id -> state of every alert in a snapshot."""
    return {a["alert_id"]: a["state"] for a in payload["alerts"]}


def newest(sub: Subscriber) -> dict[str, str] | None:
    """The alerts of the newest snapshot received, if any."""
    return listed(sub.messages[-1][1]) if sub.messages else None


async def retained(port: int, topic: str) -> dict[str, Any]:
    """What a dispatcher connecting now is given first: the retained snapshot."""
    async with subscribe(port, topic) as late:
        await late.wait_for(lambda m: len(m) >= 1)
        return late.messages[0][1]


async def test_a_late_subscriber_sees_open_alerts_and_their_state(
    broker: Mosquitto, tmp_path: Path
) -> None:
    config = lifecycle_config(tmp_path, broker.url)
    sid = config.station_id
    root = f"stationgw/v1/{sid}"
    async with (
        aiomqtt.Client("127.0.0.1", broker.port,
                       protocol=aiomqtt.ProtocolVersion.V5) as dispatcher,
        subscribe(broker.port, [f"{root}/events/#"]) as sub,
        subscribe(broker.port, f"{root}/alerts") as snapshots,
    ):
        async with running(Gateway(config)) as gw:
            await snapshots.wait_for(lambda m: newest(snapshots) == {})  # none open at connect
            alert_id = await raise_alert(gw, sub, "hp-1")
            await snapshots.wait_for(lambda m: newest(snapshots) == {alert_id: "open"})
            snapshot = await retained(broker.port, f"{root}/alerts")
            assert snapshot["schema"] == "stationgw/alerts/1" and snapshot["station"] == sid
            (alert,) = snapshot["alerts"]
            assert (alert["alert_id"], alert["source"], alert["class"], alert["state"]) == (
                alert_id, "hp-1", "P1", "open")
            assert alert["requested_response"] == "crisis_team"
            press = next(e for e in sub.events() if e["kind"] == "help_point.press")
            assert alert["body"] == press["body"]  # as the events carry it

            await send_command(dispatcher, "stationgw/v1",
                               make_command(sid, alert_id, "acknowledge"))
            await snapshots.wait_for(lambda m: newest(snapshots) == {alert_id: "acknowledged"})
            assert listed(await retained(broker.port, f"{root}/alerts")) == {
                alert_id: "acknowledged"}

            await send_command(dispatcher, "stationgw/v1", make_command(sid, alert_id, "resolve"))
            await snapshots.wait_for(lambda m: newest(snapshots) == {})
            assert listed(await retained(broker.port, f"{root}/alerts")) == {}
            assert gw.health.counters["alerts_snapshot_refused"] == 0


async def test_a_restarted_gateway_lists_the_alerts_it_restored(
    broker: Mosquitto, tmp_path: Path
) -> None:
    config = lifecycle_config(tmp_path, broker.url)
    root = f"stationgw/v1/{config.station_id}"
    async with subscribe(broker.port, [f"{root}/events/#"]) as sub:
        async with (
            subscribe(broker.port, f"{root}/alerts") as snapshots,
            running(Gateway(config)) as gw,
        ):
            alert_id = await raise_alert(gw, sub, "hp-2")
            await snapshots.wait_for(lambda m: newest(snapshots) == {alert_id: "open"})
        # Forget the retained snapshot: only the restarted gateway can bring it back.
        async with aiomqtt.Client("127.0.0.1", broker.port,
                                  protocol=aiomqtt.ProtocolVersion.V5) as client:
            await client.publish(f"{root}/alerts", b"", qos=1, retain=True)
        async with running(Gateway(config)) as gw:
            await lamp_becomes(gw, "hp-2", "sent")
            snapshot = await retained(broker.port, f"{root}/alerts")
            assert listed(snapshot) == {alert_id: "open"}
            assert snapshot["alerts"][0]["body"]["help_point"] == "hp-2"


async def test_a_burst_of_changes_ends_in_the_newest_state(
    broker: Mosquitto, tmp_path: Path
) -> None:
    config = lifecycle_config(tmp_path, broker.url)
    root = f"stationgw/v1/{config.station_id}"
    async with (
        subscribe(broker.port, [f"{root}/events/#"]) as sub,
        subscribe(broker.port, f"{root}/alerts") as snapshots,
    ):
        async with running(Gateway(config)) as gw:
            ids = await asyncio.gather(*(raise_alert(gw, sub, hp) for hp in ("hp-1", "hp-2")))
            await snapshots.wait_for(
                lambda m: newest(snapshots) == dict.fromkeys(ids, "open"))
