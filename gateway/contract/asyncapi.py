"""The message contract as an AsyncAPI 3.0 document, generated from the types the code uses.

`python -m gateway.contract > docs/asyncapi.yaml` regenerates the checked-in copy, and a test
fails when that copy and the types disagree. The output is JSON, which is also YAML 1.2, so
the gateway needs no YAML library.

Payload schemas come from pydantic: `EventMessage` below, the `Command` and `Reply` of
gateway.core.commands, and the TypedDicts of gateway.uplink.reports (`StatusMessage`,
`HealthReport`, `OpenAlertsMessage`), through `gateway.contract.spec.adapter`. The daemon
never imports this module:
it writes the same payloads as plain JSON, and the tests validate them against these types.
Event bodies are free-form in `EventMessage` and `OpenAlert`; the document ties each kind
the gateway raises to its body type (`AlertBody`, `HelpPointPlace` in gateway.core.model), and
each open alert to `AlertBody`.
"""

from __future__ import annotations

import json
import sys
from typing import Any, Literal, get_args

from pydantic import BaseModel, ConfigDict, Field, TypeAdapter
from pydantic.json_schema import GenerateJsonSchema, JsonSchemaMode
from pydantic_core import core_schema

from gateway import __version__
from gateway.config.models import MqttConfig, StationConfig
from gateway.contract.spec import adapter
from gateway.core.commands import Command, Reply
from gateway.core.model import (
    CLASS_NAMES,
    CLOSED_STATES,
    REQUESTED_RESPONSE,
    AlertBody,
    AlertState,
    HelpPointPlace,
    JSONValue,
    Priority,
    PriorityName,
)
from gateway.core.presses import Kind
from gateway.uplink.reports import (
    ALERTS_SCHEMA,
    HealthReport,
    OpenAlert,
    OpenAlertsMessage,
    StatusMessage,
)
from gateway.uplink.topics import Topics

JSONObject = dict[str, Any]

ASYNCAPI_VERSION = "3.0.0"
MQTT_BINDING_VERSION = "0.2.0"
CONTENT_TYPE = "application/json"  # gateway.uplink.client.json_properties puts it on every publish
DRAFT_07 = "http://json-schema.org/draft-07/schema#"
_SCHEMAS = "#/components/schemas/"

# ---------------------------------------------------------------------- payload models


class EventMessage(BaseModel):
    """The JSON payload of every event the gateway publishes (schema `stationgw/event/1`)."""

    # `Topics.render` writes the same JSON without building one (the tests compare the two),
    # so the schema is built on first use.
    model_config = ConfigDict(
        frozen=True, extra="forbid", populate_by_name=True, defer_build=True
    )

    schema_: Literal["stationgw/event/1"] = Field(
        default="stationgw/event/1", alias="schema", description="payload schema id"
    )
    event_id: str = Field(description="stable id (UUIDv7); re-sends keep it, so de-duplicate on it")
    station: str = Field(description="station id from the gateway's config")
    priority: PriorityName = Field(alias="class", description="priority class")
    requested_response: str = Field(description="the response this class asks dispatch for")
    kind: str = Field(description="what happened, e.g. help_point.press")
    source: str = Field(description="help point, sensor or gateway that raised it")
    seq: int = Field(description="gateway-local monotonic sequence; orders events of one gateway")
    wall_time: float = Field(description="Unix time at acceptance; may jump before NTP sync")
    body: dict[str, JSONValue] = Field(default_factory=dict, description="kind-specific details")


# Which body each kind the gateway raises carries; other kinds (sensors) are free-form.
PLACE_KINDS: tuple[str, ...] = ("help_point.stuck", "help_point.unstuck")
ALERT_KINDS: tuple[str, ...] = (
    *(kind for kind in get_args(Kind) if kind not in PLACE_KINDS),
    *(f"alert.{state}" for state in get_args(AlertState) if state != "open"),
    "alert.escalated",
    "alert.correlated",
)

# ---------------------------------------------------------------------- schema generation


