"""`stationgw dispatch`: the reference dispatch console.

Every alert from every station, once, in a live queue ordered by class and age, with
acknowledge, assign and resolve on a keypress; a plain JSON stream for scripts; one-shot
commands. The modules follow the data:

- `options`: the broker URL, the events filter, teams and actions (`errors`: the family).
- `events`, `queue`, `keys`, `screen`: no I/O. Payloads (events, each station's retained
  open-alerts snapshot) and key bytes in; rows, screens and commands to send out.
- `intake`: one MQTT 5 connection on paho-mqtt's own network thread. Messages reach
  asyncio in batches, and are acknowledged (PUBACK) only after the console has handled them.
  `link` keeps an `Intake` connected, with capped, jittered backoff and the same client id.
- `watch`, `oneshot`, `interactive` (with `running`): what the CLI calls; each returns an
  exit code.

Delivery: a message is acknowledged only after its line is flushed (watch) or it is folded
into the queue (interactive), and the broker sends at most `RECEIVE_MAXIMUM` unacknowledged
(MQTT 5 flow control). So a console that falls behind holds a bounded window, the backlog
waits in the broker, a crash loses nothing the session holds (it is sent again, and
de-duplicated on `event_id` within a run; scripts de-duplicate across runs), and batches
are large: acknowledging on receipt instead cost 210 rather than 116 CPU us/msg.
"""

from __future__ import annotations

from dispatch.console.events import (
    DEDUP_WINDOW,
    Dedup,
    parse_event,
    parse_reply,
)
from dispatch.console.intake import (
    CONNECT_TIMEOUT_S,
    EPHEMERAL_SESSION_S,
    RECEIVE_MAXIMUM,
    Intake,
)
from dispatch.console.interactive import interactive
from dispatch.console.keys import KeyReader
from dispatch.console.link import PERSISTENT_SESSION_S, Handler, Link
from dispatch.console.oneshot import describe, one_shot, report_reply
from dispatch.console.options import (
    ACTIONS,
    PREFIX,
    TEAMS,
    Security,
    broker_security,
    events_filter,
    parse_broker_url,
)
from dispatch.console.queue import CLOSED_MEMORY, AlertQueue, AlertRow, Change, Fault
from dispatch.console.screen import ANSI_CLEAR, Mode, Screen, Send, age
from dispatch.console.watch import watch_json
from dispatch.errors import ConsoleConnectionError, ConsoleError, ConsoleUsageError

__all__ = [
    "ACTIONS",
    "ANSI_CLEAR",
    "CLOSED_MEMORY",
    "CONNECT_TIMEOUT_S",
    "DEDUP_WINDOW",
    "EPHEMERAL_SESSION_S",
    "PERSISTENT_SESSION_S",
    "PREFIX",
    "RECEIVE_MAXIMUM",
    "TEAMS",
    "AlertQueue",
    "AlertRow",
    "Change",
    "ConsoleConnectionError",
    "ConsoleError",
    "ConsoleUsageError",
    "Dedup",
    "Fault",
    "Handler",
    "Intake",
    "KeyReader",
    "Link",
    "Mode",
    "Screen",
    "Security",
    "Send",
    "age",
    "broker_security",
    "describe",
    "events_filter",
    "interactive",
    "one_shot",
    "parse_broker_url",
    "parse_event",
    "parse_reply",
    "report_reply",
    "watch_json",
]
