"""Station config validation, as a technician meets it through `stationgw`.

A bad config is refused with exit code 78 (EX_CONFIG, so systemd does not restart-loop), and
every problem is printed with its key path and the bad value, before anything is started.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import re
import subprocess
import sys
import tomllib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from gateway.config.loading import load_config, parse_config
from gateway.config.models import INPUT_KINDS, StationConfig
from gateway.errors import ConfigError
from gateway.ops import cli
from gateway.ops.install import permission_problems
from gateway.testing.config import to_toml

REPO = Path(__file__).resolve().parents[1]
EXAMPLE = REPO / "config" / "station.example.toml"
EX_CONFIG = 78  # sysexits.h; the contract with systemd, so not imported from the code under test
DELETE = object()  # marks a key a case removes

# ---------------------------------------------------------------------------- helpers


def valid_raw(store_dir: Path) -> dict[str, Any]:
    """A small valid station config, as parsed TOML, with its store under `store_dir`."""
    return {
        "station_id": "central-north",
        "brokers": [{"url": "mqtts://dispatch-a.example:8883"}, {"url": "mqtts://dispatch-b.example"}],
        "store": {"path": str(store_dir / "outbox.db"), "ttl_s": {"P3": 3600}},
        "help_points": [
            {"id": "hp-north", "pin": 17, "lamp_pin": 27, "sounder_pin": 22},
            {"id": "hp-south", "pin": 5, "lamp_pin": 6},
        ],
        "sensors": [{"id": "edge-beam", "port": "/dev/ttyUSB0", "baud": 115200}],
        "rules": [
            {"input": "help_point.press", "class": "P1"},
            {"input": "help_point.hold", "class": "P0"},
            {"input": "sensor.threshold", "source": "edge-beam", "class": "P0"},
        ],
    }


def apply(raw: dict[str, Any], path: str, value: object) -> None:
    """Set (or with DELETE remove) the key at `path`, e.g. "help_points[1].pin"; an index one
    past the end of a list appends."""
    parts: list[str | int] = [
        int(p[1:-1]) if p.startswith("[") else p for p in re.findall(r"\[\d+\]|[^.\[]+", path)
    ]
    node: Any = raw
    for part in parts[:-1]:
        node = node[part]
    last = parts[-1]
    if value is DELETE:
        del node[last]
    elif isinstance(last, int) and last == len(node):
        node.append(value)
    else:
        node[last] = value


def write_config(folder: Path, raw: dict[str, Any]) -> Path:
    """Write `raw` as TOML to folder/station.toml."""
    text = to_toml(raw)
    assert tomllib.loads(text) == raw, "the test's TOML writer is wrong"
    path = folder / "station.toml"
    path.write_text(text, encoding="utf-8")
    return path


def stationgw(*args: str | Path, cwd: Path = REPO) -> subprocess.CompletedProcess[str]:
    """Run the real CLI in a fresh interpreter."""
    return subprocess.run(
        [sys.executable, "-m", "gateway.ops.cli", *map(str, args)],
        capture_output=True,
        text=True,
        cwd=cwd,
        timeout=30,
        check=False,
    )


def problems_in(stderr: str) -> list[str]:
    """The problem lines `stationgw` printed."""
    return [line.removeprefix("  - ") for line in stderr.splitlines() if line.startswith("  - ")]


def assert_refused(result: subprocess.CompletedProcess[str], path: str, *values: str) -> None:
    """Exit 78 and a problem for key `path` that mentions every one of `values`."""
    assert result.returncode == EX_CONFIG, result.stdout + result.stderr
    named = [p for p in problems_in(result.stderr) if p.startswith(f"{path}: ")]
    assert named, f"no problem for {path!r} in:\n{result.stderr}"
    assert any(all(v in p for v in values) for p in named), (
        f"{values!r} not all in one problem for {path!r}:\n{result.stderr}"
    )
    assert "Traceback" not in result.stderr


# ---------------------------------------------------------------------------- bad configs

# (id, {key path: new value or DELETE}, key path of the problem, text the problem must contain)
BAD_CASES: list[tuple[str, dict[str, object], str, tuple[str, ...]]] = [
    ("missing-station-id", {"station_id": DELETE}, "station_id",
     ("Field required", "add this key")),
    ("station-id-pattern", {"station_id": "Central North"}, "station_id",
     ("'Central North'", "lowercase")),
    ("station-id-not-string", {"station_id": 42}, "station_id", ("42",)),
    ("duplicate-pin", {"help_points[1].pin": 17}, "help_points[1].pin",
     ("17", "help_points[0].pin")),
    ("lamp-pin-is-other-button", {"help_points[1].lamp_pin": 17}, "help_points[1].lamp_pin",
     ("17", "help_points[0].pin")),
    ("gpio-name-same-as-number", {"help_points[1].pin": "GPIO17"}, "help_points[1].pin",
     ("'GPIO17'", "help_points[0].pin")),
    ("bcm-name-same-as-number", {"help_points[1].sounder_pin": "bcm27"},
     "help_points[1].sounder_pin", ("'bcm27'", "help_points[0].lamp_pin")),
    ("duplicate-help-point-id", {"help_points[1].id": "hp-north"}, "help_points[1].id",
     ("'hp-north'", "help_points[0]")),
    ("sensor-id-same-as-help-point", {"sensors[0].id": "hp-south"}, "sensors[0].id",
     ("'hp-south'", "help_points[1]")),
    ("unknown-priority-class", {"rules[0].class": "P7"}, "rules[0].class", ("'P7'", "'P0'")),
    ("unknown-input-kind", {"rules[1].input": "help_point.smash"}, "rules[1].input",
     ("'help_point.smash'", "'help_point.press'")),
    ("conflicting-rules", {"rules[3]": {"input": "help_point.press", "class": "P2"}}, "rules[3]",
     ("'help_point.press'", "'P2'", "'P1'", "rules[0]")),
    ("conflicting-source-rules",
     {"rules[3]": {"input": "sensor.threshold", "source": "edge-beam", "class": "P2"}},
     "rules[3]", ("'edge-beam'", "'P2'", "'P0'", "rules[2]")),
    ("rule-source-unknown", {"rules[2].source": "edge-beam-9"}, "rules[2].source",
     ("'edge-beam-9'", "not a configured help point or sensor")),
    ("ca-file-missing", {"mqtt": {"tls": {"ca_file": "certs/missing-ca.pem"}}},
     "mqtt.tls.ca_file", ("missing-ca.pem", "does not exist")),
    ("ca-file-is-a-folder", {"mqtt": {"tls": {"ca_file": "."}}}, "mqtt.tls.ca_file",
     ("'.'", "folder")),
    ("ca-file-name-too-long", {"mqtt": {"tls": {"ca_file": "c" * 300}}}, "mqtt.tls.ca_file",
     ("c" * 300, "cannot be checked")),
    ("client-key-missing", {"mqtt": {"tls": {"key_file": "/etc/stationgw/no-such.key"}}},
     "mqtt.tls.key_file", ("/etc/stationgw/no-such.key",)),
    ("password-file-missing", {"mqtt": {"username": "cn", "password_file": "mqtt-password"}},
     "mqtt.password_file", ("mqtt-password", "does not exist")),
    ("ttl-for-p0", {"store.ttl_s": {"P0": 60}}, "store.ttl_s", ("P0", "never expire")),
    ("ttl-for-p1", {"store.ttl_s": {"P3": 60, "P1": 600}}, "store.ttl_s", ("P1", "never expire")),
    ("ttl-not-positive", {"store.ttl_s": {"P3": -5}}, "store.ttl_s", ("P3", "-5")),
    ("broker-http-scheme", {"brokers[0].url": "http://dispatch-a.example:1883"}, "brokers[0].url",
     ("'http://dispatch-a.example:1883'", "mqtt://")),
    ("broker-bad-port", {"brokers[1].url": "mqtt://dispatch-b.example:99999"}, "brokers[1].url",
     ("99999", "port")),
    ("brokers-empty", {"brokers": []}, "brokers", ("at least 1", "[]")),
    ("brokers-missing", {"brokers": DELETE}, "brokers", ("Field required",)),
    ("typo-top-level", {"station_idd": "x"}, "station_idd", ("not permitted", "spelling")),
    ("typo-in-table", {"mqtt": {"keepalive": 30}}, "mqtt.keepalive", ("30", "spelling")),
    ("typo-in-nested-table", {"mqtt": {"tls": {"cafile": "ca.pem"}}}, "mqtt.tls.cafile",
     ("'ca.pem'",)),
    ("typo-in-list-of-tables", {"help_points[1].lamp_pn": 6}, "help_points[1].lamp_pn",
     ("6", "spelling")),
    ("typo-in-rule", {"rules[1].clas": "P0"}, "rules[1].clas", ("'P0'",)),
    ("pin-out-of-range", {"help_points[1].pin": 40}, "help_points[1].pin", ("40", "0-27")),
    ("pin-name-out-of-range", {"help_points[1].lamp_pin": "GPIO40"}, "help_points[1].lamp_pin",
     ("'GPIO40'", "0-27")),
    ("pin-negative", {"help_points[0].sounder_pin": -1}, "help_points[0].sounder_pin", ("-1",)),
    ("duplicate-serial-port", {"sensors[1]": {"id": "crowd", "port": "/dev/ttyUSB0"}},
     "sensors[1].port", ("'/dev/ttyUSB0'", "sensors[0].port")),
    ("bad-baud", {"sensors[0].baud": 12345}, "sensors[0].baud", ("12345", "115200")),
    ("bad-pin-factory", {"gpio_pin_factory": "rpi"}, "gpio_pin_factory", ("'rpi'", "'lgpio'")),
    ("bad-topic-prefix", {"mqtt": {"topic_prefix": "stationgw/#"}}, "mqtt.topic_prefix",
     ("'stationgw/#'",)),
    ("number-out-of-bounds", {"mqtt": {"keepalive_s": 1}}, "mqtt.keepalive_s", ("5", "(got 1)")),
    ("help-points-not-a-list", {"help_points": {"id": "hp-x"}}, "help_points", ("list",)),
    ("help-point-without-pin", {"help_points[1].pin": DELETE}, "help_points[1].pin",
     ("missing", "board and button")),
    ("help-point-on-gpio-and-board", {"help_points[1].board": "edge-beam",
                                      "help_points[1].button": "b1"},
     "help_points[1]", ("pin", "board", "keep one set")),
    ("board-help-point-unknown-board",
     {"help_points[2]": {"id": "hp-panel", "board": "panel-9", "button": "b1"}},
     "help_points[2].board", ("'panel-9'", "[[sensors]]")),
    ("board-help-point-without-button",
     {"help_points[2]": {"id": "hp-panel", "board": "edge-beam"}},
     "help_points[2].button", ("missing", "'edge-beam'")),
    ("board-button-used-twice",
     {"help_points[0]": {"id": "hp-north", "board": "edge-beam", "button": "b1"},
      "help_points[1]": {"id": "hp-south", "board": "edge-beam", "button": "b1", "lamp": "l2"}},
     "help_points[1].button", ("'b1'", "'edge-beam'", "help_points[0].button")),
    ("board-button-id-too-long",
     {"help_points[2]": {"id": "hp-panel", "board": "edge-beam", "button": "b" * 17}},
     "help_points[2].button", ("b" * 17,)),
]
# Cases also run through `stationgw run`, which must refuse them before opening anything.
RUN_CASES = {
    "missing-station-id", "duplicate-pin", "unknown-priority-class", "conflicting-rules",
    "ca-file-missing", "typo-in-list-of-tables", "board-help-point-unknown-board",
}


@pytest.fixture
def valid(tmp_path: Path) -> dict[str, Any]:
    """A valid config for this test, its store under tmp_path/state (which does not exist)."""
    return valid_raw(tmp_path / "state")


def test_the_valid_base_config_passes(tmp_path: Path, valid: dict[str, Any]) -> None:
    """Guards every bad-config case: each fails only because of its own change."""
    result = stationgw("check-config", write_config(tmp_path, valid))
    assert result.returncode == 0, result.stderr
    assert "ok (station central-north" in result.stdout
    assert result.stderr == ""


@pytest.mark.parametrize(
    ("changes", "path", "values"), [pytest.param(*c[1:], id=c[0]) for c in BAD_CASES]
)
def test_check_config_refuses_bad_config_naming_key_and_value(
    tmp_path: Path, valid: dict[str, Any], changes: dict[str, object], path: str,
    values: tuple[str, ...],
) -> None:
    for key, value in changes.items():
        apply(valid, key, value)
    config = write_config(tmp_path, valid)
    result = stationgw("check-config", config)
    assert_refused(result, path, *values)
    assert result.stderr.startswith(f"{config}: ")


@pytest.mark.parametrize(
    ("changes", "path", "values"),
    [pytest.param(*c[1:], id=c[0]) for c in BAD_CASES if c[0] in RUN_CASES],
)
def test_run_refuses_bad_config_before_opening_the_store(
    tmp_path: Path, valid: dict[str, Any], changes: dict[str, object], path: str,
    values: tuple[str, ...],
) -> None:
    for key, value in changes.items():
        apply(valid, key, value)
    result = stationgw("run", "--config", write_config(tmp_path, valid))
    assert_refused(result, path, *values)
    assert not (tmp_path / "state").exists(), "run created the store before checking the config"
    assert "starting" not in result.stdout


def test_run_refuses_bad_broker_override_before_opening_the_store(
    tmp_path: Path, valid: dict[str, Any]
) -> None:
    config = write_config(tmp_path, valid)
    result = stationgw("run", "--config", config, "--broker", "http://localhost:1883")
    assert_refused(result, "--broker", "'http://localhost:1883'")
    assert not (tmp_path / "state").exists()


def test_unreadable_certificate_is_refused(tmp_path: Path, valid: dict[str, Any]) -> None:
    if os.geteuid() == 0:
        pytest.skip("root can read a mode 000 file; the missing-file cases cover this as root")
    ca = tmp_path / "ca.pem"
    ca.write_text("not really a certificate\n")
    ca.chmod(0)
    valid["mqtt"] = {"tls": {"ca_file": "ca.pem"}}
    result = stationgw("check-config", write_config(tmp_path, valid))
    assert_refused(result, "mqtt.tls.ca_file", "ca.pem", "not readable")


# ---------------------------------------------------------------------------- bad files


def test_invalid_toml_is_refused_with_its_line(tmp_path: Path) -> None:
    config = tmp_path / "station.toml"
    config.write_text('station_id = "central-north"\n[[brokers]\nurl = "mqtt://h"\n')
    for args in (("check-config", config), ("run", "--config", config)):
        result = stationgw(*args)
        assert_refused(result, str(config), "not valid TOML", "line 2")


def test_missing_config_file_is_refused(tmp_path: Path) -> None:
    config = tmp_path / "nowhere" / "station.toml"
    for args in (("check-config", config), ("run", "--config", config)):
        result = stationgw(*args)
        assert_refused(result, str(config), "cannot read config file", "No such file")


def test_config_that_is_not_utf8_is_refused(tmp_path: Path) -> None:
    config = tmp_path / "station.toml"
    config.write_bytes(b'station_id = "gare-\xe9"\n')
    assert_refused(stationgw("check-config", config), str(config), "not UTF-8")


def test_every_problem_is_printed_not_just_the_first(
    tmp_path: Path, valid: dict[str, Any]
) -> None:
    del valid["station_id"]  # field error
    valid["help_points"][1].update(pin="GPIO17", lamp_pin=40)  # cross-check + field error
    valid["help_points"].append({"id": "hp-north", "pin": 12, "lamp_pin": 13})  # duplicate id
    valid["mqtt"] = {"keepalive": 30}  # typo
    valid["rules"] += [
        {"input": "help_point.press", "class": "P3"},  # conflicts with rules[0]
        {"input": "help_point.hold", "source": "hp-east", "class": "P7"},  # two problems
    ]
    valid["sensors"][0]["baud"] = 1200
    result = stationgw("check-config", write_config(tmp_path, valid))
    expected = [
        ("station_id", "Field required"),
        ("help_points[1].pin", "'GPIO17'"),
        ("help_points[1].lamp_pin", "40"),
        ("help_points[2].id", "'hp-north'"),
        ("mqtt.keepalive", "30"),
        ("rules[3]", "'P3'"),
        ("rules[4].class", "'P7'"),
        ("rules[4].source", "'hp-east'"),
        ("sensors[0].baud", "1200"),
    ]
    for path, value in expected:
        assert_refused(result, path, value)
    problems = problems_in(result.stderr)
    assert len(problems) == len(expected), result.stderr
    assert f"{len(expected)} problem(s)" in result.stderr.splitlines()[0]


def test_the_example_config_passes() -> None:
    result = stationgw("check-config", EXAMPLE)
    assert result.returncode == 0, result.stderr
    assert "ok (station central-north" in result.stdout


# ---------------------------------------------------------------------------- paths


def test_relative_paths_resolve_against_the_config_folder(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    site = tmp_path / "etc" / "stationgw"
    (site / "certs").mkdir(parents=True)
    for name in ("certs/ca.pem", "certs/client.pem", "certs/client.key", "mqtt-password"):
        (site / name).write_text("x\n")
    raw = valid_raw(Path("state"))  # relative store path
    raw["mqtt"] = {
        "password_file": "mqtt-password",
        "tls": {"ca_file": "certs/ca.pem", "cert_file": "certs/client.pem",
                "key_file": str(site / "certs/client.key")},
    }
    config_path = write_config(site, raw)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)

    config = load_config(Path("..") / "etc" / "stationgw" / "station.toml")

    site = site.resolve()
    assert config.store.path == site / "state" / "outbox.db"
    assert config.mqtt.password_file == site / "mqtt-password"
    assert config.mqtt.tls.ca_file == site / "certs" / "ca.pem"
    assert config.mqtt.tls.cert_file == site / "certs" / "client.pem"
    assert config.mqtt.tls.key_file == site / "certs" / "client.key"
    assert stationgw("check-config", config_path, cwd=elsewhere).returncode == 0


def test_relative_paths_are_not_resolved_against_the_working_folder(
    tmp_path: Path, valid: dict[str, Any]
) -> None:
    (tmp_path / "cwd").mkdir()
    (tmp_path / "cwd" / "ca.pem").write_text("x\n")  # beside the technician, not the config
    (tmp_path / "conf").mkdir()
    valid["mqtt"] = {"tls": {"ca_file": "ca.pem"}}
    result = stationgw("check-config", write_config(tmp_path / "conf", valid), cwd=tmp_path / "cwd")
    assert_refused(result, "mqtt.tls.ca_file", str(tmp_path / "conf" / "ca.pem"))


# ---------------------------------------------------------------------------- CLI surface


def test_config_schema_prints_json_schema_of_the_file() -> None:
    result = stationgw("config-schema")
    assert result.returncode == 0, result.stderr
    schema = json.loads(result.stdout)
    assert {"station_id", "brokers", "store", "help_points", "rules"} <= set(schema["properties"])
    assert "station_id" in schema["required"]
    # keys as written in TOML: a rule's class is `class`, not the model's field name
    assert "class" in schema["$defs"]["Rule"]["properties"]


def _subcommands() -> dict[str, str]:
    """Each `stationgw` subcommand and its one-line help."""
    parser = cli.build_parser()
    (sub,) = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    helps = {a.dest: a.help or "" for a in sub._choices_actions}
    return {name: helps.get(name, "") for name in sub.choices}


@pytest.mark.parametrize("command", sorted(_subcommands()))
def test_every_subcommand_has_help(command: str) -> None:
    assert _subcommands()[command], f"`stationgw {command}` has no help in `stationgw --help`"
    result = stationgw(command, "--help")
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith(f"usage: stationgw {command}")
    assert len(result.stdout.splitlines()) > 2  # a description, not only the usage line


def test_top_level_help_lists_every_subcommand() -> None:
    result = stationgw("--help")
    assert result.returncode == 0
    for command in _subcommands():
        assert command in result.stdout


# ---------------------------------------------------------------------------- properties

scalars = st.one_of(
    st.none(), st.booleans(), st.integers(-(2**63), 2**63 - 1), st.floats(), st.text(max_size=12)
)
json_values = st.recursive(
    scalars,
    lambda kids: st.one_of(
        st.lists(kids, max_size=3), st.dictionaries(st.text(max_size=8), kids, max_size=3)
    ),
    max_leaves=8,
)


def maybe(valid_values: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
    """Mostly plausible values, sometimes anything at all."""
    return st.one_of(valid_values, valid_values, json_values)


def table(**fields: st.SearchStrategy[Any]) -> st.SearchStrategy[dict[str, Any]]:
    """A table with any subset of `fields`, plus sometimes an unknown key."""
    return st.builds(
        lambda known, extra: {**extra, **known},
        st.fixed_dictionaries({}, optional={k: maybe(v) for k, v in fields.items()}),
        st.dictionaries(st.text(max_size=6), json_values, max_size=1),
    )


ids = st.sampled_from(["hp-a", "hp-b", "beam", "Bad Id", "", "a" * 70])
pins = st.integers(-2, 45) | st.sampled_from(["GPIO17", "BCM4", "gpio5", " 17 ", "GPIO40", "x"])
files = st.sampled_from(["ca.pem", "missing.pem", ".", "", "a" * 300, "/dev/null"]) | st.text(
    max_size=8
)
station_configs = table(
    station_id=ids,
    brokers=st.lists(
        table(url=st.sampled_from(
            ["mqtt://h", "mqtts://h:8883", "http://h", "mqtt://h:99999", "mqtt://", "mqtt://[::1"]
        )),
        max_size=3,
    ),
    mqtt=table(
        protocol=st.sampled_from(["5", "3.1.1", "4"]),
        keepalive_s=st.integers(0, 5000),
        topic_prefix=st.sampled_from(["a/b", "#", "/x", ""]),
        password_file=files,
        tls=table(ca_file=files, cert_file=files, key_file=files),
    ),
    store=table(
        path=st.text(max_size=8),
        max_rows=st.integers(0, 10**6),
        ttl_s=st.dictionaries(st.sampled_from(["P0", "P1", "P2", "P3", "P9"]), scalars, max_size=3),
    ),
    gpio_pin_factory=st.sampled_from(["auto", "mock", "rpi"]),
    lamp=table(**{
        state: table(on_s=st.sampled_from([0, 0.5, 1, -1, 100]), off_s=st.sampled_from([0, 1.5]))
        for state in ("idle", "accepted", "sent", "acknowledged", "fault", "blinking")
    }),
    help_points=st.lists(
        table(id=ids, pin=pins, lamp_pin=pins, sounder_pin=pins, hold_time_s=st.floats(-1, 40)),
        max_size=4,
    ),
    sensors=st.lists(
        table(id=ids, port=st.sampled_from(["/dev/ttyUSB0", "/dev/ttyUSB1"]),
              baud=st.sampled_from([9600, 115200, 12345])),
        max_size=3,
    ),
    rules=st.lists(
        table(**{
            "input": st.sampled_from([*INPUT_KINDS, "help_point.smash"]),
            "source": st.sampled_from(["*", "hp-a", "beam", "nowhere"]),
            "class": st.sampled_from(["P0", "P1", "P2", "P3", "P7"]),
        }),
        max_size=4,
    ),
)


@pytest.fixture(scope="module")
def scratch(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A config folder holding a readable ca.pem, shared by a property's examples."""
    folder = tmp_path_factory.mktemp("property")
    (folder / "ca.pem").write_text("x\n")
    return folder