class _WireSchema(GenerateJsonSchema):
    """JSON Schema of what goes on the wire.

    The gateway dumps its models and dataclasses whole (no `exclude_*`), so in serialization
    mode every such field is required, defaults included. `NotRequired` keys of a TypedDict
    stay optional: they are absent until something sets them.
    """

    def field_is_required(
        self,
        field: core_schema.ModelField | core_schema.DataclassField | core_schema.TypedDictField,
        total: bool,
    ) -> bool:
        """Every model or dataclass field is on the wire in serialization mode."""
        if self.mode == "serialization" and field["type"] != "typed-dict-field":
            return True
        return super().field_is_required(field, total)


# (schema name, mode, type): Command is what the gateway accepts, the rest what it sends.
_PAYLOAD_TYPES: tuple[tuple[str, JsonSchemaMode, Any], ...] = (
    ("EventMessage", "serialization", EventMessage),
    ("AlertBody", "serialization", AlertBody),
    ("HelpPointPlace", "serialization", HelpPointPlace),
    ("StatusMessage", "serialization", StatusMessage),
    ("HealthReport", "serialization", HealthReport),
    ("OpenAlertsMessage", "serialization", OpenAlertsMessage),
    ("Command", "validation", Command),
    ("Reply", "serialization", Reply),
)

# AsyncAPI's default schema format is a superset of JSON Schema draft 07, while pydantic
# writes draft 2020-12; the document must not use what draft 07 lacks (e.g. prefixItems).
_DRAFT_07_KEYWORDS = frozenset({
    "$id", "$schema", "$ref", "$comment", "title", "description", "default", "readOnly",
    "writeOnly", "examples", "multipleOf", "maximum", "exclusiveMaximum", "minimum",
    "exclusiveMinimum", "maxLength", "minLength", "pattern", "additionalItems", "items",
    "maxItems", "minItems", "uniqueItems", "contains", "maxProperties", "minProperties",
    "required", "additionalProperties", "definitions", "properties", "patternProperties",
    "dependencies", "propertyNames", "const", "enum", "type", "format", "contentMediaType",
    "contentEncoding", "if", "then", "else", "allOf", "anyOf", "oneOf", "not",
    "discriminator", "externalDocs", "deprecated",  # AsyncAPI additions
})
_SCHEMA_MAPS = ("properties", "patternProperties", "definitions", "dependencies")
_SCHEMA_LISTS = ("allOf", "anyOf", "oneOf", "items")
_SUBSCHEMAS = (
    "additionalProperties", "additionalItems", "contains", "propertyNames", "not", "if",
    "then", "else", "items",
)


def check_draft_07(schema: Any, where: str) -> None:
    """Raise ValueError naming the path of any keyword AsyncAPI's schema format lacks."""
    if not isinstance(schema, dict):
        return
    for key, value in schema.items():
        if key not in _DRAFT_07_KEYWORDS and not key.startswith("x-"):
            raise ValueError(
                f"{where}: JSON Schema keyword {key!r} is not in draft 07, which AsyncAPI "
                "schemas use (change the model, or convert the keyword in "
                "gateway/contract/asyncapi.py)"
            )
        if key in _SCHEMA_MAPS and isinstance(value, dict):
            for name, sub in value.items():
                check_draft_07(sub, f"{where}.{key}.{name}")
        if key in _SCHEMA_LISTS and isinstance(value, list):
            for i, sub in enumerate(value):
                check_draft_07(sub, f"{where}.{key}[{i}]")
        if key in _SUBSCHEMAS:
            check_draft_07(value, f"{where}.{key}")


def _event_rules(body_refs: dict[str, str]) -> list[JSONObject]:
    """Conditions the field types cannot say: the body of each kind, the response of each class."""
    rules: list[JSONObject] = [
        {
            "if": {"properties": {"kind": {"enum": list(kinds)}}, "required": ["kind"]},
            "then": {"properties": {"body": {"$ref": body_refs[body]}}},
        }
        for body, kinds in (("AlertBody", ALERT_KINDS), ("HelpPointPlace", PLACE_KINDS))
    ]
    return rules + _response_rules()


def _response_rules() -> list[JSONObject]:
    """The requested response of each class (events and open alerts)."""
    return [
        {
            "if": {"properties": {"class": {"const": priority.name}}, "required": ["class"]},
            "then": {"properties": {"requested_response": {"const": response}}},
        }
        for priority, response in REQUESTED_RESPONSE.items()
    ]


