"""A simulated board: speaks protocol 1, board side, over a pseudo-terminal.

`BoardSimulator` opens a pty pair and points a symlink (a stand-in for
`/dev/serial/by-id/...`) at the pty's device, so the gateway opens it with pyserial exactly
like a real port. It behaves as docs/firmware-protocol.md asks of a board: HELLO until
WELCOME (or REFUSE), heartbeats, ACK/NAK for LAMP, TEST and TIME with the same answer for a
repeated seq, and back to HELLO when the gateway goes silent. Controls let a test press
buttons, send readings and faults, stop heartbeats, drop the answers to commands, reset the
board mid-frame, and unplug it (the pty closes and the symlink vanishes) and plug it in again
(a new pty, the symlink repointed: a USB device re-enumerating).

From a shell (`--help` lists the commands it reads from stdin):

    python -m firmware_bridge.simulator --link /tmp/board0
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import os
import shlex
import signal
import stat
import sys
import tty
import uuid
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import replace
from decimal import Decimal
from pathlib import Path
from types import TracebackType
from typing import Any, Literal, TypeVar, cast, get_args

from firmware_bridge.codec import Decoder, encode
from firmware_bridge.frames import (
    KNOWN_CAPABILITIES,
    Ack,
    Button,
    Fault,
    FaultCode,
    FaultState,
    Frame,
    Heartbeat,
    Hello,
    Lamp,
    LampState,
    Nak,
    NakCode,
    Reading,
    Refuse,
    SelfTest,
    TimeSync,
    Unit,
    Welcome,
)
from firmware_bridge.protocol import (
    HEARTBEAT_INTERVAL_S,
    HELLO_RETRY_S,
    OFFLINE_AFTER_MISSED,
    PROTOCOL_VERSION,
    REFUSED_HELLO_RETRY_S,
)
from firmware_bridge.sequence import next_seq

log = logging.getLogger(__name__)

#: What the simulated board is doing.
BoardState = Literal["unplugged", "hello", "running", "refused"]

_NEEDS: dict[type[Frame], str] = {Lamp: "lamp", SelfTest: "test", TimeSync: "time"}
_F = TypeVar("_F", bound=Frame)


class BoardSimulator:
    """A protocol-1 board behind a pty whose path is the symlink `link`.

    Use as `async with BoardSimulator(link) as board:` (plugged in on entry unless
    `plugged=False`; unplugged on exit). Everything runs on the event loop.
    """

    def __init__(
        self,
        link: str | os.PathLike[str],
        *,
        device_id: str = "sim-board-1",
        firmware: str = "1.0.0-sim",
        protocol: int = PROTOCOL_VERSION,
        capabilities: Sequence[str] = KNOWN_CAPABILITIES,
        lamps: Sequence[str] = ("hp1",),
        heartbeat_interval_s: float = HEARTBEAT_INTERVAL_S,
        hello_retry_s: float = HELLO_RETRY_S,
        refused_hello_retry_s: float = REFUSED_HELLO_RETRY_S,
        gateway_lost_after_s: float | None = None,
        plugged: bool = True,
        on_receive: Callable[[Frame], None] | None = None,
    ) -> None:
        self.link = Path(link)
        self.device_id = device_id
        self.firmware = firmware
        self.protocol = protocol
        self.capabilities = tuple(capabilities)
        self.heartbeat_interval_s = heartbeat_interval_s
        self.hello_retry_s = hello_retry_s
        self.refused_hello_retry_s = refused_hello_retry_s
        self.gateway_lost_after_s = (heartbeat_interval_s * OFFLINE_AFTER_MISSED
                                     if gateway_lost_after_s is None else gateway_lost_after_s)
        self.on_receive = on_receive
        self._plug_on_enter = plugged
        # Controls a test may set at any time.
        #: Send heartbeats while running (False: the board looks dead to the gateway).
        self.heartbeats = True
        #: Ignore this many more commands entirely: no answer, not carried out.
        self.ignore_commands = 0
        #: Answer every command with this NAK (code, detail) instead of carrying it out.
        self.nak: tuple[NakCode, str] | None = None
        #: Write every byte received straight back (a TX/RX loopback, a stuck transceiver).
        self.echo = False
        #: The board's processor is dead: it sends nothing and reads nothing (the line may
        #: still echo).
        self.dead = False
        # What a test may inspect.
        self.state: BoardState = "unplugged"
        self.pty_path: str | None = None
        self.hello_seq: int | None = None  # seq of the last HELLO sent
        self.received: list[Frame] = []  # every valid downlink frame, in order
        self.carried_out: list[Frame] = []  # commands carried out (a repeat is not)
        self.lamps: dict[str, LampState] = dict.fromkeys(lamps, "fault")
        self.clock_unix_s: int | None = None
        self.dropped_bytes = 0  # written while nobody drained the pty
        self.decoder = Decoder("downlink")
        self._master: int | None = None
        self._slave: int | None = None
        self._task: asyncio.Task[None] | None = None
        self._wake = asyncio.Event()
        self._changed = asyncio.Event()
        self._seq = 0
        self._booted_at = 0.0
        self._next_hello = 0.0
        self._next_hb = 0.0
        self._last_rx = 0.0
        self._last_answer: tuple[int, Ack | Nak] | None = None  # (command seq, answer)
        self._last_sent = b""
        self._held: list[Frame] = []  # events while not welcomed: sent after WELCOME
        self._faults: dict[tuple[FaultCode, str], Fault] = {}  # set faults, re-sent on WELCOME

    # -------------------------------------------------------------------------- lifecycle

    async def __aenter__(self) -> BoardSimulator:
        if self._plug_on_enter:
            self.plug()
        return self

    async def __aexit__(
        self, et: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.unplug()

    def plug(self) -> None:
        """Plug the board in: a new pty, the symlink pointed at it, and the board boots."""
        if self._master is not None:
            raise RuntimeError(f"{self.link}: the simulated board is already plugged in")
        master, slave = os.openpty()
        # Raw before any byte moves: with the default line discipline the pty would echo the
        # board's own frames back to it and turn CR LF into LF LF.
        tty.setraw(slave)
        os.set_blocking(master, False)
        self._master, self._slave = master, slave
        self.pty_path = os.ttyname(slave)
        # Replace the link atomically, as udev does: the path is never half there.
        tmp = self.link.with_name(f".{self.link.name}.{uuid.uuid4().hex}")
        os.symlink(self.pty_path, tmp)
        os.replace(tmp, self.link)
        loop = asyncio.get_running_loop()
        loop.add_reader(master, self._readable)
        self._boot()
        self._task = loop.create_task(self._run(), name=f"simulator[{self.device_id}]")
        log.info("%s -> %s: board %s plugged in", self.link, self.pty_path, self.device_id)

    async def unplug(self) -> None:
        """Pull the plug: the board stops, its pty closes and the symlink vanishes."""
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        master, slave = self._master, self._slave
        self._master = self._slave = None
        if master is not None:
            asyncio.get_running_loop().remove_reader(master)
            os.close(master)
        if slave is not None:
            os.close(slave)
        with contextlib.suppress(FileNotFoundError):
            if self.link.is_symlink() and os.readlink(self.link) == self.pty_path:
                self.link.unlink()
        if self.state != "unplugged":
            log.info("%s: board %s unplugged", self.link, self.device_id)
        self._set_state("unplugged")

    def reset(self, *, mid_frame: bool = True) -> None:
        """Restart the board, by default half-way through sending a frame.

        Half a frame goes out, then the board boots: seq back to 0, uptime back to 0, and
        HELLO with seq 0 at once.
        """
        self._require_plugged()
        if mid_frame:
            line = encode(Heartbeat(seq=self._seq, uptime_s=self._uptime_s()))
            self._write(line[:len(line) // 2])
        self._boot()

    # --------------------------------------------------------------------------- controls

    def press(self, button: str = "hp1") -> None:
        """The button went down."""
        self._event(Button(seq=0, button=button, event="press"))

    def hold(self, button: str = "hp1") -> None:
        """The button has been held down for the hold time."""
        self._event(Button(seq=0, button=button, event="hold"))

    def release(self, button: str = "hp1") -> None:
        """The button came up."""
        self._event(Button(seq=0, button=button, event="release"))

    def reading(self, sensor: str, value: Decimal | int | str, unit: Unit) -> None:
        """A sensor reading, such as `reading("snd1", "71.20", "dB")`."""
        self._event(Reading(seq=0, sensor=sensor, value=Decimal(value), unit=unit))

    def fault(self, code: FaultCode, source: str, state: FaultState, detail: str = "") -> None:
        """A fault set or cleared, or a self-test result."""
        frame = Fault(seq=0, code=code, source=source, state=state, detail=detail)
        if state == "set":
            self._faults[code, source] = frame
        elif state == "clear":
            self._faults.pop((code, source), None)
        self._event(frame)

    def lose(self, frames: int = 1) -> None:
        """Lose the next `frames` frames on the line: their seqs are used, nothing is sent."""
        for _ in range(frames):
            self._seq = next_seq(self._seq)

    def repeat_last(self) -> None:
        """Send the last frame again, byte for byte (a duplicate)."""
        self._require_plugged()
        self._write(self._last_sent)

    def send_raw(self, data: bytes) -> None:
        """Put raw bytes on the line (a boot banner, noise, a hand-made frame)."""
        self._require_plugged()
        self._write(data)

    # ------------------------------------------------------------------------ observation

    def frames_of(self, cls: type[_F]) -> list[_F]:
        """The downlink frames of one type received so far, in order."""
        return [f for f in self.received if isinstance(f, cls)]

    async def wait_until(self, condition: Callable[[], bool], timeout_s: float = 10.0) -> None:
        """Return once `condition()` is true; it is checked after every frame and change.

        Raises `TimeoutError` after `timeout_s`.
        """
        async with asyncio.timeout(timeout_s):
            while not condition():
                if self._task is not None and self._task.done():
                    self._task.result()  # the board died: say why
                self._changed.clear()
                await self._changed.wait()

    # --------------------------------------------------------------------------- the board

    def _boot(self) -> None:
        now = asyncio.get_running_loop().time()
        self._seq = 0
        self._booted_at = now
        self._last_answer = None
        self._held.clear()
        self._faults.clear()
        self.decoder = Decoder("downlink")
        self.lamps = dict.fromkeys(self.lamps, "fault")
        self._set_state("hello")
        # HELLO seq 0 goes out at once, before any byte that arrives after the boot is read
        # (a WELCOME still on its way was meant for the board before the reset).
        self._send_hello()
        self._next_hello = now + self.hello_retry_s

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            if self.dead:
                self._wake.clear()
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(0.1):
                        await self._wake.wait()
                continue
            now = loop.time()
            if self.state == "running" and now - self._last_rx >= self.gateway_lost_after_s:
                log.info("%s: board %s lost the gateway; saying HELLO again", self.link,
                         self.device_id)
                self.lamps = dict.fromkeys(self.lamps, "fault")
                self._next_hello = now
                self._set_state("hello")
            if self.state in ("hello", "refused") and now >= self._next_hello:
                self._send_hello()
                retry = self.hello_retry_s if self.state == "hello" else self.refused_hello_retry_s
                self._next_hello = now + retry
            if self.state == "running" and now >= self._next_hb:
                if self.heartbeats:
                    self._send(Heartbeat(seq=0, uptime_s=self._uptime_s()))
                self._next_hb = now + self.heartbeat_interval_s
            if self.state == "running":
                wake = min(self._next_hb, self._last_rx + self.gateway_lost_after_s)
            else:
                wake = self._next_hello
            self._wake.clear()
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout_at(wake):
                    await self._wake.wait()

    def _send_hello(self) -> None:
        self.hello_seq = self._seq
        self._send(Hello(seq=0, device_id=self.device_id, firmware=self.firmware,
                         protocol=self.protocol, capabilities=self.capabilities))

    def _readable(self) -> None:
        assert self._master is not None
        try:
            data = os.read(self._master, 4096)
        except BlockingIOError:
            return
        except OSError:
            # EIO: no slave end open. The board keeps one open, so this means it is going.
            return
        if self.echo:
            self._write(data)
        if self.dead:
            return
        for frame in self.decoder.feed(data):
            self._received(frame)

    def _received(self, frame: Frame) -> None:
        self.received.append(frame)
        self._changed.set()
        if self.on_receive is not None:
            self.on_receive(frame)
        now = asyncio.get_running_loop().time()
        self._last_rx = now
        if isinstance(frame, Welcome):
            self._last_answer = None  # WELCOME clears the kept command seq
            self._next_hb = now + self.heartbeat_interval_s
            self._set_state("running")
            # Events kept while waiting, then the state of every fault source.
            held, self._held = self._held, []
            for event in [*held, *self._faults.values()]:
                self._send(event)
        elif isinstance(frame, Refuse):
            log.warning("%s: board %s refused: %s", self.link, self.device_id, frame.reason)
            self._next_hello = now + self.refused_hello_retry_s
            self._set_state("refused")
        elif isinstance(frame, Lamp | SelfTest | TimeSync):
            self._command(frame)

    def _command(self, command: Lamp | SelfTest | TimeSync) -> None:
        if self.state != "running":
            return  # a board says nothing but HELLO until WELCOME
        if self.ignore_commands > 0:
            self.ignore_commands -= 1
            return
        if self._last_answer is not None and self._last_answer[0] == command.seq:
            self._send(self._last_answer[1])  # a repeat: same answer, not carried out again
            return
        answer = self._carry_out(command)
        self._last_answer = (command.seq, answer)
        self._send(answer)
        if (isinstance(answer, Ack) and isinstance(command, SelfTest)
                and command.target in ("all", "spkmic")):
            for lamp in self.lamps:  # one speaker and microphone per help point
                self._send(Fault(seq=0, code="spkmic", source=lamp, state="pass"))

    def _carry_out(self, command: Lamp | SelfTest | TimeSync) -> Ack | Nak:
        if _NEEDS[type(command)] not in self.capabilities:
            return Nak(seq=0, ref=command.seq, code="unsupported",
                       detail=f"no {_NEEDS[type(command)]} here")
        if self.nak is not None:
            code, detail = self.nak
            return Nak(seq=0, ref=command.seq, code=code, detail=detail)
        if isinstance(command, Lamp):
            if command.lamp not in self.lamps:
                return Nak(seq=0, ref=command.seq, code="invalid", detail=f"no lamp {command.lamp}")
            self.lamps[command.lamp] = command.state
        elif isinstance(command, TimeSync):
            self.clock_unix_s = command.unix_s
        self.carried_out.append(command)
        return Ack(seq=0, ref=command.seq)

    def _event(self, frame: Frame) -> None:
        self._require_plugged()
        if self.state == "running":
            self._send(frame)
        else:
            self._held.append(frame)

    def _send(self, frame: Frame) -> None:
        """Send `frame` with the board's next seq (the seq it carries is ignored)."""
        frame = replace(frame, seq=self._seq)
        self._seq = next_seq(self._seq)
        self._last_sent = encode(frame)
        self._write(self._last_sent)

    def _write(self, data: bytes) -> None:
        # A UART sends whether or not anyone listens: what the pty cannot take is lost.
        if self._master is None:
            self.dropped_bytes += len(data)
            return
        try:
            written = os.write(self._master, data)
        except OSError:
            written = 0
        self.dropped_bytes += len(data) - written

    def _uptime_s(self) -> int:
        return int(asyncio.get_running_loop().time() - self._booted_at)

    def _require_plugged(self) -> None:
        if self._master is None:
            raise RuntimeError(f"{self.link}: the simulated board is unplugged (plug() it in)")

    def _set_state(self, state: BoardState) -> None:
        self.state = state
        self._wake.set()
        self._changed.set()


