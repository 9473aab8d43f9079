"""Station config: one TOML file, typed frozen models, validated once at start.

Every problem is reported with its key path, the bad value and the fix, and all problems
are reported together (`ConfigError.problems`), not just the first.

The models are frozen dataclasses whose annotations carry pydantic's constraints and
descriptions; pydantic checks them (`gateway.spec`). The daemon never imports pydantic: it
checks its config in a short-lived child process (`load_config_isolated`) and gets back the
same dataclasses, so that pydantic's memory never enters the long-running process.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import os
import pickle
import re
import sys
import threading
import tomllib
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, Literal, get_args
from urllib.parse import urlsplit

from gateway.errors import ConfigError, GatewayError
from gateway.model import Priority, PriorityName

if TYPE_CHECKING:  # at run time gateway.spec provides these where pydantic checks the models
    from pydantic import AfterValidator, Field, ValidationInfo

EX_CONFIG = 78  # sysexits.h: configuration error; systemd's unit does not restart on it

InputKind = Literal[
    "help_point.press",
    "help_point.hold",
    "help_point.repeat",
    "help_point.stuck",
    "sensor.threshold",
    "sensor.reading",
    "device.fault",
    "device.offline",
    "device.online",
]
INPUT_KINDS: tuple[str, ...] = get_args(InputKind)

_ID = r"^[a-z0-9][a-z0-9_-]{0,62}$"
_ID_HELP = "use 1-63 lowercase letters, digits, '-' or '_'"


class _Frozen:
    """Base of the config's dataclasses: unknown keys are errors."""

    __pydantic_config__ = {"extra": "forbid"}


def _readable_file(path: Path | None, info: ValidationInfo) -> Path | None:
    """Resolve a path against the config file's folder and check it can be read now."""
    if path is None:
        return None
    base = (info.context or {}).get("base_dir")
    if base is not None and not path.is_absolute():
        path = Path(base) / path
    try:
        is_file, is_dir = path.is_file(), path.is_dir()
    except OSError as exc:  # e.g. a name too long, or a folder on the way this user cannot search
        raise ValueError(
            f"file {str(path)!r} cannot be checked: {exc.strerror or exc} (fix the path)"
        ) from None
    if is_dir:
        raise ValueError(f"{str(path)!r} is a folder, not a file (give the file's path)")
    if not is_file:
        raise ValueError(f"file {str(path)!r} does not exist (fix the path or create the file)")
    if not os.access(path, os.R_OK):
        raise ValueError(
            f"file {str(path)!r} is not readable by this user (fix its owner or mode)"
        )
    return path


def loopback_host(host: str) -> bool:
    """A broker address on this machine, decided by address: 127.0.0.0/8, ::1, localhost.
    A name such as "127.example.net" is not loopback, whatever its first label."""
    if host.lower() in ("localhost", "localhost."):
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def masked_url(url: str) -> str:
    """A broker URL with any user name and password replaced, for messages and logs."""
    try:
        parts = urlsplit(url)
    except ValueError:
        return "<unparseable url>"
    if "@" not in parts.netloc:
        return url
    return parts._replace(netloc="***@" + parts.netloc.rpartition("@")[2]).geturl()


def _relative_to_config(path: Path, info: ValidationInfo) -> Path:
    base = (info.context or {}).get("base_dir")
    if base is not None and not path.is_absolute():
        return Path(base) / path
    return path


def normalize_pin(pin: int | str) -> str:
    """Canonical BCM name of a pin spec: 17, "17", "GPIO17" and "BCM17" are all "GPIO17"."""
    text = str(pin).strip().upper()
    match = re.fullmatch(r"(?:GPIO|BCM)?(\d{1,2})", text)
    return f"GPIO{int(match.group(1))}" if match else text


def _check_pin(pin: int | str | None) -> int | str | None:
    if pin is None:
        return None
    if isinstance(pin, bool):  # TOML true would otherwise pass as pin 1
        # pydantic turns ValueError (not TypeError) into a reported problem
        raise ValueError("a pin is a number or a name like 'GPIO17', not true/false")  # noqa: TRY004
    name = normalize_pin(pin)
    match = re.fullmatch(r"GPIO(\d+)", name)
    if match is None or not 0 <= int(match.group(1)) <= 27:
        raise ValueError(
            f"pin {pin!r} is not a BCM GPIO pin (use a number 0-27, e.g. 17, or 'GPIO17')"
        )
    return pin


