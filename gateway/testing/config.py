"""Station configs for the tests, the benchmarks and the demo: a valid config for a folder
and a broker, help points on mock pins, and the config as a TOML file for a daemon."""

from __future__ import annotations

import json
import math
import uuid
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from gateway.config.loading import parse_config
from gateway.config.models import StationConfig

#: Reconnect quickly, so that a broker outage costs a test or a benchmark well under a second.
FAST_RECONNECT: dict[str, Any] = {"reconnect_initial_s": 0.05, "reconnect_max_s": 0.5}


def merged(raw: dict[str, Any], overrides: dict[str, Any]) -> dict[str, Any]:
    """`raw` with `overrides` on top; a table overriding a table is merged into it, key by key."""
    out = dict(raw)
    for key, value in overrides.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = {**out[key], **value}
        else:
            out[key] = value
    return out


def station_data(folder: Path, broker_urls: str | Sequence[str], *, id_prefix: str = "t",
                 fast_reconnect: bool = True, **overrides: Any) -> dict[str, Any]:
    """Station config data with a unique station id (so that topics never collide), the
    outbox in `folder` and fast reconnects (`fast_reconnect=False`: the config's defaults);
    `overrides` on top (see `merged`)."""
    urls = [broker_urls] if isinstance(broker_urls, str) else list(broker_urls)
    raw: dict[str, Any] = {
        "station_id": f"{id_prefix}-{uuid.uuid4().hex[:12]}",
        "brokers": [{"url": url} for url in urls],
        "store": {"path": str(folder / "outbox.db")},
    }
    if fast_reconnect:
        raw["mqtt"] = dict(FAST_RECONNECT)
    return merged(raw, overrides)


def station_config(folder: Path, broker_urls: str | Sequence[str], *, id_prefix: str = "t",
                   fast_reconnect: bool = True, **overrides: Any) -> StationConfig:
    """A validated station config (see `station_data`)."""
    return parse_config(station_data(folder, broker_urls, id_prefix=id_prefix,
                                     fast_reconnect=fast_reconnect, **overrides))


def mock_help_points(n: int) -> list[dict[str, Any]]:
    """`n` help points on distinct mock BCM pins (button 2+2i, lamp 3+2i)."""
    return [
        {"id": f"hp-{i + 1}", "location": f"bench {i + 1}", "pin": 2 + 2 * i,
         "lamp_pin": 3 + 2 * i}
        for i in range(n)
    ]


def toml_value(value: Any) -> str:
    """`value` as a TOML value; tables are written inline so any nesting fits on one line."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        if math.isnan(value):
            return "nan"
        return ("-inf" if value < 0 else "inf") if math.isinf(value) else repr(value)
    if isinstance(value, str):
        # TOML basic strings take JSON's escapes, but not a raw DEL
        return json.dumps(value, ensure_ascii=False).replace("\x7f", "\\u007f")
    if isinstance(value, list):
        return "[" + ", ".join(toml_value(v) for v in value) + "]"
    if isinstance(value, dict):
        pairs = ", ".join(f"{toml_value(k)} = {toml_value(v)}" for k, v in value.items())
        return "{ " + pairs + " }"
    raise TypeError(f"TOML has no {type(value).__name__} value")


def to_toml(raw: dict[str, Any]) -> str:
    """A TOML document whose parse is `raw` (TOML has no null, so drop None values first)."""
    return "".join(f"{toml_value(k)} = {toml_value(v)}\n" for k, v in raw.items())


def write_config(path: Path, raw: dict[str, Any]) -> Path:
    """Write `raw` as TOML to `path`, for `stationgw run --config`; returns `path`."""
    path.write_text(to_toml(raw), encoding="utf-8")
    return path
