"""One error hierarchy for the gateway: `GatewayError` and a family per subsystem."""

from __future__ import annotations


class GatewayError(Exception):
    """Root of every error the gateway raises on purpose."""


class ConfigError(GatewayError, ValueError):
    """The station config is invalid; `problems` lists every problem found."""

    def __init__(self, problems: list[str]) -> None:
        self.problems = problems
        super().__init__("\n".join(problems))


class StoreError(GatewayError):
    """The outbox database cannot be opened, read or written."""


class StoreDamagedError(StoreError):
    """The outbox database is not the gateway's, or not intact: it must be moved aside.

    `path` is the database, `reason` says what is wrong with it, for the log and health.
    """

    def __init__(self, path: object, reason: str) -> None:
        self.path = path
        self.reason = reason
        super().__init__(f"{path}: {reason}")


class StoreUnavailableError(StoreError):
    """The outbox database cannot be opened for a reason outside it (disk full, permissions,
    I/O errors): the files are left alone, and the gateway runs in memory."""


class CommandRefusedError(GatewayError, ValueError):
    """A command from the commands topic is refused before it is read (the commands edge)."""


class NotStrictJsonError(CommandRefusedError):
    """The payload is JSON only in Python's lenient sense, or not at all."""


class LinkError(GatewayError):
    """The MQTT uplink: a broker session cannot go on. The session ends, and the publisher
    reconnects (to the next broker, if there is one); aiomqtt's own `MqttError`s end it the
    same way."""


class BrokerStalledError(LinkError):
    """The broker confirmed nothing within `mqtt.puback_deadline_s`: the socket was dropped."""


class PinFactoryError(GatewayError):
    """No GPIO pin factory could be loaded (the inputs)."""


class SimulateError(GatewayError):
    """The simulate socket is missing or refused the command."""


class BrokerError(GatewayError):
    """Mosquitto could not be found or started (the broker runner of the demo and tests)."""


class DaemonStartError(GatewayError):
    """A station daemon started as its own process (the test support's runner, for the demo,
    the fleet, tests and benchmarks) exited or did not come up in time."""


class InstallError(GatewayError):
    """A step of the install failed."""