# ------------------------------------------------------------------------------ command line

COMMANDS = """\
commands (one per line, from stdin or --script):
  press|hold|release [BUTTON]     a button event (default button hp1)
  read SENSOR VALUE UNIT          a reading, e.g. read snd1 71.20 dB
  fault CODE SRC STATE [DETAIL]   e.g. fault tamper door1 set
  hb on|off                       heartbeats on or off
  nak CODE [DETAIL] | ack         NAK every command with CODE, or carry them out again
  silent N                        ignore the next N commands
  reset [clean]                   restart mid-frame (or cleanly)
  unplug | plug                   pull the plug, plug in again (new pty)
  garbage TEXT                    put TEXT and CR LF on the line
  sleep SECONDS                   wait
  quit                            unplug and exit
"""


async def run_command(board: BoardSimulator, line: str) -> bool:
    """Carry out one command line; False for `quit`. Raises `ValueError` for a bad line."""
    words = shlex.split(line, comments=True)
    if not words:
        return True
    verb, args = words[0], words[1:]
    if verb == "quit":
        return False
    if verb == "unplug":
        await board.unplug()
    elif verb == "sleep" and len(args) == 1:
        await asyncio.sleep(float(args[0]))
    elif not (_board_event(board, verb, args) or _board_setting(board, verb, args)):
        raise ValueError(f"unknown command {line.strip()!r}\n{COMMANDS}")
    return True