def _valid_url(url: str) -> str:
    shown = masked_url(url)
    try:
        parts = urlsplit(url)
    except ValueError:
        raise ValueError(
            f"broker url {shown!r} is not mqtt://HOST[:PORT] or mqtts://HOST[:PORT]"
        ) from None
    if "@" in parts.netloc:
        raise ValueError(
            f"broker url {shown!r} carries credentials, which would be shown in logs and "
            "health (remove them from the URL: set mqtt.username, and put the password in "
            "the file named by mqtt.password_file)"
        )
    if parts.scheme not in ("mqtt", "mqtts") or not parts.hostname:
        raise ValueError(
            f"broker url {shown!r} is not mqtt://HOST[:PORT] or mqtts://HOST[:PORT]"
        )
    try:
        _ = parts.port
    except ValueError:
        raise ValueError(f"broker url {shown!r} has a bad port (use 1-65535)") from None
    return url


def _valid_prefix(prefix: str) -> str:
    if not prefix or any(c in prefix for c in "#+\0") or prefix.startswith("/"):
        raise ValueError(
            f"topic prefix {prefix!r} is not valid (no '#', '+', leading '/'; e.g. "
            "'stationgw/v1')"
        )
    return prefix.rstrip("/")


def _only_low_classes_expire(ttl: dict[str, float]) -> dict[str, float]:
    for name, seconds in ttl.items():
        if not Priority.parse(name).evictable:
            raise ValueError(
                f"{name} alerts never expire (remove store.ttl_s.{name}; only P2 and P3 "
                "may have a TTL)"
            )
        if not 0 < seconds < float("inf"):  # also refuses nan
            raise ValueError(f"store.ttl_s.{name} = {seconds} must be a positive number")
    return ttl


@dataclass(frozen=True, kw_only=True)
class BrokerEndpoint(_Frozen):
    """One broker endpoint; endpoints are tried in the order given."""

    url: Annotated[
        str, AfterValidator(_valid_url),
        Field(description="mqtt://host:port or mqtts://host:port (TLS); never a user or "
              "password in it (use mqtt.username and mqtt.password_file)"),
    ]

    @property
    def host(self) -> str:
        """Host name or address."""
        return urlsplit(self.url).hostname or ""

    @property
    def port(self) -> int:
        """TCP port; 1883 for mqtt:// and 8883 for mqtts:// when not given."""
        parts = urlsplit(self.url)
        return parts.port or (8883 if parts.scheme == "mqtts" else 1883)

    @property
    def tls(self) -> bool:
        """True for mqtts:// endpoints."""
        return urlsplit(self.url).scheme == "mqtts"

    @property
    def loopback(self) -> bool:
        """True for a broker on this machine, where plaintext never leaves the host."""
        return loopback_host(self.host)


@dataclass(frozen=True, kw_only=True)
class TLSConfig(_Frozen):
    """TLS files for mqtts:// endpoints; server certificates are always verified."""

    ca_file: Annotated[
        Path | None, AfterValidator(_readable_file),
        Field(description="CA bundle that signed the broker's certificate"),
    ] = None
    cert_file: Annotated[
        Path | None, AfterValidator(_readable_file),
        Field(description="client certificate (mTLS)"),
    ] = None
    key_file: Annotated[
        Path | None, AfterValidator(_readable_file), Field(description="client private key (mTLS)")
    ] = None


@dataclass(frozen=True, kw_only=True)
class MqttConfig(_Frozen):
    """How the gateway talks to the dispatch broker."""

    protocol: Annotated[
        Literal["5", "3.1.1"],
        Field(description="MQTT version; 5 is the default because 3.1.1 cannot report ACL "
              "refusals"),
    ] = "5"
    client_id: Annotated[str | None, Field(description="default: stationgw-STATION_ID")] = None
    topic_prefix: Annotated[
        str, AfterValidator(_valid_prefix), Field(description="root of every topic")
    ] = "stationgw/v1"
    keepalive_s: Annotated[
        int, Field(
            ge=5, le=3600,
            description="MQTT keepalive; paho notices an idle dead link within 2x",
        ),
    ] = 30
    inflight_window: Annotated[
        int, Field(ge=1, le=1000, description="QoS 1 publishes awaiting PUBACK at once")
    ] = 32
    puback_deadline_s: Annotated[
        float, Field(
            ge=0.5, le=300,
            description="a P0/P1 row or the gateway's own status or health message unconfirmed "
            "this long (or a CONNACK this late) drops the connection with fault "
            "broker_stalled and tries the next broker",
        ),
    ] = 5.0
    health_interval_s: Annotated[
        float, Field(gt=0, le=3600, description="how often the retained health report goes out")
    ] = 30.0
    reconnect_initial_s: Annotated[
        float, Field(gt=0, le=60, description="first reconnect backoff bound (doubles per round)")
    ] = 0.5
    reconnect_max_s: Annotated[
        float, Field(gt=0, le=3600, description="cap of the jittered reconnect backoff")
    ] = 30.0
    session_expiry_s: Annotated[
        int, Field(
            ge=0, le=7 * 86400,
            description="MQTT 5 session expiry: how long the broker keeps commands for us offline",
        ),
    ] = 3600
    refused_retry_s: Annotated[
        float, Field(gt=0, description="how often rows the broker refused are tried again")
    ] = 60.0
    username: Annotated[
        str | None, Field(description="broker user name, if it uses passwords")
    ] = None
    password_file: Annotated[
        Path | None, AfterValidator(_readable_file),
        Field(description="file holding the broker password (never put it in the config)"),
    ] = None
    tls: TLSConfig = field(default_factory=TLSConfig)
    allow_plaintext: Annotated[
        bool,
        Field(description="allow mqtt:// (no TLS) to brokers off this machine; logs a warning "
              "at start"),
    ] = False


