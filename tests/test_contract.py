"""The message contract: docs/asyncapi.yaml is generated, valid AsyncAPI 3.0, and true to the wire.

Two validators that share no code with the gateway check it. The AsyncAPI CLI from npm
(pinned in tools/asyncapi) parses the document. check-jsonschema validates messages captured
from a real Mosquitto against the schemas taken from the checked-in document, not from the
gateway's models.
"""

from __future__ import annotations

import asyncio
import contextlib
import copy
import json
import os
import re
import shutil
import socket
import subprocess
import sys
import uuid
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiomqtt
import pytest
import pytest_asyncio
from paho.mqtt.subscribeoptions import SubscribeOptions

from dispatch.outbound import make_command, send_command
from gateway.config.models import BrokerEndpoint, StationConfig
from gateway.contract.asyncapi import (
    EventMessage,
    asyncapi_document,
    check_draft_07,
    render,
    schemas_for_validation,
)
from gateway.contract.spec import adapter
from gateway.core.commands import Command, Reply
from gateway.daemon import Gateway
from gateway.testing.daemon import running
from gateway.testing.mosquitto import Mosquitto
from gateway.uplink.client import GatewayClient, make_client
from gateway.uplink.reports import HealthReport, OpenAlertsMessage, StatusMessage
from gateway.uplink.topics import Topics
from tests.helpers import HELP_POINTS, station_config, tap, unit

ROOT = Path(__file__).resolve().parents[1]
DOC = ROOT / "docs" / "asyncapi.yaml"
TOOLS = ROOT / "tools" / "asyncapi"
ASYNCAPI_CLI = TOOLS / "node_modules" / ".bin" / "asyncapi"
INSTALL_CLI = "run `npm ci --ignore-scripts --prefix tools/asyncapi` (./dev test does it)"
PREFIX = "stationgw/v1"


def published() -> dict[str, Any]:
    """The checked-in document (JSON is YAML 1.2, so json reads it)."""
    document: dict[str, Any] = json.loads(DOC.read_text(encoding="utf-8"))
    return document


# ---------------------------------------------------------------------- the document itself


def test_checked_in_document_matches_the_models() -> None:
    assert DOC.read_text(encoding="utf-8") == render(asyncapi_document()), (
        "docs/asyncapi.yaml is stale; regenerate it with "
        "`python -m gateway.contract > docs/asyncapi.yaml`"
    )


def test_python_m_gateway_contract_prints_the_document() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "gateway.contract"], capture_output=True, check=True, cwd=ROOT
    )
    assert result.stdout.decode() == DOC.read_text(encoding="utf-8")


def test_document_describes_the_topic_tree_dispatch_subscribes_to() -> None:
    doc = published()
    assert doc["asyncapi"] == "3.0.0"
    addresses = {name: channel["address"] for name, channel in doc["channels"].items()}
    assert addresses == {
        "events": "stationgw/v1/{station}/events/{priority}",
        "status": "stationgw/v1/{station}/status",
        "health": "stationgw/v1/{station}/health",
        "alerts": "stationgw/v1/{station}/alerts",
        "commands": "stationgw/v1/{station}/commands",
        "replies": "stationgw/v1/{station}/replies",
    }
    assert doc["channels"]["events"]["parameters"]["priority"]["enum"] == ["P0", "P1", "P2", "P3"]
    server = doc["servers"]["dispatch"]
    assert (server["protocol"], server["protocolVersion"]) == ("mqtt", "5")


def test_contract_refuses_schema_keywords_asyncapi_lacks() -> None:
    check_draft_07({"type": "array", "items": {"type": "string"}, "x-note": 1}, "fine")
    with pytest.raises(ValueError, match=r"^a\.properties\.pair: .*'prefixItems'"):
        check_draft_07({"properties": {"pair": {"prefixItems": [{"type": "number"}]}}}, "a")


# ---------------------------------------------------------------------- the AsyncAPI CLI