def _board_event(board: BoardSimulator, verb: str, args: list[str]) -> bool:
    """Something happens at the board (a button, a reading, a fault, a reset, a plug, line
    noise); False if the words are not one of these."""
    if verb in ("press", "hold", "release"):
        getattr(board, verb)(*args[:1])
    elif verb == "read" and len(args) == 3:
        board.reading(args[0], args[1], cast(Unit, _word(args[2], Unit)))
    elif verb == "fault" and len(args) >= 3:
        board.fault(cast(FaultCode, _word(args[0], FaultCode)), args[1],
                    cast(FaultState, _word(args[2], FaultState)), " ".join(args[3:]))
    elif verb == "reset":
        board.reset(mid_frame=args != ["clean"])
    elif verb == "plug":
        board.plug()
    elif verb == "garbage":
        board.send_raw(" ".join(args).encode("ascii") + b"\r\n")
    else:
        return False
    return True


def _board_setting(board: BoardSimulator, verb: str, args: list[str]) -> bool:
    """How the board behaves from now on (heartbeats, NAKs, ignoring commands); False if the
    words are not one of these."""
    if verb == "hb" and args in (["on"], ["off"]):
        board.heartbeats = args[0] == "on"
    elif verb == "nak" and args:
        board.nak = (cast(NakCode, _word(args[0], NakCode)), " ".join(args[1:]))
    elif verb == "ack":
        board.nak = None
    elif verb == "silent" and len(args) == 1:
        board.ignore_commands = int(args[0])
    else:
        return False
    return True