@dataclass(frozen=True, kw_only=True)
class StoreConfig(_Frozen):
    """The durable outbox."""

    path: Annotated[
        Path, AfterValidator(_relative_to_config), Field(description="SQLite database file")
    ] = Path("/var/lib/stationgw/outbox.db")
    max_rows: Annotated[int, Field(ge=100, description="row bound before eviction")] = 100_000
    max_bytes: Annotated[
        int, Field(ge=64 * 1024, description="payload byte bound before eviction")
    ] = 64 * 1024 * 1024
    ttl_s: Annotated[
        dict[PriorityName, float], AfterValidator(_only_low_classes_expire),
        Field(description="expiry per class; only P2 and P3 may expire"),
    ] = field(default_factory=dict)


_BOARD_IDENT = r"^[A-Za-z0-9._-]{1,16}$"  # ids on the wire (docs/firmware-protocol.md)
_GPIO_KEYS = ("pin", "lamp_pin", "sounder_pin", "lamp_pwm")
_BOARD_KEYS = ("board", "button", "lamp")


@dataclass(frozen=True, kw_only=True)
class HelpPoint(_Frozen):
    """A help point: a button and its lamp, on GPIO pins or on a serial board.

    On GPIO give `pin` and `lamp_pin` (and maybe `sounder_pin`). On a help-point controller
    board give `board` (a [[sensors]] id) and `button` (and `lamp` if its id differs).
    """

    id: Annotated[str, Field(pattern=_ID, description="help point id; appears in alerts")]
    location: Annotated[str, Field(description="where it is, e.g. 'platform 1 north'")] = ""
    platform: Annotated[str, Field(description="platform name or number")] = ""
    pin: Annotated[
        int | str | None, AfterValidator(_check_pin),
        Field(description="GPIO: BCM pin of the button (pulled up; press pulls it low)"),
    ] = None
    lamp_pin: Annotated[
        int | str | None, AfterValidator(_check_pin),
        Field(description="GPIO: BCM pin of the lamp"),
    ] = None
    lamp_pwm: Annotated[bool, Field(description="GPIO: drive the lamp as a PWMLED")] = False
    sounder_pin: Annotated[
        int | str | None, AfterValidator(_check_pin),
        Field(description="GPIO: BCM pin of a buzzer, if fitted"),
    ] = None
    board: Annotated[
        str | None,
        Field(pattern=_ID, description="on a serial board: the [[sensors]] id of the board the "
              "button is wired to"),
    ] = None
    button: Annotated[
        str | None,
        Field(pattern=_BOARD_IDENT, description="on a serial board: the button's id on the "
              "board (BTN frame `btn`)"),
    ] = None
    lamp: Annotated[
        str | None,
        Field(pattern=_BOARD_IDENT, description="on a serial board: the lamp's id on the board "
              "(LAMP frame `lamp`); default: the button's id"),
    ] = None
    bounce_time_s: Annotated[
        float,
        Field(ge=0, le=1, description="GPIO: a press ends once released this long (a board "
              "debounces itself)"),
    ] = 0.05
    hold_time_s: Annotated[
        float,
        Field(gt=0, le=30, description="held this long, a request becomes an emergency (a "
              "board's own hold report counts at once)"),
    ] = 2.0

    @property
    def on_board(self) -> bool:
        """True for a help point wired to a serial board, False for one on GPIO."""
        return self.board is not None

    @property
    def board_lamp(self) -> str:
        """The lamp's id on its board."""
        return self.lamp or self.button or ""