def asyncapi_cli() -> Path:
    """The pinned CLI, or fail (never skip) with how to install it."""
    if not ASYNCAPI_CLI.exists():
        pytest.fail(f"the AsyncAPI CLI is not installed at {ASYNCAPI_CLI}: {INSTALL_CLI}")
    if shutil.which("node") is None:
        pytest.fail(f"node is not on PATH (Debian: apt-get install nodejs npm), then {INSTALL_CLI}")
    lock = json.loads((TOOLS / "package-lock.json").read_text(encoding="utf-8"))
    pinned = lock["packages"]["node_modules/@asyncapi/cli"]["version"]
    installed_pkg = TOOLS / "node_modules" / "@asyncapi" / "cli" / "package.json"
    installed = json.loads(installed_pkg.read_text(encoding="utf-8"))["version"]
    if installed != pinned:
        pytest.fail(
            f"@asyncapi/cli {installed} is installed, the lock pins {pinned}: {INSTALL_CLI}"
        )
    return ASYNCAPI_CLI


def cli_env(home: Path) -> dict[str, str]:
    """An environment in which the CLI sends no metrics and checks for no update."""
    home.mkdir()
    analytics = home / ".asyncapi-analytics"
    # What `asyncapi config analytics --disable` writes (and no first-run notice).
    analytics.write_text(json.dumps(
        {"analyticsEnabled": "false", "infoMessageShown": "true", "userID": "stationgw-tests"}
    ))
    return {
        **os.environ,
        "HOME": str(home),  # any cache or config the CLI writes stays in tmp_path
        "ASYNCAPI_METRICS_CONFIG_PATH": str(analytics),
        "ASYNCAPI_SKIP_NEW_VERSION_CHECK": "true",  # oclif's update check polls npm
        "NO_COLOR": "1",
    }


def test_asyncapi_cli_accepts_the_document_and_rejects_a_broken_copy(tmp_path: Path) -> None:
    cli = asyncapi_cli()
    broken = copy.deepcopy(published())
    broken["operations"]["sendEvent"]["action"] = "publish"  # AsyncAPI 2 wording
    del broken["channels"]["events"]["parameters"]["priority"]  # address still has {priority}
    broken_path = tmp_path / "broken.yaml"
    broken_path.write_text(json.dumps(broken, indent=2))
    env = cli_env(tmp_path / "home")
    runs = {}
    for name, path in (("published", DOC), ("broken", broken_path)):
        diagnostics = tmp_path / f"{name}.diagnostics.json"
        command = [str(cli), "validate", str(path), "--fail-severity", "warn",
                   "--diagnostics-format", "json", "--save-output", str(diagnostics)]
        # Both at once: each run spends most of its ~4 s loading the CLI.
        runs[name] = (subprocess.Popen(command, stdout=subprocess.PIPE,
                                       stderr=subprocess.STDOUT, env=env, cwd=tmp_path),
                      diagnostics)
    outcomes = {}
    for name, (process, diagnostics) in runs.items():
        stdout, _ = process.communicate(timeout=120)
        outcomes[name] = (process.returncode, stdout.decode(errors="replace"), diagnostics)

    code, output, _ = outcomes["published"]
    assert code == 0, f"asyncapi validate docs/asyncapi.yaml failed:\n{output}"
    code, output, diagnostics = outcomes["broken"]
    assert code != 0, f"the CLI accepted a broken document:\n{output}"
    errors = {".".join(map(str, d["path"])) for d in json.loads(diagnostics.read_text())
              if d["severity"] == 0}
    assert {"operations.sendEvent.action", "channels.events.parameters"} <= errors, output


# ---------------------------------------------------------------------- capture from the broker


@dataclass(frozen=True)
class Captured:
    """One message as the broker delivered it."""

    topic: str
    payload: bytes
    qos: int
    retain: bool
    content_type: str | None
    format_indicator: int | None

    def json(self) -> Any:
        """The payload parsed, or None if it is not JSON."""
        try:
            return json.loads(self.payload)
        except ValueError:
            return None