def assert_valid_or_config_error(raw: dict[str, Any], base_dir: Path) -> None:
    """The contract: a StationConfig, or ConfigError with non-empty problems; nothing else."""
    try:
        result: StationConfig | ConfigError = parse_config(raw, base_dir=base_dir)
    except ConfigError as err:
        result = err
    if isinstance(result, ConfigError):
        assert result.problems
        assert all(isinstance(p, str) and ": " in p and p.strip() for p in result.problems)
    else:
        assert isinstance(result, StationConfig)


@settings(deadline=None, max_examples=300, suppress_health_check=[HealthCheck.too_slow])
@given(raw=station_configs | st.dictionaries(st.text(max_size=10), json_values, max_size=5))
@example(raw={"station_id": "s", "brokers": [{"url": "mqtt://h"}],
               "mqtt": {"password_file": "p" * 300}})
@example(raw={"help_points": [{"id": ["x"], "pin": [1]}], "rules": [{"source": {"a": 1}}]})
def test_parse_config_returns_config_or_config_error(scratch: Path, raw: dict[str, Any]) -> None:
    assert_valid_or_config_error(raw, scratch)


def _no_none(value: Any) -> Any:
    """`value` without None anywhere, since TOML has no null."""
    if isinstance(value, dict):
        return {k: _no_none(v) for k, v in value.items() if v is not None}
    if isinstance(value, list):
        return [_no_none(v) for v in value if v is not None]
    return value


