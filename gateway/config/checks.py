"""Checks that span several keys of the station config, made on the raw data.

They run beside pydantic's field checks (`gateway.config.loading`), so that a technician sees
every problem at once: duplicate ids and pins, wiring that names a missing board, plaintext
brokers off the loopback, and lamp states that look alike.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from typing import Any
from urllib.parse import urlsplit

from gateway.config.models import (
    BOARD_KEYS,
    GPIO_KEYS,
    LampConfig,
    loopback_host,
    masked_url,
    normalize_pin,
)


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
    gpio = [key for key in GPIO_KEYS if key in item]
    board = [key for key in BOARD_KEYS if key in item]
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