@dataclass
class Recorder:
    """Every message under one topic filter, raw, with its retain flag as published."""

    client: aiomqtt.Client
    seen: list[Captured] = field(default_factory=list)
    changed: asyncio.Event = field(default_factory=asyncio.Event)

    async def collect(self) -> None:
        async for message in self.client.messages:
            assert isinstance(message.payload, bytes)
            props = message.properties
            self.seen.append(Captured(
                str(message.topic), message.payload, message.qos, message.retain,
                getattr(props, "ContentType", None), getattr(props, "PayloadFormatIndicator", None),
            ))
            self.changed.set()

    async def wait_for(self, predicate: Callable[[], bool], timeout: float = 20) -> None:
        async with asyncio.timeout(timeout):
            while not predicate():
                self.changed.clear()
                await self.changed.wait()

    def on(self, suffix: str) -> list[Any]:
        """JSON payloads of topics ending with `suffix`, in arrival order."""
        return [c.json() for c in self.seen if c.topic.endswith(suffix)]

    def events(self) -> list[dict[str, Any]]:
        return [c.json() for c in self.seen if "/events/" in c.topic]

    def kinds(self) -> list[str]:
        return [e["kind"] for e in self.events()]


@contextlib.asynccontextmanager
async def recording(port: int, topic: str) -> AsyncIterator[Recorder]:
    async with aiomqtt.Client("127.0.0.1", port, protocol=aiomqtt.ProtocolVersion.V5) as client:
        # QoS 2 so each message arrives at the QoS it was published with; retainAsPublished
        # so a live subscriber still sees whether it was retained.
        await client.subscribe(topic, options=SubscribeOptions(qos=2, retainAsPublished=True))
        recorder = Recorder(client)
        task = asyncio.create_task(recorder.collect())
        try:
            yield recorder
        finally:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError, aiomqtt.MqttError):
                await task


@dataclass(frozen=True)
class Capture:
    """What a gateway and a dispatcher put on a real broker, and the bad commands among it."""

    station: str
    messages: list[Captured]
    rejected_commands: list[bytes]  # sent on purpose; the gateway refused them


