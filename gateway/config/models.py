"""The station config's models: typed frozen dataclasses, one per table of the TOML file.

Every problem is reported with its key path, the bad value and the fix, and all problems
are reported together (`ConfigError.problems`), not just the first.

The models are frozen dataclasses whose annotations carry pydantic's constraints and
descriptions; pydantic checks them (`gateway.contract.spec`). The daemon never imports pydantic: it
checks its config in a short-lived child process (`load_config_isolated`) and gets back the
same dataclasses, so that pydantic's memory never enters the long-running process.
"""

from __future__ import annotations

import ipaddress
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Literal, get_args
from urllib.parse import urlsplit

from gateway.core.model import Priority, PriorityName

if TYPE_CHECKING:  # at run time gateway.contract.spec provides these where pydantic checks
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
ID_HELP = "use 1-63 lowercase letters, digits, '-' or '_'"


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
GPIO_KEYS = ("pin", "lamp_pin", "sounder_pin", "lamp_pwm")
BOARD_KEYS = ("board", "button", "lamp")


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