@dataclass(frozen=True, kw_only=True)
class PressConfig(_Frozen):
    """Press semantics shared by all help points (classes come from `rules`)."""

    repeat_window_s: Annotated[
        float,
        Field(gt=0, le=3600, description="presses this soon after the request's last press "
              "join that request"),
    ] = 60.0
    escalate_after_presses: Annotated[
        int,
        Field(ge=2, le=100, description="at this press count the request is raised to the "
              "help_point.repeat class"),
    ] = 3
    stuck_after_s: Annotated[
        float,
        Field(gt=0, le=3600, description="a button held this long is reported stuck (one "
              "fault, cleared on release)"),
    ] = 30.0


@dataclass(frozen=True, kw_only=True)
class BlinkPattern(_Frozen):
    """A lamp pattern: on_s = 0 is off, off_s = 0 is solid, otherwise a blink."""

    on_s: Annotated[float, Field(ge=0, le=60, description="seconds on per cycle (0: off)")]
    off_s: Annotated[float, Field(ge=0, le=60, description="seconds off per cycle (0: solid)")]


@dataclass(frozen=True, kw_only=True)
class LampConfig(_Frozen):
    """Lamp pattern for each state; every state must look different."""

    idle: BlinkPattern = BlinkPattern(on_s=0.0, off_s=1.0)
    accepted: BlinkPattern = BlinkPattern(on_s=0.5, off_s=1.5)
    sent: BlinkPattern = BlinkPattern(on_s=0.15, off_s=0.15)
    acknowledged: BlinkPattern = BlinkPattern(on_s=1.0, off_s=0.0)
    fault: BlinkPattern = BlinkPattern(on_s=0.05, off_s=0.95)


@dataclass(frozen=True, kw_only=True)
class BeepCue(_Frozen):
    """An audible cue: `beeps` beeps of on_s seconds with off_s gaps; 0 beeps is silent."""

    beeps: Annotated[int, Field(ge=0, le=20, description="number of beeps (0: silent)")]
    on_s: Annotated[float, Field(gt=0, le=5, description="seconds per beep")] = 0.1
    off_s: Annotated[float, Field(gt=0, le=5, description="seconds between beeps")] = 0.1


@dataclass(frozen=True, kw_only=True)
class SounderConfig(_Frozen):
    """Audible cue for each lamp state, for riders who cannot see the lamp."""

    idle: BeepCue = BeepCue(beeps=0)
    accepted: BeepCue = BeepCue(beeps=1, on_s=0.3)
    sent: BeepCue = BeepCue(beeps=2, on_s=0.1, off_s=0.1)
    acknowledged: BeepCue = BeepCue(beeps=1, on_s=1.0)
    fault: BeepCue = BeepCue(beeps=5, on_s=0.05, off_s=0.05)


@dataclass(frozen=True, kw_only=True)
class DispatchConfig(_Frozen):
    """The loop with dispatch: acknowledgement timeout and command checks."""

    ack_timeout_s: Annotated[
        float,
        Field(gt=0, le=86400, description="an alert not acknowledged this long is "
              "re-announced, escalated; again after each further timeout"),
    ] = 120.0
    escalate_to: Annotated[
        PriorityName,
        Field(description="class an unacknowledged alert is raised to (never lowered)"),
    ] = "P0"
    command_max_age_s: Annotated[
        float,
        Field(gt=0, le=86400, description="commands issued longer ago than this, or further "
              "in the future, are refused (`stale`, `future`), by dispatch's clock as its "
              "commands show it"),
    ] = 600.0
    max_command_bytes: Annotated[
        int, Field(ge=256, le=65536, description="larger commands are refused unread")
    ] = 4096
    clock_skew_max_s: Annotated[
        float, Field(gt=0, le=86400, description="the `clock_skew` fault is raised when the "
                     "wall clock steps this far from the steady clock, or dispatch's clock "
                     "(as its commands show it) is this far from the station's")
    ] = 30.0
    reject_reply_burst: Annotated[
        int, Field(ge=1, le=100000, description="rejections of one reason answered one by one "
                   "before replies are rate-limited (a flood of bad commands)")
    ] = 20
    reject_replies_per_s: Annotated[
        float, Field(gt=0, le=10000, description="then at most this many replies a second per "
                     "reason; the rest are counted (`command_replies_suppressed`) and told "
                     "in the next reply of that reason")
    ] = 5.0


def _one_direction(rule: ThresholdRule) -> ThresholdRule:
    if (rule.above is None) == (rule.below is None):
        raise ValueError("give exactly one of `above` or `below`")
    if rule.above is not None and rule.clear_at > rule.above:
        raise ValueError(f"clear_at {rule.clear_at} must be at most above = {rule.above}")
    if rule.below is not None and rule.clear_at < rule.below:
        raise ValueError(f"clear_at {rule.clear_at} must be at least below = {rule.below}")
    return rule