@settings(deadline=None, max_examples=150)
@given(raw=station_configs.map(_no_none), junk=st.none() | st.text(max_size=40))
def test_check_config_exits_0_or_78_never_crashes(
    scratch: Path, raw: dict[str, Any], junk: str | None
) -> None:
    """Whatever a technician writes, `check-config` answers; it never shows a traceback."""
    path = scratch / "station.toml"
    path.write_text(to_toml(raw) if junk is None else junk, encoding="utf-8")
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = cli.main(["check-config", str(path)])
    if code == 0:
        assert "ok" in out.getvalue()
    else:
        assert code == EX_CONFIG
        assert problems_in(err.getvalue())


def _spellings(n: int) -> Iterator[int | str]:
    yield from (n, str(n), f"GPIO{n}", f"BCM{n}", f"gpio{n}", f" {n} ")


@settings(deadline=None)
@given(
    n=st.integers(0, 27),
    first=st.integers(0, 5),
    second=st.integers(0, 5),
    key=st.sampled_from(["pin", "lamp_pin", "sounder_pin"]),
)
def test_any_two_spellings_of_one_pin_collide(
    scratch: Path, n: int, first: int, second: int, key: str
) -> None:
    spellings = list(_spellings(n))
    others = [p for p in range(28) if p != n][:4]
    raw = {
        "station_id": "s",
        "brokers": [{"url": "mqtts://h"}],
        "help_points": [
            {"id": "a", "pin": spellings[first], "lamp_pin": others[0]},
            {"id": "b", "pin": others[1], "lamp_pin": others[2], key: spellings[second]},
        ],
    }
    with pytest.raises(ConfigError) as caught:
        parse_config(raw, base_dir=scratch)
    assert caught.value.problems == [
        f"help_points[1].{key}: pin {spellings[second]!r} is already used by help_points[0].pin "
        "(each button, lamp and sounder needs its own pin)"
    ]