def contract_config(tmp_path: Path, url: str) -> StationConfig:
    return station_config(
        tmp_path, [url], gpio_pin_factory="mock", help_points=HELP_POINTS,
        press={"repeat_window_s": 5, "stuck_after_s": 1.0},
        dispatch={"ack_timeout_s": 1.0, "command_max_age_s": 60},
        mqtt={"health_interval_s": 0.5},
    )


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def capture(broker: Mosquitto, tmp_path_factory: pytest.TempPathFactory) -> Capture:
    """Drive a gateway through every message it can send, and capture them from the broker."""
    config = contract_config(tmp_path_factory.mktemp("contract"), broker.url)
    sid = config.station_id
    clients: list[GatewayClient] = []

    def client_factory(
        config: StationConfig, endpoint: BrokerEndpoint, will: aiomqtt.Will
    ) -> GatewayClient:
        client = make_client(config, endpoint, will)
        clients.append(client)
        return client

    commands = Topics(PREFIX, sid).commands
    async with (
        recording(broker.port, f"{PREFIX}/{sid}/#") as rec,
        aiomqtt.Client("127.0.0.1", broker.port,
                       protocol=aiomqtt.ProtocolVersion.V5) as dispatcher,
    ):
        async with running(Gateway(config, client_factory=client_factory)) as gw:
            await asyncio.wait_for(gw.publisher.connected.wait(), 10)
            # hp-2 held down: press (P1), hold (P0), then stuck (P2); released: unstuck (P3).
            unit(gw, "hp-2").button.pin.drive_low()
            # hp-1: a press and a repeat that joins it; unacknowledged, it escalates.
            await tap(gw, "hp-1")
            await tap(gw, "hp-1")
            await rec.wait_for(lambda: {"help_point.repeat", "help_point.stuck",
                                        "alert.escalated"} <= set(rec.kinds()))
            unit(gw, "hp-2").button.pin.drive_high()
            alert_id = next(e["body"]["alert_id"] for e in rec.events()
                            if e["source"] == "hp-1")
            ack = make_command(sid, alert_id, "acknowledge")
            for command in (
                ack,
                make_command(sid, alert_id, "assign", team="co_response", eta_s=300),
                make_command(sid, alert_id, "resolve"),
                ack,  # a replay: rejected
            ):
                await send_command(dispatcher, PREFIX, command)
            bad = [
                json.dumps({**adapter(Command).dump_python(ack, mode="json", by_alias=True),
                            "command_id": uuid.uuid4().hex, "action": "explode"}).encode(),
                b"[1, 2, 3]",  # rejected with command_id null
            ]
            for payload in bad:
                await dispatcher.publish(commands, payload, qos=1)
            await rec.wait_for(lambda: len(rec.on("/replies")) >= 6
                               and "help_point.unstuck" in rec.kinds()
                               and "alert.resolved" in rec.kinds())
            # The open-alerts snapshot follows: hp-2's request still open, hp-1's gone.
            await rec.wait_for(lambda: bool(rec.on("/alerts")) and [
                a["source"] for a in rec.on("/alerts")[-1]["alerts"]] == ["hp-2"])
            # The Last Will: drop the TCP connection without DISCONNECT; the gateway reconnects.
            sock = clients[-1]._client.socket()
            assert isinstance(sock, socket.socket)
            sock.shutdown(socket.SHUT_RDWR)
            await rec.wait_for(lambda: [s["state"] for s in rec.on("/status")][:3]
                               == ["online", "offline", "online"])
        # A clean shutdown says offline too.
        await rec.wait_for(lambda: len(rec.on("/status")) >= 4)
    return Capture(sid, list(rec.seen), bad)


def resolve(doc: dict[str, Any], value: dict[str, Any]) -> dict[str, Any]:
    """Follow a local `$ref` of the document, if `value` is one."""
    if "$ref" not in value:
        return value
    found: dict[str, Any] = doc
    for part in value["$ref"].removeprefix("#/").split("/"):
        found = found[part]
    return found


def channel_patterns(doc: dict[str, Any]) -> dict[str, re.Pattern[str]]:
    """Channel name -> regex of its address, parameters as named groups (enums as given)."""
    patterns = {}
    for name, channel in doc["channels"].items():
        regex = re.escape(channel["address"])
        for param, spec in channel.get("parameters", {}).items():
            values = "|".join(map(re.escape, resolve(doc, spec).get("enum", []))) or "[^/]+"
            regex = regex.replace(re.escape(f"{{{param}}}"), f"(?P<{param}>{values})")
        patterns[name] = re.compile(f"^{regex}$")
    return patterns


def channel_of(doc: dict[str, Any], topic: str) -> tuple[str, dict[str, str]]:
    for name, pattern in channel_patterns(doc).items():
        found = pattern.match(topic)
        if found:
            return name, found.groupdict()
    raise AssertionError(f"{topic} is not a channel of docs/asyncapi.yaml")


def message_name(doc: dict[str, Any], channel: str) -> str:
    (ref,) = [m["$ref"] for m in doc["channels"][channel]["messages"].values()]
    return str(ref.rsplit("/", 1)[1])


def check_jsonschema() -> str:
    venv_bin = str(Path(sys.executable).parent)
    found = shutil.which("check-jsonschema", path=venv_bin) or shutil.which("check-jsonschema")
    if found is None:
        pytest.fail("check-jsonschema is not installed: pip install -e '.[test]' "
                    "(./dev test does it)")
    return found


def validate(schema: Path, files: list[Path]) -> dict[str, Any]:
    """check-jsonschema's JSON verdict on `files`."""
    result = subprocess.run(
        [check_jsonschema(), "--output-format", "json", "--schemafile", str(schema),
         *map(str, files)],
        capture_output=True, check=False, timeout=60,
    )
    verdict: dict[str, Any] = json.loads(result.stdout)
    assert (result.returncode == 0) == (verdict["status"] == "ok"), result
    return verdict


