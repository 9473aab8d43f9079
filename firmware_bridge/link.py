"""Link supervision: one board on one serial port, kept open, welcomed, watched and commanded.

`BoardLink.run()` loops forever: open the port by its stable path (retrying with capped,
jittered backoff while it is missing, so a missing port never ends the daemon), decode what
arrives, answer HELLO with WELCOME or REFUSE, exchange heartbeats with a welcomed board,
declare it offline when its frames stop, and reopen the port when it fails (unplugged, or
re-enumerated). The owner hears about all of it through `LinkEvents` and sends commands with
`BoardLink.command()`, which repeats each command with the same seq until it is answered.

The protocol logic stays in the sans-I/O codec (`Decoder`, `encode`, `negotiate`,
`SequenceTracker`); this module adds the clocks and the port. Deadlines use the event loop's
clock (`loop.time()`, monotonic); nothing polls: each task sleeps until its next deadline or
waits for bytes.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import random
import time
from collections import Counter, deque
from collections.abc import Callable
from typing import Literal, NoReturn

from firmware_bridge.backoff import backoff_delay
from firmware_bridge.codec import REJECT_REASONS, Decoder, encode
from firmware_bridge.errors import (
    CommandError,
    CommandTimeoutError,
    CommandUnsupportedError,
    DeviceOfflineError,
    PortLostError,
    PortUnavailableError,
)
from firmware_bridge.frames import (
    Ack,
    Button,
    Fault,
    Frame,
    Heartbeat,
    Hello,
    Lamp,
    LampState,
    Nak,
    Reading,
    SelfTest,
    TestTarget,
    TimeSync,
    Welcome,
)
from firmware_bridge.protocol import (
    ANSWER_TIMEOUT_S,
    COMMAND_ATTEMPTS,
    HEARTBEAT_INTERVAL_S,
    OFFLINE_AFTER_MISSED,
    negotiate,
)
from firmware_bridge.sequence import SequenceTracker, next_seq
from firmware_bridge.transport import Port, PortOpener, open_serial

log = logging.getLogger(__name__)

#: What a link is doing: port missing (retrying), open without a welcomed board, a board
#: online, or the board's HELLO refused.
LinkState = Literal["missing", "open", "online", "refused"]
#: Uplink frames the owner acts on (the link handles HELLO, HB, ACK and NAK itself).
BoardEvent = Button | Reading | Fault
#: Downlink commands; the board answers each with ACK or NAK.
Command = Lamp | SelfTest | TimeSync

#: The HELLO capability a board must list before it is sent each command.
CAPABILITY_OF: dict[type[Frame], str] = {Lamp: "lamp", SelfTest: "test", TimeSync: "time"}

#: Every key of `BoardLink.counters()`, in the order health shows them.
COUNTER_KEYS: tuple[str, ...] = (
    "bytes_in", "frames", *REJECT_REASONS, "gaps", "lost", "duplicates", "resets",
    "unwelcomed", "bytes_out", "frames_out", "opens", "reopens", "open_failures", "port_lost",
    "online", "offline", "refusals", "commands", "command_retries", "command_timeouts",
    "acks", "naks", "stray_answers", "echoes",
)

#: Default first reopen delay bound and cap, seconds (full jitter: uniform(0, bound)).
REOPEN_INITIAL_S = 0.5
REOPEN_MAX_S = 10.0
#: A received frame equal to one the gateway wrote this recently is its own, echoed back.
ECHO_WINDOW_S = 0.5
#: The echo is over after this long without one.
ECHO_QUIET_S = 10.0


class LinkEvents:
    """What a `BoardLink` tells its owner; subclass and override the methods you need.

    Every method is called on the event loop from the link's own task and must not block or
    await: hand work that awaits to your own queue or task. An exception raised here ends
    `BoardLink.run()` (fail fast). The defaults do nothing.
    """

    def state(self, link: BoardLink, state: LinkState, detail: str) -> None:
        """The link's state changed; `detail` says why, for health (`Health.link`)."""

    def online(self, link: BoardLink, hello: Hello) -> None:
        """A board was welcomed: it is online. Its HELLO names it.

        Called again, without `offline` in between, when the same board starts a new session
        (it restarted, or lost the gateway and said HELLO again): send it its lamp states.
        """

    def offline(self, link: BoardLink, device_id: str, reason: str) -> None:
        """An online board went away: silent too long, port lost, refused, or replaced.

        Not called when the link is cancelled (the gateway stopping is not the device
        going offline).
        """

    def refused(self, link: BoardLink, hello: Hello, reason: str) -> None:
        """A board's HELLO was refused (a protocol version this gateway does not speak)."""

    def frame(self, link: BoardLink, device_id: str, frame: BoardEvent) -> None:
        """A welcomed board sent a button event, a reading or a fault (duplicates dropped)."""

    def echo(self, link: BoardLink, active: bool, detail: str) -> None:
        """The link echoes the gateway's own frames back (`active`), or has stopped doing so
        for `ECHO_QUIET_S`. An echoed frame is never taken as the board's: a dead board on
        an echoing line goes offline all the same."""