def _word(text: str, literal: Any) -> str:
    choices: tuple[str, ...] = get_args(literal)
    if text not in choices:
        raise ValueError(f"{text!r}: expected one of {', '.join(choices)}")
    return text


@contextlib.asynccontextmanager
async def _input(script: str | None) -> AsyncIterator[AsyncIterator[str]]:
    """The command lines: of the script, or of stdin (a file, a pipe or a terminal)."""
    if script is not None or stat.S_ISREG(os.fstat(sys.stdin.fileno()).st_mode):
        # A regular file: the event loop cannot wait on one, and need not.
        read = Path(script).read_text if script is not None else sys.stdin.read
        text = await asyncio.to_thread(read)
        yield _aiter(text.splitlines())
        return
    reader = asyncio.StreamReader()
    transport, _ = await asyncio.get_running_loop().connect_read_pipe(
        lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
    try:
        yield (raw.decode() async for raw in reader)
    finally:
        transport.close()


async def _aiter(lines: list[str]) -> AsyncIterator[str]:
    for line in lines:
        yield line


async def _main(args: argparse.Namespace) -> int:
    def show(frame: Frame) -> None:
        print(f"< {encode(frame).decode('ascii').rstrip()}", flush=True)

    board = BoardSimulator(
        args.link, device_id=args.device_id, firmware=args.firmware, protocol=args.proto,
        capabilities=args.caps.split("+"), lamps=args.lamps.split(","),
        heartbeat_interval_s=args.heartbeat, hello_retry_s=args.heartbeat, on_receive=show)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, stop.set)
    async with board, _input(args.script) as lines:
        print(f"# board {board.device_id} on {board.link} -> {board.pty_path}", flush=True)
        reading = asyncio.ensure_future(_commands(board, lines))
        stopping = asyncio.ensure_future(stop.wait())
        try:
            await asyncio.wait({reading, stopping}, return_when=asyncio.FIRST_COMPLETED)
            if reading.done() and reading.result():
                await stopping  # input ended without quit: run until a signal
        finally:
            reading.cancel()
            stopping.cancel()
            await asyncio.gather(reading, stopping, return_exceptions=True)
    return 0