def write_schemas(doc: dict[str, Any], where: Path) -> dict[str, Path]:
    """Each message's standalone schema, taken from the checked-in document."""
    where.mkdir()
    paths = {}
    for name, schema in schemas_for_validation(doc).items():
        paths[name] = where / f"{name}.schema.json"
        paths[name].write_text(json.dumps(schema, indent=2))
    return paths


# ---------------------------------------------------------------------- captured messages


def test_captured_messages_match_the_published_schemas(
    capture: Capture, tmp_path: Path
) -> None:
    doc = published()
    schemas = write_schemas(doc, tmp_path / "schemas")
    files: dict[str, list[Path]] = {name: [] for name in doc["channels"]}
    for n, message in enumerate(capture.messages):
        if message.payload in capture.rejected_commands:
            continue  # negative controls, below
        channel, _ = channel_of(doc, message.topic)  # nothing published off the contract
        path = tmp_path / "captured" / channel / f"{n:04d}.json"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(message.payload)
        files[channel].append(path)
    for channel, paths in files.items():
        name = message_name(doc, channel)
        examples = doc["components"]["messages"][name].get("examples", [])
        for i, example in enumerate(examples):
            paths.append(tmp_path / "examples" / f"{name}-{i}.json")
            paths[-1].parent.mkdir(parents=True, exist_ok=True)
            paths[-1].write_text(json.dumps(example["payload"]))
        assert len(paths) > len(examples), f"no message captured on channel {channel}"
        verdict = validate(schemas[name], paths)
        assert verdict["status"] == "ok", f"{channel}: {json.dumps(verdict, indent=2)}"

    events = [m.json() for m in capture.messages if "/events/" in m.topic]
    assert {e["class"] for e in events} == {"P0", "P1", "P2", "P3"}  # every {priority}
    assert {
        "help_point.press", "help_point.repeat", "help_point.hold", "help_point.stuck",
        "help_point.unstuck", "alert.escalated", "alert.acknowledged", "alert.assigned",
        "alert.resolved",
    } <= {e["kind"] for e in events}
    replies = [m.json() for m in capture.messages if m.topic.endswith("/replies")]
    assert {r["status"] for r in replies} == {"applied", "rejected"}
    assert None in {r["command_id"] for r in replies}
    health = [m.json() for m in capture.messages if m.topic.endswith("/health")]
    assert any(h["faults"] for h in health)  # the stuck button, with its message
    snapshots = [m.json() for m in capture.messages if m.topic.endswith("/alerts")]
    listed = {(a["source"], a["state"]) for s in snapshots for a in s["alerts"]}
    assert {("hp-1", "open"), ("hp-2", "open")} <= listed


def test_captured_messages_are_valid_to_the_types_the_document_comes_from(
    capture: Capture,
) -> None:
    # The daemon writes its payloads as plain JSON, without pydantic: the types that
    # docs/asyncapi.yaml is generated from take every one, strictly (JSON types as they are).
    spec_types: dict[str, Any] = {
        "events": EventMessage, "status": StatusMessage, "health": HealthReport,
        "alerts": OpenAlertsMessage, "replies": Reply,
    }
    doc = published()
    seen = set()
    for message in capture.messages:
        channel, _ = channel_of(doc, message.topic)
        if channel == "commands":
            continue  # dispatch's, not the gateway's
        adapter(spec_types[channel]).validate_json(message.payload, strict=True)
        seen.add(channel)
    assert seen == set(spec_types)


