"""Commands from the hub to stations, over the hub's own MQTT session, each confirmed by the
station's reply (`{prefix}/{station}/replies`, which the hub reads anyway)."""

from __future__ import annotations

import asyncio
import json

from dispatch.console.events import parse_reply
from dispatch.console.link import Link
from dispatch.errors import CommandError, ConsoleConnectionError
from dispatch.inbound import Inbound
from gateway.core.commands import Command, Reply
from gateway.uplink.topics import Topics


class Commander:
    """Publishes commands through the hub's `Link` and hands each its station's reply."""

    def __init__(self, prefix: str, reply_timeout_s: float = 10.0) -> None:
        self.prefix = prefix
        self.reply_timeout_s = reply_timeout_s
        self.link: Link | None = None  # set by `run_hub`
        self._pending: dict[str, tuple[str, asyncio.Future[Reply]]] = {}

    def on_reply(self, inbound: Inbound, payload: bytes) -> None:
        """A reply the hub read (already checked by `dispatch.inbound`)."""
        reply = parse_reply(payload)
        if reply is None or reply.command_id is None:
            return
        pending = self._pending.get(reply.command_id)
        if pending is not None and pending[0] == inbound.station and not pending[1].done():
            pending[1].set_result(reply)

    async def send(self, command: Command) -> Reply:
        """Send a command and return the station's reply; `CommandError` if it cannot."""
        intake = self.link.current if self.link is not None else None
        if intake is None:
            raise CommandError("the hub is not connected to the broker: not sent")
        future: asyncio.Future[Reply] = asyncio.get_running_loop().create_future()
        self._pending[command.command_id] = (command.station, future)
        try:
            payload = json.dumps(command.wire()).encode()
            try:
                rc = await intake.publish(Topics(self.prefix, command.station).commands, payload)
            except ConsoleConnectionError as exc:
                raise CommandError(f"not sent: {exc}") from exc
            if rc.is_failure:
                raise CommandError(f"the broker refused the command: {rc.getName()}")
            try:
                async with asyncio.timeout(self.reply_timeout_s):
                    return await future
            except TimeoutError:
                raise CommandError(
                    f"no reply from station {command.station} within {self.reply_timeout_s:g}s"
                    " (the broker keeps the command for it)") from None
        finally:
            self._pending.pop(command.command_id, None)