async def _commands(board: BoardSimulator, lines: AsyncIterator[str]) -> bool:
    """Carry out the command lines; False after `quit`, True when the input ends."""
    async for line in lines:
        try:
            if not await run_command(board, line):
                return False
        except (ValueError, RuntimeError) as exc:
            print(f"error: {exc}", file=sys.stderr, flush=True)
    return True


def main(argv: Sequence[str] | None = None) -> int:
    """Command line: run a simulated board on a pty until SIGINT/SIGTERM or `quit`."""
    parser = argparse.ArgumentParser(
        prog="python -m firmware_bridge.simulator", description=__doc__.split("\n\n")[0],
        epilog=COMMANDS, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--link", required=True,
                        help="symlink to create for the board's port (the gateway opens it)")
    parser.add_argument("--device-id", default="sim-board-1", help="id sent in HELLO")
    parser.add_argument("--firmware", default="1.0.0-sim", help="fw sent in HELLO")
    parser.add_argument("--proto", type=int, default=PROTOCOL_VERSION,
                        help="protocol version sent in HELLO (try 2 to see REFUSE)")
    parser.add_argument("--caps", default="+".join(KNOWN_CAPABILITIES),
                        help="capabilities sent in HELLO, joined by '+'")
    parser.add_argument("--lamps", default="hp1", help="lamp ids, joined by ','")
    parser.add_argument("--heartbeat", type=float, default=HEARTBEAT_INTERVAL_S,
                        help="seconds between heartbeats and between HELLOs")
    parser.add_argument("--script", help="read commands from this file instead of stdin")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="# %(message)s")
    return asyncio.run(_main(args))


if __name__ == "__main__":
    sys.exit(main())