def test_captured_messages_match_their_topics_and_bindings(capture: Capture) -> None:
    doc = published()
    # The gateway's one operation on each channel: send, or receive for commands.
    operations = {op["channel"]["$ref"].rsplit("/", 1)[1]: op
                  for op in doc["operations"].values()}
    assert set(operations) == set(doc["channels"])
    for message in capture.messages:
        channel, params = channel_of(doc, message.topic)
        payload = message.json()
        if not isinstance(payload, dict):
            assert message.payload in capture.rejected_commands
            continue
        where = f"{message.topic} {payload}"
        assert payload["station"] == params["station"] == capture.station, where
        if channel == "events":
            assert payload["class"] == params["priority"], where
        binding = operations[channel]["bindings"]["mqtt"]
        assert (message.qos, message.retain) == (binding["qos"], binding["retain"]), where
        sent_as = doc["components"]["messages"][message_name(doc, channel)].get("bindings")
        if sent_as is not None:  # the gateway's messages carry MQTT 5 content properties
            assert (message.content_type, message.format_indicator) == (
                sent_as["mqtt"]["contentType"], sent_as["mqtt"]["payloadFormatIndicator"]
            ), where


def test_last_will_and_clean_shutdown_both_say_offline(capture: Capture) -> None:
    statuses = [m for m in capture.messages if m.topic.endswith("/status")]
    assert [s.json()["state"] for s in statuses] == ["online", "offline", "online", "offline"]
    assert all(s.retain for s in statuses)


def test_schemas_reject_wrong_messages(capture: Capture, tmp_path: Path) -> None:
    doc = published()
    schemas = write_schemas(doc, tmp_path / "schemas")

    def first(channel: str, **match: Any) -> dict[str, Any]:
        for message in capture.messages:
            payload = message.json()
            if (channel_of(doc, message.topic)[0] == channel and isinstance(payload, dict)
                    and all(payload.get(k) == v for k, v in match.items())):
                return copy.deepcopy(payload)
        raise AssertionError(f"nothing captured on {channel} with {match}")

    def without(payload: dict[str, Any], key: str) -> dict[str, Any]:
        del payload[key]
        return payload

    def body(payload: dict[str, Any], **changes: Any) -> dict[str, Any]:
        payload["body"].update(changes)
        return payload

    def open_alert(body: dict[str, Any] | None = None, **changes: Any) -> dict[str, Any]:
        snapshot: dict[str, Any] = next(copy.deepcopy(m.json()) for m in capture.messages
                                        if m.topic.endswith("/alerts") and m.json()["alerts"])
        snapshot["alerts"][0].update(changes)
        snapshot["alerts"][0]["body"].update(body or {})
        return snapshot

    press = first("events", kind="help_point.press")
    wrong: dict[str, list[Any]] = {
        "event": [
            without(copy.deepcopy(press), "event_id"),
            {**press, "seq": "42"},
            body(copy.deepcopy(press), press_count="1"),  # the alert body's own field
            body(first("events", kind="help_point.stuck"), alert_id="x"),  # not in its body
            {**first("events", **{"class": "P0"}), "requested_response": "crisis_team"},
        ],
        "status": [{**first("status"), "state": "asleep"}],
        "health": [without(first("health"), "faults"),
                   {**first("health"), "uptime_s": -1}],
        "alerts": [without(first("alerts"), "alerts"),
                   open_alert({"press_count": "1"}),  # the alert body's own field
                   open_alert(state="resolved"),  # a closed alert is never listed
                   open_alert(requested_response="ambassador")],  # not P1's response
        "reply": [{**first("replies"), "status": "maybe"},
                  without(first("replies"), "station")],
        # What the gateway refused, as captured from the broker: the schema refuses it too.
        "command": [json.loads(payload) for payload in capture.rejected_commands],
    }
    for name, payloads in wrong.items():
        paths = []
        for i, payload in enumerate(payloads):
            paths.append(tmp_path / "wrong" / f"{name}-{i}.json")
            paths[-1].parent.mkdir(parents=True, exist_ok=True)
            paths[-1].write_text(json.dumps(payload))
        verdict = validate(schemas[name], paths)
        rejected = {error["filename"] for error in verdict["errors"]}
        assert rejected == {str(p) for p in paths}, json.dumps(verdict, indent=2)