@dataclass(frozen=True, kw_only=True)
class ThresholdRule(_Frozen):
    """An alert when a channel stays past a threshold; cleared with hysteresis."""

    channel: Annotated[
        str, Field(description="the board's sensor channel (READ frame `sensor` field)")
    ]
    above: Annotated[float | None, Field(description="trigger at or above this value")] = None
    below: Annotated[float | None, Field(description="trigger at or below this value")] = None
    clear_at: Annotated[
        float,
        Field(description="hysteresis: clears once the value is back past this (below "
              "`above`, or above `below`)"),
    ]
    min_duration_s: Annotated[
        float, Field(ge=0, le=3600, description="must hold this long before it triggers")
    ] = 0.0
    priority: Annotated[
        PriorityName, Field(alias="class", description="class of the alert, e.g. P0")
    ]
    label: Annotated[
        str, Field(max_length=80, description="what it means, e.g. 'edge intrusion'")
    ] = ""
    correlate: Annotated[
        bool,
        Field(description="instead of its own alert, raise concurrent requests at the "
              "sensor's help points to `class`, with this reading as evidence"),
    ] = False


@dataclass(frozen=True, kw_only=True)
class TelemetryRule(_Frozen):
    """Plain readings published as P3 telemetry, rate-limited with an on-change deadband."""

    channel: Annotated[str, Field(description="the board's sensor channel")]
    min_interval_s: Annotated[
        float, Field(gt=0, le=86400, description="at most one reading per this many seconds")
    ] = 60.0
    deadband: Annotated[
        float, Field(ge=0, description="publish only when the value moved at least this much")
    ] = 0.0


@dataclass(frozen=True, kw_only=True)
class Sensor(_Frozen):
    """A microcontroller board on a serial port: sensors, help-point buttons and lamps."""

    id: Annotated[str, Field(pattern=_ID, description="sensor board id; appears in alerts")]
    port: Annotated[
        str, Field(description="stable device path, e.g. /dev/serial/by-id/usb-...")
    ]
    baud: Annotated[
        Literal[9600, 19200, 38400, 57600, 115200, 230400, 460800, 921600],
        Field(description="serial speed"),
    ] = 115200
    location: Annotated[str, Field(description="where it is")] = ""
    platform: Annotated[str, Field(description="platform name or number")] = ""
    help_points: Annotated[
        list[str],
        Field(description="help points at the same place: its correlation rules raise their "
              "requests"),
    ] = field(default_factory=list)
    thresholds: list[Annotated[ThresholdRule, AfterValidator(_one_direction)]] = field(
        default_factory=list
    )
    telemetry: list[TelemetryRule] = field(default_factory=list)


@dataclass(frozen=True, kw_only=True)
class Rule(_Frozen):
    """Maps an input kind (optionally from one source) to a priority class."""

    input: Annotated[InputKind, Field(description="the kind of input this rule classifies")]
    source: Annotated[
        str, Field(description="help point or sensor id, or '*' for any")
    ] = "*"
    priority: Annotated[
        PriorityName, Field(alias="class", description="the class it gets: P0-P3")
    ]


@dataclass(frozen=True, kw_only=True)
class StationConfig(_Frozen):
    """The whole station config file."""

    station_id: Annotated[
        str, Field(pattern=_ID, description="this station's id; appears in every topic")
    ]
    brokers: Annotated[list[BrokerEndpoint], Field(min_length=1)]
    mqtt: MqttConfig = field(default_factory=MqttConfig)
    store: StoreConfig = field(default_factory=StoreConfig)
    gpio_pin_factory: Annotated[
        Literal["auto", "mock", "lgpio", "rpigpio", "pigpio"],
        Field(description="'auto' honours GPIOZERO_PIN_FACTORY, else gpiozero's default"),
    ] = "auto"
    press: PressConfig = field(default_factory=PressConfig)
    dispatch: DispatchConfig = field(default_factory=DispatchConfig)
    lamp: LampConfig = field(default_factory=LampConfig)
    sounder: SounderConfig = field(default_factory=SounderConfig)
    help_points: list[HelpPoint] = field(default_factory=list)
    sensors: list[Sensor] = field(default_factory=list)
    rules: list[Rule] = field(default_factory=list)

    def priority_for(self, kind: str, source: str, default: Priority) -> Priority:
        """The class a rule assigns to `kind` from `source`; a source-specific rule wins."""
        for rule in self.rules:
            if rule.input == kind and rule.source == source:
                return Priority.parse(rule.priority)
        for rule in self.rules:
            if rule.input == kind and rule.source == "*":
                return Priority.parse(rule.priority)
        return default

    @property
    def client_id(self) -> str:
        """MQTT client id."""
        return self.mqtt.client_id or f"stationgw-{self.station_id}"