def test_plaintext_to_another_machine_needs_an_explicit_opt_in(
    tmp_path: Path, valid: dict[str, Any]
) -> None:
    valid["brokers"] = [{"url": "mqtt://dispatch-a.example:1883"}]
    refused = stationgw("check-config", write_config(tmp_path, valid))
    assert_refused(refused, "brokers[0].url", "unencrypted", "allow_plaintext")
    valid["mqtt"] = {"allow_plaintext": True}
    assert stationgw("check-config", write_config(tmp_path, valid)).returncode == 0
    valid["brokers"] = [{"url": "mqtt://127.0.0.1:1883"}]  # on this machine only
    del valid["mqtt"]
    assert stationgw("check-config", write_config(tmp_path, valid)).returncode == 0


# ------------------------------------------------------------------ config and secrets

# Not "*": the mask itself is "***", so a user name of stars would look echoed when it is not.
USERINFO_CHARS = st.characters(
    codec="ascii", categories=("L", "N"), include_characters="-._~!$&'()+,;=%"
)


@settings(deadline=None, max_examples=200)
@given(
    user=st.text(USERINFO_CHARS, min_size=1, max_size=16),
    password=st.none() | st.text(USERINFO_CHARS, min_size=4, max_size=24),
    scheme=st.sampled_from(["mqtt", "mqtts"]),
    index=st.integers(0, 1),
)
def test_credentials_in_a_broker_url_are_refused_and_never_echoed(
    scratch: Path, user: str, password: str | None, scheme: str, index: int
) -> None:
    raw = valid_raw(scratch)
    secret = f"{user}:{password}" if password is not None else user
    raw["brokers"][index] = {"url": f"{scheme}://{secret}@dispatch-x.example:8883"}
    with pytest.raises(ConfigError) as caught:
        parse_config(raw, base_dir=scratch)
    problems = caught.value.problems
    assert any(p.startswith(f"brokers[{index}].url: ") and "credentials" in p
               and "mqtt.password_file" in p for p in problems), problems
    text = "\n".join(problems)
    assert f"{secret}@" not in text, text
    assert f"{scheme}://***@dispatch-x.example:8883" in text, text


