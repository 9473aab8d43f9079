"""The config reference in docs/ is generated from the models and stays true to them."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

from gateway.config.loading import config_schema
from gateway.contract.configdoc import render_reference

REFERENCE = Path(__file__).resolve().parents[1] / "docs" / "config-reference.md"


def test_checked_in_reference_matches_the_models() -> None:
    assert REFERENCE.read_text(encoding="utf-8") == render_reference(), (
        "docs/config-reference.md is stale; regenerate it with "
        "`python -m gateway.contract.configdoc > docs/config-reference.md`"
    )


def _keys(schema: dict[str, Any]) -> set[str]:
    """Every property name of every object in the JSON Schema."""
    objects = [schema, *schema.get("$defs", {}).values()]
    return {name for obj in objects for name in obj.get("properties", {})}


def test_reference_has_a_row_for_every_key_in_the_json_schema() -> None:
    text = render_reference()
    schema = config_schema()
    missing = sorted(k for k in _keys(schema) if f"\n| `{k}` |" not in text)
    assert not missing, f"keys missing from the config reference: {missing}"
    for section in ("[[brokers]]", "[mqtt]", "[mqtt.tls]", "[store]", "[[help_points]]",
                    "[[sensors]]", "[[rules]]"):
        assert f"## `{section}`" in text


def test_reference_shows_types_defaults_and_descriptions() -> None:
    text = render_reference()
    assert "| `station_id` | `string` | required | matches `^[a-z0-9][a-z0-9_-]{0,62}$` |" in text
    assert "| `keepalive_s` | `integer` | `30` | >= 5, <= 3600 |" in text
    assert '| `class` | `"P0" \\| "P1" \\| "P2" \\| "P3"` | required |' in text
    assert "| `lamp_pin` | `integer \\| string` | unset |  | GPIO: BCM pin of the lamp |" in text


def test_module_prints_the_reference() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "gateway.contract.configdoc"],
        capture_output=True, text=True, timeout=30, check=False,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout == render_reference()