# ---------------------------------------------------------------------------- loading


def _path(loc: tuple[int | str, ...]) -> str:
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        elif part in ("int", "str", "[key]") or part.startswith(("function-after", "literal")):
            continue  # pydantic's union-branch labels are not config keys
        else:
            out += f".{part}" if out else str(part)
    return out or "(top level)"


def _fix(err: Any) -> str:
    kind = err["type"]
    if kind in ("missing", "missing_keyword_argument"):
        return "add this key"
    if kind in ("extra_forbidden", "unexpected_keyword_argument"):
        return "remove it or fix its spelling"
    if kind == "string_pattern_mismatch":
        return _ID_HELP
    return ""


#: pydantic's words for a dataclass's keys, as it says them for a model's (the config's file
#: has keys, not keyword arguments).
_KEY_MESSAGES = {
    "missing_keyword_argument": "Field required",
    "unexpected_keyword_argument": "Extra inputs are not permitted",
}


def _format(err: Any) -> str:
    msg = _KEY_MESSAGES.get(err["type"]) or str(err["msg"]).removeprefix("Value error, ")
    fix = _fix(err)
    missing = err["type"] in ("missing", "missing_keyword_argument")
    shown = err.get("input")
    if err["loc"] and err["loc"][-1] == "url" and isinstance(shown, str):
        shown = masked_url(shown)  # never echo a password
    value = "" if missing else f" (got {shown!r})"
    return f"{_path(err['loc'])}: {msg}{value}" + (f" ({fix})" if fix else "")


def _dict_items(raw: dict[str, Any], key: str) -> Iterator[tuple[int, dict[str, Any]]]:
    items = raw.get(key)
    if isinstance(items, list):
        for i, item in enumerate(items):
            if isinstance(item, dict):
                yield i, item


def cross_check(raw: dict[str, Any]) -> list[str]:
    """Problems that span several keys, found on the raw data so they join field errors."""
    problems: list[str] = []
    ids: dict[str, str] = {}  # what is taken -> where it was first
    pins: dict[str, str] = {}
    ports: dict[str, str] = {}
    help_points = {h["id"] for _, h in _dict_items(raw, "help_points")
                   if isinstance(h.get("id"), str)}
    for section in ("help_points", "sensors"):
        for i, item in _dict_items(raw, section):
            where = f"{section}[{i}]"
            ident = item.get("id")
            if isinstance(ident, str):
                problems += _taken(ids, ident, f"{where}.id", f"id {ident!r}",
                                   "give each help point and sensor its own id")
            if section == "help_points":
                problems += _help_point_checks(where, item, raw, pins)
            else:
                problems += _sensor_checks(where, item, help_points, ports)
    problems.extend(_board_endpoints(raw))
    problems.extend(_distinct_lamp_patterns(raw))
    problems.extend(_plaintext_needs_opt_in(raw))
    problems.extend(_rule_checks(raw, ids))
    return problems


def _taken(seen: dict[str, str], key: str, where: str, what: str, fix: str) -> list[str]:
    """[] the first time `key` is claimed (at `where`); afterwards the problem, naming both."""
    if key in seen:
        return [f"{where}: {what} is already used by {seen[key].removesuffix('.id')} ({fix})"]
    seen[key] = where
    return []


def _help_point_checks(where: str, item: dict[str, Any], raw: dict[str, Any],
                       pins: dict[str, str]) -> list[str]:
    problems = _wiring(where, item, raw)
    for pin_key in ("pin", "lamp_pin", "sounder_pin"):
        pin = item.get(pin_key)
        if isinstance(pin, int | str):
            problems += _taken(pins, normalize_pin(pin), f"{where}.{pin_key}", f"pin {pin!r}",
                               "each button, lamp and sounder needs its own pin")
    return problems


def _sensor_checks(where: str, item: dict[str, Any], help_points: set[str],
                   ports: dict[str, str]) -> list[str]:
    problems = []
    near = item.get("help_points")
    for j, hp in enumerate(near if isinstance(near, list) else []):
        if isinstance(hp, str) and hp not in help_points:
            problems.append(
                f"{where}.help_points[{j}]: {hp!r} is not a configured help point "
                "(use one of the [[help_points]] ids)"
            )
    port = item.get("port")
    if isinstance(port, str):
        problems += _taken(ports, port, f"{where}.port", f"port {port!r}",
                           "one board per serial port")
    return problems