def component_schemas() -> tuple[dict[str, str], dict[str, JSONObject]]:
    """The payload schemas: (name -> $ref of its payload, components/schemas)."""
    keyed, top = TypeAdapter.json_schemas(
        [(name, mode, adapter(tp)) for name, mode, tp in _PAYLOAD_TYPES],
        by_alias=True,
        ref_template=_SCHEMAS + "{model}",
        schema_generator=_WireSchema,
    )
    refs = {name: keyed[(name, mode)]["$ref"] for name, mode, _ in _PAYLOAD_TYPES}
    schemas: dict[str, JSONObject] = top["$defs"]
    event = schemas[refs["EventMessage"].removeprefix(_SCHEMAS)]
    event["properties"]["body"]["description"] = (
        "kind-specific details: AlertBody for alert kinds, HelpPointPlace for stuck and "
        "unstuck, free-form for other kinds"
    )
    event["properties"]["requested_response"]["enum"] = list(REQUESTED_RESPONSE.values())
    event["allOf"] = _event_rules(refs)
    entry = schemas["OpenAlert"]  # an open alert's body is an event's AlertBody
    entry["properties"]["requested_response"]["enum"] = list(REQUESTED_RESPONSE.values())
    entry["properties"]["state"]["enum"] = [
        state for state in get_args(AlertState) if state not in CLOSED_STATES
    ]
    entry["allOf"] = [{"properties": {"body": {"$ref": refs["AlertBody"]}}}, *_response_rules()]
    for name, schema in schemas.items():
        check_draft_07(schema, f"components.schemas.{name}")
    return refs, schemas


# ---------------------------------------------------------------------- examples


def _checked(tp: Any, payload: Any) -> JSONObject:
    """`payload` as JSON, after pydantic checked it against its spec type `tp`."""
    spec = adapter(tp)
    dumped: JSONObject = spec.dump_python(
        spec.validate_python(payload), mode="json", by_alias=True
    )
    return dumped