def test_check_config_refuses_credentials_in_a_url_with_78_and_hides_them(
    tmp_path: Path, valid: dict[str, Any]
) -> None:
    valid["brokers"] = [{"url": "mqtts://station:hunter2-secret@dispatch-a.example:8883"}]
    result = stationgw("check-config", write_config(tmp_path, valid))
    assert_refused(result, "brokers[0].url", "credentials", "mqtt.password_file", "***@")
    assert "hunter2-secret" not in result.stdout + result.stderr


LOOPBACK_V4 = st.ip_addresses(v=4, network="127.0.0.0/8").map(str)
NOT_LOOPBACK = (
    st.from_regex(r"127\.[a-z][a-z0-9-]{0,12}(\.[a-z]{2,6})?", fullmatch=True)  # a name
    | st.from_regex(r"127\.[0-9]{1,3}\.[a-z]{1,8}\.example", fullmatch=True)
    | st.ip_addresses(v=4).filter(lambda a: not a.is_loopback).map(str)
    | st.ip_addresses(v=6).filter(lambda a: not a.is_loopback).map(lambda a: f"[{a}]")
)


@settings(deadline=None, max_examples=200)
@given(host=LOOPBACK_V4 | st.just("[::1]") | st.just("localhost"))
def test_plaintext_to_a_loopback_address_needs_no_opt_in(scratch: Path, host: str) -> None:
    raw = valid_raw(scratch)
    raw["brokers"] = [{"url": f"mqtt://{host}:1883"}]
    config = parse_config(raw, base_dir=scratch)
    assert config.brokers[0].loopback