def _rule_checks(raw: dict[str, Any], ids: dict[str, str]) -> list[str]:
    problems = []
    seen: dict[tuple[str, str], tuple[str, str]] = {}
    for i, rule in _dict_items(raw, "rules"):
        kind, source, cls = rule.get("input"), rule.get("source", "*"), rule.get("class")
        if not all(isinstance(v, str) for v in (kind, source, cls)):
            continue
        key = (str(kind), str(source))
        if key in seen and seen[key][1] != cls:
            problems.append(
                f"rules[{i}]: input {kind!r} from source {source!r} is class {cls!r} here but "
                f"{seen[key][1]!r} in {seen[key][0]} (conflicting rules; keep one of them)"
            )
        seen.setdefault(key, (f"rules[{i}]", str(cls)))
        if source != "*" and source not in ids:
            problems.append(
                f"rules[{i}].source: {source!r} is not a configured help point or sensor id "
                "(use one of their ids, or '*')"
            )
    return problems


def _wiring(where: str, item: dict[str, Any], raw: dict[str, Any]) -> list[str]:
    """A help point is wired either to GPIO pins or to a serial board, completely."""
    gpio = [key for key in _GPIO_KEYS if key in item]
    board = [key for key in _BOARD_KEYS if key in item]
    if gpio and board:
        return [f"{where}: has GPIO keys ({', '.join(gpio)}) and board keys "
                f"({', '.join(board)}) (a help point is on GPIO pins or on a serial board: "
                "keep one set)"]
    if board:
        problems = []
        if "button" not in item:
            problems.append(f"{where}.button: missing (add the button's id on board "
                            f"{item.get('board')!r}, as its BTN frames name it)")
        if "board" not in item:
            problems.append(f"{where}.board: missing (add the [[sensors]] id of the board its "
                            "button and lamp are wired to)")
        elif isinstance(item["board"], str):
            boards = {s.get("id") for _, s in _dict_items(raw, "sensors")}
            if item["board"] not in boards:
                problems.append(f"{where}.board: {item['board']!r} is not a configured board "
                                "(add it under [[sensors]] with its port, or use one of their ids)")
        return problems
    return [f"{where}.{key}: missing (add the BCM pin of the "
            f"{'button' if key == 'pin' else 'lamp'}, or board and button for a help point on "
            "a serial board)" for key in ("pin", "lamp_pin") if key not in item]


def _board_endpoints(raw: dict[str, Any]) -> list[str]:
    """Each board button and board lamp serves one help point."""
    problems = []
    seen: dict[tuple[str, str, str], str] = {}
    for i, item in _dict_items(raw, "help_points"):
        board, button = item.get("board"), item.get("button")
        if not isinstance(board, str) or not isinstance(button, str):
            continue
        lamp = item.get("lamp", button)
        for key, value in (("button", button), ("lamp", lamp)):
            if not isinstance(value, str):
                continue
            where = f"help_points[{i}].{key}"
            other = seen.setdefault((board, key, value), where)
            if other != where:
                problems.append(f"{where}: {key} {value!r} of board {board!r} is already used by "
                                f"{other} (each board {key} serves one help point)")
    return problems


def _plaintext_needs_opt_in(raw: dict[str, Any]) -> list[str]:
    """mqtt:// to another machine only with mqtt.allow_plaintext = true."""
    mqtt = raw.get("mqtt", {})
    if isinstance(mqtt, dict) and mqtt.get("allow_plaintext") is True:
        return []
    problems = []
    for i, item in _dict_items(raw, "brokers"):
        url = item.get("url")
        if not isinstance(url, str) or not url.startswith("mqtt://"):
            continue
        try:
            host = urlsplit(url).hostname or ""
        except ValueError:
            continue  # a malformed URL is reported by the field check
        if loopback_host(host):
            continue
        problems.append(
            f"brokers[{i}].url: {masked_url(url)!r} sends alerts unencrypted (use mqtts:// with "
            "[mqtt.tls], or set mqtt.allow_plaintext = true on a trusted network)"
        )
    return problems


def _distinct_lamp_patterns(raw: dict[str, Any]) -> list[str]:
    """A rider must be able to tell every lamp state apart."""
    lamp = raw.get("lamp", {})
    if not isinstance(lamp, dict):
        return []
    defaults = LampConfig()
    seen: dict[tuple[float, float], str] = {}
    problems = []
    for state in (f.name for f in dataclasses.fields(LampConfig)):
        value = lamp.get(state, dataclasses.asdict(getattr(defaults, state)))
        if not isinstance(value, dict):
            continue
        on, off = value.get("on_s"), value.get("off_s")
        if not isinstance(on, int | float) or not isinstance(off, int | float):
            continue
        # All "off" patterns look alike, as do all "solid" ones.
        shape = (0.0, 0.0) if on == 0 else (1.0, 0.0) if off == 0 else (float(on), float(off))
        if shape in seen:
            problems.append(
                f"lamp.{state}: looks the same as lamp.{seen[shape]} (got {value!r}) (give each "
                "lamp state a distinct pattern so riders can tell them apart)"
            )
        else:
            seen[shape] = state
    return problems


