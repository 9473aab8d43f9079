"""The console's arguments, first in the flow: broker URL, topic filter, teams and actions.

No I/O: strings in, validated values out, or a `ConsoleUsageError` that names the fix.
"""

from __future__ import annotations

from pydantic import ValidationError

from dispatch.console.errors import ConsoleUsageError
from gateway.commands import Action, Team
from gateway.config import BrokerEndpoint
from gateway.spec import adapter

PREFIX = "stationgw/v1"
TEAMS: tuple[Team, ...] = ("crisis_team", "co_response", "ambassador", "emergency_services")
ACTIONS: dict[str, Action] = {
    "ack": "acknowledge", "acknowledge": "acknowledge", "assign": "assign",
    "resolve": "resolve", "cancel": "cancel",
}


def parse_broker_url(url: str) -> tuple[str, int]:
    """`mqtt://host:port` -> (host, port); the port is 1883 when not given."""
    try:
        endpoint: BrokerEndpoint = adapter(BrokerEndpoint).validate_python({"url": url})
    except ValidationError as exc:
        msg = "; ".join(str(e["msg"]).removeprefix("Value error, ") for e in exc.errors())
        raise ConsoleUsageError(f"--broker: {msg}") from exc
    if endpoint.tls:
        raise ConsoleUsageError(
            f"--broker: {url!r}: the console speaks plain mqtt:// only (use mqtt://HOST:PORT)"
        )
    return endpoint.host, endpoint.port


def events_filter(prefix: str = PREFIX, share: str | None = None) -> str:
    """Every station's events; `$share/GROUP/...` when workers split the stream."""
    topic = f"{prefix}/+/events/#"
    if share is None:
        return topic
    if not share or any(c in share for c in "/+#"):
        raise ConsoleUsageError(
            f"--share: {share!r} is not a share group name (use letters, digits, - or _; "
            "no /, + or #)"
        )
    return f"$share/{share}/{topic}"