@dataclasses.dataclass
class _Session:
    """A welcomed board: from WELCOME until it goes offline or says HELLO again."""

    hello: Hello
    last_rx: float  # loop time of its last valid frame
    next_hb: float  # loop time our next heartbeat is due
    pending: tuple[int, asyncio.Future[Ack | Nak]] | None = None  # the command in flight


class BoardLink:
    """Supervises one serial port and the board on it. Run `await link.run()` in a task.

    `run()` never returns and raises only for bugs (or an exception from `events`); cancel
    it to stop, which closes the port. All other methods are for the same event loop.

    `path` is the port's stable path and `baud` its rate. The timings default to the
    protocol's (docs/firmware-protocol.md); tests shorten them. The board is offline after
    `offline_after_missed` heartbeat intervals without a valid frame from it. Reopening waits
    uniform(0, min(reopen_max_s, reopen_initial_s * 2**n)) after the n-th failure in a row.
    With `sync_time`, a board listing `time` is sent TIME (from `wall_clock`) after each
    WELCOME. `opener` opens the port (tests may swap it); `started_at` is the
    `time.monotonic()` the gateway started, for the `up` of its heartbeats.
    """

    def __init__(
        self,
        path: str,
        baud: int,
        events: LinkEvents | None = None,
        *,
        heartbeat_interval_s: float = HEARTBEAT_INTERVAL_S,
        offline_after_missed: int = OFFLINE_AFTER_MISSED,
        answer_timeout_s: float = ANSWER_TIMEOUT_S,
        command_attempts: int = COMMAND_ATTEMPTS,
        reopen_initial_s: float = REOPEN_INITIAL_S,
        reopen_max_s: float = REOPEN_MAX_S,
        sync_time: bool = True,
        opener: PortOpener = open_serial,
        wall_clock: Callable[[], float] = time.time,
        started_at: float | None = None,
    ) -> None:
        if heartbeat_interval_s <= 0 or offline_after_missed < 1:
            raise ValueError(f"{path}: heartbeat_interval_s={heartbeat_interval_s} and "
                             f"offline_after_missed={offline_after_missed}: expected > 0 and >= 1")
        if answer_timeout_s <= 0 or command_attempts < 1:
            raise ValueError(f"{path}: answer_timeout_s={answer_timeout_s} and "
                             f"command_attempts={command_attempts}: expected > 0 and >= 1")
        self.path = path
        self.baud = baud
        self.events = events or LinkEvents()
        self.heartbeat_interval_s = heartbeat_interval_s
        self.offline_after_s = heartbeat_interval_s * offline_after_missed
        self.answer_timeout_s = answer_timeout_s
        self.command_attempts = command_attempts
        self.reopen_initial_s = reopen_initial_s
        self.reopen_max_s = reopen_max_s
        self.sync_time = sync_time
        self._open = opener
        self._wall_clock = wall_clock
        self._started_at = time.monotonic() if started_at is None else started_at
        self._decoder = Decoder("uplink")
        self._tracker = SequenceTracker()
        self._counts: Counter[str] = Counter(dict.fromkeys(COUNTER_KEYS, 0))
        self._state: LinkState = "missing"
        self._detail = "not opened yet"
        self._port: Port | None = None
        self._tasks: asyncio.TaskGroup | None = None  # of the open port
        self._session: _Session | None = None
        self._session_started = asyncio.Event()
        self._command_lock = asyncio.Lock()
        # The downlink counter starts anywhere (the protocol fixes only the board's start):
        # a board's heartbeat then cannot match the gateway's byte for byte by accident,
        # as two counters started together from 0 would, so an equal one is an echo.
        self._tx_seq = random.randrange(65536)
        self._sent: deque[tuple[bytes, float]] = deque(maxlen=32)  # (frame, loop time written)
        self._echo_at: float | None = None  # loop time of the last echo while one is active
        self._was_open = False
        self._welcomed_since_open = False

    # ---------------------------------------------------------------- what the owner reads

    @property
    def state(self) -> LinkState:
        """What the link is doing now."""
        return self._state

    @property
    def detail(self) -> str:
        """Why the link is in its state, for health."""
        return self._detail

    @property
    def device(self) -> Hello | None:
        """The HELLO of the board online now, or None."""
        return self._session.hello if self._session is not None else None

    def counters(self) -> dict[str, int]:
        """Link quality for health: every `COUNTER_KEYS` key, counted since the link started.

        Decoder rejections by reason, sequence gaps (`gaps`; `lost` frames in them),
        `duplicates` and `resets`, frames ignored from an unwelcomed board (`unwelcomed`),
        port `opens`/`reopens`/`open_failures`/`port_lost`, `online`/`offline` transitions,
        `refusals`, and command outcomes.
        """
        counts = self._counts.copy()
        counts.update(self._decoder.counters)
        counts["frames"] = self._decoder.decoded
        return {key: counts[key] for key in COUNTER_KEYS}

    # ---------------------------------------------------------------------------- commands

    async def command(
        self, command: Command, *, timeout_s: float | None = None, attempts: int | None = None
    ) -> Ack | Nak:
        """Send a command to the online board and return its answer, ACK or NAK.

        The link numbers the command (the `seq` given is ignored). Without an answer within
        `timeout_s` (default `answer_timeout_s`) it sends the same bytes again, same seq, up
        to `attempts` times in all (default `command_attempts`), then raises
        `CommandTimeoutError`. Raises `DeviceOfflineError` when no board is online or it goes
        away before answering, and `CommandUnsupportedError`, without sending, when the board
        did not list the capability. Commands go out one at a time, in call order, so that a
        repeat can never overtake a later command (the board dedupes only its last one).
        """
        timeout_s = self.answer_timeout_s if timeout_s is None else timeout_s
        attempts = self.command_attempts if attempts is None else attempts
        async with self._command_lock:
            session = self._session
            if session is None:
                raise DeviceOfflineError(f"{self.path}: no board online ({self._state}: "
                                         f"{self._detail}); {command.TYPE} not sent")
            device = session.hello.device_id
            capability = CAPABILITY_OF[type(command)]
            if capability not in session.hello.capabilities:
                raise CommandUnsupportedError(
                    f"{self.path}: board {device} did not list {capability!r} in its HELLO "
                    f"caps={'+'.join(session.hello.capabilities)}; {command.TYPE} not sent")
            frame = dataclasses.replace(command, seq=self._take_seq())
            data = encode(frame)
            answer: asyncio.Future[Ack | Nak] = asyncio.get_running_loop().create_future()
            session.pending = (frame.seq, answer)
            self._counts["commands"] += 1
            try:
                for attempt in range(attempts):
                    if attempt:
                        self._counts["command_retries"] += 1
                        log.info("%s: no answer from %s to %s seq=%d in %.1f s; sending it "
                                 "again (attempt %d of %d)", self.path, device, frame.TYPE,
                                 frame.seq, timeout_s, attempt + 1, attempts)
                    try:
                        await self._write(data)
                    except PortLostError as exc:
                        raise DeviceOfflineError(
                            f"{self.path}: {frame.TYPE} seq={frame.seq} to {device} not sent: "
                            f"{exc}") from exc
                    done, _ = await asyncio.wait({answer}, timeout=timeout_s)
                    if done:
                        return answer.result()
                self._counts["command_timeouts"] += 1
                raise CommandTimeoutError(
                    f"{self.path}: board {device} answered none of {attempts} attempts of "
                    f"{frame.TYPE} seq={frame.seq} ({timeout_s} s each; is the board's RX line "
                    "connected?)")
            finally:
                session.pending = None
                if not answer.done():
                    answer.cancel()
                elif not answer.cancelled():
                    answer.exception()  # retrieved: the caller got it, or raised another

    async def set_lamp(self, lamp: str, state: LampState) -> Ack | Nak:
        """`command(Lamp(...))`: show `state` on the board's lamp `lamp`."""
        return await self.command(Lamp(seq=0, lamp=lamp, state=state))

    async def self_test(self, target: TestTarget = "all") -> Ack | Nak:
        """`command(SelfTest(...))`; the results arrive later as FAULT frames."""
        return await self.command(SelfTest(seq=0, target=target))

    async def send_time(self) -> Ack | Nak:
        """`command(TimeSync(...))` with the wall clock's current time."""
        return await self.command(TimeSync(seq=0, unix_s=int(self._wall_clock())))

    # ------------------------------------------------------------------------- supervising

    async def run(self) -> NoReturn:
        """Open, serve and reopen the port forever; cancel to stop (closes the port)."""
        attempt = 0
        while True:
            try:
                port = await self._open(self.path, self.baud)
            except PortUnavailableError as exc:
                self._counts["open_failures"] += 1
                if self._state != "missing":
                    log.warning("%s", exc)
                self._set_state("missing", str(exc))
            else:
                if await self._serve(port):
                    attempt = 0  # a board got as far as WELCOME: the port is healthy
            delay = backoff_delay(attempt, self.reopen_initial_s, self.reopen_max_s)
            attempt += 1
            log.debug("%s: reopening in %.2f s (attempt %d)", self.path, delay, attempt)
            await asyncio.sleep(delay)

    async def _serve(self, port: Port) -> bool:
        """Serve an open port until it fails; True if a board was welcomed on it."""
        self._counts["opens"] += 1
        if self._was_open:
            self._counts["reopens"] += 1
        self._was_open = True
        self._welcomed_since_open = False
        # Frames lost while the port was closed are not a gap: compare afresh.
        self._tracker.forget()
        self._port = port
        log.info("%s: open at %d baud", self.path, self.baud)
        self._set_state("open", f"open at {self.baud} baud, waiting for HELLO")
        try:
            async with asyncio.TaskGroup() as tg:
                self._tasks = tg
                tg.create_task(self._keepalive(), name=f"link[{self.path}].keepalive")
                await self._receive(port)
        except* PortLostError as group:
            reason = str(group.exceptions[0])
            self._counts["port_lost"] += 1
            log.warning("%s", reason)
            self._end_session(f"port lost: {reason}", offline=True)
            self._set_state("missing", reason)
        finally:
            self._tasks = None
            self._port = None
            # Cancelled: the gateway stops; that is no news about the board.
            self._end_session("the link was stopped", offline=False)
            self._decoder.reset()  # a partial frame dies with the port
            await port.aclose()
        return self._welcomed_since_open

    async def _receive(self, port: Port) -> NoReturn:
        while True:
            data = await port.read()
            self._counts["bytes_in"] += len(data)
            frames = self._decoder.feed(data)
            for rejection in self._decoder.take_rejections():
                if rejection.reason == "wrong_direction" and self._echoed(rejection.data):
                    continue  # one of ours (WELCOME, LAMP, TEST, TIME) came back
                log.info("%s: rejected %s: %s: %r", self.path, rejection.reason,
                         rejection.detail, rejection.data)
            for frame in frames:
                if isinstance(frame, Heartbeat) and self._echoed(encode(frame)):
                    continue  # our heartbeat came back: no sign of life from the board
                await self._handle(frame)

    def _echoed(self, line: bytes) -> bool:
        """Whether `line` is a frame this link wrote within `ECHO_WINDOW_S`; if so, count it
        and raise the echo (a heartbeat of the board's own that happened to be identical
        would have to arrive within that window of ours, too)."""
        now = asyncio.get_running_loop().time()
        if not any(sent == line and now - at <= ECHO_WINDOW_S for sent, at in self._sent):
            return False
        self._counts["echoes"] += 1
        first = self._echo_at is None
        self._echo_at = now
        if first:
            log.warning("%s: the line echoes the gateway's own frames back (a TX/RX loopback, "
                        "or a stuck RS-485 transceiver?)", self.path)
            self.events.echo(self, True, f"{self.path} echoes the gateway's own frames back "
                             "(TX/RX loopback or a stuck transceiver); echoed frames are not "
                             "taken as the board's")
            asyncio.get_running_loop().call_later(ECHO_QUIET_S, self._echo_quiet)
        return True

    def _echo_quiet(self) -> None:
        if self._echo_at is None:
            return
        left = self._echo_at + ECHO_QUIET_S - asyncio.get_running_loop().time()
        if left > 0:
            asyncio.get_running_loop().call_later(left, self._echo_quiet)
            return
        self._echo_at = None
        log.info("%s: no echo for %g s", self.path, ECHO_QUIET_S)
        self.events.echo(self, False, "no echo")

    async def _handle(self, frame: Frame) -> None:
        session = self._session
        if session is not None:
            session.last_rx = asyncio.get_running_loop().time()
            if isinstance(frame, Hello) and frame.device_id != session.hello.device_id:
                self._tracker.forget()  # another board: its seq has nothing to do with ours
        result = self._tracker.observe(frame)
        if result.kind == "duplicate":
            self._counts["duplicates"] += 1
            return
        if result.kind == "gap":
            self._counts["gaps"] += 1
            self._counts["lost"] += result.lost
            log.info("%s: %d frames lost before %s seq=%d", self.path, result.lost,
                     frame.TYPE, frame.seq)
        elif result.kind == "reset":
            self._counts["resets"] += 1
            log.info("%s: board restarted (%s seq=%d)", self.path, frame.TYPE, frame.seq)
        if isinstance(frame, Hello):
            await self._on_hello(frame)
        elif session is None:
            self._counts["unwelcomed"] += 1
        elif isinstance(frame, Ack | Nak):
            self._on_answer(session, frame)
        elif isinstance(frame, Button | Reading | Fault):
            self.events.frame(self, session.hello.device_id, frame)

    async def _on_hello(self, hello: Hello) -> None:
        answer = negotiate(hello, self._take_seq())
        old = self._session
        if old is not None:
            # A HELLO ends the session: the board forgets the command it answered last.
            if isinstance(answer, Welcome) and old.hello.device_id == hello.device_id:
                self._end_session("it said HELLO again", offline=False)
            elif isinstance(answer, Welcome):
                self._end_session(f"replaced by board {hello.device_id} on {self.path}",
                                  offline=True)
            else:
                self._end_session(f"HELLO refused: {answer.reason}", offline=True)
        await self._send(answer)
        if not isinstance(answer, Welcome):
            self._counts["refusals"] += 1
            log.warning("%s: refused board %s fw=%s: %s", self.path, hello.device_id,
                        hello.firmware, answer.reason)
            self._set_state("refused", f"board {hello.device_id} refused: {answer.reason}")
            self.events.refused(self, hello, answer.reason)
            return
        now = asyncio.get_running_loop().time()
        self._session = _Session(hello, last_rx=now, next_hb=now + self.heartbeat_interval_s)
        self._session_started.set()
        self._welcomed_since_open = True
        self._counts["online"] += 1
        log.info("%s: board %s online fw=%s proto=%d caps=%s", self.path, hello.device_id,
                 hello.firmware, hello.protocol, "+".join(hello.capabilities))
        self._set_state("online", f"board {hello.device_id} fw={hello.firmware}")
        self.events.online(self, hello)
        if self.sync_time and "time" in hello.capabilities and self._tasks is not None:
            self._tasks.create_task(self._sync_time(), name=f"link[{self.path}].time")

    def _on_answer(self, session: _Session, answer: Ack | Nak) -> None:
        pending = session.pending
        if pending is None or pending[0] != answer.ref or pending[1].done():
            # Normal after a repeat: the first answer was late, not lost.
            self._counts["stray_answers"] += 1
            return
        self._counts["acks" if isinstance(answer, Ack) else "naks"] += 1
        pending[1].set_result(answer)

    async def _sync_time(self) -> None:
        try:
            answer = await self.send_time()
        except CommandError as exc:
            log.warning("%s: TIME not set: %s", self.path, exc)
            return
        if isinstance(answer, Nak):
            log.warning("%s: board refused TIME: %s %s", self.path, answer.code, answer.detail)

    async def _keepalive(self) -> NoReturn:
        """Heartbeats to the welcomed board, and its offline deadline."""
        loop = asyncio.get_running_loop()
        while True:
            session = self._session
            if session is None:
                await self._session_started.wait()
                continue
            now = loop.time()
            silent_s = now - session.last_rx
            if silent_s >= self.offline_after_s:
                device = session.hello.device_id
                self._end_session(
                    f"no frame from board {device} for {silent_s:.1f} s (heartbeat every "
                    f"{self.heartbeat_interval_s:g} s)", offline=True)
                # Silent from now on: a live board notices and says HELLO again.
                self._set_state("open", f"board {device} silent; waiting for HELLO")
                continue
            if now >= session.next_hb:
                session.next_hb += self.heartbeat_interval_s
                if session.next_hb <= now:  # the loop was held up: no burst to catch up
                    session.next_hb = now + self.heartbeat_interval_s
                uptime_s = max(0, int(time.monotonic() - self._started_at))
                await self._send(Heartbeat(seq=self._take_seq(), uptime_s=uptime_s))
                continue
            await asyncio.sleep(min(session.next_hb, session.last_rx + self.offline_after_s)
                                - now)

    def _end_session(self, reason: str, *, offline: bool) -> None:
        """Forget the welcomed board, failing its command in flight; maybe report offline."""
        session = self._session
        if session is None:
            return
        self._session = None
        self._session_started.clear()
        device = session.hello.device_id
        if session.pending is not None and not session.pending[1].done():
            session.pending[1].set_exception(DeviceOfflineError(
                f"{self.path}: board {device} went away before answering: {reason}"))
        if offline:
            self._counts["offline"] += 1
            log.warning("%s: board %s offline: %s", self.path, device, reason)
            self.events.offline(self, device, reason)

    # ------------------------------------------------------------------------------ output

    def _take_seq(self) -> int:
        seq = self._tx_seq
        self._tx_seq = next_seq(seq)
        return seq

    async def _send(self, frame: Frame) -> None:
        await self._write(encode(frame))

    async def _write(self, data: bytes) -> None:
        port = self._port
        if port is None:
            raise PortLostError(f"{self.path}: port not open")
        self._counts["bytes_out"] += len(data)
        self._counts["frames_out"] += 1
        self._sent.append((data, asyncio.get_running_loop().time()))
        await port.write(data)

    def _set_state(self, state: LinkState, detail: str) -> None:
        if (state, detail) != (self._state, self._detail):
            self._state, self._detail = state, detail
            self.events.state(self, state, detail)