def _examples() -> dict[str, list[JSONObject]]:
    """One or two real payloads per message, checked against their types."""
    station = "central-north"
    press = AlertBody(
        help_point="hp-p1-north", location="platform 1, north stairs", platform="1",
        alert_id="0194c5a2-7b10-7c41-9a2f-3d1e5c6b7a80", state="open", press_count=1,
        first_press=1795700000.101, last_press=1795700000.101, held=False, escalated=False,
        evidence=["button pressed"],
    )
    assigned = press.copy()
    assigned.update(
        {"state": "assigned", "dispatcher": "desk-3", "team": "co_response", "eta_s": 420}
    )

    def event(seq: int, kind: str, priority: Priority, body: dict[str, Any]) -> JSONObject:
        return EventMessage(
            event_id=f"0194c5a2-7b{seq:02d}-7c41-9a2f-3d1e5c6b7a81", station=station,
            priority=priority.name, requested_response=REQUESTED_RESPONSE[priority], kind=kind,
            source=press["help_point"], seq=seq, wall_time=round(1795700000.123 + seq, 3),
            body=body,
        ).model_dump(mode="json", by_alias=True)

    def status(state: Literal["online", "offline"]) -> JSONObject:
        message: StatusMessage = {
            "state": state, "station": station, "version": __version__,
            "wall_time": 1795699000.5,
        }
        return _checked(StatusMessage, message)

    command = Command(
        command_id="c7d1e2f3a4b5c6d7", station=station, alert_id=press["alert_id"],
        action="assign", team="co_response", eta_s=420, issued_at=1795700030.0,
        dispatcher="desk-3",
    )
    health: HealthReport = {
        "station": station, "version": __version__, "uptime_s": 86400.0,
        "wall_time": 1795700040.0,
        "outbox": {
            "by_class": {"P0": {}, "P1": {"pending": 1}, "P2": {}, "P3": {}}, "rows": 1,
            "bytes": 612, "memory_rows": 0, "in_flight": 1, "oldest_unsent_age_s": 0.052,
        },
        "faults": [{"code": "dispatch_not_listening", "since": 1795699500.0, "message": (
            "broker had no subscriber for stationgw/v1/central-north/events/P1")}],
        "links": {"broker:mqtts://dispatch.example:8883": "up",
                  "serial:edge-p1": "online (board edge-beam-7f3a fw=1.4.2)"},
        "counters": {"delivered_P1": 12, "commands_applied_acknowledge": 3},
        "boards": {"edge-p1": {"frames": 86411, "bad_crc": 3, "gaps": 2, "lost": 2,
                               "resets": 1, "reopens": 1, "online": 2, "offline": 1}},
    }
    open_alert: OpenAlert = {
        "alert_id": assigned["alert_id"], "source": assigned["help_point"], "class": "P1",
        "requested_response": REQUESTED_RESPONSE[Priority.P1], "state": "assigned",
        "body": dict(assigned),
    }

    def alerts(wall_time: float, *open_alerts: OpenAlert) -> JSONObject:
        message: OpenAlertsMessage = {
            "schema": ALERTS_SCHEMA, "station": station, "wall_time": wall_time,
            "alerts": list(open_alerts),
        }
        return _checked(OpenAlertsMessage, message)

    return {
        "alerts": [
            {"name": "one_open", "summary": "one alert open, assigned to a team",
             "payload": alerts(1795700045.2, open_alert)},
            {"name": "none_open", "summary": "after it was resolved",
             "payload": alerts(1795700900.4)},
        ],
        "event": [
            {"name": "press", "summary": "a rider pressed a help point",
             "payload": event(42, "help_point.press", Priority.P1, dict(press))},
            {"name": "assigned", "summary": "dispatch assigned a co-response team",
             "payload": event(45, "alert.assigned", Priority.P1, dict(assigned))},
        ],
        "status": [
            {"name": "online", "payload": status("online")},
            {"name": "offline", "summary": "clean shutdown, or the Last Will",
             "payload": status("offline")},
        ],
        "health": [{"name": "healthy", "payload": _checked(HealthReport, health)}],
        "command": [{"name": "assign", "payload": _checked(Command, command)}],
        "reply": [
            {"name": "applied", "payload": _checked(Reply, Reply(
                command_id=command.command_id, alert_id=command.alert_id, status="applied",
                station=station, wall_time=1795700030.2,
            ))},
            {"name": "rejected", "payload": _checked(Reply, Reply(
                command_id=command.command_id, alert_id=command.alert_id, status="rejected",
                reason="replay", detail="this command id was already applied",
                station=station, wall_time=1795700031.0,
            ))},
        ],
    }


# ---------------------------------------------------------------------- the document

_INFO = """\
How a station gateway talks to the dispatch centre over MQTT 5: the crisis alerts and other
events it publishes, its retained status, health and open alerts, and the commands dispatch
sends back.

Generated by `python -m gateway.contract` from the models the gateway uses; do not edit.
This file is JSON, which is also YAML 1.2.

- Every payload is UTF-8 JSON (MQTT 5 content type `application/json`).
- Events are delivered at least once: de-duplicate on `event_id`, which re-sends keep.
- Every topic starts with `{prefix}`, the default `mqtt.topic_prefix`; its last segment is the
  version of this contract.
- Dispatch subscribes by class, e.g. `{prefix}/+/events/P0` for life safety from every
  station, and should use a persistent session so the broker queues while it is away."""


def _mqtt(**binding: Any) -> dict[str, Any]:
    return {"mqtt": {**binding, "bindingVersion": MQTT_BINDING_VERSION}}


def _message(
    name: str, title: str, summary: str, payload_ref: str, examples: list[JSONObject],
    *, sent_by_gateway: bool = True, correlated: bool = False,
) -> dict[str, Any]:
    message: dict[str, Any] = {
        "name": name,
        "title": title,
        "summary": summary,
        "contentType": CONTENT_TYPE,
        "payload": {"$ref": payload_ref},
    }
    if correlated:
        message["correlationId"] = {
            "description": "a reply carries the command_id of the command it answers",
            "location": "$message.payload#/command_id",
        }
    if sent_by_gateway:
        message["bindings"] = _mqtt(payloadFormatIndicator=1, contentType=CONTENT_TYPE)
    message["examples"] = examples
    return message