def parse_config(raw: dict[str, Any], base_dir: Path | None = None) -> StationConfig:
    """Validate raw config data; raise ConfigError listing every problem found."""
    from pydantic import ValidationError  # noqa: PLC0415 - never in the daemon (module doc)

    from gateway.spec import adapter  # noqa: PLC0415

    problems: list[str] = []
    config: StationConfig | None = None
    try:
        config = adapter(StationConfig).validate_python(raw, context={"base_dir": base_dir})
    except ValidationError as exc:
        problems.extend(_format(err) for err in exc.errors())
    problems.extend(cross_check(raw))
    if problems or config is None:
        raise ConfigError(problems)
    return config


def load_config(
    path: Path, *, broker: str | None = None, store: Path | None = None
) -> StationConfig:
    """Read and validate a station config file, then apply a technician's overrides.

    `broker` replaces the file's broker endpoints with one URL and `store` the outbox path
    (`stationgw run --broker/--store`).
    """
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError([f"{path}: cannot read config file: {exc.strerror or exc}"]) from exc
    except UnicodeDecodeError as exc:
        raise ConfigError([f"{path}: config file is not UTF-8 text ({exc.reason})"]) from exc
    try:
        raw = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError([f"{path}: not valid TOML: {exc} (fix the syntax there)"]) from exc
    config = parse_config(raw, base_dir=path.resolve().parent)
    if broker is not None:
        config = dataclasses.replace(config, brokers=[_broker_override(broker)])
    if store is not None:
        config = dataclasses.replace(config, store=dataclasses.replace(config.store, path=store))
    return config


def _broker_override(url: str) -> BrokerEndpoint:
    from pydantic import ValidationError  # noqa: PLC0415 - never in the daemon (module doc)

    from gateway.spec import adapter  # noqa: PLC0415

    try:
        endpoint: BrokerEndpoint = adapter(BrokerEndpoint).validate_python({"url": url})
    except ValidationError as exc:
        msgs = [str(e["msg"]).removeprefix("Value error, ") for e in exc.errors()]
        raise ConfigError([f"--broker: {m}" for m in msgs]) from exc
    return endpoint


def load_config_isolated(
    path: Path, *, broker: str | None = None, store: Path | None = None
) -> StationConfig:
    """`load_config` in a forked child, so that pydantic never loads into this process.

    The child checks the file with pydantic and sends back the validated dataclasses (or
    the problems) through a pipe, pickled; it is our own child, so the pickle is trusted.
    A process that already has pydantic, or runs threads (fork would copy their locks
    mid-use), checks the file itself.
    """
    if "pydantic" in sys.modules or threading.active_count() > 1:
        return load_config(path, broker=broker, store=store)
    read_fd, write_fd = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: never returns
        code = 0
        try:
            os.close(read_fd)
            try:
                result: tuple[str, Any] = ("ok", load_config(path, broker=broker, store=store))
            except ConfigError as err:
                result = ("problems", err.problems)
            with os.fdopen(write_fd, "wb") as pipe:
                pickle.dump(result, pipe, protocol=pickle.HIGHEST_PROTOCOL)
        except BaseException:  # noqa: BLE001 - report anything, then leave without cleanup
            import traceback  # noqa: PLC0415

            traceback.print_exc()
            code = 70  # EX_SOFTWARE
        finally:
            os._exit(code)  # no atexit handlers, no flush of the parent's buffers
    os.close(write_fd)
    with os.fdopen(read_fd, "rb") as pipe:
        data = pipe.read()
    _, status = os.waitpid(pid, 0)
    code = os.waitstatus_to_exitcode(status)
    if code != 0 or not data:
        raise GatewayError(f"checking the config in a child process failed (exit code {code})")
    kind, value = pickle.loads(data)  # noqa: S301 - our own child's output (docstring)
    if kind == "problems":
        raise ConfigError(value)
    if not isinstance(value, StationConfig):
        raise GatewayError(f"the config check process sent a {type(value).__name__}")
    return value


def config_schema() -> dict[str, Any]:
    """JSON Schema of the station config file."""
    from gateway.spec import adapter  # noqa: PLC0415

    schema: dict[str, Any] = adapter(StationConfig).json_schema(by_alias=True)
    return schema
