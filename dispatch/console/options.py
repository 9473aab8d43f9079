"""The console's arguments, first in the flow: broker URL, topic filter, teams and actions.

No I/O: strings in, validated values out, or a `ConsoleUsageError` that names the fix.
"""

from __future__ import annotations

import ssl
from dataclasses import dataclass
from pathlib import Path

import paho.mqtt.client as paho
from pydantic import ValidationError

from dispatch.errors import ConsoleUsageError
from gateway.config.models import BrokerEndpoint
from gateway.contract.spec import adapter
from gateway.core.commands import Action, Team

PREFIX = "stationgw/v1"
TEAMS: tuple[Team, ...] = ("crisis_team", "co_response", "ambassador", "emergency_services")
ACTIONS: dict[str, Action] = {
    "ack": "acknowledge", "acknowledge": "acknowledge", "assign": "assign",
    "resolve": "resolve", "cancel": "cancel",
}


def _endpoint(url: str) -> BrokerEndpoint:
    try:
        endpoint: BrokerEndpoint = adapter(BrokerEndpoint).validate_python({"url": url})
    except ValidationError as exc:
        msg = "; ".join(str(e["msg"]).removeprefix("Value error, ") for e in exc.errors())
        raise ConsoleUsageError(f"--broker: {msg}") from exc
    return endpoint


def parse_broker_url(url: str) -> tuple[str, int]:
    """`mqtt://host:port` or `mqtts://host:port` -> (host, port); the port is 1883 (8883 for
    mqtts) when not given."""
    endpoint = _endpoint(url)
    return endpoint.host, endpoint.port


@dataclass(frozen=True)
class Security:
    """How the console proves itself to the broker and checks the broker: TLS (the server
    certificate verified against `context`'s CAs, with a client certificate for mTLS) and
    a user name with its password."""

    context: ssl.SSLContext | None = None
    username: str | None = None
    password: str | None = None

    def apply(self, client: paho.Client) -> None:
        """Configure a paho client (before it connects)."""
        if self.context is not None:
            client.tls_set_context(self.context)
        if self.username is not None:
            client.username_pw_set(self.username, self.password)


def broker_security(
    url: str, *, ca_file: str | None = None, cert_file: str | None = None,
    key_file: str | None = None, username: str | None = None, password_file: str | None = None,
) -> Security:
    """The `Security` the options ask for, checked now: every problem names its option."""
    tls = _endpoint(url).tls
    if not tls and (ca_file or cert_file or key_file):
        raise ConsoleUsageError(
            "--ca-file/--cert-file/--key-file: only for an mqtts:// broker (use "
            f"--broker mqtts://HOST:PORT, not {url!r})")
    if (cert_file is None) != (key_file is None):
        raise ConsoleUsageError("--cert-file and --key-file: give both (the client "
                                "certificate and its private key), or neither")
    context = None
    if tls:
        try:
            context = ssl.create_default_context(cafile=ca_file)
        except (OSError, ssl.SSLError) as exc:
            raise ConsoleUsageError(f"--ca-file {ca_file}: cannot load it: {exc}") from exc
        if cert_file is not None:
            try:
                context.load_cert_chain(cert_file, key_file)
            except (OSError, ssl.SSLError) as exc:
                raise ConsoleUsageError(
                    f"--cert-file {cert_file} / --key-file {key_file}: cannot load them: "
                    f"{exc}") from exc
    password = None
    if password_file is not None:
        if username is None:
            raise ConsoleUsageError("--password-file needs --username")
        try:
            password = Path(password_file).read_text(encoding="utf-8").rstrip("\r\n")
        except (OSError, UnicodeDecodeError) as exc:
            raise ConsoleUsageError(f"--password-file {password_file}: cannot read it: "
                                    f"{exc}") from exc
    return Security(context, username, password)


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