@settings(deadline=None, max_examples=300)
@given(host=NOT_LOOPBACK)
def test_plaintext_to_any_other_host_needs_the_opt_in_whatever_its_name(
    scratch: Path, host: str
) -> None:
    raw = valid_raw(scratch)
    raw["brokers"] = [{"url": f"mqtt://{host}:1883"}]
    with pytest.raises(ConfigError) as caught:
        parse_config(raw, base_dir=scratch)
    assert any(p.startswith("brokers[0].url: ") and "unencrypted" in p
               for p in caught.value.problems), caught.value.problems


needs_root = pytest.mark.skipif(
    os.geteuid() != 0,
    reason="only root can give a file to another user; CI runs as root",
)


@needs_root
@settings(deadline=None, max_examples=60)
@given(uid=st.integers(1, 65534), which=st.sampled_from(["config", "mqtt.password_file",
                                                         "mqtt.tls.key_file", "mqtt.tls.ca_file"]))
def test_a_file_another_user_owns_is_refused(scratch: Path, uid: int, which: str) -> None:
    files = {name: scratch / name.replace(".", "-") for name in
             ("config", "mqtt.password_file", "mqtt.tls.key_file", "mqtt.tls.ca_file")}
    for path in files.values():
        path.write_text("x\n")
        path.chmod(0o600)
        os.chown(path, 0, 0)
    secrets = {k: files[k] for k in ("mqtt.password_file", "mqtt.tls.key_file")}
    assert permission_problems(files["config"], secrets, {"mqtt.tls.ca_file":
                                                          files["mqtt.tls.ca_file"]}) == []
    os.chown(files[which], uid, 0)
    problems = permission_problems(files["config"], secrets,
                                   {"mqtt.tls.ca_file": files["mqtt.tls.ca_file"]})
    where = str(files["config"]) if which == "config" else which
    assert [p for p in problems if p.startswith(f"{where}: ") and f"uid {uid}" in p
            and "chown root" in p], problems


@needs_root
def test_run_refuses_a_config_or_password_file_owned_by_another_user(
    tmp_path: Path, valid: dict[str, Any]
) -> None:
    secret = tmp_path / "mqtt-password"
    secret.write_text("pw\n")
    secret.chmod(0o600)
    valid["brokers"] = [{"url": "mqtt://127.0.0.1:1"}]
    valid["mqtt"] = {"username": "cn", "password_file": "mqtt-password"}
    config = write_config(tmp_path, valid)
    for path, key in ((config, str(config)), (secret, "mqtt.password_file")):
        os.chown(path, 65534, 65534)  # nobody
        result = stationgw("run", "--config", config)
        assert result.returncode == EX_CONFIG, result.stderr
        assert any(p.startswith(f"{key}: ") and "uid 65534" in p and "chown root" in p
                   for p in problems_in(result.stderr)), result.stderr
        os.chown(path, 0, 0)
    assert not (tmp_path / "state").exists()  # refused before the store was opened
