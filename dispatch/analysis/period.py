"""Periods as the planner writes them (`90d`, `12w`, `36h`): standard library only, so the
CLI and the web console can check one before pandas loads."""

from __future__ import annotations

import re

from dispatch.errors import InputError

WEEK_S = 7 * 24 * 3600


def parse_since(text: str) -> float:
    """A period as seconds: `90d`, `12w`, `36h`."""
    match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([hdw])\s*", text)
    if not match:
        raise InputError(f"--since {text!r}: give a length such as 90d, 12w or 36h")
    value = float(match.group(1)) * {"h": 3600, "d": 86400, "w": WEEK_S}[match.group(2)]
    if value <= 0:
        raise InputError(f"--since {text!r}: the period must be longer than zero")
    return value