def _operation(
    action: Literal["send", "receive"], channel: str, message: str, summary: str, *,
    retain: bool,
) -> dict[str, Any]:
    return {
        "action": action,
        "channel": {"$ref": f"#/channels/{channel}"},
        "summary": summary,
        "messages": [{"$ref": f"#/channels/{channel}/messages/{message}"}],
        "bindings": _mqtt(qos=1, retain=retain),
    }


def asyncapi_document() -> dict[str, Any]:
    """The AsyncAPI 3.0 document of every topic and message, as a JSON-compatible dict."""
    mqtt = MqttConfig()  # the defaults
    prefix = mqtt.topic_prefix
    station_pattern = adapter(StationConfig).json_schema()["properties"]["station_id"]["pattern"]
    topics = Topics(prefix, "{station}")
    refs, schemas = component_schemas()
    examples = _examples()
    station_param = {"$ref": "#/components/parameters/station"}

    channels = {
        "events": {
            "address": f"{topics.root}/events/{{priority}}",
            "title": "Events",
            "description": "Every event the gateway accepted, on the topic of its priority "
            "class, so dispatch can subscribe by class. A row leaves the gateway's outbox only "
            "after the broker's PUBACK; after a crash or disconnect it is sent again with the "
            "same event_id.",
            "parameters": {"station": station_param, "priority": {
                "description": "priority class: P0 life safety, P1 crisis request, "
                "P2 assistance, P3 telemetry and health (the payload's `class`)",
                "enum": list(CLASS_NAMES),
            }},
            "messages": {"event": {"$ref": "#/components/messages/event"}},
        },
        "status": {
            "address": topics.status,
            "title": "Status",
            "description": "Retained. `online` after every connect; `offline` on a clean "
            "shutdown and, as the MQTT Last Will, when the connection is lost.",
            "parameters": {"station": station_param},
            "messages": {"status": {"$ref": "#/components/messages/status"}},
        },
        "health": {
            "address": topics.health,
            "title": "Health",
            "description": "Retained health report: at each connect, then every "
            "`mqtt.health_interval_s`.",
            "parameters": {"station": station_param},
            "messages": {"health": {"$ref": "#/components/messages/health"}},
        },
        "alerts": {
            "address": topics.alerts,
            "title": "Open alerts",
            "description": "Retained snapshot of the station's open alerts, so a console that "
            "starts or reconnects shows them at once: at every connect, and after each change "
            "(coalesced, at most every 0.2 s; the newest state always follows). An alert that "
            "closes is absent from the next snapshot. Derived from the alert states, not sent "
            "through the outbox: a lost snapshot is repeated by the next change or connect.",
            "parameters": {"station": station_param},
            "messages": {"alerts": {"$ref": "#/components/messages/alerts"}},
        },
        "commands": {
            "address": Topics(prefix, "{station}").commands,
            "title": "Commands",
            "description": "Dispatch's commands about an alert, QoS 1. The gateway checks "
            "size, JSON, schema, station, age, replay and the alert's state, and answers "
            "every command on the replies topic; a refused one changes nothing.",
            "parameters": {"station": station_param},
            "messages": {"command": {"$ref": "#/components/messages/command"}},
        },
        "replies": {
            "address": Topics(prefix, "{station}").replies,
            "title": "Replies",
            "description": "The gateway's answer to each command: applied, or rejected "
            "with a reason code.",
            "parameters": {"station": station_param},
            "messages": {"reply": {"$ref": "#/components/messages/reply"}},
        },
    }
    operations = {
        "sendEvent": _operation(
            "send", "events", "event", "Publish an accepted event on its class's topic.",
            retain=False,
        ),
        "sendStatus": _operation(
            "send", "status", "status", "Publish the retained online/offline status.",
            retain=True,
        ),
        "sendHealth": _operation(
            "send", "health", "health", "Publish the retained health report.", retain=True
        ),
        "sendAlerts": _operation(
            "send", "alerts", "alerts", "Publish the retained snapshot of open alerts.",
            retain=True,
        ),
        "receiveCommand": {
            **_operation(
                "receive", "commands", "command",
                "Take a command from dispatch (the gateway subscribes at QoS 1).",
                retain=False,
            ),
            "reply": {
                "channel": {"$ref": "#/channels/replies"},
                "messages": [{"$ref": "#/channels/replies/messages/reply"}],
            },
        },
        "sendReply": _operation(
            "send", "replies", "reply", "Answer a command: applied or rejected.", retain=False
        ),
    }
    messages = {
        "event": _message(
            "event", "Event", "An alert, a change of its state, or another input.",
            refs["EventMessage"], examples["event"],
        ),
        "status": _message(
            "status", "Status", "Whether the gateway is connected.",
            refs["StatusMessage"], examples["status"],
        ),
        "health": _message(
            "health", "Health report", "Outbox depth, faults, links and counters.",
            refs["HealthReport"], examples["health"],
        ),
        "alerts": _message(
            "alerts", "Open alerts", "Every alert open at the station, with its state.",
            refs["OpenAlertsMessage"], examples["alerts"],
        ),
        "command": _message(
            "command", "Command", "Acknowledge, assign, resolve or cancel an alert.",
            refs["Command"], examples["command"], sent_by_gateway=False, correlated=True,
        ),
        "reply": _message(
            "reply", "Reply", "Whether a command was applied, and if not, why.",
            refs["Reply"], examples["reply"], correlated=True,
        ),
    }
    return {
        "asyncapi": ASYNCAPI_VERSION,
        "info": {
            "title": "Station gateway",
            "version": __version__,
            "description": _INFO.format(prefix=prefix),
            "license": {"name": "Apache-2.0"},
        },
        "defaultContentType": CONTENT_TYPE,
        "servers": {
            "dispatch": {
                "host": "{broker}",
                "protocol": "mqtt",
                "protocolVersion": mqtt.protocol,
                "title": "Dispatch broker",
                "description": "Each `[[brokers]]` URL of the station config, tried in order. "
                "`mqtts://` URLs use TLS (`mqtt.tls`). MQTT 3.1.1 is selectable but cannot "
                "report refusals. Binding values are the config defaults.",
                "variables": {"broker": {
                    "description": "host:port of a broker",
                    "examples": ["dispatch.example:8883"],
                }},
                "bindings": _mqtt(
                    cleanSession=False,
                    keepAlive=mqtt.keepalive_s,
                    sessionExpiryInterval=mqtt.session_expiry_s,
                    lastWill={
                        "topic": topics.status,
                        "qos": 1,
                        "retain": True,
                        "message": "a status message with state offline",
                    },
                ),
            }
        },
        "channels": channels,
        "operations": operations,
        "components": {
            "schemas": schemas,
            "messages": messages,
            "parameters": {"station": {
                "description": f"station id (`station_id` in the config, {station_pattern})",
                "examples": ["central-north"],
            }},
        },
    }


def render(document: dict[str, Any]) -> str:
    """The document as the text of docs/asyncapi.yaml (JSON, which is YAML 1.2)."""
    return json.dumps(document, indent=2) + "\n"


def _to_definitions(value: Any) -> Any:
    if isinstance(value, dict):
        return {
            key: (
                "#/definitions/" + sub.removeprefix(_SCHEMAS)
                if key == "$ref" and isinstance(sub, str) and sub.startswith(_SCHEMAS)
                else _to_definitions(sub)
            )
            for key, sub in value.items()
        }
    if isinstance(value, list):
        return [_to_definitions(sub) for sub in value]
    return value


def schemas_for_validation(document: dict[str, Any] | None = None) -> dict[str, JSONObject]:
    """Message name -> a standalone draft-07 JSON Schema of its payload.

    Taken from `document` (by default the generated one; tests pass the checked-in file), with
    components/schemas inlined as `definitions`, for any JSON Schema validator.
    """
    doc = asyncapi_document() if document is None else document
    definitions = _to_definitions(doc["components"]["schemas"])
    return {
        name: {
            "$schema": DRAFT_07,
            "title": f"{message.get('title', name)} payload ({doc['info']['version']})",
            "allOf": [_to_definitions(message["payload"])],
            "definitions": definitions,
        }
        for name, message in doc["components"]["messages"].items()
    }


def main() -> None:
    """Print the document (`python -m gateway.contract > docs/asyncapi.yaml`)."""
    sys.stdout.write(render(asyncapi_document()))


if __name__ == "__main__":
    main()
